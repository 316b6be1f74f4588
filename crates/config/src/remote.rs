//! `[resolver]` and `[delivery]`: DNS and remote delivery, with the
//! next-hop syntax of relay hosts and transports (docs/delivery.md).

use serde::{Deserialize, Serialize};

/// `[resolver]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// gRPC listener.
    pub grpc_listen: String,
    /// Side HTTP port: /healthz, /readyz, /metrics.
    pub http_listen: String,
    /// DNS servers (`ip:port`, or a bare `ip` for port 53) to ask, in
    /// order; empty: the `nameserver` lines of `/etc/resolv.conf`.
    pub nameservers: Vec<String>,
    /// Seconds to wait for one server's answer (resolv.conf's `timeout`: 5).
    pub timeout_secs: u64,
    /// Tries of a query before it fails temporarily (resolv.conf's `attempts`: 2).
    pub attempts: u32,
    /// Most answers (one per name and record type) kept in the cache.
    pub cache_size: u64,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            grpc_listen: "127.0.0.1:50052".into(),
            http_listen: "127.0.0.1:9082".into(),
            nameservers: Vec::new(),
            timeout_secs: 5,
            attempts: 2,
            cache_size: 10_000,
        }
    }
}

/// Parse a `resolver.nameservers` entry: `ip:port` (`[v6]:port`) or a bare
/// `ip` meaning port 53.
pub fn parse_nameserver(s: &str) -> Option<std::net::SocketAddr> {
    let s = s.trim();
    s.parse::<std::net::SocketAddr>().ok().or_else(|| {
        s.parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| std::net::SocketAddr::new(ip, 53))
    })
}

/// `[delivery]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Side HTTP port: /healthz, /readyz, /metrics.
    pub http_listen: String,
    /// Resolver gRPC URL.
    pub resolver_url: String,
    /// Seconds before the first retry (Postfix minimal_backoff_time: 300 s).
    pub retry_min_secs: u64,
    /// Longest retry interval (Postfix maximal_backoff_time: 4000 s; we take 1 h).
    pub retry_max_secs: u64,
    /// Seconds after which a delay warning DSN is sent (Postfix delay_warning_time: 4 h).
    pub delay_warning_secs: u64,
    /// Seconds after which a message bounces (Sendmail/Postfix: 5 days).
    pub max_queue_lifetime_secs: u64,
    /// Simultaneous deliveries per destination (the recipient domain, or
    /// the relay) by one delivery process; 0: no limit (Postfix
    /// default_destination_concurrency_limit: 20).
    pub per_domain_concurrency: u32,
    /// Seconds a destination none of whose next hops answered is
    /// suspended: its items are deferred without a connection; 0: never.
    pub dead_destination_secs: u64,
    /// Outbound items worked on at once by one delivery process.
    pub concurrency: u32,
    /// TCP port of the next hop (25; tests point it at unprivileged peers).
    pub remote_port: u16,
    /// Seconds an item may be held without a heartbeat before the queue
    /// hands it to another consumer (the worker heartbeats while it works).
    pub ack_wait_secs: u64,
    /// Seconds to wait for a TCP connection to one address.
    pub connect_timeout_secs: u64,
    /// RFC 5321 §4.5.3.2 timeouts, seconds: the greeting (5 min),
    pub timeout_greeting_secs: u64,
    /// the reply to MAIL and to EHLO/STARTTLS (5 min),
    pub timeout_mail_secs: u64,
    /// the reply to each RCPT (5 min),
    pub timeout_rcpt_secs: u64,
    /// the 354 reply to DATA (2 min),
    pub timeout_data_init_secs: u64,
    /// each block of message data written (3 min),
    pub timeout_data_block_secs: u64,
    /// the reply after the final dot (10 min).
    pub timeout_data_end_secs: u64,
    /// Send every remote message to this next hop instead of the MX
    /// (Postfix `relayhost`, Sendmail `DS`): `host:port` (MX lookup of
    /// host), `[host]:port` (no MX lookup: the addresses of host); the
    /// port may be left out (`remote_port`). Empty: off.
    pub relayhost: String,
    /// File of `host username password` lines: credentials for AUTH to
    /// a relay host or transport (Postfix `sasl_passwd`). Empty: no AUTH.
    pub relay_auth_file: String,
    /// Allow AUTH to a relay that does not offer STARTTLS (the password
    /// goes in clear). Default off: such mail is deferred instead.
    pub relay_auth_plaintext: bool,
    /// Per-domain next hops (Postfix `transport_maps`): `domain = "host:port"`
    /// or `"[host]:port"`; a key `.example.com` matches the subdomains of
    /// example.com. Exact domain first, then parent domains, then `relayhost`.
    pub transports: std::collections::BTreeMap<String, String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            http_listen: "127.0.0.1:9083".into(),
            resolver_url: "http://127.0.0.1:50052".into(),
            retry_min_secs: 300,
            retry_max_secs: 3600,
            delay_warning_secs: 14_400,
            max_queue_lifetime_secs: 432_000,
            per_domain_concurrency: 20,
            dead_destination_secs: 60,
            concurrency: 100,
            remote_port: 25,
            ack_wait_secs: 60,
            connect_timeout_secs: 30,
            timeout_greeting_secs: 300,
            timeout_mail_secs: 300,
            timeout_rcpt_secs: 300,
            timeout_data_init_secs: 120,
            timeout_data_block_secs: 180,
            timeout_data_end_secs: 600,
            relayhost: String::new(),
            relay_auth_file: String::new(),
            relay_auth_plaintext: false,
            transports: std::collections::BTreeMap::new(),
        }
    }
}

/// A configured next hop: `delivery.relayhost` or a `delivery.transports` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// Host name (lower case, no trailing dot) or IP address literal.
    pub host: String,
    /// TCP port; `None`: `delivery.remote_port`.
    pub port: Option<u16>,
    /// Whether to look up the MX records of `host` (written without
    /// brackets and not an IP address), as Postfix does.
    pub mx: bool,
}

impl NextHop {
    /// The key of `delivery.relay_auth_file` for this hop as written
    /// (`[host]:port`, `host:port`, `[host]` or `host`).
    pub fn spec(&self) -> String {
        let h = if self.mx {
            self.host.clone()
        } else if self.host.contains(':') {
            format!("[ipv6:{}]", self.host)
        } else {
            format!("[{}]", self.host)
        };
        match self.port {
            Some(p) => format!("{h}:{p}"),
            None => h,
        }
    }
}

/// Parse a next hop as Postfix writes it: `host`, `host:port`, `[host]`,
/// `[host]:port`; `[ipv6:2001:db8::1]:587` or `[2001:db8::1]:587` for an
/// IPv6 address. Brackets mean "no MX lookup"; an IP address is never
/// looked up. `None` if it is not one of these.
pub fn parse_next_hop(s: &str) -> Option<NextHop> {
    let s = s.trim();
    let (host, port, bracketed) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        let host = host
            .strip_prefix("ipv6:")
            .or_else(|| host.strip_prefix("IPv6:"))
            .unwrap_or(host);
        (host, port, true)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?), false),
            None => (s, None, false),
        }
    };
    if port == Some(0) {
        return None;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Some(NextHop {
            host,
            port,
            mx: false,
        });
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return None;
    }
    Some(NextHop {
        host,
        port,
        mx: !bracketed,
    })
}
