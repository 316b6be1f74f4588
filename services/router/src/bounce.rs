//! Delivery status notifications (RFC 3464 in an RFC 6522 multipart/report)
//! for recipients that were accepted at RCPT time but cannot be delivered
//! when the router gets to them (the account or alias was removed, the
//! domain is no longer local, the INBOX is gone).
//!
//! The message is built here, stored as a blob, and delivered to the
//! envelope sender like any mail: into the INBOX of a local sender, or onto
//! the outbound queue for a remote one, with the null reverse path `<>` so
//! that it can never bounce back. Both are idempotent, so a redelivered
//! inbound item sends the notification once: the local append carries the
//! dedupe key `<message id>.dsn/<account>`, the outbound item the message id
//! `<message id>.dsn/<recipient>`. [`deliver`] is also the path of the
//! success notices (`crate::success`), under their own ids.

use chrono::Utc;
use posthorn_backends::Backends;
use posthorn_bus::MailboxEvent;
use posthorn_mailbox_store::{AppendOutcome, NewMessage};
use posthorn_proto::common::v1::{Envelope, OutboundItem, Recipient};

use crate::route::{Addressing, Target};

/// One recipient that could not be delivered.
#[derive(Debug, Clone)]
pub struct Failed {
    /// The recipient as accepted (with NOTIFY and ORCPT).
    pub rcpt: Recipient,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: &'static str,
    /// Human-readable reason (Diagnostic-Code).
    pub diagnostic: String,
}

/// Whether a failure notification is wanted for `rcpt` (RFC 3461 §4.1:
/// without NOTIFY the default is FAILURE; `NEVER` or a list without
/// `FAILURE` asks for none). Never for the null sender.
pub fn wanted(env: &Envelope, rcpt: &Recipient) -> bool {
    posthorn_dsn::wanted(&env.mail_from, &rcpt.notify)
}

/// Compose the notification (CRLF line ends) with the shared composer.
pub fn compose(
    env: &Envelope,
    failed: &[Failed],
    original: Option<&[u8]>,
    hostname: &str,
) -> Vec<u8> {
    let report = posthorn_dsn::Report {
        id: &env.id,
        mail_from: &env.mail_from,
        received_at: env.received_at,
        envid: &env.dsn_envid,
        ret: &env.dsn_ret,
        size: env.size,
        hostname,
        explanation: "Your message could not be delivered to one or more recipients.\r\n\
                      It was accepted, but the recipients below no longer exist here.\r\n",
    };
    let rcpts: Vec<posthorn_dsn::RecipientReport> = failed
        .iter()
        .map(|f| posthorn_dsn::RecipientReport {
            address: f.rcpt.address.clone(),
            orcpt: f.rcpt.orcpt.clone(),
            action: posthorn_dsn::Action::Failed,
            status: f.status.to_string(),
            diagnostic: posthorn_dsn::Diagnostic::Local(f.diagnostic.clone()),
            remote_mta: None,
            will_retry_until: None,
        })
        .collect();
    posthorn_dsn::compose(&report, &rcpts, original)
}

/// Send a notification for `failed` (those that want one) to the sender of
/// `env`. `Err`: a backend is down; the caller retries the whole item.
pub async fn send(
    addressing: &Addressing,
    backends: &Backends,
    env: &Envelope,
    failed: &[Failed],
) -> Result<(), String> {
    let failed: Vec<Failed> = failed
        .iter()
        .filter(|f| wanted(env, &f.rcpt))
        .cloned()
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    let original = original(backends, env).await?;
    let msg = compose(env, &failed, original.as_deref(), addressing.hostname());
    deliver(addressing, backends, env, &format!("{}.dsn", env.id), msg).await
}

/// The original message, for the third part of a notification; `None` if
/// its body is gone for good. `Err`: the blob store is down.
pub async fn original(backends: &Backends, env: &Envelope) -> Result<Option<bytes::Bytes>, String> {
    match backends.blobs.get(&env.blob_key).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_transient() => Err(e.to_string()),
        Err(_) => Ok(None),
    }
}

/// Deliver the notification `msg` about `env` to its sender from `<>`,
/// under the deterministic id `id`: into the INBOX of a local sender
/// (dedupe key `<id>/<account>`), onto the outbound queue for a remote one
/// (message id `<id>/<address>`), so that a repeated call adds nothing.
/// Used for bounces and success notices (`crate::success`). `Err`: a
/// backend is down; the caller retries the whole item.
pub async fn deliver(
    addressing: &Addressing,
    backends: &Backends,
    env: &Envelope,
    id: &str,
    msg: Vec<u8>,
) -> Result<(), String> {
    let size = msg.len() as u64;
    let st = posthorn_mime::analyze(&msg);
    let blob_key = backends
        .blobs
        .put(msg.into())
        .await
        .map_err(|e| e.to_string())?;
    let sender = match addressing
        .qualify(&env.mail_from, true)
        .await
        .map_err(|e| e.to_string())?
    {
        Ok(q) => q,
        Err(d) => {
            tracing::warn!(sender = %env.mail_from, decision = ?d, "DSN not sent: sender unroutable");
            return Ok(());
        }
    };
    let targets = addressing
        .expand(&sender)
        .await
        .map_err(|e| e.to_string())?;
    if targets.is_empty() {
        tracing::warn!(sender = %sender, "DSN not sent: the local sender does not exist");
    }
    for t in targets {
        match t {
            Target::Local(acct) => {
                let prefix = format!("Return-Path: <>\r\nDelivered-To: {acct}\r\n");
                let mut st = st.clone();
                st.prepend_header(prefix.len() as u64);
                let m = NewMessage {
                    dedupe_key: Some(format!("{id}/{acct}")),
                    flags: Vec::new(),
                    internal_date: Utc::now().timestamp(),
                    size: size + prefix.len() as u64,
                    blob_key: blob_key.clone(),
                    envelope: serde_json::to_string(&st.envelope).ok(),
                    bodystructure: Some(st.to_json()),
                    header_prefix: prefix,
                };
                match backends.meta.append(&acct, "INBOX", m).await {
                    Ok(AppendOutcome::Appended { .. }) => {
                        tracing::info!(account = %acct, "DSN delivered");
                        let ev = MailboxEvent {
                            account: acct.clone(),
                            mailbox: "INBOX".into(),
                            kind: "append".into(),
                        };
                        let _ = backends.bus.publish_event(&ev).await;
                    }
                    Ok(AppendOutcome::Duplicate { .. }) => {}
                    Err(e) if e.is_transient() => return Err(e.to_string()),
                    Err(e) => {
                        tracing::error!(account = %acct, error = %e, "DSN not delivered");
                    }
                }
            }
            Target::Remote(addr) => {
                backends
                    .meta
                    .set_marker(
                        &posthorn_mailbox_store::blob_pin_marker(&blob_key),
                        crate::inbound::BLOB_PIN,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let dsn_env = Envelope {
                    id: id.to_string(),
                    mail_from: String::new(),
                    rcpt_to: vec![Recipient {
                        address: addr.clone(),
                        ..Default::default()
                    }],
                    blob_key: blob_key.clone(),
                    size,
                    received_at: Utc::now().timestamp(),
                    helo: addressing.hostname().to_string(),
                    body_type: "8BITMIME".into(),
                    ..Default::default()
                };
                let item = OutboundItem {
                    envelope: Some(dsn_env),
                    recipient: Some(Recipient {
                        address: addr.clone(),
                        ..Default::default()
                    }),
                    expanded_from: String::new(),
                    generation: 0,
                };
                posthorn_backends::outbound::enqueue(backends, &item)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(rcpt = %addr, "DSN queued for remote delivery");
            }
        }
    }
    metrics::counter!("posthorn_router_dsns_total").increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules() {
        let env = |from: &str| Envelope {
            mail_from: from.into(),
            ..Default::default()
        };
        let r = |n: &str| Recipient {
            address: "x@y".into(),
            notify: n.into(),
            orcpt: String::new(),
        };
        assert!(wanted(&env("a@b"), &r("")));
        assert!(wanted(&env("a@b"), &r("SUCCESS,FAILURE")));
        assert!(!wanted(&env("a@b"), &r("NEVER")));
        assert!(!wanted(&env("a@b"), &r("DELAY")));
        assert!(!wanted(&env(""), &r("")));
    }

    #[test]
    fn report_shape() {
        let env = Envelope {
            id: "Q1".into(),
            mail_from: "s@example.org".into(),
            dsn_envid: "ENV-1".into(),
            size: 40,
            ..Default::default()
        };
        let failed = vec![Failed {
            rcpt: Recipient {
                address: "ghost@example.test".into(),
                notify: String::new(),
                orcpt: "rfc822;Ghost@example.test".into(),
            },
            status: "5.1.1",
            diagnostic: "no such user".into(),
        }];
        let orig = b"Subject: hi\r\nFrom: s@example.org\r\n\r\nsecret body\r\n";
        let m = compose(&env, &failed, Some(orig), "mx.example.test");
        let s = String::from_utf8(m.clone()).unwrap();
        for want in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Reporting-MTA: dns; mx.example.test\r\n",
            "Original-Envelope-Id: ENV-1\r\n",
            "Final-Recipient: rfc822; ghost@example.test\r\n",
            "Original-Recipient: rfc822;Ghost@example.test\r\n",
            "Action: failed\r\nStatus: 5.1.1\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n",
            "Auto-Submitted: auto-replied\r\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // RET=HDRS (default): the body is not returned.
        assert!(!s.contains("secret body"));
        // The MIME structure is what a client will see: three parts.
        let st = posthorn_mime::analyze(&m);
        assert_eq!(st.body.subtype.to_ascii_lowercase(), "report");
        assert_eq!(st.body.children.len(), 3);
        // RET=FULL returns the whole message.
        let env = Envelope {
            dsn_ret: "FULL".into(),
            ..env
        };
        let s = String::from_utf8(compose(&env, &failed, Some(orig), "h")).unwrap();
        assert!(s.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi"));
        assert!(s.contains("secret body"));
    }
}
