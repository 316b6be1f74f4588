//! The delivery tier (remote SMTP delivery from the outbound queue). The
//! delivery loop comes with the remote-delivery issue: today the tier only
//! reports health and readiness, and remote recipients wait, durably, on
//! the `outbound` queue.
//!
//! Readiness: the queue and blob store answer, and the resolver's gRPC
//! health service says SERVING.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::{BoxError, Provider, on_shutdown, watch_health};
use posthorn_config::Config;
use posthorn_runtime::Health;
use tokio::sync::watch;

/// Run delivery until `shutdown` turns true.
pub async fn run(
    cfg: Arc<Config>,
    provider: Provider,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let health = Health::new("delivery");
    let http = posthorn_runtime::bind_http(&cfg.delivery.http_listen).await?;
    tokio::spawn(posthorn_runtime::serve_http(
        http,
        health.clone(),
        on_shutdown(shutdown.clone()),
    ));
    let Some(backends) = provider.get(&health, &shutdown).await else {
        return Ok(());
    };
    let resolver = cfg.delivery.resolver_url.clone();
    watch_health(
        backends,
        health.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
        move || {
            let resolver = resolver.clone();
            async move {
                posthorn_proto::check_health(&resolver, "")
                    .await
                    .map_err(|e| format!("resolver: {e}"))
            }
        },
    )
    .await;
    health.set_not_ready("shutting down");
    Ok(())
}
