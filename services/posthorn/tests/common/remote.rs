//! Helpers of the remote-delivery tests: submission as alice and waiting
//! for what a scripted next hop (`SmtpSink`) received.

use posthorn_test_support::{SmtpSink, free_port};

use super::{System, WAIT, python_or};

/// Submit `msg` as alice (submission port, STARTTLS, AUTH PLAIN) to `rcpt`
/// with `BODY=8BITMIME`.
pub fn submit(sys: &System, rcpt: &str, msg: &[u8]) {
    let file = sys.dir.path().join(format!("submit-{}.eml", free_port()));
    std::fs::write(&file, msg).unwrap();
    python_or(
        r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=60)
s.starttls(context=ssl._create_unverified_context())
s.login("alice@example.test", "alice-pw")
s.sendmail("alice@example.test", [sys.argv[2]], open(sys.argv[3], "rb").read(),
           mail_options=["BODY=8BITMIME"])
s.quit()
"#,
        &[
            &sys.ports.submission.to_string(),
            rcpt,
            file.to_str().unwrap(),
        ],
        || sys.logs(),
    );
}

/// Wait until `sink` holds at least `n` messages; all it holds.
pub fn wait_sink(sys: &System, sink: &SmtpSink, n: usize) -> Vec<Vec<u8>> {
    sys.wait_for(
        &format!("{n} message(s) at the sink {}", sink.ip()),
        WAIT,
        || {
            let m = sink.messages();
            (m.len() >= n).then_some(m)
        },
    )
}
