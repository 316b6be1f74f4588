//! RFC 3030 (CHUNKING, BINARYMIME) vectors: `BDAT` parsing, the §4 example sessions, binary
//! content, the size limit across chunks, and chunk-split invariance.

mod common;

use common::{Event, cmd, drive_all};
use posthorn_smtp_codec::{BdatEnd, BdatReceiver, Body, ParseError, Request, parse_command};

/// RFC 3030 §2: `bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CR LF`.
#[test]
fn rfc3030_2_bdat_syntax() {
    let ok: &[(&str, u64, bool)] = &[
        ("BDAT 86 LAST", 86, true),
        ("BDAT 100000", 100_000, false),
        ("bdat 0 last", 0, true),
        ("BDAT 0", 0, false),
        ("BDAT 18446744073709551615", u64::MAX, false),
    ];
    for (line, size, last) in ok {
        assert_eq!(
            parse_command(line.as_bytes()),
            Ok(Request::Bdat {
                size: *size,
                last: *last
            }),
            "{line}"
        );
    }
    for line in [
        "BDAT",
        "BDAT LAST",
        "BDAT 1 FIRST",
        "BDAT 1 LAST 2",
        "BDAT +1",
        "BDAT 18446744073709551616",
    ] {
        assert_eq!(
            parse_command(line.as_bytes()),
            Err(ParseError::Syntax {
                expected: "BDAT chunk-size [LAST]"
            }),
            "{line}"
        );
    }
    let req = parse_command(b"MAIL FROM:<a@b> BODY=BINARYMIME").unwrap();
    assert!(matches!(req, Request::Mail { params, .. } if params.body == Some(Body::BinaryMime)));
}

/// RFC 3030 §4.1 "Simple Chunking": one `BDAT 86 LAST` chunk.
#[test]
fn rfc3030_4_1_simple_chunking() {
    let content = b"To: Susan@random.com\r\nFrom: Sam@random.com\r\nSubject: This is a bodyless test message\r\n";
    assert_eq!(content.len(), 86);
    let mut stream = b"EHLO ymir.claremont.edu\r\nMAIL FROM:<Sam@Random.com>\r\nRCPT TO:<Susan@Random.com>\r\nBDAT 86 LAST\r\n".to_vec();
    stream.extend_from_slice(content);
    stream.extend_from_slice(b"QUIT\r\n");
    let (events, rest) = drive_all(&stream, 1 << 20);
    assert!(rest.is_empty());
    assert_eq!(
        events,
        vec![
            cmd("EHLO ymir.claremont.edu"),
            cmd("MAIL FROM:<Sam@Random.com>"),
            cmd("RCPT TO:<Susan@Random.com>"),
            cmd("BDAT 86 LAST"),
            Event::Bdat(content.to_vec(), BdatEnd::MessageComplete),
            cmd("QUIT"),
        ]
    );
}

/// RFC 3030 §4.2 "Pipelining BINARYMIME" shape: several pipelined chunks of binary data
/// (including NUL, bare CR/LF and a fake `\r\n.\r\n`, none of which mean anything in BDAT),
/// then a zero-length `LAST` chunk.
#[test]
fn rfc3030_4_2_pipelined_binary_chunks() {
    let chunk1: Vec<u8> = (0u8..=255).collect();
    let chunk2 = b"\r\n.\r\nMAIL FROM:<x@y>\r\n\n.\n".to_vec();
    let mut stream = b"MAIL FROM:<a@b> BODY=BINARYMIME\r\nRCPT TO:<c@d>\r\n".to_vec();
    stream.extend_from_slice(format!("BDAT {}\r\n", chunk1.len()).as_bytes());
    stream.extend_from_slice(&chunk1);
    stream.extend_from_slice(format!("BDAT {}\r\n", chunk2.len()).as_bytes());
    stream.extend_from_slice(&chunk2);
    stream.extend_from_slice(b"BDAT 0 LAST\r\nQUIT\r\n");
    let (events, rest) = drive_all(&stream, 1 << 20);
    assert!(rest.is_empty());
    let mut whole = chunk1.clone();
    whole.extend_from_slice(&chunk2);
    assert_eq!(
        events,
        vec![
            cmd("MAIL FROM:<a@b> BODY=BINARYMIME"),
            cmd("RCPT TO:<c@d>"),
            cmd("BDAT 256"),
            Event::Bdat(Vec::new(), BdatEnd::ChunkComplete),
            cmd(&format!("BDAT {}", chunk2.len())),
            Event::Bdat(Vec::new(), BdatEnd::ChunkComplete),
            cmd("BDAT 0 LAST"),
            Event::Bdat(whole, BdatEnd::MessageComplete),
            cmd("QUIT"),
        ]
    );
}

/// RFC 3030 §2: the server must consume the whole chunk even when it will refuse it, and
/// answer `552 5.3.4` when the message exceeds the limit.
#[test]
fn rfc3030_2_size_limit_across_chunks() {
    let mut stream = b"BDAT 6\r\nabcdefBDAT 6 LAST\r\nghijklQUIT\r\n".to_vec();
    let (events, _) = drive_all(&stream, 10);
    assert_eq!(
        events,
        vec![
            cmd("BDAT 6"),
            Event::Bdat(Vec::new(), BdatEnd::ChunkComplete),
            cmd("BDAT 6 LAST"),
            Event::Bdat(Vec::new(), BdatEnd::TooBig),
            cmd("QUIT"),
        ]
    );
    stream.clear();
    stream.extend_from_slice(b"BDAT 6\r\nabcdefBDAT 6 LAST\r\nghijklQUIT\r\n");
    let (events, _) = drive_all(&stream, 12);
    assert_eq!(
        events[3],
        Event::Bdat(b"abcdefghijkl".to_vec(), BdatEnd::MessageComplete)
    );
}

#[test]
fn bdat_receiver_chunk_split() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    for chunk in common::CHUNK_SIZES {
        let mut r = BdatReceiver::new(u64::MAX);
        r.begin_chunk(600, false).unwrap();
        let mut used = 0;
        let mut ends = Vec::new();
        for piece in data.chunks(*chunk) {
            let mut piece = piece;
            loop {
                let (n, end) = r.push(piece);
                used += n;
                piece = &piece[n..];
                match end {
                    Some(BdatEnd::ChunkComplete) => {
                        ends.push(BdatEnd::ChunkComplete);
                        r.begin_chunk(400, true).unwrap();
                    }
                    Some(e) => {
                        ends.push(e);
                        break;
                    }
                    None => break,
                }
                if piece.is_empty() {
                    break;
                }
            }
        }
        assert_eq!(used, 1000, "chunk {chunk}");
        assert_eq!(ends, vec![BdatEnd::ChunkComplete, BdatEnd::MessageComplete]);
        assert_eq!(r.take_message(), data, "chunk {chunk}");
    }
}
