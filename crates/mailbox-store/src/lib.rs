//! Mailbox metadata and the directory, behind one trait ([`MetaStore`]).
//!
//! Two implementations share one conformance suite ([`conformance`]):
//! - [`redis_store::RedisStore`]: Redis standalone or Cluster. Every key of one
//!   account carries the hash tag `{<account>}` so multi-key updates of one
//!   account are atomic Lua scripts on one slot.
//! - [`embedded::EmbeddedStore`]: an ACID store on local disk (redb) for
//!   `posthorn serve`.
//!
//! # Model
//! Accounts are addressed by their normalised (lower-case) address
//! `local@domain`. Each account has mailboxes; each mailbox has UIDVALIDITY,
//! UIDNEXT, HIGHESTMODSEQ, a special-use attribute and a subscription flag.
//! Messages carry UID, MODSEQ, flags (system flags and keywords as strings,
//! e.g. `\Seen`, `$Forwarded`), internal date, size, blob key, a header
//! prefix (per-copy trace lines such as `Return-Path:`/`Delivered-To:`, read
//! before the blob's bytes, so one blob can be shared by many recipients) and
//! a cached parsed ENVELOPE/BODYSTRUCTURE (opaque strings, produced by the
//! caller).
//! UID and MODSEQ are assigned in the same atomic step as the write
//! (docs/architecture.md invariants 3 and 8). Every mailbox keeps an expunge log.
//!
//! Blob reference counts live here too, updated atomically with appends and
//! expunges, so unreferenced blobs can be found and collected after a grace
//! period (docs/architecture.md invariant 4).

#![warn(missing_docs)]

pub mod conformance;
pub mod embedded;
pub mod queue;
pub mod redis_store;
mod util;

use std::ops::RangeInclusive;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Errors of the metadata store. [`Error::is_transient`] tells the caller
/// whether a retry may succeed (SMTP 4xx vs 5xx, JetStream nak vs term).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The thing to create exists already.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The thing named does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// An account was added for a domain that is not a local domain.
    #[error("domain {0} is not a local domain")]
    UnknownDomain(String),
    /// A name failed validation (mailbox name traversal, bad address, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid ("mailbox name", "address", ...).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The backend could not be reached or failed; retrying may help.
    #[error("metadata backend unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be decoded (a bug or corruption).
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// A local account in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Normalised address, `local@domain`, lower-case.
    pub address: String,
    /// PHC string of the argon2id hash of the password.
    pub password_hash: String,
    /// Limits; `None` means unlimited.
    pub quota: Quota,
}

/// Per-account limits. `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Maximum total size of all messages, in bytes.
    pub max_bytes: Option<u64>,
    /// Maximum number of messages over all mailboxes.
    pub max_messages: Option<u64>,
}

/// Current usage of an account, updated atomically with appends/expunges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Sum of message sizes.
    pub bytes: u64,
    /// Number of messages.
    pub messages: u64,
}

/// An alias (`/etc/aliases` entry or virtusertable line): `address` expands to
/// `targets` (local accounts, other aliases, remote addresses). A catch-all is
/// stored with address `@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alias {
    /// The alias address (lower-case), or `@domain` for a catch-all.
    pub address: String,
    /// What it expands to, in order.
    pub targets: Vec<String>,
}

/// RFC 6154 special-use attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecialUse {
    /// `\All`
    All,
    /// `\Archive`
    Archive,
    /// `\Drafts`
    Drafts,
    /// `\Flagged`
    Flagged,
    /// `\Junk`
    Junk,
    /// `\Sent`
    Sent,
    /// `\Trash`
    Trash,
}

/// The mailboxes every new account gets (docs/architecture.md, data model).
pub const DEFAULT_MAILBOXES: &[(&str, Option<SpecialUse>)] = &[
    ("INBOX", None),
    ("Sent", Some(SpecialUse::Sent)),
    ("Drafts", Some(SpecialUse::Drafts)),
    ("Trash", Some(SpecialUse::Trash)),
    ("Junk", Some(SpecialUse::Junk)),
];

/// State of one mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxInfo {
    /// Full name with `/` as hierarchy delimiter; `INBOX` is case-insensitive
    /// and always stored as `INBOX`.
    pub name: String,
    /// RFC 3501 UIDVALIDITY; non-zero; changes only if the mailbox is recreated.
    pub uidvalidity: u32,
    /// The UID the next appended message will get.
    pub uidnext: u32,
    /// RFC 7162 HIGHESTMODSEQ (starts at 1 for an empty mailbox).
    pub highest_modseq: u64,
    /// Number of messages.
    pub exists: u32,
    /// Number of messages without `\Seen`.
    pub unseen: u32,
    /// RFC 6154 attribute.
    pub special_use: Option<SpecialUse>,
    /// LSUB / LIST (SUBSCRIBED).
    pub subscribed: bool,
}

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Idempotency key, normally `<message id>/<recipient>`: a second append
    /// with the same key to the same account adds nothing (docs/architecture.md
    /// invariant 2). `None` for IMAP APPEND/COPY.
    pub dedupe_key: Option<String>,
    /// Initial flags.
    pub flags: Vec<String>,
    /// Internal date, seconds since the Unix epoch.
    pub internal_date: i64,
    /// Size in octets (RFC822.SIZE): header prefix plus blob.
    pub size: u64,
    /// Content-addressed blob key of the body.
    pub blob_key: String,
    /// Header lines (CRLF-terminated) shown before the blob's bytes when the
    /// message is read, e.g. `Return-Path: <a@b>\r\nDelivered-To: c@d\r\n`;
    /// empty for IMAP APPEND. `size` includes it.
    #[serde(default)]
    pub header_prefix: String,
    /// Cached ENVELOPE (opaque, produced by the caller).
    pub envelope: Option<String>,
    /// Cached BODYSTRUCTURE (opaque, produced by the caller).
    pub bodystructure: Option<String>,
}

/// What [`MetaStore::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored as a new message.
    Appended {
        /// Its UID.
        uid: u32,
        /// Its MODSEQ.
        modseq: u64,
    },
    /// The dedupe key was seen before; nothing changed.
    Duplicate {
        /// The UID the earlier append got.
        uid: u32,
    },
}

/// A stored message's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// UID in its mailbox.
    pub uid: u32,
    /// MODSEQ of its last change.
    pub modseq: u64,
    /// Flags and keywords.
    pub flags: Vec<String>,
    /// Internal date, seconds since the Unix epoch.
    pub internal_date: i64,
    /// Size in octets: header prefix plus blob.
    pub size: u64,
    /// Blob key of the body.
    pub blob_key: String,
    /// Header lines (CRLF-terminated) shown before the blob's bytes when the
    /// message is read, e.g. `Return-Path: <a@b>\r\nDelivered-To: c@d\r\n`;
    /// empty for IMAP APPEND. `size` includes it.
    #[serde(default)]
    pub header_prefix: String,
    /// Cached ENVELOPE.
    pub envelope: Option<String>,
    /// Cached BODYSTRUCTURE.
    pub bodystructure: Option<String>,
}

/// How STORE changes flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    /// `FLAGS`: replace.
    Set,
    /// `+FLAGS`: add.
    Add,
    /// `-FLAGS`: remove.
    Remove,
}

/// Result of a STORE on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUpdate {
    /// UID of the message.
    pub uid: u32,
    /// MODSEQ after the change (unchanged if the store was refused).
    pub modseq: u64,
    /// Flags after the change.
    pub flags: Vec<String>,
    /// False if refused by UNCHANGEDSINCE (RFC 7162 §3.1.3).
    pub applied: bool,
}

/// Normalise an address to the form used as account id / key: trimmed and
/// lower-cased. (Local parts are case-insensitive for Posthorn accounts,
/// as for Sendmail and Postfix local users.)
pub fn normalize_address(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}

/// Validate a mailbox name (already decoded to UTF-8): non-empty, no empty
/// hierarchy levels, no `.`/`..` levels, no `*`/`%` wildcards, no control
/// characters, at most 1,000 bytes. `inbox` in any case becomes `INBOX`.
pub fn validate_mailbox_name(name: &str) -> Result<String> {
    let invalid = |reason: &str| Error::Invalid {
        what: "mailbox name",
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > 1000 {
        return Err(invalid("longer than 1000 bytes"));
    }
    if name.chars().any(|c| c.is_control() || c == '*' || c == '%') {
        return Err(invalid("contains a wildcard or control character"));
    }
    let levels: Vec<&str> = name.split('/').collect();
    if levels
        .iter()
        .any(|l| l.is_empty() || *l == "." || *l == "..")
    {
        return Err(invalid("empty, `.` or `..` hierarchy level"));
    }
    if levels[0].eq_ignore_ascii_case("INBOX") {
        let mut out = String::from("INBOX");
        for l in &levels[1..] {
            out.push('/');
            out.push_str(l);
        }
        return Ok(out);
    }
    Ok(name.to_string())
}

/// Mailbox metadata, directory and blob reference counts. Object-safe
/// (`Arc<dyn MetaStore>`), so services are written once against it.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Whether the backend answers (for `/readyz`).
    async fn ping(&self) -> Result<()>;

    // --- directory: domains ---

    /// Add a local domain. `AlreadyExists` if present.
    async fn add_domain(&self, domain: &str) -> Result<()>;
    /// Remove a local domain. `NotFound` if absent. Refused (`Invalid`) while
    /// accounts of the domain exist.
    async fn remove_domain(&self, domain: &str) -> Result<()>;
    /// All local domains, sorted.
    async fn list_domains(&self) -> Result<Vec<String>>;
    /// Whether `domain` is local.
    async fn is_local_domain(&self, domain: &str) -> Result<bool>;

    // --- directory: accounts ---

    /// Create an account and its [`DEFAULT_MAILBOXES`]. `UnknownDomain` if
    /// its domain is not local, `AlreadyExists` if present.
    async fn add_account(&self, address: &str, password_hash: &str) -> Result<()>;
    /// Look an account up.
    async fn get_account(&self, address: &str) -> Result<Option<Account>>;
    /// Remove an account and all its mailboxes and messages (decrementing blob
    /// reference counts). `NotFound` if absent.
    async fn remove_account(&self, address: &str) -> Result<()>;
    /// Accounts, optionally only those of one domain, sorted.
    async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>>;
    /// Replace the password hash. `NotFound` if absent.
    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()>;
    /// Replace the quota. `NotFound` if absent.
    async fn set_quota(&self, address: &str, quota: Quota) -> Result<()>;
    /// Current usage. `NotFound` if absent.
    async fn get_usage(&self, address: &str) -> Result<Usage>;

    // --- directory: aliases ---

    /// Add or replace an alias.
    async fn set_alias(&self, alias: &Alias) -> Result<()>;
    /// Look an alias up (exact address, or `@domain`).
    async fn get_alias(&self, address: &str) -> Result<Option<Alias>>;
    /// Remove an alias. `NotFound` if absent.
    async fn remove_alias(&self, address: &str) -> Result<()>;
    /// All aliases, sorted by address.
    async fn list_aliases(&self) -> Result<Vec<Alias>>;

    // --- mailboxes ---

    /// Create a mailbox (name validated). `AlreadyExists` if present.
    async fn create_mailbox(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo>;
    /// Delete a mailbox and its messages. `INBOX` cannot be deleted (`Invalid`).
    async fn delete_mailbox(&self, account: &str, name: &str) -> Result<()>;
    /// Rename a mailbox keeping its messages and UIDVALIDITY. Renaming INBOX
    /// moves its messages to a new mailbox and leaves INBOX empty (RFC 3501).
    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<()>;
    /// All mailboxes of an account, sorted by name.
    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>>;
    /// One mailbox.
    async fn get_mailbox(&self, account: &str, name: &str) -> Result<Option<MailboxInfo>>;
    /// Set the subscription flag.
    async fn set_subscribed(&self, account: &str, name: &str, subscribed: bool) -> Result<()>;

    // --- messages ---

    /// Append atomically: assign UID and MODSEQ, update usage, increment the
    /// blob's reference count, record the dedupe key. A repeated dedupe key
    /// returns [`AppendOutcome::Duplicate`] and changes nothing.
    async fn append(&self, account: &str, mailbox: &str, msg: NewMessage) -> Result<AppendOutcome>;
    /// Messages with `lo <= uid <= hi`, ascending by UID.
    async fn fetch(
        &self,
        account: &str,
        mailbox: &str,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<MessageMeta>>;
    /// Change flags of the given UIDs (missing UIDs are skipped). With
    /// `unchanged_since`, messages whose MODSEQ is greater are not changed
    /// (`applied: false`). Each changed message gets a new MODSEQ.
    async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<Vec<FlagUpdate>>;
    /// Remove the given UIDs (missing ones skipped); records each in the
    /// expunge log with a new MODSEQ, updates usage and blob reference counts.
    /// Returns the UIDs actually removed, ascending.
    async fn expunge(&self, account: &str, mailbox: &str, uids: &[u32]) -> Result<Vec<u32>>;
    /// UIDs expunged with MODSEQ greater than `modseq`, ascending (QRESYNC).
    async fn expunged_since(&self, account: &str, mailbox: &str, modseq: u64) -> Result<Vec<u32>>;

    // --- blob reference counts ---

    /// Current reference count of a blob (0 if unknown).
    async fn blob_refs(&self, blob_key: &str) -> Result<u64>;
    /// Blobs whose count dropped to 0 at or before `before` (Unix seconds).
    async fn gc_candidates(&self, before: i64) -> Result<Vec<String>>;
    /// Forget a collected blob, only if its count is still 0. Returns whether
    /// it was forgotten (false: it was referenced again meanwhile).
    async fn forget_blob(&self, blob_key: &str) -> Result<bool>;

    // --- leases (exclusive locks with an expiry, e.g. the POP3 maildrop lock) ---

    /// Take the lease `name` for `owner` for `ttl`, or renew it if `owner`
    /// holds it already. Returns `false` if another owner holds an unexpired
    /// lease. Atomic across all processes sharing the store (docs/architecture.md
    /// invariant 6); a crashed holder's lease simply expires.
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool>;
    /// Release the lease `name` if `owner` holds it (otherwise nothing).
    async fn release_lease(&self, name: &str, owner: &str) -> Result<()>;

    // --- markers (idempotence records of side effects, e.g. "delivered") ---

    /// Record the marker `name` for `ttl` (setting it again renews it).
    /// Durable once this returns, visible to every process sharing the
    /// store. Names: no braces, whitespace or control characters.
    async fn set_marker(&self, name: &str, ttl: std::time::Duration) -> Result<()> {
        let _ = (name, ttl);
        Err(Error::Invalid {
            what: "marker",
            reason: "markers are not supported by this store".into(),
        })
    }
    /// Whether the marker `name` is set and unexpired.
    async fn has_marker(&self, name: &str) -> Result<bool> {
        let _ = name;
        Err(Error::Invalid {
            what: "marker",
            reason: "markers are not supported by this store".into(),
        })
    }

    // --- records (small versioned documents, e.g. the delivery queue index) ---

    /// The record `key` of namespace `ns`, unless absent or expired.
    async fn get_record(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        let _ = (ns, key);
        Err(records_unsupported())
    }
    /// Compare-and-set: write `put` as record `key` only if its current
    /// version is `expected` (0 = absent or expired). Returns the new
    /// version, or `None` if the version did not match (nothing written).
    /// Atomic across all processes sharing the store.
    async fn put_record(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        put: RecordPut,
    ) -> Result<Option<u64>> {
        let _ = (ns, key, expected, put);
        Err(records_unsupported())
    }
    /// Up to `limit` listed records of `ns` with a score in `scores`, from
    /// position `offset` among those, in (score, key) order. Only records
    /// written with `listed` appear.
    async fn list_records(
        &self,
        ns: &str,
        scores: RangeInclusive<i64>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<(String, Record)>> {
        let _ = (ns, scores, offset, limit);
        Err(records_unsupported())
    }
    /// How many listed records of `ns` have a score in `scores`, and the
    /// lowest score among them.
    async fn count_records(
        &self,
        ns: &str,
        scores: RangeInclusive<i64>,
    ) -> Result<(u64, Option<i64>)> {
        let _ = (ns, scores);
        Err(records_unsupported())
    }
}

fn records_unsupported() -> Error {
    Error::Invalid {
        what: "record",
        reason: "records are not supported by this store".into(),
    }
}

/// A versioned record ([`MetaStore::get_record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Starts at 1, grows by one with each write.
    pub version: u64,
    /// The document (JSON by convention).
    pub value: String,
    /// Its position in the listing.
    pub score: i64,
}

/// What [`MetaStore::put_record`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPut {
    /// The document.
    pub value: String,
    /// Its position in the listing.
    pub score: i64,
    /// Whether it appears in [`MetaStore::list_records`] and
    /// [`MetaStore::count_records`] (false: a tombstone).
    pub listed: bool,
    /// Expiry; after it the record reads as absent. `None`: kept.
    pub ttl: Option<std::time::Duration>,
}

/// The marker that keeps a blob from garbage collection while no message
/// references it: set for the bodies of queued remote deliveries (router
/// when it queues one, delivery on every deferral), honoured by the
/// router's blob GC (docs/delivery.md).
pub fn blob_pin_marker(blob_key: &str) -> String {
    format!("blob-pin/{blob_key}")
}

/// How long the router pins the body of a message it queues for remote
/// delivery. Delivery renews the pin only for a queue lifetime that would
/// outlast it (docs/delivery.md, "No loss, no duplicates").
pub const BLOB_PIN_QUEUED: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_header_prefix_decode() {
        let m: MessageMeta = serde_json::from_str(
            r#"{"uid":3,"modseq":9,"flags":["\\Seen"],"internal_date":1,"size":10,
                "blob_key":"k","envelope":null,"bodystructure":null}"#,
        )
        .unwrap();
        assert_eq!(m.header_prefix, "");
        assert_eq!(m.flags, vec!["\\Seen".to_string()]);
        let n: NewMessage = serde_json::from_str(
            r#"{"dedupe_key":null,"flags":[],"internal_date":1,"size":10,
                "blob_key":"k","envelope":null,"bodystructure":null}"#,
        )
        .unwrap();
        assert_eq!(n.header_prefix, "");
    }
}
