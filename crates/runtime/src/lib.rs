//! Shared service plumbing.
//!
//! - [`shutdown_signal`]: resolves on SIGTERM or SIGINT.
//! - [`Health`]: a tier's liveness/readiness, served with Prometheus metrics
//!   on the tier's side HTTP port by [`serve_http`] (`/healthz`, `/readyz`,
//!   `/metrics`).
//! - [`Backoff`]: jittered exponential backoff for reconnect loops.
//! - [`group_commit`]: concurrent writers sharing one transaction and fsync.

#![warn(missing_docs)]

pub mod group_commit;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Resolves when the process gets SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Liveness and readiness of one tier.
///
/// A tier is *ready* when every dependency it needs answered its last check;
/// the reason for not being ready is kept and shown on `/readyz`.
#[derive(Clone)]
pub struct Health {
    inner: Arc<HealthInner>,
}

struct HealthInner {
    tier: &'static str,
    ready: AtomicBool,
    reason: Mutex<String>,
}

impl Health {
    /// A new, not-ready health of `tier`.
    pub fn new(tier: &'static str) -> Self {
        Health {
            inner: Arc::new(HealthInner {
                tier,
                ready: AtomicBool::new(false),
                reason: Mutex::new("starting".into()),
            }),
        }
    }

    /// The tier's name.
    pub fn tier(&self) -> &'static str {
        self.inner.tier
    }

    /// Mark ready.
    pub fn set_ready(&self) {
        if !self.inner.ready.swap(true, Ordering::SeqCst) {
            tracing::info!(tier = self.inner.tier, "ready");
        }
        if let Ok(mut r) = self.inner.reason.lock() {
            r.clear();
        }
    }

    /// Mark not ready, saying why (for example which dependency fails).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        let reason = reason.into();
        if self.inner.ready.swap(false, Ordering::SeqCst) {
            tracing::warn!(tier = self.inner.tier, %reason, "not ready");
        }
        if let Ok(mut r) = self.inner.reason.lock() {
            *r = reason;
        }
    }

    /// Whether ready.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Why not ready (empty when ready).
    pub fn reason(&self) -> String {
        self.inner
            .reason
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

/// The process-wide Prometheus recorder (installed once; in `posthorn serve`
/// all tiers share it, so every tier's `/metrics` shows all series).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (tests); the
            // handle still renders our own recorder's (then empty) series.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A byte stream a protocol session runs over (TCP, or TLS over TCP),
/// boxed so STARTTLS can swap one for the other.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Bind a protocol listener of `tier` (an empty address disables it) and
/// log one line saying where it listens.
pub async fn bind_listener(
    tier: &'static str,
    addr: &str,
    what: &str,
) -> std::io::Result<Option<tokio::net::TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("{tier}: cannot listen on {addr} ({what}): {e}"),
        )
    })?;
    tracing::info!(tier, addr = %l.local_addr()?, "{what} listening");
    Ok(Some(l))
}

/// Bind the side HTTP port of a tier. Separate from [`serve_http`] so the
/// caller learns a bind error (and the actual port with `:0`) at once.
pub async fn bind_http(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serve `/healthz`, `/readyz` and `/metrics` until `shutdown` resolves.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = metrics_handle();
    let local: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(tier = health.tier(), addr = ?local, "HTTP side port (/healthz /readyz /metrics) listening");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.is_ready() {
                    (StatusCode::OK, "ready\n".to_string())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", h.reason()),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Jittered exponential backoff: `min`, `2*min`, ... capped at `max`, each
/// multiplied by a random factor in [0.5, 1.0] so that many clients do not
/// retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A new backoff.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.min.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        let factor: f64 = 0.5 + rand::random::<f64>() * 0.5;
        capped.mul_f64(factor)
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Call `connect` until it succeeds, sleeping with [`Backoff`] between
/// attempts, logging each failure (naming the endpoint via the error) and
/// keeping `health` not ready meanwhile. Returns `None` if `shutdown` fires
/// first.
pub async fn connect_with_retry<T, E, F, Fut>(
    what: &str,
    health: &Health,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    mut connect: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut shutdown = shutdown.clone();
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match connect().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(tier = health.tier(), dependency = what, error = %e, retry_in = ?delay, "dependency unavailable, retrying");
                health.set_not_ready(format!("{what}: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d1 = b.next_delay();
        assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
        for _ in 0..30 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn health_reason() {
        let h = Health::new("t");
        assert!(!h.is_ready());
        h.set_ready();
        assert!(h.is_ready());
        h.set_not_ready("redis at redis://x: refused");
        assert!(h.reason().contains("redis://x"));
    }
}
