//! IMAP server (RFC 3501 and extensions; see `docs/imap.md`).
//!
//! The grammar is `imap-codec`'s: commands are decoded by its
//! [`CommandCodec`] (which also finds literals, so this module only frames
//! lines and literal bytes), responses are encoded by its [`ResponseCodec`].
//!
//! # Layout
//! - this file: the session loop, framing, authentication, mailbox commands.
//! - [`events`]: one bus subscription per process fanned out to sessions (IDLE).
//! - `fetch`: FETCH items, message bytes and the ENVELOPE/BODYSTRUCTURE cache.
//! - `search`: SEARCH evaluation.
//! - `utf7`: modified UTF-7 mailbox names.
//!
//! A selected mailbox is a snapshot (UIDs, flags, MODSEQ) refreshed from the
//! metadata store after commands, on NOOP/CHECK and while idling, which is how
//! changes made by other sessions (on any replica) become untagged
//! EXISTS/EXPUNGE/FETCH responses.

pub mod events;
mod ext;
mod fetch;
mod search;
mod utf7;

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::decode::{CommandDecodeError, Decoder};
use imap_codec::encode::Encoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody, SelectParameter, StoreModifier};
use imap_codec::imap_types::core::{AString, Atom, LiteralMode, QuotedChar, Text, Vec1};
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::extensions::quota::{QuotaGet, Resource};
use imap_codec::imap_types::flag::{Flag, FlagNameAttribute, FlagPerm, StoreResponse, StoreType};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::response::{
    Code, CodeOther, CommandContinuationRequest, Data, Response, Status,
};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::{StatusDataItem, StatusDataItemName};
use imap_codec::{CommandCodec, ResponseCodec};
use posthorn_bus::MailboxEvent;
use posthorn_mailbox_store::{Error as StoreError, FlagOp, MailboxInfo, MessageMeta, SpecialUse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::{Ctx, Io, Login, Peer};

/// Longest command line (without literals) accepted.
const MAX_LINE: usize = 1 << 20;
/// Most literals in one command.
const MAX_LITERALS: usize = 1000;
/// Literal limit for commands other than APPEND.
const MAX_SMALL_LITERAL: u64 = 1 << 20;
/// Errors (BAD/NO) before the connection is closed.
const MAX_ERRORS: u32 = 50;
/// Fallback re-check of the selected mailbox while idling.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Run one IMAP session.
pub async fn run(ctx: Arc<Ctx>, stream: Box<dyn Io>, peer: Peer, shutdown: watch::Receiver<bool>) {
    let mut s = Session {
        idle_timeout: Duration::from_secs(ctx.cfg.access.imap_idle_timeout_secs.max(1)),
        ctx,
        stream,
        tls: peer.tls,
        peer,
        rbuf: Vec::new(),
        out: Vec::new(),
        account: None,
        selected: None,
        errors: 0,
        shutdown,
        reg: None,
        condstore: false,
        qresync: false,
        esearch: None,
        cur_tag: String::new(),
        rev2: false,
        saved: Vec::new(),
        dollar_empty: false,
    };
    let caps = s.capabilities().join(" ");
    s.raw(&format!("* OK [CAPABILITY {caps}] Posthorn IMAP ready\r\n"));
    if s.flush().await.is_err() {
        return;
    }
    s.main_loop().await;
    let _ = s.stream.shutdown().await;
}

/// A selected mailbox: the session's view (sequence numbers map to UIDs).
struct Selected {
    name: String,
    read_only: bool,
    uidvalidity: u32,
    uidnext: u32,
    highest_modseq: u64,
    /// Messages in sequence order, with the flags and MODSEQ last told to the client.
    msgs: Vec<SMsg>,
}

/// One message of the selected mailbox as the client knows it.
#[derive(Debug, Clone)]
struct SMsg {
    uid: u32,
    flags: Vec<String>,
    modseq: u64,
}

impl SMsg {
    fn of(m: &MessageMeta) -> Self {
        SMsg {
            uid: m.uid,
            flags: m.flags.clone(),
            modseq: m.modseq,
        }
    }
}

impl Selected {
    fn seq_of(&self, uid: u32) -> Option<usize> {
        self.msgs.binary_search_by_key(&uid, |m| m.uid).ok()
    }
}

pub(crate) struct Session {
    ctx: Arc<Ctx>,
    stream: Box<dyn Io>,
    peer: Peer,
    tls: bool,
    rbuf: Vec<u8>,
    out: Vec<u8>,
    account: Option<String>,
    selected: Option<Selected>,
    errors: u32,
    shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
    reg: Option<events::Registration>,
    /// RFC 7162: CONDSTORE enabled (MODSEQ in FETCH responses with FLAGS).
    condstore: bool,
    /// RFC 7162: QRESYNC enabled (VANISHED instead of EXPUNGE).
    qresync: bool,
    /// RFC 4731: the current SEARCH had `RETURN (...)`.
    esearch: Option<ext::SearchReturn>,
    /// Tag of the command being executed (for ESEARCH's TAG).
    cur_tag: String,
    /// RFC 9051: `ENABLE IMAP4rev2` was given.
    rev2: bool,
    /// RFC 5182: the saved search result (UIDs), for `$`.
    saved: Vec<u32>,
    /// The current command's `$` stood for an empty set.
    dollar_empty: bool,
}

/// How reading a command ended.
enum Read {
    /// A complete command (its bytes, literals included).
    Command(Vec<u8>),
    /// A line that is not a valid command (tag if one could be seen).
    Bad(Option<String>, Vec<u8>, &'static str),
    /// A literal too large; the client did not send it (synchronizing).
    TooBig(String),
    /// End the session (EOF, I/O error, timeout, shutdown, unrecoverable input).
    Close,
}

/// What a command handler wants next.
enum Flow {
    Continue,
    Close,
}

type Res<T> = Result<T, CmdError>;

/// A tagged NO/BAD from a handler.
pub(crate) struct CmdError {
    bad: bool,
    code: Option<String>,
    text: String,
}

fn no(code: Option<&str>, text: impl Into<String>) -> CmdError {
    CmdError {
        bad: false,
        code: code.map(str::to_string),
        text: text.into(),
    }
}

fn bad(text: impl Into<String>) -> CmdError {
    CmdError {
        bad: true,
        code: None,
        text: text.into(),
    }
}

fn store_err(e: StoreError) -> CmdError {
    match e {
        StoreError::NotFound(_) => no(Some("NONEXISTENT"), "No such mailbox"),
        StoreError::AlreadyExists(_) => no(Some("ALREADYEXISTS"), "Mailbox already exists"),
        StoreError::Invalid { reason, .. } => no(Some("CANNOT"), format!("Invalid: {reason}")),
        StoreError::Unavailable(_) => no(Some("UNAVAILABLE"), "Temporary failure, try again"),
        other => {
            tracing::error!(error = %other, "imap: store error");
            no(Some("SERVERBUG"), "Internal error")
        }
    }
}

fn text(s: &str) -> Text<'static> {
    let clean: String = s
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Text::try_from(clean).unwrap_or_else(|_| Text::try_from("-").expect("valid text"))
}

fn code_other(s: &str) -> Code<'static> {
    Code::Other(CodeOther::unvalidated(s.as_bytes().to_vec()))
}

pub(crate) fn encode(resp: &Response<'_>) -> Vec<u8> {
    ResponseCodec::default().encode(resp).dump()
}

/// The tag of a line that failed to parse, if it looks like one.
fn guess_tag(line: &[u8]) -> Option<String> {
    let end = line
        .iter()
        .position(|&c| c == b' ' || c == b'\r' || c == b'\n')
        .unwrap_or(line.len());
    let t = std::str::from_utf8(&line[..end]).ok()?;
    imap_codec::imap_types::core::Tag::try_from(t).ok()?;
    Some(t.to_string())
}

/// Resolve a sequence set against `max` (the value of `*`), as inclusive ranges.
fn ranges(set: &SequenceSet, max: u32) -> Vec<(u32, u32)> {
    let v = |s: &SeqOrUid| match s {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => max,
    };
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(a) => (v(a), v(a)),
            Sequence::Range(a, b) => {
                let (a, b) = (v(a), v(b));
                (a.min(b), a.max(b))
            }
        })
        .collect()
}

/// Render UIDs as a compact IMAP set (`1:3,7`).
fn uid_set(uids: &[u32]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = uids[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    out.join(",")
}

fn flag_string(f: &Flag<'_>) -> Option<String> {
    let s = f.to_string();
    // `\Recent` and `\*` cannot be stored.
    if matches!(f, Flag::Extension(_)) && (s.eq_ignore_ascii_case("\\Recent") || s == "\\*") {
        None
    } else {
        Some(s)
    }
}

fn special_use_attr(s: SpecialUse) -> &'static str {
    match s {
        SpecialUse::All => "All",
        SpecialUse::Archive => "Archive",
        SpecialUse::Drafts => "Drafts",
        SpecialUse::Flagged => "Flagged",
        SpecialUse::Junk => "Junk",
        SpecialUse::Sent => "Sent",
        SpecialUse::Trash => "Trash",
    }
}

/// `%`/`*` wildcard match (RFC 3501 §6.3.8), `/` as delimiter.
fn wildcard(pat: &[u8], name: &[u8]) -> bool {
    // Iterative backtracking over `*`; `%` recursion is bounded by name length.
    fn m(p: &[u8], n: &[u8], budget: &mut u32) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|i| m(&p[1..], &n[i..], budget)),
            Some(b'%') => {
                let lim = n.iter().position(|&c| c == b'/').unwrap_or(n.len());
                (0..=lim).any(|i| m(&p[1..], &n[i..], budget))
            }
            Some(&c) => n.first() == Some(&c) && m(&p[1..], &n[1..], budget),
        }
    }
    let mut budget = 100_000;
    m(pat, name, &mut budget)
}

impl Session {
    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![
            "IMAP4rev1".to_string(),
            "IMAP4rev2".into(),
            "LITERAL+".into(),
            "SASL-IR".into(),
        ];
        if !self.tls && self.ctx.tls.is_some() && self.account.is_none() {
            caps.push("STARTTLS".into());
        }
        if self.account.is_none() {
            if self.ctx.plaintext_allowed(self.tls) {
                caps.push("AUTH=PLAIN".into());
            } else {
                caps.push("LOGINDISABLED".into());
            }
        }
        for c in [
            "ENABLE",
            "IDLE",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "NAMESPACE",
            "ID",
            "CHILDREN",
            "SPECIAL-USE",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "QUOTA=RES-MESSAGE",
            "CONDSTORE",
            "QRESYNC",
            "ESEARCH",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "BINARY",
            "STATUS=SIZE",
            "SEARCHRES",
        ] {
            caps.push(c.into());
        }
        caps
    }

    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn resp(&mut self, r: Response<'_>) {
        let b = encode(&r);
        self.out.extend_from_slice(&b);
    }

    fn data(&mut self, d: Data<'_>) {
        self.resp(Response::Data(d));
    }

    fn untagged_ok(&mut self, code: Option<Code<'static>>, t: &str) {
        let Ok(s) = Status::ok(None, code, text(t));
        self.resp(Response::Status(s));
    }

    fn tagged(&mut self, tag: &str, r: Result<(Option<Code<'static>>, String), CmdError>) {
        let Ok(t) = imap_codec::imap_types::core::Tag::try_from(tag.to_string()) else {
            return;
        };
        let st = match r {
            Ok((code, msg)) => Status::ok(Some(t), code, text(&msg)),
            Err(e) => {
                self.errors += 1;
                let code = e.code.as_deref().map(code_other);
                if e.bad {
                    Status::bad(Some(t), code, text(&e.text))
                } else {
                    Status::no(Some(t), code, text(&e.text))
                }
            }
        };
        let Ok(st) = st;
        self.resp(Response::Status(st));
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            tokio::time::timeout(Duration::from_secs(300), self.stream.write_all(&out))
                .await
                .map_err(|_| std::io::Error::other("write timeout"))??;
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Read more bytes (idle timeout, shutdown). `false`: close.
    async fn fill(&mut self) -> bool {
        // Read straight into `rbuf` (no buffer in the session's future:
        // every idle connection would carry it).
        self.rbuf.reserve(4096);
        tokio::select! {
            r = tokio::time::timeout(self.idle_timeout, self.stream.read_buf(&mut self.rbuf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return false,
                Ok(Ok(_)) => {}
                Err(_) => {
                    self.raw("* BYE Autologout; idle for too long\r\n");
                    let _ = self.flush().await;
                    return false;
                }
            },
            _ = self.shutdown.changed() => {
                self.raw("* BYE Server shutting down\r\n");
                let _ = self.flush().await;
                return false;
            }
        }
        true
    }

    /// Read one line (for AUTHENTICATE and IDLE), without the line ending.
    async fn read_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(p) = self.rbuf.iter().position(|&c| c == b'\n') {
                let mut line: Vec<u8> = self.rbuf.drain(..=p).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(line);
            }
            if self.rbuf.len() > 65536 {
                return None;
            }
            if self.flush().await.is_err() || !self.fill().await {
                return None;
            }
        }
    }

    /// Frame one command: lines and literals, using imap-codec to find literals.
    async fn read_command(&mut self) -> Read {
        let mut pos = 0;
        let mut literals = 0;
        let max_append = self.ctx.cfg.access.max_append_size;
        self.esearch = None;
        self.dollar_empty = false;
        loop {
            let Some(i) = self.rbuf[pos..].iter().position(|&c| c == b'\n') else {
                if self.rbuf.len() - pos > MAX_LINE {
                    self.raw("* BYE Command line too long\r\n");
                    let _ = self.flush().await;
                    return Read::Close;
                }
                if self.flush().await.is_err() || !self.fill().await {
                    return Read::Close;
                }
                continue;
            };
            let mut line_end = pos + i + 1;
            if pos == 0 {
                // ESEARCH: peel `RETURN (...)` off before imap-codec sees it.
                match ext::strip_search_return(&self.rbuf[..line_end]) {
                    None => {}
                    Some(Ok((line, ret))) => {
                        self.rbuf.splice(..line_end, line.iter().copied());
                        line_end = line.len();
                        self.esearch = Some(ret);
                    }
                    Some(Err(())) => {
                        let line: Vec<u8> = self.rbuf.drain(..line_end).collect();
                        return Read::Bad(guess_tag(&line), line, "Bad SEARCH RETURN options");
                    }
                }
                if self.rbuf[..line_end].contains(&b'$') {
                    let (uids, seqs) = self.saved_sets();
                    let empty = uids.is_empty();
                    let sub = ext::substitute_dollar(&self.rbuf[..line_end], |uid, search| {
                        match (search, uid, empty) {
                            // No UID can be 4294967295 (UIDNEXT stays below it).
                            (true, _, true) => "UID 4294967295".to_string(),
                            (true, _, false) => format!("UID {uids}"),
                            (false, _, true) => "1".to_string(),
                            (false, true, false) => uids.clone(),
                            (false, false, false) => seqs.clone(),
                        }
                    });
                    if let Some(line) = sub {
                        self.rbuf.splice(..line_end, line.iter().copied());
                        line_end = line.len();
                        self.dollar_empty = empty;
                    }
                }
            }
            let res = CommandCodec::default().decode(&self.rbuf[..line_end]);
            match res {
                Ok((rem, _)) => {
                    let used = line_end - rem.len();
                    return Read::Command(self.rbuf.drain(..used).collect());
                }
                Err(CommandDecodeError::LiteralFound { tag, length, mode }) => {
                    let tag = tag.as_ref().to_string();
                    literals += 1;
                    let is_append = {
                        let l = &self.rbuf[..line_end];
                        let upper =
                            String::from_utf8_lossy(&l[..l.len().min(64)]).to_ascii_uppercase();
                        upper
                            .split_whitespace()
                            .nth(1)
                            .is_some_and(|w| w == "APPEND")
                    };
                    let limit = if is_append {
                        max_append
                    } else {
                        MAX_SMALL_LITERAL
                    };
                    if u64::from(length) > limit
                        || literals > MAX_LITERALS
                        || (line_end as u64 + u64::from(length)) > max_append + MAX_LINE as u64
                    {
                        self.rbuf.drain(..line_end);
                        if mode == LiteralMode::NonSync {
                            // The client sends the data anyway: we cannot resynchronise.
                            self.tagged(&tag, Err(no(Some("TOOBIG"), "Literal too large")));
                            self.raw("* BYE Literal too large\r\n");
                            let _ = self.flush().await;
                            return Read::Close;
                        }
                        return Read::TooBig(tag);
                    }
                    if mode == LiteralMode::Sync {
                        self.raw("+ Ready for literal data\r\n");
                    }
                    let need = line_end + length as usize;
                    while self.rbuf.len() < need {
                        if self.flush().await.is_err() || !self.fill().await {
                            return Read::Close;
                        }
                    }
                    pos = need;
                }
                Err(_) => {
                    let line: Vec<u8> = self.rbuf.drain(..line_end).collect();
                    let tag = guess_tag(&line);
                    let what = if literals > 0 {
                        "Syntax error in command with literal"
                    } else {
                        "Syntax error"
                    };
                    return Read::Bad(tag, line, what);
                }
            }
        }
    }

    async fn main_loop(&mut self) {
        loop {
            if self.errors >= MAX_ERRORS {
                self.raw("* BYE Too many errors\r\n");
                let _ = self.flush().await;
                return;
            }
            if self.flush().await.is_err() {
                return;
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                // An idle session holds no read buffer.
                self.rbuf = Vec::new();
            }
            match self.read_command().await {
                Read::Close => return,
                Read::TooBig(tag) => {
                    self.tagged(&tag, Err(no(Some("TOOBIG"), "Literal too large")));
                }
                Read::Bad(tag, line, what) => {
                    if let Some(t) = &tag
                        && self.list_extended(t, &line).await
                    {
                        continue;
                    }
                    match tag {
                        Some(t) => self.tagged(&t, Err(bad(what))),
                        None => {
                            self.errors += 1;
                            self.raw(&format!("* BAD {what}\r\n"));
                        }
                    }
                }
                Read::Command(bytes) => {
                    let Ok((_, cmd)) = CommandCodec::default().decode(&bytes) else {
                        continue;
                    };
                    if let Flow::Close = self.dispatch(cmd).await {
                        let _ = self.flush().await;
                        return;
                    }
                }
            }
        }
    }

    /// A LIST in RFC 5258 form (imap-codec parses only the basic one).
    /// `false`: not such a command.
    async fn list_extended(&mut self, tag: &str, line: &[u8]) -> bool {
        let Ok(s) = std::str::from_utf8(line) else {
            return false;
        };
        let s = s.trim_end_matches(['\r', '\n']);
        let mut words = s.splitn(3, ' ');
        let (_, Some(cmd), Some(args)) = (words.next(), words.next(), words.next()) else {
            return false;
        };
        if !cmd.eq_ignore_ascii_case("LIST") {
            return false;
        }
        let r = match ext::parse_list(args) {
            None => return false,
            Some(_) if self.account.is_none() => Err(bad("Log in first")),
            Some(Err(reason)) => Err(bad(reason)),
            Some(Ok(opts)) => self.list_ext(opts, false, true).await,
        };
        if self.selected.is_some() {
            self.sync(true).await;
        }
        self.tagged(tag, r);
        true
    }

    fn publish(&self, mailbox: &str, kind: &str) {
        let Some(account) = self.account.clone() else {
            return;
        };
        let bus = self.ctx.backends.bus.clone();
        let ev = MailboxEvent {
            account,
            mailbox: mailbox.to_string(),
            kind: kind.to_string(),
        };
        tokio::spawn(async move {
            let _ = bus.publish_event(&ev).await;
        });
    }

    async fn dispatch(&mut self, cmd: Command<'_>) -> Flow {
        let tag = cmd.tag.as_ref().to_string();
        self.cur_tag.clone_from(&tag);
        let authed = self.account.is_some();
        let needs_auth = !matches!(
            cmd.body,
            CommandBody::Capability
                | CommandBody::Noop
                | CommandBody::Logout
                | CommandBody::StartTLS
                | CommandBody::Login { .. }
                | CommandBody::Authenticate { .. }
                | CommandBody::Id { .. }
        );
        if needs_auth && !authed {
            self.tagged(&tag, Err(bad("Log in first")));
            return Flow::Continue;
        }
        let needs_selected = matches!(
            cmd.body,
            CommandBody::Close
                | CommandBody::Unselect
                | CommandBody::Expunge
                | CommandBody::ExpungeUid { .. }
                | CommandBody::Search { .. }
                | CommandBody::Fetch { .. }
                | CommandBody::Store { .. }
                | CommandBody::Copy { .. }
                | CommandBody::Move { .. }
                | CommandBody::Check
        );
        if needs_selected && self.selected.is_none() {
            self.tagged(&tag, Err(bad("No mailbox selected")));
            return Flow::Continue;
        }
        // RFC 3501 §7.4.1: no EXPUNGE responses during FETCH/STORE/SEARCH.
        let mut expunge_ok = true;
        let r: Res<(Option<Code<'static>>, String)> = match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities().join(" ");
                self.raw(&format!("* CAPABILITY {caps}\r\n"));
                Ok((None, "CAPABILITY completed".into()))
            }
            CommandBody::Noop => Ok((None, "NOOP completed".into())),
            CommandBody::Check => Ok((None, "CHECK completed".into())),
            CommandBody::Logout => {
                self.raw("* BYE Logging out\r\n");
                self.tagged(&tag, Ok((None, "LOGOUT completed".into())));
                return Flow::Close;
            }
            CommandBody::StartTLS => return self.starttls(&tag).await,
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                self.login(&user, &pass).await
            }
            CommandBody::Authenticate {
                mechanism,
                initial_response,
            } => {
                let ir = initial_response.map(|s| s.declassify().to_vec());
                match self.authenticate(&mechanism, ir).await {
                    Some(r) => r,
                    None => return Flow::Close,
                }
            }
            CommandBody::Select {
                mailbox,
                parameters,
            } => self.select(&mailbox, false, &parameters).await,
            CommandBody::Examine {
                mailbox,
                parameters,
            } => self.select(&mailbox, true, &parameters).await,
            CommandBody::Create { mailbox } => self.create(&mailbox).await,
            CommandBody::Delete { mailbox } => self.delete(&mailbox).await,
            CommandBody::Rename { from, to } => self.rename(&from, &to).await,
            CommandBody::Subscribe { mailbox } => self.subscribe(&mailbox, true).await,
            CommandBody::Unsubscribe { mailbox } => self.subscribe(&mailbox, false).await,
            CommandBody::List {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, false).await,
            CommandBody::Lsub {
                reference,
                mailbox_wildcard,
            } => self.list(&reference, &mailbox_wildcard, true).await,
            CommandBody::Status {
                mailbox,
                item_names,
            } => self.status(&mailbox, &item_names).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } => {
                let date = date.map(|d| d.as_ref().timestamp());
                let data: &[u8] = match &message {
                    LiteralOrLiteral8::Literal(l) => l.data(),
                    LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
                };
                self.append(&mailbox, &flags, date, data).await
            }
            CommandBody::Close => {
                if let Some(sel) = &self.selected
                    && !sel.read_only
                {
                    let _ = self.expunge_deleted(None, false).await;
                }
                self.unselect();
                Ok((None, "CLOSE completed".into()))
            }
            CommandBody::Unselect => {
                self.unselect();
                Ok((None, "UNSELECT completed".into()))
            }
            CommandBody::Expunge => self.expunge(None).await,
            CommandBody::ExpungeUid { sequence_set } => self.expunge(Some(&sequence_set)).await,
            CommandBody::Search {
                charset,
                criteria,
                uid,
            } => {
                expunge_ok = uid;
                self.search(charset.as_ref().map(|c| c.as_ref()), criteria.as_ref(), uid)
                    .await
            }
            CommandBody::Fetch {
                sequence_set,
                macro_or_item_names,
                uid,
                modifiers,
            } => {
                expunge_ok = uid;
                self.fetch(&sequence_set, macro_or_item_names, uid, &modifiers)
                    .await
            }
            CommandBody::Store {
                sequence_set,
                kind,
                response,
                flags,
                uid,
                modifiers,
            } => {
                expunge_ok = uid;
                let unchanged_since = modifiers
                    .iter()
                    .map(|StoreModifier::UnchangedSince(n)| *n)
                    .next();
                self.store(&sequence_set, kind, response, &flags, uid, unchanged_since)
                    .await
            }
            CommandBody::Copy {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, false).await,
            CommandBody::Move {
                sequence_set,
                mailbox,
                uid,
            } => self.copy(&sequence_set, &mailbox, uid, true).await,
            CommandBody::Idle => match self.idle(&tag).await {
                Some(r) => r,
                None => return Flow::Close,
            },
            CommandBody::Enable { capabilities } => {
                let mut enabled = Vec::new();
                for c in capabilities.as_ref() {
                    let name = c.to_string().to_ascii_uppercase();
                    let flag = match name.as_str() {
                        "CONDSTORE" => &mut self.condstore,
                        "QRESYNC" => {
                            self.condstore = true;
                            &mut self.qresync
                        }
                        "IMAP4REV2" => &mut self.rev2,
                        _ => continue,
                    };
                    if !*flag {
                        *flag = true;
                        enabled.push(c.clone());
                    }
                }
                self.data(Data::Enabled {
                    capabilities: enabled,
                });
                Ok((None, "ENABLE completed".into()))
            }
            CommandBody::Namespace => {
                self.raw("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
                Ok((None, "NAMESPACE completed".into()))
            }
            CommandBody::Id { .. } => {
                self.raw("* ID (\"name\" \"Posthorn\")\r\n");
                Ok((None, "ID completed".into()))
            }
            CommandBody::GetQuotaRoot { mailbox } => self.get_quota_root(&mailbox).await,
            CommandBody::GetQuota { root } => self.get_quota(root.as_ref()).await,
            CommandBody::SetQuota { .. } => Err(no(Some("NOPERM"), "Quotas are set by the admin")),
            CommandBody::Compress { .. } => Err(no(None, "COMPRESS is not supported")),
            _ => Err(bad("Command not supported")),
        };
        if self.selected.is_some() {
            self.sync(expunge_ok).await;
        }
        self.tagged(&tag, r);
        Flow::Continue
    }

    async fn starttls(&mut self, tag: &str) -> Flow {
        if self.tls {
            self.tagged(tag, Err(bad("TLS is active already")));
            return Flow::Continue;
        }
        let Some(acceptor) = self.ctx.tls.clone() else {
            self.tagged(tag, Err(no(None, "TLS is not available")));
            return Flow::Continue;
        };
        self.tagged(tag, Ok((None, "Begin TLS negotiation now".into())));
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        // Anything pipelined after STARTTLS is discarded (CVE-2011-0411 class).
        self.rbuf.clear();
        let plain = std::mem::replace(&mut self.stream, Box::new(tokio::io::duplex(1).0));
        match tokio::time::timeout(Duration::from_secs(60), acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                self.stream = Box::new(tls);
                self.tls = true;
                self.peer.tls = true;
                Flow::Continue
            }
            _ => Flow::Close,
        }
    }

    async fn login(&mut self, user: &str, pass: &str) -> Res<(Option<Code<'static>>, String)> {
        if self.account.is_some() {
            return Err(bad("Already logged in"));
        }
        if !self.ctx.plaintext_allowed(self.tls) {
            return Err(no(
                Some("PRIVACYREQUIRED"),
                "Use STARTTLS before sending a password",
            ));
        }
        match self.ctx.login(user, pass, self.peer.ip).await {
            Login::Ok(account) => {
                tracing::info!(%account, "imap login");
                self.account = Some(account);
                let caps = self.capabilities().join(" ");
                Ok((
                    Some(code_other(&format!("CAPABILITY {caps}"))),
                    "Logged in".into(),
                ))
            }
            Login::BadCredentials => Err(no(Some("AUTHENTICATIONFAILED"), "Authentication failed")),
            Login::Throttled => Err(no(
                Some("UNAVAILABLE"),
                "Too many failed logins, try again later",
            )),
            Login::Unavailable(_) => Err(no(Some("UNAVAILABLE"), "Directory unavailable")),
        }
    }

    /// `None`: the connection is gone.
    async fn authenticate(
        &mut self,
        mech: &AuthMechanism<'_>,
        ir: Option<Vec<u8>>,
    ) -> Option<Res<(Option<Code<'static>>, String)>> {
        if self.account.is_some() {
            return Some(Err(bad("Already logged in")));
        }
        if !matches!(mech, AuthMechanism::Plain) {
            return Some(Err(no(None, "Unsupported mechanism")));
        }
        if !self.ctx.plaintext_allowed(self.tls) {
            return Some(Err(no(
                Some("PRIVACYREQUIRED"),
                "Use STARTTLS before authenticating",
            )));
        }
        let data = match ir {
            Some(d) => d,
            None => {
                self.raw("+ \r\n");
                let line = self.read_line().await?;
                if line == b"*" {
                    return Some(Err(bad("Authentication cancelled")));
                }
                use base64::Engine;
                match base64::engine::general_purpose::STANDARD.decode(&line) {
                    Ok(d) => d,
                    Err(_) => return Some(Err(bad("Invalid base64"))),
                }
            }
        };
        let mut parts = data.split(|&c| c == 0);
        let (Some(authz), Some(authc), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Some(Err(bad("Malformed PLAIN response")));
        };
        let authc = String::from_utf8_lossy(authc).into_owned();
        if !authz.is_empty()
            && posthorn_mailbox_store::normalize_address(&String::from_utf8_lossy(authz))
                != posthorn_mailbox_store::normalize_address(&authc)
        {
            return Some(Err(no(
                Some("AUTHORIZATIONFAILED"),
                "Cannot act as another user",
            )));
        }
        let pass = String::from_utf8_lossy(pass).into_owned();
        Some(self.login(&authc, &pass).await)
    }

    fn account(&self) -> String {
        self.account.clone().unwrap_or_default()
    }

    /// Decode, validate and canonicalise a client mailbox name.
    fn mailbox_name(&self, m: &Mailbox<'_>) -> Res<String> {
        let raw = match m {
            Mailbox::Inbox => return Ok("INBOX".into()),
            Mailbox::Other(o) => o.inner().as_ref().to_vec(),
        };
        let s = String::from_utf8(raw).map_err(|_| bad("Mailbox name is not UTF-8"))?;
        let decoded = if self.rev2 {
            s
        } else {
            utf7::decode(&s).ok_or_else(|| bad("Invalid modified UTF-7 name"))?
        };
        let trimmed = decoded.strip_suffix('/').unwrap_or(&decoded);
        posthorn_mailbox_store::validate_mailbox_name(trimmed)
            .map_err(|e| no(Some("CANNOT"), format!("{e}")))
    }

    fn mailbox_out(&self, name: &str) -> Mailbox<'static> {
        if name == "INBOX" {
            return Mailbox::Inbox;
        }
        // IMAP4rev2 (RFC 9051 §5.1): UTF-8 names (quoted) instead of modified UTF-7.
        if self.rev2 && !name.is_ascii() {
            use imap_codec::imap_types::core::IString;
            use imap_codec::imap_types::extensions::utf8::QuotedUtf8;
            use imap_codec::imap_types::mailbox::MailboxOther;
            if let Ok(q) = QuotedUtf8::try_from(name.to_string())
                && let Ok(o) = MailboxOther::try_from(AString::String(IString::QuotedUtf8(q)))
            {
                return Mailbox::Other(o);
            }
        }
        let enc = if self.rev2 {
            name.to_string()
        } else {
            utf7::encode(name)
        };
        Mailbox::try_from(enc).unwrap_or(Mailbox::Inbox)
    }

    fn unselect(&mut self) {
        self.selected = None;
        self.saved.clear();
    }

    async fn select(
        &mut self,
        m: &Mailbox<'_>,
        read_only: bool,
        params: &[SelectParameter],
    ) -> Res<(Option<Code<'static>>, String)> {
        let mut qresync = None;
        for p in params {
            match p {
                SelectParameter::CondStore => self.condstore = true,
                SelectParameter::QResync {
                    uid_validity,
                    mod_sequence_value,
                    known_uids,
                    ..
                } => {
                    if !self.qresync {
                        return Err(bad("QRESYNC is not enabled"));
                    }
                    qresync = Some((
                        uid_validity.get(),
                        mod_sequence_value.get(),
                        known_uids.clone(),
                    ));
                }
            }
        }
        self.saved.clear();
        if self.selected.take().is_some() {
            // RFC 7162 §3.2.11: the boundary between the two mailboxes' responses.
            self.untagged_ok(Some(Code::Closed), "Previous mailbox closed");
        }
        let name = self.mailbox_name(m)?;
        let account = self.account();
        let info = self
            .ctx
            .backends
            .meta
            .get_mailbox(&account, &name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| no(Some("NONEXISTENT"), "No such mailbox"))?;
        let msgs = self
            .ctx
            .backends
            .meta
            .fetch(&account, &name, 1, u32::MAX)
            .await
            .map_err(store_err)?;
        let mut keywords: BTreeSet<String> = BTreeSet::new();
        for m in &msgs {
            for f in &m.flags {
                if !f.starts_with('\\') {
                    keywords.insert(f.clone());
                }
            }
        }
        let sys = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];
        let mut flags: Vec<Flag<'static>> =
            sys.iter().filter_map(|f| Flag::try_from(*f).ok()).collect();
        flags.extend(
            keywords
                .iter()
                .filter_map(|k| Atom::try_from(k.clone()).ok().map(Flag::Keyword)),
        );
        self.data(Data::Flags(flags.clone()));
        let mut perm: Vec<FlagPerm<'static>> = flags.into_iter().map(FlagPerm::Flag).collect();
        if read_only {
            perm.clear();
        } else {
            perm.push(FlagPerm::Asterisk);
        }
        self.untagged_ok(Some(Code::PermanentFlags(perm)), "Flags permitted");
        self.data(Data::Exists(msgs.len() as u32));
        // IMAP4rev2 has neither RECENT nor the UNSEEN code (RFC 9051 §6.3.2).
        if !self.rev2 {
            self.data(Data::Recent(0));
            if let Some(p) = msgs
                .iter()
                .position(|m| !m.flags.iter().any(|f| f == "\\Seen"))
                && let Ok(c) = Code::unseen(p as u32 + 1)
            {
                self.untagged_ok(Some(c), "First unseen");
            }
        }
        if let Ok(c) = Code::uidvalidity(info.uidvalidity) {
            self.untagged_ok(Some(c), "UIDs valid");
        }
        if let Ok(c) = Code::uidnext(info.uidnext.max(1)) {
            self.untagged_ok(Some(c), "Predicted next UID");
        }
        if let Some(n) = std::num::NonZeroU64::new(info.highest_modseq) {
            self.untagged_ok(Some(Code::HighestModSeq(n)), "Highest");
        }
        if let Some((uidvalidity, since, known)) = qresync
            && uidvalidity == info.uidvalidity
        {
            self.qresync_changes(&account, &name, &info, &msgs, since, known.as_ref())
                .await?;
        }
        if self.rev2 {
            // RFC 9051 §6.3.2: the mailbox's LIST response (its canonical name).
            let mailbox = self.mailbox_out(&name);
            self.data(Data::List {
                items: vec![],
                delimiter: QuotedChar::try_from('/').ok(),
                mailbox,
            });
        }
        self.selected = Some(Selected {
            name: name.clone(),
            read_only,
            uidvalidity: info.uidvalidity,
            uidnext: info.uidnext,
            highest_modseq: info.highest_modseq,
            msgs: msgs.iter().map(SMsg::of).collect(),
        });
        self.ensure_registered().await;
        let (code, verb) = if read_only {
            (Code::ReadOnly, "EXAMINE")
        } else {
            (Code::ReadWrite, "SELECT")
        };
        Ok((Some(code), format!("{verb} completed")))
    }

    /// RFC 7162 §3.2.5: what changed since `since` (SELECT/EXAMINE QRESYNC):
    /// `VANISHED (EARLIER)` for expunged UIDs (among `known`, if given),
    /// then a FETCH for each message changed or added since.
    async fn qresync_changes(
        &mut self,
        account: &str,
        name: &str,
        info: &MailboxInfo,
        msgs: &[MessageMeta],
        since: u64,
        known: Option<&SequenceSet>,
    ) -> Res<()> {
        let gone = self
            .ctx
            .backends
            .meta
            .expunged_since(account, name, since)
            .await
            .map_err(store_err)?;
        let max = info.uidnext.saturating_sub(1);
        let known = known.map(|k| ranges(k, max));
        let in_known = |u: u32| {
            known
                .as_ref()
                .is_none_or(|r| r.iter().any(|&(a, b)| a <= u && u <= b))
        };
        let vanished: Vec<u32> = gone.into_iter().filter(|&u| in_known(u)).collect();
        if !vanished.is_empty() {
            self.raw(&format!("* VANISHED (EARLIER) {}\r\n", uid_set(&vanished)));
        }
        for (i, m) in msgs.iter().enumerate() {
            if m.modseq > since {
                self.raw(&format!(
                    "* {} FETCH (UID {} FLAGS ({}) MODSEQ ({}))\r\n",
                    i + 1,
                    m.uid,
                    fetch::flags_list(&m.flags),
                    m.modseq
                ));
            }
        }
        Ok(())
    }

    /// Tell the client about expunged messages: `(seq, uid)` pairs in the
    /// order they were removed from the snapshot (each seq is valid at its
    /// turn). `VANISHED` once QRESYNC is enabled (RFC 7162 §3.2.10).
    fn tell_expunged(&mut self, gone: &[(usize, u32)]) {
        if gone.is_empty() {
            return;
        }
        if self.qresync {
            let mut uids: Vec<u32> = gone.iter().map(|g| g.1).collect();
            uids.sort_unstable();
            self.raw(&format!("* VANISHED {}\r\n", uid_set(&uids)));
        } else {
            for (seq, _) in gone {
                self.raw(&format!("* {seq} EXPUNGE\r\n"));
            }
        }
    }

    /// An untagged FETCH telling new flags (with MODSEQ once CONDSTORE is on).
    fn flags_fetch(&self, seq: usize, uid: Option<u32>, flags: &[String], modseq: u64) -> String {
        let mut s = format!("* {seq} FETCH (");
        if let Some(u) = uid {
            s.push_str(&format!("UID {u} "));
        }
        s.push_str(&format!("FLAGS ({})", fetch::flags_list(flags)));
        if self.condstore {
            s.push_str(&format!(" MODSEQ ({modseq})"));
        }
        s.push_str(")\r\n");
        s
    }

    async fn ensure_registered(&mut self) {
        if self.reg.is_none()
            && let Some(hub) = events::EventHub::get(&self.ctx.backends.bus).await
        {
            self.reg = Some(hub.register(&self.account()));
        }
    }

    /// Bring the snapshot up to date, telling the client (EXPUNGE only if
    /// `expunge_ok`; otherwise expunged messages stay in the snapshot).
    async fn sync(&mut self, expunge_ok: bool) {
        let account = self.account();
        let Some(sel) = &self.selected else {
            return;
        };
        let name = sel.name.clone();
        let info = match self.ctx.backends.meta.get_mailbox(&account, &name).await {
            Ok(Some(i)) => i,
            Ok(None) => {
                self.raw("* BYE Selected mailbox was deleted\r\n");
                self.selected = None;
                return;
            }
            Err(_) => return,
        };
        let sel = self.selected.as_ref().expect("selected");
        if info.uidvalidity != sel.uidvalidity {
            self.raw("* BYE UIDVALIDITY changed\r\n");
            self.selected = None;
            return;
        }
        if info.highest_modseq == sel.highest_modseq && info.uidnext == sel.uidnext {
            return;
        }
        // Fast path for the common change, new mail: fetch only UIDs from the
        // old UIDNEXT. It is taken only when nothing else can have happened:
        // each append takes exactly one MODSEQ, so the MODSEQ delta equals
        // the number of new messages only if there were no flag changes or
        // expunges (anything else falls through to the full comparison).
        if info.uidnext > sel.uidnext && info.highest_modseq > sel.highest_modseq {
            let (from, known, hms) = (sel.uidnext, sel.msgs.len(), sel.highest_modseq);
            if let Ok(new) = self
                .ctx
                .backends
                .meta
                .fetch(&account, &name, from, u32::MAX)
                .await
                && info.highest_modseq - hms == new.len() as u64
                && info.exists as usize == known + new.len()
                && new.iter().all(|m| m.uid < info.uidnext)
            {
                let Some(mut sel) = self.selected.take() else {
                    return;
                };
                let last = sel.msgs.last().map_or(0, |m| m.uid);
                for m in &new {
                    if m.uid > last {
                        sel.msgs.push(SMsg::of(m));
                    }
                }
                self.raw(&format!("* {} EXISTS\r\n", sel.msgs.len()));
                sel.uidnext = info.uidnext;
                sel.highest_modseq = info.highest_modseq;
                self.selected = Some(sel);
                return;
            }
        }
        let Ok(msgs) = self
            .ctx
            .backends
            .meta
            .fetch(&account, &name, 1, u32::MAX)
            .await
        else {
            return;
        };
        self.apply_snapshot(info, msgs, expunge_ok);
    }

    fn apply_snapshot(&mut self, info: MailboxInfo, msgs: Vec<MessageMeta>, expunge_ok: bool) {
        let Some(mut sel) = self.selected.take() else {
            return;
        };
        let current: HashMap<u32, &MessageMeta> = msgs.iter().map(|m| (m.uid, m)).collect();
        let mut complete = true;
        // Expunges, in ascending order: each EXPUNGE renumbers the rest.
        if expunge_ok {
            let mut gone = Vec::new();
            let mut i = 0;
            while i < sel.msgs.len() {
                if current.contains_key(&sel.msgs[i].uid) {
                    i += 1;
                } else {
                    gone.push((i + 1, sel.msgs.remove(i).uid));
                }
            }
            self.tell_expunged(&gone);
        } else if sel.msgs.iter().any(|m| !current.contains_key(&m.uid)) {
            complete = false;
        }
        // Flag changes.
        let mut lines = Vec::new();
        for (i, sm) in sel.msgs.iter_mut().enumerate() {
            if let Some(m) = current.get(&sm.uid)
                && (m.flags != sm.flags || m.modseq != sm.modseq)
            {
                sm.flags.clone_from(&m.flags);
                sm.modseq = m.modseq;
                lines.push(self.flags_fetch(i + 1, Some(sm.uid), &sm.flags, sm.modseq));
            }
        }
        for l in lines {
            self.raw(&l);
        }
        // New messages.
        let last = sel.msgs.last().map_or(0, |m| m.uid);
        let before = sel.msgs.len();
        for m in &msgs {
            if m.uid > last {
                sel.msgs.push(SMsg::of(m));
            }
        }
        if sel.msgs.len() != before {
            self.raw(&format!("* {} EXISTS\r\n", sel.msgs.len()));
        }
        sel.uidnext = info.uidnext;
        if complete {
            sel.highest_modseq = info.highest_modseq;
        }
        self.selected = Some(sel);
    }

    async fn create(&mut self, m: &Mailbox<'_>) -> Res<(Option<Code<'static>>, String)> {
        let name = self.mailbox_name(m)?;
        if name == "INBOX" {
            return Err(no(Some("ALREADYEXISTS"), "INBOX exists"));
        }
        let account = self.account();
        // Create missing superiors (RFC 3501 §6.3.3).
        let levels: Vec<&str> = name.split('/').collect();
        for n in 1..levels.len() {
            let parent = levels[..n].join("/");
            match self
                .ctx
                .backends
                .meta
                .create_mailbox(&account, &parent, None)
                .await
            {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        self.ctx
            .backends
            .meta
            .create_mailbox(&account, &name, None)
            .await
            .map_err(store_err)?;
        Ok((None, "CREATE completed".into()))
    }

    async fn delete(&mut self, m: &Mailbox<'_>) -> Res<(Option<Code<'static>>, String)> {
        let name = self.mailbox_name(m)?;
        if name == "INBOX" {
            return Err(no(Some("CANNOT"), "INBOX cannot be deleted"));
        }
        let account = self.account();
        let all = self
            .ctx
            .backends
            .meta
            .list_mailboxes(&account)
            .await
            .map_err(store_err)?;
        let prefix = format!("{name}/");
        if all.iter().any(|b| b.name.starts_with(&prefix)) {
            return Err(no(
                Some("INUSE"),
                "Mailbox has inferior mailboxes; delete them first",
            ));
        }
        self.ctx
            .backends
            .meta
            .delete_mailbox(&account, &name)
            .await
            .map_err(store_err)?;
        if self.selected.as_ref().is_some_and(|s| s.name == name) {
            self.selected = None;
        }
        self.publish(&name, "delete");
        Ok((None, "DELETE completed".into()))
    }

    async fn rename(
        &mut self,
        from: &Mailbox<'_>,
        to: &Mailbox<'_>,
    ) -> Res<(Option<Code<'static>>, String)> {
        let from = self.mailbox_name(from)?;
        let to = self.mailbox_name(to)?;
        let account = self.account();
        let meta = self.ctx.backends.meta.clone();
        let all = meta.list_mailboxes(&account).await.map_err(store_err)?;
        if !all.iter().any(|b| b.name == from) {
            return Err(no(Some("NONEXISTENT"), "No such mailbox"));
        }
        if all.iter().any(|b| b.name == to) {
            return Err(no(Some("ALREADYEXISTS"), "Target exists"));
        }
        let prefix = format!("{from}/");
        if to.starts_with(&prefix) {
            return Err(no(Some("CANNOT"), "Cannot move a mailbox into itself"));
        }
        // Superiors of the new name.
        let levels: Vec<&str> = to.split('/').collect();
        for n in 1..levels.len() {
            let parent = levels[..n].join("/");
            match meta.create_mailbox(&account, &parent, None).await {
                Ok(_) | Err(StoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        meta.rename_mailbox(&account, &from, &to)
            .await
            .map_err(store_err)?;
        if from != "INBOX" {
            for child in all.iter().filter(|b| b.name.starts_with(&prefix)) {
                let new = format!("{to}/{}", &child.name[prefix.len()..]);
                match meta.rename_mailbox(&account, &child.name, &new).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
        }
        Ok((None, "RENAME completed".into()))
    }

    async fn subscribe(
        &mut self,
        m: &Mailbox<'_>,
        on: bool,
    ) -> Res<(Option<Code<'static>>, String)> {
        let name = self.mailbox_name(m)?;
        self.ctx
            .backends
            .meta
            .set_subscribed(&self.account(), &name, on)
            .await
            .map_err(store_err)?;
        Ok((
            None,
            if on {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            }
            .into(),
        ))
    }

    async fn list(
        &mut self,
        reference: &Mailbox<'_>,
        pattern: &ListMailbox<'_>,
        lsub: bool,
    ) -> Res<(Option<Code<'static>>, String)> {
        let reference = match reference {
            Mailbox::Inbox => "INBOX".to_string(),
            Mailbox::Other(o) => String::from_utf8_lossy(o.inner().as_ref()).into_owned(),
        };
        let pat = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
        };
        let opts = ext::ListExt {
            reference,
            patterns: vec![pat],
            ..Default::default()
        };
        self.list_ext(opts, lsub, false).await
    }

    /// LIST (basic or RFC 5258 extended, `extended`), or LSUB.
    async fn list_ext(
        &mut self,
        opts: ext::ListExt,
        lsub: bool,
        extended: bool,
    ) -> Res<(Option<Code<'static>>, String)> {
        let verb = if lsub { "LSUB" } else { "LIST" };
        let delim = QuotedChar::try_from('/').ok();
        if opts.patterns.len() == 1 && opts.patterns[0].is_empty() && !lsub {
            self.raw("* LIST (\\Noselect) \"/\" \"\"\r\n");
            return Ok((None, "LIST completed".into()));
        }
        let mut fulls = Vec::new();
        for pat in &opts.patterns {
            let joined = format!("{}{pat}", opts.reference);
            let full = if self.rev2 {
                joined
            } else {
                utf7::decode(&joined).ok_or_else(|| bad("Invalid modified UTF-7 pattern"))?
            };
            // INBOX is case-insensitive.
            let b = full.as_bytes();
            let inbox = if b.len() >= 5
                && full[..5].eq_ignore_ascii_case("INBOX")
                && (b.len() == 5 || b[5] == b'/')
            {
                format!("INBOX{}", &full[5..])
            } else {
                full.clone()
            };
            fulls.push((full, inbox));
        }
        let matches = |name: &str| {
            fulls.iter().any(|(f, i)| {
                wildcard(f.as_bytes(), name.as_bytes()) || wildcard(i.as_bytes(), name.as_bytes())
            })
        };
        let all = self
            .ctx
            .backends
            .meta
            .list_mailboxes(&self.account())
            .await
            .map_err(store_err)?;
        // Real mailboxes plus missing superiors (shown \Noselect / \NonExistent).
        let mut names: std::collections::BTreeMap<String, Option<&MailboxInfo>> =
            std::collections::BTreeMap::new();
        for b in &all {
            names.insert(b.name.clone(), Some(b));
            let mut p = b.name.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                names.entry(parent.to_string()).or_insert(None);
                p = parent;
            }
        }
        let subscribed = |n: &str| {
            names
                .get(n)
                .copied()
                .flatten()
                .is_some_and(|i| i.subscribed)
        };
        let mut status_for = Vec::new();
        for (name, info) in &names {
            if !matches(name) {
                continue;
            }
            if lsub && !info.is_some_and(|i| i.subscribed) {
                continue;
            }
            let prefix = format!("{name}/");
            let mut childinfo = false;
            if opts.sel_subscribed && !subscribed(name) {
                // RFC 5258 §3.5: with RECURSIVEMATCH, a parent of a
                // subscribed mailbox is listed with CHILDINFO.
                if opts.recursive_match
                    && names
                        .keys()
                        .any(|n| n.starts_with(&prefix) && subscribed(n))
                {
                    childinfo = true;
                } else {
                    continue;
                }
            }
            if opts.sel_special_use && info.and_then(|i| i.special_use).is_none() {
                continue;
            }
            let has_children = names.keys().any(|n| n.starts_with(&prefix));
            let mut items: Vec<FlagNameAttribute<'static>> = Vec::new();
            let attr = |s: &'static str| FlagNameAttribute::from(Atom::try_from(s).expect("atom"));
            if info.is_none() {
                items.push(if extended || self.rev2 {
                    attr("NonExistent")
                } else {
                    FlagNameAttribute::Noselect
                });
            }
            items.push(attr(if has_children {
                "HasChildren"
            } else {
                "HasNoChildren"
            }));
            if let Some(su) = info.and_then(|i| i.special_use) {
                items.push(attr(special_use_attr(su)));
            }
            if (opts.sel_subscribed || opts.ret_subscribed) && subscribed(name) {
                items.push(attr("Subscribed"));
            }
            let mailbox = self.mailbox_out(name);
            if lsub {
                self.data(Data::Lsub {
                    items,
                    delimiter: delim,
                    mailbox,
                });
            } else {
                let mut line = encode(&Response::Data(Data::List {
                    items,
                    delimiter: delim,
                    mailbox,
                }));
                if childinfo && line.ends_with(b"\r\n") {
                    line.truncate(line.len() - 2);
                    line.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n");
                }
                self.out.extend_from_slice(&line);
            }
            if info.is_some() && opts.ret_status.is_some() {
                status_for.push(name.clone());
            }
            // RFC 5819: the STATUS follows its LIST line.
            if let (Some(items), Some(n)) = (&opts.ret_status, status_for.pop()) {
                let items = items.clone();
                if let Err(e) = self.status_of(&n, &items).await {
                    tracing::debug!(mailbox = %n, reason = %e.text, "imap: LIST-STATUS skipped");
                }
            }
        }
        Ok((None, format!("{verb} completed")))
    }

    async fn status(
        &mut self,
        m: &Mailbox<'_>,
        items: &[StatusDataItemName],
    ) -> Res<(Option<Code<'static>>, String)> {
        let name = self.mailbox_name(m)?;
        self.status_of(&name, items).await?;
        Ok((None, "STATUS completed".into()))
    }

    /// Write the `* STATUS` line of one mailbox.
    async fn status_of(&mut self, name: &str, items: &[StatusDataItemName]) -> Res<()> {
        let name = name.to_string();
        let account = self.account();
        let info = self
            .ctx
            .backends
            .meta
            .get_mailbox(&account, &name)
            .await
            .map_err(store_err)?
            .ok_or_else(|| no(Some("NONEXISTENT"), "No such mailbox"))?;
        let need_msgs = items.iter().any(|i| {
            matches!(
                i,
                StatusDataItemName::Deleted
                    | StatusDataItemName::DeletedStorage
                    | StatusDataItemName::Size
            )
        });
        let msgs = if need_msgs {
            self.ctx
                .backends
                .meta
                .fetch(&account, &name, 1, u32::MAX)
                .await
                .map_err(store_err)?
        } else {
            Vec::new()
        };
        let deleted = || {
            msgs.iter()
                .filter(|m| m.flags.iter().any(|f| f == "\\Deleted"))
        };
        let mut out = Vec::new();
        for i in items {
            match i {
                StatusDataItemName::Messages => out.push(StatusDataItem::Messages(info.exists)),
                StatusDataItemName::Recent => out.push(StatusDataItem::Recent(0)),
                StatusDataItemName::UidNext => {
                    out.push(StatusDataItem::UidNext(
                        NonZeroU32::new(info.uidnext).unwrap_or(NonZeroU32::MIN),
                    ));
                }
                StatusDataItemName::UidValidity => out.push(StatusDataItem::UidValidity(
                    NonZeroU32::new(info.uidvalidity).unwrap_or(NonZeroU32::MIN),
                )),
                StatusDataItemName::Unseen => out.push(StatusDataItem::Unseen(info.unseen)),
                StatusDataItemName::Deleted => {
                    out.push(StatusDataItem::Deleted(deleted().count() as u32));
                }
                StatusDataItemName::DeletedStorage => out.push(StatusDataItem::DeletedStorage(
                    deleted().map(|m| m.size).sum(),
                )),
                StatusDataItemName::Size => {
                    out.push(StatusDataItem::Size(msgs.iter().map(|m| m.size).sum()));
                }
                StatusDataItemName::HighestModSeq => {
                    // RFC 7162 §3.1.2.1: a CONDSTORE-enabling command.
                    self.condstore = true;
                    out.push(StatusDataItem::HighestModSeq(info.highest_modseq));
                }
            }
        }
        self.data(Data::Status {
            mailbox: self.mailbox_out(&name),
            items: out.into(),
        });
        Ok(())
    }

    /// Refuse if `bytes` more bytes and `count` more messages exceed the quota.
    async fn check_quota(&mut self, bytes: u64, count: u64) -> Res<()> {
        let account = self.account();
        let meta = &self.ctx.backends.meta;
        let Some(acct) = meta.get_account(&account).await.map_err(store_err)? else {
            return Err(no(Some("SERVERBUG"), "Account vanished"));
        };
        if acct.quota.max_bytes.is_none() && acct.quota.max_messages.is_none() {
            return Ok(());
        }
        let usage = meta.get_usage(&account).await.map_err(store_err)?;
        if acct
            .quota
            .max_bytes
            .is_some_and(|m| usage.bytes.saturating_add(bytes) > m)
            || acct
                .quota
                .max_messages
                .is_some_and(|m| usage.messages.saturating_add(count) > m)
        {
            return Err(no(Some("OVERQUOTA"), "Quota exceeded"));
        }
        Ok(())
    }

    async fn append(
        &mut self,
        m: &Mailbox<'_>,
        flags: &[Flag<'_>],
        date: Option<i64>,
        data: &[u8],
    ) -> Res<(Option<Code<'static>>, String)> {
        let name = self.mailbox_name(m)?;
        let account = self.account();
        let Some(info) = self
            .ctx
            .backends
            .meta
            .get_mailbox(&account, &name)
            .await
            .map_err(store_err)?
        else {
            return Err(no(Some("TRYCREATE"), "No such mailbox"));
        };
        if data.len() as u64 > self.ctx.cfg.access.max_append_size {
            return Err(no(Some("TOOBIG"), "Message too large"));
        }
        self.check_quota(data.len() as u64, 1).await?;
        let st = posthorn_mime::analyze(data);
        let key = self
            .ctx
            .backends
            .blobs
            .put(bytes::Bytes::copy_from_slice(data))
            .await
            .map_err(|_| no(Some("UNAVAILABLE"), "Cannot store the message, try again"))?;
        let mut fl: Vec<String> = flags.iter().filter_map(flag_string).collect();
        fl.dedup();
        let now = chrono::Utc::now().timestamp();
        let out = self
            .ctx
            .backends
            .meta
            .append(
                &account,
                &name,
                posthorn_mailbox_store::NewMessage {
                    dedupe_key: None,
                    flags: fl,
                    internal_date: date.unwrap_or(now),
                    size: data.len() as u64,
                    blob_key: key,
                    header_prefix: String::new(),
                    envelope: serde_json::to_string(&st.envelope).ok(),
                    bodystructure: Some(st.to_json()),
                },
            )
            .await
            .map_err(store_err)?;
        let uid = match out {
            posthorn_mailbox_store::AppendOutcome::Appended { uid, .. } => uid,
            posthorn_mailbox_store::AppendOutcome::Duplicate { uid } => uid,
        };
        self.publish(&name, "append");
        // APPENDUID only if the mailbox kept its UIDVALIDITY throughout: a
        // DELETE and CREATE by another session in between would make the
        // pair wrong (UIDVALIDITY values are never reused, so equal means
        // unchanged). RFC 4315 lets the server omit the code.
        if !self
            .same_uidvalidity(&account, &name, info.uidvalidity)
            .await
        {
            return Ok((None, "APPEND completed".into()));
        }
        Ok((
            Some(code_other(&format!("APPENDUID {} {uid}", info.uidvalidity))),
            "APPEND completed".into(),
        ))
    }

    /// Whether `name` still has UIDVALIDITY `uv` (for APPENDUID/COPYUID).
    fn same_uidvalidity(
        &self,
        account: &str,
        name: &str,
        uv: u32,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        let meta = self.ctx.backends.meta.clone();
        let (account, name) = (account.to_string(), name.to_string());
        async move {
            matches!(
                meta.get_mailbox(&account, &name).await,
                Ok(Some(i)) if i.uidvalidity == uv
            )
        }
    }

    /// The saved search result (RFC 5182) as a UID set and a sequence set,
    /// limited to messages still in the snapshot.
    fn saved_sets(&self) -> (String, String) {
        let Some(sel) = &self.selected else {
            return (String::new(), String::new());
        };
        let mut uids = Vec::new();
        let mut seqs = Vec::new();
        for u in &self.saved {
            if let Some(i) = sel.seq_of(*u) {
                uids.push(*u);
                seqs.push(i as u32 + 1);
            }
        }
        (uid_set(&uids), uid_set(&seqs))
    }

    /// Resolve a set to snapshot indices (ascending, unique).
    fn resolve(&self, set: &SequenceSet, uid: bool) -> Res<Vec<usize>> {
        let sel = self
            .selected
            .as_ref()
            .ok_or_else(|| bad("No mailbox selected"))?;
        if self.dollar_empty {
            // `$` with an empty saved result: no messages (RFC 5182 §2.1).
            return Ok(Vec::new());
        }
        let n = sel.msgs.len();
        let mut out = BTreeSet::new();
        if uid {
            let max = sel.msgs.last().map_or(0, |m| m.uid);
            if n == 0 {
                return Ok(Vec::new());
            }
            for (a, b) in ranges(set, max) {
                let start = sel.msgs.partition_point(|m| m.uid < a);
                for (i, m) in sel.msgs.iter().enumerate().skip(start) {
                    if m.uid > b {
                        break;
                    }
                    out.insert(i);
                }
            }
        } else {
            if n == 0 {
                return Err(bad("No messages in the mailbox"));
            }
            for (a, b) in ranges(set, n as u32) {
                if b as usize > n {
                    return Err(bad("Invalid message sequence number"));
                }
                out.extend((a as usize - 1)..(b as usize));
                if out.len() > 10_000_000 {
                    return Err(bad("Sequence set too large"));
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn store(
        &mut self,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        unchanged_since: Option<u64>,
    ) -> Res<(Option<Code<'static>>, String)> {
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let idx = self.resolve(set, uid)?;
        let sel = self.selected.as_ref().expect("selected");
        if sel.read_only {
            return Err(no(Some("READ-ONLY"), "Mailbox is read-only"));
        }
        let name = sel.name.clone();
        let uids: Vec<u32> = idx.iter().map(|&i| sel.msgs[i].uid).collect();
        let fl: Vec<String> = flags.iter().filter_map(flag_string).collect();
        let op = match kind {
            StoreType::Replace => FlagOp::Set,
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
        };
        let updates = self
            .ctx
            .backends
            .meta
            .store_flags(&self.account(), &name, &uids, op, &fl, unchanged_since)
            .await
            .map_err(store_err)?;
        let silent = matches!(response, StoreResponse::Silent);
        let mut lines = Vec::new();
        let mut modified = Vec::new();
        let mut changed = false;
        if let Some(mut sel) = self.selected.take() {
            for u in &updates {
                let Some(i) = sel.seq_of(u.uid) else { continue };
                if !u.applied {
                    modified.push(if uid { u.uid } else { i as u32 + 1 });
                    continue;
                }
                let sm = &mut sel.msgs[i];
                changed |= sm.modseq != u.modseq;
                sm.flags.clone_from(&u.flags);
                sm.modseq = u.modseq;
                // RFC 7162 §3.1.3: a conditional STORE reports the new MODSEQ
                // even when .SILENT.
                if !silent || unchanged_since.is_some() {
                    lines.push(self.flags_fetch(i + 1, uid.then_some(u.uid), &u.flags, u.modseq));
                }
            }
            self.selected = Some(sel);
        }
        for l in lines {
            self.raw(&l);
        }
        if changed {
            self.publish(&name, "flags");
        }
        if !modified.is_empty() {
            modified.sort_unstable();
            let set = uid_set(&modified);
            let code = SequenceSet::try_from(set.as_str())
                .map(Code::Modified)
                .unwrap_or_else(|_| code_other(&format!("MODIFIED {set}")));
            return Ok((Some(code), "Conditional STORE failed".into()));
        }
        Ok((None, "STORE completed".into()))
    }

    /// Expunge `\Deleted` messages (all, or those in a UID set), telling the client if `tell`.
    async fn expunge_deleted(&mut self, uids: Option<&SequenceSet>, tell: bool) -> Res<Vec<u32>> {
        let account = self.account();
        let sel = self
            .selected
            .as_ref()
            .ok_or_else(|| bad("No mailbox selected"))?;
        if sel.read_only {
            return Err(no(Some("READ-ONLY"), "Mailbox is read-only"));
        }
        let name = sel.name.clone();
        let allowed: Option<BTreeSet<u32>> = match uids {
            Some(set) => Some(
                self.resolve(set, true)?
                    .into_iter()
                    .map(|i| sel.msgs[i].uid)
                    .collect(),
            ),
            None => None,
        };
        let msgs = self
            .ctx
            .backends
            .meta
            .fetch(&account, &name, 1, u32::MAX)
            .await
            .map_err(store_err)?;
        let targets: Vec<u32> = msgs
            .iter()
            .filter(|m| m.flags.iter().any(|f| f == "\\Deleted"))
            .filter(|m| allowed.as_ref().is_none_or(|a| a.contains(&m.uid)))
            .filter(|m| sel.seq_of(m.uid).is_some())
            .map(|m| m.uid)
            .collect();
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let removed = self
            .ctx
            .backends
            .meta
            .expunge(&account, &name, &targets)
            .await
            .map_err(store_err)?;
        self.remove_from_snapshot(&removed, tell);
        if !removed.is_empty() {
            self.publish(&name, "expunge");
        }
        Ok(removed)
    }

    fn remove_from_snapshot(&mut self, removed: &[u32], tell: bool) {
        let mut gone = Vec::new();
        if let Some(sel) = self.selected.as_mut() {
            for u in removed {
                if let Some(i) = sel.seq_of(*u) {
                    sel.msgs.remove(i);
                    gone.push((i + 1, *u));
                }
            }
        }
        if tell {
            self.tell_expunged(&gone);
        }
    }

    async fn expunge(
        &mut self,
        uids: Option<&SequenceSet>,
    ) -> Res<(Option<Code<'static>>, String)> {
        self.expunge_deleted(uids, true).await?;
        Ok((None, "EXPUNGE completed".into()))
    }

    async fn copy(
        &mut self,
        set: &SequenceSet,
        m: &Mailbox<'_>,
        uid: bool,
        mv: bool,
    ) -> Res<(Option<Code<'static>>, String)> {
        let target = self.mailbox_name(m)?;
        let idx = self.resolve(set, uid)?;
        let account = self.account();
        let sel = self.selected.as_ref().expect("selected");
        if mv && sel.read_only {
            return Err(no(Some("READ-ONLY"), "Mailbox is read-only"));
        }
        let src = sel.name.clone();
        let uids: Vec<u32> = idx.iter().map(|&i| sel.msgs[i].uid).collect();
        let meta = self.ctx.backends.meta.clone();
        let Some(tinfo) = meta
            .get_mailbox(&account, &target)
            .await
            .map_err(store_err)?
        else {
            return Err(no(Some("TRYCREATE"), "No such mailbox"));
        };
        if uids.is_empty() {
            return Ok((
                None,
                if mv {
                    "MOVE completed"
                } else {
                    "COPY completed"
                }
                .into(),
            ));
        }
        let wanted: BTreeSet<u32> = uids.iter().copied().collect();
        let msgs: Vec<MessageMeta> = meta
            .fetch(&account, &src, uids[0], *uids.last().expect("non-empty"))
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|m| wanted.contains(&m.uid))
            .collect();
        if msgs.len() != uids.len() && !uid {
            return Err(no(Some("EXPUNGEISSUED"), "Some messages were expunged"));
        }
        if src != target || !mv {
            self.check_quota(msgs.iter().map(|m| m.size).sum(), msgs.len() as u64)
                .await?;
        }
        let mut src_uids = Vec::new();
        let mut dst_uids = Vec::new();
        for m in &msgs {
            let out = meta
                .append(
                    &account,
                    &target,
                    posthorn_mailbox_store::NewMessage {
                        dedupe_key: None,
                        flags: m.flags.clone(),
                        internal_date: m.internal_date,
                        size: m.size,
                        blob_key: m.blob_key.clone(),
                        header_prefix: m.header_prefix.clone(),
                        envelope: m.envelope.clone(),
                        bodystructure: m.bodystructure.clone(),
                    },
                )
                .await
                .map_err(store_err)?;
            if let posthorn_mailbox_store::AppendOutcome::Appended { uid, .. } = out {
                src_uids.push(m.uid);
                dst_uids.push(uid);
            }
        }
        self.publish(&target, "append");
        let code = format!(
            "COPYUID {} {} {}",
            tinfo.uidvalidity,
            uid_set(&src_uids),
            uid_set(&dst_uids)
        );
        // As for APPENDUID: no COPYUID if the target was recreated meanwhile.
        let sticky = self
            .same_uidvalidity(&account, &target, tinfo.uidvalidity)
            .await;
        if src_uids.is_empty() {
            return Ok((
                None,
                if mv {
                    "MOVE completed"
                } else {
                    "COPY completed"
                }
                .into(),
            ));
        }
        if mv {
            if sticky {
                self.untagged_ok(Some(code_other(&code)), "Moved");
            }
            let removed = meta
                .expunge(&account, &src, &src_uids)
                .await
                .map_err(store_err)?;
            self.remove_from_snapshot(&removed, true);
            self.publish(&src, "expunge");
            Ok((None, "MOVE completed".into()))
        } else {
            Ok((sticky.then(|| code_other(&code)), "COPY completed".into()))
        }
    }

    async fn quota_data(&mut self) -> Res<Option<Vec1<QuotaGet<'static>>>> {
        let account = self.account();
        let meta = &self.ctx.backends.meta;
        let acct = meta
            .get_account(&account)
            .await
            .map_err(store_err)?
            .ok_or_else(|| no(Some("SERVERBUG"), "Account vanished"))?;
        let usage = meta.get_usage(&account).await.map_err(store_err)?;
        let mut q = Vec::new();
        if let Some(max) = acct.quota.max_bytes {
            q.push(QuotaGet::new(
                Resource::Storage,
                usage.bytes.div_ceil(1024),
                max / 1024,
            ));
        }
        if let Some(max) = acct.quota.max_messages {
            q.push(QuotaGet::new(Resource::Message, usage.messages, max));
        }
        Ok(Vec1::try_from(q).ok())
    }

    async fn get_quota_root(&mut self, m: &Mailbox<'_>) -> Res<(Option<Code<'static>>, String)> {
        let name = self.mailbox_name(m)?;
        if self
            .ctx
            .backends
            .meta
            .get_mailbox(&self.account(), &name)
            .await
            .map_err(store_err)?
            .is_none()
        {
            return Err(no(Some("NONEXISTENT"), "No such mailbox"));
        }
        let q = self.quota_data().await?;
        let root = AString::try_from("").expect("empty astring");
        self.data(Data::QuotaRoot {
            mailbox: self.mailbox_out(&name),
            roots: if q.is_some() {
                vec![root.clone()]
            } else {
                vec![]
            },
        });
        if let Some(quotas) = q {
            self.data(Data::Quota { root, quotas });
        }
        Ok((None, "GETQUOTAROOT completed".into()))
    }

    async fn get_quota(&mut self, root: &[u8]) -> Res<(Option<Code<'static>>, String)> {
        if !root.is_empty() {
            return Err(no(Some("NONEXISTENT"), "No such quota root"));
        }
        let Some(quotas) = self.quota_data().await? else {
            return Err(no(Some("NONEXISTENT"), "No quota for this account"));
        };
        self.data(Data::Quota {
            root: AString::try_from("").expect("empty astring"),
            quotas,
        });
        Ok((None, "GETQUOTA completed".into()))
    }

    /// `None`: the connection is gone.
    async fn idle(&mut self, tag: &str) -> Option<Res<(Option<Code<'static>>, String)>> {
        if let Ok(c) = CommandContinuationRequest::basic(None, "idling") {
            self.resp(Response::CommandContinuationRequest(c));
        }
        self.ensure_registered().await;
        if let Some(r) = self.reg.as_mut() {
            while r.rx.try_recv().is_ok() {}
        }
        let _ = tag;
        self.sync(true).await;
        let deadline = tokio::time::Instant::now() + self.idle_timeout;
        loop {
            self.flush().await.ok()?;
            // A complete DONE line already buffered?
            if let Some(p) = self.rbuf.iter().position(|&c| c == b'\n') {
                let line: Vec<u8> = self.rbuf.drain(..=p).collect();
                let l = String::from_utf8_lossy(&line);
                if l.trim().eq_ignore_ascii_case("DONE") {
                    return Some(Ok((None, "IDLE terminated".into())));
                }
                return Some(Err(bad("Expected DONE")));
            }
            if self.rbuf.len() > 1024 {
                return Some(Err(bad("Expected DONE")));
            }
            let selected = self.selected.as_ref().map(|s| s.name.clone());
            let woke = async {
                match self.reg.as_mut() {
                    Some(r) => loop {
                        match r.rx.recv().await {
                            Ok(mb) if Some(&mb) == selected.as_ref() => return,
                            Ok(_) => continue,
                            Err(_) => return,
                        }
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                r = self.stream.read_buf(&mut self.rbuf) => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                _ = woke => self.sync(true).await,
                _ = tokio::time::sleep(IDLE_RECHECK) => self.sync(true).await,
                _ = tokio::time::sleep_until(deadline) => {
                    self.raw("* BYE Autologout; idle for too long\r\n");
                    let _ = self.flush().await;
                    return None;
                }
                _ = self.shutdown.changed() => {
                    self.raw("* BYE Server shutting down\r\n");
                    let _ = self.flush().await;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*", b"a/b"));
        assert!(wildcard(b"%", b"a"));
        assert!(!wildcard(b"%", b"a/b"));
        assert!(wildcard(b"a/%", b"a/b"));
        assert!(wildcard(b"*b", b"a/b"));
        assert!(!wildcard(b"a", b"ab"));
        // Pathological patterns terminate (bounded backtracking).
        let long = vec![b'*'; 200];
        let mut name = vec![b'x'; 200];
        name.push(b'y');
        let _ = wildcard(&long, &name);
    }

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(uid_set(&[4]), "4");
    }
}
