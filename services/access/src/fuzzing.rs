//! Fuzzing entry points: a whole POP3 or IMAP session driven by arbitrary
//! client bytes.
//!
//! [`pop3_session`] and [`imap_session`] run [`crate::pop3::run`] /
//! [`crate::imap::run`] over an in-memory [`tokio::io::duplex`] stream
//! against the embedded backends in a private temporary directory (created
//! once per process, with one current-thread tokio runtime). The input is
//! written in chunks of varying sizes (derived from the input itself, so a
//! run is reproducible) while the server's output is drained, then the
//! client half-closes; the session must end by itself within
//! [`SESSION_TIMEOUT`]. A panic anywhere in the session is a finding.
//!
//! Used by the cargo-fuzz targets in `services/access/fuzz/` and by
//! `services/access/tests/fuzz_replay.rs`, which replays the seed corpus and
//! mutations of it on stable Rust.
//!
//! The store is shared by all sessions of a process; before each session
//! it is brought back into a known range (alice's INBOX holds 3 to 40
//! messages, at most 30 mailboxes exist) so long runs neither empty nor
//! bloat it. Each session gets a fresh [`Ctx`], so login throttling does not
//! carry over between inputs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use posthorn_backends::Backends;
use posthorn_config::Config;
use posthorn_mailbox_store::{AppendOutcome, NewMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::{Ctx, Peer};

/// The account the seed corpus logs in as.
pub const USER: &str = "alice@example.test";
/// Its password.
pub const PASSWORD: &str = "alice-pw";
/// A session that has not ended within this time (its input is sent and
/// closed at once) counts as hung ([`Outcome::timed_out`]).
///
/// Generous: a loaded machine running many sessions at once (each failed
/// login with an unknown user costs a production-strength argon2
/// verification) must not look like a hang.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// argon2id of [`PASSWORD`] with minimal cost (m=8 KiB, t=1), so that a
/// successful login costs microseconds instead of the production cost.
const CHEAP_HASH: &str =
    "$argon2id$v=19$m=8,t=1,p=1$ZnV6enNhbHRmdXp6c2FsdA$cN5SdeGh5T6XMqy1cFbQQI5j5+nNGAjYMcoAeTTPVG4";

/// Mailboxes that survive the between-session clean-up.
const BASE_MAILBOXES: &[&str] = &["INBOX", "Drafts", "Sent", "Junk", "Trash", "Archive"];

/// Which protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// [`crate::pop3::run`].
    Pop3,
    /// [`crate::imap::run`].
    Imap,
}

/// What one session did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// What the server wrote.
    pub output: Vec<u8>,
    /// The session did not end within [`SESSION_TIMEOUT`] (it was then
    /// signalled to shut down and dropped).
    pub timed_out: bool,
}

struct Harness {
    rt: tokio::runtime::Runtime,
    cfg: Arc<Config>,
    backends: Backends,
    tls: Option<TlsAcceptor>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = scratch_dir();
        let mut cfg = Config::default();
        cfg.server.data_dir = dir;
        cfg.access.allow_plaintext_auth = true;
        cfg.access.imap_idle_timeout_secs = 5;
        cfg.access.pop3_idle_timeout_secs = 5;
        cfg.access.pop3_lock_lease_secs = 3;
        cfg.access.max_login_failures = 2;
        cfg.access.login_failure_window_secs = 60;
        cfg.access.max_append_size = 256 * 1024;
        let backends = Backends::open_embedded(&cfg).expect("embedded backends");
        let tls = posthorn_tls::server_config(&cfg)
            .ok()
            .map(TlsAcceptor::from);
        rt.block_on(async {
            let meta = &backends.meta;
            meta.add_domain("example.test").await.expect("domain");
            meta.add_account(USER, CHEAP_HASH).await.expect("account");
            meta.create_mailbox(USER, "Archive", None)
                .await
                .expect("mailbox");
            restore(&backends).await;
        });
        Harness {
            rt,
            cfg: Arc::new(cfg),
            backends,
            tls,
        }
    })
}

/// A fresh directory under the system temp dir for this process; those of
/// processes that no longer run are removed first.
fn scratch_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    let proc = std::path::Path::new("/proc");
    // Only where /proc tells which processes run (Linux).
    if proc.join("self").exists()
        && let Ok(rd) = std::fs::read_dir(&tmp)
    {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.strip_prefix("posthorn-fuzz-")
                && !proc.join(pid).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tmp.join(format!("posthorn-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// The messages alice's INBOX is refilled with: plain, multipart with an
/// attachment and an encapsulated message, and one with 8-bit bytes.
fn seed_messages() -> [(&'static str, &'static [u8]); 3] {
    [
        (
            "Return-Path: <sender@example.org>\r\n",
            b"From: Sender <sender@example.org>\r\nTo: alice@example.test\r\n\
Subject: plain\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <p@example.org>\r\n\r\n\
Hello Alice,\r\n.leading dot\r\n..two dots\r\n\r\nbye\r\n",
        ),
        (
            "Return-Path: <bob@example.org>\r\n",
            b"From: =?UTF-8?B?Qm9iIMOE?= <bob@example.org>\r\nTo: alice@example.test, team@example.test\r\n\
Cc: carol@example.org\r\nSubject: =?UTF-8?Q?multi=C3=A4part?=\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
caf=C3=A9\r\n--b1\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\n\
Content-Disposition: attachment; filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAECAwQFBgc=\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: inner@example.org\r\n\
Subject: inner\r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\n\
Content-Type: text/plain\r\n\r\ninner text\r\n--b2\r\nContent-Type: text/html\r\n\r\n\
<p>inner</p>\r\n--b2--\r\n\r\n--b1--\r\nepilogue\r\n",
        ),
        (
            "",
            b"Subject: 8bit \xc3\xa4\xff\r\nFrom: broken header without address\r\n\
X-Nul: a\x00b\r\n\r\nbody with \x00 NUL and a bare \n line feed and \r bare CR\r\n",
        ),
    ]
}

/// Bring the store back into range: INBOX 3..=40 messages (refilled with
/// [`seed_messages`] when outside), at most 30 mailboxes, `Archive` present.
async fn restore(b: &Backends) {
    let meta = &b.meta;
    let Ok(inbox) = meta.fetch(USER, "INBOX", 1, u32::MAX).await else {
        return;
    };
    if !(3..=40).contains(&inbox.len()) {
        let uids: Vec<u32> = inbox.iter().map(|m| m.uid).collect();
        let _ = meta.expunge(USER, "INBOX", &uids).await;
        for (prefix, body) in seed_messages() {
            let Ok(blob_key) = b.blobs.put(Bytes::from_static(body)).await else {
                return;
            };
            let r = meta
                .append(
                    USER,
                    "INBOX",
                    NewMessage {
                        dedupe_key: None,
                        flags: vec![],
                        internal_date: 1_704_103_200,
                        size: (prefix.len() + body.len()) as u64,
                        blob_key,
                        header_prefix: prefix.into(),
                        envelope: None,
                        bodystructure: None,
                    },
                )
                .await;
            if !matches!(r, Ok(AppendOutcome::Appended { .. })) {
                return;
            }
        }
    }
    let Ok(boxes) = meta.list_mailboxes(USER).await else {
        return;
    };
    if boxes.len() > 30 {
        let mut extra: Vec<String> = boxes
            .into_iter()
            .map(|m| m.name)
            .filter(|n| !BASE_MAILBOXES.iter().any(|b| b.eq_ignore_ascii_case(n)))
            .collect();
        // Inferiors first.
        extra.sort_by_key(|n| std::cmp::Reverse(n.matches('/').count()));
        for name in extra {
            let _ = meta.delete_mailbox(USER, &name).await;
        }
    }
    if let Ok(None) = meta.get_mailbox(USER, "Archive").await {
        let _ = meta.create_mailbox(USER, "Archive", None).await;
    }
}

/// Put the store back into its initial state: only the base mailboxes,
/// all empty except INBOX with the seed messages. For replaying seeds whose
/// transcripts are checked.
pub fn reset_store() {
    let h = harness();
    h.rt.block_on(async {
        let meta = &h.backends.meta;
        let Ok(boxes) = meta.list_mailboxes(USER).await else {
            return;
        };
        let mut extra = Vec::new();
        for m in boxes {
            if BASE_MAILBOXES
                .iter()
                .any(|b| b.eq_ignore_ascii_case(&m.name))
            {
                if let Ok(msgs) = meta.fetch(USER, &m.name, 1, u32::MAX).await {
                    let uids: Vec<u32> = msgs.iter().map(|m| m.uid).collect();
                    let _ = meta.expunge(USER, &m.name, &uids).await;
                }
            } else {
                extra.push(m.name);
            }
        }
        extra.sort_by_key(|n| std::cmp::Reverse(n.matches('/').count()));
        for name in extra {
            let _ = meta.delete_mailbox(USER, &name).await;
        }
        // INBOX is empty now: restore() refills it.
        restore(&h.backends).await;
    });
}

/// Run one POP3 session with `data` as everything the client sends.
pub fn pop3_session(data: &[u8]) {
    session(Protocol::Pop3, data);
}

/// Run one IMAP session with `data` as everything the client sends.
pub fn imap_session(data: &[u8]) {
    session(Protocol::Imap, data);
}

/// Sizes of the successive writes of `data`: a reproducible mix of single
/// bytes, small and large chunks.
fn chunk_sizes(data: &[u8]) -> impl Iterator<Item = usize> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ data.len() as u64;
    for &b in data.iter().take(16) {
        x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    std::iter::from_fn(move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        Some(match x % 8 {
            0 => 1,
            1 => 2,
            2 => 7,
            3 | 4 => 64,
            5 => 300,
            _ => 4096,
        })
    })
}

/// Run one session of `proto` fed with `data`; see the module docs.
///
/// Blocks on the harness's own runtime: call it from plain threads, not
/// from async code.
pub fn session(proto: Protocol, data: &[u8]) -> Outcome {
    let h = harness();
    h.rt.block_on(async {
        restore(&h.backends).await;
        let ctx = Arc::new(Ctx::new(h.cfg.clone(), h.backends.clone(), h.tls.clone()));
        let peer = Peer {
            ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            tls: false,
        };
        let (client, server) = tokio::io::duplex(16 * 1024);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let server = async move {
            match proto {
                Protocol::Pop3 => crate::pop3::run(ctx, Box::new(server), peer, shutdown).await,
                Protocol::Imap => crate::imap::run(ctx, Box::new(server), peer, shutdown).await,
            }
        };
        let (mut rd, mut wr) = tokio::io::split(client);
        let out = std::cell::RefCell::new(Vec::new());
        let reader = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => out.borrow_mut().extend_from_slice(&buf[..k]),
                }
            }
        };
        let writer = async move {
            let mut rest = data;
            let mut sizes = chunk_sizes(data);
            while !rest.is_empty() {
                let k = sizes.next().unwrap_or(rest.len()).min(rest.len());
                if wr.write_all(&rest[..k]).await.is_err() {
                    // The server closed the connection.
                    return;
                }
                rest = &rest[k..];
                tokio::task::yield_now().await;
            }
            let _ = wr.shutdown().await;
        };
        let mut all = Box::pin(async {
            tokio::join!(server, reader, writer);
        });
        let timed_out = tokio::time::timeout(SESSION_TIMEOUT, &mut all)
            .await
            .is_err();
        if timed_out {
            // Ask the session to end; give it a moment, then drop it.
            shutdown_tx.send_replace(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut all).await;
        }
        drop(all);
        Outcome {
            output: out.into_inner(),
            timed_out,
        }
    })
}
