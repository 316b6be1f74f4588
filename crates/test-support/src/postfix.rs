//! Debian's Postfix as an independent receiving peer: a throwaway instance
//! (`postfix -c <dir> start`) with its own configuration, queue and data
//! directories under a temporary directory, an `smtpd` on one `ip:port`
//! and `virtual(8)` delivering its test domain into Maildirs owned by a
//! fixed uid/gid (no system users needed). It never reads `/etc/postfix`'s
//! configuration and never touches a system Postfix on port 25.
//!
//! Postfix must be started as root (`postfix start` does); the instance
//! is handed over when it greets with `220` on `ip:port`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::probe::Probe;
use crate::{START_DEADLINE, find_program, log_tail};

/// Owner (uid and gid) of the Maildirs `virtual(8)` writes; no passwd entry.
const VMAIL_ID: u32 = 5000;

/// A running Postfix instance, stopped when dropped.
pub struct PostfixPeer {
    program: PathBuf,
    dir: TempDir,
    ip: IpAddr,
    port: u16,
    domain: String,
}

impl PostfixPeer {
    /// Start Postfix with `smtpd` on `ip:port`, accepting mail for every
    /// local part of `domain` (all in one Maildir, told apart by their
    /// `Delivered-To:`, see [`PostfixPeer::messages`]); returns when it has
    /// greeted with `220`.
    pub fn start(ip: &str, port: u16, domain: &str) -> Self {
        let ip: IpAddr = ip.parse().expect("PostfixPeer::start takes an IP address");
        let program = find_program(
            "POSTHORN_TEST_POSTFIX",
            &["postfix"],
            "DEBIAN_FRONTEND=noninteractive apt-get install postfix (debconf: No configuration)",
        );
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .expect("run id -u")
            .stdout;
        assert_eq!(uid, b"0\n", "PostfixPeer needs root (`postfix start` does)");
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        // virtual(8) writes as VMAIL_ID below this directory: it must be able
        // to traverse it.
        set_mode(base, 0o755);
        let vmail = base.join("vmail");
        std::fs::create_dir(&vmail).expect("create vmail");
        std::os::unix::fs::chown(&vmail, Some(VMAIL_ID), Some(VMAIL_ID)).expect("chown vmail");
        let etc = base.join("etc");
        std::fs::create_dir(base.join("queue")).expect("create queue");
        std::fs::create_dir(&etc).expect("create etc");
        std::fs::write(etc.join("main.cf"), main_cf(base, ip, domain)).expect("write main.cf");
        std::fs::write(etc.join("master.cf"), master_cf(ip, port)).expect("write master.cf");
        let peer = PostfixPeer {
            program,
            dir,
            ip,
            port,
            domain: domain.to_string(),
        };
        // From here on a panic drops `peer`, which stops whatever started.
        let (status, out) = peer.postfix("start");
        assert!(
            status.success(),
            "`postfix -c {} start` failed ({status}): {out}\nlast 40 lines of the log \
             (errors before it is open go to syslog):\n{}",
            peer.dir().join("etc").display(),
            peer.log_tail()
        );
        peer.wait_serving();
        peer
    }

    /// Its directory: `etc/` (configuration), `queue/`, `data/`, `vmail/`
    /// and `postfix.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The whole mail log (`maillog_file`): one `from=<...>`, `to=<...>`
    /// line per message and delivery.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("postfix.log")).unwrap_or_default()
    }

    /// The messages delivered to `local@<domain>`, oldest first, as stored
    /// (Postfix stores lines ending in LF, with `Return-Path:`,
    /// `X-Original-To:`, `Delivered-To:` and its `Received:` in front).
    pub fn messages(&self, local: &str) -> Vec<Vec<u8>> {
        let new = self.dir().join("vmail").join(&self.domain).join("new");
        let to = format!("\nDelivered-To: {local}@{}\n", self.domain).to_lowercase();
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&new)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
            .into_iter()
            .filter_map(|(_, p)| std::fs::read(p).ok())
            .filter(|m| {
                // The header section, from a newline on.
                let end = m.windows(2).position(|w| w == b"\n\n").unwrap_or(m.len());
                let head = format!("\n{}\n", String::from_utf8_lossy(&m[..end]));
                head.to_lowercase().contains(&to)
            })
            .collect()
    }

    /// Wait until `local@<domain>` has at least `n` messages; all it has.
    /// Panics after `within` with the tail of the mail log and `context()`
    /// (say the sender's logs).
    pub fn wait_messages(
        &self,
        local: &str,
        n: usize,
        within: Duration,
        context: impl Fn() -> String,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let m = self.messages(local);
            if m.len() >= n {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {within:?} waiting for {n} message(s) for {local}@{} at \
                     Postfix ({}:{}); last 40 lines of its log:\n{}\n{}",
                    self.domain,
                    self.ip,
                    self.port,
                    self.log_tail(),
                    context()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.dir().join("postfix.log"), 40)
    }

    /// Run `postfix -c <dir> <verb>`: its exit status and output.
    fn postfix(&self, verb: &str) -> (std::process::ExitStatus, String) {
        // A file, not a pipe: the master started in the background must not
        // hold our pipe open.
        let out = std::fs::File::create(self.dir().join("postfix-cmd.log")).expect("create log");
        let status = Command::new(&self.program)
            .arg("-c")
            .arg(self.dir().join("etc"))
            .arg(verb)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        let text = std::fs::read_to_string(self.dir().join("postfix-cmd.log")).unwrap_or_default();
        (status, text)
    }

    /// The master's process id, once it has written its pid file.
    fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir().join("queue/pid/master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn wait_serving(&self) {
        let started = Instant::now();
        let probe = Probe::Smtp { ip: self.ip };
        loop {
            let last = match probe.check(self.port) {
                Ok(()) => return,
                Err(e) => e,
            };
            let gone = self.master_pid().is_some_and(|p| !alive(p));
            if gone || started.elapsed() > START_DEADLINE {
                panic!(
                    "postfix ({}:{}) {}; its readiness probe last saw: {last}; last 40 lines of {}:\n{}",
                    self.ip,
                    self.port,
                    if gone {
                        "exited at start".to_string()
                    } else {
                        format!("did not serve within {START_DEADLINE:?}")
                    },
                    self.dir().join("postfix.log").display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for PostfixPeer {
    fn drop(&mut self) {
        let pid = self.master_pid();
        // Not `self.postfix()`: a panic in drop would abort the test binary.
        let _ = Command::new(&self.program)
            .arg("-c")
            .arg(self.dir().join("etc"))
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let Some(pid) = pid else { return };
        // The master stops its children and exits; SIGKILL it if it hangs.
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is not alive: its /proc entry stays until it is reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn main_cf(base: &Path, ip: IpAddr, domain: &str) -> String {
    let b = base.display();
    let proto = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    // inet_interfaces: Postfix refuses an address no interface has (127.0.0.2
    // is only routed to `lo`); master.cf binds smtpd to `ip:port` anyway.
    // local_header_rewrite_clients empty: Posthorn is a remote client, whose
    // headers Postfix must not rewrite.
    format!(
        "# Written by posthorn-test-support (PostfixPeer).
compatibility_level = 3.6
queue_directory = {b}/queue
data_directory = {b}/data
maillog_file = {b}/postfix.log
maillog_file_prefixes = {b}
syslog_name = posthorn-test-postfix
myhostname = mx.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = {proto}
local_header_rewrite_clients =
biff = no
# No DNS at all: the client shows as `unknown[ip]`, whatever the resolver.
smtpd_peername_lookup = no
smtpd_tls_security_level = none
smtp_tls_security_level = none
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {b}/vmail
# Every address of the domain exists and goes to one Maildir (virtual(8)
# allows no regexp substitution here).
virtual_mailbox_maps = static:{domain}/
# Postfix sends nothing anywhere (say a bounce): no outbound transport.
default_transport = error:5.7.1 outbound mail disabled in tests
relay_transport = error:5.7.1 outbound mail disabled in tests
virtual_uid_maps = static:{VMAIL_ID}
virtual_gid_maps = static:{VMAIL_ID}
"
    )
}

/// Only the services an inbound `smtpd` and `virtual(8)` delivery need;
/// none chrooted (the queue directory has no chroot files).
fn master_cf(ip: IpAddr, port: u16) -> String {
    let addr = match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    };
    format!(
        "{addr}:{port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"
    )
}
