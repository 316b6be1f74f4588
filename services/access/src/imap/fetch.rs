//! FETCH: items, message bytes, ENVELOPE/BODYSTRUCTURE (cached per process).

use std::collections::{HashMap, HashSet};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::{Arc, Mutex, OnceLock};

use imap_codec::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::core::{IString, Literal, LiteralMode, NString, NString8, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::envelope::{Address, Envelope};
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Part, Section,
};
use imap_codec::imap_types::flag::{Flag, FlagFetch};
use imap_codec::imap_types::response::{Code, Data, Response};
use imap_codec::imap_types::sequence::SequenceSet;
use posthorn_mailbox_store::{FlagOp, MessageMeta};
use posthorn_mime::{SectionText, Structure};

use futures::StreamExt;

use super::{CmdError, Res, Session, bad, encode, no, store_err};

/// Message bodies read ahead by a FETCH.
const PREFETCH: usize = 8;

/// Flags as an IMAP list body (`\Seen foo`), skipping anything not an atom.
pub(crate) fn flags_list(flags: &[String]) -> String {
    flags
        .iter()
        .filter(|f| Flag::try_from(f.as_str()).is_ok())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn structure_cache() -> &'static Mutex<HashMap<String, Arc<Structure>>> {
    static C: OnceLock<Mutex<HashMap<String, Arc<Structure>>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

const CACHE_MAX: usize = 2048;

fn cache_key(m: &MessageMeta) -> String {
    format!("{}\n{}", m.blob_key, m.header_prefix)
}

/// The structure of a message: from its metadata (if cached there and
/// consistent), the process cache, or by parsing `bytes`.
pub(crate) fn structure(m: &MessageMeta, bytes: Option<&[u8]>) -> Option<Arc<Structure>> {
    if let Some(st) = m
        .bodystructure
        .as_deref()
        .and_then(Structure::from_json)
        .filter(|s| s.size == m.size)
    {
        return Some(Arc::new(st));
    }
    let key = cache_key(m);
    if let Some(st) = structure_cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
    {
        return Some(st.clone());
    }
    let st = Arc::new(posthorn_mime::analyze(bytes?));
    let mut c = structure_cache().lock().unwrap_or_else(|e| e.into_inner());
    if c.len() >= CACHE_MAX {
        c.clear();
    }
    c.insert(key, st.clone());
    Some(st)
}

fn nstr(s: Option<&str>) -> NString<'static> {
    NString(s.and_then(|s| IString::try_from(s.to_string()).ok()))
}

fn istr(s: &str) -> IString<'static> {
    IString::try_from(s.to_string()).unwrap_or_else(|_| IString::try_from("").expect("empty"))
}

/// Message bytes as a literal (NUL bytes, which literals cannot carry, become spaces).
pub(crate) fn literal(data: &[u8]) -> NString<'static> {
    let lit = match Literal::try_from(data.to_vec()) {
        Ok(l) => l,
        Err(_) => {
            let clean: Vec<u8> = data
                .iter()
                .map(|&b| if b == 0 { b' ' } else { b })
                .collect();
            Literal::try_from(clean).unwrap_or_else(|_| Literal::try_from("").expect("empty"))
        }
    };
    NString(Some(IString::Literal(lit)))
}

fn addresses(list: &[posthorn_mime::Address]) -> Vec<Address<'static>> {
    list.iter()
        .map(|a| Address {
            name: nstr(a.name.as_deref()),
            adl: nstr(a.adl.as_deref()),
            mailbox: nstr(a.mailbox.as_deref()),
            host: nstr(a.host.as_deref()),
        })
        .collect()
}

pub(crate) fn envelope(e: &posthorn_mime::Envelope) -> Envelope<'static> {
    Envelope {
        date: nstr(e.date.as_deref()),
        subject: nstr(e.subject.as_deref()),
        from: addresses(&e.from),
        sender: addresses(&e.sender),
        reply_to: addresses(&e.reply_to),
        to: addresses(&e.to),
        cc: addresses(&e.cc),
        bcc: addresses(&e.bcc),
        in_reply_to: nstr(e.in_reply_to.as_deref()),
        message_id: nstr(e.message_id.as_deref()),
    }
}

fn params(p: &[(String, String)]) -> Vec<(IString<'static>, IString<'static>)> {
    p.iter().map(|(k, v)| (istr(k), istr(v))).collect()
}

fn disposition(p: &posthorn_mime::Part) -> Disposition<'static> {
    Disposition {
        disposition: p.disposition.as_ref().map(|(d, ps)| (istr(d), params(ps))),
        tail: Some(Language {
            language: p.language.iter().map(|l| istr(l)).collect(),
            tail: Some(Location {
                location: nstr(p.location.as_deref()),
                extensions: vec![],
            }),
        }),
    }
}

/// BODYSTRUCTURE (`ext`) or BODY of a part.
pub(crate) fn body_structure(p: &posthorn_mime::Part, ext: bool) -> BodyStructure<'static> {
    if p.is_multipart() {
        let bodies: Vec<BodyStructure<'static>> =
            p.children.iter().map(|c| body_structure(c, ext)).collect();
        if let Ok(bodies) = Vec1::try_from(bodies) {
            return BodyStructure::Multi {
                bodies,
                subtype: istr(&p.subtype.to_ascii_uppercase()),
                extension_data: ext.then(|| MultiPartExtensionData {
                    parameter_list: params(&p.params),
                    tail: Some(disposition(p)),
                }),
            };
        }
    }
    let basic = BasicFields {
        parameter_list: params(&p.params),
        id: nstr(p.id.as_deref()),
        description: nstr(p.description.as_deref()),
        content_transfer_encoding: istr(&p.encoding),
        size: u32::try_from(p.size).unwrap_or(u32::MAX),
    };
    let lines = u32::try_from(p.lines.unwrap_or(0)).unwrap_or(u32::MAX);
    let specific = match &p.message {
        Some(m) => SpecificFields::Message {
            envelope: Box::new(envelope(&m.0)),
            body_structure: Box::new(body_structure(&m.1, ext)),
            number_of_lines: lines,
        },
        None if p.media_type.eq_ignore_ascii_case("text") => SpecificFields::Text {
            subtype: istr(&p.subtype.to_ascii_uppercase()),
            number_of_lines: lines,
        },
        None => SpecificFields::Basic {
            r#type: istr(&p.media_type.to_ascii_uppercase()),
            subtype: istr(&p.subtype.to_ascii_uppercase()),
        },
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: ext.then(|| SinglePartExtensionData {
            md5: nstr(p.md5.as_deref()),
            tail: Some(disposition(p)),
        }),
    }
}

fn internal_date(ts: i64) -> Option<DateTime> {
    let dt = chrono::DateTime::from_timestamp(ts, 0)?.fixed_offset();
    DateTime::try_from(dt).ok()
}

fn path(p: &Option<Part>) -> Vec<u32> {
    p.as_ref()
        .map(|p| p.0.as_ref().iter().map(|n| n.get()).collect())
        .unwrap_or_default()
}

fn slice(bytes: &[u8], r: Option<(u64, u64)>) -> Vec<u8> {
    match r {
        Some((a, b)) if a <= b && (b as usize) <= bytes.len() => {
            bytes[a as usize..b as usize].to_vec()
        }
        _ => Vec::new(),
    }
}

/// The bytes of `BODY[section]`.
fn section_bytes(st: &Structure, bytes: &[u8], section: &Option<Section<'_>>) -> Vec<u8> {
    let Some(section) = section else {
        return bytes.to_vec();
    };
    match section {
        Section::Part(p) => slice(
            bytes,
            st.section_range(&path(&Some(p.clone())), SectionText::Body),
        ),
        Section::Header(p) => slice(bytes, st.section_range(&path(p), SectionText::Header)),
        Section::Text(p) => slice(bytes, st.section_range(&path(p), SectionText::Text)),
        Section::Mime(p) => slice(
            bytes,
            st.section_range(&path(&Some(p.clone())), SectionText::Mime),
        ),
        Section::HeaderFields(p, names) | Section::HeaderFieldsNot(p, names) => {
            let not = matches!(section, Section::HeaderFieldsNot(..));
            let names: Vec<String> = names
                .as_ref()
                .iter()
                .map(|n| String::from_utf8_lossy(n.as_ref()).into_owned())
                .collect();
            let h = slice(bytes, st.section_range(&path(p), SectionText::Header));
            if h.is_empty() {
                return Vec::new();
            }
            posthorn_mime::header_fields(&h, &names, not)
        }
    }
}

impl Session {
    /// The message as the client sees it: header prefix + blob.
    pub(crate) async fn message_bytes(&mut self, m: &MessageMeta) -> Res<Vec<u8>> {
        let blob = self
            .ctx
            .backends
            .blobs
            .get(&m.blob_key)
            .await
            .map_err(|_| no(Some("UNAVAILABLE"), "Message body unavailable, try again"))?;
        Ok(with_prefix(m, &blob))
    }

    pub(crate) async fn fetch(
        &mut self,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
    ) -> Res<(Option<Code<'static>>, String)> {
        let mut changed_since = None;
        let mut vanished = false;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && (!uid || !self.qresync || changed_since.is_none()) {
            return Err(bad(
                "VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC",
            ));
        }
        let idx = self.resolve(set, uid)?;
        let mut names = match items {
            MacroOrMessageDataItemNames::Macro(m) => m
                .expand()
                .into_iter()
                .map(|n| match n {
                    MessageDataItemName::Flags => MessageDataItemName::Flags,
                    MessageDataItemName::InternalDate => MessageDataItemName::InternalDate,
                    MessageDataItemName::Rfc822Size => MessageDataItemName::Rfc822Size,
                    MessageDataItemName::Envelope => MessageDataItemName::Envelope,
                    _ => MessageDataItemName::Body,
                })
                .collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        if uid && !names.contains(&MessageDataItemName::Uid) {
            names.insert(0, MessageDataItemName::Uid);
        }
        // RFC 7162 §3.1.4.1: CHANGEDSINCE implies MODSEQ; asking for it enables CONDSTORE.
        if changed_since.is_some() && !names.contains(&MessageDataItemName::ModSeq) {
            names.push(MessageDataItemName::ModSeq);
        }
        let modseq_asked = names.contains(&MessageDataItemName::ModSeq);
        if modseq_asked {
            self.condstore = true;
        }
        if vanished && let Some(since) = changed_since {
            self.fetch_vanished(set, since).await?;
        }
        if idx.is_empty() {
            return Ok((None, "FETCH completed".into()));
        }
        let account = self.account();
        let sel = self.selected.as_ref().expect("selected");
        let name = sel.name.clone();
        let read_only = sel.read_only;
        let targets: Vec<(usize, u32)> = idx.iter().map(|&i| (i, sel.msgs[i].uid)).collect();
        let needs_bytes = names.iter().any(|n| {
            matches!(
                n,
                MessageDataItemName::BodyExt { .. }
                    | MessageDataItemName::Rfc822
                    | MessageDataItemName::Rfc822Header
                    | MessageDataItemName::Rfc822Text
                    | MessageDataItemName::Binary { .. }
                    | MessageDataItemName::BinarySize { .. }
            )
        });
        // Whole-message items (BODY[], RFC822, BINARY[]) need no MIME structure.
        let needs_structure = names.iter().any(|n| match n {
            MessageDataItemName::Body
            | MessageDataItemName::BodyStructure
            | MessageDataItemName::Envelope
            | MessageDataItemName::Rfc822Header
            | MessageDataItemName::Rfc822Text => true,
            MessageDataItemName::BodyExt { section, .. } => section.is_some(),
            MessageDataItemName::Binary { section, .. }
            | MessageDataItemName::BinarySize { section } => !section.is_empty(),
            _ => false,
        });
        let sets_seen = !read_only
            && names.iter().any(|n| {
                matches!(
                    n,
                    MessageDataItemName::BodyExt { peek: false, .. }
                        | MessageDataItemName::Binary { peek: false, .. }
                        | MessageDataItemName::Rfc822
                        | MessageDataItemName::Rfc822Text
                )
            });
        let lo = targets.first().map_or(1, |t| t.1);
        let hi = targets.last().map_or(1, |t| t.1);
        let meta = self.ctx.backends.meta.clone();
        let mut metas: HashMap<u32, MessageMeta> = meta
            .fetch(&account, &name, lo, hi)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|m| (m.uid, m))
            .collect();
        let mut flags_changed: HashSet<u32> = HashSet::new();
        if sets_seen {
            let unseen: Vec<u32> = targets
                .iter()
                .filter_map(|t| metas.get(&t.1))
                .filter(|m| !m.flags.iter().any(|f| f == "\\Seen"))
                .map(|m| m.uid)
                .collect();
            if !unseen.is_empty() {
                let ups = meta
                    .store_flags(
                        &account,
                        &name,
                        &unseen,
                        FlagOp::Add,
                        &["\\Seen".to_string()],
                        None,
                    )
                    .await
                    .map_err(store_err)?;
                for u in ups {
                    if let Some(m) = metas.get_mut(&u.uid) {
                        m.flags = u.flags.clone();
                        m.modseq = u.modseq;
                    }
                    flags_changed.insert(u.uid);
                }
                self.publish(&name, "flags");
            }
        }
        // Bodies are read ahead, PREFETCH at a time, in target order (the
        // blob store is S3 in a cluster: one round trip at a time would
        // bound a FETCH of many messages by latency).
        let wanted = |m: &MessageMeta| changed_since.is_none_or(|cs| m.modseq > cs);
        let keys: Vec<Option<String>> = if needs_bytes {
            targets
                .iter()
                .map(|t| {
                    metas
                        .get(&t.1)
                        .filter(|m| wanted(m))
                        .map(|m| m.blob_key.clone())
                })
                .collect()
        } else {
            Vec::new()
        };
        let blobs = self.ctx.backends.blobs.clone();
        let mut bodies = futures::stream::iter(keys)
            .map(move |k| {
                let blobs = blobs.clone();
                async move {
                    match k {
                        Some(k) => Some(blobs.get(&k).await),
                        None => None,
                    }
                }
            })
            .buffered(PREFETCH);
        let mut missing = false;
        for (i, u) in targets {
            let body = if needs_bytes {
                bodies.next().await.flatten()
            } else {
                None
            };
            let Some(m) = metas.get(&u) else {
                missing = true;
                continue;
            };
            if !wanted(m) {
                continue;
            }
            let bytes = match body {
                Some(Ok(blob)) => Some(with_prefix(m, &blob)),
                Some(Err(_)) => {
                    return Err(no(
                        Some("UNAVAILABLE"),
                        "Message body unavailable, try again",
                    ));
                }
                None => None,
            };
            let st = if needs_structure {
                match structure(m, bytes.as_deref()) {
                    Some(s) => Some(s),
                    None => {
                        let b = self.message_bytes(m).await?;
                        structure(m, Some(&b))
                    }
                }
            } else {
                None
            };
            let mut out: Vec<MessageDataItem<'static>> = Vec::new();
            let mut flags_sent = false;
            for n in &names {
                let item = match n {
                    MessageDataItemName::Uid => match NonZeroU32::new(m.uid) {
                        Some(u) => MessageDataItem::Uid(u),
                        None => continue,
                    },
                    MessageDataItemName::ModSeq => match NonZeroU64::new(m.modseq) {
                        Some(n) => MessageDataItem::ModSeq(n),
                        None => continue,
                    },
                    MessageDataItemName::Binary {
                        section, partial, ..
                    } => {
                        let Some(b) = &bytes else { continue };
                        let data = binary_bytes(st.as_deref(), b, section)?;
                        let data = match partial {
                            Some((start, len)) => partial_of(&data, *start, len.get()),
                            None => data,
                        };
                        MessageDataItem::Binary {
                            section: section.clone(),
                            value: nstring8(data),
                        }
                    }
                    MessageDataItemName::BinarySize { section } => {
                        let Some(b) = &bytes else { continue };
                        let size = binary_bytes(st.as_deref(), b, section)?.len();
                        MessageDataItem::BinarySize {
                            section: section.clone(),
                            size: u32::try_from(size).unwrap_or(u32::MAX),
                        }
                    }
                    MessageDataItemName::Flags => {
                        flags_sent = true;
                        flags_item(&m.flags)
                    }
                    MessageDataItemName::InternalDate => match internal_date(m.internal_date) {
                        Some(d) => MessageDataItem::InternalDate(d),
                        None => continue,
                    },
                    MessageDataItemName::Rfc822Size => {
                        MessageDataItem::Rfc822Size(u32::try_from(m.size).unwrap_or(u32::MAX))
                    }
                    MessageDataItemName::Envelope => {
                        let Some(st) = &st else { continue };
                        MessageDataItem::Envelope(envelope(&st.envelope))
                    }
                    MessageDataItemName::BodyStructure => {
                        let Some(st) = &st else { continue };
                        MessageDataItem::BodyStructure(body_structure(&st.body, true))
                    }
                    MessageDataItemName::Body => {
                        let Some(st) = &st else { continue };
                        MessageDataItem::Body(body_structure(&st.body, false))
                    }
                    MessageDataItemName::Rfc822 => {
                        MessageDataItem::Rfc822(literal(bytes.as_deref().unwrap_or_default()))
                    }
                    MessageDataItemName::Rfc822Header => {
                        let (Some(st), Some(b)) = (&st, &bytes) else {
                            continue;
                        };
                        MessageDataItem::Rfc822Header(literal(&slice(
                            b,
                            st.section_range(&[], SectionText::Header),
                        )))
                    }
                    MessageDataItemName::Rfc822Text => {
                        let (Some(st), Some(b)) = (&st, &bytes) else {
                            continue;
                        };
                        MessageDataItem::Rfc822Text(literal(&slice(
                            b,
                            st.section_range(&[], SectionText::Text),
                        )))
                    }
                    MessageDataItemName::BodyExt {
                        section, partial, ..
                    } => {
                        let Some(b) = &bytes else { continue };
                        let data = match (section, &st) {
                            (None, _) => b.to_vec(),
                            (Some(_), Some(st)) => section_bytes(st, b, section),
                            (Some(_), None) => continue,
                        };
                        let (data, origin) = match partial {
                            Some((start, len)) => {
                                (partial_of(&data, *start, len.get()), Some(*start))
                            }
                            None => (data, None),
                        };
                        MessageDataItem::BodyExt {
                            section: section.clone().map(static_section),
                            origin,
                            data: literal(&data),
                        }
                    }
                };
                out.push(item);
            }
            if flags_changed.contains(&m.uid) && !flags_sent {
                out.push(flags_item(&m.flags));
                flags_sent = true;
            }
            // RFC 7162 §3.1.4: once CONDSTORE is on, FLAGS come with MODSEQ.
            if self.condstore
                && flags_sent
                && !modseq_asked
                && let Some(n) = NonZeroU64::new(m.modseq)
            {
                out.push(MessageDataItem::ModSeq(n));
            }
            if let Some(sel) = self.selected.as_mut()
                && flags_changed.contains(&m.uid)
                && let Some(p) = sel.seq_of(m.uid)
            {
                sel.msgs[p].flags.clone_from(&m.flags);
                sel.msgs[p].modseq = m.modseq;
            }
            let Ok(items) = Vec1::try_from(out) else {
                continue;
            };
            let Some(seq) = NonZeroU32::new(i as u32 + 1) else {
                continue;
            };
            let line = encode(&Response::Data(Data::Fetch { seq, items }));
            self.out.extend_from_slice(&line);
            if self.out.len() > (1 << 20) && self.flush().await.is_err() {
                return Err(bad("write failed"));
            }
        }
        if missing && !uid {
            return Err(CmdError {
                bad: false,
                code: Some("EXPUNGEISSUED".into()),
                text: "Some messages were expunged".into(),
            });
        }
        Ok((None, "FETCH completed".into()))
    }
}

impl Session {
    /// `UID FETCH ... (CHANGEDSINCE n VANISHED)`: the UIDs in `set` expunged
    /// since `since`, as `VANISHED (EARLIER)` (RFC 7162 §3.2.6).
    async fn fetch_vanished(&mut self, set: &SequenceSet, since: u64) -> Res<()> {
        let account = self.account();
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        let (name, max) = (sel.name.clone(), sel.uidnext.saturating_sub(1));
        let wanted = super::ranges(set, max);
        let gone: Vec<u32> = self
            .ctx
            .backends
            .meta
            .expunged_since(&account, &name, since)
            .await
            .map_err(store_err)?
            .into_iter()
            .filter(|&u| wanted.iter().any(|&(a, b)| a <= u && u <= b))
            .collect();
        if !gone.is_empty() {
            let line = format!("* VANISHED (EARLIER) {}\r\n", super::uid_set(&gone));
            self.out.extend_from_slice(line.as_bytes());
        }
        Ok(())
    }
}

/// RFC 3516 / RFC 9051 §6.4.5: the content of `BINARY[section]`, with the
/// part's Content-Transfer-Encoding removed. `BINARY[]` is the whole message.
fn binary_bytes(st: Option<&Structure>, bytes: &[u8], section: &[NonZeroU32]) -> Res<Vec<u8>> {
    if section.is_empty() {
        return Ok(bytes.to_vec());
    }
    let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
    let Some(st) = st else {
        return Err(no(Some("SERVERBUG"), "Message structure unavailable"));
    };
    let (Some(part), Some(range)) = (st.part(&path), st.section_range(&path, SectionText::Body))
    else {
        return Err(no(Some("NONEXISTENT"), "No such message part"));
    };
    let raw = slice(bytes, Some(range));
    let decoded = match part.encoding.to_ascii_lowercase().as_str() {
        "" | "7bit" | "8bit" | "binary" => Some(raw),
        "base64" => mail_parser::decoders::base64::base64_decode(&raw),
        "quoted-printable" => {
            mail_parser::decoders::quoted_printable::quoted_printable_decode(&raw)
        }
        _ => None,
    };
    decoded.ok_or_else(|| {
        no(
            Some("UNKNOWN-CTE"),
            "Cannot decode this part's Content-Transfer-Encoding",
        )
    })
}

/// A BINARY value: a literal8 (`~{n}`) if it holds NUL, else a literal.
fn nstring8(data: Vec<u8>) -> NString8<'static> {
    if data.contains(&0) {
        NString8::Literal8(Literal8 {
            data: data.into(),
            mode: LiteralMode::Sync,
        })
    } else {
        NString8::NString(literal(&data))
    }
}

/// The message as the client sees it: its header prefix, then the blob.
fn with_prefix(m: &MessageMeta, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.header_prefix.len() + blob.len());
    out.extend_from_slice(m.header_prefix.as_bytes());
    out.extend_from_slice(blob);
    out
}

/// `<start.len>` of `data` (RFC 3501 partial fetch: clipped to the data).
fn partial_of(data: &[u8], start: u32, len: u32) -> Vec<u8> {
    let s = (start as usize).min(data.len());
    let e = s.saturating_add(len as usize).min(data.len());
    data[s..e].to_vec()
}

fn flags_item(flags: &[String]) -> MessageDataItem<'static> {
    MessageDataItem::Flags(
        flags
            .iter()
            .filter_map(|f| Flag::try_from(f.clone().as_str()).ok().map(owned_flag))
            .map(FlagFetch::Flag)
            .collect(),
    )
}

fn owned_flag(f: Flag<'_>) -> Flag<'static> {
    let s = f.to_string();
    match s.strip_prefix('\\') {
        Some(sys) => imap_codec::imap_types::core::Atom::try_from(sys.to_string())
            .map(Flag::system)
            .unwrap_or(Flag::Seen),
        None => imap_codec::imap_types::core::Atom::try_from(s)
            .map(Flag::Keyword)
            .unwrap_or(Flag::Seen),
    }
}

fn static_section(s: Section<'_>) -> Section<'static> {
    use imap_codec::imap_types::core::AString;
    let names = |v: Vec1<AString<'_>>| -> Vec1<AString<'static>> {
        let owned: Vec<AString<'static>> = v
            .as_ref()
            .iter()
            .filter_map(|a| AString::try_from(a.as_ref().to_vec()).ok())
            .collect();
        Vec1::try_from(owned).unwrap_or_else(|_| Vec1::from(AString::try_from("X").expect("atom")))
    };
    match s {
        Section::Part(p) => Section::Part(p),
        Section::Header(p) => Section::Header(p),
        Section::Text(p) => Section::Text(p),
        Section::Mime(p) => Section::Mime(p),
        Section::HeaderFields(p, n) => Section::HeaderFields(p, names(n)),
        Section::HeaderFieldsNot(p, n) => Section::HeaderFieldsNot(p, names(n)),
    }
}
