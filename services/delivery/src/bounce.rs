//! Failure notifications for remote recipients.
//!
//! The report is composed with the shared `posthorn-dsn` crate, stored as
//! a blob and published on the **inbound** queue as a new message from
//! `<>` to the envelope sender: the router then delivers it like any mail
//! (into the INBOX of a local sender, onto the outbound queue for a remote
//! one). Delivery does not know the directory, and tiers never link each
//! other; the queue is the interface.
//!
//! Idempotent: the notification's id is derived from (message id,
//! recipient), and the router appends with the dedupe key `<id>/<account>`
//! (outbound: the queue message id `<id>/<recipient>`), so a redelivered
//! item that bounces again adds nothing.

use chrono::Utc;
use posthorn_backends::Backends;
use posthorn_bus::Queue;
use posthorn_dsn::{Action, Diagnostic, RecipientReport, Report};
use posthorn_proto::common::v1::{Envelope, Recipient};
use prost::Message;

/// Why a recipient failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// RFC 3463 status.
    pub status: String,
    /// Diagnostic (an SMTP reply or our own reason).
    pub diagnostic: Diagnostic,
    /// The host that answered, if one did.
    pub remote_mta: Option<String>,
}

/// A short stable hash of `s` (ids and marker names).
pub fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..12])
}

/// The id of the notification for (message, recipient).
pub fn dsn_id(env: &Envelope, rcpt: &str) -> String {
    format!("{}.dsn.{}", env.id, short_hash(rcpt))
}

/// Which notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Failed for good (a bounce).
    Failed,
    /// Still retried until this Unix time (RFC 3464 `Action: delayed`).
    Delayed {
        /// `Will-Retry-Until`.
        until: i64,
    },
    /// Handed to a next hop without DSN (RFC 3461 §5.2.2, `Action: relayed`).
    Relayed,
}

impl Kind {
    /// The deterministic id of this notification for (message, recipient):
    /// a repeated publish is deduped by the queue and the router.
    pub fn id(self, env: &Envelope, rcpt: &str) -> String {
        match self {
            Kind::Failed => dsn_id(env, rcpt),
            Kind::Delayed { .. } => format!("{}.delay.{}", env.id, short_hash(rcpt)),
            Kind::Relayed => format!("{}.relayed.{}", env.id, short_hash(rcpt)),
        }
    }

    /// The marker recording that this notification was sent (delay
    /// warnings and relayed notices; a bounce has the `done` marker).
    pub fn marker(self, env: &Envelope, rcpt: &str) -> String {
        let h = short_hash(&format!("{}\0{rcpt}", env.id));
        match self {
            Kind::Failed => format!("dsn-failed/{h}"),
            Kind::Delayed { .. } => format!("delay-warned/{h}"),
            Kind::Relayed => format!("relayed/{h}"),
        }
    }
}

/// Send the failure notification for `rcpt` of `env`, if one is wanted.
/// `Err`: a backend is down; the caller retries the item.
pub async fn send(
    backends: &Backends,
    hostname: &str,
    env: &Envelope,
    rcpt: &Recipient,
    failure: &Failure,
) -> Result<(), String> {
    publish(backends, hostname, env, rcpt, failure, Kind::Failed).await
}

/// Compose and publish a notification of `kind`. Failure notifications
/// check the null sender and NOTIFY here; delay warnings and relayed
/// notices are decided by the caller (`worker::should_warn`,
/// `worker::relayed_wanted`).
pub async fn publish(
    backends: &Backends,
    hostname: &str,
    env: &Envelope,
    rcpt: &Recipient,
    failure: &Failure,
    kind: Kind,
) -> Result<(), String> {
    if env.mail_from.is_empty() {
        tracing::warn!(rcpt = %rcpt.address, diagnostic = ?failure.diagnostic, "undeliverable message from <>; dropped without notification");
        metrics::counter!("posthorn_delivery_dropped_null_sender_total").increment(1);
        return Ok(());
    }
    if kind == Kind::Failed && !posthorn_dsn::wanted(&env.mail_from, &rcpt.notify) {
        tracing::info!(rcpt = %rcpt.address, notify = %rcpt.notify, "no notification wanted (NOTIFY)");
        return Ok(());
    }
    let original = match backends.blobs.get(&env.blob_key).await {
        Ok(b) => Some(b),
        Err(e) if e.is_transient() => return Err(e.to_string()),
        Err(_) => None,
    };
    let report = Report {
        id: &env.id,
        mail_from: &env.mail_from,
        received_at: env.received_at,
        envid: &env.dsn_envid,
        ret: &env.dsn_ret,
        size: env.size,
        hostname,
        explanation: match kind {
            Kind::Failed => {
                "Your message could not be delivered to one or more recipients.\r\n\
                 The remote mail system (or the DNS) refused it; details below.\r\n"
            }
            Kind::Delayed { .. } => {
                "Your message has not been delivered yet to the recipients below.\r\n\
                 It is still being retried; you do not need to send it again.\r\n\
                 This is a warning only; you will be told if it fails for good.\r\n"
            }
            Kind::Relayed => {
                "Your message was handed to the next mail system for the recipients\r\n\
                 below. That system does not send delivery notifications, so this\r\n\
                 is the last one you will receive for them.\r\n"
            }
        },
    };
    let (action, until) = match kind {
        Kind::Failed => (Action::Failed, None),
        Kind::Delayed { until } => (Action::Delayed, Some(until)),
        Kind::Relayed => (Action::Relayed, None),
    };
    let rcpts = [RecipientReport {
        address: rcpt.address.clone(),
        orcpt: rcpt.orcpt.clone(),
        action,
        status: failure.status.clone(),
        diagnostic: failure.diagnostic.clone(),
        remote_mta: failure.remote_mta.clone(),
        will_retry_until: until,
    }];
    let msg = posthorn_dsn::compose(&report, &rcpts, original.as_deref());
    let size = msg.len() as u64;
    let blob_key = backends
        .blobs
        .put(msg.into())
        .await
        .map_err(|e| e.to_string())?;
    let id = kind.id(env, &rcpt.address);
    let dsn = Envelope {
        id: id.clone(),
        mail_from: String::new(),
        rcpt_to: vec![Recipient {
            address: env.mail_from.clone(),
            ..Default::default()
        }],
        blob_key,
        size,
        received_at: Utc::now().timestamp(),
        helo: hostname.to_string(),
        // Our own notification: the router may route it to a remote sender.
        relay_client: true,
        body_type: "8BITMIME".into(),
        ..Default::default()
    };
    backends
        .bus
        .publish(Queue::Inbound, &id, dsn.encode_to_vec().into())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(sender = %env.mail_from, rcpt = %rcpt.address, dsn = %id, ?kind, "notification queued");
    metrics::counter!("posthorn_delivery_dsns_total").increment(1);
    Ok(())
}
