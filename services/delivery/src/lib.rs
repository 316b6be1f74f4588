//! The delivery tier: remote SMTP delivery from the outbound queue
//! (docs/delivery.md).
//!
//! Consumes `outbound` (consumer group `delivery`, `delivery.concurrency`
//! items at once): for each item, LookupMx through the resolver tier, one
//! SMTP transaction per recipient to the first next hop that answers, then
//! ack (delivered, or bounced with a DSN to the sender) or NAK with the
//! next delay of the retry schedule.
//!
//! # Layout
//! - [`settle`]: one item off the queue: markers, the queue index, ack/NAK.
//! - [`worker`]: the attempts of one item, from lookup to outcome.
//! - [`client`]: one SMTP transaction on `mail-send`, with RFC 5321 timeouts.
//! - [`destinations`]: per-destination concurrency and suspension.
//! - [`params`]: MAIL/RCPT parameters per the next hop's extensions; dot-stuffing.
//! - [`retry`]: the retry schedule.
//! - [`routes`]: relay host, per-domain transports, relay AUTH credentials.
//! - [`bounce`]: failure notifications, published on the inbound queue.
//!
//! Readiness: the queue and blob store answer, and the resolver's gRPC
//! health service says SERVING.

#![warn(missing_docs)]

pub mod bounce;
pub mod client;
pub mod destinations;
pub mod params;
pub mod retry;
pub mod routes;
pub mod settle;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::{BoxError, Provider, on_shutdown, watch_health};
use posthorn_bus::{ConsumerConfig, Queue};
use posthorn_config::Config;
use posthorn_proto::resolver::v1::resolver_service_client::ResolverServiceClient;
use posthorn_runtime::Health;
use tokio::sync::{Semaphore, watch};

/// Run delivery until `shutdown` turns true.
pub async fn run(
    cfg: Arc<Config>,
    provider: Provider,
    shutdown: watch::Receiver<bool>,
) -> Result<(), BoxError> {
    // A bad relay_auth_file stops delivery at once, before any mail is taken.
    let routes = routes::Routes::from_config(&cfg.delivery)?;
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
    let d = &cfg.delivery;
    let channel = tonic::transport::Endpoint::from_shared(d.resolver_url.clone())
        .map_err(|e| format!("delivery.resolver_url {}: {e}", d.resolver_url))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .connect_lazy();
    let ctx = worker::Ctx {
        backends: backends.clone(),
        resolver: ResolverServiceClient::new(channel),
        hostname: cfg.server.hostname.clone(),
        port: d.remote_port,
        timeouts: client::Timeouts::from_config(d),
        schedule: retry::Schedule::from_config(d),
        ack_wait: Duration::from_secs(d.ack_wait_secs),
        routes: Arc::new(routes),
        delay_warning: Duration::from_secs(d.delay_warning_secs),
        destinations: destinations::Destinations::new(
            d.per_domain_concurrency as usize,
            Duration::from_secs(d.dead_destination_secs),
        ),
    };
    let consumer = tokio::spawn(consume(
        ctx,
        // The lifetime, not a delivery count, ends retries: the queue
        // never dead-letters an item for having been NAKed often.
        ConsumerConfig {
            ack_wait: Duration::from_secs(d.ack_wait_secs),
            max_deliver: u32::MAX,
            // Every deferred item is un-acked while its NAK delay runs.
            max_pending: 0,
        },
        d.concurrency as usize,
        shutdown.clone(),
    ));
    let resolver = d.resolver_url.clone();
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
    let _ = consumer.await;
    tracing::info!(tier = "delivery", "stopped");
    Ok(())
}

/// Consume the outbound queue until shutdown.
async fn consume(
    ctx: worker::Ctx,
    config: ConsumerConfig,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff =
        posthorn_runtime::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut consumer = loop {
        match ctx
            .backends
            .bus
            .consumer(Queue::Outbound, "delivery", config)
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "cannot open the outbound consumer");
                tokio::select! {
                    _ = tokio::time::sleep(d) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    tracing::info!(tier = "delivery", "consuming the outbound queue");
    loop {
        if *shutdown.borrow() {
            break;
        }
        // A free slot first, so items are not held while we cannot work on them.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let next = tokio::select! {
            n = consumer.next(Duration::from_secs(1)) => n,
            _ = shutdown.changed() => break,
        };
        match next {
            Ok(Some(delivery)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    worker::handle(&ctx, delivery).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "outbound queue unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    // In-flight transactions are abandoned at shutdown: their items were not
    // acked and come back after the ack wait (the done marker and the
    // queue make that safe). Give them a moment to finish first.
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        limit.acquire_many(concurrency.max(1) as u32),
    )
    .await;
}
