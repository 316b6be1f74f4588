//! The resolver tier end to end: `run` serving `posthorn.resolver.v1` over
//! gRPC, asked with the generated client, against a real DNS server.

mod common;

use std::sync::Arc;

use common::poll;
use posthorn_backends::Provider;
use posthorn_config::Config;
use posthorn_proto::resolver::v1::resolver_service_client::ResolverServiceClient;
use posthorn_proto::resolver::v1::{
    LookupIpRequest, LookupMxRequest, LookupTlsaRequest, LookupTxtRequest, ResultKind,
};
use posthorn_test_support::{DnsServer, DnsZone, free_port};

#[tokio::test]
async fn the_tier_answers_over_grpc() {
    let dns = DnsServer::start(
        &DnsZone::new()
            .authoritative("test")
            .mx("remote.test", 10, "mx.remote.test")
            .a("mx.remote.test", "127.0.0.2")
            .null_mx("nomail.test")
            .txt("remote.test", &["v=spf1 -all"])
            .tlsa("_25._tcp.mx.remote.test", 3, 1, 1, &[7; 32]),
    );
    let mut cfg = Config::default();
    cfg.resolver.grpc_listen = format!("127.0.0.1:{}", free_port());
    cfg.resolver.http_listen = format!("127.0.0.1:{}", free_port());
    cfg.resolver.nameservers = vec![dns.addr().to_string()];
    let url = format!("http://{}", cfg.resolver.grpc_listen);
    let http = cfg.resolver.http_listen.clone();
    let cfg = Arc::new(cfg);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let tier = tokio::spawn(posthorn_resolver::run(
        cfg.clone(),
        Provider::FromConfig(cfg),
        shutdown,
    ));
    poll("the resolver's gRPC health to say SERVING", || async {
        posthorn_proto::check_health(&url, "posthorn.resolver.v1.ResolverService")
            .await
            .ok()
    })
    .await;
    let mut client = ResolverServiceClient::connect(url).await.unwrap();

    let mx = client
        .lookup_mx(LookupMxRequest {
            domain: "remote.test".into(),
            resolve_addresses: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mx.answer.unwrap().result(), ResultKind::Ok);
    assert_eq!(mx.hosts[0].exchange, "mx.remote.test");
    assert_eq!(mx.hosts[0].addresses, ["127.0.0.2"]);

    // DNS outcomes are replies, not gRPC errors.
    let null = client
        .lookup_mx(LookupMxRequest {
            domain: "nomail.test".into(),
            resolve_addresses: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(null.answer.unwrap().result(), ResultKind::NullMx);
    let nx = client
        .lookup_ip(LookupIpRequest {
            host: "nowhere.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nx.answer.unwrap().result(), ResultKind::Nxdomain);

    let txt = client
        .lookup_txt(LookupTxtRequest {
            name: "remote.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(txt.records[0].strings, [b"v=spf1 -all".to_vec()]);
    let tlsa = client
        .lookup_tlsa(LookupTlsaRequest {
            name: "_25._tcp.mx.remote.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tlsa.records[0].data, [7; 32]);

    // A bad name is the caller's mistake: INVALID_ARGUMENT.
    for bad in ["", "a..b", &format!("{}.test", "x".repeat(64))] {
        let err = client
            .lookup_mx(LookupMxRequest {
                domain: bad.to_string(),
                resolve_addresses: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}: {err}");
    }
    let err = client
        .lookup_ip(LookupIpRequest {
            host: "x".repeat(254),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // The same question again is a cache hit; all of it shows in /metrics.
    client
        .lookup_mx(LookupMxRequest {
            domain: "remote.test".into(),
            resolve_addresses: true,
        })
        .await
        .unwrap();
    let metrics = http_get(&http, "/metrics").await;
    for series in [
        r#"posthorn_resolver_lookups_total{type="mx",result="ok"} 2"#,
        r#"posthorn_resolver_lookups_total{type="mx",result="null_mx"} 1"#,
        r#"posthorn_resolver_lookups_total{type="ip",result="nxdomain"} 1"#,
        r#"posthorn_resolver_cache_hits_total{rtype="MX"} 1"#,
        r#"posthorn_resolver_cache_misses_total{rtype="TLSA"} 1"#,
        "posthorn_resolver_lookup_seconds",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }

    stop.send(true).unwrap();
    tier.await.unwrap().unwrap();
}

/// One HTTP/1.0 GET; the whole response.
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
