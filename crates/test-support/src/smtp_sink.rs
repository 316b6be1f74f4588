//! A scripted SMTP peer for delivery tests: `smtp_sink.py` (aiosmtpd) on
//! any loopback address (Linux routes all of 127/8 to `lo`), so several
//! "remote hosts" can listen on the same port. It answers a scripted
//! sequence of replies and records what it received; see the script's
//! docstring for the format.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::Server;
use crate::probe::Probe;

const SCRIPT: &str = include_str!("smtp_sink.py");

/// A running sink.
pub struct SmtpSink {
    /// The process.
    pub server: Server,
    ip: IpAddr,
}

impl SmtpSink {
    /// Start one on `ip:port` answering `script` (JSON, e.g.
    /// `{"rcpt": ["451 4.3.0 later"]}`; `""` for "accept everything";
    /// `{"auth": ["user", "password"]}` requires AUTH with these, after
    /// STARTTLS when started with [`SmtpSink::start_tls`]); returns when
    /// it has greeted with `220`.
    pub fn start(ip: &str, port: u16, script: &str) -> Self {
        Self::spawn(ip, port, script, false)
    }

    /// Like [`SmtpSink::start`], offering STARTTLS with a fresh self-signed
    /// certificate for `sink.test`.
    pub fn start_tls(ip: &str, port: u16, script: &str) -> Self {
        Self::spawn(ip, port, script, true)
    }

    fn spawn(ip: &str, port: u16, script: &str, tls: bool) -> Self {
        let ip: IpAddr = ip.parse().expect("SmtpSink::start takes an IP address");
        let ok = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "test needs the Python package aiosmtpd (pip install aiosmtpd==1.4.6); \
             scripts/test.sh installs everything the tests need"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("smtp_sink.py");
        std::fs::write(&path, SCRIPT).expect("write smtp_sink.py");
        if tls {
            let c = rcgen::generate_simple_self_signed(vec!["sink.test".to_string()])
                .expect("generate a certificate");
            std::fs::write(dir.path().join("cert.pem"), c.cert.pem()).expect("write cert.pem");
            std::fs::write(dir.path().join("key.pem"), c.signing_key.serialize_pem())
                .expect("write key.pem");
        }
        if !script.is_empty() {
            std::fs::write(dir.path().join("script.json"), script).expect("write script.json");
        }
        let args = vec![
            path.display().to_string(),
            ip.to_string(),
            port.to_string(),
            dir.path().display().to_string(),
        ];
        let server = Server::spawn(
            "smtp sink",
            PathBuf::from("python3"),
            args,
            port,
            Probe::Smtp { ip },
            dir,
        );
        SmtpSink { server, ip }
    }

    /// Its address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The accepted messages, in order, as received (dot-unstuffed).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        (1..)
            .map(|n| self.server.dir().join(format!("msg-{n}.eml")))
            .map_while(|p| std::fs::read(p).ok())
            .collect()
    }

    /// The envelope (JSON) of the `n`-th accepted message (from 1).
    pub fn envelope(&self, n: usize) -> String {
        std::fs::read_to_string(self.server.dir().join(format!("msg-{n}.json"))).unwrap_or_default()
    }

    /// Every MAIL, RCPT and DATA seen, one JSON object a line, with the reply given.
    pub fn events(&self) -> String {
        std::fs::read_to_string(self.server.dir().join("events.jsonl")).unwrap_or_default()
    }
}
