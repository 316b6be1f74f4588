//! The cache: answers are kept for their TTL and served without asking the
//! server; negative answers for the SOA's negative TTL (RFC 2308), not at
//! all without an SOA.

mod common;

use std::time::{Duration, Instant};

use common::{kind, poll, resolver, resolver_with};
use posthorn_proto::resolver::v1::ResultKind;
use posthorn_test_support::{DnsServer, DnsZone};

fn zone(ttl: u32, mx_host: &str) -> DnsZone {
    DnsZone::new()
        .ttl(ttl)
        .authoritative("test")
        .mx("remote.test", 10, mx_host)
        .a(mx_host, "127.0.0.2")
}

#[tokio::test]
async fn a_cached_answer_is_served_without_the_server() {
    let mut dns = DnsServer::start(&zone(300, "mx1.remote.test"));
    let r = resolver(&dns);
    let first = r.lookup_mx("remote.test", true).await.unwrap();
    assert_eq!(first.hosts[0].addresses, ["127.0.0.2"]);
    let seen = dns.queries_seen();
    // Same question again: from the cache, the server is not asked.
    let second = r.lookup_mx("remote.test", true).await.unwrap();
    assert_eq!(second.hosts, first.hosts);
    assert_eq!(dns.queries_seen(), seen);
    // Even with the server gone.
    dns.stop();
    let third = r.lookup_mx("remote.test", true).await.unwrap();
    assert_eq!(kind(&third.answer), ResultKind::Ok);
    assert_eq!(third.hosts, first.hosts);
    let ttl = third.answer.unwrap().ttl_secs;
    assert!((1..=300).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn an_expired_answer_is_asked_for_again() {
    let mut dns = DnsServer::start(&zone(2, "mx1.remote.test"));
    let r = resolver(&dns);
    let asked = Instant::now();
    let first = r.lookup_mx("remote.test", false).await.unwrap();
    assert_eq!(first.hosts[0].exchange, "mx1.remote.test");
    // The server now says something else; we see it once the TTL is over.
    dns.restart_with(&zone(2, "mx2.remote.test"));
    poll("the new MX after the TTL", || async {
        let mx = r.lookup_mx("remote.test", false).await.unwrap();
        (mx.hosts.first().map(|h| h.exchange.as_str()) == Some("mx2.remote.test")).then_some(())
    })
    .await;
    // Lower bound only: the old answer was kept for its 2 s.
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_negative_answer_is_kept_for_the_soa_negative_ttl() {
    // dnsmasq's authoritative SOA has the zone TTL as TTL and MINIMUM.
    let mut dns = DnsServer::start(&zone(300, "mx1.remote.test"));
    let r = resolver(&dns);
    let nx = r.lookup_mx("new.test", true).await.unwrap();
    assert_eq!(kind(&nx.answer), ResultKind::Nxdomain);
    let ttl = nx.answer.unwrap().ttl_secs;
    assert!((1..=300).contains(&ttl), "{ttl}");
    let seen = dns.queries_seen();
    let again = r.lookup_mx("new.test", true).await.unwrap();
    assert_eq!(kind(&again.answer), ResultKind::Nxdomain);
    assert_eq!(dns.queries_seen(), seen, "the NXDOMAIN came from the cache");
    // NODATA too (mx1 has an A record only).
    let nodata = r.lookup_txt("mx1.remote.test").await.unwrap();
    assert_eq!(kind(&nodata.answer), ResultKind::NoRecords);
    dns.stop();
    let cached = r.lookup_txt("mx1.remote.test").await.unwrap();
    assert_eq!(kind(&cached.answer), ResultKind::NoRecords);
    assert_eq!(
        kind(&r.lookup_mx("new.test", true).await.unwrap().answer),
        ResultKind::Nxdomain
    );
}

#[tokio::test]
async fn an_expired_negative_answer_is_asked_for_again() {
    let mut dns = DnsServer::start(&zone(2, "mx1.remote.test"));
    let r = resolver(&dns);
    let asked = Instant::now();
    let nx = r.lookup_mx("new.test", true).await.unwrap();
    assert_eq!(kind(&nx.answer), ResultKind::Nxdomain);
    // The domain appears; we see it once the negative TTL is over.
    dns.restart_with(&zone(2, "mx1.remote.test").mx("new.test", 10, "mx1.remote.test"));
    poll("the new domain after the negative TTL", || async {
        let mx = r.lookup_mx("new.test", true).await.unwrap();
        (kind(&mx.answer) == ResultKind::Ok).then_some(())
    })
    .await;
    // Lower bound only: the NXDOMAIN was kept for its 2 s.
    assert!(
        asked.elapsed() >= Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_negative_answer_without_soa_is_not_kept() {
    // `local` NXDOMAIN answers carry no SOA: nothing says how long they
    // hold, so they are not cached (RFC 2308 §5).
    let mut dns = DnsServer::start(&DnsZone::new().ttl(300).local("test"));
    let r = resolver_with(&dns, 1, 1);
    let nx = r.lookup_ip("gone.test").await.unwrap();
    assert_eq!(kind(&nx.answer), ResultKind::Nxdomain);
    assert_eq!(nx.answer.unwrap().ttl_secs, 0);
    dns.stop();
    let again = r.lookup_ip("gone.test").await.unwrap();
    assert_eq!(
        kind(&again.answer),
        ResultKind::Temporary,
        "asked the (stopped) server"
    );
}
