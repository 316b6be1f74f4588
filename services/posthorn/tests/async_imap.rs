//! The `async-imap` crate (a Rust IMAP client built on `imap-proto`)
//! against the real `posthorn` binary: STARTTLS, LOGIN, SELECT, FETCH,
//! STORE, UID SEARCH, COPY, EXPUNGE, CREATE/RENAME/DELETE, LIST, STATUS,
//! APPEND, IDLE woken by an SMTP delivery, LOGOUT. Every response must parse
//! with imap-proto's grammar, which is independent of the server's
//! imap-codec.

mod common;

use rustls::pki_types::ServerName;
use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_imap::extensions::idle::IdleResponse;
use async_imap::imap_proto::{MailboxDatum, Response};
use async_imap::types::{Fetch, Flag, NameAttribute};
use common::*;
use futures::TryStreamExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const ALICE: &str = "alice@example.test";

type Session = async_imap::Session<TlsStream<TcpStream>>;

/// Connect, read the greeting, STARTTLS, and log in as alice.
async fn connect(port: u16) -> Session {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut client = async_imap::Client::new(tcp);
    let greeting = client.read_response().await.unwrap().unwrap();
    assert!(
        matches!(greeting.parsed(), Response::Data { .. }),
        "{:?}",
        greeting.parsed()
    );
    client
        .run_command_and_check_ok("STARTTLS", None)
        .await
        .unwrap();
    let tcp = client.into_inner();
    let tls = posthorn_tls::client::any_cert_connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let client = async_imap::Client::new(tls);
    client
        .login(ALICE, "alice-pw")
        .await
        .map_err(|e| e.0)
        .unwrap()
}

fn has_flag(f: &Fetch, want: &Flag<'_>) -> bool {
    f.flags().any(|x| &x == want)
}

/// Deliver one message to alice over SMTP; returns when the server said 250.
fn deliver(port: u16, subject: &str) {
    let (mut smtp, greeting) = Smtp::connect(port);
    assert!(greeting.starts_with("220"), "{greeting}");
    for (cmd, want) in [
        ("EHLO client.example.org", "250"),
        ("MAIL FROM:<sender@example.org>", "250"),
        (&format!("RCPT TO:<{ALICE}>") as &str, "250"),
        ("DATA", "354"),
    ] {
        let r = smtp.cmd(cmd);
        assert!(r.starts_with(want), "{cmd}: {r}");
    }
    let r = smtp.cmd(&format!(
        "From: Sender <sender@example.org>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.org>\r\n\r\nHello {subject}\r\n."
    ));
    assert!(r.starts_with("250"), "{r}");
    let _ = smtp.cmd("QUIT");
}

async fn session(sys: &System) {
    let mut s = connect(sys.ports.imap).await;
    let caps = s.capabilities().await.unwrap();
    for c in ["IMAP4rev1", "IDLE", "UIDPLUS", "MOVE", "NAMESPACE"] {
        assert!(caps.has_str(c), "no {c}");
    }
    assert!(!caps.has_str("STARTTLS") && !caps.has_str("LOGINDISABLED"));

    // SELECT
    let mb = s.select("INBOX").await.unwrap();
    assert_eq!(mb.exists, 3, "{mb:?}");
    assert_eq!(mb.recent, 0);
    assert_eq!(mb.uid_next, Some(4), "{mb:?}");
    let uidvalidity = mb.uid_validity.expect("UIDVALIDITY");
    assert!(mb.flags.contains(&Flag::Seen), "{mb:?}");
    assert!(mb.permanent_flags.contains(&Flag::Deleted), "{mb:?}");

    // FETCH (BODY.PEEK does not set \Seen)
    let msgs: Vec<Fetch> = s
        .fetch("1:*", "(UID FLAGS RFC822.SIZE BODY.PEEK[])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(msgs.len(), 3);
    for (i, (m, subject)) in msgs.iter().zip(["one", "two", "three"]).enumerate() {
        assert_eq!(m.message, i as u32 + 1);
        assert_eq!(m.uid, Some(i as u32 + 1));
        let body = m.body().expect("BODY[]");
        assert_eq!(m.size, Some(body.len() as u32));
        let text = String::from_utf8_lossy(body);
        assert!(text.contains(&format!("Subject: {subject}\r\n")), "{text}");
        assert!(
            text.ends_with(&format!("\r\n\r\nHello {subject}\r\n")),
            "{text}"
        );
        assert!(
            text.starts_with("Return-Path: <sender@example.org>\r\n"),
            "{text}"
        );
        assert!(!has_flag(m, &Flag::Seen));
    }

    // STORE: the untagged FETCH carries the new flags.
    let stored: Vec<Fetch> = s
        .store("1", "+FLAGS (\\Flagged \\Seen)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(has_flag(&stored[0], &Flag::Flagged) && has_flag(&stored[0], &Flag::Seen));
    let stored: Vec<Fetch> = s
        .uid_store("3", "+FLAGS ($Important)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored[0].uid, Some(3), "UID STORE answers with the UID");
    assert!(has_flag(
        &stored[0],
        &Flag::Custom("$Important".to_string().into())
    ));

    // UID SEARCH
    assert_eq!(s.uid_search("FLAGGED").await.unwrap(), HashSet::from([1]));
    assert_eq!(s.uid_search("UNSEEN").await.unwrap(), HashSet::from([2, 3]));
    assert_eq!(
        s.uid_search("SUBJECT \"two\"").await.unwrap(),
        HashSet::from([2])
    );
    assert_eq!(
        s.search("KEYWORD $Important").await.unwrap(),
        HashSet::from([3])
    );
    assert_eq!(
        s.uid_search("UID 2:*").await.unwrap(),
        HashSet::from([2, 3])
    );

    // COPY to Trash, then delete and EXPUNGE the original.
    s.copy("2", "Trash").await.unwrap();
    let st = s.status("Trash", "(MESSAGES UIDNEXT)").await.unwrap();
    assert_eq!(st.exists, 1, "{st:?}");
    assert_eq!(st.uid_next, Some(2), "{st:?}");
    let _: Vec<Fetch> = s
        .store("2", "+FLAGS.SILENT (\\Deleted)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let gone: Vec<u32> = s.expunge().await.unwrap().try_collect().await.unwrap();
    assert_eq!(gone, vec![2]);
    assert_eq!(s.uid_search("ALL").await.unwrap(), HashSet::from([1, 3]));

    // CREATE / RENAME / LIST / DELETE
    s.create("Projects/2026").await.unwrap();
    s.rename("Projects/2026", "Projects/Archive").await.unwrap();
    let names: Vec<_> = s
        .list(Some(""), Some("*"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let listed: Vec<&str> = names.iter().map(|n| n.name()).collect();
    assert!(listed.contains(&"Projects/Archive"), "{listed:?}");
    assert!(listed.contains(&"Projects"), "{listed:?}");
    assert!(!listed.contains(&"Projects/2026"), "{listed:?}");
    assert!(names.iter().all(|n| n.delimiter() == Some("/")));
    let projects = names.iter().find(|n| n.name() == "Projects").unwrap();
    assert!(
        projects
            .attributes()
            .contains(&NameAttribute::Extension("\\HasChildren".into())),
        "{:?}",
        projects.attributes()
    );
    let trash = names.iter().find(|n| n.name() == "Trash").unwrap();
    assert!(
        trash.attributes().contains(&NameAttribute::Trash),
        "{:?}",
        trash.attributes()
    );
    assert!(s.delete("Projects").await.is_err(), "has an inferior");
    s.delete("Projects/Archive").await.unwrap();
    s.delete("Projects").await.unwrap();
    let names: Vec<_> = s
        .list(Some(""), Some("Proj*"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(names.is_empty(), "{names:?}");
    assert!(s.select("Projects").await.is_err());
    s.select("INBOX").await.unwrap();

    // STATUS
    let st = s
        .status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)")
        .await
        .unwrap();
    assert_eq!(st.exists, 2, "{st:?}");
    assert_eq!(st.uid_next, Some(4), "{st:?}");
    assert_eq!(st.uid_validity, Some(uidvalidity), "{st:?}");
    assert_eq!(st.unseen, Some(1), "{st:?}");
    assert_eq!(st.recent, 0, "{st:?}");

    // APPEND (with flags and an internal date)
    let appended = b"From: alice@example.test\r\nSubject: appended\r\n\r\nfrom async-imap\r\n";
    s.append(
        "INBOX",
        Some("(\\Seen \\Draft)"),
        Some("\"01-Jan-2024 10:00:00 +0000\""),
        appended,
    )
    .await
    .unwrap();
    s.noop().await.unwrap();
    let found = s.uid_search("SUBJECT appended").await.unwrap();
    assert_eq!(found, HashSet::from([4]));
    let m: Vec<Fetch> = s
        .uid_fetch("4", "(FLAGS INTERNALDATE BODY.PEEK[] RFC822.SIZE)")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].body(), Some(&appended[..]));
    assert_eq!(m[0].size, Some(appended.len() as u32));
    assert!(has_flag(&m[0], &Flag::Seen) && has_flag(&m[0], &Flag::Draft));
    let date = m[0].internal_date().expect("INTERNALDATE");
    assert_eq!(date.timestamp(), 1_704_103_200);

    // IDLE: an SMTP delivery wakes the idling session with EXISTS.
    let mb = s.select("INBOX").await.unwrap();
    assert_eq!(mb.exists, 3);
    while s.unsolicited_responses.try_recv().is_ok() {}
    let mut idle = s.idle();
    idle.init().await.unwrap();
    let idling = Instant::now();
    let smtp = sys.ports.smtp;
    let sender = std::thread::spawn(move || {
        deliver(smtp, "during-idle");
        Instant::now()
    });
    // The delivery must be pushed, not found by the server's fallback
    // re-check of an idling mailbox, which runs 30 s after IDLE began. So
    // EXISTS must come within 20 s of IDLE starting: seconds to spare for a
    // loaded machine (a push normally takes milliseconds), yet too early
    // for the re-check.
    let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(20));
    let r = wait.await.unwrap();
    let woken = Instant::now();
    let delivered = sender.join().unwrap();
    match r {
        IdleResponse::NewData(data) => match data.parsed() {
            Response::MailboxData(MailboxDatum::Exists(n)) => assert_eq!(*n, 4),
            other => panic!("unexpected while idling: {other:?}"),
        },
        other => panic!(
            "IDLE not woken within 20 s (the 250 came {:?} after IDLE began): {other:?}\n{}",
            delivered.saturating_duration_since(idling),
            sys.logs()
        ),
    }
    eprintln!(
        "IDLE woken {:?} after the 250",
        woken.saturating_duration_since(delivered)
    );
    let mut s = idle.done().await.unwrap();
    let m: Vec<Fetch> = s
        .fetch("4", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(m[0].uid, Some(5));
    assert_eq!(m[0].header(), Some(&b"Subject: during-idle\r\n\r\n"[..]));

    s.logout().await.unwrap();
}

#[test]
fn async_imap_session() {
    let sys = System::start(Backend::Embedded, "");
    sys.standard_directory();
    for (n, subject) in ["one", "two", "three"].into_iter().enumerate() {
        deliver(sys.ports.smtp, subject);
        // One at a time, so UIDs follow the SMTP order.
        sys.wait_messages(ALICE, n + 1, WAIT);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), session(&sys))
            .await
            .unwrap_or_else(|_| panic!("session timed out\n{}", sys.logs()))
    });
}
