//! The conformance suite and the crash test against NATS JetStream (a
//! throwaway `nats-server` with `sync_interval: always`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use posthorn_bus::jetstream::JetStreamBus;
use posthorn_bus::{Bus, ConsumerConfig, Error, Queue, conformance};
use posthorn_test_support::NatsServer;

/// Bounds a wait for something that should happen (returning as soon as it
/// does): only a hang takes this long.
const WAIT: Duration = Duration::from_secs(60);

/// Wait until `queue` is empty (the stream drops an acked item right
/// after confirming the ack, not necessarily before).
async fn expect_empty(bus: &JetStreamBus, queue: Queue) {
    let deadline = Instant::now() + WAIT;
    loop {
        let depth = bus.depth(queue).await.expect("depth");
        if depth == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} still holds {depth} items {WAIT:?} after all were acked",
            queue.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jetstream_conformance() {
    let server = NatsServer::start();
    let bus = JetStreamBus::connect(&server.url())
        .await
        .expect("connect to nats-server");
    conformance::run_all(Arc::new(bus)).await;
}

/// A process killed between publish and ack does not lose the item: the
/// consumer takes it and its connection is dropped without ack; then
/// nats-server itself is killed with SIGKILL and restarted on the same data
/// directory; a new client gets the item again. An item published (PubAck
/// received) but never consumed survives the SIGKILL too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_between_publish_and_ack_loses_nothing() {
    let mut server = NatsServer::start();
    let url = server.url();
    let config = ConsumerConfig {
        ack_wait: Duration::from_secs(2),
        max_deliver: 5,
        max_pending: 1000,
    };
    {
        let bus = JetStreamBus::connect(&url).await.expect("connect");
        bus.publish(Queue::Inbound, "crash-1", Bytes::from_static(b"survive me"))
            .await
            .expect("publish");
        bus.publish(Queue::Outbound, "crash-2", Bytes::from_static(b"me too"))
            .await
            .expect("publish");
        let mut c = bus
            .consumer(Queue::Inbound, "router", config)
            .await
            .expect("consumer");
        let d = c.next(WAIT).await.expect("next").expect("a delivery");
        assert_eq!(d.msg_id, "crash-1");
        assert_eq!(d.attempt, 1);
        drop(d);
        drop(c);
        drop(bus);
    }
    server.0.kill();
    server.0.restart();
    let bus = JetStreamBus::connect(&url).await.expect("reconnect");
    let mut c = bus
        .consumer(Queue::Inbound, "router", config)
        .await
        .expect("consumer");
    let d = c
        .next(WAIT)
        .await
        .expect("next")
        .expect("the un-acked item is delivered again after the restart");
    assert_eq!(d.msg_id, "crash-1");
    assert_eq!(&d.payload[..], b"survive me");
    assert!(d.attempt >= 1);
    d.ack().await.expect("ack");
    let mut c2 = bus
        .consumer(Queue::Outbound, "delivery", config)
        .await
        .expect("consumer");
    let d = c2
        .next(WAIT)
        .await
        .expect("next")
        .expect("the published, unconsumed item survived SIGKILL");
    assert_eq!(d.msg_id, "crash-2");
    assert_eq!(&d.payload[..], b"me too");
    d.ack().await.expect("ack");
    expect_empty(&bus, Queue::Inbound).await;
    expect_empty(&bus, Queue::Outbound).await;
}

/// An unreachable server is `Error::Unavailable` naming the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_server_is_unavailable() {
    let port = posthorn_test_support::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    match JetStreamBus::connect(&url).await {
        Err(e @ Error::Unavailable(_)) => {
            assert!(e.is_transient());
            assert!(
                e.to_string().contains(&url),
                "error does not name the URL: {e}"
            );
        }
        Err(e) => panic!("expected Unavailable, got {e}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}
