//! The smtp-ingress tier.
//!
//! Readiness: the blob store and queue answer, and the router's gRPC health
//! service says SERVING (recipient, relay and auth checks go there).

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::{BoxError, Provider, on_shutdown, watch_health};
use posthorn_config::Config;
use posthorn_runtime::Health;
use tokio::sync::watch;

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
    let Some(backends) = provider.get(&health, &shutdown).await else {
        return Ok(());
    };
    let router = cfg.smtp.router_url.clone();
    watch_health(
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
    )
    .await;
    health.set_not_ready("shutting down");
    Ok(())
}
