//! Submission (587 STARTTLS, 465 implicit TLS) with AUTH, through swaks and
//! Python smtplib; STARTTLS injection (CVE-2011-0411); sender ownership.

mod common;

use common::*;

#[test]
fn swaks_starttls_auth_submission() {
    let sys = System::start(Backend::Embedded, "");
    sys.standard_directory();
    let o = std::process::Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", sys.ports.submission),
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "alice-pw",
            "--from",
            "alice@example.test",
            "--to",
            "bob@example.test",
            "--header",
            "Subject: submitted",
            "--body",
            "via 587",
        ])
        .output()
        .expect("swaks");
    assert!(o.status.success(), "swaks: {}", out(&o));
    let m = sys.wait_messages("bob@example.test", 1, WAIT);
    let text = String::from_utf8_lossy(&sys.fetch("bob@example.test", m[0].0)).to_string();
    assert!(text.contains("with ESMTPSA id "), "{text}");
    assert!(text.contains("(using TLSv1."), "{text}");
    // AUTH LOGIN works too.
    let o = std::process::Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", sys.ports.submission),
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "bob@example.test",
            "--auth-password",
            "bob-pw",
            "--from",
            "bob@example.test",
            "--to",
            "alice@example.test",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "swaks LOGIN: {}", out(&o));
    sys.wait_messages("alice@example.test", 1, WAIT);
    // A wrong password is 535 5.7.8.
    let o = std::process::Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{}", sys.ports.submission),
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.test",
            "--auth-password",
            "wrong",
            "--from",
            "alice@example.test",
            "--to",
            "bob@example.test",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("535 5.7.8"),
        "{}",
        out(&o)
    );
}

const SMTPLIB: &str = r#"
import smtplib, ssl, sys
port, implicit = int(sys.argv[1]), sys.argv[2] == "465"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
if implicit:
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=30)
else:
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("c.example.org")
    # Before TLS, no AUTH is offered and MAIL needs authentication.
    assert "auth" not in s.esmtp_features, s.esmtp_features
    code, _ = s.mail("alice@example.test"); assert code == 530, code
    s.rset()
    s.starttls(context=ctx)
s.ehlo("c.example.org")
assert "auth" in s.esmtp_features, s.esmtp_features
try:
    s.login("alice@example.test", "wrong")
    raise SystemExit("wrong password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.login("alice@example.test", "alice-pw")
# Only her own addresses (or aliases that reach her) as MAIL FROM.
code, msg = s.mail("bob@example.test"); assert code == 553, (code, msg); s.rset()
code, msg = s.mail("team@example.test"); assert code == 250, (code, msg); s.rset()
refused = s.sendmail("alice@example.test", ["bob@example.test", "friend@elsewhere.test"], b"Subject: smtplib\r\n\r\nhi\r\n")
assert not refused, refused
s.quit()
print("ok")
"#;

#[test]
fn smtplib_starttls_and_implicit_tls() {
    let sys = System::start(Backend::Embedded, "");
    sys.standard_directory();
    python(SMTPLIB, &[&sys.ports.submission.to_string(), "587"]);
    sys.wait_messages("bob@example.test", 1, WAIT);
    python(SMTPLIB, &[&sys.ports.submissions.to_string(), "465"]);
    sys.wait_messages("bob@example.test", 2, WAIT);
}

const STARTTLS_INJECTION: &str = r#"
import socket, ssl, sys
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port), timeout=30)
f = s.makefile("rb")
def reply():
    lines = []
    while True:
        l = f.readline().decode()
        lines.append(l)
        if len(l) < 4 or l[3] == " ":
            return "".join(lines)
reply()
s.sendall(b"EHLO c.example.org\r\n"); reply()
# CVE-2011-0411: a command pipelined after STARTTLS in the same packet.
s.sendall(b"STARTTLS\r\nRSET\r\n")
r = reply(); assert r.startswith("220"), r
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s)
tf = t.makefile("rb")
t.sendall(b"EHLO c.example.org\r\n")
first = tf.readline().decode()
# The injected RSET must not be answered: the first line is EHLO's.
assert first.startswith("250-"), first
print("ok")
"#;

#[test]
fn starttls_discards_pipelined_plaintext() {
    let sys = System::start(Backend::Embedded, "");
    python(STARTTLS_INJECTION, &[&sys.ports.smtp.to_string()]);
}

#[test]
fn auth_needs_tls_and_is_not_offered_on_mx() {
    let sys = System::start(Backend::Embedded, "");
    sys.standard_directory();
    let (mut c, _) = Smtp::connect(sys.ports.submission);
    let ehlo = c.cmd("EHLO c.example.org");
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let r = c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==");
    assert!(r.starts_with("538 5.7.11"), "{r}");
    let r = c.cmd("MAIL FROM:<alice@example.test>");
    assert!(r.starts_with("530 5.7.0"), "{r}");
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    c.cmd("EHLO c.example.org");
    let r = c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==");
    assert!(r.starts_with("502 5.5.1"), "{r}");
}
