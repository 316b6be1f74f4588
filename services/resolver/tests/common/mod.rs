//! Shared helpers of the resolver tests: a resolver pointed at a dnsmasq,
//! a stand-in upstream that answers SERVFAIL, polling.

#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use posthorn_config::ResolverConfig;
use posthorn_proto::resolver::v1::{Answer, ResultKind};
use posthorn_resolver::Resolver;
use posthorn_test_support::DnsServer;

/// Bounds a hang only (docs/testing.md).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A resolver asking only `dns`, with a timeout generous enough for a busy
/// machine.
pub fn resolver(dns: &DnsServer) -> Resolver {
    resolver_with(dns, 10, 2)
}

/// A resolver asking only `dns` with this timeout and number of tries.
pub fn resolver_with(dns: &DnsServer, timeout_secs: u64, attempts: u32) -> Resolver {
    Resolver::new(&ResolverConfig {
        nameservers: vec![dns.addr().to_string()],
        timeout_secs,
        attempts,
        cache_size: 1000,
        ..Default::default()
    })
    .expect("resolver")
}

/// The answer part of a reply.
pub fn kind(a: &Option<Answer>) -> ResultKind {
    a.as_ref().expect("reply has an answer").result()
}

/// A UDP "server" that answers every query SERVFAIL, counting queries.
pub fn servfail_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = sock.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            seen.fetch_add(1, Ordering::SeqCst);
            if let Some(reply) = servfail_reply(&buf[..n]) {
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    (addr, count)
}

/// The query's ID and question with QR, RA and RCODE 2 (SERVFAIL).
fn servfail_reply(q: &[u8]) -> Option<Vec<u8>> {
    let mut end = 12;
    while *q.get(end)? != 0 {
        end += 1 + usize::from(q[end]);
    }
    end += 1 + 4;
    let question = q.get(12..end)?;
    let mut r = q[..2].to_vec();
    r.extend_from_slice(&[0x80 | (q[2] & 0x01), 0x82, 0, 1, 0, 0, 0, 0, 0, 0]);
    r.extend_from_slice(question);
    Some(r)
}

/// A UDP socket that takes queries and never answers.
pub fn silent_server() -> (SocketAddr, UdpSocket) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    (sock.local_addr().expect("addr"), sock)
}

/// Call `f` until it returns `Some`, panicking with `what` after [`DEADLINE`].
pub async fn poll<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "waited {DEADLINE:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
