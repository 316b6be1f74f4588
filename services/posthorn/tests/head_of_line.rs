//! A dead destination does not hold up a healthy one (docs/delivery.md,
//! "Destinations"): 2,000 items for a domain whose MX accepts TCP and
//! never answers are deferred without ever holding more than
//! `per_domain_concurrency` connections to it, and 500 messages for a
//! healthy domain are then all delivered. The issue's scale (10,000 and
//! 1,000) and the rate next to the same load without the dead domain are
//! a benchmark's job, not a test's: the suite must stay short and free of
//! timing (docs/testing.md).

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use posthorn_test_support::{DnsServer, DnsZone, SmtpSink, free_port};

const DEAD: usize = 2_000;
const HEALTHY: usize = 500;
const PER_DOMAIN: usize = 4;

/// A peer that accepts connections and never says a word; counts how many
/// it holds at once.
struct Blackhole {
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Blackhole {
    fn start(ip: &str, port: u16) -> Blackhole {
        let listener = TcpListener::bind((ip, port)).expect("blackhole listen");
        let b = Blackhole {
            open: Arc::default(),
            most: Arc::default(),
            accepted: Arc::default(),
        };
        let (open, most, accepted) = (b.open.clone(), b.most.clone(), b.accepted.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let open = open.clone();
                std::thread::spawn(move || {
                    // Read (and ignore) until the client gives up.
                    let mut buf = [0u8; 1024];
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                    open.fetch_sub(1, Ordering::SeqCst);
                    drop::<TcpStream>(conn);
                });
            }
        });
        b
    }
}

/// Submit `messages` messages of `per_message` recipients each
/// (`user<i>@<domain>`) on one authenticated submission session.
fn submit_many(sys: &System, domain: &str, messages: usize, per_message: usize) {
    python_or(
        r#"
import smtplib, ssl, sys
port, domain, messages, per = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = smtplib.SMTP("127.0.0.1", port, timeout=120)
s.starttls(context=ssl._create_unverified_context())
s.login("alice@example.test", "alice-pw")
for m in range(messages):
    rcpts = ["user%d@%s" % (m * per + i, domain) for i in range(per)]
    body = "From: alice@example.test\r\nSubject: m%d\r\n\r\nhello\r\n" % m
    s.sendmail("alice@example.test", rcpts, body)
s.quit()
"#,
        &[
            &sys.ports.submission.to_string(),
            domain,
            &messages.to_string(),
            &per_message.to_string(),
        ],
        || sys.logs(),
    );
}

fn gauge(sys: &System, line: &str) -> bool {
    http_get(sys.ports.http[2], "/metrics")
        .map(|(_, m)| m.lines().any(|l| l == line))
        .unwrap_or(false)
}

#[test]
fn a_dead_domain_does_not_hold_up_a_healthy_one_embedded() {
    dead_domain(Backend::Embedded);
}

#[test]
fn a_dead_domain_does_not_hold_up_a_healthy_one_cluster() {
    dead_domain(Backend::Cluster);
}

fn dead_domain(backend: Backend) {
    let port = free_port();
    let healthy = SmtpSink::start("127.0.0.2", port, "{}");
    let dead = Blackhole::start("127.0.0.3", port);
    let dns = DnsServer::start(
        &DnsZone::new()
            .local("test")
            .mx("healthy.test", 10, "mx.healthy.test")
            .a("mx.healthy.test", "127.0.0.2")
            .mx("dead.test", 10, "mx.dead.test")
            .a("mx.dead.test", "127.0.0.3"),
    );
    // The greeting timeout is short only to keep the test short; the
    // suspension outlasts the test, and retries come after it.
    let sys = System::start_extra(
        backend,
        Extra {
            resolver: format!("nameservers = [\"{}\"]", dns.addr()),
            delivery: format!(
                "remote_port = {port}\nconcurrency = 16\nper_domain_concurrency = {PER_DOMAIN}\n\
                 dead_destination_secs = 600\ntimeout_greeting_secs = 3\n\
                 retry_min_secs = 600\nretry_max_secs = 600"
            ),
            router: "queue_metrics_secs = 1".into(),
            ..Extra::default()
        },
    );
    sys.standard_directory();
    let started = std::time::Instant::now();
    submit_many(&sys, "dead.test", DEAD / 100, 100);
    let submitted = started.elapsed();
    let want = format!("posthorn_queue_items{{state=\"deferred\"}} {DEAD}");
    sys.wait_for(&want, 10 * WAIT, || gauge(&sys, &want).then_some(()));
    let deferred = started.elapsed();
    let healthy_start = std::time::Instant::now();
    submit_many(&sys, "healthy.test", HEALTHY / 100, 100);
    sys.wait_for(
        &format!("{HEALTHY} messages at the healthy peer"),
        10 * WAIT,
        || (healthy.messages().len() >= HEALTHY).then_some(()),
    );
    eprintln!(
        "{backend:?}: {DEAD} dead items submitted in {submitted:?}, all deferred after {deferred:?}; \
         {HEALTHY} healthy delivered in {:?}; blackhole: {} connections, at most {} at once",
        healthy_start.elapsed(),
        dead.accepted.load(Ordering::SeqCst),
        dead.most.load(Ordering::SeqCst),
    );
    let most = dead.most.load(Ordering::SeqCst);
    assert!(
        (1..=PER_DOMAIN).contains(&most),
        "at most {PER_DOMAIN} connections to the dead domain at once, saw {most}"
    );
    assert!(
        dead.accepted.load(Ordering::SeqCst) <= 2 * PER_DOMAIN,
        "the dead domain was suspended after its first timeouts, not tried item by item"
    );
    assert_eq!(
        healthy.messages().len(),
        HEALTHY,
        "each healthy message once"
    );
}
