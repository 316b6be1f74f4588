//! Validation and flag helpers shared by both backends.

use crate::{Error, FlagOp, Result, normalize_address};

fn bad_char(c: char) -> bool {
    c.is_control() || c.is_whitespace() || c == '{' || c == '}'
}

/// A marker name is safe to embed in a storage key: not empty, no
/// whitespace, control characters or braces.
pub(crate) fn check_marker_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(bad_char) {
        return Err(Error::Invalid {
            what: "marker name",
            reason: format!("{name:?} is empty or has braces, spaces or control characters"),
        });
    }
    Ok(())
}

/// Checks of a record write: names safe in a storage key, and a listed
/// record never expires (its index entry would outlive it).
pub(crate) fn check_record(ns: &str, key: &str, put: &crate::RecordPut) -> Result<()> {
    for (what, s) in [("record namespace", ns), ("record key", key)] {
        if s.is_empty() || s.chars().any(bad_char) {
            return Err(Error::Invalid {
                what,
                reason: format!("{s:?} is empty or has braces, spaces or control characters"),
            });
        }
    }
    if put.listed && put.ttl.is_some() {
        return Err(Error::Invalid {
            what: "record",
            reason: "a listed record cannot expire".into(),
        });
    }
    Ok(())
}

/// Normalise and validate an account address (`local@domain`). The result is
/// safe to embed in a storage key: no whitespace, control characters or
/// braces (which would break Redis hash tags and so account isolation).
pub(crate) fn account_id(address: &str) -> Result<String> {
    let a = normalize_address(address);
    let invalid = |reason: &str| Error::Invalid {
        what: "address",
        reason: format!("{a:?}: {reason}"),
    };
    if a.len() > 320 {
        return Err(invalid("too long"));
    }
    if a.chars().any(bad_char) {
        return Err(invalid(
            "contains whitespace, a control character or a brace",
        ));
    }
    match a.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
            if domain.contains('@') {
                return Err(invalid("more than one `@`"));
            }
            Ok(a)
        }
        _ => Err(invalid("not of the form local@domain")),
    }
}

/// The domain part of a validated account id.
pub(crate) fn domain_of(account: &str) -> &str {
    account.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// Normalise and validate a domain name.
pub(crate) fn domain_id(domain: &str) -> Result<String> {
    let d = normalize_address(domain);
    if d.is_empty() || d.len() > 255 || d.contains('@') || d.chars().any(bad_char) {
        return Err(Error::Invalid {
            what: "domain",
            reason: format!("{d:?} is not a valid domain name"),
        });
    }
    Ok(d)
}

/// Normalise and validate an alias address: `local@domain` or `@domain`.
pub(crate) fn alias_id(address: &str) -> Result<String> {
    let a = normalize_address(address);
    if let Some(domain) = a.strip_prefix('@') {
        domain_id(domain).map_err(|_| Error::Invalid {
            what: "alias",
            reason: format!("{a:?} is not a valid catch-all"),
        })?;
        return Ok(a);
    }
    account_id(&a).map_err(|e| Error::Invalid {
        what: "alias",
        reason: e.to_string(),
    })
}

/// Validate a blob key (content address): non-empty, no whitespace, control
/// characters or braces.
pub(crate) fn check_blob_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > 512 || key.chars().any(bad_char) {
        return Err(Error::Invalid {
            what: "blob key",
            reason: format!("{key:?}"),
        });
    }
    Ok(())
}

/// Validate flags (IMAP atoms or `\System` flags): non-empty, no whitespace or
/// control characters.
pub(crate) fn check_flags(flags: &[String]) -> Result<()> {
    for f in flags {
        if f.is_empty() || f.len() > 256 || f.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::Invalid {
                what: "flag",
                reason: format!("{f:?}"),
            });
        }
    }
    Ok(())
}

/// Remove case-insensitive duplicates, keeping the first spelling.
pub(crate) fn dedup_flags(flags: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(flags.len());
    for f in flags {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(f)) {
            out.push(f.clone());
        }
    }
    out
}

/// Apply a STORE operation (flags compared case-insensitively).
pub(crate) fn apply_flags(current: &[String], op: FlagOp, flags: &[String]) -> Vec<String> {
    match op {
        FlagOp::Set => dedup_flags(flags),
        FlagOp::Add => {
            let mut out = current.to_vec();
            for f in flags {
                if !out.iter().any(|o| o.eq_ignore_ascii_case(f)) {
                    out.push(f.clone());
                }
            }
            out
        }
        FlagOp::Remove => current
            .iter()
            .filter(|c| !flags.iter().any(|f| f.eq_ignore_ascii_case(c)))
            .cloned()
            .collect(),
    }
}

/// Whether the flags contain `\Seen`.
pub(crate) fn is_seen(flags: &[String]) -> bool {
    flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen"))
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A fresh UIDVALIDITY: the current time, or one more than the last one
/// handed out if that is not smaller, never 0.
pub(crate) fn next_uidvalidity(last: u32) -> u32 {
    let now = u32::try_from(now_secs()).unwrap_or(u32::MAX);
    let v = if now > last {
        now
    } else {
        last.wrapping_add(1)
    };
    v.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts() {
        assert_eq!(
            account_id(" Alice@Example.TEST ").unwrap(),
            "alice@example.test"
        );
        for bad in ["", "alice", "@x", "a@", "a@b@c", "a b@c", "a{x}@c", "a}@c"] {
            assert!(account_id(bad).is_err(), "{bad}");
        }
        assert_eq!(domain_of("a@b.c"), "b.c");
        assert_eq!(alias_id("@Example.test").unwrap(), "@example.test");
        assert!(alias_id("@").is_err());
    }

    #[test]
    fn mailbox_names() {
        use crate::validate_mailbox_name as v;
        assert_eq!(v("inbox").unwrap(), "INBOX");
        assert_eq!(v("InBoX/Sub").unwrap(), "INBOX/Sub");
        assert_eq!(v("Inboxes").unwrap(), "Inboxes");
        assert_eq!(v("Archive/2024").unwrap(), "Archive/2024");
        assert_eq!(v("Entwürfe").unwrap(), "Entwürfe");
        for bad in [
            "", "../x", "x/..", "a//b", "/a", "a/", ".", "a/./b", "*", "a%", "a\nb", "a\u{7f}",
        ] {
            assert!(v(bad).is_err(), "{bad:?} accepted");
        }
        assert!(v(&"x".repeat(1001)).is_err());
        assert!(v(&"x".repeat(1000)).is_ok());
    }

    #[test]
    fn flags() {
        let cur = vec!["\\Seen".to_string(), "$Junk".to_string()];
        let add = apply_flags(&cur, FlagOp::Add, &["\\seen".into(), "\\Flagged".into()]);
        assert_eq!(add, vec!["\\Seen", "$Junk", "\\Flagged"]);
        let rem = apply_flags(&cur, FlagOp::Remove, &["\\SEEN".into()]);
        assert_eq!(rem, vec!["$Junk"]);
        let set = apply_flags(&cur, FlagOp::Set, &["a".into(), "A".into()]);
        assert_eq!(set, vec!["a"]);
        assert!(is_seen(&cur));
        assert!(check_flags(&["a b".into()]).is_err());
    }
}
