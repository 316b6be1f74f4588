//! Work queues and events behind one trait ([`Bus`]).
//!
//! - Work queues (`inbound`, `outbound`) are at-least-once: an item is
//!   durable when [`Bus::publish`] returns, is handed to one consumer of a
//!   durable consumer group at a time, is redelivered if not acked within the
//!   ack wait, and is moved to the dead-letter queue after `max_deliver`
//!   deliveries. Publishing the same `msg_id` twice within the dedupe window
//!   stores it once.
//! - Events ("mailbox changed") are fire-and-forget pub/sub: a missed event
//!   costs latency (IMAP clients poll on NOOP too), never data.
//!
//! Implementations: [`jetstream::JetStreamBus`] (NATS JetStream work-queue
//! streams, durable pull consumers, explicit ack; core NATS subjects for
//! events) and [`embedded::EmbeddedBus`] (persisted in a redb file, events on
//! an in-process broadcast channel). One conformance suite
//! ([`conformance`]) runs against both.

#![warn(missing_docs)]

pub mod conformance;
pub mod embedded;
pub mod jetstream;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Errors of the bus.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The backend could not be reached or did not confirm; retry later.
    #[error("queue backend unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded, or a bug.
    #[error("queue error: {0}")]
    Other(String),
}

impl Error {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// The work queues. Names map to JetStream streams `MAIL_INBOUND`,
/// `MAIL_OUTBOUND` and `MAIL_DEAD` (subjects `mail.inbound`, `mail.outbound`,
/// `mail.dead.<queue>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Queue {
    /// Accepted by smtp-ingress, consumed by the router.
    Inbound,
    /// Remote recipients, consumed by delivery.
    Outbound,
}

impl Queue {
    /// Lower-case name (`inbound`/`outbound`).
    pub fn name(self) -> &'static str {
        match self {
            Queue::Inbound => "inbound",
            Queue::Outbound => "outbound",
        }
    }
}

/// Redelivery policy of a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Redeliver an item not acked within this time. Default 30 s.
    pub ack_wait: Duration,
    /// After this many deliveries without ack the item goes to the
    /// dead-letter queue. Default 10.
    pub max_deliver: u32,
    /// Un-acked items the group may have at once, NAK-delayed ones
    /// included (JetStream's `max_ack_pending`; 0: no limit). A queue whose
    /// retries wait as NAK delays (delivery) needs it unlimited, or the
    /// deferred items stop everything else. Default 1000 (JetStream's).
    pub max_pending: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            ack_wait: Duration::from_secs(30),
            max_deliver: 10,
            max_pending: 1000,
        }
    }
}

/// One delivered work item. Exactly one of [`Delivery::ack`],
/// [`Delivery::nak`] or [`Delivery::term`] should be called; dropping it
/// without any means "redeliver after the ack wait".
pub struct Delivery {
    /// The message id given to `publish`.
    pub msg_id: String,
    /// The payload.
    pub payload: Bytes,
    /// 1 for the first delivery, 2 for the first redelivery, ...
    pub attempt: u32,
    /// When the backend stored the item (Unix milliseconds), if it says.
    /// JetStream does; the embedded queue stores synchronously inside
    /// `publish`, so there is nothing to compare and it gives `None`.
    pub stored_at_ms: Option<i64>,
    /// Backend-specific acknowledger.
    pub acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("msg_id", &self.msg_id)
            .field("attempt", &self.attempt)
            .field("len", &self.payload.len())
            .finish()
    }
}

impl Delivery {
    /// Done: remove the item for good. Returns after the backend confirmed.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }
    /// Failed transiently: redeliver after `delay` (or at once).
    pub async fn nak(self, delay: Option<Duration>) -> Result<()> {
        self.acker.nak(delay).await
    }
    /// Poison: never redeliver (moved to the dead-letter queue).
    pub async fn term(self) -> Result<()> {
        self.acker.term().await
    }
    /// Still working: restart the ack-wait timer.
    pub async fn in_progress(&self) -> Result<()> {
        self.acker.in_progress().await
    }
}

/// Backend side of [`Delivery`].
#[async_trait]
pub trait Acker: Send + Sync {
    /// See [`Delivery::ack`].
    async fn ack(&self) -> Result<()>;
    /// See [`Delivery::nak`].
    async fn nak(&self, delay: Option<Duration>) -> Result<()>;
    /// See [`Delivery::term`].
    async fn term(&self) -> Result<()>;
    /// See [`Delivery::in_progress`].
    async fn in_progress(&self) -> Result<()>;
}

/// A durable consumer group on one queue; several processes using the same
/// group name share the work.
#[async_trait]
pub trait Consumer: Send {
    /// Wait up to `timeout` for the next item; `Ok(None)` on timeout.
    async fn next(&mut self, timeout: Duration) -> Result<Option<Delivery>>;
}

/// "Mailbox changed" event, published after a change is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxEvent {
    /// Normalised account address.
    pub account: String,
    /// Mailbox name.
    pub mailbox: String,
    /// What happened, e.g. `append`, `expunge`, `flags`.
    pub kind: String,
}

/// A stream of events.
pub type EventStream = std::pin::Pin<Box<dyn futures::Stream<Item = MailboxEvent> + Send>>;

/// Queues and events.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Whether the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;
    /// Publish durably: returns only once the item is stored. The same
    /// `msg_id` published twice (within the dedupe window, 2 minutes on
    /// JetStream) is stored once.
    async fn publish(&self, queue: Queue, msg_id: &str, payload: Bytes) -> Result<()>;
    /// Open (creating if needed) the durable consumer group `group`.
    async fn consumer(
        &self,
        queue: Queue,
        group: &str,
        config: ConsumerConfig,
    ) -> Result<Box<dyn Consumer>>;
    /// Items waiting (not yet acked) in a queue, for metrics.
    async fn depth(&self, queue: Queue) -> Result<u64>;
    /// Items in the dead-letter queue of `queue`, oldest first (at most `limit`).
    async fn dead_letters(&self, queue: Queue, limit: usize) -> Result<Vec<(String, Bytes)>>;
    /// Publish a mailbox event (best effort).
    async fn publish_event(&self, event: &MailboxEvent) -> Result<()>;
    /// Subscribe to events of one account (`Some`) or all (`None`).
    async fn subscribe_events(&self, account: Option<&str>) -> Result<EventStream>;
}
