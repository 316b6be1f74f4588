//! One SMTP session (RFC 5321 server side) over any byte stream.
//!
//! The protocol grammar lives in `posthorn-smtp-codec`; this file is the
//! state machine and the side effects: router checks, storing the body, and
//! queueing the envelope. A message is answered `250` only after its blob is
//! stored and its envelope is acknowledged by the queue (docs/architecture.md
//! invariant 1); any failure before is `451 4.3.0` and nothing is queued.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use posthorn_bus::Queue;
use posthorn_proto::common::v1::{Envelope, Recipient};
use posthorn_proto::router::v1::Verdict;
use posthorn_smtp_codec::{
    BdatEnd, BdatReceiver, DataEnd, DataReceiver, ForwardPath, LineReader, MailParams, Notify,
    RcptParams, Reply, Request, ReversePath, parse_command,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::Shared;

pub use posthorn_runtime::Io;

/// What kind of listener accepted the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Port 25: MX. No AUTH; relaying only from relay networks.
    Mx,
    /// Port 587: submission with STARTTLS; AUTH required before MAIL.
    Submission,
    /// Port 465: submission over implicit TLS; AUTH required before MAIL.
    Submissions,
}

/// Connection facts.
pub struct Peer {
    /// Client address.
    pub ip: IpAddr,
    /// Listener kind.
    pub kind: Kind,
    /// Negotiated TLS version and cipher, when TLS is on.
    pub tls: Option<String>,
}

struct Txn {
    from: String,
    params: MailParams,
    rcpts: Vec<Recipient>,
}

enum Flow {
    Continue,
    Close,
    StartTls,
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::new(code, Some(enhanced), text)
}

/// Run one session to its end. `stream` is plain or already TLS
/// (`peer.tls` says which).
pub async fn run(
    shared: Arc<Shared>,
    mut stream: Box<dyn Io>,
    mut peer: Peer,
    mut shutdown: watch::Receiver<bool>,
) {
    let cfg = shared.cfg.clone();
    let mut s = Session {
        shared: shared.clone(),
        lines: LineReader::new(cfg.smtp.max_line_length as usize),
        helo: None,
        esmtp: false,
        auth: None,
        txn: None,
        errors: 0,
        bdat: None,
        out: Vec::new(),
    };
    // No enhanced code in the greeting: RFC 2034 applies after EHLO.
    let greeting = Reply::new(220, None, format!("{} ESMTP Posthorn", cfg.server.hostname));
    if stream.write_all(&greeting.to_bytes()).await.is_err() {
        return;
    }
    let command_timeout = Duration::from_secs(cfg.smtp.command_timeout_secs);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // Handle every complete line already buffered (PIPELINING), then flush.
        while let Some(line) = s.lines.next_line() {
            let flow = match line {
                Ok(line) => s.command(&line, &peer, &mut stream, &mut buf).await,
                Err(e) => {
                    s.push(e.reply());
                    s.error()
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    let _ = stream.write_all(&s.out).await;
                    let _ = stream.shutdown().await;
                    return;
                }
                Flow::StartTls => {
                    if stream.write_all(&std::mem::take(&mut s.out)).await.is_err() {
                        return;
                    }
                    // CVE-2011-0411: anything pipelined after STARTTLS is discarded.
                    let _ = s.lines.take_buffered();
                    let Some(acceptor) = shared.tls.clone() else {
                        return;
                    };
                    match tokio::time::timeout(command_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let (_, conn) = tls.get_ref();
                            peer.tls = Some(posthorn_tls::describe(conn));
                            stream = Box::new(tls);
                        }
                        _ => return,
                    }
                    // RFC 3207 §4.2: forget everything learned before TLS.
                    s.helo = None;
                    s.esmtp = false;
                    s.auth = None;
                    s.txn = None;
                }
            }
            if !s.lines.buffered().contains(&b'\n') && !s.out.is_empty() {
                break;
            }
        }
        if !s.out.is_empty() && stream.write_all(&std::mem::take(&mut s.out)).await.is_err() {
            return;
        }
        let read = tokio::select! {
            r = tokio::time::timeout(command_timeout, stream.read(&mut buf)) => r,
            _ = shutdown.changed() => {
                let _ = stream.write_all(&reply(421, (4, 3, 2), "Service shutting down").to_bytes()).await;
                return;
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => s.lines.push(&buf[..n]),
            Err(_) => {
                let _ = stream
                    .write_all(
                        &reply(421, (4, 4, 2), "Timeout exceeded, closing connection").to_bytes(),
                    )
                    .await;
                return;
            }
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    lines: LineReader,
    helo: Option<String>,
    esmtp: bool,
    /// Authenticated account.
    auth: Option<String>,
    txn: Option<Txn>,
    errors: u32,
    /// BDAT in progress (CHUNKING).
    bdat: Option<BdatReceiver>,
    /// Replies not yet written (flushed when the pipelined input is used up).
    out: Vec<u8>,
}

impl Session {
    fn push(&mut self, r: Reply) {
        self.out.extend_from_slice(&r.to_bytes());
    }

    /// Count an error; too many close the session (Postfix's hard error limit).
    fn error(&mut self) -> Flow {
        self.errors += 1;
        metrics::counter!("posthorn_smtp_errors_total").increment(1);
        if self.errors >= self.shared.cfg.smtp.max_errors {
            self.push(reply(421, (4, 7, 0), "Too many errors, closing connection"));
            return Flow::Close;
        }
        Flow::Continue
    }

    fn fail(&mut self, r: Reply) -> Flow {
        self.push(r);
        self.error()
    }

    async fn command(
        &mut self,
        line: &[u8],
        peer: &Peer,
        stream: &mut Box<dyn Io>,
        buf: &mut [u8],
    ) -> Flow {
        let req = match parse_command(line) {
            Ok(r) => r,
            Err(e) => {
                // A BDAT we cannot parse leaves its chunk in the stream: the
                // rest of the session would be garbage, so close it.
                let bdat_like = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"BDAT");
                self.push(e.reply());
                if bdat_like {
                    self.push(reply(
                        421,
                        (4, 7, 0),
                        "Cannot resynchronise after a bad BDAT",
                    ));
                    return Flow::Close;
                }
                return self.error();
            }
        };
        if self.bdat.is_some()
            && !matches!(
                req,
                Request::Bdat { .. } | Request::Rset | Request::Quit | Request::Noop
            )
        {
            self.bdat = None;
            self.txn = None;
            return self.fail(reply(
                503,
                (5, 5, 1),
                "Only BDAT, RSET, NOOP or QUIT during a BDAT transfer",
            ));
        }
        match req {
            Request::Ehlo(host) => {
                self.helo = Some(host.to_string());
                self.esmtp = true;
                self.txn = None;
                self.bdat = None;
                let cfg = &self.shared.cfg;
                let mut lines = vec![format!("{} greets {}", cfg.server.hostname, host)];
                lines.push("PIPELINING".into());
                lines.push(format!("SIZE {}", cfg.smtp.max_message_size));
                lines.push("8BITMIME".into());
                lines.push("ENHANCEDSTATUSCODES".into());
                lines.push("SMTPUTF8".into());
                lines.push("CHUNKING".into());
                lines.push("DSN".into());
                if peer.tls.is_none() && self.shared.tls.is_some() {
                    lines.push("STARTTLS".into());
                }
                if peer.kind != Kind::Mx && peer.tls.is_some() && self.auth.is_none() {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                lines.push("HELP".into());
                self.push(Reply::multiline(250, None, lines));
                Flow::Continue
            }
            Request::Helo(host) => {
                self.helo = Some(host.to_string());
                self.esmtp = false;
                self.txn = None;
                let h = self.shared.cfg.server.hostname.clone();
                self.push(Reply::new(250, None, h));
                Flow::Continue
            }
            Request::Mail { from, params } => self.mail(from, params, peer).await,
            Request::Rcpt { to, params } => self.rcpt(to, params, peer).await,
            Request::Data => self.data(peer, stream, buf).await,
            Request::Bdat { size, last } => self.bdat(size, last, peer, stream, buf).await,
            Request::Rset => {
                self.txn = None;
                self.bdat = None;
                self.push(reply(250, (2, 0, 0), "Ok"));
                Flow::Continue
            }
            Request::Noop => {
                self.push(reply(250, (2, 0, 0), "Ok"));
                Flow::Continue
            }
            Request::Quit => {
                self.push(reply(221, (2, 0, 0), "Bye"));
                Flow::Close
            }
            Request::Help(_) => {
                self.push(reply(
                    214,
                    (2, 0, 0),
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS AUTH",
                ));
                Flow::Continue
            }
            Request::Vrfy(_) => {
                self.push(reply(
                    252,
                    (2, 5, 2),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
                Flow::Continue
            }
            Request::Expn(_) => self.fail(reply(502, (5, 5, 1), "EXPN not available")),
            Request::StartTls => {
                if peer.tls.is_some() {
                    return self.fail(reply(503, (5, 5, 1), "TLS already active"));
                }
                if self.shared.tls.is_none() {
                    return self.fail(reply(454, (4, 7, 0), "TLS not available"));
                }
                self.push(reply(220, (2, 0, 0), "Ready to start TLS"));
                Flow::StartTls
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                self.auth(&mechanism, initial_response, peer, stream, buf)
                    .await
            }
        }
    }

    async fn mail(&mut self, from: ReversePath, params: MailParams, peer: &Peer) -> Flow {
        if self.helo.is_none() {
            return self.fail(reply(503, (5, 5, 1), "Send HELO/EHLO first"));
        }
        if self.txn.is_some() {
            return self.fail(reply(503, (5, 5, 1), "Nested MAIL command"));
        }
        if peer.kind != Kind::Mx && self.auth.is_none() {
            return self.fail(reply(530, (5, 7, 0), "Authentication required"));
        }
        if !self.esmtp && params != MailParams::default() {
            return self.fail(reply(555, (5, 5, 4), "MAIL parameters need EHLO"));
        }
        let max = self.shared.cfg.smtp.max_message_size;
        if params.size.is_some_and(|s| s > max) {
            return self.fail(reply(
                552,
                (5, 3, 4),
                format!("Message size exceeds fixed limit of {max} bytes"),
            ));
        }
        let from = match from {
            ReversePath::Null => String::new(),
            ReversePath::Path(p) => {
                if !params.smtputf8 && !p.mailbox.is_ascii() {
                    return self.fail(reply(553, (5, 6, 7), "Non-ASCII address needs SMTPUTF8"));
                }
                p.mailbox.to_string()
            }
        };
        if let Some(account) = self.auth.clone()
            && !from.is_empty()
        {
            match self.shared.checks.sender(&account, &from).await {
                Ok(true) => {}
                Ok(false) => {
                    return self.fail(reply(
                        553,
                        (5, 7, 1),
                        format!("<{from}>: Sender address rejected: not owned by user {account}"),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e.0, "router unavailable for the sender check");
                    self.push(reply(
                        451,
                        (4, 4, 3),
                        "Temporary failure checking the sender, try again later",
                    ));
                    return Flow::Continue;
                }
            }
        }
        self.txn = Some(Txn {
            from,
            params,
            rcpts: Vec::new(),
        });
        self.push(reply(250, (2, 1, 0), "Ok"));
        Flow::Continue
    }

    fn relay_network(&self, peer: &Peer) -> bool {
        self.shared
            .relay_nets
            .iter()
            .any(|n| posthorn_config::cidr_contains(*n, peer.ip))
    }

    async fn rcpt(&mut self, to: ForwardPath, params: RcptParams, peer: &Peer) -> Flow {
        let Some(txn) = self.txn.as_ref() else {
            return self.fail(reply(503, (5, 5, 1), "Need MAIL command first"));
        };
        if txn.rcpts.len() as u32 >= self.shared.cfg.smtp.max_recipients {
            self.push(reply(452, (4, 5, 3), "Too many recipients"));
            return Flow::Continue;
        }
        let smtputf8 = txn.params.smtputf8;
        let size = txn.params.size.unwrap_or(0);
        let address = match &to {
            ForwardPath::Postmaster => "postmaster".to_string(),
            ForwardPath::Path(p) => {
                if !smtputf8 && !p.mailbox.is_ascii() {
                    return self.fail(reply(553, (5, 6, 7), "Non-ASCII address needs SMTPUTF8"));
                }
                p.mailbox.to_string()
            }
        };
        if (params.notify.is_some() || params.orcpt.is_some()) && !self.esmtp {
            return self.fail(reply(555, (5, 5, 4), "RCPT parameters need EHLO"));
        }
        let relay_network = self.relay_network(peer);
        let resp = match self
            .shared
            .checks
            .recipient(&address, self.auth.is_some(), relay_network, size)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e.0, rcpt = %address, "router unavailable for the recipient check");
                self.push(reply(
                    451,
                    (4, 4, 3),
                    format!("<{address}>: Temporary failure in recipient lookup"),
                ));
                return Flow::Continue;
            }
        };
        let verdict = Verdict::try_from(resp.verdict).unwrap_or(Verdict::Unspecified);
        match verdict {
            Verdict::Local | Verdict::Relay => {
                let notify = match params.notify {
                    None => String::new(),
                    Some(Notify::Never) => "NEVER".into(),
                    Some(Notify::On {
                        success,
                        failure,
                        delay,
                    }) => {
                        let mut v = Vec::new();
                        if success {
                            v.push("SUCCESS");
                        }
                        if failure {
                            v.push("FAILURE");
                        }
                        if delay {
                            v.push("DELAY");
                        }
                        v.join(",")
                    }
                };
                let orcpt = params
                    .orcpt
                    .map(|o| format!("{};{}", o.addr_type, o.addr))
                    .unwrap_or_default();
                let qualified = if resp.qualified.is_empty() {
                    address.clone()
                } else {
                    resp.qualified
                };
                if let Some(txn) = self.txn.as_mut() {
                    txn.rcpts.push(Recipient {
                        address: qualified,
                        notify,
                        orcpt,
                    });
                }
                self.push(reply(250, (2, 1, 5), "Ok"));
                Flow::Continue
            }
            Verdict::UnknownUser => self.fail(reply(
                550,
                (5, 1, 1),
                format!("<{address}>: Recipient address rejected: User unknown"),
            )),
            Verdict::OverQuota => {
                self.push(reply(452, (4, 2, 2), format!("<{address}>: Mailbox full")));
                Flow::Continue
            }
            Verdict::RelayDenied => self.fail(reply(
                554,
                (5, 7, 1),
                format!("<{address}>: Relay access denied"),
            )),
            Verdict::Invalid | Verdict::Unspecified => self.fail(reply(
                501,
                (5, 1, 3),
                format!("<{address}>: Bad recipient address syntax: {}", resp.detail),
            )),
        }
    }

    async fn data(&mut self, peer: &Peer, stream: &mut Box<dyn Io>, buf: &mut [u8]) -> Flow {
        match &self.txn {
            None => return self.fail(reply(503, (5, 5, 1), "Need MAIL command first")),
            Some(t) if t.rcpts.is_empty() => {
                return self.fail(reply(554, (5, 5, 1), "No valid recipients"));
            }
            Some(_) => {}
        }
        self.push(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        if stream
            .write_all(&std::mem::take(&mut self.out))
            .await
            .is_err()
        {
            return Flow::Close;
        }
        let timeout = Duration::from_secs(self.shared.cfg.smtp.data_timeout_secs);
        let mut rx = DataReceiver::new(self.shared.cfg.smtp.max_message_size);
        let mut pending = self.lines.take_buffered();
        let end = loop {
            let (used, end) = rx.push(&pending);
            if let Some(end) = end {
                // What follows the end of data is the next command (pipelining).
                self.lines.push(&pending[used..]);
                break end;
            }
            match tokio::time::timeout(timeout, stream.read(buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Flow::Close,
                Ok(Ok(n)) => pending = buf[..n].to_vec(),
                Err(_) => {
                    self.push(reply(
                        421,
                        (4, 4, 2),
                        "Timeout exceeded during DATA, closing connection",
                    ));
                    return Flow::Close;
                }
            }
        };
        if let Some(r) = end.reply() {
            self.txn = None;
            metrics::counter!("posthorn_smtp_rejected_total", "reason" => if end == DataEnd::TooBig { "size" } else { "bare_line_ending" }).increment(1);
            return self.fail(r);
        }
        let body = rx.take_message();
        self.finish(body, peer).await
    }

    async fn bdat(
        &mut self,
        size: u64,
        last: bool,
        peer: &Peer,
        stream: &mut Box<dyn Io>,
        buf: &mut [u8],
    ) -> Flow {
        let usable = matches!(&self.txn, Some(t) if !t.rcpts.is_empty());
        let max = self.shared.cfg.smtp.max_message_size;
        let rx = self.bdat.get_or_insert_with(|| BdatReceiver::new(max));
        if let Err(e) = rx.begin_chunk(size, last) {
            // Cannot tell where the chunk ends relative to our state: close.
            self.push(reply(503, (5, 5, 1), e.to_string()));
            return Flow::Close;
        }
        let timeout = Duration::from_secs(self.shared.cfg.smtp.data_timeout_secs);
        let mut pending = self.lines.take_buffered();
        let end = loop {
            let (used, end) = rx.push(&pending);
            if let Some(end) = end {
                self.lines.push(&pending[used..]);
                break end;
            }
            if size == 0 && last {
                break BdatEnd::MessageComplete;
            }
            match tokio::time::timeout(timeout, stream.read(buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Flow::Close,
                Ok(Ok(n)) => pending = buf[..n].to_vec(),
                Err(_) => {
                    self.push(reply(
                        421,
                        (4, 4, 2),
                        "Timeout exceeded during BDAT, closing connection",
                    ));
                    return Flow::Close;
                }
            }
        };
        if !usable {
            // The chunk was consumed; now refuse it (RFC 3030 §2).
            self.bdat = None;
            let r = if self.txn.is_none() {
                reply(503, (5, 5, 1), "Need MAIL command first")
            } else {
                reply(554, (5, 5, 1), "No valid recipients")
            };
            return self.fail(r);
        }
        match end {
            BdatEnd::ChunkComplete => {
                self.push(reply(250, (2, 0, 0), format!("{size} octets received")));
                Flow::Continue
            }
            BdatEnd::TooBig => {
                // Keep refusing the remaining chunks until LAST, then reset.
                if last {
                    self.bdat = None;
                    self.txn = None;
                }
                self.fail(reply(
                    552,
                    (5, 3, 4),
                    "Message size exceeds fixed maximum message size",
                ))
            }
            BdatEnd::MessageComplete => {
                let body = self
                    .bdat
                    .take()
                    .map(|mut r| r.take_message())
                    .unwrap_or_default();
                self.finish(body, peer).await
            }
        }
    }

    /// Store and queue a complete message, then answer.
    async fn finish(&mut self, body: Vec<u8>, peer: &Peer) -> Flow {
        let Some(txn) = self.txn.take() else {
            return self.fail(reply(503, (5, 5, 1), "Need MAIL command first"));
        };
        let hops = count_received(&body);
        if hops > self.shared.cfg.smtp.max_hops as usize {
            metrics::counter!("posthorn_smtp_rejected_total", "reason" => "loop").increment(1);
            return self.fail(reply(
                554,
                (5, 4, 6),
                format!("Too many hops ({hops}): mail loop?"),
            ));
        }
        let id = new_message_id();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let with = match (
            txn.params.smtputf8,
            peer.tls.is_some(),
            self.auth.is_some(),
            self.esmtp,
        ) {
            (true, true, true, _) => "UTF8SMTPSA",
            (true, true, false, _) => "UTF8SMTPS",
            (true, false, true, _) => "UTF8SMTPA",
            (true, false, false, _) => "UTF8SMTP",
            (false, true, true, _) => "ESMTPSA",
            (false, true, false, true) => "ESMTPS",
            (false, false, true, _) => "ESMTPA",
            (false, false, false, true) => "ESMTP",
            (false, _, false, false) => "SMTP",
        };
        let helo = self.helo.clone().unwrap_or_default();
        let mut received = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (Posthorn) with {with} id {id}",
            peer.ip, self.shared.cfg.server.hostname
        );
        if let Some(tls) = &peer.tls {
            received.push_str(&format!("\r\n\t(using {tls})"));
        }
        if txn.rcpts.len() == 1 {
            received.push_str(&format!("\r\n\tfor <{}>", txn.rcpts[0].address));
        }
        received.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(now)));
        let mut full = Vec::with_capacity(received.len() + body.len());
        full.extend_from_slice(received.as_bytes());
        full.extend_from_slice(&body);
        let size = full.len() as u64;
        let structure = posthorn_mime::analyze(&full).to_json();

        let blob_key = match self.shared.backends.blobs.put(full.into()).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(msg_id = %id, error = %e, "blob store failed; 451");
                metrics::counter!("posthorn_smtp_temp_failures_total").increment(1);
                self.push(reply(
                    451,
                    (4, 3, 0),
                    "Temporary failure storing the message, try again later",
                ));
                return Flow::Continue;
            }
        };
        let body_type = match txn.params.body {
            Some(posthorn_smtp_codec::Body::EightBitMime) => "8BITMIME",
            Some(posthorn_smtp_codec::Body::BinaryMime) => "BINARYMIME",
            _ => "7BIT",
        };
        let env = Envelope {
            id: id.clone(),
            mail_from: txn.from.clone(),
            rcpt_to: txn.rcpts.clone(),
            blob_key,
            size,
            received_at: now,
            client_ip: peer.ip.to_string(),
            helo,
            authenticated_as: self.auth.clone().unwrap_or_default(),
            relay_client: self.auth.is_some() || self.relay_network(peer),
            smtputf8: txn.params.smtputf8,
            body_type: body_type.into(),
            dsn_ret: match txn.params.ret {
                Some(posthorn_smtp_codec::Ret::Full) => "FULL".into(),
                Some(posthorn_smtp_codec::Ret::Hdrs) => "HDRS".into(),
                None => String::new(),
            },
            dsn_envid: txn.params.envid.clone().unwrap_or_default(),
            publish_deadline_ms: now_ms() + PUBLISH_DEADLINE_MS,
            structure,
        };
        if let Err(e) = self
            .shared
            .backends
            .bus
            .publish(Queue::Inbound, &id, env.encode_to_vec().into())
            .await
        {
            tracing::warn!(msg_id = %id, error = %e, "queue publish failed; 451");
            metrics::counter!("posthorn_smtp_temp_failures_total").increment(1);
            self.push(reply(
                451,
                (4, 3, 0),
                "Temporary failure queueing the message, try again later",
            ));
            return Flow::Continue;
        }
        tracing::info!(msg_id = %id, from = %txn.from, rcpts = txn.rcpts.len(), size, client = %peer.ip, "accepted");
        metrics::counter!("posthorn_smtp_accepted_total").increment(1);
        metrics::counter!("posthorn_smtp_accepted_bytes_total").increment(size);
        self.push(reply(250, (2, 0, 0), format!("Ok: queued as {id}")));
        Flow::Continue
    }

    async fn auth(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
        peer: &Peer,
        stream: &mut Box<dyn Io>,
        buf: &mut [u8],
    ) -> Flow {
        if peer.kind == Kind::Mx {
            return self.fail(reply(
                502,
                (5, 5, 1),
                "AUTH not available on this port; use submission",
            ));
        }
        if self.helo.is_none() || !self.esmtp {
            return self.fail(reply(503, (5, 5, 1), "Send EHLO first"));
        }
        if self.auth.is_some() {
            return self.fail(reply(503, (5, 5, 1), "Already authenticated"));
        }
        if self.txn.is_some() {
            return self.fail(reply(
                503,
                (5, 5, 1),
                "AUTH not allowed during a mail transaction",
            ));
        }
        if peer.tls.is_none() {
            return self.fail(reply(
                538,
                (5, 7, 11),
                "Encryption required for requested authentication mechanism",
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let (user, pass) = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let resp = match initial {
                    Some(r) => r,
                    None => match self.challenge("", stream, buf).await {
                        Some(r) => r,
                        None => return Flow::Close,
                    },
                };
                if resp == "*" {
                    return self.fail(reply(501, (5, 7, 0), "Authentication cancelled"));
                }
                let Ok(raw) = b64.decode(resp.trim()) else {
                    return self.fail(reply(501, (5, 5, 2), "Invalid base64"));
                };
                let mut parts = raw.split(|b| *b == 0);
                let (_authz, user, pass) = (parts.next(), parts.next(), parts.next());
                match (user, pass) {
                    (Some(u), Some(p)) => (
                        String::from_utf8_lossy(u).to_string(),
                        String::from_utf8_lossy(p).to_string(),
                    ),
                    _ => return self.fail(reply(501, (5, 5, 2), "Malformed PLAIN response")),
                }
            }
            "LOGIN" => {
                let user = match initial {
                    Some(r) => r,
                    None => match self.challenge("VXNlcm5hbWU6", stream, buf).await {
                        Some(r) => r,
                        None => return Flow::Close,
                    },
                };
                let Some(pass) = self.challenge("UGFzc3dvcmQ6", stream, buf).await else {
                    return Flow::Close;
                };
                if user == "*" || pass == "*" {
                    return self.fail(reply(501, (5, 7, 0), "Authentication cancelled"));
                }
                match (b64.decode(user.trim()), b64.decode(pass.trim())) {
                    (Ok(u), Ok(p)) => (
                        String::from_utf8_lossy(&u).to_string(),
                        String::from_utf8_lossy(&p).to_string(),
                    ),
                    _ => return self.fail(reply(501, (5, 5, 2), "Invalid base64")),
                }
            }
            _ => {
                return self.fail(reply(
                    504,
                    (5, 5, 4),
                    "Unrecognized authentication mechanism",
                ));
            }
        };
        match self.shared.checks.authenticate(&user, &pass).await {
            Ok(Some(account)) => {
                tracing::info!(account = %account, client = %peer.ip, "authenticated");
                self.auth = Some(account);
                self.push(reply(235, (2, 7, 0), "Authentication successful"));
                Flow::Continue
            }
            Ok(None) => {
                tracing::warn!(user = %user, client = %peer.ip, "authentication failed");
                metrics::counter!("posthorn_smtp_auth_failures_total").increment(1);
                // A fixed delay slows password guessing (Postfix/Dovecot do the same).
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.fail(reply(535, (5, 7, 8), "Authentication credentials invalid"))
            }
            Err(e) => {
                tracing::warn!(error = %e.0, "router unavailable for AUTH");
                self.push(reply(454, (4, 7, 0), "Temporary authentication failure"));
                Flow::Continue
            }
        }
    }

    /// Send a `334` challenge and read one response line.
    async fn challenge(
        &mut self,
        text: &str,
        stream: &mut Box<dyn Io>,
        buf: &mut [u8],
    ) -> Option<String> {
        self.push(Reply::new(334, None, text));
        stream
            .write_all(&std::mem::take(&mut self.out))
            .await
            .ok()?;
        let timeout = Duration::from_secs(self.shared.cfg.smtp.command_timeout_secs);
        loop {
            if let Some(line) = self.lines.next_line() {
                return line.ok().map(|l| String::from_utf8_lossy(&l).to_string());
            }
            match tokio::time::timeout(timeout, stream.read(buf)).await {
                Ok(Ok(n)) if n > 0 => self.lines.push(&buf[..n]),
                _ => return None,
            }
        }
    }
}

/// How long after starting a publish smtp-ingress has certainly given up
/// on it (the queue client's 5 s timeout) plus 5 minutes for clock skew
/// between this host and the queue server. The margin is wide on purpose:
/// the router drops items stored after the deadline, so a skew larger than
/// the margin would drop mail that got `250`; a publish buffered across a
/// shorter reconnect is delivered (a possible duplicate, never a loss).
const PUBLISH_DEADLINE_MS: i64 = 305_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Number of `Received:` header fields in the header section.
fn count_received(msg: &[u8]) -> usize {
    let header_end = msg
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(msg.len());
    msg[..header_end]
        .split(|b| *b == b'\n')
        .filter(|l| l.len() >= 9 && l[..9].eq_ignore_ascii_case(b"received:"))
        .count()
}

/// A new message id: 12 hex digits of milliseconds then 16 random hex
/// digits (time-sortable, unique without coordination).
fn new_message_id() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{:012X}{:016X}",
        ms & 0xFFFF_FFFF_FFFF,
        rand::random::<u64>()
    )
}

/// RFC 5322 §3.3 date-time in UTC, e.g. `Thu, 26 Nov 2026 06:15:04 +0000`.
pub fn rfc5322_date(unix: i64) -> String {
    // Two-digit day, like Postfix and Sendmail (RFC 5322 allows both).
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S %z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_673_704),
            "Thu, 26 Nov 2026 06:15:04 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn received_counting() {
        let m = b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: not a header\r\n";
        assert_eq!(count_received(m), 2);
        assert_eq!(count_received(b"no headers"), 0);
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = new_message_id();
        let b = new_message_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 28);
    }
}
