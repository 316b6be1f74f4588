//! SEARCH (RFC 3501 §6.4.4): every key; header/body keys read the message.

use imap_codec::imap_types::response::{Code, Data};
use imap_codec::imap_types::search::SearchKey;
use mail_parser::{HeaderValue, MessageParser, PartType};
use posthorn_mailbox_store::MessageMeta;

use super::{Res, Session, bad, no, ranges, store_err};

fn needs_bytes(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::And(v) => v.as_ref().iter().any(needs_bytes),
        SearchKey::Not(k) => needs_bytes(k),
        SearchKey::Or(a, b) => needs_bytes(a) || needs_bytes(b),
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::SentBefore(_)
        | SearchKey::SentOn(_)
        | SearchKey::SentSince(_)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        _ => false,
    }
}

fn has_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::And(v) => v.as_ref().iter().any(has_modseq),
        SearchKey::Not(k) => has_modseq(k),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::ModSequence { .. } => true,
        _ => false,
    }
}

fn lower(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_lowercase()
}

/// One message under evaluation.
struct Msg<'a> {
    seq: u32,
    max_seq: u32,
    max_uid: u32,
    meta: &'a MessageMeta,
    parsed: Option<mail_parser::Message<'a>>,
    raw: &'a [u8],
}

impl Msg<'_> {
    fn has(&self, flag: &str) -> bool {
        self.meta.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    /// Header values (raw unfolded and decoded) of `name`, lower-cased.
    fn header_texts(&self, name: &str) -> Vec<String> {
        let Some(p) = &self.parsed else {
            return Vec::new();
        };
        let Some(root) = p.parts.first() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for h in &root.headers {
            if !h.name.as_str().eq_ignore_ascii_case(name) {
                continue;
            }
            let (a, b) = (h.offset_start as usize, h.offset_end as usize);
            let mut s = if a <= b && b <= self.raw.len() {
                lower(&self.raw[a..b])
                    .replace(['\r', '\n'], "")
                    .trim()
                    .to_string()
            } else {
                String::new()
            };
            match &h.value {
                HeaderValue::Text(t) => {
                    s.push('\n');
                    s.push_str(&t.to_lowercase());
                }
                HeaderValue::Address(addr) => {
                    for a in addr.iter() {
                        s.push('\n');
                        if let Some(n) = &a.name {
                            s.push_str(&n.to_lowercase());
                            s.push(' ');
                        }
                        if let Some(ad) = &a.address {
                            s.push_str(&ad.to_lowercase());
                        }
                    }
                }
                _ => {}
            }
            out.push(s);
        }
        out
    }

    fn header_contains(&self, name: &str, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        self.header_texts(name).iter().any(|v| v.contains(&needle))
    }

    fn body_contains(&self, needle: &str) -> bool {
        let needle = needle.to_lowercase();
        if let Some(p) = &self.parsed {
            for part in &p.parts {
                let hit = match &part.body {
                    PartType::Text(t) | PartType::Html(t) => t.to_lowercase().contains(&needle),
                    _ => false,
                };
                if hit {
                    return true;
                }
            }
            let start = p.parts.first().map_or(0, |r| r.offset_body as usize);
            if start <= self.raw.len() && lower(&self.raw[start..]).contains(&needle) {
                return true;
            }
            false
        } else {
            lower(self.raw).contains(&needle)
        }
    }

    fn sent_date(&self) -> Option<chrono::NaiveDate> {
        let d = self.parsed.as_ref()?.date()?;
        chrono::NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
    }

    fn internal_day(&self) -> Option<chrono::NaiveDate> {
        Some(chrono::DateTime::from_timestamp(self.meta.internal_date, 0)?.date_naive())
    }

    fn eval(&self, k: &SearchKey<'_>) -> bool {
        let s = |a: &imap_codec::imap_types::core::AString<'_>| {
            String::from_utf8_lossy(a.as_ref()).into_owned()
        };
        match k {
            SearchKey::And(v) => v.as_ref().iter().all(|k| self.eval(k)),
            SearchKey::Or(a, b) => self.eval(a) || self.eval(b),
            SearchKey::Not(k) => !self.eval(k),
            // Per-flag MODSEQs (entry names) are not kept: the message's MODSEQ
            // stands for all of them, as RFC 7162 §3.1.5 allows.
            SearchKey::ModSequence { modseq, .. } => self.meta.modseq >= *modseq,
            SearchKey::SequenceSet(set) => ranges(set, self.max_seq)
                .iter()
                .any(|&(a, b)| a <= self.seq && self.seq <= b),
            SearchKey::Uid(set) => ranges(set, self.max_uid)
                .iter()
                .any(|&(a, b)| a <= self.meta.uid && self.meta.uid <= b),
            SearchKey::All => true,
            SearchKey::Answered => self.has("\\Answered"),
            SearchKey::Unanswered => !self.has("\\Answered"),
            SearchKey::Deleted => self.has("\\Deleted"),
            SearchKey::Undeleted => !self.has("\\Deleted"),
            SearchKey::Draft => self.has("\\Draft"),
            SearchKey::Undraft => !self.has("\\Draft"),
            SearchKey::Flagged => self.has("\\Flagged"),
            SearchKey::Unflagged => !self.has("\\Flagged"),
            SearchKey::Seen => self.has("\\Seen"),
            SearchKey::Unseen => !self.has("\\Seen"),
            // No session ever sees a message as \Recent (docs/imap.md).
            SearchKey::Recent | SearchKey::New => false,
            SearchKey::Old => true,
            SearchKey::Keyword(a) => self.has(a.as_ref()),
            SearchKey::Unkeyword(a) => !self.has(a.as_ref()),
            SearchKey::Larger(n) => self.meta.size > u64::from(*n),
            SearchKey::Smaller(n) => self.meta.size < u64::from(*n),
            SearchKey::Before(d) => self.internal_day().is_some_and(|x| x < *d.as_ref()),
            SearchKey::On(d) => self.internal_day().is_some_and(|x| x == *d.as_ref()),
            SearchKey::Since(d) => self.internal_day().is_some_and(|x| x >= *d.as_ref()),
            SearchKey::SentBefore(d) => self.sent_date().is_some_and(|x| x < *d.as_ref()),
            SearchKey::SentOn(d) => self.sent_date().is_some_and(|x| x == *d.as_ref()),
            SearchKey::SentSince(d) => self.sent_date().is_some_and(|x| x >= *d.as_ref()),
            SearchKey::Bcc(v) => self.header_contains("Bcc", &s(v)),
            SearchKey::Cc(v) => self.header_contains("Cc", &s(v)),
            SearchKey::From(v) => self.header_contains("From", &s(v)),
            SearchKey::To(v) => self.header_contains("To", &s(v)),
            SearchKey::Subject(v) => self.header_contains("Subject", &s(v)),
            SearchKey::Header(name, v) => {
                let name = s(name);
                let v = s(v);
                let vals = self.header_texts(&name);
                !vals.is_empty()
                    && (v.is_empty() || vals.iter().any(|x| x.contains(&v.to_lowercase())))
            }
            SearchKey::Body(v) => self.body_contains(&s(v)),
            SearchKey::Text(v) => {
                let v = s(v);
                let hdr_end = self
                    .parsed
                    .as_ref()
                    .and_then(|p| p.parts.first())
                    .map_or(0, |r| r.offset_body as usize)
                    .min(self.raw.len());
                lower(&self.raw[..hdr_end]).contains(&v.to_lowercase()) || self.body_contains(&v)
            }
        }
    }
}

impl Session {
    pub(crate) async fn search(
        &mut self,
        charset: Option<&str>,
        keys: &[SearchKey<'_>],
        uid: bool,
    ) -> Res<(Option<Code<'static>>, String)> {
        if self.esearch.as_ref().is_some_and(|r| r.save) {
            // A failing SEARCH ... RETURN (SAVE) leaves an empty result (RFC 5182 §2.1).
            self.saved.clear();
        }
        if let Some(c) = charset
            && !c.eq_ignore_ascii_case("UTF-8")
            && !c.eq_ignore_ascii_case("US-ASCII")
        {
            return Err(no(
                Some("BADCHARSET (UTF-8 US-ASCII)"),
                "Unsupported charset",
            ));
        }
        let account = self.account();
        let sel = self
            .selected
            .as_ref()
            .ok_or_else(|| bad("No mailbox selected"))?;
        let name = sel.name.clone();
        let snapshot: Vec<u32> = sel.msgs.iter().map(|m| m.uid).collect();
        let metas: std::collections::HashMap<u32, MessageMeta> = self
            .ctx
            .backends
            .meta
            .fetch(&account, &name, 1, u32::MAX)
            .await
            .map_err(store_err)?
            .into_iter()
            .map(|m| (m.uid, m))
            .collect();
        let read = keys.iter().any(needs_bytes);
        let modseq_key = keys.iter().any(has_modseq);
        if modseq_key {
            self.condstore = true;
        }
        let mut top_modseq = 0u64;
        let max_seq = snapshot.len() as u32;
        let max_uid = snapshot.last().copied().unwrap_or(0);
        let mut hits = Vec::new();
        for (i, u) in snapshot.iter().enumerate() {
            let Some(meta) = metas.get(u) else { continue };
            let raw = if read {
                self.message_bytes(meta).await?
            } else {
                Vec::new()
            };
            let parsed = if read {
                MessageParser::default().parse(&raw[..])
            } else {
                None
            };
            let m = Msg {
                seq: i as u32 + 1,
                max_seq,
                max_uid,
                meta,
                parsed,
                raw: &raw,
            };
            if keys.iter().all(|k| m.eval(k))
                && let Some(n) = std::num::NonZeroU32::new(if uid { *u } else { i as u32 + 1 })
            {
                hits.push(n);
                top_modseq = top_modseq.max(meta.modseq);
            }
        }
        // RFC 7162 §3.1.5: with MODSEQ in the criteria, the highest MODSEQ of the hits.
        let modseq = if modseq_key {
            std::num::NonZeroU64::new(top_modseq)
        } else {
            None
        };
        // IMAP4rev2 answers every SEARCH with ESEARCH (RFC 9051 §6.4.4).
        let ret = self.esearch.take().or_else(|| {
            self.rev2.then(|| super::ext::SearchReturn {
                all: true,
                ..Default::default()
            })
        });
        if let Some(r) = ret.as_ref().filter(|r| r.save) {
            // RFC 5182 §2.4: with only MIN and/or MAX, only those are saved.
            let picked: Vec<u32> = if (r.min || r.max) && !(r.all || r.count) {
                let mut v = Vec::new();
                if r.min {
                    v.extend(hits.first().map(|n| n.get()));
                }
                if r.max {
                    v.extend(hits.last().map(|n| n.get()));
                }
                v.dedup();
                v
            } else {
                hits.iter().map(|n| n.get()).collect()
            };
            self.saved = if uid {
                picked
            } else {
                picked
                    .iter()
                    .filter_map(|&s| snapshot.get(s as usize - 1).copied())
                    .collect()
            };
        }
        match ret {
            // SAVE alone: no ESEARCH response (RFC 5182 §2.1).
            Some(ret) if ret.save && !(ret.min || ret.max || ret.all || ret.count) => {}
            Some(ret) => self.esearch_response(&ret, &hits, uid, modseq),
            None => self.data(Data::Search(hits, modseq)),
        }
        Ok((None, "SEARCH completed".into()))
    }
}

impl Session {
    /// RFC 4731 §3.1: `* ESEARCH (TAG "t") [UID] MIN MAX COUNT ALL [MODSEQ]`.
    fn esearch_response(
        &mut self,
        ret: &super::ext::SearchReturn,
        hits: &[std::num::NonZeroU32],
        uid: bool,
        modseq: Option<std::num::NonZeroU64>,
    ) {
        let mut line = format!("* ESEARCH (TAG \"{}\")", self.cur_tag);
        if uid {
            line.push_str(" UID");
        }
        let nums: Vec<u32> = hits.iter().map(|n| n.get()).collect();
        if ret.min
            && let Some(m) = nums.first()
        {
            line.push_str(&format!(" MIN {m}"));
        }
        if ret.max
            && let Some(m) = nums.last()
        {
            line.push_str(&format!(" MAX {m}"));
        }
        if ret.count {
            line.push_str(&format!(" COUNT {}", nums.len()));
        }
        if ret.all && !nums.is_empty() {
            line.push_str(&format!(" ALL {}", super::uid_set(&nums)));
        }
        if let Some(m) = modseq
            && !nums.is_empty()
        {
            line.push_str(&format!(" MODSEQ {m}"));
        }
        line.push_str("\r\n");
        self.raw(&line);
    }
}
