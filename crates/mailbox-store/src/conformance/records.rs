//! Conformance cases of versioned records and the queue index.

use std::sync::Arc;
use std::time::Duration;

use crate::queue::{self, Claim, QueueEntry, QueueState};
use crate::{MetaStore, Record, RecordPut};

fn put(value: &str, score: i64) -> RecordPut {
    RecordPut {
        value: value.into(),
        score,
        listed: true,
        ttl: None,
    }
}

fn keys(v: Vec<(String, Record)>) -> Vec<String> {
    v.into_iter().map(|(k, _)| k).collect()
}

/// Compare-and-set, listing order and ranges, tombstones with a TTL, bad
/// names.
pub async fn records(store: &Arc<dyn MetaStore>) {
    let s = store.as_ref();
    let ns = "conf-records";
    let all = i64::MIN..=i64::MAX;
    assert_eq!(
        s.get_record(ns, "a").await.unwrap(),
        None,
        "[records] absent"
    );
    let create_v1 = s.put_record(ns, "a", 1, put("x", 5)).await.unwrap();
    assert_eq!(create_v1, None, "[records] create needs version 0");
    let created = s.put_record(ns, "a", 0, put("a1", 5)).await.unwrap();
    assert_eq!(created, Some(1), "[records] create");
    let again = s.put_record(ns, "a", 0, put("a?", 5)).await.unwrap();
    assert_eq!(again, None, "[records] second create refused");
    let updated = s.put_record(ns, "a", 1, put("a2", 3)).await.unwrap();
    assert_eq!(updated, Some(2), "[records] update");
    let r = s.get_record(ns, "a").await.unwrap().expect("[records] a");
    assert_eq!(
        (r.version, r.value.as_str(), r.score),
        (2, "a2", 3),
        "[records] read back"
    );
    s.put_record(ns, "c", 0, put("c1", 3))
        .await
        .unwrap()
        .unwrap();
    s.put_record(ns, "b", 0, put("b1", 9))
        .await
        .unwrap()
        .unwrap();
    s.put_record(ns, "0", 0, put("first", -1))
        .await
        .unwrap()
        .unwrap();
    // (score, key) order; ties by key.
    let l = keys(s.list_records(ns, all.clone(), 0, 10).await.unwrap());
    assert_eq!(l, ["0", "a", "c", "b"], "[records] order");
    let l = keys(s.list_records(ns, all.clone(), 1, 2).await.unwrap());
    assert_eq!(l, ["a", "c"], "[records] page");
    let l = keys(s.list_records(ns, all.clone(), 4, 2).await.unwrap());
    assert!(l.is_empty(), "[records] past the end: {l:?}");
    let l = keys(s.list_records(ns, 0..=5, 1, 9).await.unwrap());
    assert_eq!(l, ["c"], "[records] score range, page");
    let n = s.count_records(ns, all.clone()).await.unwrap();
    assert_eq!(n, (4, Some(-1)), "[records] count");
    let n = s.count_records(ns, 4..=9).await.unwrap();
    assert_eq!(n, (1, Some(9)), "[records] count a range");
    let n = s.count_records(ns, 10..=20).await.unwrap();
    assert_eq!(n, (0, None), "[records] empty range");
    // An unlisted record with a TTL: out of the listing at once, gone after it.
    let tomb = RecordPut {
        value: "gone".into(),
        score: 3,
        listed: false,
        ttl: Some(Duration::from_millis(300)),
    };
    let v = s.put_record(ns, "a", 2, tomb).await.unwrap();
    assert_eq!(v, Some(3), "[records] tombstone");
    let l = keys(s.list_records(ns, all.clone(), 0, 10).await.unwrap());
    assert_eq!(l, ["0", "c", "b"], "[records] unlisted");
    let n = s.count_records(ns, all).await.unwrap();
    assert_eq!(n, (3, Some(-1)), "[records] count without it");
    let r = s.get_record(ns, "a").await.unwrap().map(|r| r.value);
    assert_eq!(r.as_deref(), Some("gone"), "[records] tombstone readable");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s.get_record(ns, "a").await.unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "[records] tombstone never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = s.put_record(ns, "a", 0, put("again", 1)).await.unwrap();
    assert!(v.is_some(), "[records] create after expiry");
    // A listed record cannot expire; names are checked.
    let bad = RecordPut {
        ttl: Some(Duration::from_secs(1)),
        ..put("x", 1)
    };
    let r = s.put_record(ns, "z", 0, bad).await;
    assert!(r.is_err(), "[records] listed with TTL refused");
    for k in ["", "a b", "a{b}"] {
        let r = s.put_record(ns, k, 0, put("x", 1)).await;
        assert!(r.is_err(), "[records] key {k:?} refused");
    }
}

fn entry(id: &str, received_at: i64) -> QueueEntry {
    QueueEntry {
        id: id.into(),
        message_id: id.split('/').next().unwrap().into(),
        sender: "a@local.test".into(),
        recipient: "b@remote.test".into(),
        domain: "remote.test".into(),
        size: 100,
        received_at,
        state: QueueState::Queued,
        bounce_on_delete: false,
        next_attempt: 0,
        attempts: 0,
        last_error: String::new(),
        generation: 0,
        copy_published: true,
        item: vec![1, 2, 3],
    }
}

/// A time after every `next_attempt` of these cases.
const LATER: i64 = 1_000_000;

fn ids(v: Vec<QueueEntry>) -> Vec<String> {
    v.into_iter().map(|e| e.id).collect()
}

async fn set(s: &dyn MetaStore, id: &str, f: impl Fn(&mut QueueEntry)) {
    queue::modify(s, id, |e| {
        let mut e = e.unwrap();
        f(&mut e);
        queue::Step::Write(Box::new(e), ())
    })
    .await
    .unwrap();
}

/// The queue index's transitions: add, claim, defer, settle, generations,
/// hold and delete as delivery sees them; listing and counting by state.
pub async fn queue_index(store: &Arc<dyn MetaStore>) {
    let s = store.as_ref();
    let (q1, q2) = ("CQ1/b@remote.test", "CQ2/b@remote.test");
    let fb1 = || entry(q1, 100);
    let fb2 = || entry(q2, 50);
    queue::add(s, entry(q1, 100)).await.unwrap();
    let mut again = entry(q1, 100);
    again.sender = "other@x".into();
    queue::add(s, again).await.unwrap();
    let e = queue::get(s, q1).await.unwrap().unwrap();
    assert_eq!(e.sender, "a@local.test", "[queue] add is create-only");
    // Claim without an entry uses the fallback.
    let c = queue::claim(s, q2, 0, 0, fb2).await.unwrap();
    let Claim::Proceed(e) = c else {
        panic!("[queue] claim q2: {c:?}")
    };
    assert_eq!(e.state, QueueState::Active, "[queue] active");
    let n = queue::count_all(s).await.unwrap();
    assert_eq!(n, (2, Some(50)), "[queue] count, oldest");
    let n = queue::count(s, QueueState::Queued).await.unwrap();
    assert_eq!(n, (1, Some(100)), "[queue] count queued");
    let l = ids(queue::list(s, None, 0, 10).await.unwrap());
    assert_eq!(l, [q2, q1], "[queue] active first");
    let l = ids(queue::list(s, Some(QueueState::Queued), 0, 10)
        .await
        .unwrap());
    assert_eq!(l, [q1], "[queue] one state");
    // Defer records the error and the attempt.
    let c = queue::defer(s, q2, 0, 1234, "451 try later").await.unwrap();
    let Claim::Proceed(e) = c else {
        panic!("[queue] defer: {c:?}")
    };
    let got = (e.state, e.attempts, e.next_attempt, e.last_error.as_str());
    let want = (QueueState::Deferred, 1, 1234, "451 try later");
    assert_eq!(got, want, "[queue] deferred");
    let l = ids(queue::list(s, Some(QueueState::Deferred), 0, 10)
        .await
        .unwrap());
    assert_eq!(l, [q2], "[queue] list deferred");
    let n = queue::count(s, QueueState::Active).await.unwrap();
    assert_eq!(n, (0, None), "[queue] none active");
    // A newer generation supersedes older copies, once its copy is known
    // to be published.
    set(s, q2, |e| {
        e.generation = 2;
        e.copy_published = false;
    })
    .await;
    let c = queue::claim(s, q2, 1, LATER, fb2).await.unwrap();
    assert!(
        matches!(c, Claim::Proceed(_)),
        "[queue] old copy while unpublished: {c:?}"
    );
    set(s, q2, |e| {
        e.generation = 2;
        e.copy_published = true;
    })
    .await;
    let c = queue::claim(s, q2, 1, LATER, fb2).await.unwrap();
    assert_eq!(c, Claim::Superseded, "[queue] old copy");
    let c = queue::claim(s, q2, 2, LATER, fb2).await.unwrap();
    assert!(
        matches!(c, Claim::Proceed(_)),
        "[queue] current copy: {c:?}"
    );
    // Held and deleting are reported to delivery, on claim and on defer.
    set(s, q1, |e| e.state = QueueState::Held).await;
    let c = queue::claim(s, q1, 0, 0, fb1).await.unwrap();
    assert_eq!(c, Claim::Held, "[queue] held");
    set(s, q2, |e| {
        e.state = QueueState::Deleting;
        e.bounce_on_delete = true;
    })
    .await;
    let c = queue::defer(s, q2, 2, 1, "x").await.unwrap();
    assert_eq!(
        c,
        Claim::Delete { bounce: true },
        "[queue] deleted meanwhile"
    );
    // Settled: gone from the listing; neither add nor claim brings it back.
    queue::settle(s, q2).await.unwrap();
    assert_eq!(queue::get(s, q2).await.unwrap(), None, "[queue] settled");
    queue::add(s, entry(q2, 50)).await.unwrap();
    let c = queue::claim(s, q2, 0, 0, fb2).await.unwrap();
    assert_eq!(c, Claim::Done, "[queue] tombstone");
    let n = queue::count_all(s).await.unwrap();
    assert_eq!(n, (1, Some(100)), "[queue] one left");
    queue::settle(s, q1).await.unwrap();
}
