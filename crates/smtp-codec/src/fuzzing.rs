//! Fuzz logic shared by the `cargo fuzz` targets in `crates/smtp-codec/fuzz/` and by the
//! stable-toolchain replay and stress tests in `tests/fuzz_replay.rs`.
//!
//! Each function takes arbitrary bytes, must never panic on its own, and `assert!`s the
//! codec's invariants; a failing assertion is a bug.

use crate::{
    BdatEnd, BdatReceiver, DataEnd, DataReceiver, ForwardPath, LineReader, Request, ReversePath,
    dot_stuff, parse_command, parse_reply,
};

/// `parse_command` on arbitrary bytes.
///
/// Invariants: a parsed request re-encodes to one CRLF-terminated line that parses back to the
/// same request (after normalisation: no source route, brackets present); every error's reply
/// encodes to bytes that [`parse_reply`] reads back identically. The same bytes are also run
/// through a [`LineReader`] whole and byte by byte, which must yield identical lines.
pub fn command(data: &[u8]) {
    match parse_command(data) {
        Ok(req) => {
            let wire = req.to_bytes();
            assert!(wire.ends_with(b"\r\n"), "{req:?}");
            let line = &wire[..wire.len() - 2];
            assert!(
                !line.iter().any(|&b| b == b'\r' || b == b'\n'),
                "CR/LF inside encoded {req:?}"
            );
            let again = parse_command(line);
            assert_eq!(again, Ok(normalise(req.clone())), "round trip of {req:?}");
            assert_eq!(again.map(|r| r.to_bytes()), Ok(wire));
        }
        Err(err) => {
            let bytes = err.reply().to_bytes();
            let (reply, used) = parse_reply(&bytes).expect("error reply must parse");
            assert_eq!(used, bytes.len());
            assert_eq!(reply.to_bytes(), bytes);
            assert!(reply.is_permanent_failure());
        }
    }
    line_reader(data);
}

/// Clears what encoding deliberately does not preserve.
fn normalise(mut req: Request) -> Request {
    match &mut req {
        Request::Mail {
            from: ReversePath::Path(p),
            ..
        }
        | Request::Rcpt {
            to: ForwardPath::Path(p),
            ..
        } => {
            p.had_source_route = false;
            p.bracketed = true;
        }
        _ => {}
    }
    req
}

type Lines = (Vec<(Result<Vec<u8>, crate::LineError>, bool)>, Vec<u8>);

fn read_lines(data: &[u8], chunk: usize) -> Lines {
    let mut r = LineReader::new(32);
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        r.push(piece);
        while let Some(line) = r.next_line() {
            if let Ok(l) = &line {
                assert!(l.len() < 32, "line over the limit");
                assert!(!l.contains(&b'\n'));
            }
            out.push((line, r.last_line_had_bare_lf()));
        }
    }
    (out, r.buffered().to_vec())
}

fn line_reader(data: &[u8]) {
    let whole = read_lines(data, data.len());
    for chunk in [1, 3, 7] {
        assert_eq!(
            read_lines(data, chunk),
            whole,
            "LineReader chunk size {chunk}"
        );
    }
}

/// `DataReceiver` (and `BdatReceiver`) on arbitrary bytes.
///
/// `data[0]` picks the size limit and `data[1]` seeds the split points; the rest is the
/// stream after `354`. Invariants: the result (consumed count, end, message) is identical for
/// every way of splitting the input; the end is exactly after the first `CRLF.CRLF` (the
/// start counting as CRLF); a complete message equals a naive line-by-line un-stuffing of
/// the consumed bytes, contains no bare CR/LF, respects the limit and survives
/// `dot_stuff` → `DataReceiver` unchanged.
pub fn data_receiver(data: &[u8]) {
    let [limit_sel, seed, input @ ..] = data else {
        return;
    };
    let max = match limit_sel % 4 {
        0 => u64::MAX,
        1 => 0,
        _ => u64::from(*limit_sel),
    };

    let whole = receive(input, max, &[input.len().max(1)]);
    let mut rng = u64::from(*seed) | 1;
    let mut sizes = Vec::new();
    for _ in 0..8 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        sizes.push((rng % 9 + 1) as usize);
    }
    for pattern in [&[1usize][..], &[2], &[5], &sizes] {
        assert_eq!(receive(input, max, pattern), whole, "split {pattern:?}");
    }

    let (msg, used, end) = &whole;
    // Oracle for the end position: first CRLF.CRLF with the start counting as CRLF.
    let mut framed = b"\r\n".to_vec();
    framed.extend_from_slice(input);
    let expected_used = framed
        .windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 3);
    match expected_used {
        Some(n) => {
            assert_eq!(*used, n, "end position");
            assert!(end.is_some());
        }
        None => {
            assert_eq!((*used, *end), (input.len(), None), "no end");
            return;
        }
    }
    let body = &input[..used - 3];
    let (naive, bare) = naive_unstuff(body);
    match end {
        Some(DataEnd::Complete) => {
            assert!(!bare, "bare CR/LF accepted");
            assert_eq!(msg, &naive);
            assert!(msg.len() as u64 <= max);
            let restuffed = dot_stuff(msg);
            let again = receive(&restuffed, u64::MAX, &[restuffed.len().max(1)]);
            assert_eq!(
                again,
                (msg.clone(), restuffed.len(), Some(DataEnd::Complete))
            );
        }
        Some(DataEnd::BareLineEnding) => {
            assert!(bare, "BareLineEnding without a bare CR/LF");
            assert!(msg.is_empty());
        }
        Some(DataEnd::TooBig) => {
            assert!(bare || naive.len() as u64 > max, "TooBig within the limit");
            assert!(msg.is_empty());
        }
        None => unreachable!("checked above"),
    }
    if max == u64::MAX {
        let expected = if bare {
            DataEnd::BareLineEnding
        } else {
            DataEnd::Complete
        };
        assert_eq!(*end, Some(expected));
    }

    bdat(input, u64::from(*seed), max);
}

type Received = (Vec<u8>, usize, Option<DataEnd>);

fn receive(input: &[u8], max: u64, sizes: &[usize]) -> Received {
    let mut r = DataReceiver::new(max);
    let mut used = 0;
    let mut end = None;
    let mut pos = 0;
    let mut k = 0;
    while pos < input.len() {
        let size = sizes[k % sizes.len()];
        k += 1;
        let piece = &input[pos..(pos + size).min(input.len())];
        let (n, e) = r.push(piece);
        assert!(n <= piece.len());
        used += n;
        pos += piece.len();
        if e.is_some() {
            end = e;
            assert_eq!(r.push(b"x"), (0, e), "push after end");
            break;
        }
        assert_eq!(
            n,
            piece.len(),
            "unfinished receiver must consume everything"
        );
    }
    assert_eq!(r.received(), used as u64);
    assert_eq!(r.is_finished(), end.is_some());
    (r.take_message(), used, end)
}

/// Reference un-stuffing: split on CRLF, drop one leading dot per line. Also reports whether
/// the body has a CR not followed by LF or an LF not preceded by CR.
fn naive_unstuff(body: &[u8]) -> (Vec<u8>, bool) {
    let bare = body.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => body.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || body[i - 1] != b'\r',
        _ => false,
    });
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(rest.len(), |p| p + 2);
        let line = &rest[..end];
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        rest = &rest[end..];
    }
    (out, bare)
}

fn bdat(input: &[u8], seed: u64, max: u64) {
    let size = if input.is_empty() {
        0
    } else {
        seed % (input.len() as u64 + 1)
    };
    let run = |chunk: usize| {
        let mut r = BdatReceiver::new(max);
        r.begin_chunk(size, true).expect("fresh receiver");
        let mut used = 0;
        let mut end = None;
        for piece in input.chunks(chunk.max(1)) {
            let (n, e) = r.push(piece);
            used += n;
            if e.is_some() {
                end = e;
                break;
            }
        }
        if input.is_empty() {
            let (n, e) = r.push(b"");
            used += n;
            end = e;
        }
        (r.take_message(), used, end)
    };
    let whole = run(input.len());
    assert_eq!(whole.1 as u64, size);
    let expected = if size > max {
        BdatEnd::TooBig
    } else {
        BdatEnd::MessageComplete
    };
    assert_eq!(whole.2, Some(expected));
    if expected == BdatEnd::MessageComplete {
        assert_eq!(whole.0, &input[..whole.1]);
    }
    for chunk in [1, 2, 7] {
        assert_eq!(run(chunk), whole, "BDAT chunk size {chunk}");
    }
}
