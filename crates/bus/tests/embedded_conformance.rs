//! The conformance suite and the crash test against the embedded bus.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use posthorn_bus::embedded::EmbeddedBus;
use posthorn_bus::{Bus, Consumer, ConsumerConfig, Delivery, Queue, conformance};

/// Long enough that no lease expires during a test.
const CONFIG: ConsumerConfig = ConsumerConfig {
    ack_wait: Duration::from_secs(30),
    max_deliver: 5,
    max_pending: 1000,
};

/// A consumer of `queue` with [`CONFIG`].
async fn consumer(bus: &EmbeddedBus, queue: Queue, name: &str) -> Box<dyn Consumer> {
    bus.consumer(queue, name, CONFIG).await.expect("consumer")
}

/// Bounds a wait for something that should happen (returning as soon as it
/// does): only a hang takes this long.
const WAIT: Duration = Duration::from_secs(60);

/// The next delivery, which must come (within [`WAIT`]).
async fn next(c: &mut Box<dyn Consumer>, what: &str) -> Delivery {
    c.next(WAIT)
        .await
        .expect("next")
        .unwrap_or_else(|| panic!("no delivery within {WAIT:?}: expected {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = EmbeddedBus::open(&dir.path().join("bus.redb")).expect("open embedded bus");
    conformance::run_all(Arc::new(bus)).await;
}

/// A process killed between publish and ack does not lose the item: the
/// consumer takes it and "dies" (the bus is dropped without ack, the file
/// closed); reopening the file delivers it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_between_publish_and_ack_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bus.redb");
    {
        let bus = EmbeddedBus::open(&path).expect("open");
        bus.publish(Queue::Inbound, "crash-1", Bytes::from_static(b"survive me"))
            .await
            .expect("publish");
        // Published but never consumed: must survive too.
        bus.publish(Queue::Outbound, "crash-2", Bytes::from_static(b"me too"))
            .await
            .expect("publish");
        let mut c = consumer(&bus, Queue::Inbound, "router").await;
        let d = next(&mut c, "a delivery").await;
        assert_eq!(d.msg_id, "crash-1");
        assert_eq!(d.attempt, 1);
        // Drop everything without ack (the 30 s ack wait has not passed).
        drop(d);
        drop(c);
        drop(bus);
    }
    let bus = EmbeddedBus::open(&path).expect("reopen the same file");
    assert_eq!(bus.depth(Queue::Inbound).await.expect("depth"), 1);
    assert_eq!(bus.depth(Queue::Outbound).await.expect("depth"), 1);
    let mut c = consumer(&bus, Queue::Inbound, "router").await;
    let d = next(
        &mut c,
        "the un-acked item is delivered again after the restart",
    )
    .await;
    assert_eq!(d.msg_id, "crash-1");
    assert_eq!(&d.payload[..], b"survive me");
    assert_eq!(d.attempt, 2, "the delivery count is persisted");
    d.ack().await.expect("ack");
    let mut c2 = consumer(&bus, Queue::Outbound, "delivery").await;
    let d = next(&mut c2, "the unconsumed item survived").await;
    assert_eq!(d.msg_id, "crash-2");
    assert_eq!(d.attempt, 1);
    d.ack().await.expect("ack");
    assert_eq!(bus.depth(Queue::Inbound).await.expect("depth"), 0);
    assert_eq!(bus.depth(Queue::Outbound).await.expect("depth"), 0);
}

/// A waiting consumer wakes on publish, not only by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn next_wakes_promptly_on_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Arc::new(EmbeddedBus::open(&dir.path().join("bus.redb")).expect("open"));
    let mut c = bus
        .consumer(Queue::Inbound, "router", ConsumerConfig::default())
        .await
        .expect("consumer");
    let waiter = tokio::spawn(async move {
        let d = c.next(WAIT).await.expect("next");
        d.map(|d| d.msg_id)
    });
    // Give the waiter time to start waiting (if it has not, it finds the
    // item at once: the test cannot fail because of that).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_pub = std::time::Instant::now();
    bus.publish(Queue::Inbound, "wake-1", Bytes::from_static(b"x"))
        .await
        .expect("publish");
    let id = waiter.await.expect("task");
    assert_eq!(id.as_deref(), Some("wake-1"));
    // Woken by the publish, not at the end of its 60 s wait (15 s: generous
    // for a busy machine, still tells the two apart).
    let waited = t_pub.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the waiting consumer took {waited:?} to get the item published"
    );
}

/// Acks are written by a later commit (no transaction of their own): an
/// acked item is gone at once for consumers and `depth`, and stays gone
/// after the file is closed and reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_are_kept_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bus.redb");
    {
        let bus = EmbeddedBus::open(&path).expect("open");
        for i in 0..20 {
            bus.publish(Queue::Inbound, &format!("m{i}"), Bytes::from_static(b"x"))
                .await
                .expect("publish");
        }
        let mut c = consumer(&bus, Queue::Inbound, "router").await;
        for i in 0..15 {
            let d = next(&mut c, "a delivery").await;
            assert_eq!(d.msg_id, format!("m{i}"));
            d.ack().await.expect("ack");
        }
        assert_eq!(bus.depth(Queue::Inbound).await.expect("depth"), 5);
    }
    let bus = EmbeddedBus::open(&path).expect("reopen");
    assert_eq!(bus.depth(Queue::Inbound).await.expect("depth"), 5);
    let mut c = consumer(&bus, Queue::Inbound, "router").await;
    let d = next(&mut c, "a delivery").await;
    assert_eq!(d.msg_id, "m15", "acked items are not handed out again");
}
