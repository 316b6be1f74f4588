//! Taking one item off the outbound queue and settling it: the `done`
//! marker, the queue index (claim, defer, settle), the attempts, then ack
//! or NAK (docs/delivery.md, "One item" and "The queue index").

use std::time::Duration;

use posthorn_backends::outbound;
use posthorn_bus::Delivery;
use posthorn_dsn::Diagnostic;
use posthorn_mailbox_store::queue::{self, Claim};
use posthorn_proto::common::v1::{Envelope, OutboundItem, Recipient};
use prost::Message;

use rand::Rng;

use crate::bounce::{self, Failure};
use crate::destinations::Admission;
use crate::worker::{
    Ctx, Outcome, attempt_all, delay_details, done_marker, marker_ttl, notify_once, relayed_wanted,
    should_warn,
};

/// Handle one delivery of the outbound queue.
pub async fn handle(ctx: &Ctx, delivery: Delivery) {
    let item = match OutboundItem::decode(delivery.payload.clone()) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(msg_id = %delivery.msg_id, error = %e, "undecodable outbound item moved to the dead-letter queue");
            let _ = delivery.term().await;
            return;
        }
    };
    let (Some(env), Some(rcpt)) = (item.envelope.as_ref(), item.recipient.as_ref()) else {
        tracing::error!(msg_id = %delivery.msg_id, "outbound item without envelope or recipient; dead-lettered");
        let _ = delivery.term().await;
        return;
    };
    let span = tracing::info_span!("deliver", msg_id = %env.id, rcpt = %rcpt.address, attempt = delivery.attempt, generation = item.generation);
    tracing::Instrument::instrument(settle(ctx, delivery, &item), span).await;
}

/// The item as one unit of work: what it is, and where it stands.
struct Work<'a> {
    env: &'a Envelope,
    rcpt: &'a Recipient,
    /// Its queue id.
    id: String,
    generation: u32,
    marker: String,
}

async fn settle(ctx: &Ctx, delivery: Delivery, item: &OutboundItem) {
    let (Some(env), Some(rcpt)) = (item.envelope.as_ref(), item.recipient.as_ref()) else {
        return;
    };
    let w = Work {
        env,
        rcpt,
        id: outbound::item_id(&env.id, &rcpt.address),
        generation: item.generation,
        marker: done_marker(env, &rcpt.address),
    };
    // The destination first: an item over its limit waits for a slot or
    // goes back, before it costs a store read (docs/delivery.md,
    // "Destinations").
    let dest = ctx.destination(&rcpt.address);
    // Waiting for a slot holds the item without a heartbeat: at most half
    // the ack wait.
    let patience = ctx.ack_wait / 2;
    let (slot, suspended) = match ctx.destinations.admit_waiting(&dest, patience).await {
        Admission::Go(slot) => (Some(slot), None),
        Admission::Busy => {
            let wait = Duration::from_millis(rand::rng().random_range(5_000..10_000));
            tracing::debug!(destination = %dest, ?wait, "destination at its concurrency limit; waiting");
            metrics::counter!("posthorn_delivery_destination_busy_total").increment(1);
            let _ = delivery.nak(Some(wait)).await;
            return;
        }
        Admission::Suspended(why) => (None, Some(why)),
    };
    let meta = ctx.backends.meta.as_ref();
    match meta.has_marker(&w.marker).await {
        Ok(true) => {
            tracing::info!("already settled (redelivery); acking");
            let _ = queue::settle(meta, &w.id).await;
            let _ = delivery.ack().await;
            return;
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "metadata store unavailable; will retry");
            let _ = delivery.nak(Some(Duration::from_secs(10))).await;
            return;
        }
    }
    let now = chrono::Utc::now().timestamp();
    let claim = queue::claim(meta, &w.id, w.generation, now, || outbound::entry(item)).await;
    let entry = match claim {
        Ok(Claim::Proceed(e)) => e,
        Ok(other) => return steered(ctx, delivery, &w, other).await,
        Err(e) => {
            tracing::warn!(error = %e, "queue index unavailable; will retry");
            let _ = delivery.nak(Some(Duration::from_secs(10))).await;
            return;
        }
    };
    let started = std::time::Instant::now();
    let outcome = if let Some(why) = suspended {
        Outcome::Deferred(format!("delivery temporarily suspended: {why}"))
    } else {
        let work = attempt_all(ctx, env, rcpt);
        tokio::pin!(work);
        let mut beat = tokio::time::interval((ctx.ack_wait / 3).max(Duration::from_millis(100)));
        beat.tick().await;
        loop {
            tokio::select! {
                o = &mut work => break o,
                _ = beat.tick() => { let _ = delivery.in_progress().await; }
            }
        }
    };
    drop(slot);
    metrics::histogram!("posthorn_delivery_attempt_seconds")
        .record(started.elapsed().as_secs_f64());
    match &outcome {
        Outcome::Unreachable(why) => ctx.destinations.unreachable(&dest, why),
        Outcome::Delivered { .. } => ctx.destinations.reachable(&dest),
        Outcome::Failed(f) if f.remote_mta.is_some() => ctx.destinations.reachable(&dest),
        _ => {}
    }
    let now = chrono::Utc::now().timestamp();
    let outcome = match outcome {
        Outcome::Deferred(reason) | Outcome::Unreachable(reason)
            if ctx.schedule.expired(env.received_at, now) =>
        {
            tracing::warn!(%reason, "lifetime exceeded; bouncing");
            Outcome::Failed(Failure {
                status: "4.4.7".into(),
                diagnostic: Diagnostic::Local(format!(
                    "delivery lifetime exceeded; last error: {reason}"
                )),
                remote_mta: None,
            })
        }
        o => o,
    };
    match outcome {
        Outcome::Delivered { hop_dsn } => {
            metrics::counter!("posthorn_delivery_delivered_total").increment(1);
            if relayed_wanted(env, rcpt, hop_dsn) {
                let f = Failure {
                    status: "2.0.0".into(),
                    diagnostic: Diagnostic::Local(
                        "relayed to a mail system that does not offer DSN".into(),
                    ),
                    remote_mta: None,
                };
                notify_once(ctx, env, rcpt, &f, bounce::Kind::Relayed).await;
            }
            finish(ctx, delivery, &w).await;
        }
        Outcome::Failed(f) => {
            tracing::warn!(status = %f.status, diagnostic = ?f.diagnostic, "delivery failed permanently");
            metrics::counter!("posthorn_delivery_bounced_total").increment(1);
            bounce_and_finish(ctx, delivery, &w, &f).await;
        }
        Outcome::Deferred(reason) | Outcome::Unreachable(reason) => {
            // The index counts attempts across copies (a flush publishes a
            // new one whose delivery count starts again) and not the early
            // returns of `NotDue`; the queue's count when it has none.
            let attempt = if entry.attempts > 0 {
                entry.attempts + 1
            } else {
                delivery.attempt
            };
            deferred(ctx, delivery, &w, attempt, &reason, now).await;
        }
    }
}

async fn deferred(
    ctx: &Ctx,
    delivery: Delivery,
    w: &Work<'_>,
    attempt: u32,
    reason: &str,
    now: i64,
) {
    let (env, rcpt) = (w.env, w.rcpt);
    let age = ctx.schedule.age(env.received_at, now);
    let delay = ctx.schedule.delay(attempt, age);
    // Keep the body from blob GC until the last retry is over: the
    // router's pin covers that unless the lifetime is longer than it.
    let day = Duration::from_secs(86_400);
    if ctx.schedule.lifetime + day > posthorn_mailbox_store::BLOB_PIN_QUEUED {
        let pin = posthorn_mailbox_store::blob_pin_marker(&env.blob_key);
        let ttl = ctx.schedule.lifetime.saturating_sub(age) + day;
        if let Err(e) = ctx.backends.meta.set_marker(&pin, ttl).await {
            tracing::warn!(error = %e, "blob pin not renewed");
        }
    }
    if should_warn(env, rcpt, ctx.delay_warning, now) {
        let (status, remote_mta, diagnostic) = delay_details(reason);
        let f = Failure {
            status,
            diagnostic,
            remote_mta,
        };
        let until = env
            .received_at
            .saturating_add(ctx.schedule.lifetime.as_secs() as i64);
        notify_once(ctx, env, rcpt, &f, bounce::Kind::Delayed { until }).await;
    }
    let next = now.saturating_add(delay.as_secs() as i64);
    let meta = ctx.backends.meta.as_ref();
    match queue::defer(meta, &w.id, w.generation, next, reason).await {
        Ok(Claim::Proceed(_)) => {}
        Ok(other) => return steered(ctx, delivery, w, other).await,
        // The NAK below keeps the schedule; the entry is behind until the
        // next attempt.
        Err(e) => tracing::warn!(error = %e, "queue index not updated"),
    }
    tracing::info!(%reason, retry_in = ?delay, "delivery deferred");
    let domain = rcpt.address.rsplit_once('@').map_or("", |(_, d)| d);
    metrics::counter!("posthorn_delivery_deferred_total").increment(1);
    metrics::counter!("posthorn_delivery_deferred_by_domain_total", "domain" => domain.to_ascii_lowercase())
        .increment(1);
    if let Err(e) = delivery.nak(Some(delay)).await {
        tracing::warn!(error = %e, "nak failed; the item comes back after the ack wait");
    }
}

/// What the queue index says instead of "attempt it" (or "NAK it").
async fn steered(ctx: &Ctx, delivery: Delivery, w: &Work<'_>, claim: Claim) {
    match claim {
        Claim::Proceed(_) => unreachable!("handled by the caller"),
        Claim::Superseded => {
            tracing::info!("a newer copy of this item is queued; acking this one");
            let _ = delivery.ack().await;
        }
        Claim::Done => {
            tracing::info!("already settled; acking");
            let _ = delivery.ack().await;
        }
        Claim::Held => {
            tracing::info!("held in the queue; acking (release publishes it again)");
            let _ = delivery.ack().await;
        }
        Claim::NotDue { at } => {
            let wait = (at - chrono::Utc::now().timestamp()).max(1) as u64;
            tracing::info!(
                retry_in = wait,
                "back before its next attempt is due; waiting"
            );
            metrics::counter!("posthorn_delivery_not_due_total").increment(1);
            let _ = delivery.nak(Some(Duration::from_secs(wait))).await;
        }
        Claim::Delete { bounce: false } => {
            tracing::info!("deleted from the queue by the administrator; no bounce");
            finish(ctx, delivery, w).await;
        }
        Claim::Delete { bounce: true } => {
            tracing::info!("deleted from the queue by the administrator; bouncing");
            let f = Failure {
                status: "5.0.0".into(),
                diagnostic: Diagnostic::Local("deleted from the queue by the administrator".into()),
                remote_mta: None,
            };
            bounce_and_finish(ctx, delivery, w, &f).await;
        }
    }
}

async fn bounce_and_finish(ctx: &Ctx, delivery: Delivery, w: &Work<'_>, f: &Failure) {
    if let Err(e) = bounce::send(&ctx.backends, &ctx.hostname, w.env, w.rcpt, f).await {
        tracing::warn!(error = %e, "notification not queued; will retry the item");
        let _ = delivery.nak(Some(Duration::from_secs(30))).await;
        return;
    }
    finish(ctx, delivery, w).await;
}

/// Record the `done` marker (best effort: the ack alone settles the item
/// unless it is lost too), settle the index entry, then ack.
async fn finish(ctx: &Ctx, delivery: Delivery, w: &Work<'_>) {
    let ttl = marker_ttl(&ctx.schedule);
    for _ in 0..3 {
        match ctx.backends.meta.set_marker(&w.marker, ttl).await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "done marker not recorded"),
        }
    }
    if let Err(e) = queue::settle(ctx.backends.meta.as_ref(), &w.id).await {
        tracing::warn!(error = %e, "queue index entry not settled; a redelivery settles it");
    }
    if let Err(e) = delivery.ack().await {
        tracing::warn!(error = %e, "ack failed; the redelivery will find the done marker");
    }
}
