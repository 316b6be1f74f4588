//! Each harness server is handed over serving, and serves again after a
//! SIGKILL and restart (docs/testing.md, "Harness servers").

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use posthorn_test_support::{NatsServer, RedisServer, S3Server};

/// `PING` on a fresh connection answers `+PONG` at once.
fn redis_pong(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"PING\r\n").unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert_eq!(line, "+PONG\r\n");
}

#[test]
fn redis_serves_after_start_and_restart() {
    let mut r = RedisServer::start();
    redis_pong(r.0.port());
    r.0.restart();
    redis_pong(r.0.port());
}

#[test]
fn redis_cluster_is_ok_after_start_and_restart() {
    let mut r = RedisServer::start_cluster();
    let info = cluster_info(r.0.port());
    assert!(info.contains("cluster_state:ok"), "{info}");
    r.0.restart();
    let info = cluster_info(r.0.port());
    assert!(info.contains("cluster_state:ok"), "{info}");
}

fn cluster_info(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(b"CLUSTER INFO\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut len = String::new();
    r.read_line(&mut len).unwrap();
    let n: usize = len.trim_start_matches('$').trim().parse().expect("bulk");
    let mut body = vec![0; n];
    std::io::Read::read_exact(&mut r, &mut body).unwrap();
    String::from_utf8(body).unwrap()
}

/// A client gets `INFO` with JetStream on and an answer to `PING`.
fn nats_serves(port: u16) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO "), "{line}");
    assert!(line.contains("\"jetstream\":true"), "{line}");
    (&s).write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "PONG\r\n");
}

#[test]
fn nats_serves_after_start_and_restart() {
    let mut n = NatsServer::start();
    nats_serves(n.0.port());
    n.0.restart();
    nats_serves(n.0.port());
}

#[test]
fn s3_serves_after_start_and_restart() {
    // Start and restart each wait for a signed HeadBucket (the probe is
    // checked against a wrong key in the crate's unit tests); an unsigned
    // request is refused, so a plain HTTP answer would not have done.
    let mut s = S3Server::start();
    assert_eq!(unsigned_head_bucket(s.0.port()), 403);
    s.0.restart();
    assert_eq!(unsigned_head_bucket(s.0.port()), 403);
}

fn unsigned_head_bucket(port: u16) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "HEAD /{} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n",
        posthorn_test_support::S3_BUCKET
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
