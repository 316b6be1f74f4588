//! The resolver tier: cached DNS lookups (MX, A/AAAA, TXT, TLSA) over gRPC
//! (`posthorn.resolver.v1`) for the delivery tier, beside `grpc.health.v1`
//! and its side HTTP port. docs/resolver.md describes the API, the cache and
//! which failures are temporary.
//!
//! # Layout
//! - [`lookup`]: the [`Resolver`] (hickory-resolver behind our cache), IP,
//!   TXT and TLSA lookups, name checks.
//! - [`mx`]: `LookupMx` (RFC 5321 §5.1, RFC 7505).
//! - [`cache`]: the TTL cache with negative caching (RFC 2308).
//! - [`service`]: the gRPC service.

#![warn(missing_docs)]

pub mod cache;
pub mod lookup;
pub mod mx;
pub mod service;

pub use lookup::{InvalidName, Resolver};
pub use service::Service;

use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::{BoxError, Provider, on_shutdown};
use posthorn_config::Config;
use posthorn_proto::resolver::v1::resolver_service_server::ResolverServiceServer;
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
    let resolver = Arc::new(Resolver::new(&cfg.resolver)?);
    tracing::info!(
        tier = "resolver",
        addr = %grpc.local_addr()?,
        nameservers = ?resolver.nameservers(),
        "gRPC listening"
    );
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<ResolverServiceServer<Service>>()
        .await;
    health.set_ready();
    let stop = {
        let health = health.clone();
        async move {
            on_shutdown(shutdown).await;
            health.set_not_ready("shutting down");
            reporter
                .set_not_serving::<ResolverServiceServer<Service>>()
                .await;
        }
    };
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .add_service(health_service)
        .add_service(ResolverServiceServer::new(Service::new(resolver)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(grpc), stop)
        .await?;
    Ok(())
}
