//! `LookupIp`, `LookupTxt`, `LookupTlsa`, and what server failures become,
//! against a real DNS server (dnsmasq).

mod common;

use std::sync::atomic::Ordering;

use common::{kind, resolver, resolver_with, servfail_server, silent_server};
use posthorn_proto::resolver::v1::ResultKind;
use posthorn_test_support::{DnsServer, DnsZone};

fn zone() -> DnsZone {
    DnsZone::new()
        .ttl(30)
        .authoritative("test")
        .a("host.test", "127.0.0.5")
        .a("host.test", "127.0.0.6")
        .a("host.test", "2001:db8::5")
        .txt("spf.test", &["v=spf1 ", "-all"])
        .txt("two.test", &["one"])
        .txt("two.test", &["two"])
        .tlsa("_25._tcp.mx.test", 3, 1, 1, &[0xab; 32])
        .tlsa("_25._tcp.mx.test", 2, 0, 2, &[0x01, 0x02])
        .a("mx.test", "127.0.0.7")
}

#[tokio::test]
async fn ip_lookups_give_ipv6_then_ipv4() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);
    let ip = r.lookup_ip("host.test").await.unwrap();
    assert_eq!(kind(&ip.answer), ResultKind::Ok);
    assert_eq!(ip.addresses[0], "2001:db8::5");
    let mut v4 = ip.addresses[1..].to_vec();
    v4.sort();
    assert_eq!(v4, ["127.0.0.5", "127.0.0.6"]);
    assert_eq!(
        kind(&r.lookup_ip("nothing.test").await.unwrap().answer),
        ResultKind::Nxdomain
    );
    // spf.test exists with TXT only.
    assert_eq!(
        kind(&r.lookup_ip("spf.test").await.unwrap().answer),
        ResultKind::NoRecords
    );
}

#[tokio::test]
async fn txt_records_keep_their_strings() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);
    let spf = r.lookup_txt("spf.test").await.unwrap();
    assert_eq!(kind(&spf.answer), ResultKind::Ok);
    assert_eq!(spf.records.len(), 1);
    assert_eq!(
        spf.records[0].strings,
        [b"v=spf1 ".to_vec(), b"-all".to_vec()]
    );
    let two = r.lookup_txt("two.test").await.unwrap();
    let mut texts: Vec<Vec<u8>> = two.records.iter().map(|t| t.strings.concat()).collect();
    texts.sort();
    assert_eq!(texts, [b"one".to_vec(), b"two".to_vec()]);
    assert_eq!(
        kind(&r.lookup_txt("host.test").await.unwrap().answer),
        ResultKind::NoRecords
    );
}

#[tokio::test]
async fn tlsa_records_come_field_by_field() {
    let dns = DnsServer::start(&zone());
    let r = resolver(&dns);
    let t = r.lookup_tlsa("_25._tcp.mx.test.").await.unwrap();
    assert_eq!(kind(&t.answer), ResultKind::Ok);
    assert!(!t.answer.as_ref().unwrap().authenticated, "no DNSSEC yet");
    let mut recs: Vec<_> = t
        .records
        .iter()
        .map(|r| (r.usage, r.selector, r.matching_type, r.data.clone()))
        .collect();
    recs.sort();
    assert_eq!(recs, [(2, 0, 2, vec![1, 2]), (3, 1, 1, vec![0xab; 32])]);
    assert_eq!(
        kind(&r.lookup_tlsa("_25._tcp.other.test").await.unwrap().answer),
        ResultKind::Nxdomain
    );
}

#[tokio::test]
async fn server_failures_are_temporary_and_not_cached() {
    let (servfail, asked) = servfail_server();
    let (silent, _keep) = silent_server();
    let dns = DnsServer::start(
        &DnsZone::new()
            .local("test")
            .forward("servfail.test", servfail)
            .forward("slow.test", silent),
    );
    // One try of one second: the silent server makes it time out.
    let r = resolver_with(&dns, 1, 1);

    let mx = r.lookup_mx("servfail.test", true).await.unwrap();
    let a = mx.answer.unwrap();
    assert_eq!(a.result(), ResultKind::Temporary);
    assert_eq!((a.ttl_secs, a.detail.as_str()), (0, "SERVFAIL"));
    // Not cached: the next lookup asks again.
    let before = asked.load(Ordering::SeqCst);
    assert!(before >= 1);
    let again = r.lookup_mx("servfail.test", true).await.unwrap();
    assert_eq!(kind(&again.answer), ResultKind::Temporary);
    assert!(asked.load(Ordering::SeqCst) > before);

    let slow = r.lookup_ip("x.slow.test").await.unwrap().answer.unwrap();
    assert_eq!(slow.result(), ResultKind::Temporary);
    assert_eq!(slow.detail, "timeout");

    // dnsmasq refuses names it neither serves nor forwards.
    let refused = r.lookup_txt("example.org").await.unwrap().answer.unwrap();
    assert_eq!(refused.result(), ResultKind::Temporary);
    assert_eq!(refused.detail, "REFUSED");

    let tlsa = r.lookup_tlsa("_25._tcp.servfail.test").await.unwrap();
    assert_eq!(kind(&tlsa.answer), ResultKind::Temporary);
}
