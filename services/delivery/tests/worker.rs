//! The worker against embedded backends and a scripted SMTP peer, without
//! the resolver (recipients at address literals, `bob@[127.0.0.2]`): a
//! redelivered item is not sent twice, a rejection bounces once, an
//! expired deferral bounces with "lifetime exceeded".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use posthorn_backends::Backends;
use posthorn_bus::{Acker, ConsumerConfig, Delivery, Queue};
use posthorn_delivery::client::Timeouts;
use posthorn_delivery::retry::Schedule;
use posthorn_delivery::worker::{self, Ctx};
use posthorn_proto::common::v1::{Envelope, OutboundItem, Recipient};
use posthorn_proto::resolver::v1::resolver_service_client::ResolverServiceClient;
use posthorn_test_support::{SmtpSink, free_port};
use prost::Message;

/// Records what the worker did with an item.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl Acker for Log {
    async fn ack(&self) -> posthorn_bus::Result<()> {
        self.0.lock().unwrap().push("ack".into());
        Ok(())
    }
    async fn nak(&self, d: Option<Duration>) -> posthorn_bus::Result<()> {
        self.0.lock().unwrap().push(format!("nak {d:?}"));
        Ok(())
    }
    async fn term(&self) -> posthorn_bus::Result<()> {
        self.0.lock().unwrap().push("term".into());
        Ok(())
    }
    async fn in_progress(&self) -> posthorn_bus::Result<()> {
        Ok(())
    }
}

impl Log {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn ctx(backends: &Backends, port: u16) -> Ctx {
    let s = Duration::from_secs;
    // Never asked: every recipient here is an address literal.
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    Ctx {
        backends: backends.clone(),
        resolver: ResolverServiceClient::new(channel),
        hostname: "mx.example.test".into(),
        port,
        timeouts: Timeouts {
            connect: s(5),
            greeting: s(30),
            mail: s(30),
            rcpt: s(30),
            data_init: s(30),
            data_block: s(30),
            data_end: s(30),
        },
        schedule: Schedule {
            first: s(300),
            max: s(3600),
            lifetime: s(432_000),
        },
        ack_wait: s(60),
        routes: Default::default(),
        delay_warning: Duration::ZERO,
        destinations: posthorn_delivery::destinations::Destinations::new(0, Duration::ZERO),
    }
}

async fn item(b: &Backends, id: &str, rcpt: &str, received_at: i64) -> OutboundItem {
    let body = b"From: alice@example.test\r\nSubject: hi\r\n\r\nbody\r\n";
    let key = b.blobs.put(bytes::Bytes::from_static(body)).await.unwrap();
    let r = Recipient {
        address: rcpt.into(),
        ..Default::default()
    };
    OutboundItem {
        envelope: Some(Envelope {
            id: id.into(),
            mail_from: "alice@example.test".into(),
            rcpt_to: vec![r.clone()],
            blob_key: key,
            size: body.len() as u64,
            received_at,
            ..Default::default()
        }),
        recipient: Some(r),
        expanded_from: String::new(),
        generation: 0,
    }
}

fn delivery(item: &OutboundItem, attempt: u32, log: &Log) -> Delivery {
    Delivery {
        msg_id: "x".into(),
        payload: item.encode_to_vec().into(),
        attempt,
        stored_at_ms: None,
        acker: Box::new(log.clone()),
    }
}

/// The DSNs published on the inbound queue (the router's input).
async fn dsns(b: &Backends) -> Vec<Envelope> {
    let mut c = b
        .bus
        .consumer(Queue::Inbound, "test", ConsumerConfig::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(d) = c.next(Duration::from_millis(200)).await.unwrap() {
        out.push(Envelope::decode(d.payload.clone()).unwrap());
        d.ack().await.unwrap();
    }
    out
}

fn backends() -> (tempfile::TempDir, Backends) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = posthorn_config::Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    (dir, Backends::open_embedded(&cfg).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_once_even_when_redelivered() {
    let (_d, b) = backends();
    let port = free_port();
    let sink = tokio::task::spawn_blocking(move || SmtpSink::start("127.0.0.2", port, ""))
        .await
        .unwrap();
    let ctx = ctx(&b, port);
    let log = Log::default();
    let now = chrono::Utc::now().timestamp();
    let it = item(&b, "W1", "bob@[127.0.0.2]", now).await;
    worker::handle(&ctx, delivery(&it, 1, &log)).await;
    assert_eq!(log.take(), ["ack"]);
    assert_eq!(sink.messages().len(), 1);
    // The ack was lost and the queue hands the item out again: acked, not sent.
    worker::handle(&ctx, delivery(&it, 2, &log)).await;
    assert_eq!(log.take(), ["ack"]);
    assert_eq!(sink.messages().len(), 1);
    assert!(dsns(&b).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_bounces_once_and_expiry_bounces() {
    let (_d, b) = backends();
    let port = free_port();
    let _sink = tokio::task::spawn_blocking(move || {
        SmtpSink::start(
            "127.0.0.2",
            port,
            r#"{"rcpt": ["550 5.1.1 unknown", "550 5.1.1 unknown"]}"#,
        )
    })
    .await
    .unwrap();
    let ctx = ctx(&b, port);
    let log = Log::default();
    let now = chrono::Utc::now().timestamp();
    let it = item(&b, "W2", "bob@[127.0.0.2]", now).await;
    worker::handle(&ctx, delivery(&it, 1, &log)).await;
    worker::handle(&ctx, delivery(&it, 2, &log)).await;
    assert_eq!(log.take(), ["ack", "ack"]);
    let d = dsns(&b).await;
    assert_eq!(d.len(), 1, "one DSN: {d:?}");
    assert_eq!(d[0].mail_from, "");
    assert_eq!(d[0].rcpt_to[0].address, "alice@example.test");
    let text = b.blobs.get(&d[0].blob_key).await.unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("Diagnostic-Code: smtp; 550 5.1.1 unknown\r\n"),
        "{text}"
    );
    assert!(text.contains("Remote-MTA: dns; [127.0.0.2]\r\n"), "{text}");

    // Nothing listens on 127.0.0.9: deferred with the schedule's delay...
    let it = item(&b, "W3", "carol@[127.0.0.9]", now).await;
    worker::handle(&ctx, delivery(&it, 1, &log)).await;
    let l = log.take();
    assert_eq!(l.len(), 1);
    assert!(l[0].starts_with("nak Some("), "{l:?}");
    assert!(dsns(&b).await.is_empty());
    // ... and bounced once the message is older than the lifetime.
    let it = item(&b, "W4", "carol@[127.0.0.9]", now - 432_001).await;
    worker::handle(&ctx, delivery(&it, 9, &log)).await;
    assert_eq!(log.take(), ["ack"]);
    let d = dsns(&b).await;
    assert_eq!(d.len(), 1);
    let text = b.blobs.get(&d[0].blob_key).await.unwrap();
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("Status: 4.4.7\r\n"), "{text}");
    assert!(text.contains("lifetime exceeded"), "{text}");
}
