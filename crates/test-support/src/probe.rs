//! Readiness probes: a server is handed to a test only when it answers its
//! own protocol, not when its port opens (docs/testing.md, "Harness
//! servers").
//!
//! Each probe makes one attempt and says what it saw; [`crate::Server`]
//! repeats it until it succeeds or the start deadline passes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

/// How long one probe attempt may wait for an answer.
const ATTEMPT: Duration = Duration::from_secs(5);

/// The protocol check that says a server serves.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// `PING` answers `+PONG`.
    Redis,
    /// `PING` answers `+PONG` and `CLUSTER INFO` says `cluster_state:ok`.
    RedisCluster,
    /// The monitoring port's `/healthz` answers 200 (JetStream enabled and
    /// its store recovered), and the client port answers `PING` with `PONG`.
    Nats { monitor_port: u16 },
    /// A DNS query (type A) for `name` over UDP gets an answer with its ID,
    /// whatever the answer says.
    Dns { name: String },
    /// An SMTP server on `ip` greets with `220` (then we say QUIT).
    Smtp { ip: std::net::IpAddr },
    /// A signed `HEAD /bucket` (HeadBucket) answers 200.
    S3 {
        bucket: String,
        access_key: String,
        secret_key: String,
    },
}

impl Probe {
    /// One attempt against the server on `port`: `Ok` when it serves,
    /// otherwise what it answered (for the deadline's message).
    pub(crate) fn check(&self, port: u16) -> Result<(), String> {
        match self {
            Probe::Redis => redis_ping(port),
            Probe::RedisCluster => {
                redis_ping(port)?;
                let info = redis_command(port, &["CLUSTER", "INFO"])?;
                if info.contains("cluster_state:ok") {
                    Ok(())
                } else {
                    Err(format!("CLUSTER INFO: {}", first_line(&info)))
                }
            }
            Probe::Nats { monitor_port } => {
                let (status, body) = http(*monitor_port, "GET", "/healthz", &[])?;
                if status != 200 {
                    return Err(format!("/healthz answered {status}: {}", body.trim()));
                }
                nats_ping(port)
            }
            Probe::Dns { name } => dns_query(port, name),
            Probe::Smtp { ip } => smtp_greeting(*ip, port),
            Probe::S3 {
                bucket,
                access_key,
                secret_key,
            } => {
                let path = format!("/{bucket}");
                let host = format!("127.0.0.1:{port}");
                let headers = crate::sigv4::sign("HEAD", &host, &path, access_key, secret_key);
                let (status, body) = http(port, "HEAD", &path, &headers)?;
                if status == 200 {
                    Ok(())
                } else {
                    Err(format!("HeadBucket answered {status} {}", body.trim()))
                }
            }
        }
    }
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ATTEMPT)).ok();
    s.set_write_timeout(Some(ATTEMPT)).ok();
    Ok(s)
}

/// Read the greeting (all lines of it) and check that it is a 220.
fn smtp_greeting(ip: std::net::IpAddr, port: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect((ip, port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(ATTEMPT)).ok();
    s.set_write_timeout(Some(ATTEMPT)).ok();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // The last line of a reply has a space after the code.
    while !got
        .split(|&b| b == b'\n')
        .any(|l| l.len() >= 4 && l[3] == b' ')
    {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let _ = s.write_all(b"QUIT\r\n");
    if got.starts_with(b"220") {
        Ok(())
    } else {
        Err(format!(
            "greeting {:?}",
            String::from_utf8_lossy(&got).trim()
        ))
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn redis_ping(port: u16) -> Result<(), String> {
    let reply = redis_command(port, &["PING"])?;
    if reply == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {reply:?}"))
    }
}

/// Send one command and read a simple-string, error or bulk-string reply.
pub(crate) fn redis_command(port: u16, args: &[&str]) -> Result<String, String> {
    let mut s = connect(port)?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    let line = line.trim_end();
    match line.as_bytes().first() {
        Some(b'+') => Ok(line[1..].to_string()),
        Some(b'-') => Err(format!("error reply {line:?}")),
        Some(b'$') => {
            let n: usize = line[1..]
                .parse()
                .map_err(|_| format!("bad bulk length {line:?}"))?;
            let mut body = vec![0; n + 2];
            r.read_exact(&mut body)
                .map_err(|e| format!("read bulk: {e}"))?;
            body.truncate(n);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        _ => Err(format!("unexpected reply {line:?}")),
    }
}

/// The client port sends `INFO`, takes `CONNECT` and answers `PING`.
fn nats_ping(port: u16) -> Result<(), String> {
    let s = connect(port)?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("read INFO: {e}"))?;
    if !line.starts_with("INFO ") {
        return Err(format!("greeting {:?}", line.trim_end()));
    }
    (&s).write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .map_err(|e| format!("write: {e}"))?;
    line.clear();
    r.read_line(&mut line)
        .map_err(|e| format!("read PONG: {e}"))?;
    if line.trim_end() == "PONG" {
        Ok(())
    } else {
        Err(format!("PING answered {:?}", line.trim_end()))
    }
}

/// One HTTP/1.0 request; (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<(u16, String), String> {
    let mut s = connect(port)?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", first_line(&text)))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Send one DNS query (RFC 1035 §4.1: header, one question, type A, class
/// IN, recursion desired) and wait for a response carrying its ID.
fn dns_query(port: u16, name: &str) -> Result<(), String> {
    let id = (std::process::id() as u16) ^ (port.rotate_left(7));
    let mut q = Vec::with_capacity(32);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    // Short: UDP has no connect; an unanswered query is simply sent again.
    s.set_read_timeout(Some(Duration::from_millis(500))).ok();
    s.connect(("127.0.0.1", port))
        .map_err(|e| format!("connect: {e}"))?;
    s.send(&q).map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 512];
    loop {
        let n = s.recv(&mut buf).map_err(|e| format!("no answer: {e}"))?;
        // A response (QR set) to our query; anything else is ignored.
        if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
            return Ok(());
        }
    }
}
