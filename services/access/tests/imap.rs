//! IMAP black-box tests: a real TCP listener running `posthorn_access::imap::run`
//! over the embedded backends, exact responses checked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use posthorn_access::{Ctx, Peer, imap};
use posthorn_backends::Backends;
use posthorn_config::Config;
use posthorn_mailbox_store::NewMessage;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-pw";
/// Upper bound for any single step of a test: only bounds a hang (every
/// wait returns as soon as its reply arrives).
const STEP: Duration = Duration::from_secs(60);

struct Server {
    ctx: Arc<Ctx>,
    addr: SocketAddr,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn server(tweak: impl FnOnce(&mut Config)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.access.allow_plaintext_auth = true;
    tweak(&mut cfg);
    let backends = Backends::open_embedded(&cfg).unwrap();
    let ctx = Arc::new(Ctx::new(Arc::new(cfg), backends, None));
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
            tokio::spawn(imap::run(c.clone(), Box::new(sock), peer, rx.clone()));
        }
    });
    Server {
        ctx,
        addr,
        _shutdown: tx,
        _dir: dir,
    }
}

impl Server {
    async fn deliver(&self, mailbox: &str, body: &str, flags: &[&str], date: i64) -> u32 {
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
                mailbox,
                NewMessage {
                    dedupe_key: None,
                    flags: flags.iter().map(|f| f.to_string()).collect(),
                    internal_date: date,
                    size: body.len() as u64,
                    blob_key: key,
                    header_prefix: String::new(),
                    envelope: None,
                    bodystructure: None,
                },
            )
            .await
            .unwrap();
        match r {
            posthorn_mailbox_store::AppendOutcome::Appended { uid, .. } => uid,
            other => panic!("{other:?}"),
        }
    }

    async fn client(&self) -> Client {
        let s = TcpStream::connect(self.addr).await.unwrap();
        let mut c = Client {
            r: BufReader::new(s),
        };
        let g = c.line().await;
        assert!(g.starts_with("* OK [CAPABILITY IMAP4rev1 "), "{g}");
        c
    }

    async fn logged_in(&self) -> Client {
        let mut c = self.client().await;
        let r = c.cmd("l1 LOGIN alice@example.test alice-pw").await;
        assert!(r.last().unwrap().starts_with("l1 OK"), "{r:?}");
        c
    }
}

struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    async fn line(&mut self) -> String {
        let mut l = String::new();
        let n = tokio::time::timeout(STEP, self.r.read_line(&mut l))
            .await
            .expect("timeout")
            .unwrap();
        if n == 0 {
            return String::new();
        }
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    async fn send(&mut self, s: &str) {
        self.r.get_mut().write_all(s.as_bytes()).await.unwrap();
    }

    /// Send a command line; read through the tagged response.
    async fn cmd(&mut self, line: &str) -> Vec<String> {
        self.send(&format!("{line}\r\n")).await;
        let tag = line.split(' ').next().unwrap().to_string();
        self.until(&tag).await
    }

    async fn until(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            if l.is_empty() && out.last().is_some_and(|x: &String| x.is_empty()) {
                panic!("connection closed: {out:?}");
            }
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                return out;
            }
        }
    }
}

const MSG1: &str = "From: Fred Foobar <foobar@Blurdybloop.example>\r\n\
Subject: afternoon meeting\r\n\
To: mooch@owatagu.example\r\n\
Message-Id: <B27397-0100000@Blurdybloop.example>\r\n\
Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n\
\r\n\
Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n";

const MULTI: &str = "From: a@example.test\r\n\
Subject: multi\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
\r\n\
part one\r\n\
--b1\r\n\
Content-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAEC\r\n\
--b1--\r\n";

#[tokio::test]
async fn rfc3501_sample_session() {
    let s = server(|_| {}).await;
    s.deliver("INBOX", MSG1, &["\\Seen"], 760_000_000).await;
    s.deliver("INBOX", "Subject: second\r\n\r\nhi\r\n", &[], 760_000_100)
        .await;
    let mut c = s.client().await;
    let r = c.cmd("abcd CAPABILITY").await;
    assert_eq!(
        r,
        vec![
            "* CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR AUTH=PLAIN ENABLE IDLE UIDPLUS MOVE UNSELECT NAMESPACE ID CHILDREN SPECIAL-USE QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE CONDSTORE QRESYNC ESEARCH LIST-EXTENDED LIST-STATUS BINARY STATUS=SIZE SEARCHRES",
            "abcd OK CAPABILITY completed"
        ]
    );
    let r = c.cmd("a001 login alice@example.test alice-pw").await;
    assert_eq!(r.len(), 1);
    assert!(r[0].starts_with("a001 OK [CAPABILITY IMAP4rev1 "), "{r:?}");
    let r = c.cmd("a002 select inbox").await;
    let uv = s
        .ctx
        .backends
        .meta
        .get_mailbox(ALICE, "INBOX")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r,
        vec![
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)".to_string(),
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted".into(),
            "* 2 EXISTS".into(),
            "* 0 RECENT".into(),
            "* OK [UNSEEN 2] First unseen".into(),
            format!("* OK [UIDVALIDITY {}] UIDs valid", uv.uidvalidity),
            "* OK [UIDNEXT 3] Predicted next UID".into(),
            format!("* OK [HIGHESTMODSEQ {}] Highest", uv.highest_modseq),
            "a002 OK [READ-WRITE] SELECT completed".into(),
        ]
    );
    let r = c.cmd("a003 fetch 1 full").await;
    assert_eq!(
        r[0],
        "* 1 FETCH (FLAGS (\\Seen) INTERNALDATE \"31-Jan-1994 07:06:40 +0000\" RFC822.SIZE 248 \
ENVELOPE (\"Mon, 7 Feb 1994 21:52:25 -0800\" \"afternoon meeting\" \
((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) \
((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) \
((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) \
((NIL NIL \"mooch\" \"owatagu.example\")) NIL NIL NIL \"<B27397-0100000@Blurdybloop.example>\") \
BODY (\"TEXT\" \"PLAIN\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 55 1))"
    );
    assert_eq!(r[1], "a003 OK FETCH completed");
    let r = c.cmd("a004 fetch 2 body[header]").await;
    assert_eq!(
        r,
        vec![
            "* 2 FETCH (BODY[HEADER] {19}",
            "Subject: second",
            "",
            " FLAGS (\\Seen))",
            "a004 OK FETCH completed"
        ]
    );
    let r = c.cmd("a005 store 1 +flags \\deleted").await;
    assert_eq!(
        r,
        vec![
            "* 1 FETCH (FLAGS (\\Seen \\Deleted))",
            "a005 OK STORE completed"
        ]
    );
    let r = c.cmd("a006 expunge").await;
    assert_eq!(r, vec!["* 1 EXPUNGE", "a006 OK EXPUNGE completed"]);
    let r = c.cmd("a007 logout").await;
    assert_eq!(r, vec!["* BYE Logging out", "a007 OK LOGOUT completed"]);
}

#[tokio::test]
async fn bodystructure_partial_and_sections() {
    let s = server(|_| {}).await;
    s.deliver("INBOX", MULTI, &[], 1_700_000_000).await;
    let mut c = s.logged_in().await;
    c.cmd("s1 EXAMINE INBOX").await;
    let r = c.cmd("f1 FETCH 1 BODYSTRUCTURE").await;
    assert_eq!(
        r,
        vec![
            "* 1 FETCH (BODYSTRUCTURE ((\"TEXT\" \"PLAIN\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 8 1 NIL NIL NIL NIL)\
(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"base64\" 4 NIL NIL NIL NIL) \"MIXED\" (\"boundary\" \"b1\") NIL NIL NIL))",
            "f1 OK FETCH completed"
        ]
    );
    let r = c.cmd("f2 UID FETCH 1 (BODY.PEEK[1] BODY.PEEK[]<0.10> BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[2.MIME])").await;
    let joined = r.join("\n");
    assert!(
        joined.starts_with("* 1 FETCH (UID 1 BODY[1] {8}\npart one BODY[]<0> {10}\nFrom: a@ex BODY[HEADER.FIELDS (SUBJECT)] {18}\nSubject: multi\n\n BODY[2.MIME] {77}\n"),
        "{joined}"
    );
    // Past the end: empty string.
    let r = c.cmd("f3 FETCH 1 BODY.PEEK[]<100000.5>").await;
    assert_eq!(r[0], "* 1 FETCH (BODY[]<100000> {0}");
    // Examine is read-only: BODY[] does not set \Seen.
    let r = c.cmd("f4 FETCH 1 (BODY[1] FLAGS)").await;
    assert_eq!(r[0], "* 1 FETCH (BODY[1] {8}");
    assert_eq!(r[1], "part one FLAGS ())");
}

#[tokio::test]
async fn search_keys() {
    let s = server(|_| {}).await;
    s.deliver("INBOX", MSG1, &["\\Seen"], 760_000_000).await;
    s.deliver("INBOX", MULTI, &["\\Flagged"], 1_700_000_000)
        .await;
    s.deliver(
        "INBOX",
        "Subject: third\r\nTo: bob@x.test\r\n\r\nneedle here\r\n",
        &[],
        1_700_000_100,
    )
    .await;
    let mut c = s.logged_in().await;
    c.cmd("s SELECT INBOX").await;
    let cases = [
        ("ALL", "* SEARCH 1 2 3"),
        ("SEEN", "* SEARCH 1"),
        ("UNSEEN FLAGGED", "* SEARCH 2"),
        ("OR SEEN FLAGGED", "* SEARCH 1 2"),
        ("NOT SEEN", "* SEARCH 2 3"),
        ("SUBJECT meeting", "* SEARCH 1"),
        ("FROM fred", "* SEARCH 1"),
        ("TO bob", "* SEARCH 3"),
        ("BODY needle", "* SEARCH 3"),
        ("TEXT \"part one\"", "* SEARCH 2"),
        ("HEADER Content-Type \"\"", "* SEARCH 2"),
        ("SENTBEFORE 1-Jan-2000", "* SEARCH 1"),
        ("SINCE 1-Jan-2020", "* SEARCH 2 3"),
        ("LARGER 200", "* SEARCH 1 2"),
        ("2:*", "* SEARCH 2 3"),
        ("UID 1,3", "* SEARCH 1 3"),
        ("CHARSET UTF-8 SUBJECT third", "* SEARCH 3"),
        ("RECENT", "* SEARCH"),
        ("(SEEN) (NOT DELETED)", "* SEARCH 1"),
    ];
    for (i, (q, want)) in cases.iter().enumerate() {
        let r = c.cmd(&format!("q{i} SEARCH {q}")).await;
        assert_eq!(r[0], *want, "{q}");
        assert_eq!(r[1], format!("q{i} OK SEARCH completed"));
    }
    let r = c.cmd("u UID SEARCH SUBJECT third").await;
    assert_eq!(r[0], "* SEARCH 3");
    let r = c.cmd("b SEARCH CHARSET KOI8-R ALL").await;
    assert!(r[0].starts_with("b NO [BADCHARSET"), "{r:?}");
}

#[tokio::test]
async fn store_copy_move_expunge_append() {
    let s = server(|_| {}).await;
    for i in 0..4 {
        s.deliver(
            "INBOX",
            &format!("Subject: m{i}\r\n\r\nbody {i}\r\n"),
            &[],
            1_700_000_000,
        )
        .await;
    }
    let mut c = s.logged_in().await;
    c.cmd("s SELECT INBOX").await;
    let r = c.cmd("a STORE 1:2 FLAGS.SILENT (\\Deleted $Label)").await;
    assert_eq!(r, vec!["a OK STORE completed"]);
    let r = c.cmd("b UID STORE 3 +FLAGS (\\Flagged)").await;
    assert_eq!(
        r,
        vec![
            "* 3 FETCH (UID 3 FLAGS (\\Flagged))",
            "b OK STORE completed"
        ]
    );
    let r = c.cmd("c STORE 2 -FLAGS (\\Deleted)").await;
    assert_eq!(
        r,
        vec!["* 2 FETCH (FLAGS ($Label))", "c OK STORE completed"]
    );
    let tv = s
        .ctx
        .backends
        .meta
        .get_mailbox(ALICE, "Trash")
        .await
        .unwrap()
        .unwrap()
        .uidvalidity;
    let r = c.cmd("d COPY 1:2 Trash").await;
    assert_eq!(
        r,
        vec![format!("d OK [COPYUID {tv} 1:2 1:2] COPY completed")]
    );
    let r = c.cmd("e COPY 1 Nope").await;
    assert_eq!(r, vec!["e NO [TRYCREATE] No such mailbox"]);
    let r = c.cmd("f UID MOVE 4 Trash").await;
    assert_eq!(
        r,
        vec![
            format!("* OK [COPYUID {tv} 4 3] Moved"),
            "* 4 EXPUNGE".into(),
            "f OK MOVE completed".into()
        ]
    );
    let r = c.cmd("g UID EXPUNGE 2:3").await;
    assert_eq!(r, vec!["g OK EXPUNGE completed"]);
    let r = c.cmd("h EXPUNGE").await;
    assert_eq!(r, vec!["* 1 EXPUNGE", "h OK EXPUNGE completed"]);
    // APPEND with a synchronizing literal.
    let iv = s
        .ctx
        .backends
        .meta
        .get_mailbox(ALICE, "INBOX")
        .await
        .unwrap()
        .unwrap()
        .uidvalidity;
    c.send("i APPEND INBOX (\\Seen) \"05-Jan-2024 10:00:00 +0100\" {23}\r\n")
        .await;
    assert_eq!(c.line().await, "+ Ready for literal data");
    c.send("Subject: appended\r\n\r\nx\r\n").await;
    let r = c.until("i").await;
    assert_eq!(
        r,
        vec![
            "* 3 EXISTS".to_string(),
            format!("i OK [APPENDUID {iv} 5] APPEND completed")
        ]
    );
    // LITERAL+: no continuation.
    let r = c.cmd("j APPEND Trash {5+}\r\nhello").await;
    assert!(r.last().unwrap().starts_with("j OK [APPENDUID"), "{r:?}");
    let r = c.cmd("k FETCH 3 (UID FLAGS INTERNALDATE)").await;
    assert_eq!(
        r[0],
        "* 3 FETCH (UID 5 FLAGS (\\Seen) INTERNALDATE \"05-Jan-2024 09:00:00 +0000\")"
    );
    let r = c
        .cmd("l STATUS Trash (MESSAGES UIDNEXT UNSEEN DELETED HIGHESTMODSEQ)")
        .await;
    assert!(
        r[0].starts_with("* STATUS Trash (MESSAGES 4 UIDNEXT 5 UNSEEN 4 DELETED 1 HIGHESTMODSEQ "),
        "{r:?}"
    );
    let r = c.cmd("m CLOSE").await;
    assert_eq!(r, vec!["m OK CLOSE completed"]);
}

#[tokio::test]
async fn mailboxes_list_and_names() {
    let s = server(|_| {}).await;
    let mut c = s.logged_in().await;
    assert_eq!(
        c.cmd("a CREATE Work/Projects/Entw&APw-rfe").await,
        vec!["a OK CREATE completed"]
    );
    let r = c.cmd("b LIST \"\" \"*\"").await;
    assert_eq!(
        r,
        vec![
            "* LIST (\\HasNoChildren \\Drafts) \"/\" Drafts",
            "* LIST (\\HasNoChildren) \"/\" INBOX",
            "* LIST (\\HasNoChildren \\Junk) \"/\" Junk",
            "* LIST (\\HasNoChildren \\Sent) \"/\" Sent",
            "* LIST (\\HasNoChildren \\Trash) \"/\" Trash",
            "* LIST (\\HasChildren) \"/\" Work",
            "* LIST (\\HasChildren) \"/\" Work/Projects",
            "* LIST (\\HasNoChildren) \"/\" Work/Projects/Entw&APw-rfe",
            "b OK LIST completed",
        ]
    );
    let r = c.cmd("c LIST Work/ %").await;
    assert_eq!(
        r,
        vec![
            "* LIST (\\HasChildren) \"/\" Work/Projects",
            "c OK LIST completed"
        ]
    );
    let r = c.cmd("d LIST \"\" \"\"").await;
    assert_eq!(
        r,
        vec!["* LIST (\\Noselect) \"/\" \"\"", "d OK LIST completed"]
    );
    assert_eq!(
        c.cmd("e RENAME Work Play").await,
        vec!["e OK RENAME completed"]
    );
    let r = c.cmd("f LIST \"\" Play*").await;
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(
        c.cmd("g SUBSCRIBE Play").await,
        vec!["g OK SUBSCRIBE completed"]
    );
    let r = c.cmd("h LSUB \"\" *").await;
    assert!(
        r.contains(&"* LSUB (\\HasChildren) \"/\" Play".to_string()),
        "{r:?}"
    );
    let r = c.cmd("i DELETE Play").await;
    assert!(r[0].starts_with("i NO [INUSE]"), "{r:?}");
    for bad in ["../etc", "a/../b", "x/./y", "*", "a//b", "Work%"] {
        let r = c.cmd(&format!("j CREATE \"{bad}\"")).await;
        assert!(
            r[0].starts_with("j NO") || r[0].starts_with("j BAD"),
            "{bad}: {r:?}"
        );
        let r = c.cmd(&format!("k SELECT \"{bad}\"")).await;
        assert!(
            r[0].starts_with("k NO") || r[0].starts_with("k BAD"),
            "{bad}: {r:?}"
        );
    }
    let r = c.cmd("l SELECT \"../../alice@example.test/INBOX\"").await;
    assert!(r[0].starts_with("l NO"), "{r:?}");
    let r = c.cmd("m GETQUOTAROOT INBOX").await;
    assert_eq!(r, vec!["* QUOTAROOT INBOX", "m OK GETQUOTAROOT completed"]);
    s.ctx
        .backends
        .meta
        .set_quota(
            ALICE,
            posthorn_mailbox_store::Quota {
                max_bytes: Some(10240),
                max_messages: Some(5),
            },
        )
        .await
        .unwrap();
    let r = c.cmd("n GETQUOTAROOT INBOX").await;
    assert_eq!(
        r,
        vec![
            "* QUOTAROOT INBOX \"\"",
            "* QUOTA \"\" (STORAGE 0 10 MESSAGE 0 5)",
            "n OK GETQUOTAROOT completed"
        ]
    );
    let r = c.cmd("o NAMESPACE").await;
    assert_eq!(
        r,
        vec![
            "* NAMESPACE ((\"\" \"/\")) NIL NIL",
            "o OK NAMESPACE completed"
        ]
    );
}

#[tokio::test]
async fn bad_input_survives() {
    let s = server(|c| c.access.max_append_size = 1000).await;
    let mut c = s.logged_in().await;
    c.cmd("s SELECT INBOX").await;
    // Malformed commands.
    for (line, want) in [
        ("x1 FOO", "x1 BAD"),
        ("x2 FETCH", "x2 BAD"),
        ("x3 FETCH 0 FLAGS", "x3 BAD"),
        ("x4 FETCH 1:2 FLAGS", "x4 BAD"),
        ("x5 FETCH a:b FLAGS", "x5 BAD"),
        ("x6 UID FETCH 1:* (FLAGS", "x6 BAD"),
        ("x7 SEARCH (((ALL", "x7 BAD"),
    ] {
        let r = c.cmd(line).await;
        assert!(r.last().unwrap().starts_with(want), "{line}: {r:?}");
    }
    c.send("\r\n").await;
    assert_eq!(c.line().await, "* BAD Syntax error");
    // Deep nesting.
    let deep = format!(
        "d1 SEARCH {}ALL{}",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    let r = c.cmd(&deep).await;
    assert!(r.last().unwrap().starts_with("d1 BAD"), "{r:?}");
    // 10 GB literal announcement: refused without reading.
    let r = c.cmd("g1 APPEND INBOX {10737418240}").await;
    assert!(
        r.last().unwrap().starts_with("g1 BAD") || r.last().unwrap().starts_with("g1 NO"),
        "{r:?}"
    );
    // Over max_append_size: NO [TOOBIG], no continuation.
    let r = c.cmd("g2 APPEND INBOX {5000}").await;
    assert_eq!(r, vec!["g2 NO [TOOBIG] Literal too large"]);
    // Literal in a command that then fails to parse.
    c.send("g3 LOGIN {3}\r\n").await;
    assert_eq!(c.line().await, "+ Ready for literal data");
    c.send("abc\r\n").await;
    let r = c.until("g3").await;
    assert!(r.last().unwrap().starts_with("g3 BAD"), "{r:?}");
    // Still alive.
    assert_eq!(c.cmd("n NOOP").await, vec!["n OK NOOP completed"]);
    // Non-synchronizing literal too big: BAD/NO and the connection closes.
    c.send("g4 APPEND INBOX {5000+}\r\n").await;
    let l = c.line().await;
    assert!(l.starts_with("g4 NO [TOOBIG]"), "{l}");
    assert_eq!(c.line().await, "* BYE Literal too large");
}

#[tokio::test]
async fn login_rules() {
    let s = server(|c| c.access.allow_plaintext_auth = false).await;
    let mut c = s.client().await;
    let r = c.cmd("a CAPABILITY").await;
    assert!(
        r[0].contains("LOGINDISABLED") && !r[0].contains("AUTH=PLAIN"),
        "{r:?}"
    );
    let r = c.cmd("b LOGIN alice@example.test alice-pw").await;
    assert_eq!(
        r,
        vec!["b NO [PRIVACYREQUIRED] Use STARTTLS before sending a password"]
    );
    let r = c.cmd("c SELECT INBOX").await;
    assert_eq!(r, vec!["c BAD Log in first"]);

    let s = server(|_| {}).await;
    let mut c = s.client().await;
    let r = c.cmd("a LOGIN alice@example.test wrong").await;
    assert_eq!(r, vec!["a NO [AUTHENTICATIONFAILED] Authentication failed"]);
    // SASL-IR: base64("\0alice@example.test\0alice-pw")
    let r = c
        .cmd("b AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==")
        .await;
    assert!(r[0].starts_with("b OK"), "{r:?}");
    let mut c = s.client().await;
    c.send("c AUTHENTICATE PLAIN\r\n").await;
    assert_eq!(c.line().await, "+ ");
    c.send("AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wdw==\r\n").await;
    let r = c.until("c").await;
    assert!(r[0].starts_with("c OK"), "{r:?}");
}

#[tokio::test]
async fn idle_and_other_sessions() {
    let s = server(|_| {}).await;
    s.deliver("INBOX", "Subject: one\r\n\r\n1\r\n", &[], 1_700_000_000)
        .await;
    let mut a = s.logged_in().await;
    let mut b = s.logged_in().await;
    a.cmd("s SELECT INBOX").await;
    b.cmd("s SELECT INBOX").await;
    a.send("i IDLE\r\n").await;
    assert_eq!(a.line().await, "+ idling");
    // Another session appends: the idler hears EXISTS quickly.
    let r = b
        .cmd("x APPEND INBOX {19+}\r\nSubject: two\r\n\r\n2\r\n")
        .await;
    assert!(r.last().unwrap().starts_with("x OK"), "{r:?}");
    let t = std::time::Instant::now();
    assert_eq!(a.line().await, "* 2 EXISTS");
    // Woken by the append's event, not by the 30 s periodic recheck (15 s:
    // generous for a busy machine, still tells the two apart).
    let waited = t.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "the idler heard EXISTS {waited:?} after the append"
    );
    // b stores a flag: the idler hears FETCH.
    b.cmd("y STORE 1 +FLAGS (\\Flagged)").await;
    assert_eq!(a.line().await, "* 1 FETCH (UID 1 FLAGS (\\Flagged))");
    b.cmd("z STORE 1 +FLAGS (\\Deleted)").await;
    assert_eq!(
        a.line().await,
        "* 1 FETCH (UID 1 FLAGS (\\Flagged \\Deleted))"
    );
    b.cmd("w EXPUNGE").await;
    assert_eq!(a.line().await, "* 1 EXPUNGE");
    a.send("DONE\r\n").await;
    assert_eq!(a.until("i").await, vec!["i OK IDLE terminated"]);
    // NOOP in b shows nothing new; FETCH keeps sequence numbers stable.
    assert_eq!(b.cmd("n NOOP").await, vec!["n OK NOOP completed"]);
}

#[tokio::test]
async fn idle_timeout_autologout() {
    let s = server(|c| c.access.imap_idle_timeout_secs = 1).await;
    let mut c = s.client().await;
    let l = c.line().await;
    assert_eq!(l, "* BYE Autologout; idle for too long");
}

/// RFC 7162: CONDSTORE (MODSEQ, CHANGEDSINCE, UNCHANGEDSINCE, SEARCH MODSEQ,
/// STATUS HIGHESTMODSEQ) and QRESYNC (SELECT with QRESYNC, VANISHED).
#[tokio::test]
async fn condstore_and_qresync() {
    let s = server(|_| {}).await;
    for i in 1..=5 {
        s.deliver(
            "INBOX",
            &format!("Subject: m{i}\r\n\r\nbody\r\n"),
            &[],
            1_700_000_000,
        )
        .await;
    }
    let info = |s: &Server| {
        let meta = s.ctx.backends.meta.clone();
        async move { meta.get_mailbox(ALICE, "INBOX").await.unwrap().unwrap() }
    };
    let before = info(&s).await;
    let hms0 = before.highest_modseq;
    let uv = before.uidvalidity;
    let mut c = s.logged_in().await;
    let r = c.cmd("a SELECT INBOX (CONDSTORE)").await;
    assert!(
        r.contains(&format!("* OK [HIGHESTMODSEQ {hms0}] Highest")),
        "{r:?}"
    );
    // MODSEQ as a FETCH item.
    let r = c.cmd("b FETCH 1 (FLAGS MODSEQ)").await;
    let m1: u64 = r[0]
        .split("MODSEQ (")
        .nth(1)
        .and_then(|x| x.split(')').next())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r[0], format!("* 1 FETCH (FLAGS () MODSEQ ({m1}))"));
    // STORE reports the new MODSEQ once CONDSTORE is on.
    let r = c.cmd("c STORE 2 +FLAGS (\\Seen)").await;
    let hms1 = info(&s).await.highest_modseq;
    assert!(hms1 > hms0);
    assert_eq!(
        r,
        vec![
            format!("* 2 FETCH (FLAGS (\\Seen) MODSEQ ({hms1}))"),
            "c OK STORE completed".into()
        ]
    );
    // CHANGEDSINCE: only message 2 changed since hms0.
    let r = c
        .cmd(&format!("d FETCH 1:* (FLAGS) (CHANGEDSINCE {hms0})"))
        .await;
    assert_eq!(
        r,
        vec![
            format!("* 2 FETCH (FLAGS (\\Seen) MODSEQ ({hms1}))"),
            "d OK FETCH completed".into()
        ]
    );
    // UNCHANGEDSINCE: message 2 changed after m1 and is refused (MODIFIED),
    // message 1 is stored, even though .SILENT (the new MODSEQ is reported).
    let r = c
        .cmd(&format!(
            "e STORE 1:2 (UNCHANGEDSINCE {m1}) +FLAGS.SILENT (\\Flagged)"
        ))
        .await;
    let hms2 = info(&s).await.highest_modseq;
    assert_eq!(
        r,
        vec![
            format!("* 1 FETCH (FLAGS (\\Flagged) MODSEQ ({hms2}))"),
            "e OK [MODIFIED 2] Conditional STORE failed".into()
        ]
    );
    let r = c
        .cmd("f UID STORE 2 (UNCHANGEDSINCE 0) FLAGS (\\Deleted)")
        .await;
    assert_eq!(r, vec!["f OK [MODIFIED 2] Conditional STORE failed"]);
    // SEARCH MODSEQ returns the highest MODSEQ of the hits.
    let r = c.cmd(&format!("g SEARCH MODSEQ {}", hms1)).await;
    assert_eq!(r[0], format!("* SEARCH 1 2 (MODSEQ {hms2})"));
    let r = c.cmd("h STATUS Trash (HIGHESTMODSEQ)").await;
    assert!(r[0].starts_with("* STATUS Trash (HIGHESTMODSEQ "), "{r:?}");
    // Expunge 3 and 4; QRESYNC not enabled yet, so EXPUNGE responses.
    c.cmd("i STORE 3:4 +FLAGS.SILENT (\\Deleted)").await;
    let hms3 = info(&s).await.highest_modseq;
    let r = c.cmd("j EXPUNGE").await;
    assert_eq!(
        r,
        vec!["* 3 EXPUNGE", "* 3 EXPUNGE", "j OK EXPUNGE completed"]
    );
    // QRESYNC without ENABLE is refused.
    let r = c
        .cmd(&format!("k SELECT INBOX (QRESYNC ({uv} {hms0}))"))
        .await;
    assert!(r.last().unwrap().starts_with("k BAD"), "{r:?}");
    let r = c.cmd("l ENABLE QRESYNC").await;
    assert_eq!(r, vec!["* ENABLED QRESYNC", "l OK ENABLE completed"]);
    // A client that last saw hms0 learns of the expunges and the flag changes.
    let r = c
        .cmd(&format!("m SELECT INBOX (QRESYNC ({uv} {hms0} 1:5))"))
        .await;
    let hms4 = info(&s).await.highest_modseq;
    assert!(r.contains(&"* VANISHED (EARLIER) 3:4".to_string()), "{r:?}");
    assert!(
        r.contains(&format!("* OK [HIGHESTMODSEQ {hms4}] Highest")),
        "{r:?}"
    );
    assert!(
        r.contains(&format!(
            "* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ ({hms2}))"
        )),
        "{r:?}"
    );
    assert!(
        r.contains(&format!("* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ ({hms1}))")),
        "{r:?}"
    );
    assert!(!r.iter().any(|l| l.contains("UID 5")), "{r:?}");
    // Known UIDs restrict VANISHED.
    let r = c
        .cmd(&format!("n SELECT INBOX (QRESYNC ({uv} {hms0} 4:5))"))
        .await;
    assert_eq!(r[0], "* OK [CLOSED] Previous mailbox closed");
    assert!(r.contains(&"* VANISHED (EARLIER) 4".to_string()), "{r:?}");
    // UIDVALIDITY mismatch: a plain SELECT.
    let r = c
        .cmd(&format!("o SELECT INBOX (QRESYNC ({} {hms0}))", uv + 1))
        .await;
    assert!(
        !r.iter()
            .any(|l| l.contains("VANISHED") || l.contains("FETCH")),
        "{r:?}"
    );
    // UID FETCH ... (CHANGEDSINCE n VANISHED).
    let r = c
        .cmd(&format!(
            "p UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms3} VANISHED)"
        ))
        .await;
    assert_eq!(r, vec!["* VANISHED (EARLIER) 3:4", "p OK FETCH completed"]);
    // Once QRESYNC is on, expunges are VANISHED, not EXPUNGE.
    c.cmd("q STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    let r = c.cmd("r EXPUNGE").await;
    assert_eq!(r, vec!["* VANISHED 1", "r OK EXPUNGE completed"]);
    // VANISHED in FETCH needs CHANGEDSINCE.
    let r = c.cmd("s UID FETCH 1:* (FLAGS) (VANISHED)").await;
    assert!(r.last().unwrap().starts_with("s BAD"), "{r:?}");
}

/// RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE
/// selection, RFC 4731 ESEARCH.
#[tokio::test]
async fn list_extended_status_and_esearch() {
    let s = server(|_| {}).await;
    for i in 1..=4 {
        let flags: &[&str] = if i % 2 == 0 { &["\\Seen"] } else { &[] };
        s.deliver(
            "INBOX",
            &format!("Subject: m{i}\r\n\r\nbody\r\n"),
            flags,
            1_700_000_000,
        )
        .await;
    }
    let mut c = s.logged_in().await;
    c.cmd("a CREATE Lists/Rust").await;
    c.cmd("b SUBSCRIBE Lists/Rust").await;
    c.cmd("c SUBSCRIBE INBOX").await;
    // New accounts have their special-use mailboxes subscribed.
    for m in ["Drafts", "Junk", "Sent", "Trash"] {
        let r = c.cmd(&format!("c UNSUBSCRIBE {m}")).await;
        assert_eq!(r, vec!["c OK UNSUBSCRIBE completed"]);
    }
    // Selection SUBSCRIBED: only subscribed mailboxes, marked \Subscribed.
    let r = c.cmd("d LIST (SUBSCRIBED) \"\" \"*\"").await;
    assert_eq!(
        r,
        vec![
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX",
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" Lists/Rust",
            "d OK LIST completed",
        ]
    );
    // RECURSIVEMATCH: the unsubscribed parent shows CHILDINFO.
    let r = c
        .cmd("e LIST (SUBSCRIBED RECURSIVEMATCH) \"\" \"%\" RETURN (CHILDREN)")
        .await;
    assert_eq!(
        r,
        vec![
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX",
            "* LIST (\\HasChildren) \"/\" Lists (\"CHILDINFO\" (\"SUBSCRIBED\"))",
            "e OK LIST completed",
        ]
    );
    // Several patterns; RETURN (SUBSCRIBED) marks without selecting.
    let r = c
        .cmd("f LIST \"\" (INBOX \"Lists/%\") RETURN (SUBSCRIBED)")
        .await;
    assert_eq!(
        r,
        vec![
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" INBOX",
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" Lists/Rust",
            "f OK LIST completed",
        ]
    );
    // SPECIAL-USE selection.
    let r = c.cmd("g LIST (SPECIAL-USE) \"\" \"*\"").await;
    assert_eq!(r.len(), 5, "{r:?}");
    assert!(r.iter().all(|l| !l.contains("INBOX")), "{r:?}");
    // LIST-STATUS: each selectable mailbox's STATUS after its LIST line.
    let r = c
        .cmd("h LIST \"\" \"IN%\" RETURN (STATUS (MESSAGES UNSEEN))")
        .await;
    assert_eq!(
        r,
        vec![
            "* LIST (\\HasNoChildren) \"/\" INBOX",
            "* STATUS INBOX (MESSAGES 4 UNSEEN 2)",
            "h OK LIST completed",
        ]
    );
    let r = c
        .cmd("i LIST \"\" \"Lists*\" RETURN (STATUS (MESSAGES))")
        .await;
    assert_eq!(
        r,
        vec![
            "* LIST (\\HasChildren) \"/\" Lists",
            "* STATUS Lists (MESSAGES 0)",
            "* LIST (\\HasNoChildren) \"/\" Lists/Rust",
            "* STATUS Lists/Rust (MESSAGES 0)",
            "i OK LIST completed",
        ]
    );
    for bad in [
        "j LIST (RECURSIVEMATCH) \"\" \"*\"",
        "j LIST (BOGUS) \"\" \"*\"",
        "j LIST \"\" \"*\" RETURN (BOGUS)",
        "j LIST \"\" \"*\" RETURN (STATUS (NOPE))",
    ] {
        let r = c.cmd(bad).await;
        assert!(r.last().unwrap().starts_with("j BAD"), "{bad}: {r:?}");
    }
    // ESEARCH.
    c.cmd("k SELECT INBOX").await;
    let r = c.cmd("l SEARCH RETURN (MIN MAX COUNT) UNSEEN").await;
    assert_eq!(
        r,
        vec![
            "* ESEARCH (TAG \"l\") MIN 1 MAX 3 COUNT 2",
            "l OK SEARCH completed"
        ]
    );
    let r = c.cmd("m UID SEARCH RETURN () ALL").await;
    assert_eq!(
        r,
        vec!["* ESEARCH (TAG \"m\") UID ALL 1:4", "m OK SEARCH completed"]
    );
    let r = c.cmd("n SEARCH RETURN (COUNT ALL) DELETED").await;
    assert_eq!(
        r,
        vec!["* ESEARCH (TAG \"n\") COUNT 0", "n OK SEARCH completed"]
    );
    // A literal in the criteria still works after RETURN.
    c.send("o SEARCH RETURN (ALL) SUBJECT {2}\r\n").await;
    assert_eq!(c.line().await, "+ Ready for literal data");
    c.send("m3\r\n").await;
    let r = c.until("o").await;
    assert_eq!(
        r,
        vec!["* ESEARCH (TAG \"o\") ALL 3", "o OK SEARCH completed"]
    );
    let r = c.cmd("p SEARCH RETURN (PARTIAL 1:5) ALL").await;
    assert!(r[0].starts_with("p BAD"), "{r:?}");
    // A plain SEARCH afterwards is plain again.
    let r = c.cmd("q SEARCH SEEN").await;
    assert_eq!(r, vec!["* SEARCH 2 4", "q OK SEARCH completed"]);
}

/// RFC 9051 IMAP4rev2 after `ENABLE IMAP4rev2`; RFC 3516 BINARY; RFC 8438
/// STATUS=SIZE.
#[tokio::test]
async fn imap4rev2_binary_and_status_size() {
    let s = server(|_| {}).await;
    s.deliver("INBOX", MULTI, &[], 1_700_000_000).await;
    s.deliver(
        "INBOX",
        "Subject: two\r\n\r\nx\r\n",
        &["\\Seen"],
        1_700_000_000,
    )
    .await;
    let mut c = s.logged_in().await;
    // BINARY works in rev1 too: the base64 part decodes to 00 01 02 (literal8).
    c.cmd("a SELECT INBOX").await;
    c.send("b FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.SIZE[1])\r\n")
        .await;
    let mut raw = Vec::new();
    loop {
        let mut l = Vec::new();
        let n = tokio::io::AsyncBufReadExt::read_until(&mut c.r, b'\n', &mut l)
            .await
            .unwrap();
        assert!(n > 0);
        raw.extend_from_slice(&l);
        if l.starts_with(b"b ") {
            break;
        }
    }
    assert_eq!(
        raw,
        b"* 1 FETCH (BINARY[2] ~{3}\r\n\x00\x01\x02 BINARY.SIZE[2] 3 BINARY.SIZE[1] 8)\r\nb OK FETCH completed\r\n"
    );
    let r = c.cmd("c FETCH 1 (BINARY.PEEK[9])").await;
    assert!(r.last().unwrap().starts_with("c NO [NONEXISTENT]"), "{r:?}");
    let size: u64 = (MULTI.len() + "Subject: two\r\n\r\nx\r\n".len()) as u64;
    let r = c.cmd("d STATUS INBOX (MESSAGES SIZE)").await;
    assert_eq!(r[0], format!("* STATUS INBOX (MESSAGES 2 SIZE {size})"));
    c.cmd("e UNSELECT").await;
    let r = c.cmd("f ENABLE IMAP4rev2").await;
    assert_eq!(r, vec!["* ENABLED IMAP4rev2", "f OK ENABLE completed"]);
    // SELECT: no RECENT, no UNSEEN code; a LIST response with the name.
    let r = c.cmd("g SELECT INBOX").await;
    assert!(
        !r.iter()
            .any(|l| l.contains("RECENT") || l.contains("UNSEEN")),
        "{r:?}"
    );
    assert!(r.contains(&"* LIST () \"/\" INBOX".to_string()), "{r:?}");
    // SEARCH answers ESEARCH.
    let r = c.cmd("h SEARCH SEEN").await;
    assert_eq!(
        r,
        vec!["* ESEARCH (TAG \"h\") ALL 2", "h OK SEARCH completed"]
    );
    let r = c.cmd("i UID SEARCH DELETED").await;
    assert_eq!(
        r,
        vec!["* ESEARCH (TAG \"i\") UID", "i OK SEARCH completed"]
    );
    // UTF-8 mailbox names, no modified UTF-7.
    let r = c.cmd("j CREATE \"Entwürfe\"").await;
    assert_eq!(r, vec!["j OK CREATE completed"], "{r:?}");
    let r = c.cmd("k LIST \"\" \"Entw*\"").await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r[0].starts_with("* LIST (\\HasNoChildren) \"/\" "), "{r:?}");
    assert!(r[0].contains("Entwürfe"), "{r:?}");
    // The same mailbox, seen from a rev1 session, in modified UTF-7.
    let mut c1 = s.logged_in().await;
    let r = c1.cmd("l LIST \"\" \"Entw*\"").await;
    assert_eq!(r[0], "* LIST (\\HasNoChildren) \"/\" Entw&APw-rfe");
}

/// RFC 5182 SEARCHRES: `SEARCH RETURN (SAVE)` and `$`.
#[tokio::test]
async fn searchres_saved_result() {
    let s = server(|_| {}).await;
    for i in 1..=5 {
        let flags: &[&str] = if i >= 4 { &["\\Flagged"] } else { &[] };
        s.deliver(
            "INBOX",
            &format!("Subject: m{i}\r\n\r\nbody\r\n"),
            flags,
            1_700_000_000,
        )
        .await;
    }
    let mut c = s.logged_in().await;
    c.cmd("a SELECT INBOX").await;
    // SAVE alone: no ESEARCH response.
    let r = c.cmd("b UID SEARCH RETURN (SAVE) FLAGGED").await;
    assert_eq!(r, vec!["b OK SEARCH completed"]);
    let r = c.cmd("c FETCH $ (UID)").await;
    assert_eq!(
        r,
        vec![
            "* 4 FETCH (UID 4)",
            "* 5 FETCH (UID 5)",
            "c OK FETCH completed"
        ]
    );
    let r = c.cmd("d SEARCH OR $ 1 NOT DELETED").await;
    assert_eq!(r, vec!["* SEARCH 1 4 5", "d OK SEARCH completed"]);
    let r = c.cmd("e UID STORE $ +FLAGS.SILENT (\\Seen)").await;
    assert_eq!(r, vec!["e OK STORE completed"]);
    let r = c.cmd("f SEARCH SEEN").await;
    assert_eq!(r, vec!["* SEARCH 4 5", "f OK SEARCH completed"]);
    // SAVE with MIN: only the minimum is saved; other options still answered.
    let r = c.cmd("g SEARCH RETURN (SAVE MIN) ALL").await;
    assert_eq!(
        r,
        vec!["* ESEARCH (TAG \"g\") MIN 1", "g OK SEARCH completed"]
    );
    let r = c.cmd("h UID FETCH $ (FLAGS)").await;
    assert_eq!(
        r,
        vec!["* 1 FETCH (UID 1 FLAGS ())", "h OK FETCH completed"]
    );
    // An empty saved result: commands on `$` act on nothing.
    c.cmd("i SEARCH RETURN (SAVE) DELETED").await;
    let r = c.cmd("j FETCH $ (UID)").await;
    assert_eq!(r, vec!["j OK FETCH completed"]);
    let r = c.cmd("k SEARCH $").await;
    assert_eq!(r, vec!["* SEARCH", "k OK SEARCH completed"]);
    // A new SELECT forgets the saved result.
    c.cmd("l SEARCH RETURN (SAVE) ALL").await;
    c.cmd("m SELECT INBOX").await;
    let r = c.cmd("n SEARCH $").await;
    assert_eq!(r, vec!["* SEARCH", "n OK SEARCH completed"]);
}
