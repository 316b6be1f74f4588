//! Blob garbage collection (docs/architecture.md invariant 4).
//!
//! Every `storage.blob_gc_interval_secs` the router lists the blob store and
//! deletes blobs last written more than `storage.blob_gc_grace_secs` ago
//! whose reference count in the metadata store is 0, then forgets their
//! count records. Several routers may run passes at once: deletes are
//! idempotent and every decision re-reads the count.
//!
//! Why the grace period makes this safe: a blob gets its first reference
//! when the router appends the message, normally milliseconds after
//! smtp-ingress wrote it; the grace period (24 h) is far longer than any
//! queue delay short of an outage that long. Every accepted SMTP message
//! carries a unique `Received:` line, so its bytes — and its key — never
//! recur; only an IMAP APPEND of bytes identical to a message unreferenced
//! for a whole grace period, in the same instant as the GC pass deletes it,
//! could lose that APPEND (documented in docs/operations.md).
//!
//! Bodies of queued remote deliveries have no reference (no mailbox holds
//! them) and may wait in the queue for days: they are pinned with the
//! marker [`posthorn_mailbox_store::blob_pin_marker`], set when the router
//! queues them and renewed by delivery on every deferral, and a pinned
//! blob is never collected.

use std::sync::Arc;
use std::time::Duration;

use posthorn_blob_store::BlobStore;
use posthorn_mailbox_store::MetaStore;
use tokio::sync::watch;

/// One pass; returns the number of blobs deleted.
pub async fn pass(
    meta: &Arc<dyn MetaStore>,
    blobs: &BlobStore,
    grace: Duration,
) -> Result<usize, String> {
    let deleted = blobs
        .gc(grace, |key| {
            let meta = meta.clone();
            async move {
                if meta.blob_refs(&key).await? > 0 {
                    return Ok(true);
                }
                // The body of a queued remote delivery (docs/delivery.md).
                meta.has_marker(&posthorn_mailbox_store::blob_pin_marker(&key))
                    .await
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    for key in &deleted {
        let _ = meta.forget_blob(key).await;
    }
    Ok(deleted.len())
}

/// Run passes until shutdown.
pub async fn run(
    meta: Arc<dyn MetaStore>,
    blobs: BlobStore,
    grace: Duration,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    if every.is_zero() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        match pass(&meta, &blobs, grace).await {
            Ok(n) => {
                metrics::counter!("posthorn_blob_gc_deleted_total").increment(n as u64);
                tracing::info!(deleted = n, "blob garbage collection pass done");
            }
            Err(e) => tracing::warn!(error = %e, "blob garbage collection pass failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posthorn_mailbox_store::NewMessage;
    use posthorn_mailbox_store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn collects_only_unreferenced_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("m.redb")).unwrap());
        let blobs = BlobStore::local(&dir.path().join("blobs")).unwrap();
        meta.add_domain("example.test").await.unwrap();
        meta.add_account("alice@example.test", "x").await.unwrap();
        let kept = blobs
            .put(bytes::Bytes::from_static(b"Subject: kept\r\n\r\nx\r\n"))
            .await
            .unwrap();
        let orphan = blobs
            .put(bytes::Bytes::from_static(b"Subject: orphan\r\n\r\nx\r\n"))
            .await
            .unwrap();
        meta.append(
            "alice@example.test",
            "INBOX",
            NewMessage {
                dedupe_key: None,
                flags: vec![],
                internal_date: 0,
                size: 20,
                blob_key: kept.clone(),
                envelope: None,
                bodystructure: None,
                header_prefix: String::new(),
            },
        )
        .await
        .unwrap();
        // Within the grace period nothing goes.
        assert_eq!(
            pass(&meta, &blobs, Duration::from_secs(3600))
                .await
                .unwrap(),
            0
        );
        // A pinned blob (queued for remote delivery) is kept.
        let queued = blobs
            .put(bytes::Bytes::from_static(b"Subject: queued\r\n\r\nx\r\n"))
            .await
            .unwrap();
        meta.set_marker(
            &posthorn_mailbox_store::blob_pin_marker(&queued),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
        assert_eq!(pass(&meta, &blobs, Duration::ZERO).await.unwrap(), 1);
        assert!(blobs.exists(&kept).await.unwrap());
        assert!(blobs.exists(&queued).await.unwrap());
        assert!(!blobs.exists(&orphan).await.unwrap());
        // Expunged: its count drops to 0 and the next pass collects it.
        meta.expunge("alice@example.test", "INBOX", &[1])
            .await
            .unwrap();
        assert_eq!(pass(&meta, &blobs, Duration::ZERO).await.unwrap(), 1);
        assert!(!blobs.exists(&kept).await.unwrap());
    }
}
