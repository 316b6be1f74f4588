//! Backend-generic conformance suite for [`Bus`] implementations.
//!
//! Every case panics with a message naming the case on failure. The cases
//! run sequentially on one bus ([`run_all`]): they all use the consumer group
//! [`GROUP`] (a JetStream work-queue stream allows one unfiltered consumer per
//! stream, so a second group name on the same queue would be rejected), use
//! message ids unique to the run, and leave the queue they used empty (every
//! item acked or dead-lettered), checked with [`Bus::depth`]. Consumer
//! configs differ per case: opening a group again with another config
//! updates it.
//!
//! Cases with timing (ack wait, nak delay) use ack waits of 1 to 5 seconds,
//! so the whole suite takes roughly 20 seconds. Timing is only checked as a
//! lower bound ("not before the ack wait"); waits for something that should
//! happen return as soon as it does and are bounded by [`WAIT`], which only
//! bounds a hang, so a slow or busy machine cannot make a case fail.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;

use crate::{Bus, Consumer, ConsumerConfig, Delivery, MailboxEvent, Queue};

/// The one consumer group used by every case.
pub const GROUP: &str = "conformance";

/// How long a case waits for something that should happen (returning as
/// soon as it does): only bounds a hang.
const WAIT: Duration = Duration::from_secs(60);
/// How long a case waits to be confident something does not happen.
const QUIET: Duration = Duration::from_millis(500);

/// Run every case, one after the other, on `bus`.
pub async fn run_all(bus: Arc<dyn Bus>) {
    ping(&bus).await;
    publish_consume_ack(&bus, Queue::Inbound).await;
    publish_consume_ack(&bus, Queue::Outbound).await;
    dedupe(&bus).await;
    redelivery_after_ack_wait(&bus).await;
    nak_with_delay(&bus).await;
    in_progress_extends_lease(&bus).await;
    term_goes_to_dead_letters(&bus).await;
    max_deliver_goes_to_dead_letters(&bus).await;
    group_shares_work(&bus).await;
    events(&bus).await;
}

/// A prefix unique to this process run and call, for message ids.
fn unique(case: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{case}-{nanos:x}-{}", N.fetch_add(1, Ordering::Relaxed))
}

fn cfg(ack_wait_ms: u64, max_deliver: u32) -> ConsumerConfig {
    ConsumerConfig {
        ack_wait: Duration::from_millis(ack_wait_ms),
        max_deliver,
        max_pending: 1000,
    }
}

async fn consumer(
    bus: &Arc<dyn Bus>,
    case: &str,
    queue: Queue,
    config: ConsumerConfig,
) -> Box<dyn Consumer> {
    bus.consumer(queue, GROUP, config)
        .await
        .unwrap_or_else(|e| panic!("[{case}] opening consumer group {GROUP} failed: {e}"))
}

async fn publish(bus: &Arc<dyn Bus>, case: &str, queue: Queue, msg_id: &str, payload: &[u8]) {
    bus.publish(queue, msg_id, Bytes::copy_from_slice(payload))
        .await
        .unwrap_or_else(|e| panic!("[{case}] publish {msg_id} failed: {e}"));
}

async fn expect_next(c: &mut Box<dyn Consumer>, case: &str, what: &str) -> Delivery {
    match c.next(WAIT).await {
        Ok(Some(d)) => d,
        Ok(None) => panic!("[{case}] expected {what} within {WAIT:?}, got nothing"),
        Err(e) => panic!("[{case}] next() failed while expecting {what}: {e}"),
    }
}

async fn expect_none(c: &mut Box<dyn Consumer>, case: &str, wait: Duration, why: &str) {
    match c.next(wait).await {
        Ok(None) => {}
        Ok(Some(d)) => panic!(
            "[{case}] expected no delivery within {wait:?} ({why}), got {} (attempt {})",
            d.msg_id, d.attempt
        ),
        Err(e) => panic!("[{case}] next() failed: {e}"),
    }
}

async fn ack(d: Delivery, case: &str) {
    let id = d.msg_id.clone();
    d.ack()
        .await
        .unwrap_or_else(|e| panic!("[{case}] ack of {id} failed: {e}"));
}

/// Wait until the depth of `queue` is `want` (at most [`WAIT`]).
async fn expect_depth(bus: &Arc<dyn Bus>, case: &str, queue: Queue, want: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = bus
            .depth(queue)
            .await
            .unwrap_or_else(|e| panic!("[{case}] depth({}) failed: {e}", queue.name()));
        if got == want {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "[{case}] depth({}) is {got}, waited {WAIT:?} for it to be {want}",
                queue.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dead_ids(bus: &Arc<dyn Bus>, case: &str, queue: Queue) -> Vec<(String, Bytes)> {
    bus.dead_letters(queue, 100_000)
        .await
        .unwrap_or_else(|e| panic!("[{case}] dead_letters({}) failed: {e}", queue.name()))
}

/// `ping` succeeds.
pub async fn ping(bus: &Arc<dyn Bus>) {
    bus.ping()
        .await
        .unwrap_or_else(|e| panic!("[ping] ping failed: {e}"));
}

/// Publish, consume (payload, id and attempt 1 intact), ack: the queue is
/// empty and nothing is redelivered.
pub async fn publish_consume_ack(bus: &Arc<dyn Bus>, queue: Queue) {
    let case = format!("publish_consume_ack/{}", queue.name());
    let case = case.as_str();
    let mut c = consumer(bus, case, queue, cfg(1000, 5)).await;
    let id = unique("basic");
    let payload = format!("payload of {id}").into_bytes();
    publish(bus, case, queue, &id, &payload).await;
    expect_depth(bus, case, queue, 1).await;
    let d = expect_next(&mut c, case, "the published item").await;
    assert_eq!(d.msg_id, id, "[{case}] wrong msg_id");
    assert_eq!(&d.payload[..], &payload[..], "[{case}] wrong payload");
    assert_eq!(d.attempt, 1, "[{case}] first delivery must have attempt 1");
    ack(d, case).await;
    expect_depth(bus, case, queue, 0).await;
    // Longer than the ack wait: an acked item never comes back.
    expect_none(&mut c, case, Duration::from_millis(1500), "it was acked").await;
}

/// The same `msg_id` published twice is delivered once.
pub async fn dedupe(bus: &Arc<dyn Bus>) {
    let case = "dedupe";
    let queue = Queue::Inbound;
    let mut c = consumer(bus, case, queue, cfg(1000, 5)).await;
    let id = unique(case);
    publish(bus, case, queue, &id, b"once").await;
    publish(bus, case, queue, &id, b"once").await;
    expect_depth(bus, case, queue, 1).await;
    let d = expect_next(&mut c, case, "the item").await;
    assert_eq!(d.msg_id, id, "[{case}] wrong msg_id");
    ack(d, case).await;
    expect_none(
        &mut c,
        case,
        QUIET,
        "a duplicate publish must be stored once",
    )
    .await;
    // Still within the window after the ack: still a duplicate.
    publish(bus, case, queue, &id, b"once").await;
    expect_none(&mut c, case, QUIET, "republished within the dedupe window").await;
    expect_depth(bus, case, queue, 0).await;
}

/// An item taken but not acked is redelivered after the ack wait, with
/// attempt 2.
pub async fn redelivery_after_ack_wait(bus: &Arc<dyn Bus>) {
    let case = "redelivery_after_ack_wait";
    let queue = Queue::Outbound;
    let mut c = consumer(bus, case, queue, cfg(1000, 5)).await;
    let id = unique("redeliver");
    publish(bus, case, queue, &id, b"redeliver me").await;
    // Before asking: the lease (and its ack wait) cannot start earlier, so
    // "waited" below is a safe lower bound however slow the machine is.
    let t0 = Instant::now();
    let d1 = expect_next(&mut c, case, "the first delivery").await;
    assert_eq!(d1.msg_id, id, "[{case}] wrong msg_id");
    assert_eq!(d1.attempt, 1, "[{case}] first attempt");
    drop(d1); // the consumer "dies" without ack
    let d2 = expect_next(&mut c, case, "the redelivery after the ack wait").await;
    let waited = t0.elapsed();
    assert_eq!(d2.msg_id, id, "[{case}] redelivered the wrong item");
    assert_eq!(d2.attempt, 2, "[{case}] a redelivery must have attempt 2");
    assert_eq!(&d2.payload[..], b"redeliver me", "[{case}] payload changed");
    assert!(
        waited >= Duration::from_millis(800),
        "[{case}] redelivered after {waited:?}, before the 1 s ack wait"
    );
    ack(d2, case).await;
    expect_depth(bus, case, queue, 0).await;
}

/// `nak(Some(delay))` redelivers no sooner than `delay`; `nak(None)` at once.
pub async fn nak_with_delay(bus: &Arc<dyn Bus>) {
    let case = "nak_with_delay";
    let queue = Queue::Inbound;
    let mut c = consumer(bus, case, queue, cfg(30_000, 5)).await;
    let id = unique("nak");
    publish(bus, case, queue, &id, b"nak me").await;
    let d1 = expect_next(&mut c, case, "the first delivery").await;
    let delay = Duration::from_millis(1500);
    let t0 = Instant::now();
    d1.nak(Some(delay))
        .await
        .unwrap_or_else(|e| panic!("[{case}] nak failed: {e}"));
    let d2 = expect_next(&mut c, case, "the redelivery after the nak delay").await;
    let waited = t0.elapsed();
    assert_eq!(d2.msg_id, id, "[{case}] redelivered the wrong item");
    assert_eq!(d2.attempt, 2, "[{case}] attempt after one nak");
    assert!(
        waited + Duration::from_millis(20) >= delay,
        "[{case}] redelivered after {waited:?}, before the nak delay {delay:?}"
    );
    // nak without delay: back at once, not after the 30 s ack wait (15 s:
    // generous for a busy machine, still tells the two apart).
    let t1 = Instant::now();
    d2.nak(None)
        .await
        .unwrap_or_else(|e| panic!("[{case}] nak(None) failed: {e}"));
    let d3 = expect_next(&mut c, case, "the redelivery after nak(None)").await;
    assert_eq!(d3.msg_id, id, "[{case}] redelivered the wrong item");
    assert_eq!(d3.attempt, 3, "[{case}] attempt after two naks");
    assert!(
        t1.elapsed() < Duration::from_secs(15),
        "[{case}] nak(None) took {:?} to redeliver (ack wait 30 s)",
        t1.elapsed()
    );
    ack(d3, case).await;
    expect_depth(bus, case, queue, 0).await;
}

/// `in_progress` restarts the ack wait: another consumer of the group does
/// not get the item although the original ack wait passed.
///
/// Times are taken so that a slow machine cannot produce a false failure:
/// the original lease starts after `t_pull` and so lasts at least until
/// `t_pull + ack_wait`; `in_progress` must be confirmed before that (5 s
/// ack wait, sent after 2 s: 3 s of slack for a stalled test); the renewed
/// lease starts after `t_renew` and so lasts at least until
/// `t_renew + ack_wait`; `c2` is watched until shortly before that, which
/// is well past the original ack wait.
pub async fn in_progress_extends_lease(bus: &Arc<dyn Bus>) {
    let case = "in_progress_extends_lease";
    let queue = Queue::Outbound;
    let ack_wait = Duration::from_secs(5);
    let renew_after = Duration::from_secs(2);
    let margin = Duration::from_millis(500);
    let config = ConsumerConfig {
        ack_wait,
        max_deliver: 5,
        max_pending: 1000,
    };
    let mut c1 = consumer(bus, case, queue, config).await;
    let mut c2 = consumer(bus, case, queue, config).await;
    let id = unique("progress");
    publish(bus, case, queue, &id, b"slow work").await;
    let t_pull = Instant::now();
    let d = expect_next(&mut c1, case, "the item").await;
    let t_got = Instant::now();
    expect_none(&mut c2, case, renew_after, "the item is leased to c1").await;
    let t_renew = Instant::now();
    d.in_progress()
        .await
        .unwrap_or_else(|e| panic!("[{case}] in_progress failed: {e}"));
    let late = t_pull.elapsed();
    assert!(
        late < ack_wait,
        "[{case}] cannot check: in_progress was confirmed {late:?} after the item was \
         asked for, not within the {ack_wait:?} ack wait (the test process was stalled)"
    );
    // The original lease ended by `t_got + ack_wait`; the renewed one lasts
    // at least until `t_renew + ack_wait`, at least `renew_after` later.
    let watch_until = t_renew + ack_wait - margin;
    assert!(
        watch_until > t_got + ack_wait,
        "[{case}] next() on c2 returned before its {renew_after:?} timeout"
    );
    expect_none(
        &mut c2,
        case,
        watch_until.saturating_duration_since(Instant::now()),
        "in_progress restarted the ack wait",
    )
    .await;
    ack(d, case).await;
    expect_depth(bus, case, queue, 0).await;
}

/// `term` is never redelivered and lands in the dead letters (oldest first).
pub async fn term_goes_to_dead_letters(bus: &Arc<dyn Bus>) {
    let case = "term_goes_to_dead_letters";
    let queue = Queue::Inbound;
    let mut c = consumer(bus, case, queue, cfg(1000, 5)).await;
    let a = unique("term-a");
    let b = unique("term-b");
    publish(bus, case, queue, &a, b"poison a").await;
    publish(bus, case, queue, &b, b"poison b").await;
    for want in [&a, &b] {
        let d = expect_next(&mut c, case, "an item to term").await;
        assert_eq!(&d.msg_id, want, "[{case}] items out of order");
        d.term()
            .await
            .unwrap_or_else(|e| panic!("[{case}] term failed: {e}"));
    }
    expect_none(
        &mut c,
        case,
        Duration::from_millis(1500),
        "termed items are never redelivered",
    )
    .await;
    expect_depth(bus, case, queue, 0).await;
    let dead = dead_ids(bus, case, queue).await;
    let pa = dead.iter().position(|(id, _)| id == &a);
    let pb = dead.iter().position(|(id, _)| id == &b);
    let (Some(pa), Some(pb)) = (pa, pb) else {
        panic!("[{case}] termed items missing from dead_letters: {dead:?}");
    };
    assert!(pa < pb, "[{case}] dead letters not oldest first");
    assert_eq!(&dead[pa].1[..], b"poison a", "[{case}] dead letter payload");
    let other = if queue == Queue::Inbound {
        Queue::Outbound
    } else {
        Queue::Inbound
    };
    let dead_other = dead_ids(bus, case, other).await;
    assert!(
        !dead_other.iter().any(|(id, _)| id == &a || id == &b),
        "[{case}] dead letter listed under the other queue"
    );
    let limited = bus
        .dead_letters(queue, 1)
        .await
        .unwrap_or_else(|e| panic!("[{case}] dead_letters failed: {e}"));
    assert_eq!(limited.len(), 1, "[{case}] dead_letters ignores limit");
}

/// An item delivered `max_deliver` times without ack (one ack-wait expiry,
/// one nak) goes to the dead letters instead of a third delivery.
pub async fn max_deliver_goes_to_dead_letters(bus: &Arc<dyn Bus>) {
    let case = "max_deliver_goes_to_dead_letters";
    let queue = Queue::Outbound;
    let mut c = consumer(bus, case, queue, cfg(1000, 2)).await;
    let id = unique("maxdeliver");
    publish(bus, case, queue, &id, b"keeps failing").await;
    let d1 = expect_next(&mut c, case, "delivery 1").await;
    assert_eq!(
        (d1.msg_id.as_str(), d1.attempt),
        (id.as_str(), 1),
        "[{case}] delivery 1"
    );
    drop(d1); // ack wait expires
    let d2 = expect_next(&mut c, case, "delivery 2").await;
    assert_eq!(
        (d2.msg_id.as_str(), d2.attempt),
        (id.as_str(), 2),
        "[{case}] delivery 2"
    );
    d2.nak(None)
        .await
        .unwrap_or_else(|e| panic!("[{case}] nak failed: {e}"));
    // The consumer moves the item to the dead letters when it would hand
    // it out a third time (inside `next`): keep asking, never getting it,
    // until it is there.
    let deadline = Instant::now() + WAIT;
    let payload = loop {
        expect_none(
            &mut c,
            case,
            Duration::from_millis(500),
            "max_deliver 2 reached",
        )
        .await;
        let dead = dead_ids(bus, case, queue).await;
        if let Some((_, payload)) = dead.into_iter().find(|(d, _)| d == &id) {
            break payload;
        }
        assert!(
            Instant::now() < deadline,
            "[{case}] item that exceeded max_deliver not in dead_letters after {WAIT:?}"
        );
    };
    expect_depth(bus, case, queue, 0).await;
    assert_eq!(
        &payload[..],
        b"keeps failing",
        "[{case}] dead letter payload"
    );
}

/// Two consumers of one group share 100 items; none is delivered to both.
pub async fn group_shares_work(bus: &Arc<dyn Bus>) {
    let case = "group_shares_work";
    let queue = Queue::Inbound;
    const N: usize = 100;
    let prefix = unique("share");
    let ids: Vec<String> = (0..N).map(|i| format!("{prefix}-{i}")).collect();
    let consumers = [
        consumer(bus, case, queue, cfg(30_000, 5)).await,
        consumer(bus, case, queue, cfg(30_000, 5)).await,
    ];
    let done = Arc::new(AtomicU64::new(0));
    // Both consume until all N are done; the deadline only bounds a hang
    // (the check below then names what is missing).
    let deadline = Instant::now() + 2 * WAIT;
    let mut tasks = Vec::new();
    for mut c in consumers {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while done.load(Ordering::SeqCst) < N as u64 && Instant::now() < deadline {
                match c.next(Duration::from_millis(500)).await {
                    Ok(Some(d)) => {
                        got.push((d.msg_id.clone(), d.attempt));
                        ack(d, case).await;
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(None) => {}
                    Err(e) => panic!("[{case}] next() failed: {e}"),
                }
            }
            got
        }));
    }
    for id in &ids {
        publish(bus, case, queue, id, id.as_bytes()).await;
    }
    let mut all = Vec::new();
    let mut per_consumer = Vec::new();
    for t in tasks {
        let got = t
            .await
            .unwrap_or_else(|e| panic!("[{case}] consumer task failed: {e}"));
        per_consumer.push(got.len());
        all.extend(got);
    }
    let mut seen = HashSet::new();
    for (id, attempt) in &all {
        assert!(seen.insert(id.clone()), "[{case}] {id} delivered twice");
        assert_eq!(
            *attempt, 1,
            "[{case}] {id} redelivered although acked promptly"
        );
    }
    let want: HashSet<String> = ids.into_iter().collect();
    assert_eq!(
        seen, want,
        "[{case}] not every item was delivered (per consumer: {per_consumer:?})"
    );
    tracing::info!(?per_consumer, "{case}: work split between consumers");
    expect_depth(bus, case, queue, 0).await;
}

async fn next_event(s: &mut crate::EventStream, case: &str, what: &str) -> MailboxEvent {
    match tokio::time::timeout(WAIT, s.next()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("[{case}] event stream ended while expecting {what}"),
        Err(_) => panic!("[{case}] no event within {WAIT:?} while expecting {what}"),
    }
}

/// `subscribe_events(Some(account))` receives that account's events only;
/// `subscribe_events(None)` receives all.
pub async fn events(bus: &Arc<dyn Bus>) {
    let case = "events";
    let a = format!("{}@example.org", unique("alice"));
    // Subject-special characters must not leak into other subscriptions.
    let b = format!("{}.*>+tag@example.org", unique("bob"));
    let sub = |account: Option<String>| {
        let bus = bus.clone();
        async move {
            bus.subscribe_events(account.as_deref())
                .await
                .unwrap_or_else(|e| panic!("[{case}] subscribe_events failed: {e}"))
        }
    };
    let mut sa = sub(Some(a.clone())).await;
    let mut sb = sub(Some(b.clone())).await;
    let mut sall = sub(None).await;
    let ev = |account: &str, mailbox: &str, kind: &str| MailboxEvent {
        account: account.to_string(),
        mailbox: mailbox.to_string(),
        kind: kind.to_string(),
    };
    let e1 = ev(&b, "INBOX", "append");
    let e2 = ev(&a, "INBOX", "append");
    let e3 = ev(&a, "Sent", "flags");
    for e in [&e1, &e2, &e3] {
        bus.publish_event(e)
            .await
            .unwrap_or_else(|err| panic!("[{case}] publish_event failed: {err}"));
    }
    assert_eq!(
        next_event(&mut sa, case, "a's first event").await,
        e2,
        "[{case}] a's subscription"
    );
    assert_eq!(
        next_event(&mut sa, case, "a's second event").await,
        e3,
        "[{case}] a's subscription"
    );
    assert_eq!(
        next_event(&mut sb, case, "b's event").await,
        e1,
        "[{case}] b's subscription"
    );
    let mut all = Vec::new();
    while all.len() < 3 {
        let e = next_event(&mut sall, case, "an event on the all-accounts subscription").await;
        // Ignore events of other users of a shared backend.
        if e.account == a || e.account == b {
            all.push(e);
        }
    }
    assert_eq!(all, vec![e1, e2, e3], "[{case}] all-accounts subscription");
    if let Ok(Some(extra)) = tokio::time::timeout(QUIET, sb.next()).await {
        panic!("[{case}] b's subscription received another account's event: {extra:?}");
    }
}
