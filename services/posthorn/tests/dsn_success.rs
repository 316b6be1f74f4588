//! RFC 3461 success notices end to end through the `posthorn` binary:
//! alice submits one message to bob (`NOTIFY=SUCCESS`, `ORCPT`) and carol
//! (no NOTIFY) with Python smtplib, and finds over IMAP (imaplib) exactly
//! one `Action: delivered` DSN in her INBOX, about bob only
//! (docs/architecture.md, "Delivery status notifications from the router").

mod common;

use common::*;

/// Submit as alice on the submission port (STARTTLS, AUTH PLAIN): one
/// transaction, bob with `NOTIFY=SUCCESS,FAILURE` and an ORCPT, carol
/// without parameters. `argv[3]` is the subject.
const SEND: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port, timeout=60)
s.starttls(context=ssl._create_unverified_context())
s.login("alice@example.test", "alice-pw")
assert s.has_extn("dsn"), s.esmtp_features
msg = ("From: Alice <alice@example.test>\r\nTo: bob@example.test, carol@example.test\r\n"
       "Subject: %s\r\nMessage-ID: <%s@example.test>\r\n\r\nsecret body\r\n") % (sys.argv[2], sys.argv[2])
if sys.argv[3] == "notify":
    code, reply = s.mail("alice@example.test", ["RET=HDRS", "ENVID=env-42"])
    assert code == 250, (code, reply)
    code, reply = s.rcpt("bob@example.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.test"])
    assert code == 250, (code, reply)
    code, reply = s.rcpt("carol@example.test")
    assert code == 250, (code, reply)
    code, reply = s.data(msg.encode())
    assert code == 250, (code, reply)
else:
    assert not s.sendmail("alice@example.test", ["alice@example.test"], msg.encode())
s.quit()
print("ok")
"#;

/// alice's INBOX over IMAP (STARTTLS): prints each message, separated by
/// a line `=====`.
const READ_INBOX: &str = r#"
import imaplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
M = imaplib.IMAP4("127.0.0.1", int(sys.argv[1]), timeout=30)
M.starttls(ctx)
M.login("alice@example.test", "alice-pw")
typ, _ = M.select("INBOX", readonly=True)
assert typ == "OK"
typ, data = M.search(None, "ALL")
for n in data[0].split():
    typ, msg = M.fetch(n, "(BODY.PEEK[])")
    assert typ == "OK", msg
    sys.stdout.write(msg[0][1].decode("utf-8", "replace"))
    sys.stdout.write("\n=====\n")
M.logout()
"#;

#[test]
fn delivered_notice_embedded() {
    delivered_notice(Backend::Embedded);
}

#[test]
fn delivered_notice_cluster() {
    delivered_notice(Backend::Cluster);
}

fn delivered_notice(backend: Backend) {
    let sys = System::start(backend, "");
    sys.standard_directory();
    sys.admin_ok(&[
        "user",
        "add",
        "carol@example.test",
        "--password",
        "carol-pw",
    ]);
    let submission = sys.ports.submission.to_string();
    python_or(SEND, &[&submission, "report-me", "notify"], || sys.logs());

    // Both got the message; alice got one notice.
    sys.wait_messages("bob@example.test", 1, WAIT);
    sys.wait_messages("carol@example.test", 1, WAIT);
    sys.wait_messages("alice@example.test", 1, WAIT);
    // A later message to alice herself: once it is in, anything the first
    // message caused has been routed too.
    python_or(SEND, &[&submission, "marker", "plain"], || sys.logs());
    sys.wait_for("the marker in alice's INBOX", WAIT, || {
        let inbox = python(READ_INBOX, &[&sys.ports.imap.to_string()]);
        inbox.contains("Subject: marker").then_some(())
    });

    let inbox = python(READ_INBOX, &[&sys.ports.imap.to_string()]);
    let messages: Vec<&str> = inbox.split("\n=====\n").filter(|m| !m.is_empty()).collect();
    assert_eq!(messages.len(), 2, "one notice and the marker:\n{inbox}");
    let dsn = messages
        .iter()
        .find(|m| m.contains("multipart/report"))
        .unwrap_or_else(|| panic!("no DSN in alice's INBOX:\n{inbox}"));
    assert_eq!(inbox.matches("Action: delivered").count(), 1, "{inbox}");
    for want in [
        "Return-Path: <>\r\n",
        "Subject: Successful Mail Delivery Report\r\n",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Original-Envelope-Id: env-42\r\n",
        "Final-Recipient: rfc822; bob@example.test\r\n\
         Original-Recipient: rfc822;bob@example.test\r\n\
         Action: delivered\r\n\
         Status: 2.0.0\r\n",
        // RET=HDRS: the headers of the message, not its body.
        "Content-Type: text/rfc822-headers\r\n",
        "Subject: report-me\r\n",
    ] {
        assert!(dsn.contains(want), "missing {want:?} in\n{dsn}");
    }
    assert!(!dsn.contains("secret body"), "{dsn}");
    // carol asked for nothing: no notice about her.
    assert!(!inbox.contains("Final-Recipient: rfc822; carol"), "{inbox}");
    assert_eq!(sys.messages("bob@example.test").len(), 1);
    assert_eq!(sys.messages("carol@example.test").len(), 1);
}
