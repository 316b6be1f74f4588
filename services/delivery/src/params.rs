//! What goes on the wire besides the commands: the MAIL FROM and RCPT TO
//! parameters the next hop can take (SIZE, BODY, SMTPUTF8, DSN), and the
//! dot-stuffed DATA section.

use mail_send::smtp::message::Parameters;
use smtp_proto::{
    EXT_8BIT_MIME, EXT_BINARY_MIME, EXT_CHUNKING, EXT_DSN, EXT_SIZE, EXT_SMTP_UTF8, EhloResponse,
};

use crate::client::Attempt;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// EHLO argument (`server.hostname`).
    pub helo: &'a str,
    /// Reverse path; empty for `<>`.
    pub mail_from: &'a str,
    /// The one recipient.
    pub rcpt: &'a str,
    /// RFC 3461 NOTIFY (comma-separated) or empty.
    pub notify: &'a str,
    /// RFC 3461 ORCPT (`type;address`, decoded) or empty.
    pub orcpt: &'a str,
    /// RFC 3461 RET or empty.
    pub ret: &'a str,
    /// RFC 3461 ENVID or empty.
    pub envid: &'a str,
    /// 7BIT, 8BITMIME or BINARYMIME (empty: 7BIT).
    pub body_type: &'a str,
    /// The message needs SMTPUTF8 (non-ASCII addresses or headers).
    pub needs_smtputf8: bool,
    /// The message as stored (CRLF line ends).
    pub message: &'a [u8],
}

/// The MAIL FROM and RCPT TO parameters the next hop can take.
pub fn parameters(caps: &EhloResponse<String>, job: &Job<'_>) -> Result<(String, String), Attempt> {
    let mut mail = Parameters::new();
    let mut rcpt = Parameters::new();
    if caps.has_capability(EXT_SIZE) {
        if caps.size > 0 && job.message.len() > caps.size {
            return Err(Attempt::Refused(
                "5.3.4",
                format!(
                    "message size {} exceeds the next hop's limit {}",
                    job.message.len(),
                    caps.size
                ),
            ));
        }
        mail.add(("SIZE".to_string(), job.message.len().to_string()));
    }
    if job.body_type.eq_ignore_ascii_case("8BITMIME") && caps.has_capability(EXT_8BIT_MIME) {
        mail.add(("BODY".to_string(), "8BITMIME".to_string()));
    }
    if job.body_type.eq_ignore_ascii_case("BINARYMIME") {
        if !(caps.has_capability(EXT_BINARY_MIME) && caps.has_capability(EXT_CHUNKING)) {
            return Err(Attempt::Refused(
                "5.6.3",
                "the message is BINARYMIME and the next hop does not offer BINARYMIME".into(),
            ));
        }
        mail.add(("BODY".to_string(), "BINARYMIME".to_string()));
    }
    if job.needs_smtputf8 {
        if !caps.has_capability(EXT_SMTP_UTF8) {
            // RFC 6531 §3.2: must not be sent to a server without SMTPUTF8.
            return Err(Attempt::Refused(
                "5.6.7",
                "the message needs SMTPUTF8 and the next hop does not offer it".into(),
            ));
        }
        mail.add("SMTPUTF8");
    }
    if caps.has_capability(EXT_DSN) {
        if !job.ret.is_empty() {
            mail.add(("RET".to_string(), job.ret.to_ascii_uppercase()));
        }
        if !job.envid.is_empty() {
            mail.add((
                "ENVID".to_string(),
                posthorn_smtp_codec::xtext::encode(job.envid.as_bytes()),
            ));
        }
        if !job.notify.is_empty() {
            rcpt.add(("NOTIFY".to_string(), job.notify.to_ascii_uppercase()));
        }
        if let Some((kind, addr)) = job.orcpt.split_once(';') {
            rcpt.add((
                "ORCPT".to_string(),
                format!(
                    "{kind};{}",
                    posthorn_smtp_codec::xtext::encode(addr.as_bytes())
                ),
            ));
        }
    }
    Ok((mail.to_string(), rcpt.to_string()))
}

/// The DATA section as sent: dot-stuffed (RFC 5321 §4.5.2), ending in
/// `CRLF . CRLF`. A message that ends in CRLF gets no extra line end, so
/// the next hop stores exactly the bytes we hold.
pub fn stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut line_start = true;
    for &b in message {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !message.is_empty() && !message.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_keeps_bytes() {
        assert_eq!(stuffed(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(stuffed(b".x"), b"..x\r\n.\r\n");
        assert_eq!(stuffed(b""), b".\r\n");
    }

    #[test]
    fn parameters_follow_capabilities() {
        let job = Job {
            helo: "h",
            mail_from: "a@b",
            rcpt: "c@d",
            notify: "FAILURE,DELAY",
            orcpt: "rfc822;C+@d",
            ret: "hdrs",
            envid: "E 1",
            body_type: "8BITMIME",
            needs_smtputf8: false,
            message: b"x\r\n",
        };
        let none = EhloResponse::<String>::default();
        assert_eq!(
            parameters(&none, &job).unwrap(),
            (String::new(), String::new())
        );
        let all = EhloResponse::<String> {
            capabilities: EXT_SIZE | EXT_8BIT_MIME | EXT_DSN | EXT_SMTP_UTF8,
            ..Default::default()
        };
        let (m, r) = parameters(&all, &job).unwrap();
        assert_eq!(m, " SIZE=3 BODY=8BITMIME RET=HDRS ENVID=E+201");
        assert_eq!(r, " NOTIFY=FAILURE,DELAY ORCPT=rfc822;C+2B@d");
        // SMTPUTF8 needed, not offered: refused (RFC 6531).
        let utf8 = Job {
            needs_smtputf8: true,
            ..job
        };
        assert!(matches!(
            parameters(&none, &utf8),
            Err(Attempt::Refused("5.6.7", _))
        ));
        assert!(parameters(&all, &utf8).unwrap().0.contains(" SMTPUTF8"));
        // Too big for the announced SIZE.
        let small = EhloResponse::<String> {
            capabilities: EXT_SIZE,
            size: 2,
            ..Default::default()
        };
        assert!(matches!(
            parameters(&small, &job),
            Err(Attempt::Refused("5.3.4", _))
        ));
    }
}
