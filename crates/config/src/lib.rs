//! Posthorn configuration.
//!
//! One TOML file; every key can be overridden by an environment variable
//! `POSTHORN_<SECTION>__<KEY>` (for example `POSTHORN_REDIS__URL`), which is
//! what a Kubernetes Deployment sets. Only variables with a `__` are read, so
//! unrelated `POSTHORN_*` variables do not disturb it. Unknown keys are
//! errors, so a typo is reported instead of silently ignored.
//!
//! The defaults run the embedded system (`posthorn serve`) on unprivileged
//! ports. `docs/configuration.md` lists every key; a test checks that it
//! names every key of [`Config::default`].

#![warn(missing_docs)]

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// A configuration that could not be loaded, with the offending key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Which backends the tiers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded: redb files and a local blob directory under `server.data_dir`.
    Embedded,
    /// Cluster: Redis, NATS JetStream and S3.
    Cluster,
}

/// How the embedded blob store makes a body durable before `250`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobSync {
    /// Bodies written meanwhile share one `syncfs(2)` of the blob
    /// directory's filesystem (a group commit). Fast; the data directory
    /// should be on a filesystem of its own.
    Syncfs,
    /// `fsync` of each body file and of its directory (what Postfix does
    /// for its queue files): no waiting on other writers of a shared
    /// filesystem, two flushes per message.
    Fsync,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    /// Always JSON lines.
    Json,
    /// Always human-readable.
    Text,
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity and data directory.
    pub server: ServerConfig,
    /// Which backends to use.
    pub storage: StorageConfig,
    /// Redis (cluster backend).
    pub redis: RedisConfig,
    /// NATS JetStream (cluster backend).
    pub nats: NatsConfig,
    /// S3-compatible object storage (cluster backend).
    pub s3: S3Config,
    /// TLS certificate for STARTTLS and implicit TLS.
    pub tls: TlsConfig,
    /// smtp-ingress tier.
    pub smtp: SmtpConfig,
    /// access tier (IMAP and POP3).
    pub access: AccessConfig,
    /// router tier.
    pub router: RouterConfig,
    /// resolver tier.
    pub resolver: ResolverConfig,
    /// delivery tier.
    pub delivery: DeliveryConfig,
    /// Logs, traces and metrics.
    pub telemetry: TelemetryConfig,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Fully qualified host name used in greetings and `Received:` (Sendmail's `$j`).
    pub hostname: String,
    /// Primary local domain: unqualified addresses are qualified with it.
    /// Empty means the first local domain of the directory.
    pub primary_domain: String,
    /// Directory for embedded stores, blobs and the generated certificate.
    pub data_dir: PathBuf,
    /// Seconds a tier waits for in-flight work on SIGTERM before exiting.
    /// Default 25 s, below Kubernetes' default 30 s termination grace.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            primary_domain: String::new(),
            data_dir: PathBuf::from("posthorn-data"),
            shutdown_grace_secs: 25,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `embedded` (default) or `cluster`.
    pub backend: Backend,
    /// Seconds an unreferenced blob is kept before garbage collection (default 24 h).
    pub blob_gc_grace_secs: u64,
    /// Seconds between garbage-collection passes of the router (0 disables).
    pub blob_gc_interval_secs: u64,
    /// Embedded backend: how a body is made durable (`syncfs`, default, or `fsync`).
    pub blob_sync: BlobSync,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: Backend::Embedded,
            blob_gc_grace_secs: 86_400,
            blob_gc_interval_secs: 3_600,
            blob_sync: BlobSync::Syncfs,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// URL of a standalone Redis (`redis://host:6379/`, `rediss://` for TLS).
    pub url: String,
    /// Seed node URLs of a Redis Cluster; when non-empty, `url` is ignored.
    pub cluster_urls: Vec<String>,
    /// File holding the password (Kubernetes secret mount); empty: none or in the URL.
    pub password_file: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379/".into(),
            cluster_urls: Vec::new(),
            password_file: String::new(),
        }
    }
}

/// `[nats]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL.
    pub url: String,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
        }
    }
}

/// `[s3]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL; empty means AWS S3 of `region`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Region.
    pub region: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key (prefer `secret_access_key_file`).
    pub secret_access_key: String,
    /// File holding the secret access key.
    pub secret_access_key_file: String,
    /// Allow plain `http://` endpoints (MinIO or a test server).
    pub allow_http: bool,
    /// Path-style requests (`endpoint/bucket/key`), needed by MinIO/Ceph/Garage.
    pub path_style: bool,
    /// Sign each PUT's body (SigV4 payload hash) instead of sending
    /// `UNSIGNED-PAYLOAD`. Off by default: keys are the body's SHA-256 and
    /// every read is verified against it, so a second hash on each side
    /// buys nothing but CPU (see docs/configuration.md).
    pub sign_payload: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            bucket: "posthorn".into(),
            region: "us-east-1".into(),
            access_key_id: String::new(),
            secret_access_key: String::new(),
            secret_access_key_file: String::new(),
            allow_http: false,
            path_style: true,
            sign_payload: false,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; empty: a self-signed one is generated in `data_dir` at first start.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// MX listener (port 25 in production; 2525 unprivileged default).
    pub listen: String,
    /// Submission listener with STARTTLS + AUTH (587; default 2587).
    pub submission_listen: String,
    /// Implicit-TLS submission listener (465; default 2465).
    pub submissions_listen: String,
    /// Side HTTP port: /healthz, /readyz, /metrics.
    pub http_listen: String,
    /// Router gRPC URL used for recipient, relay and auth checks.
    pub router_url: String,
    /// Largest message accepted, in bytes (SIZE). Default 25 MiB like Postfix's 10 MiB x 2.5.
    pub max_message_size: u64,
    /// Most recipients per transaction. RFC 5321 §4.5.3.1.8 requires at least 100.
    pub max_recipients: u32,
    /// Longest command line, octets incl. CRLF. RFC 5321 §4.5.3.1.4: 512; we allow 1,000 for extensions.
    pub max_line_length: u32,
    /// Seconds a client may idle between commands (RFC 5321 §4.5.3.2.7: 5 min).
    pub command_timeout_secs: u64,
    /// Seconds a client may take between DATA chunks (RFC 5321 §4.5.3.2.5: 3 min).
    pub data_timeout_secs: u64,
    /// Simultaneous connections per client IP.
    pub max_connections_per_ip: u32,
    /// Simultaneous connections per listener.
    pub max_connections: u32,
    /// Errors tolerated per session before it is closed (Postfix smtpd_hard_error_limit: 20).
    pub max_errors: u32,
    /// `Received:` headers counted as a loop (Postfix hopcount_limit: 50; Sendmail MaxHopCount: 25; we take 100).
    pub max_hops: u32,
    /// Networks (CIDR) allowed to relay without authentication.
    pub relay_networks: Vec<String>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: "0.0.0.0:2525".into(),
            submission_listen: "0.0.0.0:2587".into(),
            submissions_listen: "0.0.0.0:2465".into(),
            http_listen: "127.0.0.1:9084".into(),
            router_url: "http://127.0.0.1:50051".into(),
            max_message_size: 26_214_400,
            max_recipients: 1000,
            max_line_length: 1000,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            max_connections_per_ip: 50,
            max_connections: 2000,
            max_errors: 20,
            max_hops: 100,
            relay_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// `[access]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// IMAP listener (143; default 1143).
    pub imap_listen: String,
    /// IMAP implicit TLS listener (993; default 1993).
    pub imaps_listen: String,
    /// POP3 listener (110; default 1110).
    pub pop3_listen: String,
    /// POP3 implicit TLS listener (995; default 1995).
    pub pop3s_listen: String,
    /// Side HTTP port: /healthz, /readyz, /metrics.
    pub http_listen: String,
    /// Allow plain-text login without TLS (off in production; on for loopback tests).
    pub allow_plaintext_auth: bool,
    /// Seconds an IMAP client may idle (RFC 3501 §5.4: at least 30 min).
    pub imap_idle_timeout_secs: u64,
    /// Seconds a POP3 client may idle (RFC 1939 §3: at least 10 min).
    pub pop3_idle_timeout_secs: u64,
    /// Seconds a POP3 maildrop lock lease lasts without renewal.
    pub pop3_lock_lease_secs: u64,
    /// Simultaneous sessions per listener (IMAP IDLE clients count).
    pub max_connections: u32,
    /// Failed logins per account, and per client IP, within the window before logins are refused.
    pub max_login_failures: u32,
    /// Window of `max_login_failures`, in seconds.
    pub login_failure_window_secs: u64,
    /// Largest IMAP APPEND literal / message accepted, in bytes.
    pub max_append_size: u64,
    /// Seconds a successful password check is remembered (0: always run argon2).
    pub auth_cache_secs: u64,
    /// Bytes of recently read message bodies kept per access process (0: none).
    pub body_cache_bytes: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            imap_listen: "0.0.0.0:1143".into(),
            imaps_listen: "0.0.0.0:1993".into(),
            pop3_listen: "0.0.0.0:1110".into(),
            pop3s_listen: "0.0.0.0:1995".into(),
            http_listen: "127.0.0.1:9085".into(),
            allow_plaintext_auth: false,
            imap_idle_timeout_secs: 1800,
            pop3_idle_timeout_secs: 600,
            pop3_lock_lease_secs: 60,
            max_connections: 20_000,
            max_login_failures: 10,
            login_failure_window_secs: 300,
            max_append_size: 26_214_400,
            auth_cache_secs: 300,
            body_cache_bytes: 64 << 20,
        }
    }
}

/// `[router]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// gRPC listener (directory, admin, recipient checks).
    pub grpc_listen: String,
    /// Side HTTP port: /healthz, /readyz, /metrics.
    pub http_listen: String,
    /// Seconds an inbound item may be in work before it is redelivered.
    pub ack_wait_secs: u64,
    /// Deliveries of one inbound item before it goes to the dead-letter queue.
    pub max_deliver: u32,
    /// Inbound items routed at the same time by one router process.
    pub concurrency: u32,
    /// Seconds a successful SMTP AUTH password check is remembered (0: always run argon2).
    pub auth_cache_secs: u64,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            grpc_listen: "127.0.0.1:50051".into(),
            http_listen: "127.0.0.1:9081".into(),
            ack_wait_secs: 60,
            max_deliver: 20,
            concurrency: 32,
            auth_cache_secs: 300,
        }
    }
}

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
    /// Simultaneous deliveries per destination domain (Postfix default_destination_concurrency_limit: 20).
    pub per_domain_concurrency: u32,
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
            concurrency: 20,
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

/// `[telemetry]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `auto` (text on a terminal, JSON otherwise), `json` or `text`.
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `posthorn=debug,info`; `RUST_LOG` wins if set.
    pub log_level: String,
    /// OTLP/gRPC endpoint (e.g. `http://otel-collector:4317`); empty: traces are not exported.
    pub otlp_endpoint: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: LogFormat::Auto,
            log_level: "info".into(),
            otlp_endpoint: String::new(),
        }
    }
}

impl Config {
    /// Load defaults, then `file` (if given), then `POSTHORN_<SECTION>__<KEY>`
    /// variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::figment(file, Env::prefixed("POSTHORN_").split("__"))
    }

    /// Load defaults and `file` only, ignoring the environment (`posthorn config check`).
    pub fn load_file_only(file: &Path) -> Result<Config, ConfigError> {
        if !file.exists() {
            return Err(ConfigError(format!("{}: no such file", file.display())));
        }
        Self::extract(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::file(file)),
        )
    }

    /// Load from defaults, `file`, and a given set of `POSTHORN_*` variables
    /// (for tests, which must not set process-wide variables).
    pub fn load_with_env(
        file: Option<&Path>,
        vars: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("{}: no such file", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        for (k, v) in vars {
            let Some(rest) = k.strip_prefix("POSTHORN_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let key = format!(
                "{}.{}",
                section.to_ascii_lowercase(),
                key.to_ascii_lowercase()
            );
            let value: figment::value::Value = v.parse().unwrap_or_else(|_| (*v).into());
            fig = fig.merge((key, value));
        }
        Self::extract(fig)
    }

    fn figment(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("{}: no such file", f.display())));
            }
            fig = fig.merge(Toml::file(f));
        }
        // Only section-qualified variables: POSTHORN_TEST_* and the like are not ours.
        // (`split` has already turned `__` into `.` when the filter runs.)
        let env = env.filter(|k| k.as_str().contains("__") || k.as_str().contains('.'));
        Self::extract(fig.merge(env))
    }

    fn extract(fig: Figment) -> Result<Config, ConfigError> {
        let cfg: Config = fig.extract().map_err(|e| {
            let mut msgs = Vec::new();
            for err in e {
                let key = if err.path.is_empty() {
                    String::new()
                } else {
                    format!("key `{}`: ", err.path.join("."))
                };
                let source = err
                    .metadata
                    .as_ref()
                    .and_then(|m| m.source.as_ref().map(|s| format!(" (in {s})")))
                    .unwrap_or_default();
                msgs.push(format!("{key}{}{source}", err.kind));
            }
            ConfigError(msgs.join("; "))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Semantic checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr_keys = [
            ("smtp.listen", &self.smtp.listen),
            ("smtp.submission_listen", &self.smtp.submission_listen),
            ("smtp.submissions_listen", &self.smtp.submissions_listen),
            ("smtp.http_listen", &self.smtp.http_listen),
            ("access.imap_listen", &self.access.imap_listen),
            ("access.imaps_listen", &self.access.imaps_listen),
            ("access.pop3_listen", &self.access.pop3_listen),
            ("access.pop3s_listen", &self.access.pop3s_listen),
            ("access.http_listen", &self.access.http_listen),
            ("router.grpc_listen", &self.router.grpc_listen),
            ("router.http_listen", &self.router.http_listen),
            ("resolver.grpc_listen", &self.resolver.grpc_listen),
            ("resolver.http_listen", &self.resolver.http_listen),
            ("delivery.http_listen", &self.delivery.http_listen),
        ];
        for (key, v) in addr_keys {
            // Empty disables an optional listener.
            if !v.is_empty() && v.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError(format!(
                    "key `{key}`: `{v}` is not an `ip:port` socket address"
                )));
            }
        }
        if self.smtp.max_recipients < 1 {
            return Err(ConfigError(
                "key `smtp.max_recipients`: must be at least 1".into(),
            ));
        }
        if self.smtp.max_line_length < 512 {
            return Err(ConfigError(
                "key `smtp.max_line_length`: must be at least 512 (RFC 5321 §4.5.3.1.4)".into(),
            ));
        }
        for net in &self.smtp.relay_networks {
            if parse_cidr(net).is_none() {
                return Err(ConfigError(format!(
                    "key `smtp.relay_networks`: `{net}` is not a network like 10.0.0.0/8"
                )));
            }
        }
        for ns in &self.resolver.nameservers {
            if parse_nameserver(ns).is_none() {
                return Err(ConfigError(format!(
                    "key `resolver.nameservers`: `{ns}` is not an `ip:port` or `ip` address"
                )));
            }
        }
        if self.resolver.timeout_secs < 1 {
            return Err(ConfigError(
                "key `resolver.timeout_secs`: must be at least 1".into(),
            ));
        }
        if self.resolver.attempts < 1 {
            return Err(ConfigError(
                "key `resolver.attempts`: must be at least 1".into(),
            ));
        }
        let d = &self.delivery;
        for (key, v) in [
            ("delivery.retry_min_secs", d.retry_min_secs),
            ("delivery.retry_max_secs", d.retry_max_secs),
            (
                "delivery.max_queue_lifetime_secs",
                d.max_queue_lifetime_secs,
            ),
            ("delivery.concurrency", u64::from(d.concurrency)),
            ("delivery.remote_port", u64::from(d.remote_port)),
            ("delivery.ack_wait_secs", d.ack_wait_secs),
            ("delivery.connect_timeout_secs", d.connect_timeout_secs),
            ("delivery.timeout_greeting_secs", d.timeout_greeting_secs),
            ("delivery.timeout_mail_secs", d.timeout_mail_secs),
            ("delivery.timeout_rcpt_secs", d.timeout_rcpt_secs),
            ("delivery.timeout_data_init_secs", d.timeout_data_init_secs),
            (
                "delivery.timeout_data_block_secs",
                d.timeout_data_block_secs,
            ),
            ("delivery.timeout_data_end_secs", d.timeout_data_end_secs),
        ] {
            if v < 1 {
                return Err(ConfigError(format!("key `{key}`: must be at least 1")));
            }
        }
        if !d.relayhost.is_empty() && parse_next_hop(&d.relayhost).is_none() {
            return Err(ConfigError(format!(
                "key `delivery.relayhost`: `{}` is not `host`, `host:port`, `[host]` or `[host]:port`",
                d.relayhost
            )));
        }
        for (domain, hop) in &d.transports {
            let name = domain.strip_prefix('.').unwrap_or(domain);
            if name.is_empty() || name.contains(['@', ' ', '[', ']', ':']) {
                return Err(ConfigError(format!(
                    "key `delivery.transports`: `{domain}` is not a domain or `.domain`"
                )));
            }
            if parse_next_hop(hop).is_none() {
                return Err(ConfigError(format!(
                    "key `delivery.transports.{domain}`: `{hop}` is not `host`, `host:port`, `[host]` or `[host]:port`"
                )));
            }
        }
        if d.retry_min_secs > d.retry_max_secs {
            return Err(ConfigError(
                "key `delivery.retry_min_secs`: must not exceed `delivery.retry_max_secs`".into(),
            ));
        }
        if (self.tls.cert_file.is_empty()) != (self.tls.key_file.is_empty()) {
            return Err(ConfigError(
                "keys `tls.cert_file` and `tls.key_file` must be set together".into(),
            ));
        }
        Ok(())
    }

    /// The TOML text of this configuration (used for the docs test and `posthorn config show`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// Parse `a.b.c.d/n` or `x::y/n` (a bare address means a single host).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.trim().parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.trim().parse::<u8>().ok()?,
        None => max,
    };
    (len <= max).then_some((ip, len))
}

/// Whether `ip` is inside the network `(net, len)`.
pub fn cidr_contains(net: (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match (net.0, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u32::MAX << (32 - net.1)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if net.1 == 0 {
                0
            } else {
                u128::MAX << (128 - net.1)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Where the data directory's well-known files live.
impl Config {
    /// The embedded metadata store file.
    pub fn meta_path(&self) -> PathBuf {
        self.server.data_dir.join("meta.redb")
    }
    /// The embedded queue file.
    pub fn queue_path(&self) -> PathBuf {
        self.server.data_dir.join("queue.redb")
    }
    /// The local blob directory.
    pub fn blob_dir(&self) -> PathBuf {
        self.server.data_dir.join("blobs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_and_env_override() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "[smtp]\nmax_recipients = 50\n[redis]\nurl = \"redis://a:1/\"\n",
        )
        .unwrap();
        let c = Config::load_with_env(
            Some(&f),
            &[
                ("POSTHORN_REDIS__URL", "redis://b:2/"),
                ("POSTHORN_STORAGE__BACKEND", "cluster"),
                ("POSTHORN_TEST_IGNORED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.smtp.max_recipients, 50);
        assert_eq!(c.redis.url, "redis://b:2/");
        assert_eq!(c.storage.backend, Backend::Cluster);
    }

    #[test]
    fn blob_sync_choices() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        assert_eq!(Config::default().storage.blob_sync, BlobSync::Syncfs);
        std::fs::write(&f, "[storage]\nblob_sync = \"fsync\"\n").unwrap();
        assert_eq!(
            Config::load_file_only(&f).unwrap().storage.blob_sync,
            BlobSync::Fsync
        );
        std::fs::write(&f, "[storage]\nblob_sync = \"never\"\n").unwrap();
        let err = Config::load_file_only(&f).unwrap_err().to_string();
        assert!(err.contains("blob_sync"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "[smtp]\nmax_recipientz = 50\n").unwrap();
        let err = Config::load_file_only(&f).unwrap_err().to_string();
        assert!(err.contains("max_recipientz"), "{err}");
        assert!(err.contains("smtp"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "[smtp]\nmax_recipients = \"many\"\n").unwrap();
        let err = Config::load_file_only(&f).unwrap_err().to_string();
        assert!(err.contains("smtp.max_recipients"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_named() {
        let c = Config::load_with_env(None, &[("POSTHORN_SMTP__LISTEN", "nonsense")]);
        let err = c.unwrap_err().to_string();
        assert!(err.contains("smtp.listen"), "{err}");
    }

    #[test]
    fn docs_list_every_key() {
        let doc = include_str!("../../../docs/configuration.md");
        let toml = Config::default().to_toml();
        let mut section = String::new();
        let mut checked = 0;
        for line in toml.lines() {
            if let Some(s) = line.strip_prefix('[') {
                section = s.trim_end_matches(']').to_string();
            } else if let Some((k, _)) = line.split_once(" = ") {
                let needle = format!("`{section}.{k}`");
                assert!(
                    doc.contains(&needle),
                    "docs/configuration.md does not list {needle}"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "only {checked} keys found");
    }

    #[test]
    fn delivery_keys_from_env_and_validation() {
        let c = Config::load_with_env(
            None,
            &[
                ("POSTHORN_DELIVERY__REMOTE_PORT", "2525"),
                ("POSTHORN_DELIVERY__CONCURRENCY", "3"),
                ("POSTHORN_DELIVERY__RETRY_MIN_SECS", "1"),
                ("POSTHORN_DELIVERY__RETRY_MAX_SECS", "4"),
                ("POSTHORN_DELIVERY__TIMEOUT_DATA_END_SECS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.delivery.remote_port, 2525);
        assert_eq!(c.delivery.concurrency, 3);
        assert_eq!(
            (c.delivery.retry_min_secs, c.delivery.retry_max_secs),
            (1, 4)
        );
        assert_eq!(c.delivery.timeout_data_end_secs, 7);
        assert_eq!(Config::default().delivery.timeout_greeting_secs, 300);
        let err = Config::load_with_env(None, &[("POSTHORN_DELIVERY__TIMEOUT_RCPT_SECS", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.timeout_rcpt_secs"), "{err}");
        let err = Config::load_with_env(
            None,
            &[
                ("POSTHORN_DELIVERY__RETRY_MIN_SECS", "100"),
                ("POSTHORN_DELIVERY__RETRY_MAX_SECS", "10"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("delivery.retry_min_secs"), "{err}");
    }

    #[test]
    fn resolver_keys_from_file_and_env() {
        let c = Config::load_with_env(
            None,
            &[
                (
                    "POSTHORN_RESOLVER__NAMESERVERS",
                    "[\"127.0.0.1:5353\", \"[::1]:53\", \"10.0.0.1\"]",
                ),
                ("POSTHORN_RESOLVER__TIMEOUT_SECS", "2"),
                ("POSTHORN_RESOLVER__ATTEMPTS", "3"),
                ("POSTHORN_RESOLVER__CACHE_SIZE", "50"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.resolver.nameservers,
            ["127.0.0.1:5353", "[::1]:53", "10.0.0.1"]
        );
        assert_eq!(
            parse_nameserver("10.0.0.1"),
            Some("10.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("[::1]:53"),
            Some("[::1]:53".parse().unwrap())
        );
        assert_eq!(
            (
                c.resolver.timeout_secs,
                c.resolver.attempts,
                c.resolver.cache_size
            ),
            (2, 3, 50)
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "[resolver]\nnameservers = [\"dns.example:53\"]\n").unwrap();
        let err = Config::load_file_only(&f).unwrap_err().to_string();
        assert!(err.contains("resolver.nameservers"), "{err}");
        let err = Config::load_with_env(None, &[("POSTHORN_RESOLVER__ATTEMPTS", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("resolver.attempts"), "{err}");
    }

    #[test]
    fn next_hop_forms() {
        let h = |host: &str, port: Option<u16>, mx: bool| NextHop {
            host: host.into(),
            port,
            mx,
        };
        assert_eq!(
            parse_next_hop("smtp.Provider.example:587"),
            Some(h("smtp.provider.example", Some(587), true))
        );
        assert_eq!(
            parse_next_hop("[smtp.provider.example]:587"),
            Some(h("smtp.provider.example", Some(587), false))
        );
        assert_eq!(
            parse_next_hop("[relay.example.]"),
            Some(h("relay.example", None, false))
        );
        assert_eq!(
            parse_next_hop("relay.example"),
            Some(h("relay.example", None, true))
        );
        // An address is never an MX lookup, bracketed or not.
        assert_eq!(
            parse_next_hop("192.0.2.1:25"),
            Some(h("192.0.2.1", Some(25), false))
        );
        assert_eq!(
            parse_next_hop("[ipv6:2001:db8::1]:587"),
            Some(h("2001:db8::1", Some(587), false))
        );
        assert_eq!(
            parse_next_hop("[2001:db8::1]"),
            Some(h("2001:db8::1", None, false))
        );
        assert_eq!(
            parse_next_hop("[smtp.provider.example]:587")
                .unwrap()
                .spec(),
            "[smtp.provider.example]:587"
        );
        assert_eq!(
            parse_next_hop("relay.example").unwrap().spec(),
            "relay.example"
        );
        for bad in [
            "",
            "relay.example:",
            "relay.example:0",
            "relay.example:99999",
            "[relay.example",
            "[relay.example]587",
            "a b.example",
            "user@relay.example",
            "relay..example",
        ] {
            assert_eq!(parse_next_hop(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn relayhost_and_transports_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "[delivery]\nrelayhost = \"[smtp.provider.example]:587\"\n\
             relay_auth_file = \"/etc/posthorn/relay_auth\"\n\
             [delivery.transports]\n\"example.com\" = \"mx.example.net:25\"\n\
             \".example.org\" = \"[10.0.0.5]:2525\"\n",
        )
        .unwrap();
        let c = Config::load_file_only(&f).unwrap();
        assert_eq!(c.delivery.relayhost, "[smtp.provider.example]:587");
        assert_eq!(c.delivery.relay_auth_file, "/etc/posthorn/relay_auth");
        assert!(!c.delivery.relay_auth_plaintext);
        assert_eq!(c.delivery.transports["example.com"], "mx.example.net:25");
        assert_eq!(c.delivery.transports[".example.org"], "[10.0.0.5]:2525");
        // From the environment: an inline table.
        let c = Config::load_with_env(
            None,
            &[
                ("POSTHORN_DELIVERY__RELAYHOST", "relay.example:2525"),
                ("POSTHORN_DELIVERY__RELAY_AUTH_PLAINTEXT", "true"),
                (
                    "POSTHORN_DELIVERY__TRANSPORTS",
                    "{\"example.com\"=\"[relay.example]:587\", \".example.org\"=\"mx.example.org\"}",
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.delivery.relayhost, "relay.example:2525");
        assert!(c.delivery.relay_auth_plaintext);
        assert_eq!(c.delivery.transports["example.com"], "[relay.example]:587");
        assert_eq!(c.delivery.transports[".example.org"], "mx.example.org");
        let err = Config::load_with_env(None, &[("POSTHORN_DELIVERY__RELAYHOST", "[x:25")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.relayhost"), "{err}");
        std::fs::write(
            &f,
            "[delivery.transports]\n\"example.com\" = \"bad host:25\"\n",
        )
        .unwrap();
        let err = Config::load_file_only(&f).unwrap_err().to_string();
        assert!(err.contains("delivery.transports.example.com"), "{err}");
    }

    #[test]
    fn cidr() {
        let n = parse_cidr("10.0.0.0/8").unwrap();
        assert!(cidr_contains(n, "10.1.2.3".parse().unwrap()));
        assert!(!cidr_contains(n, "11.1.2.3".parse().unwrap()));
        assert!(cidr_contains(n, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(parse_cidr("10.0.0.0/33").is_none());
        let h = parse_cidr("::1").unwrap();
        assert!(cidr_contains(h, "::1".parse().unwrap()));
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;

    /// The real-environment path (`Config::load`), with figment's jail so no
    /// process-wide variable leaks into other tests.
    #[test]
    #[allow(clippy::result_large_err)]
    fn process_environment_overrides() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("POSTHORN_STORAGE__BACKEND", "cluster");
            jail.set_env("POSTHORN_SMTP__MAX_RECIPIENTS", "7");
            jail.set_env("POSTHORN_TEST_REDIS_SERVER", "/usr/bin/redis-server");
            jail.set_env(
                "POSTHORN_RESOLVER__NAMESERVERS",
                "[\"127.0.0.1:5353\", \"[::1]:53\"]",
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.storage.backend, Backend::Cluster);
            assert_eq!(c.smtp.max_recipients, 7);
            assert_eq!(c.resolver.nameservers, ["127.0.0.1:5353", "[::1]:53"]);
            Ok(())
        });
    }

    /// `delivery.transports` from a real environment variable (an inline table).
    #[test]
    #[allow(clippy::result_large_err)]
    fn transports_from_the_process_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "POSTHORN_DELIVERY__TRANSPORTS",
                "{\"example.com\"=\"[relay.example]:587\", \".example.org\"=\"mx.example.org\"}",
            );
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.delivery.transports["example.com"], "[relay.example]:587");
            assert_eq!(c.delivery.transports[".example.org"], "mx.example.org");
            Ok(())
        });
    }
}
