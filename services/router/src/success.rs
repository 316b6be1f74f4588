//! Success notifications (RFC 3461 `NOTIFY=SUCCESS`) for local delivery
//! (docs/architecture.md, "Delivery status notifications from the router").
//!
//! A recipient whose NOTIFY names `SUCCESS` gets one DSN (RFC 3464 in an
//! RFC 6522 multipart/report, composed by the shared `posthorn-dsn`) to the
//! envelope sender, never to `<>`:
//!
//! - delivered into a local INBOX, directly or through an alias with a
//!   single target (RFC 3461 §6.2.7.2: as if the address were rewritten):
//!   `Action: delivered`, `Status: 2.0.0`;
//! - expanded by an alias into several targets (§6.2.7.3): one
//!   `Action: expanded` for the alias and none for its members; members
//!   that go to remote hosts get NOTIFY without `SUCCESS`
//!   ([`passed_on_notify`]), so no later hop reports them either;
//! - one remote target: nothing here; NOTIFY goes with the message and
//!   delivery sends `relayed` (or the next hop `delivered`).
//!
//! Once per (message, recipient): the notice's id is `<message
//! id>.delivered.<hash of recipient>` (`.expanded.`), delivered on the
//! bounce path ([`crate::bounce::deliver`]) whose local append and outbound
//! publish dedupe on it, so a redelivered inbound item sends nothing twice.

use std::collections::{BTreeSet, HashSet};

use posthorn_backends::Backends;
use posthorn_dsn::{Action, Diagnostic, RecipientReport, Report};
use posthorn_proto::common::v1::{Envelope, Recipient};

use crate::route::{Addressing, Target};

/// Which success notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Delivered into a local mailbox.
    Delivered,
    /// A multiple-recipient alias was expanded.
    Expanded,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Delivered => "delivered",
            Kind::Expanded => "expanded",
        }
    }
}

/// One notice to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Delivered or expanded.
    pub kind: Kind,
    /// The recipient as accepted (NOTIFY, ORCPT).
    pub rcpt: Recipient,
    /// Final-Recipient: the qualified address the sender wrote (an alias
    /// target is not disclosed).
    pub final_recipient: String,
    /// How many targets the alias expanded to (expanded only).
    pub members: usize,
}

impl Notice {
    /// The deterministic id: `<message id>.<action>.<hash of recipient>`.
    pub fn id(&self, env: &Envelope) -> String {
        format!(
            "{}.{}.{}",
            env.id,
            self.kind.as_str(),
            posthorn_dsn::short_hash(&self.rcpt.address)
        )
    }
}

/// What expansion made of the recipients that asked for a success notice;
/// filled while routing, read once the local appends are done.
#[derive(Debug, Default)]
pub struct Plan {
    entries: Vec<(Recipient, String, Vec<Target>)>,
}

impl Plan {
    /// Note that `rcpt` of `env`, qualified as `qualified`, expands to
    /// `targets` (kept only if a success notice is wanted).
    pub fn add(&mut self, env: &Envelope, rcpt: &Recipient, qualified: &str, targets: &[Target]) {
        if posthorn_dsn::success_wanted(&env.mail_from, &rcpt.notify) {
            self.entries
                .push((rcpt.clone(), qualified.to_string(), targets.to_vec()));
        }
    }

    /// The notices due, given the accounts whose INBOX now holds the
    /// message (`delivered`: appended now or by an earlier attempt).
    pub fn notices(&self, delivered: &BTreeSet<String>) -> Vec<Notice> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for (rcpt, q, targets) in &self.entries {
            let kind = match targets.as_slice() {
                [Target::Local(acct)] if delivered.contains(acct) => Kind::Delivered,
                // Not delivered (bounced instead), remote (delivery's), or
                // gone (bounced).
                [_] | [] => continue,
                _ => Kind::Expanded,
            };
            if seen.insert((kind, rcpt.address.clone())) {
                out.push(Notice {
                    kind,
                    rcpt: rcpt.clone(),
                    final_recipient: q.clone(),
                    members: targets.len(),
                });
            }
        }
        out
    }
}

/// The NOTIFY passed on to the targets of a recipient that expanded to
/// `members` addresses: unchanged for one (§6.2.7.2); for several,
/// without `SUCCESS` (§6.2.7.3: the `expanded` notice is the last success
/// report), `NEVER` if nothing else was asked for.
pub fn passed_on_notify(notify: &str, members: usize) -> String {
    if members <= 1 {
        return notify.to_string();
    }
    let rest: Vec<&str> = notify
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty() && !n.eq_ignore_ascii_case("SUCCESS"))
        .collect();
    if rest.is_empty() && !notify.trim().is_empty() {
        "NEVER".into()
    } else {
        rest.join(",")
    }
}

/// Compose the notice (CRLF line ends) with the shared composer; RET and
/// the size limit of the returned message as for a bounce.
pub fn compose(
    env: &Envelope,
    notice: &Notice,
    original: Option<&[u8]>,
    hostname: &str,
) -> Vec<u8> {
    let (explanation, action, diagnostic) = match notice.kind {
        Kind::Delivered => (
            "Your message was delivered to the recipient below.\r\n\
             You asked for this notification (NOTIFY=SUCCESS); no action is needed.\r\n",
            Action::Delivered,
            "delivered to mailbox".to_string(),
        ),
        Kind::Expanded => (
            "Your message was delivered to the address below, an alias that\r\n\
             passed it on to several recipients. You asked for this notification\r\n\
             (NOTIFY=SUCCESS); there will be none for the delivery to each of them.\r\n",
            Action::Expanded,
            format!("alias expanded to {} recipients", notice.members),
        ),
    };
    let report = Report {
        id: &env.id,
        mail_from: &env.mail_from,
        received_at: env.received_at,
        envid: &env.dsn_envid,
        ret: &env.dsn_ret,
        size: env.size,
        hostname,
        explanation,
    };
    let rcpt = RecipientReport {
        address: notice.final_recipient.clone(),
        orcpt: notice.rcpt.orcpt.clone(),
        action,
        status: "2.0.0".into(),
        diagnostic: Diagnostic::Local(diagnostic),
        remote_mta: None,
        will_retry_until: None,
    };
    posthorn_dsn::compose(&report, &[rcpt], original)
}

/// Send `notices` about `env` to its sender. `Err`: a backend is down; the
/// caller retries the whole item (the notices are idempotent).
pub async fn send(
    addressing: &Addressing,
    backends: &Backends,
    env: &Envelope,
    notices: &[Notice],
) -> Result<(), String> {
    if notices.is_empty() || env.mail_from.is_empty() {
        return Ok(());
    }
    let original = crate::bounce::original(backends, env).await?;
    for n in notices {
        let msg = compose(env, n, original.as_deref(), addressing.hostname());
        let id = n.id(env);
        crate::bounce::deliver(addressing, backends, env, &id, msg).await?;
        tracing::info!(rcpt = %n.rcpt.address, action = n.kind.as_str(), dsn = %id, "success notice sent");
        metrics::counter!("posthorn_router_success_notices_total").increment(1);
    }
    Ok(())
}

#[cfg(test)]
#[path = "success_tests.rs"]
mod tests;
