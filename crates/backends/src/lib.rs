//! The three backends a tier works against, built from the configuration.
//!
//! | concern | `storage.backend = "cluster"` | `"embedded"` |
//! |---|---|---|
//! | metadata, directory | Redis ([`RedisStore`]) | redb file `data_dir/meta.redb` |
//! | bodies | S3 ([`BlobStore::s3`]) | directory `data_dir/blobs` |
//! | queues, events | NATS JetStream ([`JetStreamBus`]) | redb file `data_dir/queue.redb` |
//!
//! In a cluster each tier process connects on its own, retrying with backoff
//! while a dependency is down (the tier stays up and not ready, and its log
//! names the endpoint). In `posthorn serve` the embedded backends are opened
//! once and shared by all five tiers ([`Provider::Ready`]), because a redb
//! file can be opened by one process only.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

pub mod outbound;

use posthorn_blob_store::BlobStore;
use posthorn_bus::Bus;
use posthorn_bus::embedded::EmbeddedBus;
use posthorn_bus::jetstream::JetStreamBus;
use posthorn_config::{Backend, Config};
use posthorn_mailbox_store::MetaStore;
use posthorn_mailbox_store::embedded::EmbeddedStore;
use posthorn_mailbox_store::redis_store::RedisStore;
use posthorn_runtime::Health;
use tokio::sync::watch;

/// The backends of one tier.
#[derive(Clone)]
pub struct Backends {
    /// Mailbox metadata and the directory.
    pub meta: Arc<dyn MetaStore>,
    /// Message bodies.
    pub blobs: BlobStore,
    /// Queues and events.
    pub bus: Arc<dyn Bus>,
}

impl Backends {
    /// Open the embedded backends under `cfg.server.data_dir`.
    pub fn open_embedded(cfg: &Config) -> Result<Backends, String> {
        let dir = &cfg.server.data_dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", dir.display()))?;
        let meta = EmbeddedStore::open(&cfg.meta_path())
            .map_err(|e| format!("{}: {e}", cfg.meta_path().display()))?;
        let bus = EmbeddedBus::open(&cfg.queue_path())
            .map_err(|e| format!("{}: {e}", cfg.queue_path().display()))?;
        let blobs = BlobStore::local_with(&cfg.blob_dir(), cfg.storage.blob_sync)
            .map_err(|e| e.to_string())?;
        Ok(Backends {
            meta: Arc::new(meta),
            blobs,
            bus: Arc::new(bus),
        })
    }

    /// Connect to Redis, NATS and S3 once; the error names the endpoint.
    pub async fn connect_cluster(cfg: &Config) -> Result<Backends, String> {
        let meta = if cfg.redis.cluster_urls.is_empty() {
            RedisStore::connect(&redis_url(cfg)?)
                .await
                .map_err(|e| format!("redis {}: {e}", cfg.redis.url))?
        } else {
            RedisStore::connect_cluster(&cfg.redis.cluster_urls)
                .await
                .map_err(|e| format!("redis cluster {:?}: {e}", cfg.redis.cluster_urls))?
        };
        meta.ping()
            .await
            .map_err(|e| format!("redis {}: {e}", cfg.redis.url))?;
        let bus = JetStreamBus::connect(&cfg.nats.url)
            .await
            .map_err(|e| format!("nats {}: {e}", cfg.nats.url))?;
        let blobs = BlobStore::s3(&cfg.s3).map_err(|e| e.to_string())?;
        blobs.ping().await.map_err(|e| e.to_string())?;
        Ok(Backends {
            meta: Arc::new(meta),
            blobs,
            bus: Arc::new(bus),
        })
    }

    /// Check that all three answer; the error says which does not.
    pub async fn check(&self) -> Result<(), String> {
        self.meta
            .ping()
            .await
            .map_err(|e| format!("metadata store: {e}"))?;
        self.bus.ping().await.map_err(|e| format!("queue: {e}"))?;
        self.blobs
            .ping()
            .await
            .map_err(|e| format!("blob store: {e}"))?;
        Ok(())
    }
}

fn redis_url(cfg: &Config) -> Result<String, String> {
    if cfg.redis.password_file.is_empty() {
        return Ok(cfg.redis.url.clone());
    }
    let pw = std::fs::read_to_string(&cfg.redis.password_file)
        .map_err(|e| format!("redis.password_file {}: {e}", cfg.redis.password_file))?;
    let pw = pw.trim();
    // redis://host:port/db -> redis://:pw@host:port/db
    match cfg.redis.url.split_once("://") {
        Some((scheme, rest)) => Ok(format!("{scheme}://:{pw}@{rest}")),
        None => Err(format!("redis.url {} has no scheme", cfg.redis.url)),
    }
}

/// Where a tier gets its backends from.
#[derive(Clone)]
pub enum Provider {
    /// Already open (embedded, shared in one process; or tests).
    Ready(Backends),
    /// Connect according to the configuration, retrying until it works.
    FromConfig(Arc<Config>),
}

impl Provider {
    /// Get the backends, retrying with backoff while a dependency is down and
    /// keeping `health` not ready meanwhile. `None` if shutdown came first.
    pub async fn get(&self, health: &Health, shutdown: &watch::Receiver<bool>) -> Option<Backends> {
        match self {
            Provider::Ready(b) => Some(b.clone()),
            Provider::FromConfig(cfg) => match cfg.storage.backend {
                Backend::Cluster => {
                    posthorn_runtime::connect_with_retry("backends", health, shutdown, || {
                        Backends::connect_cluster(cfg)
                    })
                    .await
                }
                Backend::Embedded => {
                    posthorn_runtime::connect_with_retry("backends", health, shutdown, || async {
                        Backends::open_embedded(cfg)
                    })
                    .await
                }
            },
        }
    }
}

/// Keep `health` in step with the backends: check every `every` until
/// shutdown. `extra` adds a tier's own check (for example a gRPC peer).
pub async fn watch_health<F, Fut>(
    backends: Backends,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
    every: Duration,
    extra: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    loop {
        let res = match backends.check().await {
            Ok(()) => extra().await,
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => health.set_ready(),
            Err(e) => health.set_not_ready(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The error type tiers return from `run`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Turn a shutdown future into a watch channel every task can clone.
pub fn shutdown_channel(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    rx
}

/// A future that resolves when the watched shutdown flag turns true.
pub async fn on_shutdown(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The `main` of a tier's own binary: `<tier> [--config FILE]`. Loads the
/// configuration (exit 64 with one line on error, like linkerd and
/// sysexits' EX_USAGE), starts telemetry, runs the tier until SIGTERM/SIGINT.
pub fn tier_main<F, Fut>(tier: &'static str, run: F) -> std::process::ExitCode
where
    F: FnOnce(Arc<Config>, Provider, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let mut args = std::env::args().skip(1);
    let mut file = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => file = args.next().map(std::path::PathBuf::from),
            "--help" | "-h" => {
                println!(
                    "usage: {tier} [--config FILE]\nEvery key can be overridden by POSTHORN_<SECTION>__<KEY>."
                );
                return std::process::ExitCode::SUCCESS;
            }
            other => {
                eprintln!("{tier}: unknown argument {other:?} (usage: {tier} [--config FILE])");
                return std::process::ExitCode::from(64);
            }
        }
    }
    let cfg = match Config::load(file.as_deref()) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("{tier}: invalid configuration: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{tier}: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let _guard = posthorn_telemetry::init(tier, &cfg.telemetry);
        let shutdown = shutdown_channel(posthorn_runtime::shutdown_signal());
        match run(cfg.clone(), Provider::FromConfig(cfg), shutdown).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(tier, error = %e, "tier failed");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
