//! The queue admin gRPC API (`posthorn.queue.v1`, `posthorn queue`): list
//! and show from the queue index; flush, release and delete publish a new
//! copy of the item with the next generation and then raise the entry's
//! generation, so the copy is attempted now and older copies are dropped
//! (docs/delivery.md, "Queue admin").

use posthorn_backends::{Backends, outbound};
use posthorn_mailbox_store::queue::{self, QueueEntry, QueueState, Step};
use posthorn_proto::queue::v1::queue_service_server::QueueService;
use posthorn_proto::queue::v1::{
    DeleteRequest, FlushRequest, FlushResponse, ItemRequest, ListRequest, ListResponse, QueueItem,
};
use std::time::Duration;

use tokio::sync::watch;
use tonic::{Request, Response, Status};

/// Entries read per page while filtering or flushing.
const PAGE: u64 = 1000;

/// The service.
pub struct QueueAdmin {
    backends: Backends,
}

impl QueueAdmin {
    /// Over these backends.
    pub fn new(backends: Backends) -> Self {
        Self { backends }
    }

    fn meta(&self) -> &dyn posthorn_mailbox_store::MetaStore {
        self.backends.meta.as_ref()
    }

    async fn entry(&self, id: &str) -> Result<QueueEntry, Status> {
        queue::get(self.meta(), id)
            .await
            .map_err(store_err)?
            .ok_or_else(|| Status::not_found(format!("no queued item {id}")))
    }

    /// If `wanted` accepts the entry of `id`: apply `change` and record the
    /// next generation (copy not yet published), publish a copy with it,
    /// then mark the copy published. Until that last write older copies
    /// stay live, so a crash in between loses nothing (docs/delivery.md,
    /// "Queue admin"). Returns the entry as changed, or `None` if `wanted`
    /// refused.
    async fn republish(
        &self,
        id: &str,
        wanted: impl Fn(&QueueEntry) -> bool,
        change: impl Fn(&mut QueueEntry),
    ) -> Result<Option<QueueEntry>, Status> {
        let changed = queue::modify(self.meta(), id, |cur| match cur {
            Some(mut c) if c.state != QueueState::Done && wanted(&c) => {
                c.generation += 1;
                c.copy_published = false;
                change(&mut c);
                Step::Write(Box::new(c.clone()), Some(c))
            }
            _ => Step::Keep(None),
        })
        .await
        .map_err(store_err)?;
        let Some(e) = changed else {
            return Ok(None);
        };
        outbound::publish_copy(&self.backends, &e, e.generation)
            .await
            .map_err(Status::unavailable)?;
        queue::modify(self.meta(), id, |cur| match cur {
            Some(mut c) if c.generation == e.generation && !c.copy_published => {
                c.copy_published = true;
                Step::Write(Box::new(c), ())
            }
            _ => Step::Keep(()),
        })
        .await
        .map_err(store_err)?;
        Ok(Some(e))
    }

    /// Flush one entry if it is deferred; whether it was.
    async fn flush_one(&self, id: &str) -> Result<bool, Status> {
        let deferred = |e: &QueueEntry| e.state == QueueState::Deferred;
        let done = self
            .republish(id, deferred, |e| {
                e.state = QueueState::Queued;
                e.next_attempt = 0;
            })
            .await?;
        Ok(done.is_some())
    }
}

/// Update the queue gauges every `every` until shutdown (zero: never):
/// `posthorn_queue_items{state}` and `posthorn_queue_oldest_age_seconds`.
/// Counting is a range count per state in the index, not a scan.
pub async fn gauges(backends: Backends, every: Duration, mut shutdown: watch::Receiver<bool>) {
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    'ticks: loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let mut counts = Vec::new();
        for state in QueueState::LISTED {
            match queue::count(backends.meta.as_ref(), state).await {
                Ok(c) => counts.push((state, c)),
                Err(e) => {
                    tracing::debug!(error = %e, "queue gauges not updated");
                    continue 'ticks;
                }
            }
        }
        let now = chrono::Utc::now().timestamp();
        let mut oldest = None::<i64>;
        for (state, (n, first)) in counts {
            metrics::gauge!("posthorn_queue_items", "state" => state.as_str()).set(n as f64);
            oldest = match (oldest, first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        let age = oldest.map_or(0, |o| (now - o).max(0));
        metrics::gauge!("posthorn_queue_oldest_age_seconds").set(age as f64);
    }
}

fn store_err(e: posthorn_mailbox_store::Error) -> Status {
    if e.is_transient() {
        Status::unavailable(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

fn item(e: QueueEntry) -> QueueItem {
    QueueItem {
        id: e.id,
        message_id: e.message_id,
        sender: e.sender,
        recipient: e.recipient,
        domain: e.domain,
        size: e.size,
        received_at: e.received_at,
        state: e.state.as_str().into(),
        next_attempt: e.next_attempt,
        attempts: e.attempts,
        last_error: e.last_error,
    }
}

fn matches(e: &QueueEntry, domain: &str, deferred: bool) -> bool {
    (domain.is_empty() || e.domain.eq_ignore_ascii_case(domain.trim_end_matches('.')))
        && (!deferred || e.state == QueueState::Deferred)
}

#[tonic::async_trait]
impl QueueService for QueueAdmin {
    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(10_000)
        } as usize;
        let (total, _) = queue::count_all(self.meta()).await.map_err(store_err)?;
        let state = r.deferred.then_some(QueueState::Deferred);
        let mut items = Vec::new();
        let mut offset = r.offset;
        let mut next_offset = 0;
        'pages: loop {
            let page = queue::list(self.meta(), state, offset, PAGE)
                .await
                .map_err(store_err)?;
            let n = page.len() as u64;
            for (i, e) in page.into_iter().enumerate() {
                if items.len() == limit {
                    next_offset = offset + i as u64;
                    break 'pages;
                }
                if matches(&e, &r.domain, r.deferred) {
                    items.push(item(e));
                }
            }
            offset += n;
            if n < PAGE {
                break;
            }
        }
        Ok(Response::new(ListResponse {
            items,
            next_offset,
            total,
        }))
    }

    async fn show(&self, req: Request<ItemRequest>) -> Result<Response<QueueItem>, Status> {
        Ok(Response::new(item(self.entry(&req.into_inner().id).await?)))
    }

    async fn flush(&self, req: Request<FlushRequest>) -> Result<Response<FlushResponse>, Status> {
        let r = req.into_inner();
        if !r.id.is_empty() {
            let e = self.entry(&r.id).await?;
            if e.state != QueueState::Deferred {
                return Err(Status::failed_precondition(format!(
                    "{} is {}, not deferred",
                    r.id,
                    e.state.as_str()
                )));
            }
            let flushed = u64::from(self.flush_one(&r.id).await?);
            return Ok(Response::new(FlushResponse { flushed }));
        }
        // Collect first, then flush: flushing rewrites entries while the
        // listing is read.
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let page = queue::list(self.meta(), Some(QueueState::Deferred), offset, PAGE)
                .await
                .map_err(store_err)?;
            let n = page.len() as u64;
            ids.extend(
                page.into_iter()
                    .filter(|e| matches(e, &r.domain, true))
                    .map(|e| e.id),
            );
            offset += n;
            if n < PAGE {
                break;
            }
        }
        let mut flushed = 0;
        for id in ids {
            match self.flush_one(&id).await {
                Ok(true) => flushed += 1,
                Ok(false) => {}
                // Settled meanwhile.
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(s),
            }
        }
        tracing::info!(domain = %r.domain, flushed, "queue flushed");
        Ok(Response::new(FlushResponse { flushed }))
    }

    async fn hold(&self, req: Request<ItemRequest>) -> Result<Response<QueueItem>, Status> {
        let id = req.into_inner().id;
        let held = queue::modify(self.meta(), &id, |cur| match cur {
            Some(mut e) if e.state != QueueState::Done && e.state != QueueState::Deleting => {
                e.state = QueueState::Held;
                e.next_attempt = 0;
                Step::Write(Box::new(e.clone()), Some(e))
            }
            _ => Step::Keep(None),
        })
        .await
        .map_err(store_err)?;
        let e = held.ok_or_else(|| Status::not_found(format!("no queued item {id} to hold")))?;
        tracing::info!(%id, "queue item held");
        Ok(Response::new(item(e)))
    }

    async fn release(&self, req: Request<ItemRequest>) -> Result<Response<QueueItem>, Status> {
        let id = req.into_inner().id;
        let held = |e: &QueueEntry| e.state == QueueState::Held;
        let e = self
            .republish(&id, held, |e| {
                e.state = QueueState::Queued;
                e.next_attempt = 0;
            })
            .await?
            .ok_or_else(|| Status::failed_precondition(format!("{id} is not held")))?;
        tracing::info!(%id, "queue item released");
        Ok(Response::new(item(e)))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<QueueItem>, Status> {
        let r = req.into_inner();
        let any = |e: &QueueEntry| e.state != QueueState::Deleting;
        let e = self
            .republish(&r.id, any, |e| {
                e.state = QueueState::Deleting;
                e.bounce_on_delete = r.bounce;
            })
            .await?
            .ok_or_else(|| Status::failed_precondition(format!("{} is being deleted", r.id)))?;
        tracing::info!(id = %r.id, bounce = r.bounce, "queue item deleted");
        Ok(Response::new(item(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let e = outbound::entry(&posthorn_proto::common::v1::OutboundItem {
            envelope: Some(posthorn_proto::common::v1::Envelope {
                id: "Q1".into(),
                ..Default::default()
            }),
            recipient: Some(posthorn_proto::common::v1::Recipient {
                address: "bob@Remote.Test".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(e.id, "Q1/bob@Remote.Test");
        assert!(matches(&e, "", false));
        assert!(matches(&e, "remote.test.", false));
        assert!(!matches(&e, "other.test", false));
        assert!(!matches(&e, "", true), "queued is not deferred");
    }
}
