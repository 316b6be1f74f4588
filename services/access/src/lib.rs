//! The access tier: POP3 and IMAP over the shared metadata and blob stores,
//! so any number of replicas behind a load balancer show the same mailboxes.
//!
//! | listener | config key | TLS |
//! |---|---|---|
//! | IMAP (143) | `access.imap_listen` | STARTTLS |
//! | IMAPS (993) | `access.imaps_listen` | implicit |
//! | POP3 (110) | `access.pop3_listen` | STLS |
//! | POP3S (995) | `access.pop3s_listen` | implicit |
//!
//! Readiness: the metadata store, blob store and event bus answer.
//!
//! # Layout
//! - [`Ctx`]: what sessions share (backends, TLS, login checks).
//! - [`pop3`]: the POP3 server (RFC 1939, 2449, 2595, 5034).
//! - [`imap`]: the IMAP server (RFC 3501 / 9051 and extensions).

#![warn(missing_docs)]

pub mod fuzzing;
pub mod imap;
pub mod pop3;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use posthorn_auth::Throttle;
use posthorn_backends::{Backends, BoxError, Provider, on_shutdown, watch_health};
use posthorn_config::Config;
use posthorn_runtime::Health;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

pub use posthorn_runtime::Io;

/// Connection facts.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Client address.
    pub ip: IpAddr,
    /// Whether the stream is TLS already (implicit TLS listener).
    pub tls: bool,
}

/// What every POP3/IMAP session shares.
pub struct Ctx {
    /// The configuration.
    pub cfg: Arc<Config>,
    /// Metadata, blobs and events.
    pub backends: Backends,
    /// TLS for STARTTLS/STLS and the implicit-TLS listeners (`None`: none available).
    pub tls: Option<TlsAcceptor>,
    /// Failed logins per account.
    throttle_account: Throttle,
    /// Failed logins per client IP.
    throttle_ip: Throttle,
    /// Recent successful password checks.
    verified: posthorn_auth::VerifyCache,
}

/// Result of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Authenticated as this (normalised) account.
    Ok(String),
    /// Wrong user or password.
    BadCredentials,
    /// Too many recent failures for this account or address: refused without checking.
    Throttled,
    /// The directory could not be asked; try later.
    Unavailable(String),
}

impl Ctx {
    /// A context over `backends`.
    pub fn new(cfg: Arc<Config>, mut backends: Backends, tls: Option<TlsAcceptor>) -> Self {
        // A small per-process cache of message bodies (RETR, FETCH BODY[]).
        backends.blobs = backends
            .blobs
            .with_cache(usize::try_from(cfg.access.body_cache_bytes).unwrap_or(usize::MAX));
        let window = Duration::from_secs(cfg.access.login_failure_window_secs);
        let max = cfg.access.max_login_failures;
        let auth_cache = Duration::from_secs(cfg.access.auth_cache_secs);
        Ctx {
            cfg,
            backends,
            tls,
            throttle_account: Throttle::new(max, window),
            throttle_ip: Throttle::new(max, window),
            verified: posthorn_auth::VerifyCache::new(auth_cache),
        }
    }

    /// Check a user name and password (argon2id), with per-account and
    /// per-IP failure throttling.
    pub async fn login(&self, user: &str, password: &str, ip: IpAddr) -> Login {
        let account = posthorn_mailbox_store::normalize_address(user);
        let ip_key = ip.to_string();
        if !self.throttle_account.allowed(&account) || !self.throttle_ip.allowed(&ip_key) {
            tracing::warn!(%account, client = %ip, "login throttled");
            metrics::counter!("posthorn_access_logins_throttled_total").increment(1);
            return Login::Throttled;
        }
        let hash = match self.backends.meta.get_account(&account).await {
            Ok(Some(a)) => Some(a.password_hash),
            Ok(None) | Err(posthorn_mailbox_store::Error::Invalid { .. }) => None,
            Err(e) => return Login::Unavailable(e.to_string()),
        };
        let ok = match hash {
            Some(h) => self.verified.verify(password, &h).await,
            None => {
                let _ = posthorn_auth::verify_password(
                    password.to_string(),
                    posthorn_auth::DUMMY_HASH.into(),
                )
                .await;
                false
            }
        };
        if ok {
            self.throttle_account.succeeded(&account);
            Login::Ok(account)
        } else {
            self.throttle_account.failed(&account);
            self.throttle_ip.failed(&ip_key);
            metrics::counter!("posthorn_access_login_failures_total").increment(1);
            tracing::warn!(%account, client = %ip, "login failed");
            Login::BadCredentials
        }
    }

    /// Whether a password may be sent on this connection now.
    pub fn plaintext_allowed(&self, tls: bool) -> bool {
        tls || self.cfg.access.allow_plaintext_auth
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Imap,
    Pop3,
}

/// Run access until `shutdown` turns true.
pub async fn run(
    cfg: Arc<Config>,
    provider: Provider,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let health = Health::new("access");
    let http = posthorn_runtime::bind_http(&cfg.access.http_listen).await?;
    tokio::spawn(posthorn_runtime::serve_http(
        http,
        health.clone(),
        on_shutdown(shutdown.clone()),
    ));
    let tls = posthorn_tls::acceptor(&cfg)?;
    let imap = posthorn_runtime::bind_listener("access", &cfg.access.imap_listen, "IMAP").await?;
    let pop3 = posthorn_runtime::bind_listener("access", &cfg.access.pop3_listen, "POP3").await?;
    let (imaps, pop3s) = if tls.is_some() {
        (
            posthorn_runtime::bind_listener(
                "access",
                &cfg.access.imaps_listen,
                "IMAPS (implicit TLS)",
            )
            .await?,
            posthorn_runtime::bind_listener(
                "access",
                &cfg.access.pop3s_listen,
                "POP3S (implicit TLS)",
            )
            .await?,
        )
    } else {
        (None, None)
    };
    let Some(backends) = provider.get(&health, &shutdown).await else {
        return Ok(());
    };
    let ctx = Arc::new(Ctx::new(cfg.clone(), backends.clone(), tls));
    let watcher = tokio::spawn(watch_health(
        backends,
        health.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
        || async { Ok(()) },
    ));
    let mut accepts = tokio::task::JoinSet::new();
    for (l, proto, implicit) in [
        (imap, Proto::Imap, false),
        (imaps, Proto::Imap, true),
        (pop3, Proto::Pop3, false),
        (pop3s, Proto::Pop3, true),
    ] {
        if let Some(l) = l {
            accepts.spawn(accept_loop(
                ctx.clone(),
                l,
                proto,
                implicit,
                shutdown.clone(),
            ));
        }
    }
    // A listener task that dies before shutdown fails the tier (restart).
    while let Some(done) = accepts.join_next().await {
        if let Err(e) = done
            && !*shutdown.borrow()
        {
            health.set_not_ready("a listener failed");
            return Err(format!("access: a listener task failed: {e}").into());
        }
    }
    health.set_not_ready("shutting down");
    let _ = watcher.await;
    Ok(())
}

async fn accept_loop(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    proto: Proto,
    implicit_tls: bool,
    mut shutdown: watch::Receiver<bool>,
) {
    // Caps this listener's sessions (access.max_connections).
    let limit = Arc::new(Semaphore::new(ctx.cfg.access.max_connections as usize));
    loop {
        let (sock, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = sock.set_nodelay(true);
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            use tokio::io::AsyncWriteExt;
            let mut sock = sock;
            let msg: &[u8] = match proto {
                Proto::Imap => b"* BYE Too many connections, try again later\r\n",
                Proto::Pop3 => b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
            };
            let _ = sock.write_all(msg).await;
            continue;
        };
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        let span = tracing::info_span!("access", client = %addr.ip(), proto = ?proto);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                metrics::gauge!("posthorn_access_sessions", "proto" => if proto == Proto::Imap { "imap" } else { "pop3" }).increment(1.0);
                let mut peer = Peer {
                    ip: addr.ip(),
                    tls: false,
                };
                let stream: Box<dyn Io> = if implicit_tls {
                    let Some(acceptor) = ctx.tls.clone() else {
                        return;
                    };
                    match tokio::time::timeout(Duration::from_secs(30), acceptor.accept(sock)).await
                    {
                        Ok(Ok(tls)) => {
                            peer.tls = true;
                            Box::new(tls)
                        }
                        _ => return,
                    }
                } else {
                    Box::new(sock)
                };
                match proto {
                    Proto::Imap => imap::run(ctx, stream, peer, shutdown).await,
                    Proto::Pop3 => pop3::run(ctx, stream, peer, shutdown).await,
                }
                metrics::gauge!("posthorn_access_sessions", "proto" => if proto == Proto::Imap { "imap" } else { "pop3" }).decrement(1.0);
                drop(permit);
            },
            span,
        ));
    }
}
