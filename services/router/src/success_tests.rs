//! Tests of [`super`]: which recipients get a success notice, what it
//! says, and that routing sends it once.

use std::time::Duration;

use posthorn_bus::{Acker, ConsumerConfig, Delivery, Queue};
use posthorn_mailbox_store::Alias;
use posthorn_proto::common::v1::OutboundItem;
use prost::Message;

use super::*;

fn rcpt(address: &str, notify: &str, orcpt: &str) -> Recipient {
    Recipient {
        address: address.into(),
        notify: notify.into(),
        orcpt: orcpt.into(),
    }
}

fn env(from: &str) -> Envelope {
    Envelope {
        id: "M1".into(),
        mail_from: from.into(),
        ..Default::default()
    }
}

fn local(a: &str) -> Target {
    Target::Local(a.into())
}

/// Which recipients get a notice, of which kind, under which id.
#[test]
fn decision() {
    let e = env("alice@example.test");
    let delivered: BTreeSet<String> = ["bob@example.test", "carol@example.test"]
        .map(String::from)
        .into();
    let mut plan = Plan::default();
    // Delivered directly, NOTIFY names SUCCESS: delivered.
    plan.add(
        &e,
        &rcpt(
            "Bob@example.test",
            "SUCCESS,FAILURE",
            "rfc822;Bob@example.test",
        ),
        "bob@example.test",
        &[local("bob@example.test")],
    );
    // Delivered, but NOTIFY without SUCCESS, or none (no default): nothing.
    plan.add(
        &e,
        &rcpt("carol@example.test", "FAILURE", ""),
        "carol@example.test",
        &[local("carol@example.test")],
    );
    plan.add(
        &e,
        &rcpt("carol@example.test", "", ""),
        "carol@example.test",
        &[local("carol@example.test")],
    );
    // A single-target alias is a rewrite: delivered, reported under the
    // address the sender wrote.
    plan.add(
        &e,
        &rcpt("info@example.test", "SUCCESS", ""),
        "info@example.test",
        &[local("carol@example.test")],
    );
    // Several targets: expanded, whatever became of each.
    plan.add(
        &e,
        &rcpt("team@example.test", "SUCCESS", ""),
        "team@example.test",
        &[
            local("bob@example.test"),
            Target::Remote("x@remote.test".into()),
        ],
    );
    // Not delivered (bounced instead), remote (delivery's), gone: nothing.
    plan.add(
        &e,
        &rcpt("dave@example.test", "SUCCESS", ""),
        "dave@example.test",
        &[local("dave@example.test")],
    );
    plan.add(
        &e,
        &rcpt("x@remote.test", "SUCCESS", ""),
        "x@remote.test",
        &[Target::Remote("x@remote.test".into())],
    );
    plan.add(
        &e,
        &rcpt("ghost@example.test", "SUCCESS", ""),
        "ghost@example.test",
        &[],
    );
    // The same recipient twice: one notice.
    plan.add(
        &e,
        &rcpt(
            "Bob@example.test",
            "SUCCESS,FAILURE",
            "rfc822;Bob@example.test",
        ),
        "bob@example.test",
        &[local("bob@example.test")],
    );
    let notices = plan.notices(&delivered);
    let got: Vec<(Kind, &str, &str, usize)> = notices
        .iter()
        .map(|n| {
            (
                n.kind,
                n.rcpt.address.as_str(),
                n.final_recipient.as_str(),
                n.members,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (Kind::Delivered, "Bob@example.test", "bob@example.test", 1),
            (Kind::Delivered, "info@example.test", "info@example.test", 1),
            (Kind::Expanded, "team@example.test", "team@example.test", 2),
        ]
    );
    let id = notices[0].id(&e);
    assert_eq!(
        id,
        format!(
            "M1.delivered.{}",
            posthorn_dsn::short_hash("Bob@example.test")
        )
    );
    assert_eq!(id, plan.notices(&delivered)[0].id(&e), "deterministic");
    assert!(notices[2].id(&e).starts_with("M1.expanded."));
    // The null sender never gets one.
    let mut plan = Plan::default();
    plan.add(
        &env(""),
        &rcpt("bob@example.test", "SUCCESS", ""),
        "bob@example.test",
        &[local("bob@example.test")],
    );
    assert!(plan.notices(&delivered).is_empty());
}

#[test]
fn notify_passed_on() {
    assert_eq!(passed_on_notify("SUCCESS,FAILURE", 1), "SUCCESS,FAILURE");
    assert_eq!(passed_on_notify("SUCCESS,FAILURE", 2), "FAILURE");
    assert_eq!(passed_on_notify("success,DELAY", 3), "DELAY");
    assert_eq!(passed_on_notify("SUCCESS", 2), "NEVER");
    assert_eq!(passed_on_notify("", 2), "");
    assert_eq!(passed_on_notify("NEVER", 2), "NEVER");
}

/// The notice: RFC 3464 fields, ORCPT, RET=HDRS (default) and RET=FULL.
#[test]
fn content() {
    let mut e = env("alice@example.test");
    e.dsn_envid = "ENV-7".into();
    e.size = 48;
    let n = Notice {
        kind: Kind::Delivered,
        rcpt: rcpt("Bob@example.test", "SUCCESS", "rfc822;Bob@example.test"),
        final_recipient: "bob@example.test".into(),
        members: 1,
    };
    let orig = b"Subject: hi\r\nFrom: alice@example.test\r\n\r\nsecret body\r\n";
    let m = compose(&e, &n, Some(orig), "mx.example.test");
    let s = String::from_utf8(m.clone()).unwrap();
    for want in [
        "To: <alice@example.test>\r\n",
        "Subject: Successful Mail Delivery Report\r\n",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Reporting-MTA: dns; mx.example.test\r\n",
        "Original-Envelope-Id: ENV-7\r\n",
        "Final-Recipient: rfc822; bob@example.test\r\n\
         Original-Recipient: rfc822;Bob@example.test\r\n\
         Action: delivered\r\nStatus: 2.0.0\r\n",
        "Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    assert!(!s.contains("secret body"), "RET=HDRS: headers only");
    assert!(!s.contains("Action: failed"), "{s}");
    assert_eq!(posthorn_mime::analyze(&m).body.children.len(), 3);
    // Without ORCPT, no Original-Recipient.
    let plain = Notice {
        rcpt: rcpt("bob@example.test", "SUCCESS", ""),
        ..n.clone()
    };
    let s = String::from_utf8(compose(&e, &plain, None, "h")).unwrap();
    assert!(!s.contains("Original-Recipient"), "{s}");
    // RET=FULL returns the message.
    e.dsn_ret = "FULL".into();
    let s = String::from_utf8(compose(&e, &n, Some(orig), "h")).unwrap();
    assert!(
        s.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi"),
        "{s}"
    );
    assert!(s.contains("secret body"), "{s}");
    // Expanded.
    let x = Notice {
        kind: Kind::Expanded,
        rcpt: rcpt("team@example.test", "SUCCESS", ""),
        final_recipient: "team@example.test".into(),
        members: 3,
    };
    let s = String::from_utf8(compose(&e, &x, None, "h")).unwrap();
    assert!(
        s.contains(
            "Final-Recipient: rfc822; team@example.test\r\nAction: expanded\r\nStatus: 2.0.0\r\n\
             Diagnostic-Code: X-Posthorn; alias expanded to 3 recipients\r\n"
        ),
        "{s}"
    );
}

struct NoAck;

#[async_trait::async_trait]
impl Acker for NoAck {
    async fn ack(&self) -> posthorn_bus::Result<()> {
        Ok(())
    }
    async fn nak(&self, _: Option<Duration>) -> posthorn_bus::Result<()> {
        Ok(())
    }
    async fn term(&self) -> posthorn_bus::Result<()> {
        Ok(())
    }
    async fn in_progress(&self) -> posthorn_bus::Result<()> {
        Ok(())
    }
}

fn delivery(env: &Envelope) -> Delivery {
    Delivery {
        msg_id: env.id.clone(),
        payload: env.encode_to_vec().into(),
        attempt: 1,
        stored_at_ms: None,
        acker: Box::new(NoAck),
    }
}

/// Routing: the local sender gets one `delivered` notice for bob
/// (NOTIFY=SUCCESS) and one `expanded` for the alias team, none for carol
/// (no NOTIFY), none again when the item is redelivered; team's remote
/// member is queued without SUCCESS.
#[tokio::test]
async fn routing_sends_each_notice_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = posthorn_config::Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    let b = Backends::open_embedded(&cfg).unwrap();
    b.meta.add_domain("example.test").await.unwrap();
    for a in ["alice", "bob", "carol"] {
        b.meta
            .add_account(&format!("{a}@example.test"), "x")
            .await
            .unwrap();
    }
    b.meta
        .set_alias(&Alias {
            address: "team@example.test".into(),
            targets: vec!["carol@example.test".into(), "x@remote.test".into()],
        })
        .await
        .unwrap();
    let a = Addressing::new(b.meta.clone(), "", "mx.example.test");
    let body = b"Subject: report me\r\nFrom: alice@example.test\r\n\r\nhello\r\n";
    let key = b.blobs.put(bytes::Bytes::from_static(body)).await.unwrap();
    let mut e = Envelope {
        id: "S1".into(),
        mail_from: "alice@example.test".into(),
        rcpt_to: vec![
            rcpt(
                "bob@example.test",
                "SUCCESS,FAILURE",
                "rfc822;bob@example.test",
            ),
            rcpt("carol@example.test", "", ""),
            rcpt("team@example.test", "SUCCESS,FAILURE", ""),
        ],
        blob_key: key,
        size: body.len() as u64,
        ..Default::default()
    };
    crate::inbound::route(&a, &b, &delivery(&e)).await.unwrap();
    crate::inbound::route(&a, &b, &delivery(&e)).await.unwrap();
    let inbox = |who: &'static str| {
        let meta = b.meta.clone();
        async move { meta.fetch(who, "INBOX", 1, u32::MAX).await.unwrap() }
    };
    assert_eq!(inbox("bob@example.test").await.len(), 1);
    assert_eq!(inbox("carol@example.test").await.len(), 1);
    let notices = inbox("alice@example.test").await;
    assert_eq!(notices.len(), 2, "one delivered, one expanded");
    let mut texts = Vec::new();
    for m in &notices {
        assert_eq!(
            m.header_prefix,
            "Return-Path: <>\r\nDelivered-To: alice@example.test\r\n"
        );
        let t = b.blobs.get(&m.blob_key).await.unwrap();
        texts.push(String::from_utf8_lossy(&t).to_string());
    }
    texts.sort_by_key(|t| !t.contains("Action: delivered"));
    assert!(
        texts[0].contains(
            "Final-Recipient: rfc822; bob@example.test\r\n\
             Original-Recipient: rfc822;bob@example.test\r\n\
             Action: delivered\r\nStatus: 2.0.0\r\n"
        ),
        "{}",
        texts[0]
    );
    assert!(texts[0].contains("Subject: report me"), "{}", texts[0]);
    assert!(!texts[0].contains("carol"), "{}", texts[0]);
    assert!(
        texts[1].contains("Final-Recipient: rfc822; team@example.test\r\nAction: expanded\r\n"),
        "{}",
        texts[1]
    );
    // team's remote member: queued once, NOTIFY without SUCCESS.
    let mut out = b
        .bus
        .consumer(Queue::Outbound, "test", ConsumerConfig::default())
        .await
        .unwrap();
    let d = out.next(Duration::from_secs(2)).await.unwrap().unwrap();
    let item = OutboundItem::decode(d.payload.clone()).unwrap();
    let r = item.recipient.unwrap();
    assert_eq!(
        (r.address.as_str(), r.notify.as_str()),
        ("x@remote.test", "FAILURE")
    );
    d.ack().await.unwrap();
    // The null sender gets none; NOTIFY without SUCCESS gets none.
    e.id = "S2".into();
    e.mail_from = String::new();
    crate::inbound::route(&a, &b, &delivery(&e)).await.unwrap();
    e.id = "S3".into();
    e.mail_from = "alice@example.test".into();
    e.rcpt_to = vec![rcpt("bob@example.test", "FAILURE", "")];
    crate::inbound::route(&a, &b, &delivery(&e)).await.unwrap();
    assert_eq!(inbox("alice@example.test").await.len(), 2);
    assert_eq!(inbox("bob@example.test").await.len(), 3);
}
