//! Each tier as its own process (`posthorn run <tier>`) against real Redis,
//! NATS JetStream and S3, configured only by file and environment.

mod common;

use std::time::{Duration, Instant};

use common::*;
use posthorn_test_support::{
    NatsServer, RedisServer, S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY, S3Server,
};

fn cluster_env(redis: &str, nats: &str, s3: &str) -> Vec<(&'static str, String)> {
    vec![
        ("POSTHORN_STORAGE__BACKEND", "cluster".into()),
        ("POSTHORN_REDIS__URL", redis.into()),
        ("POSTHORN_NATS__URL", nats.into()),
        ("POSTHORN_S3__ENDPOINT", s3.into()),
        ("POSTHORN_S3__BUCKET", S3_BUCKET.into()),
        ("POSTHORN_S3__ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
        ("POSTHORN_S3__SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
        ("POSTHORN_S3__ALLOW_HTTP", "true".into()),
    ]
}

#[test]
fn five_tiers_as_processes_become_ready_and_find_each_other() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let cfg = dir.path().join("posthorn.toml");
    std::fs::write(&cfg, ports.toml()).unwrap();
    let env = cluster_env(&redis.url(), &nats.url(), &s3.endpoint());
    let mut procs = Vec::new();
    for (tier, _) in ports.tiers() {
        procs.push(Proc::spawn(
            &["run", tier, "--config", cfg.to_str().unwrap()],
            &env,
            dir.path().join(format!("{tier}.log")),
        ));
    }
    // smtp-ingress is ready only when the router answers over gRPC, and
    // delivery only when the resolver does.
    for (i, (tier, port)) in ports.tiers().iter().enumerate() {
        let p = &mut procs[i];
        wait_ready(&[(tier, *port)], READY_WAIT, &mut p.child, &p.log);
    }
    let url = ports.router_url();
    let o = admin(&url, &["domain", "add", "example.test"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = admin(
        &url,
        &["user", "add", "alice@example.test", "--password", "pw"],
    );
    assert!(o.status.success(), "{}", out(&o));
    let o = admin(&url, &["user", "list"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "alice@example.test\n",
        "{}",
        out(&o)
    );

    // The router stopped: smtp-ingress notices (it checks every 5 s) and
    // turns not ready.
    let router = &mut procs[2];
    let st = router.terminate();
    assert!(st.success(), "router exit {st}:\n{}", router.log_text());
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = http_get(ports.http[0], "/readyz").expect("smtp-ingress side port");
        if code == 503 {
            assert!(body.contains("router"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "smtp-ingress still ready {WAIT:?} after the router stopped:\n{}",
            procs[0].log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in &mut procs {
        if p.child.try_wait().unwrap().is_none() {
            let st = p.terminate();
            assert!(st.success(), "exit {st}:\n{}", p.log_text());
        }
    }
}

#[test]
fn unreachable_redis_is_named_and_retried_not_fatal() {
    let nats = NatsServer::start();
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::new();
    let cfg = dir.path().join("posthorn.toml");
    std::fs::write(&cfg, ports.toml()).unwrap();
    let dead = format!("redis://127.0.0.1:{}/", posthorn_test_support::free_port());
    let env = cluster_env(&dead, &nats.url(), &s3.endpoint());
    let mut p = Proc::spawn(
        &["run", "router", "--config", cfg.to_str().unwrap()],
        &env,
        dir.path().join("router.log"),
    );
    // Wait (rather than sleep) until it has retried twice, staying up and
    // not ready meanwhile.
    let deadline = Instant::now() + WAIT;
    while p.log_text().matches("retrying").count() < 2 {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "router exited:\n{}",
            p.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "no two retries logged within {WAIT:?}:\n{}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "router exited:\n{}",
        p.log_text()
    );
    // The side port comes up independently of the backends.
    let healthz = loop {
        match http_get(ports.http[2], "/healthz") {
            Some(r) => break r,
            None => {
                assert!(
                    Instant::now() < deadline,
                    "side port not listening within {WAIT:?}:\n{}",
                    p.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(healthz.0, 200, "{healthz:?}");
    let (code, body) = http_get(ports.http[2], "/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains(&dead),
        "readyz does not name the endpoint: {body}"
    );
    let log = p.log_text();
    assert!(
        log.matches("retrying").count() >= 2,
        "no retries logged:\n{log}"
    );
    assert!(
        log.contains(&dead),
        "log does not name the endpoint:\n{log}"
    );
    let st = p.terminate();
    assert!(st.success(), "exit {st}:\n{}", p.log_text());
}
