//! IMAP end to end through the real `posthorn` binary, on both backend
//! sets: Python imaplib over STARTTLS reads, searches, flags, copies, moves,
//! expunges and appends mail delivered over SMTP, and an IDLE client is woken
//! by an SMTP delivery within a second.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

const SMTPLIB_SEND: &str = r#"
import smtplib, sys
port, subjects = int(sys.argv[1]), sys.argv[2:]
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    for subj in subjects:
        msg = ("From: Sender <sender@example.org>\r\nTo: alice@example.test\r\n"
               "Subject: %s\r\nMessage-ID: <%s@example.org>\r\n\r\nHello %s\r\n") % (subj, subj, subj)
        assert not s.sendmail("sender@example.org", ["alice@example.test"], msg.encode())
print("ok")
"#;

const IMAPLIB_SESSION: &str = r#"
import imaplib, ssl, sys, smtplib, socket, time
imap_port, smtp_port = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
M = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
assert "STARTTLS" in M.capabilities and "LOGINDISABLED" in M.capabilities, M.capabilities
try:
    M.login("alice@example.test", "alice-pw")
    raise SystemExit("login before STARTTLS must fail")
except imaplib.IMAP4.error:
    pass
M.starttls(ctx)
typ, _ = M.login("alice@example.test", "alice-pw")
assert typ == "OK"
typ, data = M.select("INBOX")
assert typ == "OK" and data == [b"2"], data
typ, data = M.search(None, "SUBJECT", "first")
assert data == [b"1"], data
typ, data = M.fetch("1:2", "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert typ == "OK" and b"Subject: first" in data[0][1], data
typ, data = M.fetch("2", "(RFC822)")
assert b"Hello second" in data[0][1], data
typ, data = M.fetch("2", "(FLAGS)")
assert b"\\Seen" in data[0], data
typ, data = M.store("1", "+FLAGS", "(\\Flagged)")
assert b"\\Flagged" in data[0], data
typ, data = M.search(None, "FLAGGED")
assert data == [b"1"], data
typ, data = M.copy("1", "Trash")
assert typ == "OK", data
typ, data = M.uid("MOVE", "2", "Junk")
assert typ == "OK", data
typ, data = M.select("INBOX")
assert data == [b"1"], data
typ, data = M.append("INBOX", "(\\Seen)", imaplib.Time2Internaldate(time.time()),
                     b"Subject: appended\r\n\r\nappended body\r\n")
assert typ == "OK" and b"APPENDUID" in data[0], data
M.noop()
typ, data = M.store("1", "+FLAGS", "(\\Deleted)")
typ, data = M.expunge()
assert data == [b"1"], data
typ, data = M.status("Trash", "(MESSAGES UNSEEN)")
assert b"MESSAGES 1" in data[0], data
typ, data = M.status("Junk", "(MESSAGES)")
assert b"MESSAGES 1" in data[0], data
typ, data = M.list()
assert any(b"\\Sent" in l for l in data), data
typ, data = M.select("INBOX")
n = int(data[0])
# IDLE: an SMTP delivery wakes us with EXISTS.
tag = M._new_tag().decode()
M.send(("%s IDLE\r\n" % tag).encode())
line = M.readline()
assert line.startswith(b"+"), line
with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
    t0 = time.time()
    s.sendmail("sender@example.org", ["alice@example.test"],
               b"Subject: during idle\r\n\r\nwake up\r\n")
M.sock.settimeout(10)
while True:
    line = M.readline()
    if line.endswith(b"EXISTS\r\n"):
        break
waited = time.time() - t0
assert line == b"* %d EXISTS\r\n" % (n + 1), line
assert waited < 1.0, waited
M.send(b"DONE\r\n")
line = M.readline()
assert line.startswith(tag.encode() + b" OK"), line
M.logout()
print("ok %.3f" % waited)
"#;

fn imaplib_session(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    let smtp = sys.ports.smtp.to_string();
    // One at a time: separately sent messages may be routed in parallel,
    // and the script relies on "first" having UID 1.
    python(SMTPLIB_SEND, &[&smtp, "first"]);
    sys.wait_messages("alice@example.test", 1, WAIT);
    python(SMTPLIB_SEND, &[&smtp, "second"]);
    sys.wait_messages("alice@example.test", 2, WAIT);
    let out = python(IMAPLIB_SESSION, &[&sys.ports.imap.to_string(), &smtp]);
    assert!(out.starts_with("ok"), "{out}");
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

both!(imaplib_session);
