//! `posthorn alias import` and `posthorn virtual import`: load Sendmail's
//! `/etc/aliases` (aliases(5)) and `virtusertable` files into the directory
//! with `AddAlias`.
//!
//! The parsers are pure functions ([`parse_aliases`], [`parse_virtusertable`])
//! that collect every problem with its line number. The commands import
//! nothing unless the whole file is acceptable: features Posthorn does not
//! have (`:include:`, `|program`, `/file`, `error:` entries) are refused
//! rather than silently dropped.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use posthorn_proto::router::v1 as pb;
use posthorn_router::directory::{validate_address, validate_domain};
use tonic::Code;

use crate::admin::{self, ServerArg};

/// sysexits EX_USAGE.
const EX_USAGE: u8 = 64;
/// sysexits EX_DATAERR: the file (or an entry of it) is not acceptable.
const EX_DATAERR: u8 = 65;
/// sysexits EX_NOINPUT: the file cannot be read.
const EX_NOINPUT: u8 = 66;
/// sysexits EX_UNAVAILABLE.
const EX_UNAVAILABLE: u8 = 69;

#[derive(Subcommand)]
pub enum VirtualCmd {
    /// Import a Sendmail virtusertable (`key value` lines) as aliases.
    Import {
        /// The virtusertable source file (not the compiled .db).
        file: PathBuf,
        /// Parse and print what would be imported; do not contact the server.
        #[arg(long)]
        dry_run: bool,
    },
}

/// One alias to set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Line the entry starts on (1-based).
    pub line: usize,
    /// aliases(5): the name (`local`, or `local@domain` if written so);
    /// virtusertable: the key (`user@domain` or `@domain`). Lower-cased.
    pub alias: String,
    /// Targets as the router takes them (`name`, `user@domain`, `@domain`).
    pub targets: Vec<String>,
}

/// A warning or error about one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub line: usize,
    pub message: String,
}

/// The result of parsing a file: usable only if `errors` is empty.
#[derive(Debug, Default)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub warnings: Vec<Note>,
    pub errors: Vec<Note>,
}

impl Parsed {
    fn error(&mut self, line: usize, message: impl Into<String>) {
        self.errors.push(Note {
            line,
            message: message.into(),
        });
    }

    /// Add an entry; a later entry of the same name replaces the earlier one.
    fn add(&mut self, index: &mut HashMap<String, usize>, entry: Entry) {
        if let Some(&i) = index.get(&entry.alias) {
            let earlier = self.entries[i].line;
            self.warnings.push(Note {
                line: entry.line,
                message: format!(
                    "`{}` is also defined on line {earlier}; the later definition wins",
                    entry.alias
                ),
            });
            self.entries[i] = entry;
        } else {
            index.insert(entry.alias.clone(), self.entries.len());
            self.entries.push(entry);
        }
    }
}

/// Lines of a file: (1-based number, text without the line ending).
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

/// Blank, whitespace-only, and `#` comment lines (first non-blank `#`).
fn ignorable(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// Why `local` is not a local part the router accepts (the same rules as
/// the router's address validation: a dot-atom without `%` or `!`).
fn local_part_problem(local: &str) -> Option<&'static str> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "#$&'*+-/=?^_`{|}~.".contains(c);
    if local.is_empty() {
        Some("it is empty")
    } else if local.len() > 64 {
        Some("it is longer than 64 characters")
    } else if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        Some("dots may not lead, trail or repeat")
    } else if local.contains('%') || local.contains('!') {
        Some("`%` and `!` routing is not allowed")
    } else if !local.chars().all(|c| ok_char(c) || !c.is_ascii()) {
        Some("only letters, digits and !#$&'*+-/=?^_`{|}~. are allowed")
    } else {
        None
    }
}

/// Check one target (already unquoted); returns it as the router takes it.
fn check_target(t: &str) -> Result<String, String> {
    let lower = t.to_ascii_lowercase();
    if lower.starts_with(":include:") {
        return Err(format!(
            "`{t}`: `:include:` is not supported; list the addresses instead"
        ));
    }
    if t.starts_with('|') {
        return Err(format!("`{t}`: program delivery is not supported"));
    }
    if t.starts_with('/') {
        return Err(format!(
            "`{t}`: delivery to a file is not supported; deliver to an account instead"
        ));
    }
    if lower.starts_with("error:") {
        return Err(format!(
            "`{t}`: `error:` entries (rejecting mail) are not supported yet"
        ));
    }
    if t.chars().any(char::is_whitespace) {
        let hint = if t.contains('#') {
            "; `#` starts a comment only at the beginning of a line"
        } else {
            ""
        };
        return Err(format!(
            "`{t}` is not one address (separate targets with commas{hint})"
        ));
    }
    if t.contains('@') {
        return validate_address(t).map_err(|s| s.message().to_string());
    }
    match local_part_problem(t) {
        Some(why) => Err(format!("`{t}` is not a valid local name: {why}")),
        None => Ok(t.to_string()),
    }
}

/// Split the right-hand side of an alias at commas outside double quotes,
/// dropping `(comments)`. Returns (byte offset, raw text) of each non-empty
/// target.
fn split_targets(s: &str) -> Result<Vec<(usize, String)>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start: Option<usize> = None;
    let (mut in_quote, mut escaped, mut paren) = (false, false, 0usize);
    let mut flush = |cur: &mut String, start: &mut Option<usize>| {
        let t = cur.trim();
        if let Some(at) = start.take()
            && !t.is_empty()
        {
            out.push((at, t.to_string()));
        }
        cur.clear();
    };
    for (i, c) in s.char_indices() {
        if in_quote {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quote = false;
            }
            continue;
        }
        if paren > 0 {
            match c {
                '(' => paren += 1,
                ')' => paren -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_quote = true;
                start.get_or_insert(i);
                cur.push(c);
            }
            '(' => paren = 1,
            ',' => flush(&mut cur, &mut start),
            c => {
                if !c.is_whitespace() {
                    start.get_or_insert(i);
                }
                cur.push(c);
            }
        }
    }
    if in_quote {
        return Err("unterminated `\"` quote".into());
    }
    if paren > 0 {
        return Err("unterminated `(` comment".into());
    }
    flush(&mut cur, &mut start);
    Ok(out)
}

/// `Name <addr>` → `addr`; `"text"` → `text` (with `\x` → `x`); a leading
/// `\` (Sendmail: no further aliasing) dropped. Returns (target, had backslash).
fn unwrap_target(raw: &str) -> (String, bool) {
    let mut t = raw.trim();
    if t.ends_with('>')
        && let Some(open) = t.rfind('<')
    {
        t = t[open + 1..t.len() - 1].trim();
    }
    let mut s = if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        let mut out = String::new();
        let mut chars = t[1..t.len() - 1].chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out.trim().to_string()
    } else {
        t.to_string()
    };
    let backslash = s.starts_with('\\');
    if backslash {
        s = s[1..].to_string();
    }
    (s, backslash)
}

/// A logical aliases(5) entry: its text (continuation lines joined with a
/// space) and where each physical line starts in it.
struct Logical {
    text: String,
    /// (byte offset in `text`, line number), ascending.
    starts: Vec<(usize, usize)>,
}

impl Logical {
    fn line_at(&self, offset: usize) -> usize {
        self.starts
            .iter()
            .rev()
            .find(|(o, _)| *o <= offset)
            .map_or(self.starts[0].1, |(_, l)| *l)
    }
}

/// Parse Sendmail aliases(5): `name: target, target, ...`.
///
/// Lines whose first non-blank character is `#`, and blank lines, are
/// ignored (Postfix's rule; they do not end a continued entry). A line
/// starting with a space or tab continues the previous entry. Targets are
/// separated by commas; `"quoted"` targets, `Name <addr>`, `(comments)` and
/// trailing commas are accepted. `:include:`, `|program` and `/file`
/// targets are errors. A name defined twice: the later definition wins,
/// with a warning.
pub fn parse_aliases(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut logical: Vec<Logical> = Vec::new();
    for (n, line) in lines(text) {
        if ignorable(line) {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            match logical.last_mut() {
                Some(l) => {
                    l.text.push(' ');
                    l.starts.push((l.text.len(), n));
                    l.text.push_str(line.trim());
                }
                None => parsed.error(
                    n,
                    "a continuation line (starting with whitespace) with no entry before it",
                ),
            }
        } else {
            logical.push(Logical {
                text: line.trim_end().to_string(),
                starts: vec![(0, n)],
            });
        }
    }
    let mut index = HashMap::new();
    for l in logical {
        let line = l.starts[0].1;
        let Some((name, rhs)) = l.text.split_once(':') else {
            parsed.error(line, "expected `name: target, target, ...` (no `:` found)");
            continue;
        };
        let rhs_offset = name.len() + 1;
        let name = name.trim().to_ascii_lowercase();
        let mut ok = true;
        if name.is_empty() {
            parsed.error(line, "missing alias name before `:`");
            ok = false;
        } else if name.contains('@') {
            if let Err(s) = validate_address(&name) {
                parsed.error(line, format!("alias name: {}", s.message()));
                ok = false;
            }
        } else if let Some(why) = local_part_problem(&name) {
            parsed.error(line, format!("alias name `{name}` is not valid: {why}"));
            ok = false;
        }
        let raw = match split_targets(rhs) {
            Ok(r) => r,
            Err(e) => {
                parsed.error(line, format!("`{name}`: {e}"));
                continue;
            }
        };
        let mut targets = Vec::new();
        for (offset, raw) in raw {
            let at = l.line_at(rhs_offset + offset);
            let (t, backslash) = unwrap_target(&raw);
            match check_target(&t) {
                Ok(t) => {
                    let local = name.split('@').next().unwrap_or_default();
                    if backslash && !t.eq_ignore_ascii_case(local) && !t.contains('@') {
                        parsed.warnings.push(Note {
                            line: at,
                            message: format!(
                                "`{raw}`: the `\\` (deliver without further aliasing) is dropped; \
                                 an alias named `{t}` would apply"
                            ),
                        });
                    }
                    targets.push(t);
                }
                Err(e) => {
                    parsed.error(at, e);
                    ok = false;
                }
            }
        }
        if ok && targets.is_empty() {
            parsed.error(line, format!("`{name}` has no targets"));
            ok = false;
        }
        if ok {
            parsed.add(
                &mut index,
                Entry {
                    line,
                    alias: name,
                    targets,
                },
            );
        }
    }
    parsed.errors.sort_by_key(|e| e.line);
    parsed
}

/// Parse a Sendmail virtusertable source: `key value` per line.
///
/// Keys are `user@domain` or `@domain` (catch-all). Values are an address,
/// a local name (qualified by the router with the key's domain), or, for a
/// catch-all key, `%1@domain` (the same user at another domain; stored as
/// the catch-all target `@domain`). `error:` values, `user+*@domain` keys
/// and other `%` forms are errors. Comments (`#`) and blank lines are
/// ignored; a key given twice: the later line wins, with a warning.
pub fn parse_virtusertable(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut index = HashMap::new();
    for (n, line) in lines(text) {
        if ignorable(line) {
            continue;
        }
        let line = line.trim();
        let (key, value) = match line.split_once(char::is_whitespace) {
            Some((k, v)) => (k.to_ascii_lowercase(), v.trim()),
            None => (line.to_ascii_lowercase(), ""),
        };
        let mut ok = true;
        let catch_all = key.starts_with('@');
        let key = if let Some(domain) = key.strip_prefix('@') {
            match validate_domain(domain) {
                Ok(d) => format!("@{d}"),
                Err(s) => {
                    parsed.error(n, format!("key `{key}`: {}", s.message()));
                    ok = false;
                    key
                }
            }
        } else if !key.contains('@') {
            parsed.error(
                n,
                format!("key `{key}` has no domain; expected `user@domain` or `@domain`"),
            );
            ok = false;
            key
        } else if key.split('@').next().is_some_and(|l| l.ends_with("+*")) {
            parsed.error(
                n,
                format!(
                    "key `{key}`: `user+*@domain` keys (subaddress matching) are not supported"
                ),
            );
            ok = false;
            key
        } else {
            match validate_address(&key) {
                Ok(k) => k,
                Err(s) => {
                    parsed.error(n, format!("key: {}", s.message()));
                    ok = false;
                    key
                }
            }
        };
        let target = if value.is_empty() {
            Err(format!("`{key}` has no value"))
        } else if value.to_ascii_lowercase().starts_with("error:") {
            Err(format!(
                "`{value}`: `error:` entries (rejecting mail) are not supported yet"
            ))
        } else if value.split_whitespace().nth(1).is_some() {
            Err(format!("`{value}`: expected one target after the key"))
        } else if let Some(domain) = value.strip_prefix("%1@") {
            if !catch_all {
                Err(format!(
                    "`{value}`: `%1` (the user part of the key) needs a catch-all key `@domain`"
                ))
            } else {
                validate_domain(domain)
                    .map(|d| format!("@{d}"))
                    .map_err(|s| format!("`{value}`: {}", s.message()))
            }
        } else if value.contains('%') {
            Err(format!(
                "`{value}`: only `%1@domain` is supported among the `%` forms"
            ))
        } else if value.starts_with('@') {
            Err(format!(
                "`{value}`: not a virtusertable value; write `%1{value}` for the same user at that domain"
            ))
        } else {
            check_target(value)
        };
        match target {
            Ok(t) if ok => parsed.add(
                &mut index,
                Entry {
                    line: n,
                    alias: key,
                    targets: vec![t],
                },
            ),
            Ok(_) => {}
            Err(e) => parsed.error(n, e),
        }
    }
    parsed
}

/// The address of an aliases(5) name in `domain`.
pub fn qualify(name: &str, domain: &str) -> String {
    if name.contains('@') {
        name.to_string()
    } else {
        format!("{name}@{domain}")
    }
}

/// The domain part of an alias (`user@d` or `@d`).
fn domain_of(alias: &str) -> &str {
    alias.rsplit_once('@').map_or("", |(_, d)| d)
}

/// `posthorn alias import FILE [--domain D] [--dry-run]`.
pub fn alias_import(
    server: &ServerArg,
    file: &Path,
    domain: Option<String>,
    dry_run: bool,
) -> ExitCode {
    let domain = match domain.map(|d| validate_domain(&d)).transpose() {
        Ok(d) => d,
        Err(s) => {
            eprintln!("posthorn: --domain: {}", s.message());
            return ExitCode::from(EX_USAGE);
        }
    };
    let entries = match load(file, parse_aliases) {
        Ok(e) => e,
        Err(code) => return code,
    };
    if dry_run {
        let shown = domain.as_deref().unwrap_or("<first local domain>");
        for e in &entries {
            println!("{}: {}", qualify(&e.alias, shown), e.targets.join(", "));
        }
        println!(
            "would import {} aliases (dry run: nothing sent)",
            entries.len()
        );
        return ExitCode::SUCCESS;
    }
    block_on(async move {
        let mut c = admin::connect(server.url()).await?;
        let domains = c
            .list_domains(pb::ListDomainsRequest {})
            .await
            .map_err(|s| refused(file, None, s))?
            .into_inner()
            .domains;
        let domain = match domain {
            Some(d) if domains.contains(&d) => d,
            Some(d) => {
                eprintln!(
                    "posthorn: {d} is not a local domain (add it first: posthorn domain add {d}); nothing imported"
                );
                return Err(ExitCode::from(EX_DATAERR));
            }
            None => match domains.first() {
                Some(d) => d.clone(),
                None => {
                    eprintln!(
                        "posthorn: there are no local domains; add one (posthorn domain add DOMAIN) or give --domain; nothing imported"
                    );
                    return Err(ExitCode::from(EX_DATAERR));
                }
            },
        };
        let entries: Vec<Entry> = entries
            .into_iter()
            .map(|e| Entry {
                alias: qualify(&e.alias, &domain),
                ..e
            })
            .collect();
        send(&mut c, file, entries, &domains).await
    })
}

/// `posthorn virtual import FILE [--dry-run]`.
pub fn virtual_import(server: &ServerArg, cmd: VirtualCmd) -> ExitCode {
    let VirtualCmd::Import { file, dry_run } = cmd;
    let entries = match load(&file, parse_virtusertable) {
        Ok(e) => e,
        Err(code) => return code,
    };
    if dry_run {
        for e in &entries {
            println!("{}: {}", e.alias, e.targets.join(", "));
        }
        println!(
            "would import {} aliases (dry run: nothing sent)",
            entries.len()
        );
        return ExitCode::SUCCESS;
    }
    block_on(async move {
        let mut c = admin::connect(server.url()).await?;
        let domains = c
            .list_domains(pb::ListDomainsRequest {})
            .await
            .map_err(|s| refused(&file, None, s))?
            .into_inner()
            .domains;
        send(&mut c, &file, entries, &domains).await
    })
}

/// Read and parse `file`; print warnings; print every error and refuse.
fn load(file: &Path, parse: fn(&str) -> Parsed) -> Result<Vec<Entry>, ExitCode> {
    let bytes = std::fs::read(file).map_err(|e| {
        eprintln!("posthorn: cannot read {}: {e}", file.display());
        ExitCode::from(EX_NOINPUT)
    })?;
    let parsed = parse(&String::from_utf8_lossy(&bytes));
    for w in &parsed.warnings {
        eprintln!(
            "posthorn: warning: {}:{}: {}",
            file.display(),
            w.line,
            w.message
        );
    }
    if parsed.errors.is_empty() {
        return Ok(parsed.entries);
    }
    for e in &parsed.errors {
        eprintln!("posthorn: {}:{}: {}", file.display(), e.line, e.message);
    }
    eprintln!(
        "posthorn: {}: {} error(s); nothing imported",
        file.display(),
        parsed.errors.len()
    );
    Err(ExitCode::from(EX_DATAERR))
}

/// How to undo one alias already set by an import.
#[derive(Debug, PartialEq, Eq)]
enum Undo {
    /// It existed before: put these targets back.
    Restore(String, Vec<String>),
    /// It is new: remove it.
    Remove(String),
}

/// Undo steps for the aliases `sent` (in order), given the aliases that
/// existed before the import; the last one set is undone first.
fn rollback_plan(before: &HashMap<String, Vec<String>>, sent: &[String]) -> Vec<Undo> {
    sent.iter()
        .rev()
        .map(|a| match before.get(a) {
            Some(t) => Undo::Restore(a.clone(), t.clone()),
            None => Undo::Remove(a.clone()),
        })
        .collect()
}

/// Check every alias is in a local domain (all or nothing), then AddAlias
/// each. If the router refuses one midway, the aliases already set are put
/// back as they were, so a failed import leaves the directory unchanged.
async fn send(
    c: &mut admin::Client,
    file: &Path,
    entries: Vec<Entry>,
    domains: &[String],
) -> Result<(), ExitCode> {
    let mut bad = 0;
    for e in &entries {
        let d = domain_of(&e.alias);
        if !domains.iter().any(|x| x == d) {
            eprintln!(
                "posthorn: {}:{}: `{}`: {d} is not a local domain (add it first: posthorn domain add {d})",
                file.display(),
                e.line,
                e.alias
            );
            bad += 1;
        }
    }
    if bad > 0 {
        eprintln!(
            "posthorn: {}: {bad} error(s); nothing imported",
            file.display()
        );
        return Err(ExitCode::from(EX_DATAERR));
    }
    let before: HashMap<String, Vec<String>> = c
        .list_aliases(pb::ListAliasesRequest {})
        .await
        .map_err(|s| refused(file, None, s))?
        .into_inner()
        .aliases
        .into_iter()
        .map(|a| (a.alias, a.targets))
        .collect();
    let total = entries.len();
    let mut sent = Vec::new();
    for e in entries {
        let r = c
            .add_alias(pb::AddAliasRequest {
                alias: e.alias.clone(),
                targets: e.targets,
            })
            .await;
        if let Err(s) = r {
            let code = refused(file, Some((e.line, &e.alias)), s);
            rollback(c, &before, &sent, total).await;
            return Err(code);
        }
        sent.push(e.alias);
    }
    println!("imported {total} aliases");
    Ok(())
}

/// Undo a partial import, reporting anything that could not be undone.
async fn rollback(
    c: &mut admin::Client,
    before: &HashMap<String, Vec<String>>,
    sent: &[String],
    total: usize,
) {
    let mut failed = 0;
    for step in rollback_plan(before, sent) {
        let (alias, r) = match step {
            Undo::Restore(alias, targets) => {
                let r = c
                    .add_alias(pb::AddAliasRequest {
                        alias: alias.clone(),
                        targets,
                    })
                    .await
                    .map(|_| ());
                (alias, r)
            }
            Undo::Remove(alias) => {
                let r = c
                    .remove_alias(pb::RemoveAliasRequest {
                        alias: alias.clone(),
                    })
                    .await
                    .map(|_| ());
                (alias, r)
            }
        };
        if let Err(s) = r {
            eprintln!(
                "posthorn: could not undo `{alias}`: {}; check it with `posthorn alias list`",
                s.message()
            );
            failed += 1;
        }
    }
    if failed == 0 {
        eprintln!(
            "posthorn: import stopped at entry {} of {total}; the {} aliases already set were rolled back; nothing imported",
            sent.len() + 1,
            sent.len()
        );
    } else {
        eprintln!(
            "posthorn: import stopped at entry {} of {total}; {failed} of the {} aliases already set could not be rolled back",
            sent.len() + 1,
            sent.len()
        );
    }
}

/// Report a refused call; the exit code for it.
fn refused(file: &Path, at: Option<(usize, &str)>, s: tonic::Status) -> ExitCode {
    match at {
        Some((line, alias)) => eprintln!(
            "posthorn: {}:{line}: `{alias}`: {}",
            file.display(),
            s.message()
        ),
        None => eprintln!("posthorn: {}", s.message()),
    }
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded => ExitCode::from(EX_UNAVAILABLE),
        Code::InvalidArgument | Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition => {
            ExitCode::from(EX_DATAERR)
        }
        _ => ExitCode::FAILURE,
    }
}

fn block_on<F>(f: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), ExitCode>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("posthorn: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(p: &Parsed) -> Vec<(usize, &str, Vec<&str>)> {
        p.entries
            .iter()
            .map(|e| {
                (
                    e.line,
                    e.alias.as_str(),
                    e.targets.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    fn lines_of(notes: &[Note]) -> Vec<usize> {
        notes.iter().map(|n| n.line).collect()
    }

    #[test]
    fn aliases_accepted() {
        type Want = &'static [(usize, &'static str, &'static [&'static str])];
        let cases: &[(&str, &str, Want)] = &[
            (
                "simple",
                "team: alice, bob\n",
                &[(1, "team", &["alice", "bob"])],
            ),
            (
                "comments and blank lines",
                "# header\n\npostmaster: root\n   # indented comment\nroot: alice\n",
                &[(3, "postmaster", &["root"]), (5, "root", &["alice"])],
            ),
            (
                "continuation lines",
                "staff: alice,\n  bob,\n\tcarol@elsewhere.test\nx: y\n",
                &[
                    (1, "staff", &["alice", "bob", "carol@elsewhere.test"]),
                    (4, "x", &["y"]),
                ],
            ),
            (
                "continuation after a comment line",
                "staff: alice,\n# bob left\n  carol\n",
                &[(1, "staff", &["alice", "carol"])],
            ),
            (
                "trailing and doubled commas",
                "team: alice,, bob,\n",
                &[(1, "team", &["alice", "bob"])],
            ),
            (
                "CRLF line endings",
                "# c\r\nteam: alice,\r\n  bob\r\nroot: alice\r\n",
                &[(2, "team", &["alice", "bob"]), (4, "root", &["alice"])],
            ),
            (
                "quoted targets",
                "a: \"alice\", \"bob@example.org\"\n",
                &[(1, "a", &["alice", "bob@example.org"])],
            ),
            (
                "angle brackets and comments",
                "a: Alice Smith <alice@example.org>, bob (Bob B.)\n",
                &[(1, "a", &["alice@example.org", "bob"])],
            ),
            (
                "backslash on own name",
                "alice: \\alice, alice@archive.test\n",
                &[(1, "alice", &["alice", "alice@archive.test"])],
            ),
            (
                "case folded, addresses normalised, no space after colon",
                "Team:Alice@Example.ORG\n",
                &[(1, "team", &["alice@example.org"])],
            ),
            (
                "name with a domain",
                "sales@other.test: alice\n",
                &[(1, "sales@other.test", &["alice"])],
            ),
            (
                "byte order mark",
                "\u{feff}team: alice\n",
                &[(1, "team", &["alice"])],
            ),
            (
                "no final newline",
                "team: alice",
                &[(1, "team", &["alice"])],
            ),
            ("empty file", "", &[]),
        ];
        for (what, text, want) in cases {
            let p = parse_aliases(text);
            assert!(p.errors.is_empty(), "{what}: {:?}", p.errors);
            let want: Vec<(usize, &str, Vec<&str>)> =
                want.iter().map(|(l, a, t)| (*l, *a, t.to_vec())).collect();
            assert_eq!(entries(&p), want, "{what}");
        }
    }

    #[test]
    fn aliases_refused() {
        // (what, text, error lines, a fragment of the first error)
        let cases: &[(&str, &str, &[usize], &str)] = &[
            (
                ":include:",
                "list: :include:/etc/mail/list\n",
                &[1],
                "`:include:` is not supported; list the addresses instead",
            ),
            (
                "quoted program",
                "prog: \"|/usr/bin/prog --flag\"\n",
                &[1],
                "program delivery is not supported",
            ),
            (
                "bare program",
                "prog: |/usr/bin/prog\n",
                &[1],
                "program delivery is not supported",
            ),
            (
                "file",
                "log: alice, /var/log/mail.copy\n",
                &[1],
                "delivery to a file is not supported",
            ),
            (
                "all errors reported, with the physical line",
                "ok: alice\nlist: :include:/x\nmany: alice,\n  \"|/bin/prog\",\n  /tmp/f\n",
                &[2, 4, 5],
                ":include:",
            ),
            ("no colon", "alice bob\n", &[1], "no `:` found"),
            ("no targets", "empty:\n", &[1], "no targets"),
            ("only commas", "empty: , ,\n", &[1], "no targets"),
            (
                "missing comma",
                "team: alice bob\n",
                &[1],
                "separate targets with commas",
            ),
            (
                "mid-line hash",
                "team: alice # the boss\n",
                &[1],
                "`#` starts a comment only",
            ),
            (
                "unterminated quote",
                "p: \"|/bin/prog\n",
                &[1],
                "unterminated",
            ),
            (
                "continuation first",
                "  alice\nteam: bob\n",
                &[1],
                "continuation line",
            ),
            ("bad name", "a..b: alice\n", &[1], "alias name"),
            ("empty name", ": alice\n", &[1], "missing alias name"),
            (
                "bad address target",
                "a: bob@@x.test\n",
                &[1],
                "invalid address",
            ),
            ("percent hack", "a: bob%x.test\n", &[1], "`%` and `!`"),
        ];
        for (what, text, want_lines, fragment) in cases {
            let p = parse_aliases(text);
            assert_eq!(lines_of(&p.errors), *want_lines, "{what}: {:?}", p.errors);
            assert!(
                p.errors[0].message.contains(fragment),
                "{what}: {:?}",
                p.errors
            );
        }
    }

    #[test]
    fn alias_duplicates_later_wins_with_a_warning() {
        let p = parse_aliases("team: alice\nroot: bob\nTEAM: carol,\n  dave\n");
        assert!(p.errors.is_empty());
        assert_eq!(
            entries(&p),
            vec![(3, "team", vec!["carol", "dave"]), (2, "root", vec!["bob"])]
        );
        assert_eq!(lines_of(&p.warnings), vec![3]);
        assert!(p.warnings[0].message.contains("line 1"), "{:?}", p.warnings);
    }

    #[test]
    fn alias_backslash_to_another_name_warns() {
        let p = parse_aliases("a: \\bob\n");
        assert!(p.errors.is_empty());
        assert_eq!(entries(&p), vec![(1, "a", vec!["bob"])]);
        assert_eq!(lines_of(&p.warnings), vec![1]);
    }

    #[test]
    fn virtusertable_accepted() {
        type Want = &'static [(usize, &'static str, &'static [&'static str])];
        let cases: &[(&str, &str, Want)] = &[
            (
                "address, local name, catch-all",
                "info@example.test\talice@example.test\nsales@example.test   bob\n@example.test %1@other.test\n",
                &[
                    (1, "info@example.test", &["alice@example.test"]),
                    (2, "sales@example.test", &["bob"]),
                    (3, "@example.test", &["@other.test"]),
                ],
            ),
            (
                "catch-all to one address",
                "# c\n\n@Example.TEST  Postmaster@Example.TEST\r\n",
                &[(3, "@example.test", &["postmaster@example.test"])],
            ),
            (
                "trailing whitespace and CRLF",
                "info@example.test alice  \r\n",
                &[(1, "info@example.test", &["alice"])],
            ),
        ];
        for (what, text, want) in cases {
            let p = parse_virtusertable(text);
            assert!(p.errors.is_empty(), "{what}: {:?}", p.errors);
            let want: Vec<(usize, &str, Vec<&str>)> =
                want.iter().map(|(l, a, t)| (*l, *a, t.to_vec())).collect();
            assert_eq!(entries(&p), want, "{what}");
        }
    }

    #[test]
    fn virtusertable_refused() {
        let cases: &[(&str, &str, &[usize], &str)] = &[
            (
                "error:nouser",
                "bad@example.test error:nouser User unknown\n",
                &[1],
                "`error:` entries",
            ),
            (
                "error with status",
                "bad@example.test error:5.7.0:550 Address invalid\n",
                &[1],
                "not supported yet",
            ),
            (
                "%1 on a plain key",
                "a@example.test %1@other.test\n",
                &[1],
                "needs a catch-all key",
            ),
            (
                "%2",
                "@example.test %2@other.test\n",
                &[1],
                "only `%1@domain`",
            ),
            ("bare %1", "@example.test %1\n", &[1], "only `%1@domain`"),
            ("no value", "a@example.test\n", &[1], "no value"),
            ("no domain", "alice bob\n", &[1], "has no domain"),
            (
                "two values",
                "a@example.test bob carol\n",
                &[1],
                "expected one target",
            ),
            (
                "subaddress key",
                "a+*@example.test bob\n",
                &[1],
                "not supported",
            ),
            ("program", "a@example.test |/bin/prog\n", &[1], "program"),
            (
                "our syntax",
                "@example.test @other.test\n",
                &[1],
                "write `%1@other.test`",
            ),
            (
                "all errors",
                "ok@example.test alice\nx@example.test error:nouser no\n@y.test %3@z.test\n",
                &[2, 3],
                "error:",
            ),
        ];
        for (what, text, want_lines, fragment) in cases {
            let p = parse_virtusertable(text);
            assert_eq!(lines_of(&p.errors), *want_lines, "{what}: {:?}", p.errors);
            assert!(
                p.errors[0].message.contains(fragment),
                "{what}: {:?}",
                p.errors
            );
        }
    }

    #[test]
    fn virtusertable_duplicates_later_wins() {
        let p = parse_virtusertable("a@example.test bob\na@example.test carol\n");
        assert_eq!(entries(&p), vec![(2, "a@example.test", vec!["carol"])]);
        assert_eq!(lines_of(&p.warnings), vec![2]);
    }

    #[test]
    fn rollback_restores_replaced_and_removes_new_aliases() {
        let before = HashMap::from([("team@example.test".to_string(), vec!["alice".to_string()])]);
        let sent = [
            "new@example.test".to_string(),
            "team@example.test".to_string(),
        ];
        assert_eq!(
            rollback_plan(&before, &sent),
            vec![
                Undo::Restore("team@example.test".into(), vec!["alice".into()]),
                Undo::Remove("new@example.test".into()),
            ]
        );
        assert!(rollback_plan(&before, &[]).is_empty());
    }

    #[test]
    fn qualify_names() {
        assert_eq!(qualify("team", "example.test"), "team@example.test");
        assert_eq!(qualify("s@other.test", "example.test"), "s@other.test");
    }
}
