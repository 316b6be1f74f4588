//! Command forms imap-codec 2.0.0-alpha.10 does not parse yet: the
//! LIST-EXTENDED/LIST-STATUS options (RFC 5258, RFC 5819) and ESEARCH's
//! `SEARCH RETURN (...)` (RFC 4731).
//!
//! This is not a second IMAP parser: it only peels the option lists off
//! (atoms in parentheses) and hands everything that carries real grammar —
//! mailbox names, patterns, STATUS items, search keys — back to imap-codec,
//! by decoding an equivalent basic command.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::status::StatusDataItemName;

/// ESEARCH result options (RFC 4731 §3.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SearchReturn {
    pub min: bool,
    pub max: bool,
    pub all: bool,
    pub count: bool,
    /// RFC 5182 SEARCHRES: keep the result for `$`.
    pub save: bool,
}

impl SearchReturn {
    fn parse(opts: &[String]) -> Option<Self> {
        let mut r = SearchReturn::default();
        for o in opts {
            match o.to_ascii_uppercase().as_str() {
                "MIN" => r.min = true,
                "MAX" => r.max = true,
                "ALL" => r.all = true,
                "COUNT" => r.count = true,
                "SAVE" => r.save = true,
                _ => return None,
            }
        }
        // `RETURN ()` means `RETURN (ALL)`.
        if opts.is_empty() {
            r.all = true;
        }
        Some(r)
    }
}

/// A LIST with RFC 5258 options.
#[derive(Debug, Default)]
pub(crate) struct ListExt {
    pub sel_subscribed: bool,
    pub sel_special_use: bool,
    pub recursive_match: bool,
    pub ret_subscribed: bool,
    pub ret_status: Option<Vec<StatusDataItemName>>,
    /// Reference name, raw (modified UTF-7), as imap-codec validated it.
    pub reference: String,
    /// Patterns, raw, each validated by imap-codec.
    pub patterns: Vec<String>,
}

/// Split off `(a b c)` at the start of `s`: the words and the rest.
/// Only atoms are allowed inside (no nesting, no strings).
fn paren_atoms(s: &str) -> Option<(Vec<String>, &str)> {
    let s = s.strip_prefix('(')?;
    let end = s.find(')')?;
    let inner = &s[..end];
    if inner.contains(['(', '"', '{']) {
        return None;
    }
    let words = inner.split_whitespace().map(str::to_string).collect();
    Some((words, &s[end + 1..]))
}

/// If the first line of a command is `tag [UID] SEARCH RETURN (...) ...`,
/// the line without the RETURN clause and the options. `Err` for a RETURN
/// clause that is malformed or has unknown options.
pub(crate) fn strip_search_return(line: &[u8]) -> Option<Result<(Vec<u8>, SearchReturn), ()>> {
    // Only look at the start; the rest (maybe with literals) stays bytes.
    let head = &line[..line.len().min(256)];
    let text = String::from_utf8_lossy(head);
    let mut idx = 0;
    let mut words = Vec::new();
    for _ in 0..4 {
        let rest = &text[idx..];
        let Some(sp) = rest.find(' ') else { break };
        words.push((&rest[..sp], idx));
        idx += sp + 1;
    }
    let upper: Vec<String> = words.iter().map(|w| w.0.to_ascii_uppercase()).collect();
    let ret_at = match upper
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [_, "SEARCH", "RETURN", ..] => words[2].1,
        [_, "UID", "SEARCH", "RETURN", ..] => words[3].1,
        _ => return None,
    };
    let after = &text[ret_at + "RETURN ".len()..];
    let Some((opts, rest)) = paren_atoms(after) else {
        return Some(Err(()));
    };
    let Some(ret) = SearchReturn::parse(&opts) else {
        return Some(Err(()));
    };
    let consumed = text.len() - rest.len();
    let rest_bytes = &line[consumed..];
    let rest_bytes = rest_bytes.strip_prefix(b" ").unwrap_or(rest_bytes);
    let mut out = line[..ret_at].to_vec();
    out.extend_from_slice(rest_bytes);
    Some(Ok((out, ret)))
}

/// RFC 5182 `$` (the saved search result) in the first line of a command:
/// where it stands for a sequence set, replace it by `replacement(uid,
/// in_search)`. Returns the new line, or `None` if there is no `$` to
/// replace.
pub(crate) fn substitute_dollar(
    line: &[u8],
    replacement: impl Fn(bool, bool) -> String,
) -> Option<Vec<u8>> {
    if !line.contains(&b'$') {
        return None;
    }
    // Tokens of the line outside quoted strings, with their byte ranges.
    let mut toks: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' | b'(' | b')' | b'\r' | b'\n' => i += 1,
            b'"' => {
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    i += if line[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' => break, // a literal: the rest of the line is its announcement
            _ => {
                let start = i;
                while i < line.len() && !matches!(line[i], b' ' | b'(' | b')' | b'\r' | b'\n') {
                    i += 1;
                }
                toks.push((start, i));
            }
        }
    }
    let word = |k: usize| -> String {
        toks.get(k)
            .map(|&(a, b)| String::from_utf8_lossy(&line[a..b]).to_ascii_uppercase())
            .unwrap_or_default()
    };
    let (uid, cmd_at) = if word(1) == "UID" {
        (true, 2)
    } else {
        (false, 1)
    };
    let cmd = word(cmd_at);
    let targets: Vec<usize> = match cmd.as_str() {
        "FETCH" | "STORE" | "COPY" | "MOVE" => vec![cmd_at + 1],
        "EXPUNGE" if uid => vec![cmd_at + 1],
        "SEARCH" => (cmd_at + 1..toks.len()).collect(),
        _ => return None,
    };
    let search = cmd == "SEARCH";
    let mut out = Vec::with_capacity(line.len() + 16);
    let mut last = 0;
    let mut any = false;
    for k in targets {
        let Some(&(a, b)) = toks.get(k) else { continue };
        if &line[a..b] != b"$" {
            continue;
        }
        out.extend_from_slice(&line[last..a]);
        out.extend_from_slice(replacement(uid, search).as_bytes());
        last = b;
        any = true;
    }
    if !any {
        return None;
    }
    out.extend_from_slice(&line[last..]);
    Some(out)
}

/// One token of a LIST line: a quoted string (kept with its quotes), an
/// atom-like word, or a parenthesis.
fn tokens(s: &str) -> Option<Vec<String>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' => i += 1,
            b'(' | b')' => {
                out.push((b[i] as char).to_string());
                i += 1;
            }
            b'"' => {
                let start = i;
                i += 1;
                loop {
                    match b.get(i)? {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                out.push(s[start..i].to_string());
            }
            b'{' => return None, // literals: not in the extended form
            _ => {
                let start = i;
                while i < b.len() && !matches!(b[i], b' ' | b'(' | b')' | b'"') {
                    i += 1;
                }
                out.push(s[start..i].to_string());
            }
        }
    }
    Some(out)
}

/// Let imap-codec validate `reference pattern` as a basic LIST; the raw
/// (still modified-UTF-7) reference and pattern.
fn codec_list(reference: &str, pattern: &str) -> Option<(String, String)> {
    use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
    let line = format!("x LIST {reference} {pattern}\r\n");
    let (_, cmd) = CommandCodec::default().decode(line.as_bytes()).ok()?;
    let CommandBody::List {
        reference,
        mailbox_wildcard,
    } = cmd.body
    else {
        return None;
    };
    let r = match reference {
        Mailbox::Inbox => "INBOX".to_string(),
        Mailbox::Other(o) => String::from_utf8_lossy(o.inner().as_ref()).into_owned(),
    };
    let p = match mailbox_wildcard {
        ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).into_owned(),
        ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).into_owned(),
    };
    Some((r, p))
}

/// STATUS items, validated by imap-codec.
fn codec_status_items(items: &[String]) -> Option<Vec<StatusDataItemName>> {
    let line = format!("x STATUS INBOX ({})\r\n", items.join(" "));
    let (_, cmd) = CommandCodec::default().decode(line.as_bytes()).ok()?;
    match cmd.body {
        CommandBody::Status { item_names, .. } => Some(item_names.iter().cloned().collect()),
        _ => None,
    }
}

/// Parse `LIST [(sel-opts)] ref (pat / (pats)) [RETURN (ret-opts)]` after
/// the command word. `None`: not a LIST-EXTENDED form we understand;
/// `Some(Err(reason))`: a BAD.
pub(crate) fn parse_list(args: &str) -> Option<Result<ListExt, &'static str>> {
    let t = tokens(args)?;
    let mut ext = ListExt::default();
    let mut i = 0;
    let mut extended = false;
    // Selection options.
    if t.first().map(String::as_str) == Some("(") {
        extended = true;
        i = 1;
        let mut any_base = false;
        while i < t.len() && t[i] != ")" {
            match t[i].to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => {
                    ext.sel_subscribed = true;
                    any_base = true;
                }
                "SPECIAL-USE" => {
                    ext.sel_special_use = true;
                    any_base = true;
                }
                "REMOTE" => {}
                "RECURSIVEMATCH" => ext.recursive_match = true,
                _ => return Some(Err("Unknown LIST selection option")),
            }
            i += 1;
        }
        if i >= t.len() {
            return Some(Err("Unbalanced selection options"));
        }
        i += 1;
        if ext.recursive_match && !any_base {
            return Some(Err("RECURSIVEMATCH needs another selection option"));
        }
    }
    // Reference.
    let reference = t.get(i)?.clone();
    if reference == "(" || reference == ")" {
        return Some(Err("Missing reference name"));
    }
    i += 1;
    // Pattern(s).
    let mut pats = Vec::new();
    match t.get(i).map(String::as_str) {
        Some("(") => {
            extended = true;
            i += 1;
            while i < t.len() && t[i] != ")" {
                pats.push(t[i].clone());
                i += 1;
            }
            if i >= t.len() || pats.is_empty() {
                return Some(Err("Bad pattern list"));
            }
            i += 1;
        }
        Some(")") | None => return Some(Err("Missing mailbox pattern")),
        Some(p) => {
            pats.push(p.to_string());
            i += 1;
        }
    }
    // Return options.
    if i < t.len() {
        if !t[i].eq_ignore_ascii_case("RETURN") || t.get(i + 1).map(String::as_str) != Some("(") {
            return Some(Err("Expected RETURN (...)"));
        }
        extended = true;
        i += 2;
        while i < t.len() && t[i] != ")" {
            match t[i].to_ascii_uppercase().as_str() {
                "SUBSCRIBED" => ext.ret_subscribed = true,
                "CHILDREN" | "SPECIAL-USE" => {} // always returned
                "STATUS" => {
                    if t.get(i + 1).map(String::as_str) != Some("(") {
                        return Some(Err("STATUS needs a list of items"));
                    }
                    let mut items = Vec::new();
                    i += 2;
                    while i < t.len() && t[i] != ")" {
                        items.push(t[i].clone());
                        i += 1;
                    }
                    let Some(items) = codec_status_items(&items) else {
                        return Some(Err("Bad STATUS items"));
                    };
                    ext.ret_status = Some(items);
                }
                _ => return Some(Err("Unknown LIST return option")),
            }
            i += 1;
        }
        if i >= t.len() {
            return Some(Err("Unbalanced return options"));
        }
        i += 1;
    }
    if i != t.len() {
        return Some(Err("Unexpected text after LIST arguments"));
    }
    if !extended {
        return None;
    }
    for p in &pats {
        let Some((r, p)) = codec_list(&reference, p) else {
            return Some(Err("Bad mailbox name or pattern"));
        };
        ext.reference = r;
        ext.patterns.push(p);
    }
    Some(Ok(ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_return_is_peeled_off() {
        let (line, r) = strip_search_return(b"a SEARCH RETURN (MIN COUNT) FLAGGED\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(line, b"a SEARCH FLAGGED\r\n");
        assert!(r.min && r.count && !r.all && !r.max);
        let (line, r) = strip_search_return(b"a uid search return () SUBJECT {3}\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(line, b"a uid search SUBJECT {3}\r\n");
        assert!(r.all);
        let (_, r) = strip_search_return(b"a SEARCH RETURN (SAVE) ALL\r\n")
            .unwrap()
            .unwrap();
        assert!(r.save && !r.all);
        assert!(
            strip_search_return(b"a SEARCH RETURN (PARTIAL 1:5) ALL\r\n")
                .is_some_and(|r| r.is_err())
        );
        assert!(
            strip_search_return(b"a SEARCH RETURN ALL\r\n")
                .unwrap()
                .is_err()
        );
        assert!(strip_search_return(b"a SEARCH ALL\r\n").is_none());
    }

    #[test]
    fn dollar_is_replaced_where_it_is_a_set() {
        let rep = |uid: bool, search: bool| match (uid, search) {
            (_, true) => "UID 4:5".to_string(),
            (true, false) => "4:5".to_string(),
            (false, false) => "2:3".to_string(),
        };
        let f =
            |l: &str| substitute_dollar(l.as_bytes(), rep).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(
            f("a FETCH $ (FLAGS)\r\n").unwrap(),
            "a FETCH 2:3 (FLAGS)\r\n"
        );
        assert_eq!(
            f("a UID COPY $ Trash\r\n").unwrap(),
            "a UID COPY 4:5 Trash\r\n"
        );
        assert_eq!(
            f("a SEARCH SUBJECT \"$\" OR $ SEEN\r\n").unwrap(),
            "a SEARCH SUBJECT \"$\" OR UID 4:5 SEEN\r\n"
        );
        assert!(f("a STORE 1 +FLAGS ($)\r\n").is_none());
        assert!(f("a SELECT $\r\n").is_none());
        assert!(f("a FETCH 1 (FLAGS)\r\n").is_none());
    }

    #[test]
    fn list_extended_forms() {
        // RFC 5258 §5 examples.
        let l = parse_list(r#"(SUBSCRIBED) "" "*""#).unwrap().unwrap();
        assert!(l.sel_subscribed);
        assert_eq!(l.patterns, vec!["*"]);
        let l = parse_list(r#""" "%" RETURN (CHILDREN)"#).unwrap().unwrap();
        assert_eq!(l.patterns, vec!["%"]);
        let l = parse_list(r#"(SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)"#)
            .unwrap()
            .unwrap();
        assert!(l.recursive_match);
        let l = parse_list(r#""" ("INBOX" "Drafts" "Sent/%")"#)
            .unwrap()
            .unwrap();
        assert_eq!(l.patterns, vec!["INBOX", "Drafts", "Sent/%"]);
        let l = parse_list(r#""" % RETURN (STATUS (MESSAGES UNSEEN))"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            l.ret_status,
            Some(vec![
                StatusDataItemName::Messages,
                StatusDataItemName::Unseen
            ])
        );
        // Basic forms are left to imap-codec.
        assert!(parse_list(r#""" "*""#).is_none());
        // Errors.
        assert!(parse_list(r#"(RECURSIVEMATCH) "" "%""#).unwrap().is_err());
        assert!(parse_list(r#"(BOGUS) "" "%""#).unwrap().is_err());
        assert!(parse_list(r#""" % RETURN (BOGUS)"#).unwrap().is_err());
        assert!(
            parse_list(r#""" % RETURN (STATUS (NOPE))"#)
                .unwrap()
                .is_err()
        );
        assert!(parse_list(r#""" ("unterminated"#).is_none_or(|r| r.is_err()));
    }
}
