//! Every SMTP limit is configurable and enforced.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn per_ip_connection_limit() {
    let sys = System::start(Backend::Embedded, "max_connections_per_ip = 2");
    let (_a, g1) = Smtp::connect(sys.ports.smtp);
    let (_b, g2) = Smtp::connect(sys.ports.smtp);
    assert!(g1.starts_with("220") && g2.starts_with("220"));
    let (_c, g3) = Smtp::connect(sys.ports.smtp);
    assert!(g3.starts_with("421 4.7.0"), "{g3}");
    drop(_a);
    // The server notices the closed session at its own pace: connect again
    // until greeted (a refused try is closed by the server and holds no
    // slot).
    let deadline = Instant::now() + WAIT;
    let _d = loop {
        let (d, g4) = Smtp::connect(sys.ports.smtp);
        if g4.starts_with("220") {
            break d;
        }
        assert!(
            g4.starts_with("421 4.7.0") && Instant::now() < deadline,
            "a slot is freed when a session ends (retried for up to {WAIT:?}): {g4:?}\n{}",
            sys.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
}

#[test]
fn listener_connection_limit() {
    let sys = System::start(Backend::Embedded, "max_connections = 1");
    let (_a, g1) = Smtp::connect(sys.ports.smtp);
    assert!(g1.starts_with("220"));
    let (_b, g2) = Smtp::connect(sys.ports.smtp);
    assert!(g2.starts_with("421 4.3.2"), "{g2}");
}

#[test]
fn idle_and_data_timeouts() {
    let sys = System::start(
        Backend::Embedded,
        "command_timeout_secs = 1\ndata_timeout_secs = 1",
    );
    sys.standard_directory();
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    let t = Instant::now();
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2"), "{r}\n{}", sys.logs());
    // The 1 s command timeout fired, not something much later: 15 s leaves
    // a loaded machine plenty of room and is still far from the default
    // timeout (minutes) and from the client's own 30 s read timeout.
    let waited = t.elapsed();
    assert!(waited < Duration::from_secs(15), "421 after {waited:?}");
    // EOF, not the client's 30 s read timeout: the server closed it.
    let mut rest = Vec::new();
    c.stream
        .read_to_end(&mut rest)
        .expect("the server closes the connection after the 421");
    assert!(rest.is_empty(), "nothing after the 421: {rest:?}");

    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    c.cmd("EHLO c.example.org");
    c.cmd("MAIL FROM:<s@example.org>");
    c.cmd("RCPT TO:<alice@example.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: slow\r\n");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    // Not delivered: rather than wait a while for it, deliver a complete
    // message and wait until it is there; had the timed-out one been
    // queued, it was queued first.
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    for (cmd, want) in [
        ("EHLO c.example.org", "250"),
        ("MAIL FROM:<s@example.org>", "250"),
        ("RCPT TO:<alice@example.test>", "250"),
        ("DATA", "354"),
        ("Subject: marker\r\n\r\ncomplete\r\n.", "250"),
    ] {
        let r = c.cmd(cmd);
        assert!(r.starts_with(want), "{cmd}: {r}");
    }
    let m = sys.wait_messages("alice@example.test", 1, WAIT);
    assert_eq!(m.len(), 1, "a timed-out DATA was delivered");
    let text = String::from_utf8_lossy(&sys.fetch("alice@example.test", m[0].0)).to_string();
    assert!(
        text.contains("Subject: marker\r\n"),
        "a timed-out DATA was delivered: {text}"
    );
}

#[test]
fn error_cap_closes_the_session() {
    let sys = System::start(Backend::Embedded, "max_errors = 3");
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    assert!(c.cmd("FROB").starts_with("500"));
    assert!(c.cmd("FROB").starts_with("500"));
    assert!(c.cmd("FROB").starts_with("500"));
    let r = c.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    let mut rest = Vec::new();
    c.stream
        .read_to_end(&mut rest)
        .expect("the server closes the connection after the 421");
    assert!(rest.is_empty() || String::from_utf8_lossy(&rest).starts_with("421"));
}

#[test]
fn line_length_limit_is_configurable() {
    let sys = System::start(Backend::Embedded, "max_line_length = 600");
    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    assert!(
        c.cmd(&format!("NOOP {}", "x".repeat(580)))
            .starts_with("250")
    );
    assert!(
        c.cmd(&format!("NOOP {}", "x".repeat(620)))
            .starts_with("500 5.5.2")
    );
    assert!(c.cmd("NOOP").starts_with("250"));
}
