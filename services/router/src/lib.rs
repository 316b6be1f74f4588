//! The router tier.
//!
//! Serves the directory and admin gRPC API (`posthorn.router.v1`) with the
//! standard `grpc.health.v1` service beside it, and its side HTTP port.
//! Consumes the inbound queue: alias expansion, local delivery into INBOX,
//! remote recipients onto the outbound queue.
//!
//! # Layout
//! - [`directory`]: the gRPC service over the metadata store.
//! - [`route`]: addressing (qualification, aliases, catch-alls, relay control).
//! - [`inbound`]: the inbound queue consumer.
//! - [`queue_admin`]: the delivery queue's admin API (`posthorn.queue.v1`) and
//!   its gauges.
//! - [`bounce`], [`success`]: delivery status notifications (failed;
//!   delivered and expanded for NOTIFY=SUCCESS).

#![warn(missing_docs)]

pub mod bounce;
pub mod directory;
pub mod gc;
pub mod inbound;
pub mod queue_admin;
pub mod route;
pub mod success;

use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::{BoxError, Provider, on_shutdown, watch_health};
use posthorn_config::Config;
use posthorn_proto::queue::v1::queue_service_server::QueueServiceServer;
use posthorn_proto::router::v1::router_service_server::RouterServiceServer;
use posthorn_runtime::Health;
use tokio::sync::watch;

/// Run the router until `shutdown` turns true.
pub async fn run(
    cfg: Arc<Config>,
    provider: Provider,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let health = Health::new("router");
    let http = posthorn_runtime::bind_http(&cfg.router.http_listen).await?;
    tokio::spawn(posthorn_runtime::serve_http(
        http,
        health.clone(),
        on_shutdown(shutdown.clone()),
    ));

    let grpc = tokio::net::TcpListener::bind(&cfg.router.grpc_listen)
        .await
        .map_err(|e| format!("router: cannot listen on {}: {e}", cfg.router.grpc_listen))?;
    tracing::info!(tier = "router", addr = %grpc.local_addr()?, "gRPC (directory, admin) listening");

    let Some(backends) = provider.get(&health, &shutdown).await else {
        return Ok(());
    };

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<RouterServiceServer<directory::Directory>>()
        .await;
    tokio::spawn(watch_health(
        backends.clone(),
        health.clone(),
        shutdown.clone(),
        Duration::from_secs(5),
        || async { Ok(()) },
    ));

    let addressing = Arc::new(route::Addressing::new(
        backends.meta.clone(),
        &cfg.server.primary_domain,
        &cfg.server.hostname,
    ));
    tokio::spawn(queue_admin::gauges(
        backends.clone(),
        Duration::from_secs(cfg.router.queue_metrics_secs),
        shutdown.clone(),
    ));
    let consumer = tokio::spawn(inbound::consume(
        addressing.clone(),
        backends.clone(),
        posthorn_bus::ConsumerConfig {
            ack_wait: Duration::from_secs(cfg.router.ack_wait_secs),
            max_deliver: cfg.router.max_deliver,
            ..Default::default()
        },
        cfg.router.concurrency as usize,
        shutdown.clone(),
    ));
    let directory = directory::Directory::new(
        backends.meta.clone(),
        backends.blobs.clone(),
        addressing,
        Duration::from_secs(cfg.router.auth_cache_secs),
    );
    let stop = {
        let health = health.clone();
        let shutdown = shutdown.clone();
        async move {
            on_shutdown(shutdown).await;
            health.set_not_ready("shutting down");
            reporter
                .set_not_serving::<RouterServiceServer<directory::Directory>>()
                .await;
        }
    };
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(health_service)
        .add_service(RouterServiceServer::new(directory))
        .add_service(QueueServiceServer::new(queue_admin::QueueAdmin::new(
            backends.clone(),
        )))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), stop)
        .await?;
    let _ = consumer.await;
    tracing::info!(tier = "router", "stopped");
    Ok(())
}
