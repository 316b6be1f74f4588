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

/// Send the notification for `rcpt` of `env`, if one is wanted. `Err`: a
/// backend is down; the caller retries the item.
pub async fn send(
    backends: &Backends,
    hostname: &str,
    env: &Envelope,
    rcpt: &Recipient,
    failure: &Failure,
) -> Result<(), String> {
    if env.mail_from.is_empty() {
        tracing::warn!(rcpt = %rcpt.address, diagnostic = ?failure.diagnostic, "undeliverable message from <>; dropped without notification");
        metrics::counter!("posthorn_delivery_dropped_null_sender_total").increment(1);
        return Ok(());
    }
    if !posthorn_dsn::wanted(&env.mail_from, &rcpt.notify) {
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
        explanation: "Your message could not be delivered to one or more recipients.\r\n\
                      The remote mail system (or the DNS) refused it; details below.\r\n",
    };
    let rcpts = [RecipientReport {
        address: rcpt.address.clone(),
        orcpt: rcpt.orcpt.clone(),
        action: Action::Failed,
        status: failure.status.clone(),
        diagnostic: failure.diagnostic.clone(),
        remote_mta: failure.remote_mta.clone(),
    }];
    let msg = posthorn_dsn::compose(&report, &rcpts, original.as_deref());
    let size = msg.len() as u64;
    let blob_key = backends
        .blobs
        .put(msg.into())
        .await
        .map_err(|e| e.to_string())?;
    let id = dsn_id(env, &rcpt.address);
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
    tracing::info!(sender = %env.mail_from, rcpt = %rcpt.address, dsn = %id, "failure notification queued");
    metrics::counter!("posthorn_delivery_dsns_total").increment(1);
    Ok(())
}
