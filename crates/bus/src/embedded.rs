//! Embedded bus: work queues persisted in their own redb file, events on an
//! in-process broadcast channel. For the single-process `posthorn serve`.
//!
//! # Durability
//!
//! `publish` and `term` commit with [`redb::Durability::Immediate`]:
//! `publish` returns after the item is fsynced, `term` after the move to the
//! dead table is. Publishes are group-committed: those that arrive while a
//! commit runs are written together by the next transaction, one fsync for
//! the lot (each caller still waits for its own item to be durable).
//!
//! Handing an item out and acking it take no transaction of their own:
//! redb allows one writer at a time, and a claim or ack waiting behind a
//! publish's fsync held up routing (the tail latency of `bench/latency.py`).
//! A claim reads; the raised delivery count and the ack are kept in memory
//! (an acked item is never handed out again) and written by the next group
//! commit, which runs as soon as there is such work: with the publishes'
//! fsync if there are any, else with [`redb::Durability::None`] (made
//! durable by the next immediate commit). A crash can only undo them, which
//! means one redelivery of an acked item (consumers dedupe, docs/architecture.md
//! invariant 2) or a lower delivery count (a poison item is dead-lettered a
//! few deliveries later).
//!
//! # Semantics and simplifications
//!
//! - Each queue is a *work queue shared by all groups*: every consumer on a
//!   queue, whatever its group name, competes for the same items and each item
//!   is handed to one consumer at a time. This matches JetStream work-queue
//!   retention, which allows only one unfiltered consumer per stream; in
//!   practice each queue has one group (router for inbound, delivery for
//!   outbound).
//! - Leases (who holds an item until when) and `nak` delays live in memory
//!   only. After a restart every un-acked item is available at once (attempt
//!   continues from the persisted delivery count): correct at-least-once,
//!   only a pending `nak` delay is forgotten.
//! - Dedupe: a `msg_id` published to a queue within [`DEDUPE_WINDOW`] of an
//!   earlier publish of the same id (even if that item was already acked) is
//!   not stored again, like JetStream's duplicate window. The dedupe table is
//!   persisted and pruned lazily.
//! - The dead-letter table keeps items forever (JetStream `MAIL_DEAD` uses
//!   limits retention without limits).
//! - Events are delivered only within this process (broadcast channel of
//!   [`EVENT_CAPACITY`]; a lagging subscriber skips events, which only costs
//!   latency).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{Notify, broadcast};

use posthorn_runtime::group_commit::{GroupCommit, try_blocking};

use crate::{
    Acker, Bus, Consumer, ConsumerConfig, Delivery, Error, EventStream, MailboxEvent, Queue, Result,
};

/// Window within which a repeated `msg_id` is not stored again.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(120);
/// Capacity of the in-process event channel.
pub const EVENT_CAPACITY: usize = 4096;

/// How often the dedupe table is pruned (at most).
const DEDUPE_GC_EVERY: Duration = Duration::from_secs(10);
/// Longest sleep of a waiting consumer between checks for expired leases.
const POLL: Duration = Duration::from_millis(100);

/// (queue, seq) -> [deliveries u32][msg_id len u32][msg_id][payload]
const ITEMS: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("items");
/// (queue, seq) -> [msg_id len u32][msg_id][payload]
const DEAD: TableDefinition<(u8, u64), &[u8]> = TableDefinition::new("dead");
/// (queue, msg_id) -> unix ms of the first publish
const DEDUPE: TableDefinition<(u8, &str), u64> = TableDefinition::new("dedupe");
/// "next_seq" -> next item sequence number
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn qid(queue: Queue) -> u8 {
    match queue {
        Queue::Inbound => 0,
        Queue::Outbound => 1,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn encode_item(deliveries: u32, msg_id: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + msg_id.len() + payload.len());
    v.extend_from_slice(&deliveries.to_be_bytes());
    v.extend_from_slice(&(msg_id.len() as u32).to_be_bytes());
    v.extend_from_slice(msg_id.as_bytes());
    v.extend_from_slice(payload);
    v
}

fn decode_item(v: &[u8]) -> Result<(u32, String, Bytes)> {
    if v.len() < 4 {
        return Err(Error::Other("embedded bus: truncated item".into()));
    }
    let deliveries = u32::from_be_bytes(v[..4].try_into().expect("4 bytes"));
    let (msg_id, payload) = decode_dead(&v[4..])?;
    Ok((deliveries, msg_id, payload))
}

fn encode_dead(msg_id: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + msg_id.len() + payload.len());
    v.extend_from_slice(&(msg_id.len() as u32).to_be_bytes());
    v.extend_from_slice(msg_id.as_bytes());
    v.extend_from_slice(payload);
    v
}

fn decode_dead(v: &[u8]) -> Result<(String, Bytes)> {
    let bad = || Error::Other("embedded bus: truncated item".into());
    if v.len() < 4 {
        return Err(bad());
    }
    let n = u32::from_be_bytes(v[..4].try_into().expect("4 bytes")) as usize;
    let rest = &v[4..];
    if rest.len() < n {
        return Err(bad());
    }
    let msg_id = std::str::from_utf8(&rest[..n])
        .map_err(|_| Error::Other("embedded bus: msg_id is not UTF-8".into()))?
        .to_string();
    Ok((msg_id, Bytes::copy_from_slice(&rest[n..])))
}

/// Who holds an item until when: a lease of one delivery (`token`), or a
/// `nak` delay (`token == None`).
#[derive(Debug, Clone, Copy)]
struct Hold {
    until: Instant,
    token: Option<u64>,
}

#[derive(Default)]
struct State {
    holds: HashMap<(u8, u64), Hold>,
    /// Items in the table that may be handed out now (neither held nor
    /// acked), so a claim takes the first of them instead of scanning
    /// past every held one (10,000 deferred items must not slow the
    /// others; docs/architecture.md, "Embedded queue").
    ready: BTreeSet<(u8, u64)>,
    /// When holds end: (expiry, key); an entry whose hold was replaced
    /// since is stale and skipped.
    expiries: BTreeSet<(Instant, (u8, u64))>,
    last_dedupe_gc: Option<Instant>,
    /// Delivery counts raised by claims of this process (until acked).
    attempts: HashMap<(u8, u64), u32>,
    /// Keys of `attempts` not written to the table yet.
    dirty: HashSet<(u8, u64)>,
    /// Acked items the next commit removes: never handed out again.
    acked: HashSet<(u8, u64)>,
}

impl State {
    /// Hold `key` (a lease, or a NAK delay) until `until`.
    fn hold(&mut self, key: (u8, u64), until: Instant, token: Option<u64>) {
        self.ready.remove(&key);
        self.holds.insert(key, Hold { until, token });
        self.expiries.insert((until, key));
    }

    /// End the hold of `key`: it may be handed out again.
    fn release(&mut self, key: (u8, u64)) {
        self.holds.remove(&key);
        if !self.acked.contains(&key) {
            self.ready.insert(key);
        }
    }

    /// End the holds that expired by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(until, key)) = self.expiries.first() {
            if until > now {
                break;
            }
            self.expiries.pop_first();
            if self.holds.get(&key).is_some_and(|h| h.until == until) {
                self.release(key);
            }
        }
    }

    /// Forget what this process knows of an item that left the queue.
    fn gone(&mut self, key: (u8, u64)) {
        self.holds.remove(&key);
        self.ready.remove(&key);
        self.attempts.remove(&key);
        self.dirty.remove(&key);
    }

    /// Earliest moment a hold of `queue` expires (after `now`).
    fn next_expiry(&self, queue: u8, now: Instant) -> Option<Instant> {
        self.expiries
            .iter()
            .find(|(until, key)| {
                key.0 == queue
                    && *until > now
                    && self.holds.get(key).is_some_and(|h| h.until == *until)
            })
            .map(|(until, _)| *until)
    }
}

/// Outcome of [`Inner::claim`].
enum Claim {
    /// An item leased to the caller.
    Leased {
        seq: u64,
        attempt: u32,
        msg_id: String,
        payload: Bytes,
        token: u64,
    },
    /// Nothing available; a hold expires at `next_expiry`.
    Empty { next_expiry: Option<Instant> },
}

/// One publish for the group commit: queue, msg_id, payload.
type Publish = (u8, String, Bytes);

struct Inner {
    path: PathBuf,
    db: Database,
    state: Mutex<State>,
    /// Group commit of publishes (see [`EmbeddedBus::publish`]), and of
    /// acks and delivery counts ([`Inner::kick`]).
    group: Arc<GroupCommit<Publish, Result<bool>>>,
    notify: [Notify; 2],
    events: broadcast::Sender<MailboxEvent>,
    tokens: AtomicU64,
}

impl Inner {
    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("embedded bus {}: {e}", self.path.display()))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only in-memory leases behind;
        // they are advisory, so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store a batch of publishes in one transaction (one fsync), with the
    /// acks and delivery counts kept in memory so far: whether each publish
    /// was stored (`false`: a duplicate).
    fn publish_batch(&self, batch: &[(u8, &str, &[u8])]) -> Result<Vec<bool>> {
        let now_ms = unix_ms();
        let window_ms = DEDUPE_WINDOW.as_millis() as u64;
        let (gc, acks, counts) = {
            let mut st = self.state();
            let due = !batch.is_empty()
                && st
                    .last_dedupe_gc
                    .is_none_or(|t| t.elapsed() >= DEDUPE_GC_EVERY);
            if due {
                st.last_dedupe_gc = Some(Instant::now());
            }
            let acks: Vec<(u8, u64)> = st.acked.iter().copied().collect();
            let counts: Vec<((u8, u64), u32)> = st
                .dirty
                .iter()
                .filter_map(|k| st.attempts.get(k).map(|n| (*k, *n)))
                .collect();
            (due, acks, counts)
        };
        let mut txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut stored = Vec::with_capacity(batch.len());
        let mut added = Vec::new();
        let mut changed = false;
        {
            let mut items = txn.open_table(ITEMS).map_err(|e| self.err(e))?;
            for key in &acks {
                changed |= items.remove(*key).map_err(|e| self.err(e))?.is_some();
            }
            for (key, n) in &counts {
                let raw = items
                    .get(*key)
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value().to_vec());
                if let Some(raw) = raw {
                    let (deliveries, msg_id, payload) = decode_item(&raw)?;
                    if deliveries < *n {
                        items
                            .insert(*key, encode_item(*n, &msg_id, &payload).as_slice())
                            .map_err(|e| self.err(e))?;
                        changed = true;
                    }
                }
            }
        }
        {
            let mut dedupe = txn.open_table(DEDUPE).map_err(|e| self.err(e))?;
            if gc {
                dedupe
                    .retain(|_, at| now_ms.saturating_sub(at) < window_ms)
                    .map_err(|e| self.err(e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let mut items = txn.open_table(ITEMS).map_err(|e| self.err(e))?;
            for &(q, msg_id, payload) in batch {
                let seen = dedupe
                    .get((q, msg_id))
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value());
                if seen.is_some_and(|at| now_ms.saturating_sub(at) < window_ms) {
                    stored.push(false);
                    continue;
                }
                dedupe
                    .insert((q, msg_id), now_ms)
                    .map_err(|e| self.err(e))?;
                let seq = meta
                    .get("next_seq")
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value())
                    .unwrap_or(1);
                meta.insert("next_seq", seq + 1).map_err(|e| self.err(e))?;
                items
                    .insert((q, seq), encode_item(0, msg_id, payload).as_slice())
                    .map_err(|e| self.err(e))?;
                added.push((q, seq));
                stored.push(true);
            }
        }
        if stored.iter().any(|s| *s) {
            txn.commit().map_err(|e| self.err(e))?;
        } else if changed {
            // Acks and counts only: no fsync of their own (see module docs).
            let _ = txn.set_durability(redb::Durability::None);
            txn.commit().map_err(|e| self.err(e))?;
        } else {
            txn.abort().map_err(|e| self.err(e))?;
        }
        let mut st = self.state();
        for key in &acks {
            st.acked.remove(key);
        }
        st.ready.extend(added);
        for (key, n) in &counts {
            if st.attempts.get(key) == Some(n) {
                st.dirty.remove(key);
            }
        }
        Ok(stored)
    }

    /// Have the committer write the acks and counts kept in memory soon.
    fn kick(self: &Arc<Self>) {
        let me = self.clone();
        self.group.kick(move |batch| me.commit_batch(batch));
    }

    /// One group commit (see [`Inner::publish_batch`]): each publish's result.
    fn commit_batch(&self, batch: Vec<Publish>) -> Vec<Result<bool>> {
        let view: Vec<(u8, &str, &[u8])> = batch
            .iter()
            .map(|(q, id, p)| (*q, id.as_str(), p.as_ref()))
            .collect();
        match self.publish_batch(&view) {
            Ok(stored) => stored.into_iter().map(Ok).collect(),
            Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// Lease the oldest available item of queue `q`, moving items that
    /// exceeded `max_deliver` to the dead table on the way. Returns the
    /// delivery or, if none is available, when the next hold expires. A read
    /// transaction: the raised delivery count is written by a later commit
    /// (see the module docs).
    fn claim(&self, q: u8, config: ConsumerConfig) -> Result<Claim> {
        let mut st = self.state();
        let now = Instant::now();
        st.expire(now);
        let mut found = None;
        let mut poison = Vec::new();
        {
            let txn = self.db.begin_read().map_err(|e| self.err(e))?;
            let items = txn.open_table(ITEMS).map_err(|e| self.err(e))?;
            while let Some(&key) = st.ready.range((q, 0u64)..=(q, u64::MAX)).next() {
                let Some(v) = items.get(key).map_err(|e| self.err(e))? else {
                    // Left the table (a commit of its ack, a term).
                    st.ready.remove(&key);
                    continue;
                };
                let (deliveries, msg_id, payload) = decode_item(v.value())?;
                let known = st.attempts.get(&key).copied().unwrap_or(0);
                let attempt = deliveries.max(known).saturating_add(1);
                if attempt > config.max_deliver {
                    tracing::warn!(queue = q, %msg_id, deliveries = attempt - 1, "embedded bus: max_deliver exceeded, moved to dead letters");
                    st.ready.remove(&key);
                    poison.push((key, msg_id, payload));
                    continue;
                }
                found = Some((key.1, attempt, msg_id, payload));
                break;
            }
        }
        if !poison.is_empty() {
            // Rare: a write of its own, durable like `term`.
            let txn = self.db.begin_write().map_err(|e| self.err(e))?;
            {
                let mut items = txn.open_table(ITEMS).map_err(|e| self.err(e))?;
                let mut dead = txn.open_table(DEAD).map_err(|e| self.err(e))?;
                for (key, msg_id, payload) in &poison {
                    items.remove(*key).map_err(|e| self.err(e))?;
                    dead.insert(*key, encode_dead(msg_id, payload).as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            txn.commit().map_err(|e| self.err(e))?;
            for (key, _, _) in &poison {
                st.gone(*key);
            }
        }
        match found {
            Some((seq, attempt, msg_id, payload)) => {
                let token = self.tokens.fetch_add(1, Ordering::Relaxed);
                st.hold((q, seq), now + config.ack_wait, Some(token));
                st.attempts.insert((q, seq), attempt);
                st.dirty.insert((q, seq));
                Ok(Claim::Leased {
                    seq,
                    attempt,
                    msg_id,
                    payload,
                    token,
                })
            }
            None => Ok(Claim::Empty {
                next_expiry: st.next_expiry(q, now),
            }),
        }
    }

    /// Mark an item acked: it is never handed out again, and the next
    /// commit removes it (see the module docs).
    fn ack(self: &Arc<Self>, q: u8, seq: u64) {
        {
            let mut st = self.state();
            st.gone((q, seq));
            st.acked.insert((q, seq));
        }
        self.kick();
    }

    fn term(&self, q: u8, seq: u64) -> Result<()> {
        let mut st = self.state();
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let moved = {
            let mut items = txn.open_table(ITEMS).map_err(|e| self.err(e))?;
            let raw = items
                .remove((q, seq))
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_vec());
            match raw {
                Some(raw) => {
                    let (_, msg_id, payload) = decode_item(&raw)?;
                    let mut dead = txn.open_table(DEAD).map_err(|e| self.err(e))?;
                    dead.insert((q, seq), encode_dead(&msg_id, &payload).as_slice())
                        .map_err(|e| self.err(e))?;
                    true
                }
                None => false,
            }
        };
        if moved {
            txn.commit().map_err(|e| self.err(e))?;
        } else {
            txn.abort().map_err(|e| self.err(e))?;
        }
        st.gone((q, seq));
        Ok(())
    }

    fn depth(&self, q: u8) -> Result<u64> {
        let st = self.state();
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let items = txn.open_table(ITEMS).map_err(|e| self.err(e))?;
        let mut n = 0u64;
        for entry in items
            .range((q, 0u64)..=(q, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            let (k, _) = entry.map_err(|e| self.err(e))?;
            if !st.acked.contains(&k.value()) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn dead_letters(&self, q: u8, limit: usize) -> Result<Vec<(String, Bytes)>> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let dead = txn.open_table(DEAD).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in dead
            .range((q, 0u64)..=(q, u64::MAX))
            .map_err(|e| self.err(e))?
        {
            if out.len() >= limit {
                break;
            }
            let (_, v) = entry.map_err(|e| self.err(e))?;
            out.push(decode_dead(v.value())?);
        }
        Ok(out)
    }
}

/// Run a blocking redb operation (see [`try_blocking`]: in place on the
/// multi-threaded runtime).
async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
) -> Result<T> {
    let inner = inner.clone();
    try_blocking(move || f(&inner))
        .await
        .map_err(|e| Error::Other(format!("embedded bus task failed: {e}")))?
}

/// The embedded bus (see the module docs).
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl EmbeddedBus {
    /// Open (creating if needed) the bus file at `path`. The file must not
    /// be open elsewhere (redb locks it).
    pub fn open(path: &Path) -> Result<Self> {
        let err = |e: &dyn std::fmt::Display| {
            Error::Unavailable(format!("embedded bus {}: {e}", path.display()))
        };
        // A bus just closed in this process may still be held for a moment
        // by its committer task finishing the last write: wait for it.
        let mut tries = 0;
        let db = loop {
            match Database::create(path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => break r.map_err(|e| err(&e))?,
            }
        };
        // Create the tables so read transactions always find them.
        let txn = db.begin_write().map_err(|e| err(&e))?;
        {
            txn.open_table(ITEMS).map_err(|e| err(&e))?;
            txn.open_table(DEAD).map_err(|e| err(&e))?;
            txn.open_table(DEDUPE).map_err(|e| err(&e))?;
            txn.open_table(META).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))?;
        // After a restart every item in the table may be handed out.
        let mut state = State::default();
        {
            let txn = db.begin_read().map_err(|e| err(&e))?;
            let items = txn.open_table(ITEMS).map_err(|e| err(&e))?;
            for entry in items.iter().map_err(|e| err(&e))? {
                let (k, _) = entry.map_err(|e| err(&e))?;
                state.ready.insert(k.value());
            }
        }
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(EmbeddedBus {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db,
                state: Mutex::new(state),
                group: Arc::new(GroupCommit::new()),
                notify: [Notify::new(), Notify::new()],
                events,
                tokens: AtomicU64::new(1),
            }),
        })
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn ping(&self) -> Result<()> {
        blocking(&self.inner, |i| {
            i.db.begin_read().map(|_| ()).map_err(|e| i.err(e))
        })
        .await
    }

    async fn publish(&self, queue: Queue, msg_id: &str, payload: Bytes) -> Result<()> {
        // Group commit: publishes that arrive while a commit is running are
        // stored together by the next one, so concurrent SMTP sessions share
        // fsyncs instead of queueing for one each. Every caller still returns
        // only after its own item is durable.
        let q = qid(queue);
        let inner = self.inner.clone();
        let stored = self
            .inner
            .group
            .submit((q, msg_id.to_string(), payload), move |batch| {
                inner.commit_batch(batch)
            })
            .await
            .ok_or_else(|| Error::Other("embedded bus committer stopped".into()))??;
        if stored {
            self.inner.notify[q as usize].notify_waiters();
        } else {
            tracing::debug!(
                queue = queue.name(),
                msg_id,
                "embedded bus: duplicate publish ignored"
            );
        }
        Ok(())
    }

    async fn consumer(
        &self,
        queue: Queue,
        group: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>> {
        if group.is_empty() {
            return Err(Error::Other("consumer group name is empty".into()));
        }
        if config.max_deliver == 0 {
            return Err(Error::Other("max_deliver must be at least 1".into()));
        }
        Ok(Box::new(EmbeddedConsumer {
            inner: self.inner.clone(),
            queue: qid(queue),
            config,
        }))
    }

    async fn depth(&self, queue: Queue) -> Result<u64> {
        let q = qid(queue);
        blocking(&self.inner, move |i| i.depth(q)).await
    }

    async fn dead_letters(&self, queue: Queue, limit: usize) -> Result<Vec<(String, Bytes)>> {
        let q = qid(queue);
        blocking(&self.inner, move |i| i.dead_letters(q, limit)).await
    }

    async fn publish_event(&self, event: &MailboxEvent) -> Result<()> {
        // No subscriber is not an error: events are best effort.
        let _ = self.inner.events.send(event.clone());
        Ok(())
    }

    async fn subscribe_events(&self, account: Option<&str>) -> Result<EventStream> {
        let rx = self.inner.events.subscribe();
        let account = account.map(str::to_string);
        let stream = futures::stream::unfold(rx, move |mut rx| {
            let account = account.clone();
            async move {
                loop {
                    match rx.recv().await {
                        Ok(ev) => {
                            if account.as_deref().is_none_or(|a| a == ev.account) {
                                return Some((ev, rx));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(skipped = n, "embedded bus: event subscriber lagged");
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

struct EmbeddedConsumer {
    inner: Arc<Inner>,
    queue: u8,
    config: ConsumerConfig,
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    async fn next(&mut self, timeout: Duration) -> Result<Option<Delivery>> {
        let deadline = Instant::now() + timeout;
        let q = self.queue;
        let config = self.config;
        loop {
            // Register for wake-ups before looking, so a publish between the
            // look and the wait is not missed.
            let notified = self.inner.notify[q as usize].notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            // A read transaction (no waiting for a writer): done in place.
            let claimed = self.inner.claim(q, config)?;
            let next_expiry = match claimed {
                Claim::Leased {
                    seq,
                    attempt,
                    msg_id,
                    payload,
                    token,
                } => {
                    // Write the raised delivery count soon.
                    self.inner.kick();
                    return Ok(Some(Delivery {
                        msg_id,
                        payload,
                        attempt,
                        stored_at_ms: None,
                        acker: Box::new(EmbeddedAcker {
                            inner: self.inner.clone(),
                            queue: q,
                            seq,
                            token,
                            ack_wait: config.ack_wait,
                        }),
                    }));
                }
                Claim::Empty { next_expiry } => next_expiry,
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let mut wake = deadline.min(now + POLL);
            if let Some(t) = next_expiry {
                wake = wake.min(t);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}

struct EmbeddedAcker {
    inner: Arc<Inner>,
    queue: u8,
    seq: u64,
    token: u64,
    ack_wait: Duration,
}

#[async_trait]
impl Acker for EmbeddedAcker {
    async fn ack(&self) -> Result<()> {
        self.inner.ack(self.queue, self.seq);
        Ok(())
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<()> {
        {
            let mut st = self.inner.state();
            let key = (self.queue, self.seq);
            // Only the current holder may release or delay the item; a stale
            // delivery (lease expired, redelivered elsewhere) is ignored.
            let mine = st
                .holds
                .get(&key)
                .is_none_or(|h| h.token == Some(self.token));
            if mine && !st.acked.contains(&key) {
                match delay {
                    Some(d) if !d.is_zero() => st.hold(key, Instant::now() + d, None),
                    _ => st.release(key),
                }
            }
        }
        self.inner.notify[self.queue as usize].notify_waiters();
        Ok(())
    }

    async fn term(&self) -> Result<()> {
        let (q, seq) = (self.queue, self.seq);
        blocking(&self.inner, move |i| i.term(q, seq)).await
    }

    async fn in_progress(&self) -> Result<()> {
        let mut st = self.inner.state();
        let key = (self.queue, self.seq);
        // Extend our lease; if it expired but nobody took the item since,
        // take it back (like JetStream's +WPI on an expired delivery).
        let mine = st
            .holds
            .get(&key)
            .is_none_or(|h| h.token == Some(self.token));
        if mine && !st.acked.contains(&key) {
            st.hold(key, Instant::now() + self.ack_wait, Some(self.token));
        }
        Ok(())
    }
}
