//! The queue index: one entry per queued remote delivery (message,
//! recipient), kept beside the outbound stream so the queue can be listed,
//! counted and steered (`posthorn queue`). Written by the router when it
//! queues an item, by delivery on every attempt, and by the queue admin API;
//! all writes are compare-and-set on [`MetaStore::put_record`], so they
//! never overwrite each other. Design and crash windows: docs/delivery.md,
//! "The queue index".

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, MetaStore, RecordPut, Result};

/// The record namespace of the index.
pub const NAMESPACE: &str = "queue";

/// How long a settled entry is remembered as a tombstone, so a late
/// [`add`] (the router's, after its publish) or an old copy of the item does
/// not bring it back. The `done` marker of delivery covers longer.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(86_400);

/// Where a queued delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    /// Waiting for its first attempt (or a retry asked for by `flush`).
    Queued,
    /// A delivery worker has it.
    Active,
    /// Failed temporarily; retried at `next_attempt`.
    Deferred,
    /// Kept, not attempted, until released.
    Held,
    /// Deleted by the administrator; delivery drops it (with a bounce if
    /// `bounce_on_delete`) the next time it sees it.
    Deleting,
    /// Settled (delivered, bounced or deleted): a tombstone.
    Done,
}

impl QueueState {
    /// Every state an entry in the listing can have.
    pub const LISTED: [QueueState; 5] = [
        Self::Active,
        Self::Queued,
        Self::Deferred,
        Self::Held,
        Self::Deleting,
    ];

    /// The range of listing scores of this state: entries are listed by
    /// state, then age, so each state is a range that can be counted and
    /// paged without reading the others.
    fn scores(self) -> std::ops::RangeInclusive<i64> {
        let rank = match self {
            Self::Active => 0,
            Self::Queued => 1,
            Self::Deferred => 2,
            Self::Held => 3,
            Self::Deleting | Self::Done => 4,
        };
        (rank << 40)..=((rank << 40) | AGE_MASK)
    }

    /// The name used by the CLI and the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Active => "active",
            Self::Deferred => "deferred",
            Self::Held => "held",
            Self::Deleting => "deleting",
            Self::Done => "done",
        }
    }
}

/// One queued delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The queue id: `<message id>/<recipient>`.
    pub id: String,
    /// The message id (smtp-ingress's queue id).
    pub message_id: String,
    /// Envelope sender (empty for `<>`).
    pub sender: String,
    /// The recipient.
    pub recipient: String,
    /// The recipient's domain, lower case.
    pub domain: String,
    /// Message size in octets.
    pub size: u64,
    /// When smtp-ingress accepted the message (Unix seconds).
    pub received_at: i64,
    /// Where it stands.
    pub state: QueueState,
    /// With [`QueueState::Deleting`]: send the sender a bounce.
    #[serde(default)]
    pub bounce_on_delete: bool,
    /// Next attempt (Unix seconds) when deferred; 0 otherwise.
    pub next_attempt: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// The last temporary error, empty before the first.
    pub last_error: String,
    /// Which copy of the item on the stream is current: the admin API
    /// records the next generation, publishes a copy with it (flush,
    /// release, delete) and then sets `copy_published`; older copies are
    /// dropped when they come back — once that copy is known to exist.
    pub generation: u32,
    /// Whether the copy of `generation` is known to be on the stream.
    /// Until it is, older copies are still attempted: a crash between the
    /// admin's two writes must not leave the item without a live copy.
    #[serde(default = "yes")]
    pub copy_published: bool,
    /// The encoded queue item (`OutboundItem`), to publish a copy.
    #[serde(with = "b64")]
    pub item: Vec<u8>,
}

fn yes() -> bool {
    true
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// `received_at` as a listing score (within a state's range).
const AGE_MASK: i64 = (1 << 40) - 1;

fn score(e: &QueueEntry) -> i64 {
    e.state.scores().start() | e.received_at.clamp(0, AGE_MASK)
}

/// What [`modify`] does with the entry it was shown.
pub enum Step<R> {
    /// Write this entry (listed).
    Write(Box<QueueEntry>, R),
    /// Settle it: a tombstone, out of the listing.
    Settle(R),
    /// Leave it as it is.
    Keep(R),
}

/// Read the entry `id` (tombstones included), let `f` decide, and write
/// what it decided if nobody wrote in between — otherwise read again and
/// ask `f` again.
pub async fn modify<R>(
    store: &dyn MetaStore,
    id: &str,
    mut f: impl FnMut(Option<QueueEntry>) -> Step<R>,
) -> Result<R> {
    for _ in 0..32 {
        let current = store.get_record(NAMESPACE, &key(id)).await?;
        let (version, entry) = match current {
            Some(r) => (r.version, Some(decode(&r.value)?)),
            None => (0, None),
        };
        let (put, r) = match f(entry.clone()) {
            Step::Keep(r) => return Ok(r),
            Step::Write(e, r) => (
                RecordPut {
                    value: encode(&e)?,
                    score: score(&e),
                    listed: true,
                    ttl: None,
                },
                r,
            ),
            Step::Settle(r) => {
                let Some(mut e) = entry else { return Ok(r) };
                e.state = QueueState::Done;
                e.item.clear();
                let put = RecordPut {
                    value: encode(&e)?,
                    score: score(&e),
                    listed: false,
                    ttl: Some(TOMBSTONE_TTL),
                };
                (put, r)
            }
        };
        if store
            .put_record(NAMESPACE, &key(id), version, put)
            .await?
            .is_some()
        {
            return Ok(r);
        }
    }
    Err(Error::Unavailable(format!(
        "queue entry {id}: too many concurrent updates"
    )))
}

/// Record a newly queued item, unless its entry exists (or existed: a
/// tombstone) already.
pub async fn add(store: &dyn MetaStore, entry: QueueEntry) -> Result<()> {
    let id = entry.id.clone();
    let mut entry = Some(entry);
    modify(store, &id, |cur| match (cur, entry.take()) {
        (None, Some(e)) => Step::Write(Box::new(e), ()),
        _ => Step::Keep(()),
    })
    .await
}

/// The entry `id`, if queued (tombstones read as absent).
pub async fn get(store: &dyn MetaStore, id: &str) -> Result<Option<QueueEntry>> {
    Ok(match store.get_record(NAMESPACE, &key(id)).await? {
        Some(r) => Some(decode(&r.value)?).filter(|e: &QueueEntry| e.state != QueueState::Done),
        None => None,
    })
}

/// Up to `limit` entries from position `offset`: those in `state`, or all
/// by state (active, queued, deferred, held, deleting); oldest first
/// within a state.
pub async fn list(
    store: &dyn MetaStore,
    state: Option<QueueState>,
    offset: u64,
    limit: u64,
) -> Result<Vec<QueueEntry>> {
    let scores = match state {
        Some(s) => s.scores(),
        None => i64::MIN..=i64::MAX,
    };
    store
        .list_records(NAMESPACE, scores, offset, limit)
        .await?
        .into_iter()
        .map(|(_, r)| decode(&r.value))
        .collect()
}

/// How many entries are in `state`, and the oldest one's `received_at`.
pub async fn count(store: &dyn MetaStore, state: QueueState) -> Result<(u64, Option<i64>)> {
    let (n, lowest) = store.count_records(NAMESPACE, state.scores()).await?;
    Ok((n, lowest.map(|s| s & AGE_MASK)))
}

/// How many entries are queued in all, and the oldest one's `received_at`.
pub async fn count_all(store: &dyn MetaStore) -> Result<(u64, Option<i64>)> {
    let (mut total, mut oldest) = (0, None::<i64>);
    for state in QueueState::LISTED {
        let (n, o) = count(store, state).await?;
        total += n;
        oldest = match (oldest, o) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok((total, oldest))
}

/// What delivery does with a copy of an item it received ([`claim`]) or
/// deferred ([`defer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Attempt it (after [`claim`]) or NAK it with its delay (after
    /// [`defer`]). Carries the entry as written.
    Proceed(Box<QueueEntry>),
    /// A newer copy is on the stream: ack this one, do nothing else.
    Superseded,
    /// Already settled: ack.
    Done,
    /// Held: ack (the entry keeps the item for `release`).
    Held,
    /// Deferred, and its next attempt (Unix seconds) is still ahead: a
    /// copy that came back early (a queue that lost its NAK delay in a
    /// restart). NAK it until then; no attempt is made or counted.
    NotDue {
        /// The next attempt, Unix seconds.
        at: i64,
    },
    /// Deleted by the administrator: bounce if asked, settle, ack.
    Delete {
        /// Whether the sender gets a bounce.
        bounce: bool,
    },
}

fn verdict(e: &QueueEntry, generation: u32) -> Option<Claim> {
    match e.state {
        QueueState::Done => Some(Claim::Done),
        _ if e.generation > generation && e.copy_published => Some(Claim::Superseded),
        QueueState::Held => Some(Claim::Held),
        QueueState::Deleting => Some(Claim::Delete {
            bounce: e.bounce_on_delete,
        }),
        _ => None,
    }
}

/// Delivery took copy `generation` of item `id`: mark it active, or say why
/// not. `fallback` builds the entry when there is none (the router's
/// [`add`] was lost or not made yet).
pub async fn claim(
    store: &dyn MetaStore,
    id: &str,
    generation: u32,
    now: i64,
    fallback: impl Fn() -> QueueEntry,
) -> Result<Claim> {
    modify(store, id, |cur| {
        let mut e = match cur {
            Some(e) => {
                if let Some(v) = verdict(&e, generation) {
                    return Step::Keep(v);
                }
                if e.state == QueueState::Deferred && e.next_attempt > now {
                    return Step::Keep(Claim::NotDue { at: e.next_attempt });
                }
                e
            }
            None => fallback(),
        };
        e.state = QueueState::Active;
        // Never lowered: an older copy attempted while the newest is not
        // yet known to be published leaves the generation as it is.
        e.generation = e.generation.max(generation);
        let e = Box::new(e);
        Step::Write(e.clone(), Claim::Proceed(e))
    })
    .await
}

/// Delivery failed temporarily on copy `generation` of `id`: record the
/// error and the next attempt. Returns [`Claim::Proceed`] (NAK it with its
/// delay), or what the administrator decided meanwhile.
pub async fn defer(
    store: &dyn MetaStore,
    id: &str,
    generation: u32,
    next_attempt: i64,
    error: &str,
) -> Result<Claim> {
    modify(store, id, |cur| {
        let Some(mut e) = cur else {
            return Step::Keep(Claim::Done);
        };
        e.attempts += 1;
        e.last_error = error.to_string();
        match verdict(&e, generation) {
            // Settled or superseded: nothing of this attempt to record.
            Some(v @ (Claim::Done | Claim::Superseded)) => Step::Keep(v),
            // Held or deleting: keep the state, record the attempt.
            Some(v) => Step::Write(Box::new(e), v),
            None => {
                e.state = QueueState::Deferred;
                e.next_attempt = next_attempt;
                let e = Box::new(e);
                Step::Write(e.clone(), Claim::Proceed(e))
            }
        }
    })
    .await
}

/// Delivery settled `id` (delivered, bounced or deleted): leave a tombstone.
pub async fn settle(store: &dyn MetaStore, id: &str) -> Result<()> {
    modify(store, id, |_| Step::Settle(())).await
}

fn key(id: &str) -> String {
    // Record keys may not hold spaces or braces; queue ids are
    // `<message id>/<address>` and addresses are validated, but a quoted
    // local part can hold anything: percent-encode what a key may not.
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '%') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn encode(e: &QueueEntry) -> Result<String> {
    serde_json::to_string(e).map_err(|e| Error::Corrupt(format!("queue entry: {e}")))
}

fn decode(s: &str) -> Result<QueueEntry> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("queue entry: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_what_a_record_key_may_not_hold() {
        assert_eq!(key("Q1/bob@remote.test"), "Q1/bob@remote.test");
        assert_eq!(key("Q1/\"a b{c}\"@x"), "Q1/\"a%20b%7Bc%7D\"@x");
        assert_eq!(key("Q1/100%@x"), "Q1/100%25@x");
    }

    #[test]
    fn entries_round_trip_with_the_item_in_base64() {
        let e = QueueEntry {
            id: "Q1/b@r.test".into(),
            message_id: "Q1".into(),
            sender: "a@l.test".into(),
            recipient: "b@r.test".into(),
            domain: "r.test".into(),
            size: 10,
            received_at: 1,
            state: QueueState::Held,
            bounce_on_delete: false,
            next_attempt: 0,
            attempts: 0,
            last_error: String::new(),
            generation: 0,
            copy_published: true,
            item: vec![0, 159, 255],
        };
        let s = encode(&e).unwrap();
        assert!(s.contains("\"AJ//\""), "{s}");
        assert_eq!(decode(&s).unwrap(), e);
    }
}
