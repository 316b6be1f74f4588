//! POP3 black-box tests: a real TCP listener running `posthorn_access::pop3::run`
//! over the embedded backends, exact replies checked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use posthorn_access::{Ctx, Io, Peer, pop3};
use posthorn_backends::Backends;
use posthorn_config::Config;
use posthorn_mailbox_store::{
    Account, Alias, AppendOutcome, FlagOp, FlagUpdate, MailboxInfo, MessageMeta, MetaStore,
    NewMessage, Quota, Result, SpecialUse, Usage,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-pw";
/// Upper bound for any single step of a test: only bounds a hang (every
/// wait returns as soon as its reply arrives).
const STEP: Duration = Duration::from_secs(60);

struct Server {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn server(tweak: impl FnOnce(&mut Config)) -> Server {
    server_with(tweak, |m| m).await
}

async fn server_with(
    tweak: impl FnOnce(&mut Config),
    wrap: impl FnOnce(Arc<dyn MetaStore>) -> Arc<dyn MetaStore>,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.access.allow_plaintext_auth = true;
    tweak(&mut cfg);
    let mut backends = Backends::open_embedded(&cfg).unwrap();
    backends.meta = wrap(backends.meta);
    let tls = posthorn_tls::server_config(&cfg)
        .ok()
        .map(tokio_rustls::TlsAcceptor::from);
    let ctx = Arc::new(Ctx::new(Arc::new(cfg), backends, tls));
    let meta = &ctx.backends.meta;
    meta.add_domain("example.test").await.unwrap();
    let hash = posthorn_auth::hash_password(ALICE_PW.into()).await.unwrap();
    meta.add_account(ALICE, &hash).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let c = ctx.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                return;
            };
            let peer = Peer {
                ip: peer.ip(),
                tls: false,
            };
            tokio::spawn(pop3::run(c.clone(), Box::new(sock), peer, rx.clone()));
        }
    });
    Server {
        ctx,
        addr,
        shutdown: tx,
        _dir: dir,
    }
}

impl Server {
    /// Append a message to alice's INBOX; returns its UID.
    async fn deliver(&self, prefix: &str, body: &str) -> u32 {
        let key = self
            .ctx
            .backends
            .blobs
            .put(Bytes::copy_from_slice(body.as_bytes()))
            .await
            .unwrap();
        let r = self
            .ctx
            .backends
            .meta
            .append(
                ALICE,
                "INBOX",
                NewMessage {
                    dedupe_key: None,
                    flags: vec![],
                    internal_date: 1_700_000_000,
                    size: (prefix.len() + body.len()) as u64,
                    blob_key: key,
                    header_prefix: prefix.into(),
                    envelope: None,
                    bodystructure: None,
                },
            )
            .await
            .unwrap();
        match r {
            AppendOutcome::Appended { uid, .. } => uid,
            other => panic!("{other:?}"),
        }
    }

    async fn uids(&self) -> Vec<u32> {
        self.ctx
            .backends
            .meta
            .fetch(ALICE, "INBOX", 1, u32::MAX)
            .await
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect()
    }

    async fn uidvalidity(&self) -> u32 {
        self.ctx
            .backends
            .meta
            .get_mailbox(ALICE, "INBOX")
            .await
            .unwrap()
            .unwrap()
            .uidvalidity
    }

    async fn connect(&self) -> Client {
        let s = TcpStream::connect(self.addr).await.unwrap();
        let mut c = Client {
            r: BufReader::new(Box::new(s)),
        };
        let greeting = c.line().await;
        assert_eq!(greeting, "+OK Posthorn POP3 server ready\r\n");
        c
    }

    /// A client logged in as alice.
    async fn login(&self) -> Client {
        let mut c = self.connect().await;
        assert_eq!(c.cmd(&format!("USER {ALICE}")).await, "+OK Send PASS\r\n");
        let r = c.cmd(&format!("PASS {ALICE_PW}")).await;
        assert!(r.starts_with("+OK Logged in"), "{r}");
        c
    }
    /// A client logged in as alice once the maildrop lock is free: every
    /// `[IN-USE]` answer is retried after `poll`, within [`STEP`] (the wait
    /// is on the lock, the deadline only bounds a hang).
    async fn login_when_free(&self, poll: Duration) -> Option<Client> {
        tokio::time::timeout(STEP, async {
            loop {
                let mut c = self.connect().await;
                c.cmd(&format!("USER {ALICE}")).await;
                let r = c.cmd(&format!("PASS {ALICE_PW}")).await;
                if r.starts_with("+OK") {
                    return c;
                }
                assert_eq!(r, "-ERR [IN-USE] Maildrop already locked\r\n");
                tokio::time::sleep(poll).await;
            }
        })
        .await
        .ok()
    }
}

struct Client {
    r: BufReader<Box<dyn Io>>,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.unwrap();
    }

    /// One line with its CRLF; "" at EOF.
    async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        tokio::time::timeout(STEP, self.r.read_until(b'\n', &mut buf))
            .await
            .expect("reply within time")
            .unwrap_or(0);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A multi-line reply (status line to the "." line, raw), or just the
    /// status line if it is negative.
    async fn multi(&mut self) -> String {
        let mut all = self.line().await;
        if !all.starts_with("+OK") {
            return all;
        }
        loop {
            let l = self.line().await;
            assert!(!l.is_empty(), "EOF inside a multi-line reply: {all}");
            all.push_str(&l);
            if l == ".\r\n" {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.line().await
    }

    async fn cmd_multi(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.multi().await
    }

    /// Whether the server closed the connection (after any pending bytes).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(STEP, self.r.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }
}

const MSG1: &str = "From: a@example.org\r\nSubject: one\r\n\r\nHello one\r\n";
const MSG2: &str = "From: b@example.org\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n";
const PREFIX: &str = "Return-Path: <a@example.org>\r\nDelivered-To: alice@example.test\r\n";

/// Walk a dialogue: (command, exact reply). Replies ending in ".\r\n" after
/// a "+OK" line are read as multi-line.
async fn dialogue(c: &mut Client, steps: &[(&str, String)]) {
    for (cmd, want) in steps {
        let got = if want.starts_with("+OK") && want.ends_with("\r\n.\r\n") {
            c.cmd_multi(cmd).await
        } else {
            c.cmd(cmd).await
        };
        assert_eq!(&got, want, "reply to {cmd:?}");
    }
}

#[tokio::test]
async fn rfc1939_example_session() {
    let s = server(|_| {}).await;
    s.deliver(PREFIX, MSG1).await;
    s.deliver("", MSG2).await;
    let (l1, l2) = (PREFIX.len() + MSG1.len(), MSG2.len());
    let mut c = s.connect().await;
    dialogue(
        &mut c,
        &[
            (&format!("USER {ALICE}"), "+OK Send PASS\r\n".into()),
            (
                &format!("PASS {ALICE_PW}"),
                format!(
                    "+OK Logged in, maildrop has 2 messages ({} octets)\r\n",
                    l1 + l2
                ),
            ),
            ("STAT", format!("+OK 2 {}\r\n", l1 + l2)),
            (
                "LIST",
                format!(
                    "+OK 2 messages ({} octets)\r\n1 {l1}\r\n2 {l2}\r\n.\r\n",
                    l1 + l2
                ),
            ),
            ("LIST 2", format!("+OK 2 {l2}\r\n")),
            ("LIST 3", "-ERR No such message\r\n".into()),
            ("RETR 1", format!("+OK {l1} octets\r\n{PREFIX}{MSG1}.\r\n")),
            ("DELE 1", "+OK Message 1 deleted\r\n".into()),
            ("RETR 1", "-ERR No such message\r\n".into()),
            ("DELE 1", "-ERR No such message\r\n".into()),
            ("LIST 1", "-ERR No such message\r\n".into()),
            ("STAT", format!("+OK 1 {l2}\r\n")),
            (
                "LIST",
                format!("+OK 1 messages ({l2} octets)\r\n2 {l2}\r\n.\r\n"),
            ),
            ("NOOP", "+OK \r\n".into()),
            ("RETR 2", format!("+OK {l2} octets\r\n{MSG2}.\r\n")),
            ("DELE 2", "+OK Message 2 deleted\r\n".into()),
            (
                "QUIT",
                "+OK Posthorn POP3 server signing off (0 messages left)\r\n".into(),
            ),
        ],
    )
    .await;
    assert!(c.closed().await);
    assert!(s.uids().await.is_empty());
    let mut c = s.login().await;
    assert_eq!(c.cmd("STAT").await, "+OK 0 0\r\n");
    assert_eq!(
        c.cmd_multi("LIST").await,
        "+OK 0 messages (0 octets)\r\n.\r\n"
    );
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK Posthorn POP3 server signing off (0 messages left)\r\n"
    );
}

#[tokio::test]
async fn capa_and_authorization_state() {
    let s = server(|_| {}).await;
    let mut c = s.connect().await;
    let capa = c.cmd_multi("CAPA").await;
    assert_eq!(
        capa,
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nIMPLEMENTATION Posthorn\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\n.\r\n"
    );
    for cmd in [
        "STAT", "LIST", "RETR 1", "DELE 1", "RSET", "TOP 1 1", "UIDL", "NOOP",
    ] {
        let r = c.cmd(cmd).await;
        assert!(
            r.starts_with("-ERR Command not valid in AUTHORIZATION state"),
            "{cmd}: {r}"
        );
    }
    // Eight errors so far; the limit is ten.
    let mut c = s.connect().await;
    assert_eq!(c.cmd("PASS x").await, "-ERR Send USER first\r\n");
    assert_eq!(
        c.cmd("APOP alice 0123").await,
        "-ERR APOP is not supported\r\n"
    );
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK Posthorn POP3 server signing off\r\n"
    );
    assert!(c.closed().await);

    let mut c = s.login().await;
    let capa = c.cmd_multi("capa").await;
    assert!(!capa.contains("USER") && !capa.contains("STLS"), "{capa}");
    for cmd in ["USER x", "PASS x", "AUTH PLAIN", "STLS"] {
        let r = c.cmd(cmd).await;
        assert_eq!(
            r, "-ERR Command not valid in TRANSACTION state\r\n",
            "{cmd}"
        );
    }
}

#[tokio::test]
async fn byte_stuffing_and_top() {
    let s = server(|_| {}).await;
    let body = "Subject: dots\r\n.Hidden: header-ish\r\n\r\n.\r\nline 1\r\n..two dots\r\n. space\r\nlast\r\n";
    s.deliver("", body).await;
    let mut c = s.login().await;
    let stuffed = "Subject: dots\r\n..Hidden: header-ish\r\n\r\n..\r\nline 1\r\n...two dots\r\n.. space\r\nlast\r\n";
    dialogue(
        &mut c,
        &[
            (
                "RETR 1",
                format!("+OK {} octets\r\n{stuffed}.\r\n", body.len()),
            ),
            (
                "TOP 1 0",
                "+OK Top of message follows\r\nSubject: dots\r\n..Hidden: header-ish\r\n\r\n.\r\n"
                    .into(),
            ),
            (
                "TOP 1 2",
                "+OK Top of message follows\r\nSubject: dots\r\n..Hidden: header-ish\r\n\r\n..\r\nline 1\r\n.\r\n"
                    .into(),
            ),
            (
                "TOP 1 100",
                format!("+OK Top of message follows\r\n{stuffed}.\r\n"),
            ),
            ("TOP 1", "-ERR Syntax: TOP msg lines\r\n".into()),
            (
                "TOP 1 x",
                "-ERR Syntax: TOP msg lines (lines is a number)\r\n".into(),
            ),
            ("TOP 2 1", "-ERR No such message\r\n".into()),
        ],
    )
    .await;
    // A message not ending in CRLF still gets its own "." line.
    s.deliver("", "Subject: x\r\n\r\nno newline").await;
    let mut c2 = s.connect().await;
    c2.cmd(&format!("USER {ALICE}")).await;
    assert!(
        c2.cmd(&format!("PASS {ALICE_PW}"))
            .await
            .starts_with("-ERR [IN-USE]")
    );
    c.cmd("QUIT").await;
    let mut c = s.login().await;
    assert_eq!(
        c.cmd_multi("RETR 2").await,
        "+OK 24 octets\r\nSubject: x\r\n\r\nno newline\r\n.\r\n"
    );
}

#[tokio::test]
async fn uidl_is_stable_across_sessions() {
    let s = server(|_| {}).await;
    let u1 = s.deliver("", MSG1).await;
    let u2 = s.deliver("", MSG2).await;
    let v = s.uidvalidity().await;
    let mut c = s.login().await;
    let want = format!("+OK Unique-ID listing follows\r\n1 {v}.{u1}\r\n2 {v}.{u2}\r\n.\r\n");
    assert_eq!(c.cmd_multi("UIDL").await, want);
    assert_eq!(c.cmd("UIDL 2").await, format!("+OK 2 {v}.{u2}\r\n"));
    assert_eq!(c.cmd("UIDL 3").await, "-ERR No such message\r\n");
    // Delete the first one; the second keeps its id though its number changes.
    c.cmd("DELE 1").await;
    assert_eq!(
        c.cmd_multi("UIDL").await,
        format!("+OK Unique-ID listing follows\r\n2 {v}.{u2}\r\n.\r\n")
    );
    c.cmd("QUIT").await;
    let u3 = s.deliver("", MSG1).await;
    let mut c = s.login().await;
    assert_eq!(
        c.cmd_multi("UIDL").await,
        format!("+OK Unique-ID listing follows\r\n1 {v}.{u2}\r\n2 {v}.{u3}\r\n.\r\n")
    );
    assert_eq!(c.cmd("UIDL 1").await, format!("+OK 1 {v}.{u2}\r\n"));
}

#[tokio::test]
async fn dele_then_rset_keeps_everything() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    s.deliver("", MSG2).await;
    let total = MSG1.len() + MSG2.len();
    let mut c = s.login().await;
    dialogue(
        &mut c,
        &[
            ("DELE 1", "+OK Message 1 deleted\r\n".into()),
            ("DELE 2", "+OK Message 2 deleted\r\n".into()),
            ("STAT", "+OK 0 0\r\n".into()),
            (
                "RSET",
                format!("+OK Maildrop has 2 messages ({total} octets)\r\n"),
            ),
            ("STAT", format!("+OK 2 {total}\r\n")),
            (
                "QUIT",
                "+OK Posthorn POP3 server signing off (2 messages left)\r\n".into(),
            ),
        ],
    )
    .await;
    assert_eq!(s.uids().await.len(), 2);
}

#[tokio::test]
async fn dele_without_quit_is_not_committed() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    s.deliver("", MSG2).await;
    let mut c = s.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted\r\n");
    drop(c);
    // The lock is released at the end of the session, so a new login works.
    let mut c = s.login_when_free(Duration::from_millis(50)).await.unwrap();
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 2 {}\r\n", MSG1.len() + MSG2.len())
    );
    assert_eq!(s.uids().await.len(), 2);
}

#[tokio::test]
async fn dele_and_quit_expunges_and_publishes_an_event() {
    let s = server(|_| {}).await;
    let u1 = s.deliver("", MSG1).await;
    let u2 = s.deliver("", MSG2).await;
    let mut events = s
        .ctx
        .backends
        .bus
        .subscribe_events(Some(ALICE))
        .await
        .unwrap();
    let mut c = s.login().await;
    c.cmd("DELE 1").await;
    c.cmd_multi("RETR 2").await;
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK Posthorn POP3 server signing off (1 messages left)\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(s.uids().await, vec![u2]);
    let _ = u1;
    use futures::StreamExt;
    let mut kinds = Vec::new();
    let deadline = tokio::time::Instant::now() + STEP;
    while !kinds.iter().any(|k| k == "expunge") {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(e)) => {
                assert_eq!((e.account.as_str(), e.mailbox.as_str()), (ALICE, "INBOX"));
                kinds.push(e.kind);
            }
            Ok(None) => panic!("event stream ended without an expunge event: {kinds:?}"),
            Err(_) => panic!("no expunge event within {STEP:?}: {kinds:?}"),
        }
    }
    // The retrieved, kept message is \Seen now.
    let m = s
        .ctx
        .backends
        .meta
        .fetch(ALICE, "INBOX", u2, u2)
        .await
        .unwrap();
    assert!(m[0].flags.iter().any(|f| f == "\\Seen"), "{:?}", m[0].flags);
}

#[tokio::test]
async fn snapshot_ignores_later_deliveries() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    let mut c = s.login().await;
    s.deliver("", MSG2).await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}\r\n", MSG1.len()));
    assert_eq!(c.cmd("LIST 2").await, "-ERR No such message\r\n");
    c.cmd("DELE 1").await;
    c.cmd("QUIT").await;
    assert!(c.closed().await);
    let mut c = s.login().await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}\r\n", MSG2.len()));
}

#[tokio::test]
async fn second_login_is_refused_while_locked() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    let mut first = s.login().await;
    let mut second = s.connect().await;
    second.cmd(&format!("USER {ALICE}")).await;
    assert_eq!(
        second.cmd(&format!("PASS {ALICE_PW}")).await,
        "-ERR [IN-USE] Maildrop already locked\r\n"
    );
    assert!(second.closed().await);
    // Also through AUTH PLAIN.
    let mut third = s.connect().await;
    assert_eq!(
        third
            .cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==")
            .await,
        "-ERR [IN-USE] Maildrop already locked\r\n"
    );
    // The first session is unaffected; after its QUIT the lock is free.
    assert_eq!(first.cmd("STAT").await, format!("+OK 1 {}\r\n", MSG1.len()));
    first.cmd("QUIT").await;
    assert!(first.closed().await);
    let mut again = s.login().await;
    assert_eq!(again.cmd("STAT").await, format!("+OK 1 {}\r\n", MSG1.len()));
}

/// The lock is released before QUIT is answered: a client that logs in
/// again the moment it reads `+OK` never finds its own old lock.
#[tokio::test]
async fn relogin_right_after_quit_is_not_in_use() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    for _ in 0..20 {
        let mut c = s.login().await;
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
        // No wait for the connection to close.
        let mut next = s.connect().await;
        next.cmd(&format!("USER {ALICE}")).await;
        let r = next.cmd(&format!("PASS {ALICE_PW}")).await;
        assert!(r.starts_with("+OK"), "{r}");
        next.cmd("QUIT").await;
    }
}

#[tokio::test]
async fn renewal_keeps_the_lock_beyond_one_lease() {
    // Renewed every second (a third of the lease): a busy machine may delay
    // renewals by up to 3 s without losing the lock.
    let s = server(|c| c.access.pop3_lock_lease_secs = 3).await;
    let mut first = s.login().await;
    // A lower bound: the lease was taken before the login was answered.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let mut second = s.connect().await;
    second.cmd(&format!("USER {ALICE}")).await;
    assert_eq!(
        second.cmd(&format!("PASS {ALICE_PW}")).await,
        "-ERR [IN-USE] Maildrop already locked\r\n"
    );
    assert_eq!(first.cmd("STAT").await, "+OK 0 0\r\n");
}

#[tokio::test]
async fn crashed_holder_blocks_only_until_the_lease_expires() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    let meta = &s.ctx.backends.meta;
    let lock = format!("pop3:{ALICE}");
    // Held (for longer than any step of the test takes): refused.
    assert!(
        meta.acquire_lease(&lock, "crashed-pod/1", Duration::from_secs(120))
            .await
            .unwrap()
    );
    let mut c = s.connect().await;
    c.cmd(&format!("USER {ALICE}")).await;
    assert_eq!(
        c.cmd(&format!("PASS {ALICE_PW}")).await,
        "-ERR [IN-USE] Maildrop already locked\r\n"
    );
    // The holder's last renewal was for 1.5 s and then it "crashed": logins
    // are refused until that lease expires, then succeed.
    let ttl = Duration::from_millis(1500);
    let renewed = std::time::Instant::now();
    assert!(
        meta.acquire_lease(&lock, "crashed-pod/1", ttl)
            .await
            .unwrap()
    );
    let mut c = s
        .login_when_free(Duration::from_millis(100))
        .await
        .expect("a login once the crashed holder's lease expired");
    // `renewed` is before the lease was set: a lower bound (50 ms for clock
    // granularity).
    let free_after = renewed.elapsed();
    assert!(
        free_after + Duration::from_millis(50) >= ttl,
        "logged in {free_after:?} after a {ttl:?} lease was taken"
    );
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}\r\n", MSG1.len()));
}

#[tokio::test]
async fn auth_plain() {
    let s = server(|_| {}).await;
    // "\0alice@example.test\0alice-pw"
    let good = "AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==";
    // "\0alice@example.test\0wrong"
    let bad = "AGFsaWNlQGV4YW1wbGUudGVzdAB3cm9uZw==";
    let mut c = s.connect().await;
    dialogue(
        &mut c,
        &[
            (
                "AUTH CRAM-MD5",
                "-ERR Unsupported SASL mechanism\r\n".into(),
            ),
            (
                "AUTH",
                "+OK Supported SASL mechanisms follow\r\nPLAIN\r\n.\r\n".into(),
            ),
            ("AUTH PLAIN", "+ \r\n".into()),
            ("*", "-ERR Authentication cancelled\r\n".into()),
            ("AUTH PLAIN", "+ \r\n".into()),
            (
                "not base64!",
                "-ERR [AUTH] Invalid SASL PLAIN response\r\n".into(),
            ),
            (
                &format!("AUTH PLAIN {bad}"),
                "-ERR [AUTH] Invalid credentials\r\n".into(),
            ),
            ("AUTH PLAIN", "+ \r\n".into()),
            (bad, "-ERR [AUTH] Invalid credentials\r\n".into()),
            // authzid differing from authcid: "bob@example.test\0alice@example.test\0alice-pw"
            (
                "AUTH PLAIN Ym9iQGV4YW1wbGUudGVzdABhbGljZUBleGFtcGxlLnRlc3QAYWxpY2UtcHc=",
                "-ERR [AUTH] Authorization as another user is not permitted\r\n".into(),
            ),
            ("AUTH PLAIN", "+ \r\n".into()),
            (
                good,
                "+OK Logged in, maildrop has 0 messages (0 octets)\r\n".into(),
            ),
            (
                "QUIT",
                "+OK Posthorn POP3 server signing off (0 messages left)\r\n".into(),
            ),
        ],
    )
    .await;
    let mut c = s.connect().await;
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {good}")).await,
        "+OK Logged in, maildrop has 0 messages (0 octets)\r\n"
    );
}

#[tokio::test]
async fn wrong_password_is_refused_after_a_delay() {
    let s = server(|_| {}).await;
    for user in [
        ALICE,
        "nobody@example.test",
        "no-domain",
        "ALICE@EXAMPLE.TEST",
    ] {
        let mut c = s.connect().await;
        c.cmd(&format!("USER {user}")).await;
        let t = std::time::Instant::now();
        assert_eq!(
            c.cmd("PASS not the password").await,
            "-ERR [AUTH] Invalid credentials\r\n"
        );
        assert!(t.elapsed() >= pop3::FAILED_LOGIN_DELAY);
        // The session stays usable.
        c.cmd(&format!("USER {user}")).await;
        let r = c.cmd(&format!("PASS {ALICE_PW}")).await;
        assert_eq!(
            r.starts_with("+OK"),
            user.eq_ignore_ascii_case(ALICE),
            "{user}: {r}"
        );
    }
}

#[tokio::test]
async fn throttled_after_repeated_failures() {
    let s = server(|c| c.access.max_login_failures = 3).await;
    for _ in 0..3 {
        let mut c = s.connect().await;
        c.cmd(&format!("USER {ALICE}")).await;
        assert_eq!(
            c.cmd("PASS wrong").await,
            "-ERR [AUTH] Invalid credentials\r\n"
        );
    }
    let mut c = s.connect().await;
    c.cmd(&format!("USER {ALICE}")).await;
    assert_eq!(
        c.cmd(&format!("PASS {ALICE_PW}")).await,
        "-ERR [AUTH] Too many failed logins, try later\r\n"
    );
}

#[tokio::test]
async fn plaintext_needs_tls_unless_allowed() {
    let s = server(|c| c.access.allow_plaintext_auth = false).await;
    s.deliver("", MSG1).await;
    let mut c = s.connect().await;
    let refused = "-ERR [AUTH] Plain-text authentication requires TLS (use STLS)\r\n";
    let capa = c.cmd_multi("CAPA").await;
    assert!(capa.contains("\r\nSTLS\r\n"), "{capa}");
    assert!(!capa.contains("USER") && !capa.contains("SASL"), "{capa}");
    assert_eq!(c.cmd(&format!("USER {ALICE}")).await, refused);
    assert_eq!(c.cmd(&format!("PASS {ALICE_PW}")).await, refused);
    assert_eq!(c.cmd("AUTH PLAIN").await, refused);
    assert_eq!(
        c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==")
            .await,
        refused
    );
    // STLS; a command pipelined behind it must be discarded (RFC 2595 §4).
    c.send(b"STLS\r\nCAPA\r\n").await;
    assert_eq!(c.line().await, "+OK Begin TLS negotiation\r\n");
    let mut c = starttls(c, &s).await;
    let capa = c.cmd_multi("CAPA").await;
    assert!(
        capa.contains("\r\nUSER\r\n") && capa.contains("\r\nSASL PLAIN\r\n"),
        "{capa}"
    );
    assert!(!capa.contains("STLS"), "{capa}");
    assert_eq!(c.cmd("STLS").await, "-ERR TLS is already active\r\n");
    assert_eq!(c.cmd(&format!("USER {ALICE}")).await, "+OK Send PASS\r\n");
    assert!(
        c.cmd(&format!("PASS {ALICE_PW}"))
            .await
            .starts_with("+OK Logged in")
    );
    assert_eq!(
        c.cmd_multi("RETR 1").await,
        format!("+OK {} octets\r\n{MSG1}.\r\n", MSG1.len())
    );
}

/// TLS handshake over the client's socket, trusting the server's generated certificate.
async fn starttls(c: Client, s: &Server) -> Client {
    use rustls::pki_types::pem::PemObject;
    let cert = s.ctx.cfg.server.data_dir.join("tls/cert.pem");
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(der.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    assert!(c.r.buffer().is_empty());
    let sock = c.r.into_inner();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(STEP, connector.connect(name, sock))
        .await
        .unwrap()
        .unwrap();
    Client {
        r: BufReader::new(Box::new(tls)),
    }
}

#[tokio::test]
async fn bad_input_never_breaks_the_session() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    let mut c = s.login().await;
    let no = "-ERR No such message\r\n";
    let cases: &[(&str, &str)] = &[
        ("LIST 0", no),
        ("LIST 2", no),
        ("LIST -1", no),
        ("LIST abc", no),
        ("RETR 99999999999999999999", no),
        ("DELE 4294967296", no),
        ("UIDL 1x", no),
        ("LIST 1 2", "-ERR Syntax: LIST [msg]\r\n"),
        ("RETR", "-ERR Syntax: RETR msg\r\n"),
    ];
    for (cmd, want) in cases {
        assert_eq!(c.cmd(cmd).await, *want, "{cmd}");
    }
    // 9 errors so far: one more would close the session; check the
    // limit on a fresh one instead.
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}\r\n", MSG1.len()));

    c.cmd("QUIT").await;
    assert!(c.closed().await);
    let mut c = s.login().await;
    c.send(b"\x00\xff\xfe garbage\r\n").await;
    assert_eq!(c.line().await, "-ERR Unknown command\r\n");
    c.send(&[b'A'; 5000]).await;
    c.send(b"\r\n").await;
    assert_eq!(c.line().await, "-ERR Line too long\r\n");
    assert_eq!(c.cmd("").await, "-ERR Unknown command\r\n");
    assert_eq!(c.cmd("NOOP").await, "+OK \r\n");
    for _ in 0..6 {
        assert_eq!(c.cmd("XYZZY").await, "-ERR Unknown command\r\n");
    }
    // The tenth error closes the session.
    assert_eq!(
        c.cmd("XYZZY").await,
        "-ERR Too many errors, closing connection\r\n"
    );
    assert!(c.closed().await);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    s.deliver("", MSG2).await;
    let mut c = s.connect().await;
    c.send(
        format!("USER {ALICE}\r\nPASS {ALICE_PW}\r\nSTAT\r\nRETR 2\r\nDELE 1\r\nLIST\r\nQUIT\r\n")
            .as_bytes(),
    )
    .await;
    let mut all = Vec::new();
    tokio::time::timeout(STEP, c.r.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let total = MSG1.len() + MSG2.len();
    let want = format!(
        "+OK Send PASS\r\n+OK Logged in, maildrop has 2 messages ({total} octets)\r\n+OK 2 {total}\r\n+OK {} octets\r\n{MSG2}.\r\n+OK Message 1 deleted\r\n+OK 1 messages ({} octets)\r\n2 {}\r\n.\r\n+OK Posthorn POP3 server signing off (1 messages left)\r\n",
        MSG2.len(),
        MSG2.len(),
        MSG2.len()
    );
    assert_eq!(String::from_utf8_lossy(&all), want);
}

#[tokio::test]
async fn idle_timeout_closes_without_update() {
    // Long enough that the DELE below surely comes in time on a busy machine.
    let s = server(|c| c.access.pop3_idle_timeout_secs = 3).await;
    s.deliver("", MSG1).await;
    let mut c = s.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted\r\n");
    assert_eq!(
        c.line().await,
        "-ERR Autologout: idle for too long, closing connection\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(s.uids().await.len(), 1);
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_without_update() {
    let s = server(|_| {}).await;
    s.deliver("", MSG1).await;
    let mut c = s.login().await;
    c.cmd("DELE 1").await;
    s.shutdown.send_replace(true);
    assert_eq!(c.line().await, "-ERR [SYS/TEMP] Server shutting down\r\n");
    assert!(c.closed().await);
    assert_eq!(s.uids().await.len(), 1);
    // New connections are told so at once.
    let sock = TcpStream::connect(s.addr).await.unwrap();
    let mut c = Client {
        r: BufReader::new(Box::new(sock)),
    };
    assert_eq!(c.line().await, "-ERR [SYS/TEMP] Server shutting down\r\n");
}

/// The embedded store, except that lease renewals can be made to fail, as
/// when another replica took the lease after it expired.
struct StolenLease {
    inner: Arc<dyn MetaStore>,
    stolen: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl MetaStore for StolenLease {
    async fn acquire_lease(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        if self.stolen.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(false);
        }
        self.inner.acquire_lease(name, owner, ttl).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn add_domain(&self, domain: &str) -> Result<()> {
        self.inner.add_domain(domain).await
    }
    async fn remove_domain(&self, domain: &str) -> Result<()> {
        self.inner.remove_domain(domain).await
    }
    async fn list_domains(&self) -> Result<Vec<String>> {
        self.inner.list_domains().await
    }
    async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        self.inner.is_local_domain(domain).await
    }
    async fn add_account(&self, address: &str, password_hash: &str) -> Result<()> {
        self.inner.add_account(address, password_hash).await
    }
    async fn get_account(&self, address: &str) -> Result<Option<Account>> {
        self.inner.get_account(address).await
    }
    async fn remove_account(&self, address: &str) -> Result<()> {
        self.inner.remove_account(address).await
    }
    async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>> {
        self.inner.list_accounts(domain).await
    }
    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        self.inner.set_password(address, password_hash).await
    }
    async fn set_quota(&self, address: &str, quota: Quota) -> Result<()> {
        self.inner.set_quota(address, quota).await
    }
    async fn get_usage(&self, address: &str) -> Result<Usage> {
        self.inner.get_usage(address).await
    }
    async fn set_alias(&self, alias: &Alias) -> Result<()> {
        self.inner.set_alias(alias).await
    }
    async fn get_alias(&self, address: &str) -> Result<Option<Alias>> {
        self.inner.get_alias(address).await
    }
    async fn remove_alias(&self, address: &str) -> Result<()> {
        self.inner.remove_alias(address).await
    }
    async fn list_aliases(&self) -> Result<Vec<Alias>> {
        self.inner.list_aliases().await
    }
    async fn create_mailbox(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo> {
        self.inner.create_mailbox(account, name, special_use).await
    }
    async fn delete_mailbox(&self, account: &str, name: &str) -> Result<()> {
        self.inner.delete_mailbox(account, name).await
    }
    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<()> {
        self.inner.rename_mailbox(account, from, to).await
    }
    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>> {
        self.inner.list_mailboxes(account).await
    }
    async fn get_mailbox(&self, account: &str, name: &str) -> Result<Option<MailboxInfo>> {
        self.inner.get_mailbox(account, name).await
    }
    async fn set_subscribed(&self, account: &str, name: &str, subscribed: bool) -> Result<()> {
        self.inner.set_subscribed(account, name, subscribed).await
    }
    async fn append(&self, account: &str, mailbox: &str, msg: NewMessage) -> Result<AppendOutcome> {
        self.inner.append(account, mailbox, msg).await
    }
    async fn fetch(
        &self,
        account: &str,
        mailbox: &str,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<MessageMeta>> {
        self.inner.fetch(account, mailbox, lo, hi).await
    }
    async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<Vec<FlagUpdate>> {
        self.inner
            .store_flags(account, mailbox, uids, op, flags, unchanged_since)
            .await
    }
    async fn expunge(&self, account: &str, mailbox: &str, uids: &[u32]) -> Result<Vec<u32>> {
        self.inner.expunge(account, mailbox, uids).await
    }
    async fn expunged_since(&self, account: &str, mailbox: &str, modseq: u64) -> Result<Vec<u32>> {
        self.inner.expunged_since(account, mailbox, modseq).await
    }
    async fn blob_refs(&self, blob_key: &str) -> Result<u64> {
        self.inner.blob_refs(blob_key).await
    }
    async fn gc_candidates(&self, before: i64) -> Result<Vec<String>> {
        self.inner.gc_candidates(before).await
    }
    async fn forget_blob(&self, blob_key: &str) -> Result<bool> {
        self.inner.forget_blob(blob_key).await
    }
    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        self.inner.release_lease(name, owner).await
    }
}

async fn stolen_lease_server(lease_secs: u64) -> (Server, Arc<std::sync::atomic::AtomicBool>) {
    let stolen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stolen.clone();
    let s = server_with(
        |c| c.access.pop3_lock_lease_secs = lease_secs,
        move |inner| Arc::new(StolenLease { inner, stolen: st }),
    )
    .await;
    (s, stolen)
}

#[tokio::test]
async fn lost_lease_ends_the_session_without_update() {
    // 3 s: renewals (every second) cannot lapse on a busy machine before
    // the lease is "stolen" below.
    let (s, stolen) = stolen_lease_server(3).await;
    s.deliver("", MSG1).await;
    let mut c = s.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted\r\n");
    stolen.store(true, std::sync::atomic::Ordering::SeqCst);
    // The next renewal (within a third of the lease) is refused.
    assert_eq!(
        c.line().await,
        "-ERR [SYS/TEMP] Maildrop lock lost, closing without changes\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(s.uids().await.len(), 1);
}

#[tokio::test]
async fn quit_after_the_lease_was_taken_commits_nothing() {
    let (s, stolen) = stolen_lease_server(60).await;
    s.deliver("", MSG1).await;
    let mut c = s.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK Message 1 deleted\r\n");
    stolen.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        c.cmd("QUIT").await,
        "-ERR [SYS/TEMP] Maildrop lock lost; deleted messages were not removed\r\n"
    );
    assert!(c.closed().await);
    assert_eq!(s.uids().await.len(), 1);
}
