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

mod net;
mod remote;
mod sections;

pub use net::{cidr_contains, parse_cidr};
pub use remote::*;
pub use sections::*;

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
mod env_tests;
#[cfg(test)]
mod tests;
