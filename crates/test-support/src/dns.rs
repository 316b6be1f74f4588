//! A throwaway DNS server: Debian's `dnsmasq` serving records from a
//! [`DnsZone`] on a free loopback port (UDP and TCP).
//!
//! dnsmasq runs with `--no-daemon` (foreground, logs to the server log, and
//! it keeps the user it was started as, so it works as root and as an
//! ordinary user), `--no-resolv --no-hosts` (nothing of the machine's own
//! DNS leaks in) and `--cache-size=0` (every query it forwards really goes
//! out). It is handed over when it answers a DNS query over UDP.
//!
//! Names the zone does not configure are answered REFUSED, unless they are
//! under a [`DnsZone::local`] domain (NXDOMAIN) or a
//! [`DnsZone::authoritative`] zone (NXDOMAIN with an SOA).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;

use crate::probe::Probe;
use crate::{Server, find_program, free_port};

/// The records and behaviour a [`DnsServer`] serves, as dnsmasq options.
#[derive(Debug, Clone, Default)]
pub struct DnsZone {
    ttl: u32,
    lines: Vec<String>,
}

impl DnsZone {
    /// No records; TTL 60 s.
    pub fn new() -> Self {
        DnsZone {
            ttl: 60,
            lines: Vec::new(),
        }
    }

    /// The TTL of every record served (and the negative TTL of an
    /// authoritative zone).
    pub fn ttl(mut self, secs: u32) -> Self {
        self.ttl = secs;
        self
    }

    /// An MX record: `domain` → `host` at `preference`.
    pub fn mx(self, domain: &str, preference: u16, host: &str) -> Self {
        self.line(format!("mx-host={domain},{host},{preference}"))
    }

    /// An A or AAAA record (by the form of `ip`); repeat for more.
    pub fn a(self, name: &str, ip: &str) -> Self {
        let ip: IpAddr = ip.parse().expect("DnsZone::a takes an IP address");
        self.line(format!("host-record={name},{ip}"))
    }

    /// A TXT record of one or more character-strings (no `"` or `\`).
    pub fn txt(self, name: &str, strings: &[&str]) -> Self {
        let mut line = format!("txt-record={name}");
        for s in strings {
            assert!(!s.contains(['"', '\\']), "DnsZone::txt: {s:?}");
            write!(line, ",\"{s}\"").expect("write to String");
        }
        self.line(line)
    }

    /// A null MX (RFC 7505): one MX, preference 0, target `.`.
    pub fn null_mx(self, domain: &str) -> Self {
        self.rr(domain, 15, &[0, 0, 0])
    }

    /// A TLSA record (`name` like `_25._tcp.mx.example`).
    pub fn tlsa(self, name: &str, usage: u8, selector: u8, matching: u8, data: &[u8]) -> Self {
        let mut rdata = vec![usage, selector, matching];
        rdata.extend_from_slice(data);
        self.rr(name, 52, &rdata)
    }

    /// Any record, by type number and wire-format RDATA.
    pub fn rr(self, name: &str, rtype: u16, rdata: &[u8]) -> Self {
        self.line(format!("dns-rr={name},{rtype},{}", hex::encode(rdata)))
    }

    /// Names under `domain` that are not configured are NXDOMAIN (without
    /// SOA, so not cacheable per RFC 2308 §5); forwarding elsewhere works.
    pub fn local(self, domain: &str) -> Self {
        self.line(format!("local=/{domain}/"))
    }

    /// Serve `domain` authoritatively: answers carry AA, and NXDOMAIN and
    /// NODATA answers carry the zone's SOA, whose TTL and MINIMUM are the
    /// zone's [`ttl`](Self::ttl) (the negative TTL of RFC 2308). In this
    /// mode dnsmasq answers nothing else: names outside are REFUSED and
    /// [`forward`](Self::forward) does not work.
    pub fn authoritative(self, domain: &str) -> Self {
        self.line(format!("auth-server=ns.{domain},127.0.0.1"))
            .line(format!("auth-zone={domain}"))
            .line(format!("auth-soa=1,hostmaster.{domain},1200,120,604800"))
    }

    /// Forward queries for names under `domain` to `server` (which may
    /// answer SERVFAIL, or never).
    pub fn forward(self, domain: &str, server: SocketAddr) -> Self {
        self.line(format!(
            "server=/{domain}/{}#{}",
            server.ip(),
            server.port()
        ))
    }

    fn line(mut self, l: String) -> Self {
        self.lines.push(l);
        self
    }

    /// The dnsmasq configuration file text.
    fn conf(&self) -> String {
        let mut c = format!("local-ttl={0}\nauth-ttl={0}\n", self.ttl);
        for l in &self.lines {
            c.push_str(l);
            c.push('\n');
        }
        c
    }
}

/// A throwaway `dnsmasq` serving a [`DnsZone`] on 127.0.0.1.
pub struct DnsServer {
    /// The process.
    pub server: Server,
    conf: PathBuf,
}

impl DnsServer {
    /// Start one serving `zone`.
    pub fn start(zone: &DnsZone) -> Self {
        let program = find_program(
            "POSTHORN_TEST_DNSMASQ",
            &["dnsmasq"],
            "apt-get install dnsmasq-base",
        );
        // Free for TCP (checked by free_port) and for UDP.
        let port = loop {
            let p = free_port();
            if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
                break p;
            }
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("dnsmasq.conf");
        std::fs::write(&conf, zone.conf()).expect("write dnsmasq.conf");
        let args = vec![
            "--no-daemon".into(),
            "--log-facility=-".into(),
            "--log-queries".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--cache-size=0".into(),
            format!("--port={port}"),
            "--listen-address=127.0.0.1".into(),
            "--bind-interfaces".into(),
            format!("--conf-file={}", conf.display()),
        ];
        let probe = Probe::Dns {
            name: "posthorn-probe.invalid".into(),
        };
        let server = Server::spawn("dnsmasq", program, args, port, probe, dir);
        DnsServer { server, conf }
    }

    /// `127.0.0.1:PORT`, for `resolver.nameservers`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.server.port()))
    }

    /// Stop it (SIGKILL): queries then go unanswered.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    /// Start again on the same port, serving `zone`; returns when it serves.
    pub fn restart_with(&mut self, zone: &DnsZone) {
        self.server.kill();
        std::fs::write(&self.conf, zone.conf()).expect("write dnsmasq.conf");
        self.server.start();
    }

    /// How many queries it has logged (`--log-queries`), over all its runs.
    pub fn queries_seen(&self) -> usize {
        let log = std::fs::read_to_string(self.server.dir().join("server.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains(" query[") || l.contains(" auth["))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_probe_needs_an_answer_with_its_id() {
        // A socket that takes queries and never answers is not a server.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let probe = Probe::Dns {
            name: "x.test".into(),
        };
        assert!(probe.check(port).is_err());
        let mut dns = DnsServer::start(&DnsZone::new().local("test"));
        assert_eq!(probe.check(dns.server.port()), Ok(()));
        let before = dns.queries_seen();
        assert_eq!(probe.check(dns.server.port()), Ok(()));
        assert!(dns.queries_seen() > before);
        dns.stop();
        assert!(probe.check(dns.addr().port()).is_err());
        dns.restart_with(&DnsZone::new());
        assert_eq!(probe.check(dns.addr().port()), Ok(()));
    }
}
