//! RFC 5321 vectors: Appendix D.1, every verb of §4.1.1, §4.1.2 address forms, §4.5.2
//! transparency, plus SMTP-smuggling and STARTTLS-pipelining cases. Every DATA vector is
//! re-fed in all of [`common::CHUNK_SIZES`].

mod common;

use common::{Event, cmd, drive_all};
use posthorn_smtp_codec::{
    DataEnd, DataReceiver, ForwardPath, Host, LineError, MailParams, Mailbox, ParseError, Path,
    RcptParams, Reply, Request, ReversePath, parse_command, parse_reply,
};

const MAX: u64 = 10 * 1024 * 1024;

fn domain(d: &str) -> Host {
    Host::Domain(d.to_owned())
}

fn path(local: &str, host: Host) -> Path {
    Path {
        mailbox: Mailbox {
            local_part: local.to_owned(),
            is_quoted: local.starts_with('"'),
            domain: host,
        },
        had_source_route: false,
        bracketed: true,
    }
}

fn mail(p: Path) -> Request {
    Request::Mail {
        from: ReversePath::Path(p),
        params: MailParams::default(),
    }
}

fn rcpt(p: Path) -> Request {
    Request::Rcpt {
        to: ForwardPath::Path(p),
        params: RcptParams::default(),
    }
}

/// Decode, compare, encode, decode again, compare again (imap-codec `kat_inverse`).
fn assert_kat(line: &str, expected: &Request) {
    let got = parse_command(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(&got, expected, "{line:?}");
    let wire = got.to_bytes();
    let again = parse_command(&wire[..wire.len() - 2]).unwrap();
    assert_eq!(again.to_bytes(), wire, "{line:?} re-encoding");
}

/// RFC 5321 Appendix D.1 "A Typical SMTP Transaction Scenario", client and server side.
///
/// Note the line `...etc. etc. etc.`: as printed in the RFC it starts with a period, so a
/// receiver applying §4.5.2 removes the first one. A real client would have sent
/// `....etc. etc. etc.`; both are shown.
#[test]
fn rfc5321_d1_typical_transaction() {
    let server: &[&[u8]] = &[
        b"220 foo.com Simple Mail Transfer Service Ready\r\n",
        b"250-foo.com greets bar.com\r\n250-8BITMIME\r\n250-SIZE\r\n250-DSN\r\n250 HELP\r\n",
        b"250 OK\r\n",
        b"550 No such user here\r\n",
        b"354 Start mail input; end with <CRLF>.<CRLF>\r\n",
        b"221 foo.com Service closing transmission channel\r\n",
    ];
    for bytes in server {
        let (reply, used) = parse_reply(bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(reply.to_bytes(), *bytes);
    }
    let ehlo = Reply::multiline(
        250,
        None,
        ["foo.com greets bar.com", "8BITMIME", "SIZE", "DSN", "HELP"],
    );
    assert_eq!(ehlo.to_bytes(), server[1]);

    let client = b"EHLO bar.com\r\n\
MAIL FROM:<Smith@bar.com>\r\n\
RCPT TO:<Jones@foo.com>\r\n\
RCPT TO:<Green@foo.com>\r\n\
RCPT TO:<Brown@foo.com>\r\n\
DATA\r\n\
Blah blah blah...\r\n\
...etc. etc. etc.\r\n\
.\r\n\
QUIT\r\n";
    let (events, rest) = drive_all(client, MAX);
    assert!(rest.is_empty());
    let expected = vec![
        Event::Command(Ok(Request::Ehlo(domain("bar.com")))),
        Event::Command(Ok(mail(path("Smith", domain("bar.com"))))),
        Event::Command(Ok(rcpt(path("Jones", domain("foo.com"))))),
        Event::Command(Ok(rcpt(path("Green", domain("foo.com"))))),
        Event::Command(Ok(rcpt(path("Brown", domain("foo.com"))))),
        Event::Command(Ok(Request::Data)),
        Event::Data(
            b"Blah blah blah...\r\n..etc. etc. etc.\r\n".to_vec(),
            DataEnd::Complete,
        ),
        Event::Command(Ok(Request::Quit)),
    ];
    assert_eq!(events, expected);

    let stuffed = String::from_utf8(client.to_vec())
        .unwrap()
        .replace("\r\n...etc", "\r\n....etc");
    let (events, _) = drive_all(stuffed.as_bytes(), MAX);
    assert_eq!(
        events[6],
        Event::Data(
            b"Blah blah blah...\r\n...etc. etc. etc.\r\n".to_vec(),
            DataEnd::Complete
        )
    );
}

/// RFC 5321 §4.1.1: every verb, in the syntax the section gives, in upper and lower case.
#[test]
fn rfc5321_4_1_1_every_verb() {
    let table: Vec<(&str, Request)> = vec![
        ("EHLO foo.example", Request::Ehlo(domain("foo.example"))),
        (
            "EHLO [192.0.2.1]",
            Request::Ehlo(Host::Ipv4("192.0.2.1".parse().unwrap())),
        ),
        (
            "EHLO [IPv6:2001:db8::1]",
            Request::Ehlo(Host::Ipv6("2001:db8::1".parse().unwrap())),
        ),
        ("HELO foo.example", Request::Helo(domain("foo.example"))),
        (
            "MAIL FROM:<a@foo.example>",
            mail(path("a", domain("foo.example"))),
        ),
        (
            "MAIL FROM:<>",
            Request::Mail {
                from: ReversePath::Null,
                params: MailParams::default(),
            },
        ),
        (
            "RCPT TO:<b@bar.example>",
            rcpt(path("b", domain("bar.example"))),
        ),
        (
            "RCPT TO:<Postmaster>",
            Request::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default(),
            },
        ),
        (
            "RCPT TO:<Postmaster@bar.example>",
            rcpt(path("Postmaster", domain("bar.example"))),
        ),
        ("DATA", Request::Data),
        ("RSET", Request::Rset),
        ("VRFY Smith", Request::Vrfy("Smith".into())),
        (
            "VRFY \"Fred Smith\"",
            Request::Vrfy("\"Fred Smith\"".into()),
        ),
        (
            "EXPN Example-People",
            Request::Expn("Example-People".into()),
        ),
        ("HELP", Request::Help(None)),
        ("HELP MAIL", Request::Help(Some("MAIL".into()))),
        ("NOOP", Request::Noop),
        ("QUIT", Request::Quit),
        ("STARTTLS", Request::StartTls),
        (
            "AUTH PLAIN dGVzdAB0ZXN0ADEyMzQ=",
            Request::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("dGVzdAB0ZXN0ADEyMzQ=".into()),
            },
        ),
        (
            "BDAT 86 LAST",
            Request::Bdat {
                size: 86,
                last: true,
            },
        ),
    ];
    for (line, expected) in &table {
        assert_kat(line, expected);
        // Verbs and keywords are case-insensitive; lower-casing changes case-sensitive
        // arguments, so compare the verb and the lower-case line's own round trip.
        let lower = line.to_lowercase();
        let got = parse_command(lower.as_bytes()).unwrap_or_else(|e| panic!("{lower}: {e}"));
        assert_eq!(got.verb(), expected.verb());
        assert_kat(&lower, &got);
    }
}

/// RFC 5321 §4.1.1.x: commands that take no argument reject one, and unknown verbs are
/// `500 5.5.1`.
#[test]
fn rfc5321_4_1_1_syntax_errors() {
    let table: &[(&[u8], &[u8])] = &[
        (b"DATA now", b"501 5.5.4 Syntax: DATA\r\n"),
        (b"QUIT please", b"501 5.5.4 Syntax: QUIT\r\n"),
        (b"RSET 1", b"501 5.5.4 Syntax: RSET\r\n"),
        (b"EHLO", b"501 5.5.4 Syntax: EHLO domain\r\n"),
        (b"HELO", b"501 5.5.4 Syntax: HELO domain\r\n"),
        (b"VRFY", b"501 5.5.4 Syntax: VRFY string\r\n"),
        (b"EXPN", b"501 5.5.4 Syntax: EXPN string\r\n"),
        (b"MAIL <a@b>", b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
        (b"RCPT <a@b>", b"501 5.5.4 Syntax: RCPT TO:<address>\r\n"),
        (b"TURN", b"500 5.5.1 Error: command not recognized\r\n"),
        (
            b"GET / HTTP/1.1",
            b"500 5.5.1 Error: command not recognized\r\n",
        ),
        (b"", b"500 5.5.2 Error: bad syntax\r\n"),
        (
            b"MAIL FROM:<a@b> FOO=BAR",
            b"555 5.5.4 Unsupported option: FOO\r\n",
        ),
    ];
    for (line, reply) in table {
        let err = parse_command(line).unwrap_err();
        assert_eq!(
            err.reply().to_bytes(),
            *reply,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// RFC 5321 §4.1.2, §4.1.3, §4.1.1.3, §4.5.1 and RFC 6531: address forms the server has to
/// reason about.
#[test]
fn rfc5321_4_1_2_address_forms() {
    // Percent hack: just a local part containing '%'; routing it is the server's decision.
    assert_kat(
        "RCPT TO:<user%elsewhere.test@example.test>",
        &rcpt(path("user%elsewhere.test", domain("example.test"))),
    );
    // Source route: accepted, dropped, flagged (§4.1.1.3, Appendix C).
    let routed = Path {
        had_source_route: true,
        ..path("user", domain("elsewhere.test"))
    };
    assert_eq!(
        parse_command(b"RCPT TO:<@example.test:user@elsewhere.test>"),
        Ok(rcpt(routed.clone()))
    );
    assert_eq!(
        parse_command(b"MAIL FROM:<@a.example,@b.example:user@elsewhere.test>"),
        Ok(mail(routed))
    );
    assert_eq!(
        parse_command(b"RCPT TO:<@example.test:user@elsewhere.test>")
            .unwrap()
            .to_bytes(),
        b"RCPT TO:<user@elsewhere.test>\r\n"
    );
    // Quoted local part, kept with its quotes.
    assert_kat(
        "RCPT TO:<\"user@elsewhere.test\"@example.test>",
        &rcpt(path("\"user@elsewhere.test\"", domain("example.test"))),
    );
    assert_kat(
        "MAIL FROM:<\"john doe\"@example.com>",
        &mail(path("\"john doe\"", domain("example.com"))),
    );
    assert_kat(
        "MAIL FROM:<\"a\\\"b>c\"@example.com> SIZE=1",
        &Request::Mail {
            from: ReversePath::Path(path("\"a\\\"b>c\"", domain("example.com"))),
            params: MailParams {
                size: Some(1),
                ..MailParams::default()
            },
        },
    );
    // Two '@' outside quotes: bad recipient syntax, 501 5.1.3.
    let err = parse_command(b"RCPT TO:<user@elsewhere.test@example.test>").unwrap_err();
    assert!(matches!(err, ParseError::BadRecipient { .. }), "{err:?}");
    assert_eq!(
        err.reply().to_bytes(),
        b"501 5.1.3 Bad recipient address syntax\r\n"
    );
    let err = parse_command(b"MAIL FROM:<user@elsewhere.test@example.test>").unwrap_err();
    assert_eq!(
        err.reply().to_bytes(),
        b"501 5.1.7 Bad sender address syntax\r\n"
    );
    // Address literals.
    assert_kat(
        "RCPT TO:<user@[192.0.2.1]>",
        &rcpt(path("user", Host::Ipv4("192.0.2.1".parse().unwrap()))),
    );
    assert_kat(
        "RCPT TO:<user@[IPv6:2001:db8::1]>",
        &rcpt(path("user", Host::Ipv6("2001:db8::1".parse().unwrap()))),
    );
    // Postmaster without domain, any case (§4.5.1).
    for line in [
        "RCPT TO:<postmaster>",
        "RCPT TO:<POSTMASTER>",
        "rcpt to:postmaster",
    ] {
        assert_eq!(
            parse_command(line.as_bytes()),
            Ok(Request::Rcpt {
                to: ForwardPath::Postmaster,
                params: RcptParams::default()
            }),
            "{line}"
        );
    }
    // SMTPUTF8 (RFC 6531 §3.3): parsed; whether it is allowed is the server's call.
    let req = parse_command("MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8".as_bytes()).unwrap();
    let Request::Mail { from, params } = &req else {
        panic!("{req:?}")
    };
    assert!(params.smtputf8);
    assert!(!from.mailbox().unwrap().is_ascii());
    assert!(
        parse_command(b"RCPT TO:<a@example.com>")
            .map(|r| match r {
                Request::Rcpt { to, .. } => to.mailbox().unwrap().is_ascii(),
                _ => false,
            })
            .unwrap()
    );
    // Postfix-style leniency: SP after the colon, no angle brackets.
    assert_eq!(
        parse_command(b"MAIL FROM: <a@b.example>"),
        Ok(mail(path("a", domain("b.example"))))
    );
    assert_eq!(
        parse_command(b"MAIL FROM:a@b.example SIZE=10"),
        Ok(Request::Mail {
            from: ReversePath::Path(Path {
                bracketed: false,
                ..path("a", domain("b.example"))
            }),
            params: MailParams {
                size: Some(10),
                ..MailParams::default()
            }
        })
    );
    // But not a missing path, and not an unterminated one.
    for line in [&b"MAIL FROM:"[..], b"MAIL FROM:<a@b.example", b"RCPT TO:<>"] {
        let err = parse_command(line).unwrap_err();
        assert_eq!(err.reply().code, 501, "{:?}", String::from_utf8_lossy(line));
    }
}

/// RFC 5321 §4.5.2 transparency vectors: (wire after 354, un-stuffed message).
const TRANSPARENCY: &[(&[u8], &[u8])] = &[
    (b".\r\n", b""),
    (b"\r\n.\r\n", b"\r\n"),
    (b"line\r\n.\r\n", b"line\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),
    (b"...\r\n.\r\n", b"..\r\n"),
    (b"..hidden dot\r\n.\r\n", b".hidden dot\r\n"),
    (b".x\r\n.\r\n", b"x\r\n"),
    (b"a\r\n..\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n"),
    (
        b"mid.dle\r\n. not at start? yes it is\r\n.\r\n",
        b"mid.dle\r\n not at start? yes it is\r\n",
    ),
    (b"trailing.\r\n.\r\n", b"trailing.\r\n"),
    (b"\r\n\r\n\r\n.\r\n", b"\r\n\r\n\r\n"),
    (
        b"8bit \xc3\xa9 \x00 bytes\r\n.\r\n",
        b"8bit \xc3\xa9 \x00 bytes\r\n",
    ),
];

#[test]
fn rfc5321_4_5_2_transparency() {
    for (wire, message) in TRANSPARENCY {
        let mut stream = b"DATA\r\n".to_vec();
        stream.extend_from_slice(wire);
        stream.extend_from_slice(b"QUIT\r\n");
        let (events, rest) = drive_all(&stream, MAX);
        assert!(rest.is_empty());
        assert_eq!(
            events,
            vec![
                cmd("DATA"),
                Event::Data(message.to_vec(), DataEnd::Complete),
                cmd("QUIT")
            ],
            "{:?}",
            String::from_utf8_lossy(wire)
        );
        // dot_stuff is the inverse (canonical form: every leading dot doubled).
        let canonical = posthorn_smtp_codec::dot_stuff(message);
        let mut r = DataReceiver::new(MAX);
        assert_eq!(
            r.push(&canonical),
            (canonical.len(), Some(DataEnd::Complete))
        );
        assert_eq!(r.take_message(), *message);
    }
}

/// Feeds a DATA vector through a bare `DataReceiver` in every chunk size and checks the
/// consumed count, end kind and message are identical.
fn data_chunk_invariant(wire: &[u8]) -> (Vec<u8>, usize, Option<DataEnd>) {
    let run = |chunk: usize| {
        let mut r = DataReceiver::new(MAX);
        let mut used = 0;
        let mut end = None;
        for piece in wire.chunks(chunk) {
            let (n, e) = r.push(piece);
            used += n;
            if e.is_some() {
                end = e;
                break;
            }
        }
        (r.take_message(), used, end)
    };
    let reference = run(wire.len().max(1));
    for &chunk in common::CHUNK_SIZES {
        assert_eq!(run(chunk), reference, "chunk {chunk}");
    }
    reference
}

#[test]
fn data_receiver_chunk_split_all_vectors() {
    for (wire, message) in TRANSPARENCY {
        let mut with_tail = wire.to_vec();
        with_tail.extend_from_slice(b"RSET\r\n");
        let (msg, used, end) = data_chunk_invariant(&with_tail);
        assert_eq!(
            (msg.as_slice(), used, end),
            (*message, wire.len(), Some(DataEnd::Complete))
        );
    }
    for (prefix, _) in SMUGGLING {
        data_chunk_invariant(prefix);
    }
}

/// SMTP smuggling (CVE-2023-51764 and friends): a fake end-of-data made of bare CR/LF followed
/// by a second transaction. None of these may end the message; the real `\r\n.\r\n` does, and
/// the message is rejected as `BareLineEnding` because it contains a bare CR or LF.
const SMUGGLING: &[(&[u8], &str)] = &[
    (b"\n.\n", "LF . LF"),
    (b"\r.\r", "CR . CR"),
    (b"\n.\r\n", "LF . CRLF"),
    (b"\r\n.\n", "CRLF . LF"),
    (b"\r\n.\r", "CRLF . CR"),
    (b"\r.\r\n", "CR . CRLF"),
    (b"\r\n.\r\r\n", "CRLF . CR CRLF"),
    (b"\r\n\r.\r\n", "CRLF CR . CRLF"),
    (b"\n\n.\n\n", "LF LF . LF LF"),
];

#[test]
fn smuggled_end_of_data_does_not_end_message() {
    for (fake_end, name) in SMUGGLING {
        let mut stream = b"DATA\r\nSubject: hi\r\n\r\nbody".to_vec();
        stream.extend_from_slice(fake_end);
        stream.extend_from_slice(
            b"MAIL FROM:<x@y>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nforged\r\n",
        );
        stream.extend_from_slice(b".\r\nQUIT\r\n");
        let (events, rest) = drive_all(&stream, MAX);
        assert!(rest.is_empty(), "{name}");
        assert_eq!(
            events,
            vec![
                cmd("DATA"),
                Event::Data(Vec::new(), DataEnd::BareLineEnding),
                cmd("QUIT")
            ],
            "{name}"
        );
        let reply = DataEnd::BareLineEnding.reply().unwrap();
        assert_eq!(
            reply.to_bytes(),
            b"554 5.6.0 Message contains bare CR or LF; lines must end with CRLF\r\n"
        );
    }
}

#[test]
fn clean_message_with_smtp_text_inside_is_kept() {
    // Commands inside a correctly terminated body are just content.
    let stream = b"DATA\r\nMAIL FROM:<x@y>\r\n.\r\n";
    let (events, _) = drive_all(stream, MAX);
    assert_eq!(
        events[1],
        Event::Data(b"MAIL FROM:<x@y>\r\n".to_vec(), DataEnd::Complete)
    );
}

#[test]
fn data_too_big_consumes_to_end() {
    let mut stream = b"DATA\r\n".to_vec();
    stream.extend(std::iter::repeat_n(b'x', 100));
    stream.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    let (events, _) = drive_all(&stream, 50);
    assert_eq!(
        events,
        vec![
            cmd("DATA"),
            Event::Data(Vec::new(), DataEnd::TooBig),
            cmd("QUIT")
        ]
    );
    assert_eq!(
        DataEnd::TooBig.reply().unwrap().to_bytes(),
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
}

#[test]
fn long_body_lines_are_accepted() {
    let line = vec![b'a'; 5000];
    let mut stream = b"DATA\r\n".to_vec();
    stream.extend_from_slice(&line);
    stream.extend_from_slice(b"\r\n.\r\n");
    let (events, _) = drive_all(&stream, MAX);
    let mut expected = line.clone();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(events[1], Event::Data(expected, DataEnd::Complete));
}

/// RFC 3207 §4.2 / CVE-2011-0411: commands pipelined after STARTTLS stay in the reader so the
/// server can drop them.
#[test]
fn rfc3207_starttls_pipelined_plaintext_is_discardable() {
    let stream = b"EHLO a.example\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.example>\r\n";
    // Fed whole, both injected commands are still buffered when STARTTLS is taken.
    let (events, rest) = common::drive(stream, stream.len(), MAX);
    assert!(rest.is_empty());
    assert_eq!(
        events,
        vec![
            cmd("EHLO a.example"),
            cmd("STARTTLS"),
            Event::DiscardedAfterStartTls(b"RSET\r\nMAIL FROM:<evil@x.example>\r\n".to_vec()),
        ]
    );
}

/// RFC 5321 §4.5.3.1.4: over-long command lines get `500` once and the session continues;
/// bare LF terminates commands.
#[test]
fn rfc5321_4_5_3_1_4_line_too_long_and_bare_lf_commands() {
    let mut stream = b"NOOP\n".to_vec();
    stream.extend(std::iter::repeat_n(b'A', 2000));
    stream.extend_from_slice(b"\r\nQUIT\r\n");
    let (events, _) = drive_all(&stream, MAX);
    assert_eq!(
        events,
        vec![
            cmd("NOOP"),
            Event::Line(LineError::TooLong { max: 512 }),
            cmd("QUIT")
        ]
    );
}
