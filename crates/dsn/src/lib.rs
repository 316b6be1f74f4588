//! Delivery status notifications: RFC 3464 `message/delivery-status` in an
//! RFC 6522 `multipart/report`, composed from plain values so that every
//! tier can use it without linking another (the router bounces recipients
//! that vanished before routing and reports local deliveries asked for with
//! NOTIFY=SUCCESS; delivery bounces remote failures and sends delay
//! warnings and relayed notices).
//!
//! Pure: no I/O, no runtime. The caller stores the result and sends it to
//! the envelope sender with the null reverse path `<>`.

#![warn(missing_docs)]

use chrono::Utc;

/// Largest original message returned whole (RET=FULL); beyond it, headers.
pub const MAX_RETURNED: u64 = 1 << 20;

/// RFC 3464 §2.3.3 Action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Given up: the message will not be delivered to this recipient.
    Failed,
    /// Still being retried (delay warning).
    Delayed,
    /// Handed to a next hop that does not offer DSN (RFC 3461 §5.2.2).
    Relayed,
    /// Delivered into a local mailbox (RFC 3464 §2.3.3, NOTIFY=SUCCESS).
    Delivered,
    /// A multiple-recipient alias was expanded (RFC 3461 §6.2.7.3).
    Expanded,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Relayed => "relayed",
            Action::Delivered => "delivered",
            Action::Expanded => "expanded",
        }
    }

    /// Delivered or expanded: the report says the message arrived.
    fn is_success(self) -> bool {
        matches!(self, Action::Delivered | Action::Expanded)
    }
}

/// RFC 3464 §2.3.6 Diagnostic-Code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// A reason found here: `Diagnostic-Code: X-Posthorn; <text>`.
    Local(String),
    /// The remote SMTP reply, e.g. `550 5.1.1 no such user`:
    /// `Diagnostic-Code: smtp; <reply>`.
    Smtp(String),
}

impl Diagnostic {
    fn text(&self) -> &str {
        match self {
            Diagnostic::Local(t) | Diagnostic::Smtp(t) => t,
        }
    }
}

/// The report on one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The recipient address (Final-Recipient).
    pub address: String,
    /// RFC 3461 ORCPT as given (`addr-type;address`), empty if none.
    pub orcpt: String,
    /// What happened (failed, delayed, relayed, delivered, expanded).
    pub action: Action,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: String,
    /// Why.
    pub diagnostic: Diagnostic,
    /// The host that answered (Remote-MTA: dns; host), if one did.
    pub remote_mta: Option<String>,
    /// Unix seconds until which delivery is retried (RFC 3464 §2.3.9
    /// Will-Retry-Until; delay warnings).
    pub will_retry_until: Option<i64>,
}

/// What the report is about: the original message and who reports.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// Queue id of the original message.
    pub id: &'a str,
    /// Envelope sender of the original (the report's recipient).
    pub mail_from: &'a str,
    /// Unix seconds when the original was accepted.
    pub received_at: i64,
    /// RFC 3461 ENVID, empty if none.
    pub envid: &'a str,
    /// RFC 3461 RET as given (`FULL` returns the whole message).
    pub ret: &'a str,
    /// Size of the original in octets.
    pub size: u64,
    /// This host (Reporting-MTA, From: MAILER-DAEMON@...).
    pub hostname: &'a str,
    /// One or more CRLF-terminated lines explaining the failure in the
    /// human-readable part.
    pub explanation: &'a str,
}

/// Whether a failure notification is wanted (RFC 3461 §4.1): never for the
/// null sender; without NOTIFY the default is FAILURE; `NEVER` or a list
/// without `FAILURE` asks for none.
pub fn wanted(mail_from: &str, notify: &str) -> bool {
    wanted_for(mail_from, notify, "FAILURE")
}

/// Like [`wanted`] for a delay warning (`DELAY`, also the default).
pub fn delay_wanted(mail_from: &str, notify: &str) -> bool {
    wanted_for(mail_from, notify, "DELAY")
}

/// Whether a success notification (`delivered`, `relayed`, `expanded`)
/// is wanted: only when NOTIFY names `SUCCESS` (RFC 3461 §4.1: no default),
/// and never for the null sender.
pub fn success_wanted(mail_from: &str, notify: &str) -> bool {
    !mail_from.is_empty() && names(notify, "SUCCESS")
}

fn wanted_for(mail_from: &str, notify: &str, what: &str) -> bool {
    if mail_from.is_empty() {
        return false;
    }
    notify.is_empty() || names(notify, what)
}

/// Whether the NOTIFY list `notify` names `what`.
fn names(notify: &str, what: &str) -> bool {
    notify
        .split(',')
        .any(|n| n.trim().eq_ignore_ascii_case(what))
}

/// A short stable hash of `s` (24 hex digits of SHA-256), for the
/// deterministic ids and marker names of notifications.
pub fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..12])
}

/// The header section of `msg` (through the blank line).
pub fn header_section(msg: &[u8]) -> &[u8] {
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(msg, |p| &msg[..p + 4])
}

/// Compose the notification (CRLF line ends). `original` is the message
/// as stored; its headers (or all of it, RET=FULL up to [`MAX_RETURNED`])
/// become the third part.
pub fn compose(
    report: &Report<'_>,
    recipients: &[RecipientReport],
    original: Option<&[u8]>,
) -> Vec<u8> {
    let hostname = report.hostname;
    let now = Utc::now();
    let date = now.to_rfc2822();
    let arrival = chrono::DateTime::from_timestamp(report.received_at, 0)
        .unwrap_or(now)
        .to_rfc2822();
    let success = !recipients.is_empty() && recipients.iter().all(|r| r.action.is_success());
    let subject = if recipients.iter().all(|r| r.action == Action::Delayed) {
        "Delayed Mail (still being retried)"
    } else if recipients.iter().all(|r| r.action == Action::Relayed) {
        "Relayed Mail (delivery notification)"
    } else if success {
        "Successful Mail Delivery Report"
    } else {
        "Undelivered Mail Returned to Sender"
    };
    // A bounce keeps `<id>.dsn`; other notices (one per recipient, several
    // per message) get their own Message-ID, so none shares a bounce's.
    let tag = match recipients.first().map(|r| r.action) {
        None | Some(Action::Failed) => "dsn".to_string(),
        Some(a) => {
            let who: Vec<&str> = recipients.iter().map(|r| r.address.as_str()).collect();
            format!("{}.{}", a.as_str(), short_hash(&who.join("\0")))
        }
    };
    let boundary = format!("{}.{tag}/{}", report.id, hostname);
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{}.{tag}@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\
         \r\n\
         {}\
         \r\n",
        report.mail_from, report.id, report.explanation
    ));
    for r in recipients {
        match (&r.diagnostic, &r.remote_mta) {
            (Diagnostic::Smtp(reply), Some(host)) => {
                m.push_str(&format!("<{}>: host {host} said: {reply}\r\n", r.address))
            }
            (d, _) => m.push_str(&format!("<{}>: {}\r\n", r.address, d.text())),
        }
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n"
    ));
    if !report.envid.is_empty() {
        m.push_str(&format!("Original-Envelope-Id: {}\r\n", report.envid));
    }
    m.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for r in recipients {
        m.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\n", r.address));
        if !r.orcpt.is_empty() {
            m.push_str(&format!("Original-Recipient: {}\r\n", r.orcpt));
        }
        m.push_str(&format!(
            "Action: {}\r\nStatus: {}\r\n",
            r.action.as_str(),
            r.status
        ));
        if let Some(host) = &r.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        match &r.diagnostic {
            Diagnostic::Local(t) => m.push_str(&format!("Diagnostic-Code: X-Posthorn; {t}\r\n")),
            Diagnostic::Smtp(t) => m.push_str(&format!("Diagnostic-Code: smtp; {t}\r\n")),
        }
        if let Some(until) = r
            .will_retry_until
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        {
            m.push_str(&format!("Will-Retry-Until: {}\r\n", until.to_rfc2822()));
        }
    }
    let mut out = m.into_bytes();
    if let Some(orig) = original {
        let full = report.ret.eq_ignore_ascii_case("FULL") && report.size <= MAX_RETURNED;
        let (ctype, part) = if full {
            ("message/rfc822", orig)
        } else {
            ("text/rfc822-headers", header_section(orig))
        };
        let what = if success {
            "Delivered message"
        } else if recipients.iter().all(|r| r.action == Action::Relayed) {
            "Relayed message"
        } else {
            "Undelivered message"
        };
        out.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\n\
                 Content-Description: {what}\r\n\
                 Content-Type: {ctype}\r\n\
                 \r\n"
            )
            .as_bytes(),
        );
        out.extend_from_slice(part);
        if !part.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// Status of an SMTP reply for the report: its enhanced code if it has
/// one, else the class digit with `.0.0` (RFC 3463 §3).
pub fn status_of(code: u16, enhanced: Option<[u8; 3]>) -> String {
    match enhanced {
        Some([c, s, d]) if c == 4 || c == 5 => format!("{c}.{s}.{d}"),
        _ => format!("{}.0.0", if code >= 500 { 5 } else { 4 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules() {
        assert!(wanted("a@b", ""));
        assert!(wanted("a@b", "SUCCESS,FAILURE"));
        assert!(!wanted("a@b", "NEVER"));
        assert!(!wanted("a@b", "DELAY"));
        assert!(!wanted("", ""));
        assert!(success_wanted("a@b", "SUCCESS,FAILURE"));
        assert!(success_wanted("a@b", "success"));
        assert!(!success_wanted("a@b", ""));
        assert!(!success_wanted("a@b", "FAILURE,DELAY"));
        assert!(!success_wanted("", "SUCCESS"));
        assert!(delay_wanted("a@b", ""));
        assert!(delay_wanted("a@b", "DELAY"));
        assert!(!delay_wanted("a@b", "FAILURE"));
    }

    #[test]
    fn remote_failure_fields() {
        let report = Report {
            id: "Q9",
            mail_from: "alice@example.test",
            received_at: 0,
            envid: "",
            ret: "",
            size: 10,
            hostname: "mx.example.test",
            explanation: "Your message could not be delivered.\r\n",
        };
        let rcpts = [RecipientReport {
            address: "bob@remote.test".into(),
            orcpt: String::new(),
            action: Action::Failed,
            status: status_of(550, Some([5, 1, 1])),
            diagnostic: Diagnostic::Smtp("550 5.1.1 no such user".into()),
            remote_mta: Some("mx1.remote.test".into()),
            will_retry_until: None,
        }];
        let m = compose(&report, &rcpts, Some(b"Subject: x\r\n\r\nbody\r\n"));
        let s = String::from_utf8(m.clone()).unwrap();
        for want in [
            "Subject: Undelivered Mail Returned to Sender\r\n",
            "<bob@remote.test>: host mx1.remote.test said: 550 5.1.1 no such user\r\n",
            "Final-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Remote-MTA: dns; mx1.remote.test\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: x\r\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("body"));
        let st = posthorn_mime::analyze(&m);
        assert_eq!(st.body.children.len(), 3);
        // A delay warning says so.
        let delayed = [RecipientReport {
            action: Action::Delayed,
            status: "4.4.1".into(),
            will_retry_until: Some(432_000),
            ..rcpts[0].clone()
        }];
        let s = String::from_utf8(compose(&report, &delayed, None)).unwrap();
        assert!(s.contains("Action: delayed\r\nStatus: 4.4.1\r\n"), "{s}");
        assert!(s.contains("Subject: Delayed Mail"), "{s}");
        assert!(
            s.contains("Will-Retry-Until: Tue, 6 Jan 1970 00:00:00 +0000\r\n"),
            "{s}"
        );
        // A relayed notice (RFC 3461 §5.2.2).
        let relayed = [RecipientReport {
            action: Action::Relayed,
            status: "2.0.0".into(),
            ..rcpts[0].clone()
        }];
        let orig: &[u8] = b"Subject: x\r\n\r\nbody\r\n";
        let s = String::from_utf8(compose(&report, &relayed, Some(orig))).unwrap();
        assert!(s.contains("Action: relayed\r\nStatus: 2.0.0\r\n"), "{s}");
        assert!(s.contains("Subject: Relayed Mail"), "{s}");
        assert!(!s.contains("Will-Retry-Until"), "{s}");
        assert!(
            s.contains("Content-Description: Relayed message\r\n"),
            "{s}"
        );
        assert!(!s.contains("Undelivered"), "{s}");
        assert_eq!(status_of(421, None), "4.0.0");
        assert_eq!(status_of(554, Some([2, 0, 0])), "5.0.0");
    }

    #[test]
    fn success_notices() {
        let report = Report {
            id: "Q7",
            mail_from: "alice@example.test",
            received_at: 0,
            envid: "",
            ret: "",
            size: 10,
            hostname: "mx.example.test",
            explanation: "Your message was delivered.\r\n",
        };
        let r = |addr: &str, action| RecipientReport {
            address: addr.into(),
            orcpt: String::new(),
            action,
            status: "2.0.0".into(),
            diagnostic: Diagnostic::Local("delivered to mailbox".into()),
            remote_mta: None,
            will_retry_until: None,
        };
        let orig: &[u8] = b"Subject: x\r\n\r\nbody\r\n";
        let bob = compose(
            &report,
            &[r("bob@example.test", Action::Delivered)],
            Some(orig),
        );
        let s = String::from_utf8(bob.clone()).unwrap();
        for want in [
            "Subject: Successful Mail Delivery Report\r\n",
            "Final-Recipient: rfc822; bob@example.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n",
            "Content-Description: Delivered message\r\nContent-Type: text/rfc822-headers\r\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert_eq!(posthorn_mime::analyze(&bob).body.children.len(), 3);
        let expanded = compose(&report, &[r("team@example.test", Action::Expanded)], None);
        let e = String::from_utf8(expanded).unwrap();
        assert!(e.contains("Action: expanded\r\nStatus: 2.0.0\r\n"), "{e}");
        assert!(
            e.contains("Subject: Successful Mail Delivery Report"),
            "{e}"
        );
        // One notice per recipient: each has its own Message-ID, none the
        // bounce's `<id>.dsn@host`.
        let carol = compose(&report, &[r("carol@example.test", Action::Delivered)], None);
        let mid = |m: &[u8]| {
            let s = String::from_utf8_lossy(m).to_string();
            s.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_string()
        };
        assert_ne!(mid(&bob), mid(&carol));
        assert!(
            mid(&bob).starts_with("Message-ID: <Q7.delivered."),
            "{}",
            mid(&bob)
        );
        let failed = compose(&report, &[r("bob@example.test", Action::Failed)], None);
        assert_eq!(mid(&failed), "Message-ID: <Q7.dsn@mx.example.test>");
        assert_eq!(short_hash("bob@example.test").len(), 24);
    }
}
