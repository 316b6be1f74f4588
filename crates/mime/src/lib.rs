//! IMAP ENVELOPE and BODYSTRUCTURE data from a message's bytes.
//!
//! [`analyze`] parses a message (as the IMAP client sees it: header prefix
//! plus blob) with `mail-parser` and returns a [`Structure`]: the ENVELOPE
//! fields (raw header values, RFC 2047 encoded words kept as they are, as
//! RFC 3501 §7.4.2 asks), and a tree of [`Part`]s with everything
//! BODYSTRUCTURE needs plus the byte ranges of every part's header and body,
//! so `BODY[1.2.MIME]`, `BODY[2.TEXT]` and friends are slices of the message.
//!
//! Everything is plain data, (de)serialisable with serde_json, so the router
//! can compute it once at delivery and store it in
//! `MessageMeta.envelope`/`bodystructure` ([`Structure::to_json`]); readers
//! check [`Structure::size`] against the message size before trusting a
//! cached value.
//!
//! Pure functions, no I/O, never panic on any input. Nesting deeper than
//! [`MAX_DEPTH`] is cut off (deeper parts are reported as opaque leaves).

#![warn(missing_docs)]

use mail_parser::{Address as MpAddress, HeaderName, HeaderValue, MessageParser, PartType};
use serde::{Deserialize, Serialize};

/// Deepest part nesting reported; deeper structure is flattened into a leaf.
pub const MAX_DEPTH: usize = 32;

/// An RFC 3501 address structure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// Display name (RFC 2047-encoded if it is not plain ASCII).
    pub name: Option<String>,
    /// Source route (always `None` nowadays).
    pub adl: Option<String>,
    /// Local part; the group name for a group start marker; `None` for a group end.
    pub mailbox: Option<String>,
    /// Domain; `None` for group markers.
    pub host: Option<String>,
}

/// The RFC 3501 ENVELOPE fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// `Date:` as written.
    pub date: Option<String>,
    /// `Subject:` as written (unfolded).
    pub subject: Option<String>,
    /// `From:`.
    pub from: Vec<Address>,
    /// `Sender:` (defaults to From).
    pub sender: Vec<Address>,
    /// `Reply-To:` (defaults to From).
    pub reply_to: Vec<Address>,
    /// `To:`.
    pub to: Vec<Address>,
    /// `Cc:`.
    pub cc: Vec<Address>,
    /// `Bcc:`.
    pub bcc: Vec<Address>,
    /// `In-Reply-To:` as written.
    pub in_reply_to: Option<String>,
    /// `Message-ID:` as written.
    pub message_id: Option<String>,
}

/// One MIME part (or the whole message body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Media type, e.g. `text`, `multipart`.
    pub media_type: String,
    /// Media subtype, e.g. `plain`, `mixed`.
    pub subtype: String,
    /// Content-Type parameters.
    pub params: Vec<(String, String)>,
    /// `Content-ID`.
    pub id: Option<String>,
    /// `Content-Description`.
    pub description: Option<String>,
    /// `Content-Transfer-Encoding` (default `7BIT`).
    pub encoding: String,
    /// Size of the (encoded) body in octets.
    pub size: u64,
    /// Lines of the body, for `text/*` and `message/rfc822`.
    pub lines: Option<u64>,
    /// `Content-MD5`.
    pub md5: Option<String>,
    /// `Content-Disposition` value and parameters.
    pub disposition: Option<(String, Vec<(String, String)>)>,
    /// `Content-Language` tags.
    pub language: Vec<String>,
    /// `Content-Location`.
    pub location: Option<String>,
    /// Children of a multipart.
    pub children: Vec<Part>,
    /// For `message/rfc822`: the encapsulated message's envelope and body.
    pub message: Option<Box<(Envelope, Part)>>,
    /// Byte range `[start, end)` of this part's header (the MIME header; for
    /// the root, the message header).
    pub header: (u64, u64),
    /// Byte range `[start, end)` of this part's body.
    pub body: (u64, u64),
}

impl Part {
    /// Whether this is a multipart.
    pub fn is_multipart(&self) -> bool {
        self.media_type.eq_ignore_ascii_case("multipart") && !self.children.is_empty()
    }
}

/// What IMAP needs to know about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Structure {
    /// Total size of the analysed bytes (check against RFC822.SIZE before
    /// trusting a cached value).
    pub size: u64,
    /// ENVELOPE.
    pub envelope: Envelope,
    /// The body (BODYSTRUCTURE); its `header` is the message header.
    pub body: Part,
}

impl Structure {
    /// The structure of the same message with `len` octets of header lines
    /// prepended (the router's per-copy `Return-Path:`/`Delivered-To:`), so
    /// it can be computed once per message instead of once per copy.
    pub fn prepend_header(&mut self, len: u64) {
        fn shift(p: &mut Part, len: u64) {
            p.header = (p.header.0 + len, p.header.1 + len);
            p.body = (p.body.0 + len, p.body.1 + len);
            for c in &mut p.children {
                shift(c, len);
            }
            if let Some(m) = p.message.as_mut() {
                shift(&mut m.1, len);
            }
        }
        self.size += len;
        let root_header_end = self.body.header.1 + len;
        shift(&mut self.body, len);
        self.body.header = (0, root_header_end);
    }
}

/// What an IMAP section (`BODY[<path>.<what>]`) resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionText {
    /// The whole part body (numeric section), or the message (empty path).
    Body,
    /// The header of the message (or encapsulated message).
    Header,
    /// The text of the message (or encapsulated message).
    Text,
    /// The MIME header of a part.
    Mime,
}

impl Structure {
    /// Serialise (for `MessageMeta.bodystructure`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Deserialise; `None` if the text is not a [`Structure`].
    pub fn from_json(s: &str) -> Option<Structure> {
        serde_json::from_str(s).ok()
    }

    /// Byte range of a section: `path` is the IMAP part number (empty for the
    /// top level). `None` if the part does not exist.
    pub fn section_range(&self, path: &[u32], what: SectionText) -> Option<(u64, u64)> {
        let whole = (0, self.size);
        let top_header = (self.body.header.0, self.body.header.1);
        if path.is_empty() {
            return match what {
                SectionText::Body => Some(whole),
                SectionText::Header => Some(top_header),
                SectionText::Text => Some((top_header.1, self.size)),
                SectionText::Mime => None,
            };
        }
        let part = self.part(path)?;
        match what {
            SectionText::Body => Some(part.body),
            SectionText::Mime => Some(part.header),
            SectionText::Header => part.message.as_ref().map(|m| m.1.header),
            SectionText::Text => part.message.as_ref().map(|m| (m.1.header.1, part.body.1)),
        }
    }

    /// The part with IMAP part number `path` (non-empty); `None` if it does
    /// not exist.
    pub fn part(&self, path: &[u32]) -> Option<&Part> {
        // `container` is the body of the current (encapsulated) message or a
        // multipart whose children the next number picks.
        let mut container = &self.body;
        let mut part: Option<&Part> = None;
        for (i, &n) in path.iter().enumerate() {
            if n == 0 {
                return None;
            }
            let next = if container.is_multipart() {
                container.children.get(n as usize - 1)?
            } else if n == 1 {
                container
            } else {
                return None;
            };
            part = Some(next);
            if i + 1 < path.len() {
                container = match &next.message {
                    Some(m) => &m.1,
                    None if next.is_multipart() && !std::ptr::eq(next, container) => next,
                    None => return None,
                };
            }
        }
        part
    }
}

/// Parse a message and compute its [`Structure`].
pub fn analyze(bytes: &[u8]) -> Structure {
    let size = bytes.len() as u64;
    let parser = MessageParser::default();
    let Some(msg) = parser.parse(bytes) else {
        // Not even a header: the whole thing is a text/plain body.
        return Structure {
            size,
            envelope: Envelope::default(),
            body: leaf_default(bytes, (0, 0), (0, size)),
        };
    };
    let (envelope, mut body) = message_of(bytes, &msg.parts, 0);
    // The root part's header starts at 0 and its body runs to the end.
    body.header = (0, body.header.1.min(size));
    Structure {
        size,
        envelope,
        body,
    }
}

fn leaf_default(bytes: &[u8], header: (u64, u64), body: (u64, u64)) -> Part {
    let slice = slice(bytes, body);
    Part {
        media_type: "text".into(),
        subtype: "plain".into(),
        params: vec![("charset".into(), "us-ascii".into())],
        encoding: "7BIT".into(),
        size: body.1 - body.0,
        lines: Some(count_lines(slice)),
        header,
        body,
        ..Default::default()
    }
}

fn slice(bytes: &[u8], r: (u64, u64)) -> &[u8] {
    let (a, b) = (r.0 as usize, r.1 as usize);
    if a <= b && b <= bytes.len() {
        &bytes[a..b]
    } else {
        &[]
    }
}

fn count_lines(b: &[u8]) -> u64 {
    let n = b.iter().filter(|&&c| c == b'\n').count() as u64;
    if !b.is_empty() && !b.ends_with(b"\n") {
        n + 1
    } else {
        n
    }
}

/// Envelope and body of the (possibly encapsulated) message whose root is
/// `parts[0]` (offsets relative to `bytes`).
fn message_of(
    bytes: &[u8],
    parts: &[mail_parser::MessagePart<'_>],
    depth: usize,
) -> (Envelope, Part) {
    let Some(root) = parts.first() else {
        return (Envelope::default(), leaf_default(bytes, (0, 0), (0, 0)));
    };
    let env = envelope_of(bytes, &root.headers);
    let body = part_of(bytes, parts, 0, depth, false);
    (env, body)
}

fn raw_value(bytes: &[u8], h: &mail_parser::Header<'_>) -> Option<String> {
    let v = slice(bytes, (h.offset_start as u64, h.offset_end as u64));
    let s = String::from_utf8_lossy(v);
    let unfolded: String = s.chars().filter(|&c| c != '\r' && c != '\n').collect();
    let t = unfolded.trim();
    Some(t.to_string())
}

fn find<'a, 'x>(
    headers: &'a [mail_parser::Header<'x>],
    name: &str,
) -> Option<&'a mail_parser::Header<'x>> {
    headers
        .iter()
        .find(|h| h.name.as_str().eq_ignore_ascii_case(name))
}

fn raw_header(bytes: &[u8], headers: &[mail_parser::Header<'_>], name: &str) -> Option<String> {
    find(headers, name).and_then(|h| raw_value(bytes, h))
}

fn encode_word(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return s.to_string();
    }
    format!("=?UTF-8?B?{}?=", base64(s.as_bytes()))
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn addr(a: &mail_parser::Addr<'_>) -> Address {
    let name = a
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(encode_word);
    let (mailbox, host) = match a.address.as_deref() {
        Some(ad) => match ad.rsplit_once('@') {
            Some((l, d)) => (Some(l.to_string()), Some(d.to_string())),
            None => (Some(ad.to_string()), Some(String::new())),
        },
        None => (None, None),
    };
    Address {
        name,
        adl: None,
        mailbox: mailbox.or_else(|| Some(String::new())),
        host: host.or_else(|| Some(String::new())),
    }
}

fn addresses(headers: &[mail_parser::Header<'_>], name: &str) -> Vec<Address> {
    let Some(h) = find(headers, name) else {
        return Vec::new();
    };
    match &h.value {
        HeaderValue::Address(MpAddress::List(l)) => l.iter().map(addr).collect(),
        HeaderValue::Address(MpAddress::Group(groups)) => {
            let mut out = Vec::new();
            for g in groups {
                match &g.name {
                    Some(n) => {
                        out.push(Address {
                            mailbox: Some(n.to_string()),
                            ..Default::default()
                        });
                        out.extend(g.addresses.iter().map(addr));
                        out.push(Address::default());
                    }
                    None => out.extend(g.addresses.iter().map(addr)),
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

fn envelope_of(bytes: &[u8], headers: &[mail_parser::Header<'_>]) -> Envelope {
    let from = addresses(headers, "From");
    let mut sender = addresses(headers, "Sender");
    if sender.is_empty() {
        sender = from.clone();
    }
    let mut reply_to = addresses(headers, "Reply-To");
    if reply_to.is_empty() {
        reply_to = from.clone();
    }
    Envelope {
        date: raw_header(bytes, headers, "Date"),
        subject: raw_header(bytes, headers, "Subject"),
        from,
        sender,
        reply_to,
        to: addresses(headers, "To"),
        cc: addresses(headers, "Cc"),
        bcc: addresses(headers, "Bcc"),
        in_reply_to: raw_header(bytes, headers, "In-Reply-To"),
        message_id: raw_header(bytes, headers, "Message-ID"),
    }
}

fn params_of(ct: &mail_parser::ContentType<'_>) -> Vec<(String, String)> {
    ct.attributes()
        .unwrap_or_default()
        .iter()
        .map(|a| (a.name.to_string(), a.value.to_string()))
        .collect()
}

fn part_of(
    bytes: &[u8],
    parts: &[mail_parser::MessagePart<'_>],
    idx: usize,
    depth: usize,
    in_digest: bool,
) -> Part {
    let Some(p) = parts.get(idx) else {
        return leaf_default(bytes, (0, 0), (0, 0));
    };
    let header = (p.offset_header as u64, p.offset_body as u64);
    let body_end = (p.offset_end as u64).max(p.offset_body as u64);
    let body = (p.offset_body as u64, body_end);
    let ct = p
        .headers
        .iter()
        .find(|h| matches!(h.name, HeaderName::ContentType))
        .and_then(|h| h.value.as_content_type());
    let (mut media_type, mut subtype, mut params) = match ct {
        Some(ct) => (
            ct.ctype().to_ascii_lowercase(),
            ct.subtype().unwrap_or("").to_ascii_lowercase(),
            params_of(ct),
        ),
        None if in_digest => ("message".into(), "rfc822".into(), vec![]),
        None => (
            "text".into(),
            "plain".into(),
            vec![("charset".into(), "us-ascii".into())],
        ),
    };
    if subtype.is_empty() {
        subtype = if media_type == "text" {
            "plain".into()
        } else {
            "octet-stream".into()
        };
    }
    let disposition = p
        .headers
        .iter()
        .find(|h| matches!(h.name, HeaderName::ContentDisposition))
        .and_then(|h| h.value.as_content_type())
        .map(|d| (d.ctype().to_string(), params_of(d)));
    let language = raw_header(bytes, &p.headers, "Content-Language")
        .map(|l| {
            l.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut out = Part {
        id: raw_header(bytes, &p.headers, "Content-ID"),
        description: raw_header(bytes, &p.headers, "Content-Description"),
        encoding: raw_header(bytes, &p.headers, "Content-Transfer-Encoding")
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "7BIT".into()),
        md5: raw_header(bytes, &p.headers, "Content-MD5"),
        disposition,
        language,
        location: raw_header(bytes, &p.headers, "Content-Location"),
        header,
        body,
        size: body.1 - body.0,
        ..Default::default()
    };
    match &p.body {
        PartType::Multipart(ids) if depth < MAX_DEPTH && !ids.is_empty() => {
            let digest = subtype == "digest";
            out.children = ids
                .iter()
                .map(|&i| part_of(bytes, parts, i as usize, depth + 1, digest))
                .collect();
        }
        PartType::Message(m) if depth < MAX_DEPTH && p.encoding == mail_parser::Encoding::None => {
            let (env, inner) = message_of(bytes, &m.parts, depth + 1);
            out.message = Some(Box::new((env, inner)));
            out.lines = Some(count_lines(slice(bytes, body)));
            media_type = "message".into();
            if subtype != "rfc822" && subtype != "global" {
                subtype = "rfc822".into();
            }
        }
        _ => {
            if media_type == "multipart" || media_type == "message" {
                // Not parsed as a container (no boundary, encoded, too deep):
                // report an opaque leaf.
                media_type = "application".into();
                subtype = "octet-stream".into();
                params.clear();
            }
        }
    }
    if media_type == "text" {
        out.lines = Some(count_lines(slice(bytes, body)));
    }
    out.media_type = media_type;
    out.subtype = subtype;
    out.params = params;
    out
}

/// Filter a header block (`Name: value` lines with folding) to the fields
/// named in `names` (case-insensitive), or to all others when `not`. The
/// result ends with the empty line that ends a header (RFC 3501 §6.4.5).
pub fn header_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    let mut i = 0;
    while i < header.len() {
        let end = header[i..]
            .iter()
            .position(|&c| c == b'\n')
            .map_or(header.len(), |p| i + p + 1);
        let line = &header[i..end];
        i = end;
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            if keep {
                out.extend_from_slice(line);
            }
            continue;
        }
        let name = line
            .iter()
            .position(|&c| c == b':')
            .map(|p| &line[..p])
            .unwrap_or(b"");
        let name = String::from_utf8_lossy(name);
        let name = name.trim();
        let listed = names.iter().any(|n| n.eq_ignore_ascii_case(name));
        keep = listed != not;
        if keep {
            out.extend_from_slice(line);
            if !line.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod prepend_tests {
    use super::*;

    #[test]
    fn prepend_equals_analyzing_the_longer_message() {
        let body = b"Subject: hi\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\none\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ntwo\r\n--b--\r\n";
        let prefix = b"Return-Path: <a@b>\r\nDelivered-To: c@d\r\n";
        let mut full = prefix.to_vec();
        full.extend_from_slice(body);
        let mut shifted = analyze(body);
        shifted.prepend_header(prefix.len() as u64);
        assert_eq!(shifted, analyze(&full));
    }
}
