//! One SMTP transaction to one address of a next hop, on `mail-send`'s
//! client (reply parsing, EHLO capabilities, STARTTLS) with the RFC 5321
//! §4.5.3.2 timeouts around every step, so a peer that never answers
//! cannot hold a worker, and every reply cut off at [`MAX_REPLY_OCTETS`]
//! (`client/capped.rs`), so one that never stops answering cannot either.
//!
//! Extensions are used only when the next hop offers them: STARTTLS
//! (opportunistic, certificate not verified), SIZE, BODY=8BITMIME,
//! SMTPUTF8, DSN (RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT).

use std::net::SocketAddr;
use std::time::Duration;

mod capped;
use capped::Capped;
pub use capped::MAX_REPLY_OCTETS;

use mail_send::{Credentials, SmtpClient};
use smtp_proto::{AUTH_LOGIN, AUTH_PLAIN, EXT_DSN, EXT_START_TLS, EhloResponse, Response};

pub use crate::params::{Job, parameters, stuffed};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// RFC 5321 §4.5.3.2 timeouts (and the TCP connect timeout).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect to one address.
    pub connect: Duration,
    /// The 220 greeting.
    pub greeting: Duration,
    /// MAIL (and EHLO, STARTTLS).
    pub mail: Duration,
    /// Each RCPT.
    pub rcpt: Duration,
    /// The 354 after DATA.
    pub data_init: Duration,
    /// Each block of data written.
    pub data_block: Duration,
    /// The reply after the final dot.
    pub data_end: Duration,
}

impl Timeouts {
    /// From `[delivery]`.
    pub fn from_config(d: &posthorn_config::DeliveryConfig) -> Self {
        let s = Duration::from_secs;
        Timeouts {
            connect: s(d.connect_timeout_secs),
            greeting: s(d.timeout_greeting_secs),
            mail: s(d.timeout_mail_secs),
            rcpt: s(d.timeout_rcpt_secs),
            data_init: s(d.timeout_data_init_secs),
            data_block: s(d.timeout_data_block_secs),
            data_end: s(d.timeout_data_end_secs),
        }
    }
}

/// A reply of the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Basic code, e.g. 550.
    pub code: u16,
    /// Enhanced status code, if the reply had one.
    pub esc: Option<[u8; 3]>,
    /// The text (lines joined).
    pub text: String,
}

impl Reply {
    fn from_response(r: &Response<String>) -> Self {
        let esc = (r.esc[0] != 0).then_some(r.esc);
        Reply {
            code: r.code,
            esc,
            text: r.message.replace(['\r', '\n'], " ").trim().to_string(),
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.esc {
            Some([a, b, c]) => write!(f, "{} {a}.{b}.{c} {}", self.code, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// How an attempt on one address ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Never got to a transaction (connection refused or lost, greeting or
    /// EHLO not positive, TLS handshake failed): try the next address.
    Unreachable(String),
    /// 250 after the data; whether the host offered DSN (NOTIFY/ORCPT were
    /// passed on).
    Delivered(Reply, bool),
    /// A 5xx to MAIL, RCPT or the data: bounce.
    Rejected(Reply),
    /// A 4xx, a timeout or a lost connection during the transaction: retry later.
    Deferred(String),
    /// We decline to send (RFC 6531 SMTPUTF8 missing, too big): bounce with this status and text.
    Refused(&'static str, String),
}

/// AUTH to a relay host (`delivery.relay_auth_file`).
#[derive(Clone, Copy)]
pub struct RelayAuth<'a> {
    /// Username and password.
    pub credentials: &'a Credentials<String>,
    /// `delivery.relay_auth_plaintext`: AUTH without STARTTLS allowed.
    pub plaintext_ok: bool,
}

/// Whether an [`Attempt::Unreachable`] reason says the host never
/// answered: the connection failed, or no greeting came (timeout, reset,
/// garbage). A host that greeted and then failed (EHLO, TLS, a policy of
/// ours) answered. Delivery suspends a destination none of whose hosts
/// answered (docs/delivery.md, "Destinations").
pub fn no_answer(why: &str) -> bool {
    why.starts_with("connect to ")
        || why.ends_with(": no greeting (timeout)")
        || why.contains("] greeting: ")
}

/// Run one transaction against `addr` (the MX host or relay `host`), with
/// AUTH first if `auth` is given.
pub async fn attempt(
    addr: SocketAddr,
    host: &str,
    job: &Job<'_>,
    t: &Timeouts,
    auth: Option<RelayAuth<'_>>,
) -> Attempt {
    let mut client = match SmtpClient::connect(addr, t.connect).await {
        Ok(c) => SmtpClient {
            stream: Capped::new(c.stream, MAX_REPLY_OCTETS),
            timeout: c.timeout,
        },
        Err(e) => return Attempt::Unreachable(format!("connect to {host}[{addr}]: {e}")),
    };
    // The texts of the failures before a greeting are matched by
    // [`no_answer`]: keep them in step.
    match tokio::time::timeout(t.greeting, client.read()).await {
        Ok(Ok(r)) if r.code / 100 == 2 => {}
        Ok(Ok(r)) => {
            return Attempt::Unreachable(format!(
                "{host}[{addr}] greeted with {}",
                Reply::from_response(&r)
            ));
        }
        Ok(Err(e)) => return Attempt::Unreachable(format!("{host}[{addr}] greeting: {e}")),
        Err(_) => return Attempt::Unreachable(format!("{host}[{addr}]: no greeting (timeout)")),
    }
    client.timeout = t.mail;
    let caps = match hello(&mut client, job.helo).await {
        Ok(c) => c,
        Err(e) => return Attempt::Unreachable(format!("{host}[{addr}] EHLO: {e}")),
    };
    if caps.has_capability(EXT_START_TLS) {
        match client.cmd(b"STARTTLS\r\n").await {
            Ok(r) if r.code == 220 => {
                let name = tls_name(host);
                // The handshake on the bare TCP stream (`into_tls` takes
                // nothing else), the cap again around the TLS stream.
                let plain = SmtpClient {
                    stream: client.stream.into_inner(),
                    timeout: t.mail,
                };
                let mut tls = match plain
                    .into_tls(&posthorn_tls::client::any_cert_connector(), &name)
                    .await
                {
                    Ok(c) => SmtpClient {
                        stream: Capped::new(c.stream, MAX_REPLY_OCTETS),
                        timeout: t.mail,
                    },
                    Err(e) => {
                        return Attempt::Unreachable(format!("{host}[{addr}] TLS handshake: {e}"));
                    }
                };
                let caps = match hello(&mut tls, job.helo).await {
                    Ok(c) => c,
                    Err(e) => {
                        return Attempt::Unreachable(format!("{host}[{addr}] EHLO after TLS: {e}"));
                    }
                };
                if let Some(a) = auth
                    && let Err(e) = authenticate(&mut tls, &caps, a, host, addr, t).await
                {
                    return e;
                }
                return transaction(&mut tls, &caps, job, t).await;
            }
            // Refused: carry on in plain text (opportunistic TLS).
            Ok(r) => {
                tracing::info!(%host, reply = %Reply::from_response(&r), "STARTTLS refused; continuing without TLS")
            }
            Err(e) => return Attempt::Unreachable(format!("{host}[{addr}] STARTTLS: {e}")),
        }
    }
    if let Some(a) = auth {
        if !a.plaintext_ok {
            let _ = client.cmd(b"QUIT\r\n").await;
            tracing::error!(%host, %addr, "relay does not offer STARTTLS; not sending the AUTH password in clear (delivery.relay_auth_plaintext = false); mail is deferred");
            return Attempt::Unreachable(format!(
                "{host}[{addr}] does not offer STARTTLS: AUTH password not sent in clear (delivery.relay_auth_plaintext = false)"
            ));
        }
        if let Err(e) = authenticate(&mut client, &caps, a, host, addr, t).await {
            return e;
        }
    }
    transaction(&mut client, &caps, job, t).await
}

/// AUTH PLAIN (or LOGIN) to a relay. Every failure defers: a wrong or
/// revoked credential is a configuration error of ours, and must not
/// bounce all mail (docs/delivery.md); a 5xx is logged as an error.
async fn authenticate<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    caps: &EhloResponse<String>,
    auth: RelayAuth<'_>,
    host: &str,
    addr: SocketAddr,
    t: &Timeouts,
) -> Result<(), Attempt> {
    let mut caps = caps.clone();
    // The mechanisms mail-send implements without extra features.
    caps.auth_mechanisms &= AUTH_PLAIN | AUTH_LOGIN;
    client.timeout = t.mail;
    let user = match auth.credentials {
        Credentials::Plain { username, .. } | Credentials::XOauth2 { username, .. } => {
            username.as_str()
        }
        Credentials::OAuthBearer { .. } => "",
    };
    let why = match client.authenticate(auth.credentials, &caps).await {
        Ok(_) => {
            tracing::info!(%host, %addr, %user, "authenticated to the relay");
            return Ok(());
        }
        Err(mail_send::Error::AuthenticationFailed(r))
        | Err(mail_send::Error::UnexpectedReply(r)) => {
            let reply = Reply::from_response(&r);
            if r.code / 100 == 5 {
                tracing::error!(%host, %addr, %user, %reply, "the relay rejected our AUTH credentials (delivery.relay_auth_file); mail to it is deferred, not bounced");
            } else {
                tracing::warn!(%host, %addr, %user, %reply, "AUTH to the relay failed temporarily");
            }
            format!("AUTH as {user} rejected: {reply}")
        }
        Err(mail_send::Error::UnsupportedAuthMechanism) => {
            tracing::error!(%host, %addr, "the relay offers no AUTH PLAIN or LOGIN (after STARTTLS); mail to it is deferred");
            "the relay offers no AUTH PLAIN or LOGIN".to_string()
        }
        Err(mail_send::Error::Timeout) => "AUTH: timeout".to_string(),
        Err(e) => format!("AUTH: {e}"),
    };
    let _ = client.cmd(b"QUIT\r\n").await;
    Err(Attempt::Deferred(why))
}

/// A name for the TLS handshake's SNI; certificates are not verified, so
/// an address literal or odd name falls back to `localhost`.
fn tls_name(host: &str) -> String {
    let h = host.trim_end_matches('.');
    if rustls_pki_types::ServerName::try_from(h).is_ok() {
        h.to_string()
    } else {
        "localhost".into()
    }
}

/// EHLO, falling back to HELO (no extensions) if EHLO is refused.
async fn hello<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    helo: &str,
) -> Result<EhloResponse<String>, String> {
    match client.ehlo(helo).await {
        Ok(caps) => Ok(caps),
        Err(mail_send::Error::UnexpectedReply(r)) if r.code / 100 == 5 => {
            let r = client
                .cmd(format!("HELO {helo}\r\n"))
                .await
                .map_err(|e| e.to_string())?;
            if r.code / 100 == 2 {
                Ok(EhloResponse::default())
            } else {
                Err(Reply::from_response(&r).to_string())
            }
        }
        Err(mail_send::Error::UnexpectedReply(r)) => Err(Reply::from_response(&r).to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Map a reply to a non-final command: 2xx goes on, 5xx bounces, the rest retries.
fn check(step: &str, r: mail_send::Result<Response<String>>) -> Result<(), Attempt> {
    match r {
        Ok(r) if r.code / 100 == 2 => Ok(()),
        Ok(r) if r.code / 100 == 5 => Err(Attempt::Rejected(Reply::from_response(&r))),
        Ok(r) => Err(Attempt::Deferred(format!(
            "{step}: {}",
            Reply::from_response(&r)
        ))),
        Err(mail_send::Error::Timeout) => Err(Attempt::Deferred(format!("{step}: timeout"))),
        Err(e) => Err(Attempt::Deferred(format!("{step}: {e}"))),
    }
}

async fn transaction<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    caps: &EhloResponse<String>,
    job: &Job<'_>,
    t: &Timeouts,
) -> Attempt {
    match run(client, caps, job, t).await {
        Ok(Attempt::Delivered(r, _)) => {
            client.timeout = t.mail;
            let _ = client.cmd(b"QUIT\r\n").await;
            Attempt::Delivered(r, caps.has_capability(EXT_DSN))
        }
        Ok(a) | Err(a) => {
            if !matches!(a, Attempt::Deferred(_)) {
                client.timeout = t.mail;
                let _ = client.cmd(b"QUIT\r\n").await;
            }
            a
        }
    }
}

async fn run<T: AsyncRead + AsyncWrite + Unpin>(
    client: &mut SmtpClient<T>,
    caps: &EhloResponse<String>,
    job: &Job<'_>,
    t: &Timeouts,
) -> Result<Attempt, Attempt> {
    let (mail_params, rcpt_params) = parameters(caps, job)?;
    client.timeout = t.mail;
    let r = client
        .cmd(format!("MAIL FROM:<{}>{mail_params}\r\n", job.mail_from))
        .await;
    check("MAIL", r)?;
    client.timeout = t.rcpt;
    let r = client
        .cmd(format!("RCPT TO:<{}>{rcpt_params}\r\n", job.rcpt))
        .await;
    check("RCPT", r)?;
    let binary = job.body_type.eq_ignore_ascii_case("BINARYMIME");
    if binary {
        client.timeout = t.data_end;
        let r = client
            .cmd(
                [
                    format!("BDAT {} LAST\r\n", job.message.len()).as_bytes(),
                    job.message,
                ]
                .concat(),
            )
            .await;
        return final_reply("BDAT", r);
    }
    client.timeout = t.data_init;
    match client.cmd(b"DATA\r\n").await {
        Ok(r) if r.code == 354 => {}
        r => {
            check("DATA", r)?;
            return Err(Attempt::Deferred("DATA: no 354".into()));
        }
    }
    for block in stuffed(job.message).chunks(64 * 1024) {
        match tokio::time::timeout(t.data_block, client.stream.write_all(block)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Attempt::Deferred(format!("data: {e}"))),
            Err(_) => return Err(Attempt::Deferred("data: write timeout".into())),
        }
    }
    let r = tokio::time::timeout(t.data_end, async {
        client.stream.flush().await?;
        client.read().await
    })
    .await
    .unwrap_or(Err(mail_send::Error::Timeout));
    final_reply("end of data", r)
}

fn final_reply(step: &str, r: mail_send::Result<Response<String>>) -> Result<Attempt, Attempt> {
    match r {
        Ok(r) if r.code / 100 == 2 => Ok(Attempt::Delivered(Reply::from_response(&r), false)),
        other => {
            check(step, other)?;
            Err(Attempt::Deferred(format!("{step}: unexpected reply")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Timeouts {
        let ms = Duration::from_millis;
        Timeouts {
            connect: ms(2_000),
            greeting: ms(300),
            mail: ms(300),
            rcpt: ms(300),
            data_init: ms(300),
            data_block: ms(300),
            data_end: ms(300),
        }
    }

    fn job(message: &[u8]) -> Job<'_> {
        Job {
            helo: "client.test",
            mail_from: "a@example.test",
            rcpt: "b@remote.test",
            notify: "",
            orcpt: "",
            ret: "",
            envid: "",
            body_type: "",
            needs_smtputf8: false,
            message,
        }
    }

    /// A peer that sends `lines` (one per command it reads, the first
    /// unprompted as the greeting) and then goes silent, keeping the
    /// connection open: the client must give up on its own.
    async fn silent_peer(lines: &'static [&'static str]) -> SocketAddr {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            for (i, reply) in lines.iter().enumerate() {
                if i > 0 {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                w.write_all(reply.as_bytes()).await.unwrap();
            }
            // Hold the connection, answer nothing.
            let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_silent_peer_cannot_hold_a_worker() {
        // No greeting at all: the next address is tried.
        let addr = silent_peer(&[]).await;
        let a = attempt(addr, "mx.test", &job(b"x\r\n"), &quick(), None).await;
        assert!(
            matches!(&a, Attempt::Unreachable(w) if w.contains("no greeting") && no_answer(w)),
            "{a:?}"
        );
        // Silent after MAIL: deferred.
        let addr = silent_peer(&["220 hi\r\n", "250 ok\r\n"]).await;
        let a = attempt(addr, "mx.test", &job(b"x\r\n"), &quick(), None).await;
        assert_eq!(a, Attempt::Deferred("MAIL: timeout".into()));
        // Silent after the final dot: deferred.
        let addr = silent_peer(&[
            "220 hi\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "250 ok\r\n",
            "354 go\r\n",
        ])
        .await;
        let a = attempt(addr, "mx.test", &job(b"x\r\n"), &quick(), None).await;
        assert!(
            matches!(&a, Attempt::Deferred(w) if w.contains("end of data")),
            "{a:?}"
        );
        // A 4xx greeting: the next address.
        let addr = silent_peer(&["421 4.3.2 busy\r\n"]).await;
        let a = attempt(addr, "mx.test", &job(b"x\r\n"), &quick(), None).await;
        assert!(
            matches!(&a, Attempt::Unreachable(w) if w.contains("421")),
            "{a:?}"
        );
    }

    #[tokio::test]
    async fn relay_auth_defers_and_never_goes_out_in_clear() {
        let creds = Credentials::new("u".to_string(), "p".to_string());
        const EHLO: &str = "250-peer\r\n250 AUTH PLAIN LOGIN\r\n";
        // No STARTTLS and plain text not allowed: the password is not sent
        // (the peer gets EHLO and QUIT only) and the next address is tried.
        let addr = silent_peer(&["220 hi\r\n", EHLO]).await;
        let auth = RelayAuth {
            credentials: &creds,
            plaintext_ok: false,
        };
        let a = attempt(addr, "relay.test", &job(b"x\r\n"), &quick(), Some(auth)).await;
        assert!(
            matches!(&a, Attempt::Unreachable(w) if w.contains("does not offer STARTTLS") && !no_answer(w)),
            "{a:?}"
        );
        // Allowed in plain text: a 535 defers, it does not bounce.
        let auth = RelayAuth {
            credentials: &creds,
            plaintext_ok: true,
        };
        let addr = silent_peer(&["220 hi\r\n", EHLO, "535 5.7.8 bad credentials\r\n"]).await;
        let a = attempt(addr, "relay.test", &job(b"x\r\n"), &quick(), Some(auth)).await;
        assert_eq!(
            a,
            Attempt::Deferred("AUTH as u rejected: 535 5.7.8 bad credentials".into())
        );
        // A 454 as well (to PLAIN, then to LOGIN, which mail-send tries next).
        let addr = silent_peer(&[
            "220 hi\r\n",
            EHLO,
            "454 4.7.0 try later\r\n",
            "454 4.7.0 try later\r\n",
        ])
        .await;
        let a = attempt(addr, "relay.test", &job(b"x\r\n"), &quick(), Some(auth)).await;
        assert!(
            matches!(&a, Attempt::Deferred(w) if w.contains("454 4.7.0")),
            "{a:?}"
        );
        // A relay without AUTH: deferred, not sent unauthenticated.
        let addr = silent_peer(&["220 hi\r\n", "250 peer\r\n"]).await;
        let a = attempt(addr, "relay.test", &job(b"x\r\n"), &quick(), Some(auth)).await;
        assert!(
            matches!(&a, Attempt::Deferred(w) if w.contains("no AUTH PLAIN or LOGIN")),
            "{a:?}"
        );
    }

    #[test]
    fn reply_display() {
        let r = Reply {
            code: 550,
            esc: Some([5, 1, 1]),
            text: "no such user".into(),
        };
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
    }
}
