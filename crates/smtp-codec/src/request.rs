//! SMTP commands (RFC 5321 §4.1.1) and their arguments, plus the ESMTP parameters of
//! `MAIL` and `RCPT` this codec implements (RFC 1870, 3030, 3461, 4954, 6152, 6531).
//!
//! The entry point is [`parse_command`]. [`Request::to_bytes`] is its inverse up to
//! normalisation (verbs and keywords upper-cased, source routes dropped, brackets added).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::ParseError;
use crate::xtext;

// === types ===

/// One SMTP command sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `EHLO` (RFC 5321 §4.1.1.1) with the client's domain or address literal.
    Ehlo(Host),
    /// `HELO` (RFC 5321 §4.1.1.1). Address literals are accepted too (common in practice).
    Helo(Host),
    /// `MAIL FROM:` (RFC 5321 §4.1.1.2).
    Mail {
        /// The reverse-path (`<>` is [`ReversePath::Null`]).
        from: ReversePath,
        /// Recognised ESMTP parameters.
        params: MailParams,
    },
    /// `RCPT TO:` (RFC 5321 §4.1.1.3).
    Rcpt {
        /// The forward-path.
        to: ForwardPath,
        /// Recognised ESMTP parameters.
        params: RcptParams,
    },
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT` (RFC 3030 §2): a chunk of exactly `size` octets follows the command line.
    Bdat {
        /// Chunk size in octets.
        size: u64,
        /// `LAST` was given: this chunk ends the message.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5).
    Rset,
    /// `NOOP` (RFC 5321 §4.1.1.9). Its optional argument is ignored.
    Noop,
    /// `QUIT` (RFC 5321 §4.1.1.10).
    Quit,
    /// `HELP` (RFC 5321 §4.1.1.8) with its optional argument.
    Help(Option<String>),
    /// `VRFY` (RFC 5321 §4.1.1.6) with its argument as written.
    Vrfy(String),
    /// `EXPN` (RFC 5321 §4.1.1.7) with its argument as written.
    Expn(String),
    /// `STARTTLS` (RFC 3207 §4).
    StartTls,
    /// `AUTH` (RFC 4954 §4).
    Auth {
        /// SASL mechanism name, upper-cased.
        mechanism: String,
        /// Initial response as sent: base64, or `=` for an empty response.
        initial_response: Option<String>,
    },
}

/// A domain or an address literal (RFC 5321 §4.1.2, §4.1.3).
///
/// Domains are kept as written (case preserved). U-labels (RFC 6531) are accepted; the server
/// decides whether SMTPUTF8 was negotiated, see [`Mailbox::is_ascii`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A domain name, e.g. `example.com`.
    Domain(String),
    /// `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`.
    Ipv6(Ipv6Addr),
    /// `[tag:content]`, a General-address-literal.
    General {
        /// The Standardized-tag.
        tag: String,
        /// Everything after the colon.
        content: String,
    },
}

/// `Local-part "@" ( Domain / address-literal )` (RFC 5321 §4.1.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part exactly as written; a Quoted-string keeps its quotes and backslashes.
    pub local_part: String,
    /// The local part is a Quoted-string (`"john doe"@example.com`).
    pub is_quoted: bool,
    /// The domain or address literal.
    pub domain: Host,
}

/// A mailbox from a `Path` (RFC 5321 §4.1.2), with how it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Path {
    /// The mailbox.
    pub mailbox: Mailbox,
    /// A source route (`<@a,@b:user@domain>`) was present and has been dropped, as
    /// RFC 5321 §4.1.1.3 and Appendix C say the receiver SHOULD do.
    pub had_source_route: bool,
    /// The path was enclosed in `<` `>`. Without them the client violated RFC 5321; the codec
    /// accepts it anyway like Postfix with `strict_rfc821_envelopes = no`.
    pub bracketed: bool,
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`, the null reverse-path used for bounces (RFC 5321 §4.5.5).
    Null,
    /// A mailbox.
    Path(Path),
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 §4.1.1.3, §4.5.1), any case.
    Postmaster,
    /// A mailbox.
    Path(Path),
}

/// `BODY=` (RFC 6152 §2, RFC 3030 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (requires BDAT).
    BinaryMime,
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ret {
    /// `RET=FULL`.
    Full,
    /// `RET=HDRS`.
    Hdrs,
}

/// `AUTH=` on `MAIL FROM` (RFC 4954 §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthParam {
    /// `AUTH=<>`: the submitter is unknown or not trusted.
    Empty,
    /// `AUTH=xtext`, decoded.
    Mailbox(String),
}

/// The `MAIL FROM` parameters this codec recognises. Any other keyword is
/// [`ParseError::UnrecognizedParameter`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MailParams {
    /// `SIZE=` declared message size in octets (RFC 1870 §3).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body: Option<Body>,
    /// `SMTPUTF8` was given (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded (RFC 3461 §4.4). Not length-checked; RFC 3461 caps it at 100.
    pub envid: Option<String>,
    /// `AUTH=` (RFC 4954 §5).
    pub auth: Option<AuthParam>,
}

/// `NOTIFY=` (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// `NOTIFY=NEVER`.
    Never,
    /// `NOTIFY=` a comma-separated subset of `SUCCESS`, `FAILURE`, `DELAY`.
    On {
        /// `SUCCESS` was listed.
        success: bool,
        /// `FAILURE` was listed.
        failure: bool,
        /// `DELAY` was listed.
        delay: bool,
    },
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt {
    /// The address type as written, e.g. `rfc822` or `utf-8`.
    pub addr_type: String,
    /// The xtext-decoded original recipient. RFC 6533 `\x{..}` escapes are not decoded.
    pub addr: String,
}

/// The `RCPT TO` parameters this codec recognises.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RcptParams {
    /// `NOTIFY=` (RFC 3461 §4.1).
    pub notify: Option<Notify>,
    /// `ORCPT=` (RFC 3461 §4.2).
    pub orcpt: Option<Orcpt>,
}

// === parsing ===

const MAIL_USAGE: &str = "MAIL FROM:<address>";
const RCPT_USAGE: &str = "RCPT TO:<address>";

/// Parses one command line (without its CRLF) into a [`Request`].
///
/// Verbs and parameter keywords are case-insensitive. Leading and trailing SP / HTAB (and a
/// stray trailing CR or LF) are ignored; words are separated by one or more SP.
///
/// ```abnf
/// ; RFC 5321 §4.1.1
/// ehlo      = "EHLO" SP ( Domain / address-literal ) CRLF
/// helo      = "HELO" SP Domain CRLF
/// mail      = "MAIL FROM:" Reverse-path [SP Mail-parameters] CRLF
/// rcpt      = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
///             Forward-path ) [SP Rcpt-parameters] CRLF
/// data      = "DATA" CRLF
/// rset      = "RSET" CRLF
/// vrfy      = "VRFY" SP String CRLF
/// expn      = "EXPN" SP String CRLF
/// help      = "HELP" [ SP String ] CRLF
/// noop      = "NOOP" [ SP String ] CRLF
/// quit      = "QUIT" CRLF
/// ; RFC 3030 §2
/// bdat-cmd  = "BDAT" SP chunk-size [ SP end-marker ] CRLF
/// chunk-size = 1*DIGIT
/// end-marker = "LAST"
/// ; RFC 3207 §4
/// starttls  = "STARTTLS" CRLF
/// ; RFC 4954 §4
/// auth      = "AUTH" SP sasl-mech [SP initial-response] CRLF
/// sasl-mech = 1*20(UPPER-ALPHA / DIGIT / "-" / "_")   ; RFC 4422
/// initial-response = base64 / "="
/// ```
///
/// Deviations, all lenient and documented in the crate docs: SP after `FROM:`/`TO:` is
/// tolerated, paths without `<>` are accepted, HELO accepts an address literal, and HELO/EHLO
/// domains may contain `_`.
pub fn parse_command(line: &[u8]) -> Result<Request, ParseError> {
    let line = trim_bytes(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim_bytes(&line[i + 1..])),
        None => (line, &b""[..]),
    };
    let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
    if is("EHLO") || is("HELO") {
        let expected = if is("EHLO") {
            "EHLO domain"
        } else {
            "HELO domain"
        };
        let arg = utf8(args).ok_or(ParseError::Syntax { expected })?;
        if arg.is_empty() || arg.contains(' ') {
            return Err(ParseError::Syntax { expected });
        }
        let host = parse_host(arg, true).ok_or(ParseError::Syntax { expected })?;
        Ok(if is("EHLO") {
            Request::Ehlo(host)
        } else {
            Request::Helo(host)
        })
    } else if is("MAIL") {
        parse_mail(args)
    } else if is("RCPT") {
        parse_rcpt(args)
    } else if is("DATA") {
        no_args(args, Request::Data, "DATA")
    } else if is("BDAT") {
        parse_bdat(args)
    } else if is("RSET") {
        no_args(args, Request::Rset, "RSET")
    } else if is("NOOP") {
        Ok(Request::Noop)
    } else if is("QUIT") {
        no_args(args, Request::Quit, "QUIT")
    } else if is("HELP") {
        if args.is_empty() {
            Ok(Request::Help(None))
        } else {
            string_arg(args, "HELP [string]").map(|s| Request::Help(Some(s)))
        }
    } else if is("VRFY") {
        string_arg(args, "VRFY string").map(Request::Vrfy)
    } else if is("EXPN") {
        string_arg(args, "EXPN string").map(Request::Expn)
    } else if is("STARTTLS") {
        no_args(args, Request::StartTls, "STARTTLS")
    } else if is("AUTH") {
        parse_auth(args)
    } else {
        let verb = String::from_utf8_lossy(verb).chars().take(32).collect();
        Err(ParseError::UnknownCommand { verb })
    }
}

fn trim_bytes(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = b {
        b = rest;
    }
    b
}

fn utf8(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn no_args(args: &[u8], req: Request, expected: &'static str) -> Result<Request, ParseError> {
    if args.is_empty() {
        Ok(req)
    } else {
        Err(ParseError::Syntax { expected })
    }
}

fn string_arg(args: &[u8], expected: &'static str) -> Result<String, ParseError> {
    match utf8(args) {
        Some(s) if !s.is_empty() && !s.chars().any(char::is_control) => Ok(s.to_owned()),
        _ => Err(ParseError::Syntax { expected }),
    }
}

/// Strips an ASCII-case-insensitive prefix.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `MAIL FROM:` arguments.
///
/// ```abnf
/// ; RFC 5321 §4.1.2
/// Reverse-path   = Path / "<>"
/// Path           = "<" [ A-d-l ":" ] Mailbox ">"
/// A-d-l          = At-domain *( "," At-domain )
/// At-domain      = "@" Domain
/// Mail-parameters = esmtp-param *(SP esmtp-param)
/// ```
fn parse_mail(args: &[u8]) -> Result<Request, ParseError> {
    let args = utf8(args).ok_or(ParseError::BadSender {
        expected: "UTF-8 Reverse-path",
    })?;
    let rest = strip_prefix_ci(args, "FROM:").ok_or(ParseError::Syntax {
        expected: MAIL_USAGE,
    })?;
    let (raw, params) = split_path(rest.trim_start_matches(' '))
        .map_err(|expected| ParseError::BadSender { expected })?;
    let from = if raw.bracketed && raw.inner.is_empty() {
        ReversePath::Null
    } else {
        let (had_source_route, mailbox) =
            parse_path(raw.inner).map_err(|expected| ParseError::BadSender { expected })?;
        let mailbox =
            parse_mailbox(mailbox).map_err(|expected| ParseError::BadSender { expected })?;
        ReversePath::Path(Path {
            mailbox,
            had_source_route,
            bracketed: raw.bracketed,
        })
    };
    let mut p = MailParams::default();
    for (keyword, value) in esmtp_params(params)? {
        let dup = || ParseError::InvalidParameter {
            keyword: keyword.clone(),
            expected: "each parameter at most once",
        };
        let bad = |expected| ParseError::InvalidParameter {
            keyword: keyword.clone(),
            expected,
        };
        match keyword.as_str() {
            // RFC 1870 §3: size-value = 1*20DIGIT
            "SIZE" => {
                let v = value
                    .filter(|v| v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| bad("SIZE=1*20DIGIT"))?;
                if p.size.replace(v).is_some() {
                    return Err(dup());
                }
            }
            // RFC 6152 §2, RFC 3030 §3
            "BODY" => {
                let v = value.ok_or_else(|| bad("BODY=7BIT / 8BITMIME / BINARYMIME"))?;
                let body = if v.eq_ignore_ascii_case("7BIT") {
                    Body::SevenBit
                } else if v.eq_ignore_ascii_case("8BITMIME") {
                    Body::EightBitMime
                } else if v.eq_ignore_ascii_case("BINARYMIME") {
                    Body::BinaryMime
                } else {
                    return Err(bad("BODY=7BIT / 8BITMIME / BINARYMIME"));
                };
                if p.body.replace(body).is_some() {
                    return Err(dup());
                }
            }
            // RFC 6531 §3.4: the parameter has no value
            "SMTPUTF8" => {
                if value.is_some() {
                    return Err(bad("SMTPUTF8 without a value"));
                }
                if std::mem::replace(&mut p.smtputf8, true) {
                    return Err(dup());
                }
            }
            // RFC 3461 §4.3
            "RET" => {
                let v = value.ok_or_else(|| bad("RET=FULL / HDRS"))?;
                let ret = if v.eq_ignore_ascii_case("FULL") {
                    Ret::Full
                } else if v.eq_ignore_ascii_case("HDRS") {
                    Ret::Hdrs
                } else {
                    return Err(bad("RET=FULL / HDRS"));
                };
                if p.ret.replace(ret).is_some() {
                    return Err(dup());
                }
            }
            // RFC 3461 §4.4
            "ENVID" => {
                let v = value
                    .and_then(decode_xtext)
                    .ok_or_else(|| bad("ENVID=xtext"))?;
                if p.envid.replace(v).is_some() {
                    return Err(dup());
                }
            }
            // RFC 4954 §5: auth-param = "AUTH=" ( xtext / "<>" )
            "AUTH" => {
                let v = match value {
                    Some("<>") => AuthParam::Empty,
                    Some(v) => {
                        AuthParam::Mailbox(decode_xtext(v).ok_or_else(|| bad("AUTH=xtext / <>"))?)
                    }
                    None => return Err(bad("AUTH=xtext / <>")),
                };
                if p.auth.replace(v).is_some() {
                    return Err(dup());
                }
            }
            _ => return Err(ParseError::UnrecognizedParameter { keyword }),
        }
    }
    Ok(Request::Mail { from, params: p })
}

/// `RCPT TO:` arguments.
///
/// ```abnf
/// ; RFC 5321 §4.1.2
/// Forward-path    = Path
/// Rcpt-parameters = esmtp-param *(SP esmtp-param)
/// ; RFC 5321 §4.1.1.3: "<Postmaster>" (any case) needs no domain
/// ; RFC 3461 §4.1, §4.2
/// notify-esmtp-value = "NEVER" / 1#notify-list-element
/// notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
/// orcpt-value     = addr-type ";" xtext
/// ```
fn parse_rcpt(args: &[u8]) -> Result<Request, ParseError> {
    let args = utf8(args).ok_or(ParseError::BadRecipient {
        expected: "UTF-8 Forward-path",
    })?;
    let rest = strip_prefix_ci(args, "TO:").ok_or(ParseError::Syntax {
        expected: RCPT_USAGE,
    })?;
    let (raw, params) = split_path(rest.trim_start_matches(' '))
        .map_err(|expected| ParseError::BadRecipient { expected })?;
    let (had_source_route, mailbox) =
        parse_path(raw.inner).map_err(|expected| ParseError::BadRecipient { expected })?;
    let to = if !had_source_route && mailbox.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Path(Path {
            mailbox: parse_mailbox(mailbox)
                .map_err(|expected| ParseError::BadRecipient { expected })?,
            had_source_route,
            bracketed: raw.bracketed,
        })
    };
    let mut p = RcptParams::default();
    for (keyword, value) in esmtp_params(params)? {
        let dup = || ParseError::InvalidParameter {
            keyword: keyword.clone(),
            expected: "each parameter at most once",
        };
        let bad = |expected| ParseError::InvalidParameter {
            keyword: keyword.clone(),
            expected,
        };
        match keyword.as_str() {
            "NOTIFY" => {
                const EXPECTED: &str = "NOTIFY=NEVER / 1#(SUCCESS / FAILURE / DELAY)";
                let v = value.ok_or_else(|| bad(EXPECTED))?;
                let notify = if v.eq_ignore_ascii_case("NEVER") {
                    Notify::Never
                } else {
                    let (mut success, mut failure, mut delay) = (false, false, false);
                    for item in v.split(',') {
                        if item.eq_ignore_ascii_case("SUCCESS") {
                            success = true;
                        } else if item.eq_ignore_ascii_case("FAILURE") {
                            failure = true;
                        } else if item.eq_ignore_ascii_case("DELAY") {
                            delay = true;
                        } else {
                            return Err(bad(EXPECTED));
                        }
                    }
                    Notify::On {
                        success,
                        failure,
                        delay,
                    }
                };
                if p.notify.replace(notify).is_some() {
                    return Err(dup());
                }
            }
            "ORCPT" => {
                const EXPECTED: &str = "ORCPT=addr-type;xtext";
                let (addr_type, addr) = value
                    .and_then(|v| v.split_once(';'))
                    .ok_or_else(|| bad(EXPECTED))?;
                if addr_type.is_empty()
                    || !addr_type.chars().all(|c| c.is_ascii() && is_atext(c))
                    || addr.is_empty()
                {
                    return Err(bad(EXPECTED));
                }
                let addr = decode_xtext(addr).ok_or_else(|| bad(EXPECTED))?;
                let orcpt = Orcpt {
                    addr_type: addr_type.to_owned(),
                    addr,
                };
                if p.orcpt.replace(orcpt).is_some() {
                    return Err(dup());
                }
            }
            _ => return Err(ParseError::UnrecognizedParameter { keyword }),
        }
    }
    Ok(Request::Rcpt { to, params: p })
}

/// xtext-decodes and refuses control characters (the value ends up in DSNs and logs).
fn decode_xtext(v: &str) -> Option<String> {
    let bytes = xtext::decode(v)?;
    let s = String::from_utf8(bytes).ok()?;
    (!s.chars().any(char::is_control)).then_some(s)
}

fn parse_bdat(args: &[u8]) -> Result<Request, ParseError> {
    const EXPECTED: &str = "BDAT chunk-size [LAST]";
    let err = ParseError::Syntax { expected: EXPECTED };
    let args = utf8(args).ok_or(err.clone())?;
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(err.clone())?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(err),
    };
    if words.next().is_some() {
        return Err(err);
    }
    Ok(Request::Bdat { size, last })
}

fn parse_auth(args: &[u8]) -> Result<Request, ParseError> {
    const EXPECTED: &str = "AUTH mechanism [initial-response]";
    let err = ParseError::Syntax { expected: EXPECTED };
    let args = utf8(args).ok_or(err.clone())?;
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .filter(|m| {
            (1..=20).contains(&m.len())
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or(err.clone())?
        .to_ascii_uppercase();
    let initial_response = match words.next() {
        None => None,
        Some(r)
            if r == "="
                || r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=') =>
        {
            Some(r.to_owned())
        }
        Some(_) => return Err(err),
    };
    if words.next().is_some() {
        return Err(err);
    }
    Ok(Request::Auth {
        mechanism,
        initial_response,
    })
}

/// What lies between `FROM:`/`TO:` and the parameters.
struct RawPath<'a> {
    inner: &'a str,
    bracketed: bool,
}

/// Splits `<path> params` (or, leniently, `path params`) honouring Quoted-strings, so that a
/// `>` or SP inside quotes does not end the path. Returns the path and the parameter text.
fn split_path(s: &str) -> Result<(RawPath<'_>, &str), &'static str> {
    let bracketed = s.starts_with('<');
    let start = usize::from(bracketed);
    let mut in_quote = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in s.char_indices().skip(start) {
        if escaped {
            escaped = false;
        } else if in_quote {
            match c {
                '\\' => escaped = true,
                '"' => in_quote = false,
                _ => {}
            }
        } else if c == '"' {
            in_quote = true;
        } else if (bracketed && c == '>') || (!bracketed && c == ' ') {
            end = Some(i);
            break;
        }
    }
    let (inner, after) = match (end, bracketed) {
        (Some(i), true) => (&s[1..i], &s[i + 1..]),
        (None, true) => return Err("\">\" closing the Path"),
        (Some(i), false) => (&s[..i], &s[i..]),
        (None, false) => (s, ""),
    };
    if !bracketed && inner.is_empty() {
        return Err("Path");
    }
    if !after.is_empty() && !after.starts_with(' ') {
        return Err("SP after the Path");
    }
    Ok((RawPath { inner, bracketed }, after))
}

/// Strips and validates an optional source route. Returns `(had_route, mailbox_text)`.
fn parse_path(inner: &str) -> Result<(bool, &str), &'static str> {
    if !inner.starts_with('@') {
        return Ok((false, inner));
    }
    let (route, mailbox) = inner.split_once(':').ok_or("A-d-l \":\" Mailbox")?;
    for at_domain in route.split(',') {
        let domain = at_domain.strip_prefix('@').ok_or("At-domain")?;
        if !is_domain(domain, false) {
            return Err("At-domain");
        }
    }
    Ok((true, mailbox))
}

/// Parses a Mailbox.
///
/// ```abnf
/// ; RFC 5321 §4.1.2, extended by RFC 6531 §3.3 (UTF8-non-ascii in atext, qtextSMTP,
/// ; sub-domain)
/// Mailbox        = Local-part "@" ( Domain / address-literal )
/// Local-part     = Dot-string / Quoted-string
/// Dot-string     = Atom *("."  Atom)
/// Atom           = 1*atext
/// Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
/// QcontentSMTP   = qtextSMTP / quoted-pairSMTP
/// quoted-pairSMTP = %d92 %d32-126
/// qtextSMTP      = %d32-33 / %d35-91 / %d93-126
/// ```
fn parse_mailbox(s: &str) -> Result<Mailbox, &'static str> {
    let (local_part, is_quoted, rest) = if s.starts_with('"') {
        let end = scan_quoted(s).ok_or("Quoted-string")?;
        (&s[..end], true, &s[end..])
    } else {
        let end = s.find('@').unwrap_or(s.len());
        let local = &s[..end];
        if !is_dot_string(local) {
            return Err("Dot-string");
        }
        (local, false, &s[end..])
    };
    // An unqualified mailbox (`<alice>`) is accepted like Sendmail and
    // Postfix do; its domain is empty and the server decides (it qualifies
    // it for trusted clients and refuses it otherwise).
    let domain = if rest.is_empty() && !is_quoted {
        Host::Domain(String::new())
    } else {
        let domain = rest.strip_prefix('@').ok_or("\"@\" Domain")?;
        parse_host(domain, false).ok_or("Domain / address-literal")?
    };
    Ok(Mailbox {
        local_part: local_part.to_owned(),
        is_quoted,
        domain,
    })
}

/// Returns the index just past the closing DQUOTE of the Quoted-string starting `s`.
fn scan_quoted(s: &str) -> Option<usize> {
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some(i + 1),
            '\\' => match chars.next() {
                Some((_, ' '..='~')) => {}
                _ => return None,
            },
            ' ' | '!' | '#'..='[' | ']'..='~' => {}
            c if is_utf8_non_ascii(c) => {}
            _ => return None,
        }
    }
    None
}

fn is_utf8_non_ascii(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !c.is_whitespace()
}

/// ```abnf
/// ; RFC 5322 §3.2.3 via RFC 5321 §4.1.2; RFC 6531 §3.3 adds UTF8-non-ascii
/// atext = ALPHA / DIGIT / "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "/" /
///         "=" / "?" / "^" / "_" / "`" / "{" / "|" / "}" / "~" / UTF8-non-ascii
/// ```
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || is_utf8_non_ascii(c)
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Parses a Domain or an address-literal. `helo` relaxes the domain rule to allow `_`.
///
/// ```abnf
/// ; RFC 5321 §4.1.2, §4.1.3
/// Domain         = sub-domain *("." sub-domain)
/// sub-domain     = Let-dig [Ldh-str]      ; or a U-label (RFC 6531 §3.3)
/// Let-dig        = ALPHA / DIGIT
/// Ldh-str        = *( ALPHA / DIGIT / "-" ) Let-dig
/// address-literal = "[" ( IPv4-address-literal / IPv6-address-literal /
///                   General-address-literal ) "]"
/// IPv6-address-literal = "IPv6:" IPv6-addr
/// General-address-literal = Standardized-tag ":" 1*dcontent
/// Standardized-tag = Ldh-str
/// dcontent       = %d33-90 / %d94-126
/// ```
fn parse_host(s: &str, helo: bool) -> Option<Host> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        return match inner.split_once(':') {
            Some((tag, content)) if tag.eq_ignore_ascii_case("IPv6") => {
                content.parse().ok().map(Host::Ipv6)
            }
            Some((tag, content)) => {
                let tag_ok = tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && tag
                        .bytes()
                        .last()
                        .is_some_and(|b| b.is_ascii_alphanumeric());
                let content_ok =
                    !content.is_empty() && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126));
                (tag_ok && content_ok).then(|| Host::General {
                    tag: tag.to_owned(),
                    content: content.to_owned(),
                })
            }
            None => inner.parse().ok().map(Host::Ipv4),
        };
    }
    is_domain(s, helo).then(|| Host::Domain(s.to_owned()))
}

/// Domain syntax check. Limits: 255 octets per domain and 63 per ASCII label
/// (RFC 5321 §4.5.3.1.2, RFC 1035 §2.3.4).
fn is_domain(s: &str, allow_underscore: bool) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    s.split('.').all(|label| {
        let ldh = |c: char| c.is_ascii_alphanumeric() || c == '-' || (allow_underscore && c == '_');
        let edge = |c: Option<char>| c.is_some_and(|c| c != '-');
        let chars_ok = if label.is_ascii() {
            label.len() <= 63 && label.chars().all(ldh)
        } else {
            label.chars().all(|c| ldh(c) || is_utf8_non_ascii(c))
        };
        chars_ok && edge(label.chars().next()) && edge(label.chars().last())
    })
}

/// Splits `Mail-parameters` / `Rcpt-parameters` into `(KEYWORD, value)`.
///
/// ```abnf
/// ; RFC 5321 §4.1.2; RFC 6531 §3.3 allows UTF-8 in esmtp-value
/// esmtp-param    = esmtp-keyword ["=" esmtp-value]
/// esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
/// esmtp-value    = 1*(%d33-60 / %d62-126)
/// ```
fn esmtp_params(s: &str) -> Result<Vec<(String, Option<&str>)>, ParseError> {
    let mut out = Vec::new();
    for token in s.split(' ').filter(|t| !t.is_empty()) {
        let (keyword, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !keyword_ok {
            return Err(ParseError::InvalidParameter {
                keyword: String::new(),
                expected: "esmtp-keyword",
            });
        }
        let keyword = keyword.to_ascii_uppercase();
        if let Some(v) = value {
            let value_ok = !v.is_empty()
                && v.chars()
                    .all(|c| matches!(c, '!'..='<' | '>'..='~') || is_utf8_non_ascii(c));
            if !value_ok {
                return Err(ParseError::InvalidParameter {
                    keyword,
                    expected: "esmtp-value",
                });
            }
        }
        out.push((keyword, value));
    }
    Ok(out)
}

// === encoding ===

impl Request {
    /// The verb, upper-case, e.g. `"MAIL"` (for logs and metrics).
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Ehlo(_) => "EHLO",
            Self::Helo(_) => "HELO",
            Self::Mail { .. } => "MAIL",
            Self::Rcpt { .. } => "RCPT",
            Self::Data => "DATA",
            Self::Bdat { .. } => "BDAT",
            Self::Rset => "RSET",
            Self::Noop => "NOOP",
            Self::Quit => "QUIT",
            Self::Help(_) => "HELP",
            Self::Vrfy(_) => "VRFY",
            Self::Expn(_) => "EXPN",
            Self::StartTls => "STARTTLS",
            Self::Auth { .. } => "AUTH",
        }
    }

    /// Encodes the command as a CRLF-terminated line.
    ///
    /// `parse_command` of the result (minus CRLF) gives back `self`, except that source
    /// routes are not re-emitted and paths are always bracketed.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = self.to_string();
        s.push_str("\r\n");
        s.into_bytes()
    }
}

impl fmt::Display for Request {
    /// The command line without CRLF.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ehlo(h) => write!(f, "EHLO {h}"),
            Self::Helo(h) => write!(f, "HELO {h}"),
            Self::Mail { from, params } => {
                write!(f, "MAIL FROM:{from}")?;
                if let Some(size) = params.size {
                    write!(f, " SIZE={size}")?;
                }
                if let Some(body) = params.body {
                    let b = match body {
                        Body::SevenBit => "7BIT",
                        Body::EightBitMime => "8BITMIME",
                        Body::BinaryMime => "BINARYMIME",
                    };
                    write!(f, " BODY={b}")?;
                }
                if params.smtputf8 {
                    f.write_str(" SMTPUTF8")?;
                }
                if let Some(ret) = params.ret {
                    let r = match ret {
                        Ret::Full => "FULL",
                        Ret::Hdrs => "HDRS",
                    };
                    write!(f, " RET={r}")?;
                }
                if let Some(envid) = &params.envid {
                    write!(f, " ENVID={}", xtext::encode(envid.as_bytes()))?;
                }
                match &params.auth {
                    None => {}
                    Some(AuthParam::Empty) => f.write_str(" AUTH=<>")?,
                    // "<>" itself must be hex-escaped or it would read back as AuthParam::Empty.
                    Some(AuthParam::Mailbox(m)) if m == "<>" => f.write_str(" AUTH=+3C>")?,
                    Some(AuthParam::Mailbox(m)) => {
                        write!(f, " AUTH={}", xtext::encode(m.as_bytes()))?;
                    }
                }
                Ok(())
            }
            Self::Rcpt { to, params } => {
                write!(f, "RCPT TO:{to}")?;
                match params.notify {
                    None => {}
                    Some(Notify::Never) => f.write_str(" NOTIFY=NEVER")?,
                    Some(Notify::On {
                        success,
                        failure,
                        delay,
                    }) => {
                        let list: Vec<&str> =
                            [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                                .into_iter()
                                .filter_map(|(on, name)| on.then_some(name))
                                .collect();
                        write!(f, " NOTIFY={}", list.join(","))?;
                    }
                }
                if let Some(o) = &params.orcpt {
                    write!(
                        f,
                        " ORCPT={};{}",
                        o.addr_type,
                        xtext::encode(o.addr.as_bytes())
                    )?;
                }
                Ok(())
            }
            Self::Data => f.write_str("DATA"),
            Self::Bdat { size, last: true } => write!(f, "BDAT {size} LAST"),
            Self::Bdat { size, last: false } => write!(f, "BDAT {size}"),
            Self::Rset => f.write_str("RSET"),
            Self::Noop => f.write_str("NOOP"),
            Self::Quit => f.write_str("QUIT"),
            Self::Help(None) => f.write_str("HELP"),
            Self::Help(Some(s)) => write!(f, "HELP {s}"),
            Self::Vrfy(s) => write!(f, "VRFY {s}"),
            Self::Expn(s) => write!(f, "EXPN {s}"),
            Self::StartTls => f.write_str("STARTTLS"),
            Self::Auth {
                mechanism,
                initial_response: None,
            } => write!(f, "AUTH {mechanism}"),
            Self::Auth {
                mechanism,
                initial_response: Some(r),
            } => write!(f, "AUTH {mechanism} {r}"),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(d) => f.write_str(d),
            Self::Ipv4(a) => write!(f, "[{a}]"),
            Self::Ipv6(a) => write!(f, "[IPv6:{a}]"),
            Self::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

impl Mailbox {
    /// `true` if local part and domain are pure ASCII. A non-ASCII mailbox is only allowed
    /// when the client gave `SMTPUTF8` (RFC 6531 §3.4); otherwise reply `553 5.6.7`.
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii()
            && match &self.domain {
                Host::Domain(d) => d.is_ascii(),
                Host::General { tag, content } => tag.is_ascii() && content.is_ascii(),
                Host::Ipv4(_) | Host::Ipv6(_) => true,
            }
    }
}

impl Mailbox {
    /// Whether the mailbox has no domain (`<alice>`): unqualified.
    pub fn is_unqualified(&self) -> bool {
        matches!(&self.domain, Host::Domain(d) if d.is_empty())
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unqualified() {
            return f.write_str(&self.local_part);
        }
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

impl ReversePath {
    /// The mailbox, or `None` for the null reverse-path.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            Self::Null => None,
            Self::Path(p) => Some(&p.mailbox),
        }
    }
}

impl ForwardPath {
    /// The mailbox, or `None` for the bare `<Postmaster>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            Self::Postmaster => None,
            Self::Path(p) => Some(&p.mailbox),
        }
    }
}

impl fmt::Display for ReversePath {
    /// Always bracketed: `<>` or `<local@domain>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("<>"),
            Self::Path(p) => write!(f, "<{}>", p.mailbox),
        }
    }
}

impl fmt::Display for ForwardPath {
    /// Always bracketed: `<Postmaster>` or `<local@domain>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postmaster => f.write_str("<Postmaster>"),
            Self::Path(p) => write!(f, "<{}>", p.mailbox),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.into(),
            is_quoted: local.starts_with('"'),
            domain: Host::Domain(domain.into()),
        }
    }

    fn path(local: &str, domain: &str) -> Path {
        Path {
            mailbox: mbox(local, domain),
            had_source_route: false,
            bracketed: true,
        }
    }

    fn mail(from: ReversePath) -> Request {
        Request::Mail {
            from,
            params: MailParams::default(),
        }
    }

    fn rcpt(to: ForwardPath) -> Request {
        Request::Rcpt {
            to,
            params: RcptParams::default(),
        }
    }

    fn syntax(expected: &'static str) -> ParseError {
        ParseError::Syntax { expected }
    }

    #[test]
    fn command_table() {
        let table: Vec<(&[u8], Result<Request, ParseError>)> = vec![
            (b"", Err(ParseError::Empty)),
            (b"   ", Err(ParseError::Empty)),
            (
                b"EHLO example.com",
                Ok(Request::Ehlo(Host::Domain("example.com".into()))),
            ),
            (
                b"ehlo Example.COM ",
                Ok(Request::Ehlo(Host::Domain("Example.COM".into()))),
            ),
            (
                b"EHLO [192.0.2.1]",
                Ok(Request::Ehlo(Host::Ipv4("192.0.2.1".parse().unwrap()))),
            ),
            (
                b"EHLO [IPv6:2001:db8::1]",
                Ok(Request::Ehlo(Host::Ipv6("2001:db8::1".parse().unwrap()))),
            ),
            (
                b"EHLO my_host.example",
                Ok(Request::Ehlo(Host::Domain("my_host.example".into()))),
            ),
            (b"EHLO", Err(syntax("EHLO domain"))),
            (b"EHLO a b", Err(syntax("EHLO domain"))),
            (b"EHLO -bad.example", Err(syntax("EHLO domain"))),
            (b"EHLO [300.1.1.1]", Err(syntax("EHLO domain"))),
            (
                b"HELO relay.example.org",
                Ok(Request::Helo(Host::Domain("relay.example.org".into()))),
            ),
            (b"DATA", Ok(Request::Data)),
            (b"data", Ok(Request::Data)),
            (b"DATA x", Err(syntax("DATA"))),
            (b"RSET", Ok(Request::Rset)),
            (b"NOOP", Ok(Request::Noop)),
            (b"NOOP anything at all", Ok(Request::Noop)),
            (b"QUIT", Ok(Request::Quit)),
            (b"QUIT\r\n", Ok(Request::Quit)),
            (b"STARTTLS", Ok(Request::StartTls)),
            (b"StartTLS now", Err(syntax("STARTTLS"))),
            (b"HELP", Ok(Request::Help(None))),
            (b"HELP MAIL", Ok(Request::Help(Some("MAIL".into())))),
            (b"VRFY Smith", Ok(Request::Vrfy("Smith".into()))),
            (b"VRFY", Err(syntax("VRFY string"))),
            (
                b"EXPN Example-People",
                Ok(Request::Expn("Example-People".into())),
            ),
            (
                b"BDAT 1000",
                Ok(Request::Bdat {
                    size: 1000,
                    last: false,
                }),
            ),
            (
                b"BDAT 0 last",
                Ok(Request::Bdat {
                    size: 0,
                    last: true,
                }),
            ),
            (b"BDAT", Err(syntax("BDAT chunk-size [LAST]"))),
            (b"BDAT -1", Err(syntax("BDAT chunk-size [LAST]"))),
            (b"BDAT 1 LAST x", Err(syntax("BDAT chunk-size [LAST]"))),
            (
                b"BDAT 99999999999999999999999",
                Err(syntax("BDAT chunk-size [LAST]")),
            ),
            (
                b"AUTH plain AHVzZXIAcGFzcw==",
                Ok(Request::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("AHVzZXIAcGFzcw==".into()),
                }),
            ),
            (
                b"AUTH LOGIN",
                Ok(Request::Auth {
                    mechanism: "LOGIN".into(),
                    initial_response: None,
                }),
            ),
            (
                b"AUTH PLAIN =",
                Ok(Request::Auth {
                    mechanism: "PLAIN".into(),
                    initial_response: Some("=".into()),
                }),
            ),
            (
                b"AUTH PLAIN a*b",
                Err(syntax("AUTH mechanism [initial-response]")),
            ),
            (
                b"XYZZY",
                Err(ParseError::UnknownCommand {
                    verb: "XYZZY".into(),
                }),
            ),
            (
                b"MAILFROM:<a@b>",
                Err(ParseError::UnknownCommand {
                    verb: "MAILFROM:<a@b>".into(),
                }),
            ),
            (
                b"MAIL FROM:<a@b.example>",
                Ok(mail(ReversePath::Path(path("a", "b.example")))),
            ),
            (
                b"mail from:<a@b.example>",
                Ok(mail(ReversePath::Path(path("a", "b.example")))),
            ),
            (
                b"MAIL FROM: <a@b.example>",
                Ok(mail(ReversePath::Path(path("a", "b.example")))),
            ),
            (
                b"MAIL FROM:a@b.example",
                Ok(mail(ReversePath::Path(Path {
                    bracketed: false,
                    ..path("a", "b.example")
                }))),
            ),
            (b"MAIL FROM:<>", Ok(mail(ReversePath::Null))),
            (b"MAIL TO:<a@b>", Err(syntax(MAIL_USAGE))),
            (b"MAIL", Err(syntax(MAIL_USAGE))),
            (
                b"MAIL FROM:",
                Err(ParseError::BadSender { expected: "Path" }),
            ),
            (
                b"MAIL FROM:<a@b",
                Err(ParseError::BadSender {
                    expected: "\">\" closing the Path",
                }),
            ),
            (
                b"MAIL FROM:<a@b>x",
                Err(ParseError::BadSender {
                    expected: "SP after the Path",
                }),
            ),
            (
                b"MAIL FROM:<\"a b\">",
                Err(ParseError::BadSender {
                    expected: "\"@\" Domain",
                }),
            ),
            (
                b"MAIL FROM:<a..b@c>",
                Err(ParseError::BadSender {
                    expected: "Dot-string",
                }),
            ),
            (
                b"MAIL FROM:<a@b> XFOO=1",
                Err(ParseError::UnrecognizedParameter {
                    keyword: "XFOO".into(),
                }),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
                Err(ParseError::InvalidParameter {
                    keyword: "SIZE".into(),
                    expected: "each parameter at most once",
                }),
            ),
            (
                b"MAIL FROM:<a@b> -X",
                Err(ParseError::InvalidParameter {
                    keyword: String::new(),
                    expected: "esmtp-keyword",
                }),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=",
                Err(ParseError::InvalidParameter {
                    keyword: "SIZE".into(),
                    expected: "esmtp-value",
                }),
            ),
            (
                b"MAIL FROM:<a@b> SMTPUTF8=yes",
                Err(ParseError::InvalidParameter {
                    keyword: "SMTPUTF8".into(),
                    expected: "SMTPUTF8 without a value",
                }),
            ),
            (b"RCPT TO:<postmaster>", Ok(rcpt(ForwardPath::Postmaster))),
            (b"RCPT TO:<PostMaster>", Ok(rcpt(ForwardPath::Postmaster))),
            (
                b"RCPT TO:<Postmaster@example.com>",
                Ok(rcpt(ForwardPath::Path(path("Postmaster", "example.com")))),
            ),
            (
                b"RCPT TO:<>",
                Err(ParseError::BadRecipient {
                    expected: "Dot-string",
                }),
            ),
            (b"RCPT FROM:<a@b>", Err(syntax(RCPT_USAGE))),
            (
                b"RCPT TO:<a@b> NOTIFY=SOMETIMES",
                Err(ParseError::InvalidParameter {
                    keyword: "NOTIFY".into(),
                    expected: "NOTIFY=NEVER / 1#(SUCCESS / FAILURE / DELAY)",
                }),
            ),
            (
                b"RCPT TO:<a@b> SIZE=10",
                Err(ParseError::UnrecognizedParameter {
                    keyword: "SIZE".into(),
                }),
            ),
            (
                b"RCPT TO:<a\xff@b>",
                Err(ParseError::BadRecipient {
                    expected: "UTF-8 Forward-path",
                }),
            ),
        ];
        for (input, expected) in table {
            let got = parse_command(input);
            assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
            if let Ok(req) = got {
                let again = parse_command(&req.to_bytes());
                let mut norm = req.clone();
                normalise(&mut norm);
                assert_eq!(again, Ok(norm), "round trip of {req}");
            }
        }
    }

    fn normalise(req: &mut Request) {
        let fix = |p: &mut Path| {
            p.had_source_route = false;
            p.bracketed = true;
        };
        match req {
            Request::Mail {
                from: ReversePath::Path(p),
                ..
            }
            | Request::Rcpt {
                to: ForwardPath::Path(p),
                ..
            } => fix(p),
            _ => {}
        }
    }

    #[test]
    fn domain_table() {
        let table: &[(&str, bool)] = &[
            ("example.com", true),
            ("a", true),
            ("1.2.3.4", true),
            ("xn--bcher-kva.example", true),
            ("bücher.example", true),
            ("a-b.c", true),
            ("-a.c", false),
            ("a-.c", false),
            ("a..c", false),
            (".a", false),
            ("a.", false),
            ("a_b.c", false),
            ("a b", false),
            ("", false),
        ];
        for (d, ok) in table {
            assert_eq!(is_domain(d, false), *ok, "{d}");
        }
        assert!(is_domain(&format!("{}.com", "a".repeat(63)), false));
        assert!(!is_domain(&format!("{}.com", "a".repeat(64)), false));
        assert!(is_domain(&["a"; 128].join("."), false)); // 255 octets
        assert!(!is_domain(&format!("{}.a", ["a"; 128].join(".")), false));
        assert!(is_domain("a_b.c", true));
    }

    #[test]
    fn host_table() {
        let table: &[(&str, Option<Host>)] = &[
            ("[127.0.0.1]", Some(Host::Ipv4(Ipv4Addr::LOCALHOST))),
            ("[IPv6:::1]", Some(Host::Ipv6(Ipv6Addr::LOCALHOST))),
            ("[ipv6:::1]", Some(Host::Ipv6(Ipv6Addr::LOCALHOST))),
            (
                "[IPv6:::ffff:192.0.2.1]",
                Some(Host::Ipv6("::ffff:192.0.2.1".parse().unwrap())),
            ),
            (
                "[x-tag:abc]",
                Some(Host::General {
                    tag: "x-tag".into(),
                    content: "abc".into(),
                }),
            ),
            ("[IPv6:1.2.3.4]", None),
            ("[127.0.0.1", None),
            ("[01.2.3.4]", None),
            ("[x-:abc]", None),
            ("[x:a[b]", None),
            ("[]", None),
        ];
        for (s, h) in table {
            assert_eq!(parse_host(s, false), *h, "{s}");
        }
    }

    /// (mailbox text, Ok((local part, is_quoted)) or Err(expected rule))
    type LocalPartCase = (&'static str, Result<(&'static str, bool), &'static str>);

    #[test]
    fn local_part_table() {
        let table: &[LocalPartCase] = &[
            ("a@b", Ok(("a", false))),
            ("a.b.c@d", Ok(("a.b.c", false))),
            ("!#$%&'*+-/=?^_`{|}~@d", Ok(("!#$%&'*+-/=?^_`{|}~", false))),
            ("\"a b\"@d", Ok(("\"a b\"", true))),
            ("\"a\\\"b\"@d", Ok(("\"a\\\"b\"", true))),
            ("\"\"@d", Ok(("\"\"", true))),
            ("\"a@b\"@d", Ok(("\"a@b\"", true))),
            ("δοκιμή@παράδειγμα.δοκιμή", Ok(("δοκιμή", false))),
            ("\"a\"b@d", Err("\"@\" Domain")),
            ("\"a@d", Err("Quoted-string")),
            ("a.@d", Err("Dot-string")),
            (".a@d", Err("Dot-string")),
            ("a b@d", Err("Dot-string")),
            ("a@b@c", Err("Domain / address-literal")),
            ("@d", Err("Dot-string")),
            ("a@", Err("Domain / address-literal")),
        ];
        for (s, expected) in table {
            let got = parse_mailbox(s).map(|m| (m.local_part, m.is_quoted));
            let got = got.as_ref().map(|(l, q)| (l.as_str(), *q)).map_err(|e| *e);
            assert_eq!(got, *expected, "{s}");
        }
    }
}
