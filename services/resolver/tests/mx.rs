//! `LookupMx` against a real DNS server (dnsmasq): RFC 5321 §5.1 ordering,
//! implicit MX, RFC 7505 null MX, NXDOMAIN and NODATA.

mod common;

use std::collections::HashSet;

use common::{kind, resolver};
use posthorn_proto::resolver::v1::ResultKind;
use posthorn_test_support::{DnsServer, DnsZone};

fn zone() -> DnsZone {
    DnsZone::new()
        .ttl(30)
        .authoritative("test")
        .mx("remote.test", 20, "mx2.remote.test")
        .mx("remote.test", 10, "mx1.remote.test")
        .mx("remote.test", 30, "mx3.remote.test")
        .a("mx1.remote.test", "127.0.0.2")
        .a("mx1.remote.test", "::2")
        .a("mx2.remote.test", "127.0.0.3")
        .mx("equal.test", 10, "a.equal.test")
        .mx("equal.test", 10, "b.equal.test")
        .mx("equal.test", 10, "c.equal.test")
        .mx("equal.test", 5, "first.equal.test")
        .mx("equal.test", 20, "last.equal.test")
        .a("v4only.test", "127.0.0.9")
        .a("v6only.test", "::9")
        .a("both.test", "127.0.0.10")
        .a("both.test", "::10")
        .null_mx("nomail.test")
        .txt("txtonly.test", &["no mail here"])
}

#[tokio::test]
async fn hosts_come_by_preference_with_their_addresses() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);
    let mx = r.lookup_mx("Remote.Test.", true).await.unwrap();
    assert_eq!(kind(&mx.answer), ResultKind::Ok);
    assert!(!mx.implicit);
    let hosts: Vec<(u32, &str)> = mx
        .hosts
        .iter()
        .map(|h| (h.preference, h.exchange.as_str()))
        .collect();
    assert_eq!(
        hosts,
        [
            (10, "mx1.remote.test"),
            (20, "mx2.remote.test"),
            (30, "mx3.remote.test")
        ]
    );
    // IPv6 first, then IPv4.
    assert_eq!(mx.hosts[0].addresses, ["::2", "127.0.0.2"]);
    assert_eq!(mx.hosts[0].address_result(), ResultKind::Ok);
    assert_eq!(mx.hosts[1].addresses, ["127.0.0.3"]);
    assert_eq!(mx.hosts[1].address_result(), ResultKind::Ok);
    // A host without addresses is reported as such; the others still count.
    assert!(mx.hosts[2].addresses.is_empty());
    assert_eq!(mx.hosts[2].address_result(), ResultKind::Nxdomain);
    let a = mx.answer.as_ref().unwrap();
    assert!((1..=30).contains(&a.ttl_secs), "{a:?}");
    assert!(!a.authenticated);

    // Without addresses asked for, none are looked up.
    let bare = r.lookup_mx("remote.test", false).await.unwrap();
    assert_eq!(bare.hosts.len(), 3);
    assert!(
        bare.hosts
            .iter()
            .all(|h| h.addresses.is_empty() && h.address_result() == ResultKind::Unspecified)
    );
}

#[tokio::test]
async fn equal_preferences_come_in_random_order_per_call() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);
    let mut orders = HashSet::new();
    // Six orders of three hosts: 100 calls all alike has odds of 6^-99.
    for _ in 0..100 {
        let mx = r.lookup_mx("equal.test", false).await.unwrap();
        let names: Vec<String> = mx.hosts.iter().map(|h| h.exchange.clone()).collect();
        assert_eq!(names.len(), 5);
        assert_eq!(names[0], "first.equal.test");
        assert_eq!(names[4], "last.equal.test");
        let middle: HashSet<&str> = names[1..4].iter().map(String::as_str).collect();
        assert_eq!(
            middle,
            HashSet::from(["a.equal.test", "b.equal.test", "c.equal.test"])
        );
        orders.insert(names);
    }
    assert!(orders.len() > 1, "always the same order: {orders:?}");
}

#[tokio::test]
async fn a_domain_without_mx_but_with_addresses_is_its_own_mx() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);
    for (domain, addrs) in [
        ("v4only.test", vec!["127.0.0.9"]),
        ("v6only.test", vec!["::9"]),
        ("both.test", vec!["::10", "127.0.0.10"]),
    ] {
        let mx = r.lookup_mx(domain, false).await.unwrap();
        assert_eq!(kind(&mx.answer), ResultKind::Ok, "{domain}");
        assert!(mx.implicit, "{domain}");
        assert_eq!(mx.hosts.len(), 1);
        let h = &mx.hosts[0];
        assert_eq!((h.preference, h.exchange.as_str()), (0, domain));
        assert_eq!(h.addresses, addrs, "{domain}");
        assert_eq!(h.address_result(), ResultKind::Ok);
    }
}

#[tokio::test]
async fn null_mx_nxdomain_and_nodata_are_permanent() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);

    let null = r.lookup_mx("nomail.test", true).await.unwrap();
    assert_eq!(kind(&null.answer), ResultKind::NullMx);
    assert!(null.hosts.is_empty());

    let nx = r.lookup_mx("no-such-domain.test", true).await.unwrap();
    assert_eq!(kind(&nx.answer), ResultKind::Nxdomain);
    assert!(nx.hosts.is_empty());
    // The SOA's negative TTL (RFC 2308), which dnsmasq sets to the zone TTL.
    let ttl = nx.answer.as_ref().unwrap().ttl_secs;
    assert!((1..=30).contains(&ttl), "{ttl}");

    // The name exists (it has a TXT record) but has neither MX nor address.
    let nodata = r.lookup_mx("txtonly.test", true).await.unwrap();
    assert_eq!(kind(&nodata.answer), ResultKind::NoRecords);
    assert!(nodata.hosts.is_empty() && !nodata.implicit);
}

#[tokio::test]
async fn bad_names_are_refused_before_any_query() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);
    let before = dns.queries_seen();
    let long = vec!["a".repeat(63); 4].join(".");
    for bad in ["", ".", "a..test", "bad name.test", &long] {
        assert!(r.lookup_mx(bad, true).await.is_err(), "{bad:?}");
    }
    assert_eq!(dns.queries_seen(), before);
}
