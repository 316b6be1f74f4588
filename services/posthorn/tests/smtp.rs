//! SMTP in, local delivery out: through real clients (Python smtplib,
//! swaks) and exact-reply dialogues, on both backend sets.

mod common;

use common::*;

/// Strip the header lines Posthorn adds (Return-Path, Delivered-To, one
/// Received with its continuation lines) and return (added, rest).
fn split_added(stored: &[u8]) -> (String, Vec<u8>) {
    let text = stored;
    let mut pos = 0;
    let mut added = String::new();
    let mut in_received = false;
    loop {
        let end = text[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| pos + p + 2)
            .unwrap();
        let line = String::from_utf8_lossy(&text[pos..end]).to_string();
        let is_ours = line.starts_with("Return-Path:") || line.starts_with("Delivered-To:");
        let starts_received = line.starts_with("Received:") && !added.contains("Received:");
        let continuation = in_received && (line.starts_with('\t') || line.starts_with(' '));
        if is_ours || starts_received || continuation {
            in_received = starts_received || continuation;
            added.push_str(&line);
            pos = end;
        } else {
            return (added, text[pos..].to_vec());
        }
    }
}

const SMTPLIB_SEND: &str = r#"
import smtplib, sys
port, frm, to, path = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(","), sys.argv[4]
msg = open(path, "rb").read()
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    s.ehlo("client.example.org")
    refused = s.sendmail(frm, to, msg)
    assert not refused, refused
print("ok")
"#;

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.org>\r\nTo: alice@example.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@example.org>\r\n\r\nHello,\r\n..a line that starts with a dot\r\n\r\nbye\r\n"
    )
    .into_bytes()
}

fn delivers_byte_identical(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    let msg = message("smtplib");
    let path = sys.dir.path().join("m.eml");
    std::fs::write(&path, &msg).unwrap();
    python(
        SMTPLIB_SEND,
        &[
            &sys.ports.smtp.to_string(),
            "sender@example.org",
            "alice@example.test",
            path.to_str().unwrap(),
        ],
    );
    let m = sys.wait_messages("alice@example.test", 1, WAIT);
    let stored = sys.fetch("alice@example.test", m[0].0);
    let (added, rest) = split_added(&stored);
    assert_eq!(
        String::from_utf8_lossy(&rest),
        String::from_utf8_lossy(&msg),
        "body changed; added: {added}"
    );
    assert!(added.starts_with("Return-Path: <sender@example.org>\r\nDelivered-To: alice@example.test\r\nReceived: from client.example.org ([127.0.0.1])"), "{added}");
    assert!(added.contains("with ESMTP id "), "{added}");
    assert!(added.contains("for <alice@example.test>;"), "{added}");
    assert_eq!(
        m[0].1,
        stored.len() as u64,
        "RFC822.SIZE matches the bytes served"
    );

    // swaks (Debian package), with a body given on the command line.
    let o = std::process::Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", sys.ports.smtp),
            "--from",
            "swaks@example.org",
            "--to",
            "bob@example.test",
            "--helo",
            "swaks.example.org",
            "--header",
            "Subject: via swaks",
            "--body",
            "swaks body",
        ])
        .output()
        .expect("swaks is not installed (apt-get install swaks; scripts/test.sh does)");
    assert!(o.status.success(), "swaks: {}", out(&o));
    let m = sys.wait_messages("bob@example.test", 1, WAIT);
    let stored = String::from_utf8_lossy(&sys.fetch("bob@example.test", m[0].0)).to_string();
    assert!(
        stored.contains("Subject: via swaks\r\n") && stored.contains("swaks body"),
        "{stored}"
    );
    assert!(
        stored
            .starts_with("Return-Path: <swaks@example.org>\r\nDelivered-To: bob@example.test\r\n"),
        "{stored}"
    );
}

fn one_blob_many_mailboxes(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    assert!(c.cmd("EHLO c.example.org").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250 2.1.0"));
    for r in [
        "alice@example.test",
        "bob@example.test",
        "team@example.test",
    ] {
        let rep = c.cmd(&format!("RCPT TO:<{r}>"));
        assert!(rep.starts_with("250 2.1.5"), "{r}: {rep}");
    }
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: three\r\n\r\nonce\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    sys.wait_messages("alice@example.test", 1, WAIT);
    sys.wait_messages("bob@example.test", 1, WAIT);
    // One stored blob for the one message, on local disk or in the S3 bucket.
    let root = match &sys.s3 {
        Some(s3) => s3.0.dir().join("root"),
        None => sys.dir.path().join("data/blobs"),
    };
    assert_eq!(
        walk(&root),
        1,
        "expected one stored blob under {}",
        root.display()
    );
    // No duplicate: rather than wait a while for one, send a second message
    // to both and wait until it is there; a duplicate of the first would
    // have been routed before it (or with it).
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250 2.1.0"));
    assert!(
        c.cmd("RCPT TO:<alice@example.test>")
            .starts_with("250 2.1.5")
    );
    assert!(c.cmd("RCPT TO:<bob@example.test>").starts_with("250 2.1.5"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: marker\r\n\r\nafter the three\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    assert!(c.cmd("QUIT").starts_with("221"));
    sys.wait_messages("alice@example.test", 2, WAIT);
    sys.wait_messages("bob@example.test", 2, WAIT);
    assert_eq!(
        sys.messages("alice@example.test").len(),
        2,
        "alice got a duplicate"
    );
    assert_eq!(
        sys.messages("bob@example.test").len(),
        2,
        "bob got a duplicate"
    );
    let subject = |addr: &str, uid: u32| {
        let text = String::from_utf8_lossy(&sys.fetch(addr, uid)).to_string();
        text.lines()
            .find(|l| l.starts_with("Subject: "))
            .unwrap_or_default()
            .to_string()
    };
    for addr in ["alice@example.test", "bob@example.test"] {
        let mut subjects: Vec<String> = sys
            .messages(addr)
            .iter()
            .map(|(uid, _)| subject(addr, *uid))
            .collect();
        subjects.sort();
        assert_eq!(subjects, ["Subject: marker", "Subject: three"], "{addr}");
    }
    // UID 1 is the first message: the marker was sent after it arrived.
    let body = |addr: &str| split_added(&sys.fetch(addr, 1)).1;
    assert_eq!(body("alice@example.test"), body("bob@example.test"));
    // The marker is a second message: a second blob, no more.
    assert_eq!(
        walk(&root),
        2,
        "expected two stored blobs under {}",
        root.display()
    );
}

/// Content-addressed blobs (files named by 64 hex digits) under `dir`.
fn walk(dir: &std::path::Path) -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                n += walk(&p);
            } else {
                let name = e.file_name().to_string_lossy().to_string();
                if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                    n += 1;
                }
            }
        }
    }
    n
}

fn relay_control(backend: Backend) {
    // No relay networks: 127.0.0.1 is an ordinary outside client.
    let sys = System::start(backend, "relay_networks = []");
    sys.standard_directory();
    let (mut c, greeting) = Smtp::connect(sys.ports.smtp);
    assert!(greeting.starts_with("220 "), "{greeting}");
    assert!(c.cmd("EHLO c.example.org").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    let cases = [
        ("<someone@elsewhere.test>", "554 5.7.1"),
        ("<user%elsewhere.test@example.test>", "550 5.1.1"),
        ("<@example.test:user@elsewhere.test>", "554 5.7.1"),
        ("<\"user@elsewhere.test\"@example.test>", "550 5.1.1"),
        ("<user@elsewhere.test@example.test>", "501 5.1.3"),
        ("<nobody@example.test>", "550 5.1.1"),
        ("<alice>", "501 5.1.3"),
        ("<postmaster>", "250 2.1.5"),
        ("<Alice@EXAMPLE.test>", "250 2.1.5"),
    ];
    for (rcpt, want) in cases {
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(r.starts_with(want), "RCPT TO:{rcpt}: want {want}, got {r}");
    }
    assert!(c.cmd("QUIT").starts_with("221"));

    // The same from a relay network.
    drop(sys);
    let sys = System::start(backend, "relay_networks = [\"127.0.0.0/8\"]");
    sys.standard_directory();
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    c.cmd("EHLO c.example.org");
    c.cmd("MAIL FROM:<s@example.org>");
    let r = c.cmd("RCPT TO:<someone@elsewhere.test>");
    assert!(r.starts_with("250 2.1.5"), "{r}");
    // From a relay network, unqualified names are qualified with the primary domain.
    let r = c.cmd("RCPT TO:<alice>");
    assert!(r.starts_with("250 2.1.5"), "{r}");
    let r = c.cmd("RCPT TO:<bob@localhost>");
    assert!(r.starts_with("250 2.1.5"), "{r}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: relay\r\n\r\nx\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0"), "{r}");
    sys.wait_messages("alice@example.test", 1, WAIT);
    sys.wait_messages("bob@example.test", 1, WAIT);
}

fn smuggling_probe(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    for (i, sep) in [&b"\n.\n"[..], b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r\n.\r"]
        .iter()
        .enumerate()
    {
        let (mut c, _) = Smtp::connect(sys.ports.smtp);
        c.cmd("EHLO c.example.org");
        c.cmd("MAIL FROM:<s@example.org>");
        c.cmd("RCPT TO:<alice@example.test>");
        assert!(c.cmd("DATA").starts_with("354"));
        let mut body = format!("Subject: smuggle {i}\r\n\r\nfirst").into_bytes();
        body.extend_from_slice(sep);
        body.extend_from_slice(b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n");
        c.send(&body);
        let r = c.reply();
        // The whole thing is one message with bare line endings: refused.
        assert!(r.starts_with("554 5.6.0"), "separator {sep:?}: {r}");
        // The session is still in sync: the next command is answered normally.
        let r = c.cmd("NOOP");
        assert!(r.starts_with("250"), "after separator {sep:?}: {r}");
        c.cmd("QUIT");
    }
    // Nothing was delivered: rather than wait a while for it, send a proper
    // message to both and wait until it is there. A probe or a smuggled
    // message, had it been queued, was queued before it.
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    assert!(c.cmd("EHLO c.example.org").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: marker\r\n\r\nproper\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0"), "{r}");
    c.cmd("QUIT");
    for (addr, what) in [
        ("alice@example.test", "a smuggling probe was delivered"),
        ("bob@example.test", "a smuggled message was delivered"),
    ] {
        let m = sys.wait_messages(addr, 1, WAIT);
        assert_eq!(m.len(), 1, "{what}");
        let text = String::from_utf8_lossy(&sys.fetch(addr, m[0].0)).to_string();
        assert!(text.contains("Subject: marker\r\n"), "{what}: {text}");
    }
}

fn protocol_errors(backend: Backend) {
    let sys = System::start(backend, "max_recipients = 2\nmax_message_size = 1000");
    sys.standard_directory();
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    assert!(
        c.cmd("MAIL FROM:<s@example.org>").starts_with("503 5.5.1"),
        "MAIL before EHLO"
    );
    let ehlo = c.cmd("EHLO c.example.org");
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    assert!(!ehlo.contains("AUTH"), "AUTH offered on port 25: {ehlo}");
    assert!(
        c.cmd("RCPT TO:<alice@example.test>")
            .starts_with("503 5.5.1"),
        "RCPT before MAIL"
    );
    assert!(c.cmd("DATA").starts_with("503 5.5.1"), "DATA before MAIL");
    assert!(
        c.cmd("MAIL FROM:<s@example.org> SIZE=5000")
            .starts_with("552 5.3.4"),
        "declared too big"
    );
    assert!(
        c.cmd("MAIL FROM:<s@example.org> FOO=BAR")
            .starts_with("555 5.5.4")
    );
    assert!(c.cmd("VRFY alice").starts_with("252"));
    assert!(c.cmd("EXPN team").starts_with("502"));
    assert!(c.cmd("FROB").starts_with("500 5.5.1"));
    let long = format!("NOOP {}", "x".repeat(2000));
    assert!(c.cmd(&long).starts_with("500 5.5.2"), "long line");
    assert!(
        c.cmd("NOOP").starts_with("250"),
        "session survives a long line"
    );
    assert!(c.cmd("MAIL FROM:<s@example.org>").starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<s@example.org>").starts_with("503 5.5.1"),
        "nested MAIL"
    );
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@example.test>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<team@example.test>")
            .starts_with("452 4.5.3"),
        "too many recipients"
    );
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(3000)).as_bytes());
    assert!(c.reply().starts_with("552 5.3.4"), "too big in DATA");
    assert!(c.cmd("RSET").starts_with("250"));
    // CHUNKING: BDAT in two chunks.
    assert!(
        c.cmd("MAIL FROM:<s@example.org> BODY=BINARYMIME")
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<alice@example.test>").starts_with("250"));
    c.send(b"BDAT 17\r\nSubject: bdat\r\n\r\n");
    assert!(c.reply().starts_with("250 2.0.0 17 octets"));
    c.send(b"BDAT 6 LAST\r\nhello\n");
    let r = c.reply();
    assert!(r.starts_with("250 2.0.0 Ok: queued"), "{r}");
    let m = sys.wait_messages("alice@example.test", 1, WAIT);
    let (_, body) = split_added(&sys.fetch("alice@example.test", m[0].0));
    assert_eq!(body, b"Subject: bdat\r\n\r\nhello\n");
    // Pipelined commands get all their replies in order.
    c.send(b"MAIL FROM:<p@example.org>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<nobody@example.test>\r\nDATA\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("250"));
    assert!(c.reply().starts_with("550 5.1.1"));
    assert!(c.reply().starts_with("354"));
    c.send(b"Subject: piped\r\n\r\nok\r\n.\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250 2.0.0"));
    assert!(c.reply().starts_with("221"));
    sys.wait_messages("bob@example.test", 1, WAIT);
}

fn hop_limit(backend: Backend) {
    let sys = System::start(backend, "max_hops = 3");
    sys.standard_directory();
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    c.cmd("EHLO c.example.org");
    c.cmd("MAIL FROM:<s@example.org>");
    c.cmd("RCPT TO:<alice@example.test>");
    c.cmd("DATA");
    c.send(b"Received: a\r\nReceived: b\r\nReceived: c\r\nReceived: d\r\nSubject: loop\r\n\r\nx\r\n.\r\n");
    let r = c.reply();
    assert!(r.starts_with("554 5.4.6"), "{r}");
}

macro_rules! both {
    ($($name:ident),*) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Backend::Embedded) } )*
        }
        mod cluster {
            $( #[test] fn $name() { super::$name(super::Backend::Cluster) } )*
        }
    };
}

both!(
    delivers_byte_identical,
    one_blob_many_mailboxes,
    relay_control,
    smuggling_probe,
    protocol_errors,
    hop_limit
);
