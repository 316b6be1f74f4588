//! Helpers for tests that run the `posthorn` binary.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use posthorn_test_support::free_port;

/// How long a test waits for something that normally takes well under a
/// second (a delivery, a tier becoming ready): long enough for a machine
/// whose cores are busy with other work, so it only bounds a hang.
pub const WAIT: Duration = Duration::from_secs(60);

/// How long a whole system (five tiers, or `serve`) may take to become ready.
pub const READY_WAIT: Duration = Duration::from_secs(120);

/// The router's ack wait in the systems started here: an item whose router
/// was killed before it acked is redelivered this long after it was handed
/// out.
pub const ROUTER_ACK_WAIT: Duration = Duration::from_secs(5);

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
        self.toml_with("")
    }

    /// Like [`Ports::toml`], with extra `key = value` lines in `[smtp]`.
    pub fn toml_with(&self, smtp_extra: &str) -> String {
        self.toml_extra(&Extra {
            smtp: smtp_extra.to_string(),
            ..Extra::default()
        })
    }

    /// Like [`Ports::toml`], with extra `key = value` lines in `[smtp]`,
    /// `[resolver]`, `[delivery]` and `[router]`.
    pub fn toml_extra(&self, extra: &Extra) -> String {
        let (smtp_extra, resolver_extra, delivery_extra, router_extra) =
            (&extra.smtp, &extra.resolver, &extra.delivery, &extra.router);
        format!(
            r#"
[smtp]
{smtp_extra}
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
{router_extra}
grpc_listen = "127.0.0.1:{}"
http_listen = "127.0.0.1:{}"

[resolver]
{resolver_extra}
grpc_listen = "127.0.0.1:{}"
http_listen = "127.0.0.1:{}"

[delivery]
{delivery_extra}
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
    // Generous: a loaded machine may take seconds to answer; `None` here
    // reads as "not listening".
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
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

    /// SIGTERM and wait for a clean exit: up to 60 s, well past the 25 s
    /// shutdown grace after which the process exits anyway, so this only
    /// bounds a hang.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "did not exit within 60 s of SIGTERM; log:\n{}",
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

/// Which backends a system under test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `posthorn serve` on redb + local blobs.
    Embedded,
    /// Five `posthorn run <tier>` processes on Redis + JetStream + S3.
    Cluster,
}

/// Extra `key = value` lines for sections of the configuration file.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Lines in `[smtp]`.
    pub smtp: String,
    /// Lines in `[resolver]` (say `nameservers = ["127.0.0.1:5353"]`).
    pub resolver: String,
    /// Lines in `[delivery]` (say `remote_port = 2525`).
    pub delivery: String,
    /// Lines in `[router]`.
    pub router: String,
}

/// A running Posthorn (embedded or five tier processes) on its own ports.
pub struct System {
    pub backend: Backend,
    pub ports: Ports,
    pub dir: tempfile::TempDir,
    pub procs: Vec<(String, Proc)>,
    pub redis: Option<posthorn_test_support::RedisServer>,
    pub nats: Option<posthorn_test_support::NatsServer>,
    pub s3: Option<posthorn_test_support::S3Server>,
    extra: Extra,
}

impl System {
    /// Start a system; `smtp_extra` holds extra `key = value` lines for `[smtp]`.
    pub fn start(backend: Backend, smtp_extra: &str) -> System {
        System::start_extra(
            backend,
            Extra {
                smtp: smtp_extra.to_string(),
                ..Extra::default()
            },
        )
    }

    /// Start a system with extra lines in `[smtp]`, `[resolver]` and `[delivery]`.
    pub fn start_extra(backend: Backend, extra: Extra) -> System {
        let dir = tempfile::tempdir().unwrap();
        let ports = Ports::new();
        let (redis, nats, s3) = if backend == Backend::Cluster {
            (
                Some(posthorn_test_support::RedisServer::start()),
                Some(posthorn_test_support::NatsServer::start()),
                Some(posthorn_test_support::S3Server::start()),
            )
        } else {
            (None, None, None)
        };
        let mut sys = System {
            backend,
            ports,
            dir,
            procs: Vec::new(),
            redis,
            nats,
            s3,
            extra,
        };
        std::fs::write(sys.config_path(), sys.ports.toml_extra(&sys.extra)).unwrap();
        match backend {
            Backend::Embedded => sys.spawn("serve"),
            Backend::Cluster => {
                for tier in ["resolver", "router", "delivery", "access", "smtp-ingress"] {
                    sys.spawn(tier);
                }
            }
        }
        sys.wait_ready();
        sys
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("posthorn.toml")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        // A short ack wait, so items held by a killed router come back quickly.
        let mut env = vec![
            ("RUST_LOG", "info".to_string()),
            (
                "POSTHORN_ROUTER__ACK_WAIT_SECS",
                ROUTER_ACK_WAIT.as_secs().to_string(),
            ),
            // Cluster tiers keep only their generated certificate here.
            (
                "POSTHORN_SERVER__DATA_DIR",
                self.dir.path().join("data").display().to_string(),
            ),
        ];
        if let (Some(r), Some(n), Some(s)) = (&self.redis, &self.nats, &self.s3) {
            env.extend([
                ("POSTHORN_STORAGE__BACKEND", "cluster".to_string()),
                ("POSTHORN_REDIS__URL", r.url()),
                ("POSTHORN_NATS__URL", n.url()),
                ("POSTHORN_S3__ENDPOINT", s.endpoint()),
                (
                    "POSTHORN_S3__BUCKET",
                    posthorn_test_support::S3_BUCKET.to_string(),
                ),
                (
                    "POSTHORN_S3__ACCESS_KEY_ID",
                    posthorn_test_support::S3_ACCESS_KEY.to_string(),
                ),
                (
                    "POSTHORN_S3__SECRET_ACCESS_KEY",
                    posthorn_test_support::S3_SECRET_KEY.to_string(),
                ),
                ("POSTHORN_S3__ALLOW_HTTP", "true".to_string()),
            ]);
        }
        env
    }

    /// Start (or restart) one process: `serve` or a tier name.
    pub fn spawn(&mut self, what: &str) {
        self.procs.retain(|(n, _)| n != what);
        let cfg = self.config_path();
        let data = self.dir.path().join("data");
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let log = self.dir.path().join(format!("{what}-{n}.log"));
        let p = if what == "serve" {
            Proc::spawn(
                &[
                    "serve",
                    "--config",
                    cfg.to_str().unwrap(),
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
                &self.env(),
                log,
            )
        } else {
            Proc::spawn(
                &["run", what, "--config", cfg.to_str().unwrap()],
                &self.env(),
                log,
            )
        };
        self.procs.push((what.to_string(), p));
    }

    /// SIGKILL one process (`serve` or a tier).
    pub fn kill(&mut self, what: &str) {
        for (n, p) in &mut self.procs {
            if n == what {
                p.kill();
            }
        }
    }

    /// Wait until `/readyz` of every tier answers 200 (or panic with the
    /// logs after [`READY_WAIT`]).
    pub fn wait_ready(&mut self) {
        let tiers = self.ports.tiers();
        let deadline = Instant::now() + READY_WAIT;
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
            let exited = self
                .procs
                .iter_mut()
                .any(|(_, p)| matches!(p.child.try_wait(), Ok(Some(_))));
            if exited {
                panic!(
                    "a process exited while starting: {pending:?}\n{}",
                    self.logs()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "not ready within {READY_WAIT:?}: {pending:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for (n, p) in &self.procs {
            let text = p.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            s.push_str(&format!("=== {n} (last 40 lines) ===\n{tail}\n"));
        }
        s
    }

    pub fn router_url(&self) -> String {
        self.ports.router_url()
    }

    /// Run an admin command; panic with logs unless it succeeds.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        // The router may be restarting (fault tests): retry while unreachable.
        let deadline = Instant::now() + WAIT;
        let mut o = admin(&self.router_url(), args);
        while o.status.code() == Some(69) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            o = admin(&self.router_url(), args);
        }
        assert!(
            o.status.success(),
            "posthorn {args:?}: {}\n{}",
            out(&o),
            self.logs()
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// The standard test directory: example.test with alice, bob, and the
    /// alias team -> alice, bob.
    pub fn standard_directory(&self) {
        self.admin_ok(&["domain", "add", "example.test"]);
        self.admin_ok(&[
            "user",
            "add",
            "alice@example.test",
            "--password",
            "alice-pw",
        ]);
        self.admin_ok(&["user", "add", "bob@example.test", "--password", "bob-pw"]);
        self.admin_ok(&[
            "alias",
            "add",
            "team@example.test",
            "alice@example.test",
            "bob@example.test",
        ]);
    }

    /// UIDs and sizes in a mailbox.
    pub fn messages(&self, address: &str) -> Vec<(u32, u64)> {
        let out = self.admin_ok(&["mailbox", "list", address]);
        out.lines()
            .skip(1)
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    it.next().unwrap().parse().unwrap(),
                    it.next().unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// Wait until `address` has `n` messages (or panic after `within`).
    pub fn wait_messages(&self, address: &str, n: usize, within: Duration) -> Vec<(u32, u64)> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.messages(address);
            if m.len() >= n {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "{address} has {} messages after {within:?}, expected {n}\n{}",
                    m.len(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Poll `check` every 100 ms until it returns `Some`; panic after
    /// `within` naming `what` was waited for, with the system's logs.
    pub fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {within:?} waiting for {what}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn fetch(&self, address: &str, uid: u32) -> Vec<u8> {
        let o = admin(
            &self.router_url(),
            &["mailbox", "fetch", address, &uid.to_string()],
        );
        assert!(o.status.success(), "{}", out(&o));
        o.stdout
    }
}

mod client;
pub mod remote;

pub use client::*;
