//! The sections of the configuration file that are not remote delivery.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Backend, BlobSync, LogFormat};

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
    /// Seconds between updates of the delivery queue gauges (0: none).
    pub queue_metrics_secs: u64,
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
            queue_metrics_secs: 15,
        }
    }
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
