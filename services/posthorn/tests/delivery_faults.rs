//! The delivery tier SIGKILLed twice while 500 messages to a remote peer
//! are in flight (see docs/delivery.md, "delivered once"): every message
//! must arrive at the peer, and duplicates are bounded by the one accepted
//! window (killed after the peer's `250`, before the `done` marker is
//! durable).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use posthorn_test_support::{DnsServer, DnsZone, SmtpSink, free_port};

/// Messages injected.
const MESSAGES: usize = 500;
/// `delivery.concurrency`: the number of transactions one delivery process
/// has open at once, so at most this many can be caught by one kill between
/// the peer's `250` and the marker.
const CONCURRENCY: usize = 4;
/// `delivery.ack_wait_secs`: items held by a killed process come back after this.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// The sink counts (unique messages received) at which the process is killed.
const KILL_AT: [usize; 2] = [100, 300];
/// The wait for all messages gives up after this long without progress.
const NO_PROGRESS: Duration = Duration::from_secs(120);

fn zone() -> DnsZone {
    DnsZone::new()
        .local("test")
        .mx("remote.test", 10, "mx.remote.test")
        .a("mx.remote.test", "127.0.0.6")
        .mx("other.test", 10, "mx.other.test")
        .a("mx.other.test", "127.0.0.6")
}

/// The unique number of message `i`: in its Subject and Message-ID.
fn subject(i: usize) -> String {
    format!("Subject: delivery-fault {i:04}")
}

/// Inject messages `range` over one SMTP connection to the MX port
/// (127.0.0.1 is in `smtp.relay_networks`, so remote recipients are relayed).
fn inject(port: u16, range: std::ops::Range<usize>) {
    let (mut c, greeting) = Smtp::connect(port);
    assert!(greeting.starts_with("220"), "{greeting}");
    let r = c.cmd("EHLO client.example.org");
    assert!(r.starts_with("250"), "{r}");
    for i in range {
        let domain = if i % 2 == 0 {
            "remote.test"
        } else {
            "other.test"
        };
        for line in [
            "MAIL FROM:<sender@example.org>".to_string(),
            format!("RCPT TO:<u{i}@{domain}>"),
        ] {
            let r = c.cmd(&line);
            assert!(r.starts_with("250"), "{line}: {r}");
        }
        let r = c.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
        c.send(
            format!(
                "From: sender@example.org\r\nTo: u{i}@{domain}\r\n{}\r\n\
                 Message-ID: <delivery-fault-{i:04}@example.org>\r\n\r\nbody {i}\r\n.\r\n",
                subject(i)
            )
            .as_bytes(),
        );
        let r = c.reply();
        assert!(r.starts_with("250"), "message {i}: {r}");
    }
    let _ = c.cmd("QUIT");
}

/// What the sink has received so far: times each unique message arrived.
/// Reads only the files it has not read yet (`msg-N.eml`, N from 1).
struct Seen {
    next: usize,
    counts: HashMap<usize, usize>,
    /// Arrival positions (N of `msg-N.eml`) of the messages that arrived more than once.
    positions: HashMap<usize, Vec<usize>>,
}

impl Seen {
    fn update(&mut self, sink: &SmtpSink) {
        while let Ok(m) = std::fs::read(sink.server.dir().join(format!("msg-{}.eml", self.next))) {
            let text = String::from_utf8_lossy(&m);
            let i = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: delivery-fault "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("unexpected message at the sink:\n{text}"));
            *self.counts.entry(i).or_default() += 1;
            self.positions.entry(i).or_default().push(self.next);
            self.next += 1;
        }
    }

    fn unique(&self) -> usize {
        self.counts.len()
    }

    fn received(&self) -> usize {
        self.next - 1
    }

    fn duplicates(&self) -> usize {
        self.received() - self.unique()
    }
}

/// Poll the sink until `done`; panic after [`NO_PROGRESS`] without a new
/// message (not a deadline on the whole wait: a slow machine is not a bug).
fn wait_sink(
    sys: &System,
    sink: &SmtpSink,
    seen: &mut Seen,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let mut last = (seen.received(), Instant::now());
    loop {
        seen.update(sink);
        if done(seen) {
            return;
        }
        if seen.received() != last.0 {
            last = (seen.received(), Instant::now());
        } else if last.1.elapsed() > NO_PROGRESS {
            let missing: Vec<usize> = (0..MESSAGES)
                .filter(|i| !seen.counts.contains_key(i))
                .collect();
            panic!(
                "no progress for {NO_PROGRESS:?} waiting for {what}: {} unique of {MESSAGES}, \
                 {} duplicate(s); missing {:?}\n{}",
                seen.unique(),
                seen.duplicates(),
                &missing[..missing.len().min(50)],
                sys.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn killed_twice_while_delivering(backend: Backend, process: &str) {
    let started = Instant::now();
    let dns = DnsServer::start(&zone());
    let port = free_port();
    let mut sys = System::start_extra(
        backend,
        Extra {
            resolver: format!("nameservers = [\"{}\"]", dns.addr()),
            delivery: format!(
                "remote_port = {port}\nconcurrency = {CONCURRENCY}\nack_wait_secs = {}\n\
                 retry_min_secs = 1\nretry_max_secs = 2\nconnect_timeout_secs = 5",
                ACK_WAIT.as_secs()
            ),
            ..Extra::default()
        },
    );
    // Four clients, many messages each. All are accepted (250) before the
    // first kill: killing `serve` also kills the SMTP listener.
    let smtp = sys.ports.smtp;
    let per = MESSAGES / 4;
    let clients: Vec<_> = (0..4)
        .map(|c| std::thread::spawn(move || inject(smtp, c * per..(c + 1) * per)))
        .collect();
    for c in clients {
        c.join().expect("injection failed");
    }
    let injected = started.elapsed();
    // Until now the peer refused connections (deliveries deferred, retried
    // after 1–2 s), so the whole load is queued when it comes up. It is slow
    // (50 ms a message), so the kills land while messages flow.
    let sink = SmtpSink::start("127.0.0.6", port, r#"{"data_delay": 0.05}"#);

    let mut seen = Seen {
        next: 1,
        counts: HashMap::new(),
        positions: HashMap::new(),
    };
    let mut kills = Vec::new();
    for at in KILL_AT {
        wait_sink(&sys, &sink, &mut seen, &format!("{at} messages"), |s| {
            s.unique() >= at
        });
        sys.kill(process);
        seen.update(&sink);
        kills.push((seen.unique(), seen.received()));
        sys.spawn(process);
        sys.wait_ready();
    }
    let last_ready = Instant::now();
    wait_sink(&sys, &sink, &mut seen, "every message", |s| {
        s.unique() >= MESSAGES
    });
    // Items the second kill caught come back ACK_WAIT after their last
    // heartbeat; one whose message the peer had accepted is then acked
    // (marker) or, in the accepted window, sent again. Keep counting until
    // they have surely come back, so a late duplicate is counted too. A
    // quiet period (docs/testing.md): there is nothing positive to wait for,
    // as an item found settled by its marker is acked without a trace.
    let quiet = last_ready + 3 * ACK_WAIT;
    while Instant::now() < quiet {
        seen.update(&sink);
        std::thread::sleep(Duration::from_millis(100));
    }
    seen.update(&sink);

    eprintln!(
        "{backend:?}: injected in {injected:?}; killed {process} at {kills:?} (unique, received); \
         {} received, {} unique, {} duplicate(s) (message: arrival positions) {:?}; {:?} in all",
        seen.received(),
        seen.unique(),
        seen.duplicates(),
        seen.positions
            .iter()
            .filter(|(_, p)| p.len() > 1)
            .collect::<Vec<_>>(),
        started.elapsed()
    );
    // Both kills landed while messages were in flight, or the test tested nothing.
    assert!(
        kills.iter().all(|k| k.0 < MESSAGES),
        "all delivered before a kill ({kills:?}): slow the sink down"
    );
    assert_eq!(seen.unique(), MESSAGES, "mail lost");
    // The accepted window: a process killed after a peer's 250 and before
    // the marker is durable sends that message once more. So is one killed
    // after its end of data and before the reply: the sink (sleeping
    // data_delay) still accepts and records it though nobody reads the 250
    // (the RFC 1047 window). One process has at most CONCURRENCY
    // transactions open, so each kill can cause at most CONCURRENCY
    // duplicates; more would mean the marker is not doing its job.
    assert!(
        seen.duplicates() <= KILL_AT.len() * CONCURRENCY,
        "{} duplicates after {} kills with concurrency {CONCURRENCY}\n{}",
        seen.duplicates(),
        KILL_AT.len(),
        sys.logs()
    );
    assert!(
        seen.counts.values().all(|n| *n <= KILL_AT.len() + 1),
        "a message delivered more often than it was caught by a kill: {:?}",
        seen.counts
    );
    // The queue index agrees with the stream: every item settled, none
    // left listed (items the kills caught settle when they come back).
    sys.wait_for("an empty queue index", WAIT, || {
        let out = sys.admin_ok(&["queue", "list"]);
        out.lines()
            .any(|l| l == "-- 0 shown, 0 queued")
            .then_some(())
    });
    drop(sink);
}

#[test]
fn cluster_delivery_killed_twice_while_delivering() {
    killed_twice_while_delivering(Backend::Cluster, "delivery");
}

#[test]
fn embedded_serve_killed_twice_while_delivering() {
    killed_twice_while_delivering(Backend::Embedded, "serve");
}
