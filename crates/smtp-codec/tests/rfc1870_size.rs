//! RFC 1870 (SIZE extension) vectors: the `SIZE=` parameter on `MAIL FROM`, the EHLO keyword
//! line, and the `552 5.3.4` outcome when DATA or BDAT exceed the server's limit.

mod common;

use common::{Event, cmd, drive_all};
use posthorn_smtp_codec::{
    BdatEnd, DataEnd, MailParams, ParseError, Reply, Request, ReversePath, parse_command,
};

fn size_of(line: &str) -> Result<Option<u64>, ParseError> {
    parse_command(line.as_bytes()).map(|r| match r {
        Request::Mail { params, .. } => params.size,
        other => panic!("{other:?}"),
    })
}

/// RFC 1870 §3 (4): `"SIZE=" size-value`, `size-value = 1*20DIGIT`.
#[test]
fn rfc1870_3_size_param() {
    let ok: &[(&str, u64)] = &[
        ("MAIL FROM:<ned@thor.innosoft.com> SIZE=500000", 500_000),
        ("MAIL FROM:<ned@thor.innosoft.com> size=500000", 500_000),
        ("MAIL FROM:<> SIZE=0", 0),
        ("MAIL FROM:<a@b> SIZE=00000000000000000042", 42),
        ("MAIL FROM:<a@b> SIZE=18446744073709551615", u64::MAX),
        ("MAIL FROM:<a@b> BODY=8BITMIME SIZE=10", 10),
    ];
    for (line, size) in ok {
        assert_eq!(size_of(line), Ok(Some(*size)), "{line}");
        let req = parse_command(line.as_bytes()).unwrap();
        let wire = req.to_bytes();
        assert_eq!(parse_command(&wire[..wire.len() - 2]), Ok(req));
    }
    assert_eq!(size_of("MAIL FROM:<a@b>"), Ok(None));

    let bad: &[&str] = &[
        "MAIL FROM:<a@b> SIZE",
        "MAIL FROM:<a@b> SIZE=-1",
        "MAIL FROM:<a@b> SIZE=1k",
        "MAIL FROM:<a@b> SIZE=18446744073709551616",
        "MAIL FROM:<a@b> SIZE=000000000000000000001",
        "MAIL FROM:<a@b> SIZE=1 SIZE=1",
    ];
    for line in bad {
        let err = size_of(line).unwrap_err();
        assert!(
            matches!(&err, ParseError::InvalidParameter { keyword, .. } if keyword == "SIZE"),
            "{line}: {err:?}"
        );
        assert_eq!(
            err.reply().to_bytes(),
            b"501 5.5.4 Bad SIZE parameter syntax\r\n"
        );
    }
    // SIZE on RCPT is not a thing.
    assert_eq!(
        parse_command(b"RCPT TO:<a@b> SIZE=1")
            .unwrap_err()
            .reply()
            .code,
        555
    );
}

/// RFC 1870 §3 (3): the EHLO keyword with the fixed maximum.
#[test]
fn rfc1870_3_ehlo_keyword() {
    let reply = Reply::multiline(250, None, ["mx.example greets client", "SIZE 10240000"]);
    assert_eq!(
        reply.to_bytes(),
        b"250-mx.example greets client\r\n250 SIZE 10240000\r\n"
    );
}

/// RFC 1870 §6, RFC 5321 §4.5.3.1.9: a message over the limit is consumed to its end and
/// answered `552 5.3.4`; the limit counts un-stuffed octets including CRLFs.
#[test]
fn rfc1870_6_data_exceeding_limit() {
    // "abcd\r\n" is 6 octets after un-stuffing ("..abcd" loses one dot).
    for (limit, end) in [(6, DataEnd::Complete), (5, DataEnd::TooBig)] {
        let stream = b"MAIL FROM:<a@b> SIZE=6\r\nDATA\r\n.abcd\r\n.\r\nQUIT\r\n";
        let (events, _) = drive_all(stream, limit);
        let msg = if end == DataEnd::Complete {
            b"abcd\r\n".to_vec()
        } else {
            Vec::new()
        };
        assert_eq!(
            events,
            vec![
                Event::Command(Ok(Request::Mail {
                    from: match parse_command(b"MAIL FROM:<a@b>").unwrap() {
                        Request::Mail { from, .. } => from,
                        _ => ReversePath::Null,
                    },
                    params: MailParams {
                        size: Some(6),
                        ..MailParams::default()
                    }
                })),
                cmd("DATA"),
                Event::Data(msg, end),
                cmd("QUIT"),
            ],
            "limit {limit}"
        );
    }
    assert_eq!(
        BdatEnd::TooBig.reply().unwrap().to_bytes(),
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
}
