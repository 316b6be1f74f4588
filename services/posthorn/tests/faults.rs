//! Fault tests: processes killed with SIGKILL and backends stopped while
//! mail flows. Nothing acknowledged with `250` may be lost or duplicated,
//! and nothing refused may be delivered.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `250` after the end of data.
    Accepted,
    /// A 4xx/5xx reply somewhere in the transaction.
    Refused,
    /// The connection broke after the end of data was sent, before a reply.
    Unknown,
}

/// Send message `i` (its unique original length identifies it); reconnects
/// lazily. Returns the outcome.
fn send_one(conn: &mut Option<Smtp>, port: u16, i: usize) -> Outcome {
    if conn.is_none() {
        let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return Outcome::Refused;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut c = Smtp::from_stream(stream);
        if !c.reply().starts_with("220") || !c.cmd("EHLO load.example.org").starts_with("250") {
            return Outcome::Refused;
        }
        *conn = Some(c);
    }
    let c = conn.as_mut().unwrap();
    let ok = |r: &str, code: &str| r.starts_with(code);
    let steps = [
        format!("MAIL FROM:<load{i:04}@example.org>"),
        "RCPT TO:<alice@example.test>".to_string(),
    ];
    for s in &steps {
        let r = c.try_cmd(s);
        match r {
            Some(r) if ok(&r, "250") => {}
            Some(r) => {
                let _ = c.try_cmd("RSET");
                if r.starts_with("421") {
                    *conn = None;
                }
                return Outcome::Refused;
            }
            None => {
                *conn = None;
                return Outcome::Refused;
            }
        }
    }
    match c.try_cmd("DATA") {
        Some(r) if ok(&r, "354") => {}
        Some(_) => {
            let _ = c.try_cmd("RSET");
            return Outcome::Refused;
        }
        None => {
            *conn = None;
            return Outcome::Refused;
        }
    }
    let body = format!("Subject: load {i:04}\r\n\r\n{}\r\n.\r\n", "x".repeat(i));
    if c.try_send(body.as_bytes()).is_none() {
        *conn = None;
        return Outcome::Unknown;
    }
    match c.try_reply() {
        Some(r) if r.starts_with("250") => Outcome::Accepted,
        Some(r) if r.starts_with('4') || r.starts_with('5') => {
            if r.starts_with("421") {
                *conn = None;
            }
            Outcome::Refused
        }
        _ => {
            *conn = None;
            Outcome::Unknown
        }
    }
}

/// 2,000 messages from 20 clients while `disrupt` runs (it kills and
/// restarts things); then check every outcome against alice's mailbox.
fn load_under_faults(
    sys: &mut System,
    disrupt: impl FnOnce(&mut System, &std::sync::atomic::AtomicUsize),
) {
    const CLIENTS: usize = 20;
    const PER_CLIENT: usize = 100;
    let outcomes = Arc::new(Mutex::new(HashMap::new()));
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let port = sys.ports.smtp;
    let mut threads = Vec::new();
    for c in 0..CLIENTS {
        let (outcomes, progress) = (outcomes.clone(), progress.clone());
        threads.push(std::thread::spawn(move || {
            let mut conn = None;
            for k in 0..PER_CLIENT {
                let i = c * PER_CLIENT + k;
                let o = send_one(&mut conn, port, i);
                outcomes.lock().unwrap().insert(i, o);
                progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if o != Outcome::Accepted {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }));
    }
    disrupt(sys, &progress);
    for t in threads {
        t.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    let accepted = outcomes
        .values()
        .filter(|o| **o == Outcome::Accepted)
        .count();
    let refused = outcomes
        .values()
        .filter(|o| **o == Outcome::Refused)
        .count();
    let unknown = outcomes
        .values()
        .filter(|o| **o == Outcome::Unknown)
        .count();
    eprintln!("accepted {accepted}, refused {refused}, unknown {unknown}");
    assert!(
        accepted >= 500,
        "too few accepted ({accepted}) for a meaningful test\n{}",
        sys.logs()
    );

    // Wait until the mailbox stops growing (routing drains the queue).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (0, Instant::now());
    let msgs = loop {
        let m = sys.messages("alice@example.test");
        if m.len() != last.0 {
            last = (m.len(), Instant::now());
        }
        if m.len() >= accepted && last.1.elapsed() > Duration::from_secs(3) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "mailbox has {} of {accepted} accepted messages\n{}",
            m.len(),
            sys.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Identify each stored message by its size: prefix and Received header
    // have a fixed length here, so size - i is the same for all.
    let base = {
        let (uid, size) = msgs[0];
        let stored = sys.fetch("alice@example.test", uid);
        let text = String::from_utf8_lossy(&stored);
        let i: usize = text
            .split("Subject: load ")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap()
            .parse()
            .unwrap();
        size as usize - i
    };
    let mut seen: HashMap<usize, usize> = HashMap::new();
    for (_, size) in &msgs {
        let i = (*size as usize)
            .checked_sub(base)
            .expect("a stored message smaller than any sent");
        *seen.entry(i).or_default() += 1;
    }
    for (i, o) in &outcomes {
        let n = seen.get(i).copied().unwrap_or(0);
        match o {
            Outcome::Accepted => assert_eq!(n, 1, "message {i} got 250 but is stored {n} times"),
            Outcome::Refused => assert_eq!(n, 0, "message {i} was refused but is stored {n} times"),
            Outcome::Unknown => assert!(n <= 1, "message {i} stored {n} times"),
        }
    }
    assert_eq!(seen.values().sum::<usize>(), msgs.len());
    assert!(
        seen.keys().all(|i| outcomes.contains_key(i)),
        "a message nobody sent"
    );
}

/// Wait until `n` messages have an outcome.
fn wait_progress(progress: &std::sync::atomic::AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.load(std::sync::atomic::Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "load stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn cluster_router_killed_twice_under_load() {
    let mut sys = System::start(Backend::Cluster, "");
    sys.standard_directory();
    load_under_faults(&mut sys, |sys, progress| {
        for at in [400, 1100] {
            wait_progress(progress, at);
            sys.kill("router");
            wait_progress(progress, at + 200);
            sys.spawn("router");
        }
    });
}

#[test]
fn embedded_serve_killed_twice_under_load() {
    let mut sys = System::start(Backend::Embedded, "");
    sys.standard_directory();
    load_under_faults(&mut sys, |sys, progress| {
        for at in [400, 1100] {
            wait_progress(progress, at);
            sys.kill("serve");
            std::thread::sleep(Duration::from_millis(300));
            sys.spawn("serve");
            sys.wait_ready();
        }
    });
}

/// Send one message; returns the final reply.
fn send_simple(port: u16, subject: &str) -> String {
    let (mut c, _) = Smtp::connect(port);
    c.cmd("EHLO c.example.org");
    c.cmd("MAIL FROM:<s@example.org>");
    c.cmd("RCPT TO:<alice@example.test>");
    c.cmd("DATA");
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    c.reply()
}

#[test]
fn s3_or_nats_down_during_data_is_451_and_never_delivered_later() {
    let mut sys = System::start(Backend::Cluster, "");
    sys.standard_directory();
    assert!(send_simple(sys.ports.smtp, "before").starts_with("250"));
    sys.wait_messages("alice@example.test", 1, Duration::from_secs(20));

    // S3 down: the PUT fails, 451 4.3.0.
    sys.s3.as_mut().unwrap().0.kill();
    let r = send_simple(sys.ports.smtp, "s3 down");
    assert!(r.starts_with("451 4.3.0"), "{r}");
    sys.s3.as_mut().unwrap().0.restart();

    // NATS down: the publish fails, 451 4.3.0.
    sys.nats.as_mut().unwrap().0.kill();
    let r = send_simple(sys.ports.smtp, "nats down");
    assert!(r.starts_with("451 4.3.0"), "{r}");
    sys.nats.as_mut().unwrap().0.restart();

    // Everything back: a new message goes through, the refused ones never do.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = send_simple(sys.ports.smtp, "after");
        if r.starts_with("250") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery: {r}\n{}",
            sys.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    sys.wait_messages("alice@example.test", 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    let msgs = sys.messages("alice@example.test");
    assert_eq!(msgs.len(), 2, "a refused message was delivered later");
    for (uid, _) in msgs {
        let text = String::from_utf8_lossy(&sys.fetch("alice@example.test", uid)).to_string();
        assert!(
            text.contains("Subject: before") || text.contains("Subject: after"),
            "{text}"
        );
    }
}
