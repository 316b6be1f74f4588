//! Putting remote deliveries on the outbound queue, with their entry in
//! the queue index beside it (docs/delivery.md, "The queue index").

use posthorn_bus::Queue;
use posthorn_mailbox_store::queue::{self, QueueEntry, QueueState};
use posthorn_proto::common::v1::OutboundItem;
use prost::Message;

use crate::Backends;

/// The queue id of the delivery of message `message_id` to `recipient`:
/// the item's id on the stream and its key in the index.
pub fn item_id(message_id: &str, recipient: &str) -> String {
    format!("{message_id}/{recipient}")
}

/// The index entry of a new item. The stored copy of the item leaves out
/// the envelope's recipient list: the item names its own recipient, and
/// a message to many recipients would otherwise be stored once per
/// recipient.
pub fn entry(item: &OutboundItem) -> QueueEntry {
    let env = item.envelope.clone().unwrap_or_default();
    let rcpt = item.recipient.clone().unwrap_or_default().address;
    let mut stored = item.clone();
    if let Some(e) = stored.envelope.as_mut() {
        e.rcpt_to.clear();
    }
    stored.generation = 0;
    QueueEntry {
        id: item_id(&env.id, &rcpt),
        message_id: env.id.clone(),
        sender: env.mail_from.clone(),
        domain: rcpt
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .unwrap_or_default(),
        recipient: rcpt,
        size: env.size,
        received_at: env.received_at,
        state: QueueState::Queued,
        bounce_on_delete: false,
        next_attempt: 0,
        attempts: 0,
        last_error: String::new(),
        generation: item.generation,
        copy_published: true,
        item: stored.encode_to_vec(),
    }
}

/// Publish `item` on the outbound queue, then add its index entry. The
/// publish decides: an index entry that cannot be written is logged, and
/// delivery writes it when it takes the item. The item goes without the
/// envelope's recipient list (it names its own recipient): a message to
/// 1,000 recipients would otherwise put the list on the queue 1,000 times.
pub async fn enqueue(backends: &Backends, item: &OutboundItem) -> posthorn_bus::Result<()> {
    let entry = entry(item);
    backends
        .bus
        .publish(Queue::Outbound, &entry.id, entry.item.clone().into())
        .await?;
    let id = entry.id.clone();
    if let Err(e) = queue::add(backends.meta.as_ref(), entry).await {
        tracing::warn!(id = %id, error = %e, "queue index entry not written; delivery will add it");
    }
    Ok(())
}

/// [`enqueue`] every item, 64 at a time: the queue and the index
/// group-commit concurrent writes, so the remote recipients of one message
/// share fsyncs instead of waiting for one each. The first error is
/// returned (after the others finished); what was published stays, and a
/// retry publishes the rest (publishes dedupe by id, index adds are
/// create-only).
pub async fn enqueue_all(backends: &Backends, items: &[OutboundItem]) -> posthorn_bus::Result<()> {
    let mut first_error = None;
    for chunk in items.chunks(64) {
        let results = futures::future::join_all(chunk.iter().map(|i| enqueue(backends, i))).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Publish a copy of a queued item with generation `generation`, so it is
/// attempted now; its stream id is `<id>#<generation>`. The caller has
/// recorded the generation in the entry and then sets `copy_published`,
/// which makes older copies void.
pub async fn publish_copy(
    backends: &Backends,
    entry: &QueueEntry,
    generation: u32,
) -> Result<(), String> {
    let mut item = OutboundItem::decode(entry.item.as_slice())
        .map_err(|e| format!("queue entry {}: bad item: {e}", entry.id))?;
    item.generation = generation;
    backends
        .bus
        .publish(
            Queue::Outbound,
            &format!("{}#{generation}", entry.id),
            item.encode_to_vec().into(),
        )
        .await
        .map_err(|e| e.to_string())
}
