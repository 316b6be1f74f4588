//! The resolver tier. Its job is cached DNS lookups (MX/A/AAAA/TXT/TLSA)
//! over gRPC for delivery; that API comes with the remote-delivery issue.
//! Today it serves only `grpc.health.v1` and its side HTTP port, so that
//! deployments and readiness wiring (delivery waits for it) work already.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::{BoxError, Provider, on_shutdown};
use posthorn_config::Config;
use posthorn_runtime::Health;
use tokio::sync::watch;

/// Run the resolver until `shutdown` turns true.
pub async fn run(
    cfg: Arc<Config>,
    _provider: Provider,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    let health = Health::new("resolver");
    let http = posthorn_runtime::bind_http(&cfg.resolver.http_listen).await?;
    tokio::spawn(posthorn_runtime::serve_http(
        http,
        health.clone(),
        on_shutdown(shutdown.clone()),
    ));
    let grpc = tokio::net::TcpListener::bind(&cfg.resolver.grpc_listen)
        .await
        .map_err(|e| {
            format!(
                "resolver: cannot listen on {}: {e}",
                cfg.resolver.grpc_listen
            )
        })?;
    tracing::info!(tier = "resolver", addr = %grpc.local_addr()?, "gRPC listening");
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health.set_ready();
    let stop = {
        let health = health.clone();
        async move {
            on_shutdown(shutdown).await;
            health.set_not_ready("shutting down");
            drop(reporter);
        }
    };
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(health_service)
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), stop)
        .await?;
    Ok(())
}
