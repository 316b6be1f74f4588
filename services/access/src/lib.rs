//! The access tier (IMAP and POP3).
//!
//! Readiness: the metadata store, blob store and event bus answer.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::{BoxError, Provider, on_shutdown, watch_health};
use posthorn_config::Config;
use posthorn_runtime::Health;
use tokio::sync::watch;

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
    let Some(backends) = provider.get(&health, &shutdown).await else {
        return Ok(());
    };
    watch_health(
        backends,
        health.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
        || async { Ok(()) },
    )
    .await;
    health.set_not_ready("shutting down");
    Ok(())
}
