//! Helpers for tests that run the `posthorn` binary.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use posthorn_test_support::free_port;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_posthorn")
}

/// Ports of one system under test.
pub struct Ports {
    pub smtp: u16,
    pub submission: u16,
    pub submissions: u16,
    pub imap: u16,
    pub imaps: u16,
    pub pop3: u16,
    pub pop3s: u16,
    pub router_grpc: u16,
    pub resolver_grpc: u16,
    pub http: [u16; 5],
}

impl Ports {
    pub fn new() -> Self {
        Ports {
            smtp: free_port(),
            submission: free_port(),
            submissions: free_port(),
            imap: free_port(),
            imaps: free_port(),
            pop3: free_port(),
            pop3s: free_port(),
            router_grpc: free_port(),
            resolver_grpc: free_port(),
            http: [
                free_port(),
                free_port(),
                free_port(),
                free_port(),
                free_port(),
            ],
        }
    }

    /// The `[section]` tables that put every listener on these ports.
    pub fn toml(&self) -> String {
        format!(
            r#"
[smtp]
listen = "127.0.0.1:{}"
submission_listen = "127.0.0.1:{}"
submissions_listen = "127.0.0.1:{}"
http_listen = "127.0.0.1:{}"
router_url = "http://127.0.0.1:{}"

[access]
imap_listen = "127.0.0.1:{}"
imaps_listen = "127.0.0.1:{}"
pop3_listen = "127.0.0.1:{}"
pop3s_listen = "127.0.0.1:{}"
http_listen = "127.0.0.1:{}"

[router]
grpc_listen = "127.0.0.1:{}"
http_listen = "127.0.0.1:{}"

[resolver]
grpc_listen = "127.0.0.1:{}"
http_listen = "127.0.0.1:{}"

[delivery]
http_listen = "127.0.0.1:{}"
resolver_url = "http://127.0.0.1:{}"
"#,
            self.smtp,
            self.submission,
            self.submissions,
            self.http[0],
            self.router_grpc,
            self.imap,
            self.imaps,
            self.pop3,
            self.pop3s,
            self.http[1],
            self.router_grpc,
            self.http[2],
            self.resolver_grpc,
            self.http[3],
            self.http[4],
            self.resolver_grpc,
        )
    }

    pub fn router_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.router_grpc)
    }

    /// (tier, side HTTP port)
    pub fn tiers(&self) -> [(&'static str, u16); 5] {
        [
            ("smtp-ingress", self.http[0]),
            ("access", self.http[1]),
            ("router", self.http[2]),
            ("resolver", self.http[3]),
            ("delivery", self.http[4]),
        ]
    }
}

/// `GET path` on 127.0.0.1:port; (status, body), or None if not listening.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Wait until `/readyz` of every port answers 200.
pub fn wait_ready(tiers: &[(&str, u16)], within: Duration, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + within;
    loop {
        let pending: Vec<String> = tiers
            .iter()
            .filter_map(|(name, port)| match http_get(*port, "/readyz") {
                Some((200, _)) => None,
                Some((code, body)) => Some(format!("{name}: {code} {}", body.trim())),
                None => Some(format!("{name}: not listening")),
            })
            .collect();
        if pending.is_empty() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "posthorn exited ({st}); log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "not ready within {within:?}: {pending:?}; log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], envs: &[(&str, String)], log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .env("POSTHORN_TELEMETRY__LOG_FORMAT", "text")
            .env_remove("RUST_LOG");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().expect("spawn posthorn"),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (up to 30 s) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "did not exit within 30 s of SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Run an admin command against `server`.
pub fn admin(server: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("POSTHORN_SERVER", server)
        .stdin(Stdio::null())
        .output()
        .expect("run posthorn")
}

pub fn admin_stdin(server: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("POSTHORN_SERVER", server)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run posthorn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn out(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
