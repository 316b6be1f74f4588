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
    std::thread::sleep(Duration::from_millis(300));
    let (_d, g4) = Smtp::connect(sys.ports.smtp);
    assert!(
        g4.starts_with("220"),
        "a slot is freed when a session ends: {g4}"
    );
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
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut rest = Vec::new();
    let _ = c.stream.read_to_end(&mut rest);
    assert!(rest.is_empty(), "connection closed after the timeout");

    let (mut c, _) = Smtp::connect(sys.ports.smtp);
    c.cmd("EHLO c.example.org");
    c.cmd("MAIL FROM:<s@example.org>");
    c.cmd("RCPT TO:<alice@example.test>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: slow\r\n");
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sys.messages("alice@example.test").is_empty(),
        "a timed-out DATA was delivered"
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
    let _ = c.stream.read_to_end(&mut rest);
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
