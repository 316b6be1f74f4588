//! JetStream bus: work-queue streams, durable pull consumers with explicit
//! ack, a dead-letter stream, and core NATS subjects for events.
//!
//! # Streams
//!
//! | stream | subjects | retention |
//! |---|---|---|
//! | `MAIL_INBOUND` | `mail.inbound` | work queue |
//! | `MAIL_OUTBOUND` | `mail.outbound` | work queue |
//! | `MAIL_DEAD` | `mail.dead.inbound`, `mail.dead.outbound` (`mail.dead.>`) | limits (kept until an operator purges) |
//!
//! All use file storage and a 2-minute duplicate window; they are created
//! at [`JetStreamBus::connect`] if missing (an existing stream is used as
//! is). A work-queue stream allows one unfiltered consumer, so each queue has
//! exactly one consumer group (router for inbound, delivery for outbound);
//! several processes using that group share the work.
//!
//! # Durability
//!
//! [`Bus::publish`] sends the item with `Nats-Msg-Id: <msg_id>` and returns
//! only after the stream's PubAck. The PubAck means "on disk" only because
//! the server runs with `jetstream { sync_interval: always }` (docs/architecture.md
//! invariant 7; the test harness and chart configure it) or with R3 streams
//! across failure domains; with the server default (sync every 2 minutes)
//! acknowledged items can be lost on power failure. [`Delivery::ack`] uses a
//! "double ack": it returns after the server confirmed the ack.
//!
//! # Redelivery and dead letters
//!
//! The durable consumer is created (or updated: the code's config wins) with
//! explicit ack, the group's `ack_wait`, and *unlimited* server-side
//! `max_deliver`: when a delivery arrives with `delivered > max_deliver`,
//! [`Consumer::next`] copies it to `MAIL_DEAD` (awaiting the PubAck) and then
//! terminates it instead of returning it. The server limit is deliberately
//! not used: a server that stops at `max_deliver` only emits an advisory and
//! keeps the item in the work queue forever, and if our copy to `MAIL_DEAD`
//! failed at the last allowed delivery the item would be stuck; unlimited,
//! it is simply redelivered after the ack wait and the move is retried.
//! [`Delivery::term`] also copies to `MAIL_DEAD` first, then terms. The dead-letter copy carries
//! the original id in the `Posthorn-Msg-Id` header and dedupes on
//! `dead.<queue>.<stream seq>`, so a term repeated after a lost ack is stored
//! once.
//!
//! # Events
//!
//! Mailbox events are published on core NATS (no persistence) on subject
//! `mailbox.changed.<token>`, where `<token>` is the lower-case hex encoding
//! of the UTF-8 bytes of the account address (subject-safe whatever the
//! address contains: no `.`, `*`, `>` or whitespace). The payload is the
//! JSON of [`MailboxEvent`]. `subscribe_events(None)` subscribes to
//! `mailbox.changed.*`.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
    message::PublishMessage as Publish,
    stream::{self, RetentionPolicy, StorageType},
};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    Acker, Bus, Consumer, ConsumerConfig, Delivery, Error, EventStream, MailboxEvent, Queue, Result,
};

/// Stream of the inbound queue.
pub const STREAM_INBOUND: &str = "MAIL_INBOUND";
/// Stream of the outbound queue.
pub const STREAM_OUTBOUND: &str = "MAIL_OUTBOUND";
/// Dead-letter stream of both queues.
pub const STREAM_DEAD: &str = "MAIL_DEAD";
/// Dedupe window of all streams.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Header of a dead letter carrying the original `msg_id`.
pub const HEADER_MSG_ID: &str = "Posthorn-Msg-Id";
/// Prefix of event subjects.
pub const EVENT_PREFIX: &str = "mailbox.changed";

/// Timeout of connecting and of JetStream API requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest pull request expiry we send to the server.
const MIN_EXPIRES: Duration = Duration::from_millis(50);

fn stream_name(queue: Queue) -> &'static str {
    match queue {
        Queue::Inbound => STREAM_INBOUND,
        Queue::Outbound => STREAM_OUTBOUND,
    }
}

fn subject(queue: Queue) -> String {
    format!("mail.{}", queue.name())
}

fn dead_subject(queue: Queue) -> String {
    format!("mail.dead.{}", queue.name())
}

/// Subject-safe token of an account: lower-case hex of its UTF-8 bytes.
pub fn account_token(account: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(account.len() * 2);
    for b in account.bytes() {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

/// Event subject of an account (`mailbox.changed.<hex>`).
pub fn event_subject(account: &str) -> String {
    format!("{EVENT_PREFIX}.{}", account_token(account))
}

/// The JetStream bus (see the module docs).
#[derive(Clone)]
pub struct JetStreamBus {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("url", &self.url)
            .finish()
    }
}

impl JetStreamBus {
    /// Connect to the NATS server at `url` (e.g. `nats://host:4222`) and
    /// create the streams if missing. Fails with [`Error::Unavailable`] if
    /// the server cannot be reached or JetStream does not answer.
    pub async fn connect(url: &str) -> Result<Self> {
        let opts = async_nats::ConnectOptions::new()
            .name("posthorn")
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT));
        let client = async_nats::connect_with_options(url, opts)
            .await
            .map_err(|e| Error::Unavailable(format!("NATS at {url}: {e}")))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(REQUEST_TIMEOUT)
            .build(client.clone());
        let bus = JetStreamBus {
            url: url.to_string(),
            client,
            js,
        };
        for queue in [Queue::Inbound, Queue::Outbound] {
            bus.ensure_stream(stream::Config {
                name: stream_name(queue).to_string(),
                subjects: vec![subject(queue)],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await?;
        }
        bus.ensure_stream(stream::Config {
            name: STREAM_DEAD.to_string(),
            subjects: vec!["mail.dead.>".to_string()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await?;
        Ok(bus)
    }

    /// The URL it connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("NATS at {}: {what}: {e}", self.url))
    }

    async fn ensure_stream(&self, config: stream::Config) -> Result<()> {
        let name = config.name.clone();
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| self.unavailable(&format!("create stream {name}"), e))?;
        Ok(())
    }
}

/// Publish a copy of a delivery to the dead-letter stream (awaiting the
/// PubAck).
async fn publish_dead(
    js: &jetstream::Context,
    url: &str,
    queue: Queue,
    stream_seq: u64,
    msg_id: &str,
    payload: Bytes,
) -> Result<()> {
    let unavailable = |e: &dyn std::fmt::Display| {
        Error::Unavailable(format!("NATS at {url}: dead-letter {msg_id}: {e}"))
    };
    let publish = Publish::build()
        .payload(payload)
        .message_id(format!("dead.{}.{stream_seq}", queue.name()))
        .header(HEADER_MSG_ID, msg_id);
    js.send_publish(dead_subject(queue), publish)
        .await
        .map_err(|e| unavailable(&e))?
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(())
}

#[async_trait]
impl Bus for JetStreamBus {
    async fn ping(&self) -> Result<()> {
        self.js
            .query_account()
            .await
            .map_err(|e| self.unavailable("ping", e))?;
        Ok(())
    }

    async fn publish(&self, queue: Queue, msg_id: &str, payload: Bytes) -> Result<()> {
        // While disconnected, async-nats would buffer the publish and send it
        // after reconnecting: the caller would have answered "failed" (SMTP
        // 451) by then and the item would arrive later by surprise. Refuse
        // at once instead. (A disconnect in the instant between this check
        // and the write is the remaining window; docs/operations.md.)
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Error::Unavailable(format!(
                "NATS at {}: publish {msg_id}: not connected",
                self.url
            )));
        }
        let publish = Publish::build().payload(payload).message_id(msg_id);
        let ack = self
            .js
            .send_publish(subject(queue), publish)
            .await
            .map_err(|e| self.unavailable(&format!("publish {msg_id}"), e))?
            .await
            .map_err(|e| self.unavailable(&format!("publish {msg_id}"), e))?;
        if ack.duplicate {
            tracing::debug!(
                queue = queue.name(),
                msg_id,
                "duplicate publish ignored by JetStream"
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
        if group.is_empty()
            || group
                .chars()
                .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control())
        {
            return Err(Error::Other(format!(
                "invalid consumer group name {group:?} (no '.', '*', '>' or whitespace)"
            )));
        }
        if config.max_deliver == 0 {
            return Err(Error::Other("max_deliver must be at least 1".into()));
        }
        let name = stream_name(queue);
        let stream = self
            .js
            .get_stream_no_info(name)
            .await
            .map_err(|e| self.unavailable(&format!("stream {name}"), e))?;
        // Create or update: the code's config is the truth.
        let consumer: PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(group.to_string()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                // Unlimited on the server: `next` dead-letters deliveries
                // past `config.max_deliver` itself (see the module docs).
                max_deliver: -1,
                max_ack_pending: if config.max_pending == 0 {
                    -1
                } else {
                    i64::from(config.max_pending)
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.unavailable(&format!("consumer {group} on {name}"), e))?;
        Ok(Box::new(JetStreamConsumer {
            url: self.url.clone(),
            js: self.js.clone(),
            consumer,
            queue,
            config,
        }))
    }

    async fn depth(&self, queue: Queue) -> Result<u64> {
        let name = stream_name(queue);
        let stream = self
            .js
            .get_stream_no_info(name)
            .await
            .map_err(|e| self.unavailable(&format!("stream {name}"), e))?;
        let info = stream
            .get_info()
            .await
            .map_err(|e| self.unavailable(&format!("stream info {name}"), e))?;
        Ok(info.state.messages)
    }

    async fn dead_letters(&self, queue: Queue, limit: usize) -> Result<Vec<(String, Bytes)>> {
        let stream = self
            .js
            .get_stream_no_info(STREAM_DEAD)
            .await
            .map_err(|e| self.unavailable(&format!("stream {STREAM_DEAD}"), e))?;
        let subj = dead_subject(queue);
        let mut out = Vec::new();
        let mut seq = 1u64;
        while out.len() < limit {
            let msg = match stream
                .raw_message_builder()
                .sequence(seq)
                .next_by_subject(subj.clone())
                .send()
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(self.unavailable(&format!("read {STREAM_DEAD}"), e)),
            };
            seq = msg.sequence + 1;
            let msg_id = msg
                .headers
                .get(HEADER_MSG_ID)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push((msg_id, msg.payload));
        }
        Ok(out)
    }

    async fn publish_event(&self, event: &MailboxEvent) -> Result<()> {
        let payload = serde_json::to_vec(event)
            .map_err(|e| Error::Other(format!("encode mailbox event: {e}")))?;
        self.client
            .publish(event_subject(&event.account), payload.into())
            .await
            .map_err(|e| self.unavailable("publish event", e))?;
        Ok(())
    }

    async fn subscribe_events(&self, account: Option<&str>) -> Result<EventStream> {
        let subj = match account {
            Some(a) => event_subject(a),
            None => format!("{EVENT_PREFIX}.*"),
        };
        let sub = self
            .client
            .subscribe(subj)
            .await
            .map_err(|e| self.unavailable("subscribe events", e))?;
        let account = account.map(str::to_string);
        let stream = sub.filter_map(move |msg| {
            let ev = serde_json::from_slice::<MailboxEvent>(&msg.payload).ok();
            let keep = ev.filter(|ev| account.as_deref().is_none_or(|a| a == ev.account));
            futures::future::ready(keep)
        });
        Ok(Box::pin(stream))
    }
}

struct JetStreamConsumer {
    url: String,
    js: jetstream::Context,
    consumer: PullConsumer,
    queue: Queue,
    config: ConsumerConfig,
}

impl JetStreamConsumer {
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!("NATS at {}: {what}: {e}", self.url))
    }
}

fn header_str(headers: Option<&HeaderMap>, name: &str) -> Option<String> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

#[async_trait]
impl Consumer for JetStreamConsumer {
    async fn next(&mut self, timeout: Duration) -> Result<Option<Delivery>> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // One pull request for one message; we read the batch until the
            // server answers (message or 408 on expiry), so no message is
            // sent to an abandoned inbox unless this future is dropped.
            let mut batch = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(remaining.max(MIN_EXPIRES))
                .messages()
                .await
                .map_err(|e| self.unavailable("pull", e))?;
            let msg = match batch.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(self.unavailable("pull", e)),
                None => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    continue;
                }
            };
            let (stream_seq, delivered, stored_at_ms) = {
                let info = msg
                    .info()
                    .map_err(|e| Error::Other(format!("not a JetStream message: {e}")))?;
                let ms = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
                (info.stream_sequence, info.delivered, ms)
            };
            let attempt = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
            let (message, acker) = msg.split();
            let msg_id = header_str(message.headers.as_ref(), "Nats-Msg-Id")
                .unwrap_or_else(|| format!("seq-{stream_seq}"));
            if attempt > self.config.max_deliver {
                tracing::warn!(
                    queue = self.queue.name(),
                    %msg_id,
                    attempt,
                    "max_deliver exceeded, moving to dead letters"
                );
                publish_dead(
                    &self.js,
                    &self.url,
                    self.queue,
                    stream_seq,
                    &msg_id,
                    message.payload,
                )
                .await?;
                acker
                    .double_ack_with(AckKind::Term)
                    .await
                    .map_err(|e| self.unavailable(&format!("term {msg_id}"), e))?;
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            }
            return Ok(Some(Delivery {
                msg_id: msg_id.clone(),
                payload: message.payload.clone(),
                attempt,
                stored_at_ms: Some(stored_at_ms),
                acker: Box::new(JetStreamAcker {
                    url: self.url.clone(),
                    js: self.js.clone(),
                    acker,
                    queue: self.queue,
                    stream_seq,
                    msg_id,
                    payload: message.payload,
                }),
            }));
        }
    }
}

struct JetStreamAcker {
    url: String,
    js: jetstream::Context,
    acker: jetstream::message::Acker,
    queue: Queue,
    stream_seq: u64,
    msg_id: String,
    payload: Bytes,
}

impl JetStreamAcker {
    async fn send(&self, kind: AckKind, what: &str) -> Result<()> {
        self.acker.double_ack_with(kind).await.map_err(|e| {
            Error::Unavailable(format!("NATS at {}: {what} {}: {e}", self.url, self.msg_id))
        })
    }
}

#[async_trait]
impl Acker for JetStreamAcker {
    async fn ack(&self) -> Result<()> {
        self.send(AckKind::Ack, "ack").await
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<()> {
        self.send(AckKind::Nak(delay.filter(|d| !d.is_zero())), "nak")
            .await
    }

    async fn term(&self) -> Result<()> {
        publish_dead(
            &self.js,
            &self.url,
            self.queue,
            self.stream_seq,
            &self.msg_id,
            self.payload.clone(),
        )
        .await?;
        self.send(AckKind::Term, "term").await
    }

    async fn in_progress(&self) -> Result<()> {
        self.send(AckKind::Progress, "in_progress").await
    }
}
