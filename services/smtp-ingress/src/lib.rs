//! The smtp-ingress tier: an RFC 5321 server on three listeners.
//!
//! | listener | config key | TLS | AUTH | relaying |
//! |---|---|---|---|---|
//! | MX (25) | `smtp.listen` | STARTTLS offered | not offered | only from `smtp.relay_networks` |
//! | submission (587) | `smtp.submission_listen` | STARTTLS | PLAIN/LOGIN after TLS, required for MAIL | authenticated |
//! | submissions (465) | `smtp.submissions_listen` | implicit | PLAIN/LOGIN, required for MAIL | authenticated |
//!
//! Readiness: the blob store and queue answer, and the router's gRPC health
//! service says SERVING (recipient, relay and auth checks go there).
//!
//! # Layout
//! - [`session`]: the per-connection state machine.
//! - [`checks`]: router gRPC calls (recipient, sender, password) with a cache.

#![warn(missing_docs)]

pub mod checks;
pub mod session;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use posthorn_backends::{Backends, BoxError, Provider, on_shutdown, watch_health};
use posthorn_config::Config;
use posthorn_runtime::Health;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::session::{Kind, Peer};

/// What every session shares.
pub struct Shared {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// Blob store and queue.
    pub backends: Backends,
    /// Router checks.
    pub checks: checks::Checks,
    /// TLS for STARTTLS and port 465 (`None` if no certificate could be loaded).
    pub tls: Option<TlsAcceptor>,
    /// Parsed `smtp.relay_networks`.
    pub relay_nets: Vec<(IpAddr, u8)>,
    /// Open sessions per client IP, for `smtp.max_connections_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// Decrements the per-IP count when a session ends.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.shared.per_ip.lock()
            && let Some(n) = m.get_mut(&self.ip)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Run smtp-ingress until `shutdown` turns true.
pub async fn run(
    cfg: Arc<Config>,
    provider: Provider,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let health = Health::new("smtp-ingress");
    let http = posthorn_runtime::bind_http(&cfg.smtp.http_listen).await?;
    tokio::spawn(posthorn_runtime::serve_http(
        http,
        health.clone(),
        on_shutdown(shutdown.clone()),
    ));

    let tls = posthorn_tls::acceptor(&cfg)?;
    let mx = posthorn_runtime::bind_listener("smtp-ingress", &cfg.smtp.listen, "SMTP (MX)").await?;
    let sub = posthorn_runtime::bind_listener(
        "smtp-ingress",
        &cfg.smtp.submission_listen,
        "SMTP submission (STARTTLS)",
    )
    .await?;
    let subs = if tls.is_some() {
        posthorn_runtime::bind_listener(
            "smtp-ingress",
            &cfg.smtp.submissions_listen,
            "SMTP submissions (implicit TLS)",
        )
        .await?
    } else {
        None
    };

    let Some(backends) = provider.get(&health, &shutdown).await else {
        return Ok(());
    };
    let relay_nets = cfg
        .smtp
        .relay_networks
        .iter()
        .filter_map(|n| posthorn_config::parse_cidr(n))
        .collect();
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        backends: backends.clone(),
        checks: checks::Checks::new(&cfg.smtp.router_url)?,
        tls,
        relay_nets,
        per_ip: Mutex::new(HashMap::new()),
    });

    let router = cfg.smtp.router_url.clone();
    let watcher = tokio::spawn(watch_health(
        backends,
        health.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
        move || {
            let router = router.clone();
            async move {
                posthorn_proto::check_health(&router, "posthorn.router.v1.RouterService")
                    .await
                    .map_err(|e| format!("router: {e}"))
            }
        },
    ));

    // One semaphore per listener caps its sessions (smtp.max_connections).
    let mut accepts = tokio::task::JoinSet::new();
    for (listener, kind) in [
        (mx, Kind::Mx),
        (sub, Kind::Submission),
        (subs, Kind::Submissions),
    ] {
        if let Some(l) = listener {
            accepts.spawn(accept_loop(shared.clone(), l, kind, shutdown.clone()));
        }
    }
    // An accept loop ends only at shutdown; if one dies otherwise (a panic),
    // the listener is gone: fail the tier so the process is restarted
    // instead of running on without it.
    while let Some(done) = accepts.join_next().await {
        if let Err(e) = done
            && !*shutdown.borrow()
        {
            health.set_not_ready("a listener failed");
            return Err(format!("smtp-ingress: a listener task failed: {e}").into());
        }
    }
    health.set_not_ready("shutting down");
    let _ = watcher.await;
    Ok(())
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    kind: Kind,
    mut shutdown: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(shared.cfg.smtp.max_connections as usize));
    // Tracks sessions so shutdown can wait for those in DATA.
    let sessions = tokio_util::task::TaskTracker::new();
    loop {
        let (mut sock, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = sock.set_nodelay(true);
        let ip = addr.ip();
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let _ = sock
                .write_all(b"421 4.3.2 Too many connections, try again later\r\n")
                .await;
            continue;
        };
        let over_ip = {
            let mut m = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= shared.cfg.smtp.max_connections_per_ip {
                true
            } else {
                *n += 1;
                false
            }
        };
        if over_ip {
            let _ = sock
                .write_all(b"421 4.7.0 Too many connections from your address\r\n")
                .await;
            continue;
        }
        let slot = IpSlot {
            shared: shared.clone(),
            ip,
        };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let span = tracing::info_span!("smtp", client = %ip, listener = ?kind);
        sessions.spawn(tracing::Instrument::instrument(
            async move {
                metrics::gauge!("posthorn_smtp_sessions").increment(1.0);
                let peer = Peer {
                    ip,
                    kind,
                    tls: None,
                };
                if kind == Kind::Submissions {
                    let Some(acceptor) = shared.tls.clone() else {
                        return;
                    };
                    let timeout = Duration::from_secs(shared.cfg.smtp.command_timeout_secs);
                    if let Ok(Ok(tls)) = tokio::time::timeout(timeout, acceptor.accept(sock)).await
                    {
                        let desc = {
                            let (_, conn) = tls.get_ref();
                            posthorn_tls::describe(conn)
                        };
                        let peer = Peer {
                            tls: Some(desc),
                            ..peer
                        };
                        session::run(shared, Box::new(tls), peer, shutdown).await;
                    }
                } else {
                    session::run(shared, Box::new(sock), peer, shutdown).await;
                }
                metrics::gauge!("posthorn_smtp_sessions").decrement(1.0);
                drop(slot);
                drop(permit);
            },
            span,
        ));
    }
    // Sessions got 421 on shutdown between commands; wait for those in DATA.
    let grace = Duration::from_secs(shared.cfg.server.shutdown_grace_secs);
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!("SMTP sessions still open after the grace period");
    }
}
