//! The inbound queue consumer: expand each accepted message's recipients,
//! deliver local ones into their INBOX, queue remote ones for delivery, and
//! only then acknowledge.
//!
//! Idempotent under redelivery (docs/architecture.md invariant 2): every append carries
//! the dedupe key `<message id>/<account>`, every outbound item the message
//! id `<message id>/<recipient>`, so a router killed at any point and a
//! redelivered item add nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use posthorn_backends::Backends;
use posthorn_bus::{ConsumerConfig, Delivery, MailboxEvent, Queue};
use posthorn_mailbox_store::{AppendOutcome, NewMessage};
use posthorn_proto::common::v1::{Envelope, OutboundItem, Recipient};
use prost::Message;
use tokio::sync::{Semaphore, watch};

use crate::bounce::Failed;
use crate::route::{Addressing, Target};

/// Why handling an item failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Try again later (backend down).
    Transient(String),
    /// Never going to work (undecodable payload).
    Poison(String),
}

/// Consume the inbound queue until shutdown.
pub async fn consume(
    addressing: Arc<Addressing>,
    backends: Backends,
    config: ConsumerConfig,
    concurrency: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff =
        posthorn_runtime::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut consumer = loop {
        match backends
            .bus
            .consumer(Queue::Inbound, "router", config)
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "cannot open the inbound consumer");
                tokio::select! {
                    _ = tokio::time::sleep(d) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    tracing::info!(tier = "router", "consuming the inbound queue");
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Wait for a free slot before taking an item, so items are not held
        // (and their ack wait running) while we cannot work on them.
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
                let (addressing, backends) = (addressing.clone(), backends.clone());
                tokio::spawn(async move {
                    handle(&addressing, &backends, delivery).await;
                    drop(permit);
                });
            }
            Ok(None) => {}
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?d, "inbound queue unavailable");
                tokio::time::sleep(d).await;
            }
        }
    }
    // Let in-flight items finish (un-acked ones are redelivered anyway).
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        limit.acquire_many(concurrency.max(1) as u32),
    )
    .await;
}

async fn handle(addressing: &Addressing, backends: &Backends, delivery: Delivery) {
    let started = std::time::Instant::now();
    let attempt = delivery.attempt;
    match route(addressing, backends, &delivery).await {
        Ok(()) => {
            if let Err(e) = delivery.ack().await {
                // Not acked: it is redelivered and the dedupe keys make that harmless.
                tracing::warn!(error = %e, "ack failed; the item will be redelivered");
            }
            metrics::counter!("posthorn_router_routed_total").increment(1);
            metrics::histogram!("posthorn_router_route_seconds")
                .record(started.elapsed().as_secs_f64());
        }
        Err(Failure::Transient(e)) => {
            let delay = Duration::from_secs((1u64 << attempt.min(6)).min(60));
            tracing::warn!(error = %e, attempt, retry_in = ?delay, "routing failed; will retry");
            metrics::counter!("posthorn_router_retries_total").increment(1);
            let _ = delivery.nak(Some(delay)).await;
        }
        Err(Failure::Poison(e)) => {
            tracing::error!(error = %e, "undecodable inbound item moved to the dead-letter queue");
            let _ = delivery.term().await;
        }
    }
}

/// How long the router pins the body of a message it queues for remote
/// delivery: longer than the default queue lifetime (5 days); delivery
/// renews the pin on every deferral for its configured lifetime.
pub const BLOB_PIN: Duration = posthorn_mailbox_store::BLOB_PIN_QUEUED;

/// Keep `blob_key` from garbage collection while remote deliveries wait
/// for it (no mailbox references it; docs/delivery.md).
async fn pin_blob(backends: &Backends, blob_key: &str) -> Result<(), Failure> {
    backends
        .meta
        .set_marker(&posthorn_mailbox_store::blob_pin_marker(blob_key), BLOB_PIN)
        .await
        .map_err(transient)
}

fn transient<E: std::fmt::Display>(e: E) -> Failure {
    Failure::Transient(e.to_string())
}

pub(crate) async fn route(
    addressing: &Addressing,
    backends: &Backends,
    delivery: &Delivery,
) -> Result<(), Failure> {
    let env = Envelope::decode(delivery.payload.clone())
        .map_err(|e| Failure::Poison(format!("bad envelope: {e}")))?;
    // The span must be attached with `instrument`, never entered across an
    // `.await` (that corrupts the span stack of the worker thread).
    let span = tracing::info_span!("route", msg_id = %env.id, from = %env.mail_from);
    tracing::Instrument::instrument(route_envelope(addressing, backends, delivery, env), span).await
}

async fn route_envelope(
    addressing: &Addressing,
    backends: &Backends,
    delivery: &Delivery,
    env: Envelope,
) -> Result<(), Failure> {
    if let Some(stored) = delivery.stored_at_ms
        && env.publish_deadline_ms > 0
        && stored > env.publish_deadline_ms
    {
        // A publish buffered across a reconnect reached the queue after
        // smtp-ingress had answered 451: the client retries; delivering this
        // copy would be a surprise duplicate.
        tracing::warn!(
            stored_at_ms = stored,
            deadline_ms = env.publish_deadline_ms,
            "queued after smtp-ingress gave up on it; dropped"
        );
        metrics::counter!("posthorn_router_late_publishes_dropped_total").increment(1);
        return Ok(());
    }

    // Expand every recipient; one copy per account.
    let mut locals: BTreeMap<String, Recipient> = BTreeMap::new();
    // Accepted at RCPT time, undeliverable now: they get a DSN, not silence.
    let mut failed: Vec<Failed> = Vec::new();
    let mut remotes: BTreeMap<String, (Recipient, String)> = BTreeMap::new();
    // Who asked for a success notice, and what their address expanded to.
    let mut success = crate::success::Plan::default();
    for rcpt in &env.rcpt_to {
        let q = match addressing
            .qualify(&rcpt.address, env.relay_client)
            .await
            .map_err(transient)?
        {
            Ok(q) => q,
            Err(d) => {
                tracing::warn!(rcpt = %rcpt.address, decision = ?d, "recipient no longer routable; bouncing");
                failed.push(Failed {
                    rcpt: rcpt.clone(),
                    status: "5.1.3",
                    diagnostic: "the address is no longer routable here".into(),
                });
                continue;
            }
        };
        let targets = addressing.expand(&q).await.map_err(transient)?;
        success.add(&env, rcpt, &q, &targets);
        let members = targets.len();
        if targets.is_empty() {
            // Accepted at RCPT time, gone since (account or alias removed).
            tracing::warn!(rcpt = %q, "no such recipient at routing time; bouncing");
            failed.push(Failed {
                rcpt: rcpt.clone(),
                status: "5.1.1",
                diagnostic: "no such user here (removed after the message was accepted)".into(),
            });
        }
        for t in targets {
            match t {
                Target::Local(acct) => {
                    locals.entry(acct).or_insert_with(|| rcpt.clone());
                }
                Target::Remote(addr) => {
                    let from = if addr == q { String::new() } else { q.clone() };
                    remotes.entry(addr.clone()).or_insert_with(|| {
                        (
                            Recipient {
                                address: addr,
                                notify: crate::success::passed_on_notify(&rcpt.notify, members),
                                orcpt: rcpt.orcpt.clone(),
                            },
                            from,
                        )
                    });
                }
            }
        }
    }

    // The body once, to cache ENVELOPE/BODYSTRUCTURE with each copy, so
    // IMAP answers them from metadata without reading the blob.
    let computed = if env.structure.is_empty() {
        None
    } else {
        posthorn_mime::Structure::from_json(&env.structure).filter(|st| st.size == env.size)
    };
    let body = if locals.is_empty() || computed.is_some() {
        None
    } else {
        match backends.blobs.get(&env.blob_key).await {
            Ok(b) => Some(b),
            Err(e) if e.is_transient() => return Err(transient(e)),
            Err(e) => {
                tracing::error!(blob = %env.blob_key, error = %e, "body unreadable; delivering without cached structure");
                None
            }
        }
    };
    // Accounts whose INBOX holds the message (now or from an earlier attempt).
    let mut delivered = BTreeSet::new();
    for (acct, rcpt) in &locals {
        let prefix = format!(
            "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
            env.mail_from, acct
        );
        let (envelope, bodystructure) = match (&computed, &body) {
            (Some(st), _) => {
                let mut st = st.clone();
                st.prepend_header(prefix.len() as u64);
                (serde_json::to_string(&st.envelope).ok(), Some(st.to_json()))
            }
            (None, Some(b)) => {
                let mut full = Vec::with_capacity(prefix.len() + b.len());
                full.extend_from_slice(prefix.as_bytes());
                full.extend_from_slice(b);
                let st = posthorn_mime::analyze(&full);
                (serde_json::to_string(&st.envelope).ok(), Some(st.to_json()))
            }
            (None, None) => (None, None),
        };
        let msg = NewMessage {
            dedupe_key: Some(format!("{}/{}", env.id, acct)),
            flags: Vec::new(),
            internal_date: env.received_at,
            size: env.size + prefix.len() as u64,
            blob_key: env.blob_key.clone(),
            envelope,
            bodystructure,
            header_prefix: prefix,
        };
        match backends.meta.append(acct, "INBOX", msg).await {
            Ok(AppendOutcome::Appended { uid, .. }) => {
                tracing::info!(account = %acct, uid, "delivered");
                metrics::counter!("posthorn_router_local_deliveries_total").increment(1);
            }
            Ok(AppendOutcome::Duplicate { uid }) => {
                tracing::info!(account = %acct, uid, "already delivered (redelivery)");
            }
            Err(e) if e.is_transient() => return Err(transient(e)),
            Err(e) => {
                // Account or INBOX vanished: nothing to retry; bounce.
                tracing::error!(account = %acct, error = %e, "local delivery failed permanently; bouncing");
                failed.push(Failed {
                    rcpt: rcpt.clone(),
                    status: "5.1.1",
                    diagnostic: format!("mailbox unavailable ({e})"),
                });
                continue;
            }
        }
        delivered.insert(acct.clone());
        let event = MailboxEvent {
            account: acct.clone(),
            mailbox: "INBOX".into(),
            kind: "append".into(),
        };
        if let Err(e) = backends.bus.publish_event(&event).await {
            tracing::debug!(error = %e, "mailbox event not published");
        }
    }

    if !remotes.is_empty() {
        pin_blob(backends, &env.blob_key).await?;
    }
    // Each item names its own recipient; the list stays behind (it would
    // be copied once per recipient).
    let mut one = env.clone();
    one.rcpt_to.clear();
    let items: Vec<OutboundItem> = remotes
        .into_values()
        .map(|(rcpt, expanded_from)| OutboundItem {
            envelope: Some(one.clone()),
            recipient: Some(rcpt),
            expanded_from,
            generation: 0,
        })
        .collect();
    posthorn_backends::outbound::enqueue_all(backends, &items)
        .await
        .map_err(transient)?;
    for item in &items {
        let rcpt = item.recipient.as_ref().map_or("", |r| r.address.as_str());
        tracing::info!(%rcpt, "queued for remote delivery");
    }
    if !failed.is_empty() {
        crate::bounce::send(addressing, backends, &env, &failed)
            .await
            .map_err(Failure::Transient)?;
    }
    crate::success::send(addressing, backends, &env, &success.notices(&delivered))
        .await
        .map_err(Failure::Transient)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use posthorn_bus::Acker;

    struct NoAck;

    #[async_trait::async_trait]
    impl Acker for NoAck {
        async fn ack(&self) -> posthorn_bus::Result<()> {
            Ok(())
        }
        async fn nak(&self, _: Option<Duration>) -> posthorn_bus::Result<()> {
            Ok(())
        }
        async fn term(&self) -> posthorn_bus::Result<()> {
            Ok(())
        }
        async fn in_progress(&self) -> posthorn_bus::Result<()> {
            Ok(())
        }
    }

    async fn setup() -> (tempfile::TempDir, Backends, Addressing) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = posthorn_config::Config::default();
        cfg.server.data_dir = dir.path().to_path_buf();
        let b = Backends::open_embedded(&cfg).unwrap();
        b.meta.add_domain("example.test").await.unwrap();
        b.meta.add_account("alice@example.test", "x").await.unwrap();
        let a = Addressing::new(b.meta.clone(), "", "mx.example.test");
        (dir, b, a)
    }

    fn delivery(env: &Envelope, stored_at_ms: Option<i64>) -> Delivery {
        Delivery {
            msg_id: env.id.clone(),
            payload: env.encode_to_vec().into(),
            attempt: 1,
            stored_at_ms,
            acker: Box::new(NoAck),
        }
    }

    #[tokio::test]
    async fn delivers_once_and_drops_late_publishes() {
        let (_d, b, a) = setup().await;
        let key = b
            .blobs
            .put(bytes::Bytes::from_static(b"Subject: x\r\n\r\ny\r\n"))
            .await
            .unwrap();
        let mut env = Envelope {
            id: "A1".into(),
            mail_from: "s@example.org".into(),
            rcpt_to: vec![Recipient {
                address: "alice@example.test".into(),
                ..Default::default()
            }],
            blob_key: key,
            size: 17,
            publish_deadline_ms: 1_000,
            ..Default::default()
        };
        // Stored within the deadline: delivered; a redelivery adds nothing.
        route(&a, &b, &delivery(&env, Some(900))).await.unwrap();
        route(&a, &b, &delivery(&env, Some(900))).await.unwrap();
        assert_eq!(
            b.meta
                .fetch("alice@example.test", "INBOX", 1, u32::MAX)
                .await
                .unwrap()
                .len(),
            1
        );
        // Stored after smtp-ingress gave up: dropped.
        env.id = "A2".into();
        route(&a, &b, &delivery(&env, Some(1_001))).await.unwrap();
        assert_eq!(
            b.meta
                .fetch("alice@example.test", "INBOX", 1, u32::MAX)
                .await
                .unwrap()
                .len(),
            1
        );
        // No stored time known (embedded queue): delivered.
        env.id = "A3".into();
        route(&a, &b, &delivery(&env, None)).await.unwrap();
        let msgs = b
            .meta
            .fetch("alice@example.test", "INBOX", 1, u32::MAX)
            .await
            .unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            msgs[0].header_prefix,
            "Return-Path: <s@example.org>\r\nDelivered-To: alice@example.test\r\n"
        );
        assert_eq!(msgs[0].size, 17 + msgs[0].header_prefix.len() as u64);
        // ENVELOPE/BODYSTRUCTURE are cached, consistent with the size served.
        let st =
            posthorn_mime::Structure::from_json(msgs[0].bodystructure.as_deref().unwrap()).unwrap();
        assert_eq!(st.size, msgs[0].size);
        assert!(
            msgs[0].envelope.as_deref().unwrap().contains("\"x\""),
            "{:?}",
            msgs[0].envelope
        );
        // With the structure computed by smtp-ingress, the router shifts it
        // by the prefix instead of reading the blob: same result.
        env.id = "A4".into();
        env.structure = posthorn_mime::analyze(b"Subject: x\r\n\r\ny\r\n").to_json();
        route(&a, &b, &delivery(&env, None)).await.unwrap();
        let msgs = b
            .meta
            .fetch("alice@example.test", "INBOX", 1, u32::MAX)
            .await
            .unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[2].bodystructure, msgs[0].bodystructure);
        assert_eq!(msgs[2].envelope, msgs[0].envelope);
    }

    /// A recipient accepted at RCPT time but removed before routing gets a
    /// DSN to the (local) sender, once, even when the item is redelivered;
    /// the null sender and NOTIFY=NEVER get none.
    #[tokio::test]
    async fn vanished_recipient_bounces_once() {
        let (_d, b, a) = setup().await;
        b.meta.add_account("bob@example.test", "x").await.unwrap();
        let body = b"Subject: for ghost\r\nFrom: bob@example.test\r\n\r\nhello\r\n";
        let key = b.blobs.put(bytes::Bytes::from_static(body)).await.unwrap();
        let mut env = Envelope {
            id: "B1".into(),
            mail_from: "bob@example.test".into(),
            rcpt_to: vec![
                Recipient {
                    address: "ghost@example.test".into(),
                    ..Default::default()
                },
                Recipient {
                    address: "alice@example.test".into(),
                    ..Default::default()
                },
            ],
            blob_key: key,
            size: body.len() as u64,
            ..Default::default()
        };
        route(&a, &b, &delivery(&env, None)).await.unwrap();
        route(&a, &b, &delivery(&env, None)).await.unwrap();
        let inbox = |who: &'static str| {
            let meta = b.meta.clone();
            async move { meta.fetch(who, "INBOX", 1, u32::MAX).await.unwrap() }
        };
        assert_eq!(inbox("alice@example.test").await.len(), 1);
        let bounces = inbox("bob@example.test").await;
        assert_eq!(bounces.len(), 1, "exactly one DSN");
        assert_eq!(
            bounces[0].header_prefix,
            "Return-Path: <>\r\nDelivered-To: bob@example.test\r\n"
        );
        let dsn = b.blobs.get(&bounces[0].blob_key).await.unwrap();
        let dsn = String::from_utf8_lossy(&dsn);
        assert!(
            dsn.contains("Final-Recipient: rfc822; ghost@example.test\r\n"),
            "{dsn}"
        );
        assert!(dsn.contains("Status: 5.1.1\r\n"), "{dsn}");
        assert!(dsn.contains("Subject: for ghost"), "{dsn}");
        assert!(!dsn.contains("alice@example.test"), "{dsn}");
        assert_eq!(
            bounces[0].size,
            (bounces[0].header_prefix.len() + dsn.len()) as u64
        );
        // Null sender: no DSN (no bounce loops). NOTIFY=NEVER: none either.
        env.id = "B2".into();
        env.mail_from = String::new();
        route(&a, &b, &delivery(&env, None)).await.unwrap();
        env.id = "B3".into();
        env.mail_from = "bob@example.test".into();
        env.rcpt_to[0].notify = "NEVER".into();
        route(&a, &b, &delivery(&env, None)).await.unwrap();
        assert_eq!(inbox("bob@example.test").await.len(), 1);
        assert_eq!(inbox("alice@example.test").await.len(), 3);
    }
}
