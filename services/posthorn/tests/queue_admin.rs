//! `posthorn queue` end to end (docs/delivery.md, "Queue admin"): deferred
//! items listed with their last error, flushed by domain long before their
//! retry is due, held and released, deleted with a bounce — on both
//! backend sets, through the `posthorn` binary, against scripted aiosmtpd
//! peers found through dnsmasq.

mod common;

use common::remote::{submit, wait_sink};
use common::*;
use posthorn_test_support::{DnsServer, DnsZone, SmtpSink, free_port};

#[test]
fn queue_commands_embedded() {
    queue_commands(Backend::Embedded);
}

#[test]
fn queue_commands_cluster() {
    queue_commands(Backend::Cluster);
}

/// The data lines of `posthorn queue list` (without header and footer).
fn rows(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with("ID\t") && !l.starts_with("-- "))
        .map(str::to_string)
        .collect()
}

fn list(sys: &System, args: &[&str]) -> Vec<String> {
    let mut a = vec!["queue", "list"];
    a.extend_from_slice(args);
    rows(&sys.admin_ok(&a))
}

fn queue_commands(backend: Backend) {
    let port = free_port();
    let busy = |n: usize| vec!["\"451 4.3.0 busy, try later\""; n].join(", ");
    // slow.test defers the first two transactions, then accepts;
    // other.test defers everything.
    let slow = SmtpSink::start("127.0.0.2", port, &format!(r#"{{"rcpt": [{}]}}"#, busy(2)));
    let other = SmtpSink::start(
        "127.0.0.3",
        port,
        &format!(r#"{{"rcpt": [{}]}}"#, busy(100)),
    );
    let dns = DnsServer::start(
        &DnsZone::new()
            .local("test")
            .mx("slow.test", 10, "mx.slow.test")
            .a("mx.slow.test", "127.0.0.2")
            .mx("other.test", 10, "mx.other.test")
            .a("mx.other.test", "127.0.0.3"),
    );
    // Retries an hour apart: whatever is attempted again within the test
    // was asked for by a queue command.
    let sys = System::start_extra(
        backend,
        Extra {
            resolver: format!("nameservers = [\"{}\"]", dns.addr()),
            delivery: format!(
                "remote_port = {port}\nretry_min_secs = 3600\nretry_max_secs = 3600\nconnect_timeout_secs = 5"
            ),
            router: "queue_metrics_secs = 1".into(),
            ..Extra::default()
        },
    );
    sys.standard_directory();
    for rcpt in ["bob@slow.test", "carol@slow.test", "dave@other.test"] {
        let msg =
            format!("From: alice@example.test\r\nTo: {rcpt}\r\nSubject: queued\r\n\r\nhello\r\n");
        submit(&sys, rcpt, msg.as_bytes());
    }

    // All three deferred, with the peer's reply as the last error.
    let deferred = sys.wait_for("three deferred items", WAIT, || {
        let r = list(&sys, &["--deferred"]);
        (r.len() == 3).then_some(r)
    });
    for row in &deferred {
        let f: Vec<&str> = row.split('\t').collect();
        assert_eq!(f.len(), 9, "{row}");
        assert_eq!(f[1], "deferred", "{row}");
        assert_eq!(f[4], "<alice@example.test>", "{row}");
        assert_eq!(f[6], "1", "one attempt: {row}");
        assert!(f[8].contains("451 4.3.0 busy"), "last error: {row}");
    }
    // The router's gauges count them.
    sys.wait_for("posthorn_queue_items{state=\"deferred\"} 3", WAIT, || {
        let (_, m) = http_get(sys.ports.http[2], "/metrics")?;
        m.lines()
            .any(|l| l.starts_with("posthorn_queue_items{state=\"deferred\"} 3"))
            .then_some(())
    });
    let slow_rows = list(&sys, &["--domain", "slow.test"]);
    assert_eq!(slow_rows.len(), 2, "{slow_rows:?}");
    let dave_id = deferred
        .iter()
        .find(|r| r.contains("<dave@other.test>"))
        .and_then(|r| r.split('\t').next())
        .expect("dave's item")
        .to_string();
    let show = sys.admin_ok(&["queue", "show", &dave_id]);
    for want in [
        "state: deferred",
        "recipient: <dave@other.test>",
        "attempts: 1",
        "next attempt: ",
        "last error: ",
    ] {
        assert!(show.contains(want), "{want:?} in:\n{show}");
    }

    // Flush one domain: both of its messages are delivered now, not in an hour.
    let out = sys.admin_ok(&["queue", "flush", "--domain", "slow.test"]);
    assert!(out.starts_with("2 queued"), "{out}");
    wait_sink(&sys, &slow, 2);
    let left = sys.wait_for("slow.test's items gone from the queue", WAIT, || {
        let r = list(&sys, &[]);
        (r.len() == 1).then_some(r)
    });
    assert!(left[0].starts_with(&dave_id), "{left:?}");

    // Hold: flush leaves it alone; release: attempted at once.
    let out = sys.admin_ok(&["queue", "hold", &dave_id]);
    assert!(out.contains("held"), "{out}");
    assert!(list(&sys, &[])[0].contains("\theld\t"));
    let out = sys.admin_ok(&["queue", "flush"]);
    assert!(
        out.starts_with("0 queued"),
        "a held item is not flushed: {out}"
    );
    let attempts_before = other.events().matches("\"stage\": \"rcpt\"").count();
    sys.admin_ok(&["queue", "release", &dave_id]);
    sys.wait_for("dave's item attempted again after release", WAIT, || {
        let show = sys.admin_ok(&["queue", "show", &dave_id]);
        (show.contains("attempts: 2") && show.contains("state: deferred")).then_some(())
    });
    assert_eq!(
        other.events().matches("\"stage\": \"rcpt\"").count(),
        attempts_before + 1,
        "one more attempt"
    );

    // Delete with a bounce: gone from the queue, the sender told why.
    let out = sys.admin_ok(&["queue", "delete", "--bounce", &dave_id]);
    assert!(out.contains("deleted with a bounce"), "{out}");
    let m = sys.wait_messages("alice@example.test", 1, WAIT);
    let dsn = String::from_utf8_lossy(&sys.fetch("alice@example.test", m[0].0)).to_string();
    for want in [
        "Final-Recipient: rfc822; dave@other.test",
        "Action: failed",
        "Status: 5.0.0",
        "deleted from the queue by the administrator",
    ] {
        assert!(dsn.contains(want), "{want:?} in the bounce:\n{dsn}");
    }
    sys.wait_for("an empty queue", WAIT, || {
        list(&sys, &[]).is_empty().then_some(())
    });
    let out = admin(&sys.router_url(), &["queue", "show", &dave_id]);
    assert_eq!(
        out.status.code(),
        Some(65),
        "show of a deleted item: not found"
    );
    assert_eq!(other.messages().len(), 0, "nothing delivered to other.test");
}

/// A deferred item keeps its next attempt across a restart of `posthorn
/// serve`, whose embedded queue forgets NAK delays: it comes back at once,
/// the index says it is not due, and it waits (docs/delivery.md, "The queue
/// index").
#[test]
fn the_schedule_survives_a_restart_embedded() {
    let port = free_port();
    let busy = vec!["\"451 4.3.0 busy, try later\""; 100].join(", ");
    let peer = SmtpSink::start("127.0.0.2", port, &format!(r#"{{"rcpt": [{busy}]}}"#));
    let dns = DnsServer::start(
        &DnsZone::new()
            .local("test")
            .mx("slow.test", 10, "mx.slow.test")
            .a("mx.slow.test", "127.0.0.2"),
    );
    let mut sys = System::start_extra(
        Backend::Embedded,
        Extra {
            resolver: format!("nameservers = [\"{}\"]", dns.addr()),
            delivery: format!("remote_port = {port}\nretry_min_secs = 3600\nretry_max_secs = 3600"),
            ..Extra::default()
        },
    );
    sys.standard_directory();
    submit(&sys, "bob@slow.test", b"Subject: later\r\n\r\nhello\r\n");
    sys.wait_for("the item deferred", WAIT, || {
        (list(&sys, &["--deferred"]).len() == 1).then_some(())
    });
    sys.kill("serve");
    sys.spawn("serve");
    sys.wait_ready();
    sys.wait_for("the item back and found not due", WAIT, || {
        let (_, m) = http_get(sys.ports.http[4], "/metrics")?;
        m.lines()
            .any(|l| l.starts_with("posthorn_delivery_not_due_total "))
            .then_some(())
    });
    let rcpts = peer.events().matches("\"stage\": \"rcpt\"").count();
    assert_eq!(
        rcpts,
        1,
        "no second attempt an hour early:\n{}",
        peer.events()
    );
    let rows = list(&sys, &[]);
    let id = rows[0].split('\t').next().unwrap();
    let show = sys.admin_ok(&["queue", "show", id]);
    assert!(
        show.contains("attempts: 1") && show.contains("state: deferred"),
        "{show}"
    );
}
