//! POP3 server (RFC 1939, 2449, 2595, 5034) over the shared metadata and
//! blob stores.
//!
//! - States (RFC 1939 §3): AUTHORIZATION (`USER`/`PASS`, `AUTH PLAIN`,
//!   `STLS`, `CAPA`, `QUIT`), TRANSACTION (`STAT`, `LIST`, `RETR`, `DELE`,
//!   `NOOP`, `RSET`, `TOP`, `UIDL`, `CAPA`, `QUIT`), UPDATE (on `QUIT`
//!   only: the `DELE`'d messages are expunged from INBOX). A session that
//!   ends any other way (disconnect, idle timeout, shutdown, lost lock)
//!   commits nothing.
//! - The maildrop is the account's INBOX as it was at login; message numbers
//!   are positions in that snapshot. Sizes are `MessageMeta::size` (header
//!   prefix plus blob, before byte-stuffing). UIDL is
//!   `<uidvalidity>.<uid>`.
//! - Maildrop lock (docs/architecture.md invariant 6): the lease `pop3:<account>` in the
//!   metadata store, shared by every access replica, renewed every third
//!   of `access.pop3_lock_lease_secs` and released at the end of the
//!   session; a crashed holder's lease expires. If renewal is refused the
//!   session ends without committing deletions.
//! - Pipelining (RFC 2449): replies to all buffered commands are written
//!   together; a retrieved message is written in one piece.

mod codec;

use std::sync::Arc;
use std::time::{Duration, Instant};

use posthorn_bus::MailboxEvent;
use posthorn_mailbox_store::{FlagOp, MessageMeta, MetaStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use self::codec::{Line, LineReader};
use crate::{Ctx, Io, Login, Peer};

/// Longest command line accepted, in octets without CRLF. RFC 2449 §4 says
/// 255; we are lenient (long SASL PLAIN responses, long passwords).
pub const MAX_LINE: usize = 1024;
/// Client errors after which the session is closed.
pub const MAX_ERRORS: u32 = 10;
/// Delay before answering a failed login.
pub const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(300);
/// Replies are written once this many bytes are pending, pipelining or not.
const FLUSH_AT: usize = 256 * 1024;

/// The mailbox POP3 serves.
const INBOX: &str = "INBOX";

enum Flow {
    Continue,
    Close,
    StartTls,
}

/// One message of the snapshot.
struct Msg {
    meta: MessageMeta,
    deleted: bool,
    retrieved: bool,
}

/// The held maildrop lock; dropping it stops the renewal.
struct Lease {
    name: String,
    owner: String,
    ttl: Duration,
    /// Turns true when the lease could not be renewed.
    lost: watch::Receiver<bool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// TRANSACTION state.
struct Maildrop {
    account: String,
    uidvalidity: u32,
    msgs: Vec<Msg>,
    lease: Lease,
    /// The last message read (UID, prefix + blob), for TOP followed by RETR.
    cache: Option<(u32, Arc<Vec<u8>>)>,
}

impl Maildrop {
    fn live(&self) -> impl Iterator<Item = (usize, &Msg)> {
        self.msgs
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.deleted)
            .map(|(i, m)| (i + 1, m))
    }

    fn totals(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, sz), (_, m)| (n + 1, sz + m.meta.size))
    }

    /// Index of message number `arg` if it exists and is not deleted.
    fn index(&self, arg: &str) -> Option<usize> {
        let n = codec::parse_number(arg)?;
        let i = usize::try_from(n).ok()?.checked_sub(1)?;
        match self.msgs.get(i) {
            Some(m) if !m.deleted => Some(i),
            _ => None,
        }
    }

    fn uidl(&self, i: usize) -> String {
        format!("{}.{}", self.uidvalidity, self.msgs[i].meta.uid)
    }
}

enum State {
    Authorization {
        /// Name given by USER, waiting for PASS.
        user: Option<String>,
        /// `AUTH PLAIN` sent `+ ` and waits for the response line.
        sasl: bool,
    },
    Transaction(Box<Maildrop>),
}

struct Session {
    ctx: Arc<Ctx>,
    peer: Peer,
    /// Unique per session: the lease owner.
    id: String,
    state: State,
    lines: LineReader,
    /// Replies not yet written.
    out: Vec<u8>,
    errors: u32,
}

/// Run one POP3 session. `stream` is plain or already TLS (`peer.tls`).
pub async fn run(
    ctx: Arc<Ctx>,
    mut stream: Box<dyn Io>,
    peer: Peer,
    mut shutdown: watch::Receiver<bool>,
) {
    let idle = Duration::from_secs(ctx.cfg.access.pop3_idle_timeout_secs.max(1));
    let mut s = Session {
        id: format!(
            "{}/{:032x}",
            ctx.cfg.server.hostname,
            rand::random::<u128>()
        ),
        ctx: ctx.clone(),
        peer,
        state: State::Authorization {
            user: None,
            sasl: false,
        },
        lines: LineReader::new(MAX_LINE),
        out: Vec::new(),
        errors: 0,
    };
    if *shutdown.borrow() {
        let _ = stream
            .write_all(b"-ERR [SYS/TEMP] Server shutting down\r\n")
            .await;
        return;
    }
    s.push("+OK Posthorn POP3 server ready");
    let mut buf = vec![0u8; 16 * 1024];
    'session: loop {
        // Answer every complete line already received (PIPELINING).
        while let Some(line) = s.lines.next_line() {
            let flow = match line {
                Line::Ok(line) => s.command(line).await,
                Line::TooLong => s.err("Line too long"),
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => break 'session,
                Flow::StartTls => {
                    if !flush(&mut stream, &mut s.out, idle).await {
                        break 'session;
                    }
                    // RFC 2595 §4 / CVE-2011-0411: nothing pipelined before the
                    // handshake may be taken as a command after it.
                    s.lines.clear();
                    let Some(acceptor) = ctx.tls.clone() else {
                        break 'session;
                    };
                    match tokio::time::timeout(idle, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => stream = Box::new(tls),
                        _ => return,
                    }
                    s.peer.tls = true;
                    s.state = State::Authorization {
                        user: None,
                        sasl: false,
                    };
                }
            }
            if *shutdown.borrow() {
                // The current command is answered; end without UPDATE.
                break 'session;
            }
            if s.out.len() >= FLUSH_AT && !flush(&mut stream, &mut s.out, idle).await {
                break 'session;
            }
        }
        if !flush(&mut stream, &mut s.out, idle).await {
            break 'session;
        }
        let mut lost = match &s.state {
            State::Transaction(md) => Some(md.lease.lost.clone()),
            State::Authorization { .. } => None,
        };
        let read = tokio::select! {
            r = tokio::time::timeout(idle, stream.read(&mut buf)) => r,
            _ = shutdown.changed() => {
                s.push("-ERR [SYS/TEMP] Server shutting down");
                break 'session;
            }
            _ = lease_lost(&mut lost) => {
                s.push("-ERR [SYS/TEMP] Maildrop lock lost, closing without changes");
                break 'session;
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break 'session,
            Ok(Ok(n)) => s.lines.push(&buf[..n]),
            Err(_) => {
                // RFC 1939 §3: autologout timer; no UPDATE.
                s.push("-ERR Autologout: idle for too long, closing connection");
                break 'session;
            }
        }
    }
    if flush(&mut stream, &mut s.out, Duration::from_secs(5)).await {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await;
    }
    s.end().await;
}

/// Write `out` (and clear it); false if the client is gone or too slow.
async fn flush(stream: &mut Box<dyn Io>, out: &mut Vec<u8>, within: Duration) -> bool {
    if out.is_empty() {
        return true;
    }
    let r = tokio::time::timeout(within, async {
        stream.write_all(out).await?;
        stream.flush().await
    })
    .await;
    out.clear();
    matches!(r, Ok(Ok(())))
}

/// Resolves when the lease is lost; never without a lease.
async fn lease_lost(lost: &mut Option<watch::Receiver<bool>>) {
    match lost {
        Some(rx) => {
            if rx.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Keep the lease alive; on refusal (or no successful renewal for a whole
/// lease period) report it lost and stop.
async fn renew_lease(
    meta: Arc<dyn MetaStore>,
    name: String,
    owner: String,
    ttl: Duration,
    lost: watch::Sender<bool>,
) {
    let every = ttl / 3;
    let mut last_ok = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(every, meta.acquire_lease(&name, &owner, ttl)).await {
            Ok(Ok(true)) => last_ok = Instant::now(),
            Ok(Ok(false)) => {
                tracing::warn!(lease = %name, "POP3 maildrop lock taken over; ending session");
                lost.send_replace(true);
                return;
            }
            Ok(Err(e)) => tracing::warn!(lease = %name, error = %e, "cannot renew POP3 lock"),
            Err(_) => tracing::warn!(lease = %name, "renewing the POP3 lock timed out"),
        }
        if last_ok.elapsed() >= ttl {
            tracing::warn!(lease = %name, "POP3 lock expired unrenewed; ending session");
            lost.send_replace(true);
            return;
        }
    }
}

impl Session {
    fn push(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn ok(&mut self, text: &str) -> Flow {
        self.push(&format!("+OK {text}"));
        Flow::Continue
    }

    /// A client error: counted; too many close the session.
    fn err(&mut self, text: &str) -> Flow {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.push("-ERR Too many errors, closing connection");
            return Flow::Close;
        }
        self.push(&format!("-ERR {text}"));
        Flow::Continue
    }

    /// A server-side failure: not the client's fault, not counted.
    fn temp_err(&mut self, text: &str) -> Flow {
        self.push(&format!("-ERR [SYS/TEMP] {text}"));
        Flow::Continue
    }

    fn multiline(&mut self, status: &str, body: &[&[u8]]) {
        self.push(&format!("+OK {status}"));
        codec::multiline_into(&mut self.out, body);
    }

    async fn command(&mut self, line: Vec<u8>) -> Flow {
        if let State::Authorization { sasl: true, .. } = self.state {
            return self.sasl_response(&line).await;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let (verb, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let verb = verb.to_ascii_uppercase();
        let args: Vec<&str> = rest.split_ascii_whitespace().collect();
        let authorization = matches!(self.state, State::Authorization { .. });
        match verb.as_str() {
            "CAPA" => self.capa(),
            "QUIT" => self.quit().await,
            "NOOP" if !authorization => self.ok(""),
            "USER" | "PASS" | "AUTH" | "STLS" | "APOP" if !authorization => {
                self.err("Command not valid in TRANSACTION state")
            }
            "USER" => self.user(&args),
            "PASS" => self.pass(rest).await,
            "AUTH" => self.auth(&args).await,
            "STLS" => self.stls(&args),
            "APOP" => self.err("APOP is not supported"),
            "STAT" | "LIST" | "RETR" | "DELE" | "NOOP" | "RSET" | "TOP" | "UIDL"
                if authorization =>
            {
                self.err("Command not valid in AUTHORIZATION state (log in first)")
            }
            "STAT" => self.stat(&args),
            "LIST" => self.list(&args),
            "UIDL" => self.uidl(&args),
            "RETR" => self.retr(&args).await,
            "TOP" => self.top(&args).await,
            "DELE" => self.dele(&args),
            "RSET" => self.rset(&args),
            _ => self.err("Unknown command"),
        }
    }

    fn capa(&mut self) -> Flow {
        let mut caps = vec![
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "EXPIRE NEVER",
            "IMPLEMENTATION Posthorn",
        ];
        if matches!(self.state, State::Authorization { .. }) {
            if self.ctx.plaintext_allowed(self.peer.tls) {
                caps.push("USER");
                caps.push("SASL PLAIN");
            }
            if self.ctx.tls.is_some() && !self.peer.tls {
                caps.push("STLS");
            }
        }
        let body: String = caps.iter().map(|c| format!("{c}\r\n")).collect();
        self.multiline("Capability list follows", &[body.as_bytes()]);
        Flow::Continue
    }

    fn plaintext_refused(&mut self) -> Option<Flow> {
        if self.ctx.plaintext_allowed(self.peer.tls) {
            return None;
        }
        Some(self.err("[AUTH] Plain-text authentication requires TLS (use STLS)"))
    }

    fn user(&mut self, args: &[&str]) -> Flow {
        if let Some(f) = self.plaintext_refused() {
            return f;
        }
        let [name] = args else {
            return self.err("Syntax: USER name");
        };
        let name = name.to_string();
        if let State::Authorization { user, .. } = &mut self.state {
            *user = Some(name);
        }
        self.ok("Send PASS")
    }

    async fn pass(&mut self, password: &str) -> Flow {
        if let Some(f) = self.plaintext_refused() {
            return f;
        }
        let user = match &mut self.state {
            State::Authorization { user, .. } => user.take(),
            State::Transaction(_) => None,
        };
        let Some(user) = user else {
            return self.err("Send USER first");
        };
        if password.is_empty() {
            return self.err("Syntax: PASS password");
        }
        self.login(&user, password).await
    }

    async fn auth(&mut self, args: &[&str]) -> Flow {
        match args {
            // RFC 1734's bare AUTH: list the mechanisms (some clients probe so).
            [] => {
                let body: &[u8] = if self.ctx.plaintext_allowed(self.peer.tls) {
                    b"PLAIN\r\n"
                } else {
                    b""
                };
                self.multiline("Supported SASL mechanisms follow", &[body]);
                Flow::Continue
            }
            [mech, rest @ ..] if mech.eq_ignore_ascii_case("PLAIN") && rest.len() <= 1 => {
                if let Some(f) = self.plaintext_refused() {
                    return f;
                }
                match rest.first() {
                    Some(initial) => self.plain(initial).await,
                    None => {
                        if let State::Authorization { sasl, user } = &mut self.state {
                            *sasl = true;
                            *user = None;
                        }
                        self.push("+ ");
                        Flow::Continue
                    }
                }
            }
            [_, ..] if args.len() <= 2 => self.err("Unsupported SASL mechanism"),
            _ => self.err("Syntax: AUTH mechanism [initial-response]"),
        }
    }

    async fn sasl_response(&mut self, line: &[u8]) -> Flow {
        if let State::Authorization { sasl, .. } = &mut self.state {
            *sasl = false;
        }
        let text = String::from_utf8_lossy(line).into_owned();
        if text.trim() == "*" {
            return self.err("Authentication cancelled");
        }
        self.plain(&text).await
    }

    async fn plain(&mut self, response: &str) -> Flow {
        let Some((authzid, authcid, passwd)) = codec::decode_plain(response) else {
            return self.err("[AUTH] Invalid SASL PLAIN response");
        };
        if !authzid.is_empty()
            && posthorn_mailbox_store::normalize_address(&authzid)
                != posthorn_mailbox_store::normalize_address(&authcid)
        {
            return self.err("[AUTH] Authorization as another user is not permitted");
        }
        self.login(&authcid, &passwd).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Flow {
        let ctx = self.ctx.clone();
        match ctx.login(user, password, self.peer.ip).await {
            Login::Ok(account) => self.open_maildrop(account).await,
            Login::BadCredentials => {
                tokio::time::sleep(FAILED_LOGIN_DELAY).await;
                self.err("[AUTH] Invalid credentials")
            }
            Login::Throttled => self.err("[AUTH] Too many failed logins, try later"),
            Login::Unavailable(e) => {
                tracing::warn!(error = %e, "POP3 login: directory unavailable");
                self.temp_err("Authentication temporarily unavailable, try later")
            }
        }
    }

    /// Take the maildrop lock and the snapshot; enter TRANSACTION.
    async fn open_maildrop(&mut self, account: String) -> Flow {
        let meta = self.ctx.backends.meta.clone();
        let name = format!("pop3:{account}");
        let ttl = Duration::from_secs(self.ctx.cfg.access.pop3_lock_lease_secs.max(1));
        match meta.acquire_lease(&name, &self.id, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(%account, "POP3 maildrop in use");
                self.push("-ERR [IN-USE] Maildrop already locked");
                return Flow::Close;
            }
            Err(e) => {
                tracing::warn!(%account, error = %e, "POP3 lock unavailable");
                return self.temp_err("Maildrop temporarily unavailable, try later");
            }
        }
        let snapshot = async {
            match meta.get_mailbox(&account, INBOX).await? {
                Some(mb) => Ok((
                    mb.uidvalidity,
                    meta.fetch(&account, INBOX, 1, u32::MAX).await?,
                )),
                None => Ok((0, Vec::new())),
            }
        };
        let (uidvalidity, metas): (u32, Vec<MessageMeta>) = match snapshot.await {
            Ok(x) => x,
            Err::<_, posthorn_mailbox_store::Error>(e) => {
                tracing::warn!(%account, error = %e, "POP3 maildrop unavailable");
                let _ = meta.release_lease(&name, &self.id).await;
                return self.temp_err("Maildrop temporarily unavailable, try later");
            }
        };
        let (tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(renew_lease(
            meta.clone(),
            name.clone(),
            self.id.clone(),
            ttl,
            tx,
        ));
        let md = Maildrop {
            account: account.clone(),
            uidvalidity,
            msgs: metas
                .into_iter()
                .map(|meta| Msg {
                    meta,
                    deleted: false,
                    retrieved: false,
                })
                .collect(),
            lease: Lease {
                name,
                owner: self.id.clone(),
                ttl,
                lost,
                renewer,
            },
            cache: None,
        };
        let (n, size) = md.totals();
        tracing::info!(%account, messages = n, "POP3 login");
        metrics::counter!("posthorn_access_logins_total", "proto" => "pop3").increment(1);
        self.state = State::Transaction(Box::new(md));
        self.ok(&format!(
            "Logged in, maildrop has {n} messages ({size} octets)"
        ))
    }

    fn stls(&mut self, args: &[&str]) -> Flow {
        if !args.is_empty() {
            return self.err("Syntax: STLS");
        }
        if self.peer.tls {
            return self.err("TLS is already active");
        }
        if self.ctx.tls.is_none() {
            return self.err("STLS is not available");
        }
        self.push("+OK Begin TLS negotiation");
        Flow::StartTls
    }

    fn maildrop(&mut self) -> &mut Maildrop {
        match &mut self.state {
            State::Transaction(md) => md,
            // The dispatcher only calls TRANSACTION commands in that state.
            State::Authorization { .. } => unreachable!("TRANSACTION command outside TRANSACTION"),
        }
    }

    fn stat(&mut self, args: &[&str]) -> Flow {
        if !args.is_empty() {
            return self.err("Syntax: STAT");
        }
        let (n, size) = self.maildrop().totals();
        self.ok(&format!("{n} {size}"))
    }

    fn list(&mut self, args: &[&str]) -> Flow {
        let md = self.maildrop();
        match args {
            [] => {
                let (n, size) = md.totals();
                let body: String = md
                    .live()
                    .map(|(i, m)| format!("{i} {}\r\n", m.meta.size))
                    .collect();
                self.multiline(&format!("{n} messages ({size} octets)"), &[body.as_bytes()]);
                Flow::Continue
            }
            [arg] => match md.index(arg) {
                Some(i) => {
                    let size = md.msgs[i].meta.size;
                    self.ok(&format!("{} {size}", i + 1))
                }
                None => self.err("No such message"),
            },
            _ => self.err("Syntax: LIST [msg]"),
        }
    }

    fn uidl(&mut self, args: &[&str]) -> Flow {
        let md = self.maildrop();
        match args {
            [] => {
                let body: String = md
                    .live()
                    .map(|(n, _)| format!("{n} {}\r\n", md.uidl(n - 1)))
                    .collect();
                self.multiline("Unique-ID listing follows", &[body.as_bytes()]);
                Flow::Continue
            }
            [arg] => match md.index(arg) {
                Some(i) => {
                    let id = md.uidl(i);
                    self.ok(&format!("{} {id}", i + 1))
                }
                None => self.err("No such message"),
            },
            _ => self.err("Syntax: UIDL [msg]"),
        }
    }

    /// Header prefix plus blob of message `i` (cached for the last one).
    async fn content(&mut self, i: usize) -> Option<Arc<Vec<u8>>> {
        let blobs = self.ctx.backends.blobs.clone();
        let md = self.maildrop();
        let m = &md.msgs[i].meta;
        if let Some((uid, bytes)) = &md.cache
            && *uid == m.uid
        {
            return Some(bytes.clone());
        }
        let blob = match blobs.get(&m.blob_key).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(uid = m.uid, blob = %m.blob_key, error = %e, "POP3: cannot read message");
                return None;
            }
        };
        let mut bytes = Vec::with_capacity(m.header_prefix.len() + blob.len());
        bytes.extend_from_slice(m.header_prefix.as_bytes());
        bytes.extend_from_slice(&blob);
        if bytes.len() as u64 != m.size {
            tracing::warn!(
                uid = m.uid,
                stored = m.size,
                actual = bytes.len(),
                "POP3: message size differs from its metadata"
            );
        }
        let bytes = Arc::new(bytes);
        md.cache = Some((m.uid, bytes.clone()));
        Some(bytes)
    }

    async fn retr(&mut self, args: &[&str]) -> Flow {
        let [arg] = args else {
            return self.err("Syntax: RETR msg");
        };
        let Some(i) = self.maildrop().index(arg) else {
            return self.err("No such message");
        };
        let Some(bytes) = self.content(i).await else {
            return self.temp_err("Message temporarily unavailable, try later");
        };
        let md = self.maildrop();
        md.msgs[i].retrieved = true;
        let size = md.msgs[i].meta.size;
        metrics::counter!("posthorn_access_pop3_retrieved_bytes_total").increment(size);
        self.multiline(&format!("{size} octets"), &[&bytes]);
        Flow::Continue
    }

    async fn top(&mut self, args: &[&str]) -> Flow {
        let [arg, lines] = args else {
            return self.err("Syntax: TOP msg lines");
        };
        let Some(i) = self.maildrop().index(arg) else {
            return self.err("No such message");
        };
        let Some(k) = codec::parse_number(lines) else {
            return self.err("Syntax: TOP msg lines (lines is a number)");
        };
        let Some(bytes) = self.content(i).await else {
            return self.temp_err("Message temporarily unavailable, try later");
        };
        let end = codec::top_len(&bytes, k);
        self.multiline("Top of message follows", &[&bytes[..end]]);
        Flow::Continue
    }

    fn dele(&mut self, args: &[&str]) -> Flow {
        let [arg] = args else {
            return self.err("Syntax: DELE msg");
        };
        let md = self.maildrop();
        let Some(i) = md.index(arg) else {
            return self.err("No such message");
        };
        md.msgs[i].deleted = true;
        if md
            .cache
            .as_ref()
            .is_some_and(|(uid, _)| *uid == md.msgs[i].meta.uid)
        {
            md.cache = None;
        }
        self.ok(&format!("Message {} deleted", i + 1))
    }

    fn rset(&mut self, args: &[&str]) -> Flow {
        if !args.is_empty() {
            return self.err("Syntax: RSET");
        }
        let md = self.maildrop();
        for m in &mut md.msgs {
            m.deleted = false;
        }
        let (n, size) = md.totals();
        self.ok(&format!("Maildrop has {n} messages ({size} octets)"))
    }

    async fn quit(&mut self) -> Flow {
        let md = match std::mem::replace(
            &mut self.state,
            State::Authorization {
                user: None,
                sasl: false,
            },
        ) {
            State::Authorization { .. } => {
                self.push("+OK Posthorn POP3 server signing off");
                return Flow::Close;
            }
            State::Transaction(md) => md,
        };
        let reply = self.update(&md).await;
        // Release the maildrop lock before answering: a client that logs in
        // again right after our +OK must not find its own lock (`[IN-USE]`).
        self.release(&md).await;
        self.push(&reply);
        Flow::Close
    }

    /// UPDATE state (RFC 1939 §6): commit the deletions, if the lock is still ours.
    async fn update(&self, md: &Maildrop) -> String {
        let meta = &self.ctx.backends.meta;
        let lease = &md.lease;
        let held = !*lease.lost.borrow()
            && matches!(
                meta.acquire_lease(&lease.name, &lease.owner, lease.ttl)
                    .await,
                Ok(true)
            );
        if !held {
            tracing::warn!(account = %md.account, "POP3 QUIT after the lock was lost: nothing committed");
            return "-ERR [SYS/TEMP] Maildrop lock lost; deleted messages were not removed".into();
        }
        let deleted: Vec<u32> = md
            .msgs
            .iter()
            .filter(|m| m.deleted)
            .map(|m| m.meta.uid)
            .collect();
        // Like other POP3 servers: what was retrieved (and kept) is \Seen for IMAP.
        let seen: Vec<u32> = md
            .msgs
            .iter()
            .filter(|m| m.retrieved && !m.deleted && !m.meta.flags.iter().any(|f| f == "\\Seen"))
            .map(|m| m.meta.uid)
            .collect();
        let (left, _) = md.totals();
        if !seen.is_empty() {
            match meta
                .store_flags(
                    &md.account,
                    INBOX,
                    &seen,
                    FlagOp::Add,
                    &["\\Seen".to_string()],
                    None,
                )
                .await
            {
                Ok(_) => self.event(&md.account, "flags").await,
                Err(e) => {
                    tracing::warn!(account = %md.account, error = %e, "POP3: cannot set \\Seen")
                }
            }
        }
        if deleted.is_empty() {
            return format!("+OK Posthorn POP3 server signing off ({left} messages left)");
        }
        match meta.expunge(&md.account, INBOX, &deleted).await {
            Ok(removed) => {
                tracing::info!(account = %md.account, removed = removed.len(), "POP3 UPDATE");
                if !removed.is_empty() {
                    self.event(&md.account, "expunge").await;
                }
                format!("+OK Posthorn POP3 server signing off ({left} messages left)")
            }
            Err(e) => {
                tracing::warn!(account = %md.account, error = %e, "POP3 UPDATE failed");
                "-ERR [SYS/TEMP] Some deleted messages not removed".into()
            }
        }
    }

    async fn event(&self, account: &str, kind: &str) {
        let ev = MailboxEvent {
            account: account.to_string(),
            mailbox: INBOX.to_string(),
            kind: kind.to_string(),
        };
        if let Err(e) = self.ctx.backends.bus.publish_event(&ev).await {
            tracing::warn!(%account, error = %e, "cannot publish mailbox event");
        }
    }

    /// Session over: release the lock (no UPDATE here).
    async fn end(self) {
        if let State::Transaction(md) = &self.state {
            self.release(md).await;
        }
    }

    /// Stop renewing the maildrop lock and release it.
    async fn release(&self, md: &Maildrop) {
        md.lease.renewer.abort();
        if let Err(e) = self
            .ctx
            .backends
            .meta
            .release_lease(&md.lease.name, &md.lease.owner)
            .await
        {
            tracing::warn!(lease = %md.lease.name, error = %e, "cannot release POP3 lock (it will expire)");
        }
    }
}
