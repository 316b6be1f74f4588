//! IMAP end to end through the real `posthorn` binary, on both backend
//! sets: Python imaplib over STARTTLS reads, searches, flags, copies, moves,
//! expunges and appends mail delivered over SMTP, and an IDLE client is woken
//! by an SMTP delivery (pushed, well before the server's 30 s fallback
//! re-check); a second script drives the
//! extensions (CONDSTORE/QRESYNC, ESEARCH, LIST-EXTENDED/LIST-STATUS,
//! SEARCHRES, BINARY, IMAP4rev2) through imaplib.

mod common;

use common::*;

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
idling = time.time()
with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as s:
    t0 = time.time()
    s.sendmail("sender@example.org", ["alice@example.test"],
               b"Subject: during idle\r\n\r\nwake up\r\n")
# The delivery must be pushed, not found by the server's fallback re-check
# of an idling mailbox, which runs 30 s after IDLE began: so EXISTS must come
# within 20 s of IDLE starting (seconds to spare on a loaded machine, where a
# push normally takes milliseconds; too early for the re-check).
while True:
    left = idling + 20 - time.time()
    assert left > 0, "no EXISTS within 20 s of IDLE"
    M.sock.settimeout(left)
    try:
        line = M.readline()
    except socket.timeout:
        raise SystemExit("no EXISTS within 20 s of IDLE")
    if line.endswith(b"EXISTS\r\n"):
        break
waited = time.time() - t0
assert line == b"* %d EXISTS\r\n" % (n + 1), line
assert time.time() - idling < 20, (time.time() - idling, waited)
M.sock.settimeout(30)
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
    let out = python_or(
        IMAPLIB_SESSION,
        &[&sys.ports.imap.to_string(), &smtp],
        || sys.logs(),
    );
    assert!(out.starts_with("ok"), "{out}");
}

/// RFC 7162 (CONDSTORE/QRESYNC), RFC 4731 ESEARCH, RFC 5258/5819
/// LIST-EXTENDED/LIST-STATUS, RFC 5182 SEARCHRES, RFC 3516 BINARY and
/// RFC 9051 IMAP4rev2, driven by Python's imaplib (which passes extension
/// syntax through and collects the untagged responses).
const IMAPLIB_EXTENSIONS: &str = r#"
import imaplib, ssl, sys, re
imap_port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
M = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
M.starttls(ctx)
M.login("alice@example.test", "alice-pw")
for cap in ("CONDSTORE", "QRESYNC", "ESEARCH", "LIST-EXTENDED", "LIST-STATUS",
            "SEARCHRES", "BINARY", "IMAP4REV2", "STATUS=SIZE"):
    assert cap in M.capabilities, (cap, M.capabilities)
typ, data = M.enable("QRESYNC")
assert typ == "OK" and M.untagged_responses.pop("ENABLED") == [b"QRESYNC"], data
typ, data = M.select("INBOX")
assert typ == "OK" and data == [b"3"], data
hms = int(M.untagged_responses["HIGHESTMODSEQ"][-1])
uv = int(M.untagged_responses["UIDVALIDITY"][-1])
# CONDSTORE: MODSEQ, CHANGEDSINCE, UNCHANGEDSINCE.
typ, data = M.fetch("1:*", "(UID MODSEQ)")
assert typ == "OK" and all(b"MODSEQ (" in d for d in data), data
typ, data = M.store("2", "+FLAGS", "(\\Flagged)")
assert typ == "OK" and b"MODSEQ (" in data[0], data
typ, data = M.fetch("1:*", "(FLAGS) (CHANGEDSINCE %d)" % hms)
assert typ == "OK" and len(data) == 1 and data[0].startswith(b"2 (") and b"\\Flagged" in data[0], data
typ, data = M.store("1:2", "(UNCHANGEDSINCE %d) +FLAGS.SILENT" % hms, "(\\Seen)")
assert typ == "OK" and len(data) == 1 and data[0].startswith(b"1 (") and b"MODSEQ" in data[0], data
# QRESYNC: expunge message 3, then resync from the old HIGHESTMODSEQ.
typ, data = M.store("3", "+FLAGS.SILENT", "(\\Deleted)")
typ, data = M.expunge()
assert typ == "OK", data
assert M.untagged_responses.pop("VANISHED") == [b"3"], M.untagged_responses
M.close()
typ, data = M._simple_command("SELECT", "INBOX (QRESYNC (%d %d 1:3))" % (uv, hms))
assert typ == "OK", data
M.state = "SELECTED"  # imaplib only knows its own select()
vanished = M.untagged_responses.pop("VANISHED", [])
assert vanished == [b"(EARLIER) 3"], vanished
fetched = M.untagged_responses.pop("FETCH", [])
assert any(b"UID 2 " in f and b"\\Flagged" in f for f in fetched), fetched
# ESEARCH and SEARCHRES.
typ, data = M._simple_command("UID", "SEARCH", "RETURN", "(MIN MAX COUNT SAVE)", "ALL")
assert typ == "OK", data
es = M.untagged_responses.pop("ESEARCH", [])
assert es and re.search(rb"UID MIN 1 MAX 2 COUNT 2", es[0]), es
typ, data = M.uid("FETCH", "$", "(FLAGS)")
assert typ == "OK" and len(data) == 2, data
# LIST-EXTENDED with LIST-STATUS.
typ, data = M.list('""', '"*" RETURN (SPECIAL-USE STATUS (MESSAGES SIZE))')
assert typ == "OK" and any(b"\\Sent" in l for l in data), data
st = M.untagged_responses.pop("STATUS", [])
assert any(re.search(rb"INBOX \(MESSAGES 2 SIZE \d+\)", s) for s in st), st
typ, data = M._simple_command("LIST", "(SUBSCRIBED)", '""', '"*"')
assert typ == "OK", data
# BINARY of a base64 part.
typ, data = M.fetch("1", "(BINARY.PEEK[1] BINARY.SIZE[1])")
assert typ == "OK" and data[0][1] == b"\x00\x01\x02binary", data
# IMAP4rev2: SEARCH answers ESEARCH, no RECENT in SELECT.
M.close()
typ, data = M.enable("IMAP4rev2")
assert typ == "OK" and M.untagged_responses.pop("ENABLED") == [b"IMAP4rev2"], data
M.untagged_responses.clear()
typ, data = M.select("INBOX")
assert "RECENT" not in M.untagged_responses, M.untagged_responses
typ, data = M._simple_command("SEARCH", "ALL")
es = M.untagged_responses.pop("ESEARCH", [])
assert es and es[0].endswith(b"ALL 1:2"), es
M.logout()
print("ok")
"#;

const BINARY_MSG: &str = "From: a@example.org\r\nTo: alice@example.test\r\nSubject: bin\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAECYmluYXJ5\r\n--b--\r\n";

const SMTPLIB_SEND_RAW: &str = r#"
import smtplib, sys
port, msg = int(sys.argv[1]), sys.argv[2]
with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
    assert not s.sendmail("sender@example.org", ["alice@example.test"], msg.encode())
print("ok")
"#;

fn imaplib_extensions(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    let smtp = sys.ports.smtp.to_string();
    // One at a time, so the binary message has UID 1.
    python(SMTPLIB_SEND_RAW, &[&smtp, BINARY_MSG]);
    sys.wait_messages("alice@example.test", 1, WAIT);
    python(SMTPLIB_SEND, &[&smtp, "second"]);
    sys.wait_messages("alice@example.test", 2, WAIT);
    python(SMTPLIB_SEND, &[&smtp, "third"]);
    sys.wait_messages("alice@example.test", 3, WAIT);
    let out = python(IMAPLIB_EXTENSIONS, &[&sys.ports.imap.to_string()]);
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

both!(imaplib_session, imaplib_extensions);
