//! The embedded [`MetaStore`]: one redb database file on local disk, for
//! `posthorn serve`.
//!
//! Every mutating operation is one redb write transaction, committed with
//! redb's default durability ([`redb::Durability::Immediate`]: fsync before
//! `commit` returns). redb allows one write transaction at a time, so UID and
//! MODSEQ assignment, usage, blob reference counts, dedupe keys and the
//! expunge log change together or not at all. Reads use snapshot read
//! transactions and never wait for writers. All redb calls run on tokio's
//! blocking pool.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `meta` | name (`next_mailbox_id`) | u64 |
//! | `domains` | domain | () |
//! | `accounts` | address | JSON account record (hash, quota, usage, last UIDVALIDITY) |
//! | `aliases` | alias address or `@domain` | JSON list of targets |
//! | `mailboxes` | (address, mailbox name) | JSON mailbox record (id + [`MailboxInfo`]) |
//! | `messages` | (mailbox id, uid) | JSON [`MessageMeta`] (including its `header_prefix`, the per-copy trace header lines; absent in older records = empty) |
//! | `expunged` | (mailbox id, uid) | MODSEQ of the expunge |
//! | `dedupe` | (address, dedupe key) | uid |
//! | `blobs` | blob key | reference count |
//! | `blob_zero` | blob key | Unix time its count dropped to 0 |
//! | `records`, `record_index` | versioned records and their listing (`embedded/records.rs`) |
//!
//! Messages are keyed by a mailbox id, not the name, so RENAME rewrites only
//! the `mailboxes` rows. Mailbox ids are never reused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use posthorn_runtime::group_commit::{GroupCommit, try_blocking};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};

mod records;

use crate::util::{
    account_id, alias_id, apply_flags, check_blob_key, check_flags, dedup_flags, domain_id,
    domain_of, is_seen, next_uidvalidity, now_secs,
};
use crate::{
    Account, AppendOutcome, DEFAULT_MAILBOXES, Error, FlagOp, FlagUpdate, MailboxInfo, MessageMeta,
    MetaStore, NewMessage, Quota, Record, RecordPut, Result, SpecialUse, Usage,
    validate_mailbox_name,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DOMAINS: TableDefinition<&str, ()> = TableDefinition::new("domains");
const ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("accounts");
const ALIASES: TableDefinition<&str, &str> = TableDefinition::new("aliases");
const MAILBOXES: TableDefinition<(&str, &str), &str> = TableDefinition::new("mailboxes");
const MESSAGES: TableDefinition<(u64, u32), &str> = TableDefinition::new("messages");
const EXPUNGED: TableDefinition<(u64, u32), u64> = TableDefinition::new("expunged");
const DEDUPE: TableDefinition<(&str, &str), u32> = TableDefinition::new("dedupe");
const BLOBS: TableDefinition<&str, u64> = TableDefinition::new("blobs");
const BLOB_ZERO: TableDefinition<&str, i64> = TableDefinition::new("blob_zero");
/// Lease name -> (owner, expiry in Unix milliseconds).
const LEASES: TableDefinition<&str, (&str, u64)> = TableDefinition::new("leases");
/// Marker name -> expiry in Unix milliseconds.
const MARKERS: TableDefinition<&str, u64> = TableDefinition::new("markers");

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountRec {
    password_hash: String,
    quota: Quota,
    usage: Usage,
    last_uidvalidity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MailboxRec {
    id: u64,
    info: MailboxInfo,
}

/// The embedded, single-node metadata store (redb).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    /// Group commit of appends (see [`append_batch`]).
    appends: Arc<GroupCommit<(String, String, NewMessage), Result<AppendOutcome>>>,
    /// Group commit of record and marker writes (`embedded/records.rs`).
    small: Arc<GroupCommit<records::SmallWrite, records::SmallOut>>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn storage<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::Unavailable(format!("embedded store {}: {e}", path.display()))
}

fn dberr<E: std::fmt::Display>(e: E) -> Error {
    Error::Unavailable(format!("embedded store: {e}"))
}

fn decode<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| Error::Corrupt(format!("embedded store record: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Corrupt(format!("encoding record: {e}")))
}

fn not_found_mailbox(account: &str, name: &str) -> Error {
    Error::NotFound(format!("mailbox {name:?} of {account}"))
}

impl EmbeddedStore {
    /// Open (or create) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = Database::create(path).map_err(storage(path))?;
        let txn = db.begin_write().map_err(storage(path))?;
        {
            txn.open_table(META).map_err(storage(path))?;
            txn.open_table(DOMAINS).map_err(storage(path))?;
            txn.open_table(ACCOUNTS).map_err(storage(path))?;
            txn.open_table(ALIASES).map_err(storage(path))?;
            txn.open_table(MAILBOXES).map_err(storage(path))?;
            txn.open_table(MESSAGES).map_err(storage(path))?;
            txn.open_table(EXPUNGED).map_err(storage(path))?;
            txn.open_table(DEDUPE).map_err(storage(path))?;
            txn.open_table(BLOBS).map_err(storage(path))?;
            txn.open_table(BLOB_ZERO).map_err(storage(path))?;
            txn.open_table(MARKERS).map_err(storage(path))?;
        }
        txn.commit().map_err(storage(path))?;
        Ok(Self {
            db: Arc::new(db),
            path: Arc::new(path.to_path_buf()),
            appends: Arc::new(GroupCommit::new()),
            small: Arc::new(GroupCommit::new()),
        })
    }

    /// Run `f` in one write transaction on the blocking pool; commit if it
    /// returns `Ok`, roll back otherwise.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        let path = self.path.clone();
        run_blocking(move || {
            let txn = db.begin_write().map_err(storage(&path))?;
            match f(&txn) {
                Ok(v) => {
                    txn.commit().map_err(storage(&path))?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = txn.abort();
                    Err(e)
                }
            }
        })
        .await
    }

    /// Run `f` in a read (snapshot) transaction right here, for point
    /// lookups (a domain, an account, an alias: microseconds from redb's
    /// page cache). Handing those to another thread (`block_in_place`)
    /// cost more in thread wake-ups than the lookup: it was a tenth of the
    /// server's CPU per message in bench/smtp.sh. Scans go through
    /// [`EmbeddedStore::scan`].
    fn lookup<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&ReadTransaction) -> Result<T>,
    {
        let txn = self.db.begin_read().map_err(storage(&self.path))?;
        f(&txn)
    }

    /// Run `f` in a read (snapshot) transaction on the blocking pool, for
    /// reads whose size grows with the data (listings, a mailbox's messages).
    async fn scan<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        let path = self.path.clone();
        run_blocking(move || {
            let txn = db.begin_read().map_err(storage(&path))?;
            f(&txn)
        })
        .await
    }
}

/// Run a redb transaction (see [`try_blocking`]: in place on the
/// multi-threaded runtime, on the blocking pool otherwise, where a
/// current-thread runtime must not block).
async fn run_blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    try_blocking(f)
        .await
        .map_err(|e| Error::Unavailable(format!("embedded store task failed: {e}")))?
}

// --- helpers on open tables ---

fn get_account<T: ReadableTable<&'static str, &'static str>>(
    t: &T,
    account: &str,
) -> Result<Option<AccountRec>> {
    match t.get(account).map_err(dberr)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn need_account<T: ReadableTable<&'static str, &'static str>>(
    t: &T,
    account: &str,
) -> Result<AccountRec> {
    get_account(t, account)?.ok_or_else(|| Error::NotFound(format!("account {account}")))
}

fn put_account(
    t: &mut Table<&'static str, &'static str>,
    account: &str,
    rec: &AccountRec,
) -> Result<()> {
    t.insert(account, encode(rec)?.as_str()).map_err(dberr)?;
    Ok(())
}

fn get_mailbox<T: ReadableTable<(&'static str, &'static str), &'static str>>(
    t: &T,
    account: &str,
    name: &str,
) -> Result<Option<MailboxRec>> {
    match t.get((account, name)).map_err(dberr)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn put_mailbox(
    t: &mut Table<(&'static str, &'static str), &'static str>,
    account: &str,
    rec: &MailboxRec,
) -> Result<()> {
    t.insert((account, rec.info.name.as_str()), encode(rec)?.as_str())
        .map_err(dberr)?;
    Ok(())
}

fn list_mailbox_recs<T: ReadableTable<(&'static str, &'static str), &'static str>>(
    t: &T,
    account: &str,
) -> Result<Vec<MailboxRec>> {
    let mut out = Vec::new();
    for row in t.range((account, "")..).map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        if k.value().0 != account {
            break;
        }
        out.push(decode(v.value())?);
    }
    Ok(out)
}

fn next_mailbox_id(txn: &WriteTransaction) -> Result<u64> {
    let mut meta = txn.open_table(META).map_err(dberr)?;
    let id = meta
        .get("next_mailbox_id")
        .map_err(dberr)?
        .map(|v| v.value())
        .unwrap_or(1);
    meta.insert("next_mailbox_id", id + 1).map_err(dberr)?;
    Ok(id)
}

/// Create a mailbox row (caller checked it does not exist).
fn new_mailbox(
    txn: &WriteTransaction,
    account: &str,
    acct: &mut AccountRec,
    name: &str,
    special_use: Option<SpecialUse>,
    subscribed: bool,
) -> Result<MailboxRec> {
    let id = next_mailbox_id(txn)?;
    let uidvalidity = next_uidvalidity(acct.last_uidvalidity);
    acct.last_uidvalidity = uidvalidity;
    let rec = MailboxRec {
        id,
        info: MailboxInfo {
            name: name.to_string(),
            uidvalidity,
            uidnext: 1,
            highest_modseq: 1,
            exists: 0,
            unseen: 0,
            special_use,
            subscribed,
        },
    };
    let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
    put_mailbox(&mut mboxes, account, &rec)?;
    Ok(rec)
}

fn blob_incr(txn: &WriteTransaction, key: &str) -> Result<()> {
    let mut blobs = txn.open_table(BLOBS).map_err(dberr)?;
    let n = blobs
        .get(key)
        .map_err(dberr)?
        .map(|v| v.value())
        .unwrap_or(0);
    blobs.insert(key, n + 1).map_err(dberr)?;
    let mut zero = txn.open_table(BLOB_ZERO).map_err(dberr)?;
    zero.remove(key).map_err(dberr)?;
    Ok(())
}

fn blob_decr(txn: &WriteTransaction, key: &str, now: i64) -> Result<()> {
    let mut blobs = txn.open_table(BLOBS).map_err(dberr)?;
    let n = blobs
        .get(key)
        .map_err(dberr)?
        .map(|v| v.value())
        .unwrap_or(0);
    let n = n.saturating_sub(1);
    blobs.insert(key, n).map_err(dberr)?;
    if n == 0 {
        let mut zero = txn.open_table(BLOB_ZERO).map_err(dberr)?;
        zero.insert(key, now).map_err(dberr)?;
    }
    Ok(())
}

/// Delete all messages and the expunge log of a mailbox id, fixing usage and
/// blob counts. Returns nothing; `acct` is updated in place.
fn purge_mailbox(txn: &WriteTransaction, id: u64, acct: &mut AccountRec) -> Result<()> {
    let now = now_secs();
    let mut blobs_to_decr = Vec::new();
    {
        let mut msgs = txn.open_table(MESSAGES).map_err(dberr)?;
        let mut keys = Vec::new();
        for row in msgs.range((id, 0u32)..=(id, u32::MAX)).map_err(dberr)? {
            let (k, v) = row.map_err(dberr)?;
            let m: MessageMeta = decode(v.value())?;
            keys.push(k.value().1);
            acct.usage.bytes = acct.usage.bytes.saturating_sub(m.size);
            acct.usage.messages = acct.usage.messages.saturating_sub(1);
            blobs_to_decr.push(m.blob_key);
        }
        for uid in keys {
            msgs.remove((id, uid)).map_err(dberr)?;
        }
        let mut exp = txn.open_table(EXPUNGED).map_err(dberr)?;
        let mut keys = Vec::new();
        for row in exp.range((id, 0u32)..=(id, u32::MAX)).map_err(dberr)? {
            keys.push(row.map_err(dberr)?.0.value().1);
        }
        for uid in keys {
            exp.remove((id, uid)).map_err(dberr)?;
        }
    }
    for b in blobs_to_decr {
        blob_decr(txn, &b, now)?;
    }
    Ok(())
}

/// One group commit of appends (account, mailbox, message), in one
/// transaction (one fsync). An append that fails on its own (no such
/// account or mailbox, UIDs used up) fails before writing anything, so the
/// others in its batch go ahead; a storage error fails the whole batch.
fn append_batch(
    db: &Database,
    path: &std::path::Path,
    work: Vec<(String, String, NewMessage)>,
) -> Vec<Result<AppendOutcome>> {
    let n = work.len();
    let res = (|| {
        let txn = db.begin_write().map_err(storage(path))?;
        let mut out = Vec::with_capacity(n);
        let mut any = false;
        for (a, name, msg) in work {
            let r = append_in(&txn, &a, &name, msg);
            match r {
                // May have written part of this append: drop the batch.
                Err(e @ (Error::Unavailable(_) | Error::Corrupt(_))) => {
                    let _ = txn.abort();
                    return Err(e);
                }
                Ok(AppendOutcome::Appended { .. }) => any = true,
                _ => {}
            }
            out.push(r);
        }
        if any {
            txn.commit().map_err(storage(path))?;
        } else {
            let _ = txn.abort();
        }
        Ok(out)
    })();
    match res {
        Ok(out) => out,
        Err(e) => {
            let msg = e.to_string();
            (0..n)
                .map(|_| Err(Error::Unavailable(msg.clone())))
                .collect()
        }
    }
}

/// The body of one append inside `txn` (see [`append_batch`]: every error
/// other than a storage one happens before the first write).
fn append_in(
    txn: &WriteTransaction,
    a: &str,
    name: &str,
    msg: NewMessage,
) -> Result<AppendOutcome> {
    let mut accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
    let mut rec = need_account(&accts, a)?;
    let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
    let mut m = get_mailbox(&mboxes, a, name)?.ok_or_else(|| not_found_mailbox(a, name))?;
    let mut dedupe = txn.open_table(DEDUPE).map_err(dberr)?;
    if let Some(key) = &msg.dedupe_key
        && let Some(uid) = dedupe.get((a, key.as_str())).map_err(dberr)?
    {
        return Ok(AppendOutcome::Duplicate { uid: uid.value() });
    }
    let uid = m.info.uidnext;
    if uid == u32::MAX {
        return Err(Error::Invalid {
            what: "append",
            reason: format!("mailbox {name:?} has used up its UIDs"),
        });
    }
    m.info.uidnext += 1;
    m.info.highest_modseq += 1;
    let modseq = m.info.highest_modseq;
    let flags = dedup_flags(&msg.flags);
    m.info.exists += 1;
    if !is_seen(&flags) {
        m.info.unseen += 1;
    }
    let meta = MessageMeta {
        uid,
        modseq,
        flags,
        internal_date: msg.internal_date,
        size: msg.size,
        blob_key: msg.blob_key.clone(),
        header_prefix: msg.header_prefix,
        envelope: msg.envelope,
        bodystructure: msg.bodystructure,
    };
    let mut msgs = txn.open_table(MESSAGES).map_err(dberr)?;
    msgs.insert((m.id, uid), encode(&meta)?.as_str())
        .map_err(dberr)?;
    put_mailbox(&mut mboxes, a, &m)?;
    rec.usage.bytes += msg.size;
    rec.usage.messages += 1;
    put_account(&mut accts, a, &rec)?;
    if let Some(key) = &msg.dedupe_key {
        dedupe.insert((a, key.as_str()), uid).map_err(dberr)?;
    }
    blob_incr(txn, &msg.blob_key)?;
    Ok(AppendOutcome::Appended { uid, modseq })
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn ping(&self) -> Result<()> {
        self.lookup(|_| Ok(()))
    }

    async fn add_domain(&self, domain: &str) -> Result<()> {
        let d = domain_id(domain)?;
        self.write(move |txn| {
            let mut t = txn.open_table(DOMAINS).map_err(dberr)?;
            if t.get(d.as_str()).map_err(dberr)?.is_some() {
                return Err(Error::AlreadyExists(format!("domain {d}")));
            }
            t.insert(d.as_str(), ()).map_err(dberr)?;
            Ok(())
        })
        .await
    }

    async fn remove_domain(&self, domain: &str) -> Result<()> {
        let d = domain_id(domain)?;
        self.write(move |txn| {
            let mut t = txn.open_table(DOMAINS).map_err(dberr)?;
            if t.get(d.as_str()).map_err(dberr)?.is_none() {
                return Err(Error::NotFound(format!("domain {d}")));
            }
            let accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            for row in accts.iter().map_err(dberr)? {
                let (k, _) = row.map_err(dberr)?;
                if domain_of(k.value()) == d {
                    return Err(Error::Invalid {
                        what: "domain removal",
                        reason: format!("domain {d} still has accounts"),
                    });
                }
            }
            t.remove(d.as_str()).map_err(dberr)?;
            Ok(())
        })
        .await
    }

    async fn list_domains(&self) -> Result<Vec<String>> {
        self.scan(|txn| {
            let t = txn.open_table(DOMAINS).map_err(dberr)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(dberr)? {
                out.push(row.map_err(dberr)?.0.value().to_string());
            }
            Ok(out)
        })
        .await
    }

    async fn is_local_domain(&self, domain: &str) -> Result<bool> {
        let Ok(d) = domain_id(domain) else {
            return Ok(false);
        };
        self.lookup(move |txn| {
            let t = txn.open_table(DOMAINS).map_err(dberr)?;
            Ok(t.get(d.as_str()).map_err(dberr)?.is_some())
        })
    }

    async fn add_account(&self, address: &str, password_hash: &str) -> Result<()> {
        let a = account_id(address)?;
        let hash = password_hash.to_string();
        self.write(move |txn| {
            let domains = txn.open_table(DOMAINS).map_err(dberr)?;
            let dom = domain_of(&a);
            if domains.get(dom).map_err(dberr)?.is_none() {
                return Err(Error::UnknownDomain(dom.to_string()));
            }
            let mut accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            if accts.get(a.as_str()).map_err(dberr)?.is_some() {
                return Err(Error::AlreadyExists(format!("account {a}")));
            }
            let mut rec = AccountRec {
                password_hash: hash,
                quota: Quota::default(),
                usage: Usage::default(),
                last_uidvalidity: 0,
            };
            for (name, su) in DEFAULT_MAILBOXES {
                new_mailbox(txn, &a, &mut rec, name, *su, true)?;
            }
            put_account(&mut accts, &a, &rec)
        })
        .await
    }

    async fn get_account(&self, address: &str) -> Result<Option<Account>> {
        let Ok(a) = account_id(address) else {
            return Ok(None);
        };
        self.lookup(move |txn| {
            let t = txn.open_table(ACCOUNTS).map_err(dberr)?;
            Ok(get_account(&t, &a)?.map(|r| Account {
                address: a.clone(),
                password_hash: r.password_hash,
                quota: r.quota,
            }))
        })
    }

    async fn remove_account(&self, address: &str) -> Result<()> {
        let a = account_id(address)?;
        self.write(move |txn| {
            let mut accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut rec = need_account(&accts, &a)?;
            let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let recs = list_mailbox_recs(&mboxes, &a)?;
            for m in &recs {
                purge_mailbox(txn, m.id, &mut rec)?;
                mboxes
                    .remove((a.as_str(), m.info.name.as_str()))
                    .map_err(dberr)?;
            }
            let mut dedupe = txn.open_table(DEDUPE).map_err(dberr)?;
            let mut keys = Vec::new();
            for row in dedupe.range((a.as_str(), "")..).map_err(dberr)? {
                let (k, _) = row.map_err(dberr)?;
                let (acct, key) = k.value();
                if acct != a {
                    break;
                }
                keys.push(key.to_string());
            }
            for k in keys {
                dedupe.remove((a.as_str(), k.as_str())).map_err(dberr)?;
            }
            accts.remove(a.as_str()).map_err(dberr)?;
            Ok(())
        })
        .await
    }

    async fn list_accounts(&self, domain: Option<&str>) -> Result<Vec<String>> {
        let d = match domain {
            Some(d) => Some(domain_id(d)?),
            None => None,
        };
        self.scan(move |txn| {
            let t = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(dberr)? {
                let a = row.map_err(dberr)?.0.value().to_string();
                if d.as_deref().is_none_or(|d| domain_of(&a) == d) {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn set_password(&self, address: &str, password_hash: &str) -> Result<()> {
        let a = account_id(address)?;
        let hash = password_hash.to_string();
        self.write(move |txn| {
            let mut t = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut rec = need_account(&t, &a)?;
            rec.password_hash = hash;
            put_account(&mut t, &a, &rec)
        })
        .await
    }

    async fn set_quota(&self, address: &str, quota: Quota) -> Result<()> {
        let a = account_id(address)?;
        self.write(move |txn| {
            let mut t = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut rec = need_account(&t, &a)?;
            rec.quota = quota;
            put_account(&mut t, &a, &rec)
        })
        .await
    }

    async fn get_usage(&self, address: &str) -> Result<Usage> {
        let a = account_id(address)?;
        self.lookup(move |txn| {
            let t = txn.open_table(ACCOUNTS).map_err(dberr)?;
            Ok(need_account(&t, &a)?.usage)
        })
    }

    async fn set_alias(&self, alias: &crate::Alias) -> Result<()> {
        let a = alias_id(&alias.address)?;
        let targets = encode(&alias.targets)?;
        self.write(move |txn| {
            let mut t = txn.open_table(ALIASES).map_err(dberr)?;
            t.insert(a.as_str(), targets.as_str()).map_err(dberr)?;
            Ok(())
        })
        .await
    }

    async fn get_alias(&self, address: &str) -> Result<Option<crate::Alias>> {
        let Ok(a) = alias_id(address) else {
            return Ok(None);
        };
        self.lookup(move |txn| {
            let t = txn.open_table(ALIASES).map_err(dberr)?;
            match t.get(a.as_str()).map_err(dberr)? {
                Some(v) => Ok(Some(crate::Alias {
                    address: a.clone(),
                    targets: decode(v.value())?,
                })),
                None => Ok(None),
            }
        })
    }

    async fn remove_alias(&self, address: &str) -> Result<()> {
        let a = alias_id(address)?;
        self.write(move |txn| {
            let mut t = txn.open_table(ALIASES).map_err(dberr)?;
            if t.remove(a.as_str()).map_err(dberr)?.is_none() {
                return Err(Error::NotFound(format!("alias {a}")));
            }
            Ok(())
        })
        .await
    }

    async fn list_aliases(&self) -> Result<Vec<crate::Alias>> {
        self.scan(|txn| {
            let t = txn.open_table(ALIASES).map_err(dberr)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                out.push(crate::Alias {
                    address: k.value().to_string(),
                    targets: decode(v.value())?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn create_mailbox(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        self.write(move |txn| {
            let mut accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut rec = need_account(&accts, &a)?;
            {
                let mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
                if get_mailbox(&mboxes, &a, &name)?.is_some() {
                    return Err(Error::AlreadyExists(format!("mailbox {name:?} of {a}")));
                }
            }
            let m = new_mailbox(txn, &a, &mut rec, &name, special_use, false)?;
            put_account(&mut accts, &a, &rec)?;
            Ok(m.info)
        })
        .await
    }

    async fn delete_mailbox(&self, account: &str, name: &str) -> Result<()> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        if name == "INBOX" {
            return Err(Error::Invalid {
                what: "mailbox deletion",
                reason: "INBOX cannot be deleted".into(),
            });
        }
        self.write(move |txn| {
            let mut accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut rec = need_account(&accts, &a)?;
            let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let m = get_mailbox(&mboxes, &a, &name)?.ok_or_else(|| not_found_mailbox(&a, &name))?;
            purge_mailbox(txn, m.id, &mut rec)?;
            mboxes.remove((a.as_str(), name.as_str())).map_err(dberr)?;
            put_account(&mut accts, &a, &rec)
        })
        .await
    }

    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<()> {
        let a = account_id(account)?;
        let from = validate_mailbox_name(from)?;
        let to = validate_mailbox_name(to)?;
        check_rename(&from, &to)?;
        self.write(move |txn| {
            let mut accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut rec = need_account(&accts, &a)?;
            let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let src =
                get_mailbox(&mboxes, &a, &from)?.ok_or_else(|| not_found_mailbox(&a, &from))?;
            if get_mailbox(&mboxes, &a, &to)?.is_some() {
                return Err(Error::AlreadyExists(format!("mailbox {to:?} of {a}")));
            }
            if from == "INBOX" {
                // Move INBOX's messages to `to`; INBOX starts over, empty,
                // with a new id and UIDVALIDITY.
                let mut moved = src.clone();
                moved.info.name = to.clone();
                moved.info.special_use = None;
                mboxes.remove((a.as_str(), "INBOX")).map_err(dberr)?;
                put_mailbox(&mut mboxes, &a, &moved)?;
                drop(mboxes);
                new_mailbox(txn, &a, &mut rec, "INBOX", None, src.info.subscribed)?;
                return put_account(&mut accts, &a, &rec);
            }
            // The mailbox and all its inferiors.
            let prefix = format!("{from}/");
            let all = list_mailbox_recs(&mboxes, &a)?;
            let moving: Vec<MailboxRec> = all
                .into_iter()
                .filter(|m| m.info.name == from || m.info.name.starts_with(&prefix))
                .collect();
            let mut renamed = Vec::new();
            for m in &moving {
                let new_name = format!("{to}{}", &m.info.name[from.len()..]);
                if get_mailbox(&mboxes, &a, &new_name)?.is_some() {
                    return Err(Error::AlreadyExists(format!("mailbox {new_name:?} of {a}")));
                }
                let mut n = m.clone();
                n.info.name = new_name;
                renamed.push(n);
            }
            for m in &moving {
                mboxes
                    .remove((a.as_str(), m.info.name.as_str()))
                    .map_err(dberr)?;
            }
            for n in &renamed {
                put_mailbox(&mut mboxes, &a, n)?;
            }
            Ok(())
        })
        .await
    }

    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>> {
        let a = account_id(account)?;
        self.scan(move |txn| {
            let accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            need_account(&accts, &a)?;
            let mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            Ok(list_mailbox_recs(&mboxes, &a)?
                .into_iter()
                .map(|m| m.info)
                .collect())
        })
        .await
    }

    async fn get_mailbox(&self, account: &str, name: &str) -> Result<Option<MailboxInfo>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        self.lookup(move |txn| {
            let mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            Ok(get_mailbox(&mboxes, &a, &name)?.map(|m| m.info))
        })
    }

    async fn set_subscribed(&self, account: &str, name: &str, subscribed: bool) -> Result<()> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(name)?;
        self.write(move |txn| {
            let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let mut m =
                get_mailbox(&mboxes, &a, &name)?.ok_or_else(|| not_found_mailbox(&a, &name))?;
            m.info.subscribed = subscribed;
            put_mailbox(&mut mboxes, &a, &m)
        })
        .await
    }

    async fn append(&self, account: &str, mailbox: &str, msg: NewMessage) -> Result<AppendOutcome> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        check_blob_key(&msg.blob_key)?;
        check_flags(&msg.flags)?;
        // Group commit: appends arriving while a commit runs are written
        // together by the next one (concurrent deliveries share an fsync).
        let (db, path) = (self.db.clone(), self.path.clone());
        self.appends
            .submit((a, name, msg), move |work| append_batch(&db, &path, work))
            .await
            .unwrap_or_else(|| {
                Err(Error::Unavailable(
                    "embedded store committer stopped".into(),
                ))
            })
    }

    async fn fetch(
        &self,
        account: &str,
        mailbox: &str,
        lo: u32,
        hi: u32,
    ) -> Result<Vec<MessageMeta>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        self.scan(move |txn| {
            let mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let m = get_mailbox(&mboxes, &a, &name)?.ok_or_else(|| not_found_mailbox(&a, &name))?;
            let mut out = Vec::new();
            if lo > hi {
                return Ok(out);
            }
            let msgs = txn.open_table(MESSAGES).map_err(dberr)?;
            for row in msgs.range((m.id, lo)..=(m.id, hi)).map_err(dberr)? {
                let (_, v) = row.map_err(dberr)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn store_flags(
        &self,
        account: &str,
        mailbox: &str,
        uids: &[u32],
        op: FlagOp,
        flags: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<Vec<FlagUpdate>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        check_flags(flags)?;
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        let flags = flags.to_vec();
        self.write(move |txn| {
            let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let mut m =
                get_mailbox(&mboxes, &a, &name)?.ok_or_else(|| not_found_mailbox(&a, &name))?;
            let mut msgs = txn.open_table(MESSAGES).map_err(dberr)?;
            let mut out = Vec::new();
            for uid in uids {
                let Some(v) = msgs.get((m.id, uid)).map_err(dberr)? else {
                    continue;
                };
                let mut meta: MessageMeta = decode(v.value())?;
                drop(v);
                if unchanged_since.is_some_and(|u| meta.modseq > u) {
                    out.push(FlagUpdate {
                        uid,
                        modseq: meta.modseq,
                        flags: meta.flags,
                        applied: false,
                    });
                    continue;
                }
                let new = apply_flags(&meta.flags, op, &flags);
                if new != meta.flags {
                    let (was, now) = (is_seen(&meta.flags), is_seen(&new));
                    if was && !now {
                        m.info.unseen += 1;
                    } else if !was && now {
                        m.info.unseen = m.info.unseen.saturating_sub(1);
                    }
                    m.info.highest_modseq += 1;
                    meta.modseq = m.info.highest_modseq;
                    meta.flags = new;
                    msgs.insert((m.id, uid), encode(&meta)?.as_str())
                        .map_err(dberr)?;
                }
                out.push(FlagUpdate {
                    uid,
                    modseq: meta.modseq,
                    flags: meta.flags,
                    applied: true,
                });
            }
            put_mailbox(&mut mboxes, &a, &m)?;
            Ok(out)
        })
        .await
    }

    async fn expunge(&self, account: &str, mailbox: &str, uids: &[u32]) -> Result<Vec<u32>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        let mut uids = uids.to_vec();
        uids.sort_unstable();
        uids.dedup();
        self.write(move |txn| {
            let now = now_secs();
            let mut accts = txn.open_table(ACCOUNTS).map_err(dberr)?;
            let mut rec = need_account(&accts, &a)?;
            let mut mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let mut m =
                get_mailbox(&mboxes, &a, &name)?.ok_or_else(|| not_found_mailbox(&a, &name))?;
            let mut msgs = txn.open_table(MESSAGES).map_err(dberr)?;
            let mut exp = txn.open_table(EXPUNGED).map_err(dberr)?;
            let mut removed = Vec::new();
            for uid in uids {
                let Some(v) = msgs.remove((m.id, uid)).map_err(dberr)? else {
                    continue;
                };
                let meta: MessageMeta = decode(v.value())?;
                drop(v);
                m.info.highest_modseq += 1;
                exp.insert((m.id, uid), m.info.highest_modseq)
                    .map_err(dberr)?;
                m.info.exists = m.info.exists.saturating_sub(1);
                if !is_seen(&meta.flags) {
                    m.info.unseen = m.info.unseen.saturating_sub(1);
                }
                rec.usage.bytes = rec.usage.bytes.saturating_sub(meta.size);
                rec.usage.messages = rec.usage.messages.saturating_sub(1);
                blob_decr(txn, &meta.blob_key, now)?;
                removed.push(uid);
            }
            put_mailbox(&mut mboxes, &a, &m)?;
            put_account(&mut accts, &a, &rec)?;
            Ok(removed)
        })
        .await
    }

    async fn expunged_since(&self, account: &str, mailbox: &str, modseq: u64) -> Result<Vec<u32>> {
        let a = account_id(account)?;
        let name = validate_mailbox_name(mailbox)?;
        self.scan(move |txn| {
            let mboxes = txn.open_table(MAILBOXES).map_err(dberr)?;
            let m = get_mailbox(&mboxes, &a, &name)?.ok_or_else(|| not_found_mailbox(&a, &name))?;
            let exp = txn.open_table(EXPUNGED).map_err(dberr)?;
            let mut out = Vec::new();
            for row in exp.range((m.id, 0u32)..=(m.id, u32::MAX)).map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                if v.value() > modseq {
                    out.push(k.value().1);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn blob_refs(&self, blob_key: &str) -> Result<u64> {
        check_blob_key(blob_key)?;
        let k = blob_key.to_string();
        self.lookup(move |txn| {
            let t = txn.open_table(BLOBS).map_err(dberr)?;
            Ok(t.get(k.as_str())
                .map_err(dberr)?
                .map(|v| v.value())
                .unwrap_or(0))
        })
    }

    async fn gc_candidates(&self, before: i64) -> Result<Vec<String>> {
        self.scan(move |txn| {
            let t = txn.open_table(BLOB_ZERO).map_err(dberr)?;
            let mut out = Vec::new();
            for row in t.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                if v.value() <= before {
                    out.push(k.value().to_string());
                }
            }
            Ok(out)
        })
        .await
    }

    async fn forget_blob(&self, blob_key: &str) -> Result<bool> {
        check_blob_key(blob_key)?;
        let k = blob_key.to_string();
        self.write(move |txn| {
            let mut t = txn.open_table(BLOBS).map_err(dberr)?;
            let n = t.get(k.as_str()).map_err(dberr)?.map(|v| v.value());
            if n.unwrap_or(0) > 0 {
                return Ok(false);
            }
            t.remove(k.as_str()).map_err(dberr)?;
            let mut z = txn.open_table(BLOB_ZERO).map_err(dberr)?;
            z.remove(k.as_str()).map_err(dberr)?;
            Ok(true)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let (name, owner) = (name.to_string(), owner.to_string());
        let now = now_ms();
        self.write(move |txn| {
            let mut t = txn.open_table(LEASES).map_err(dberr)?;
            let held = t.get(name.as_str()).map_err(dberr)?.map(|v| {
                let (o, exp) = v.value();
                (o.to_string(), exp)
            });
            if let Some((o, exp)) = held
                && o != owner
                && exp > now
            {
                return Ok(false);
            }
            let exp = now + ttl.as_millis() as u64;
            t.insert(name.as_str(), (owner.as_str(), exp))
                .map_err(dberr)?;
            Ok(true)
        })
        .await
    }

    async fn set_marker(&self, name: &str, ttl: std::time::Duration) -> Result<()> {
        crate::util::check_marker_name(name)?;
        let exp = now_ms() + ttl.as_millis() as u64;
        self.marker_put(name, exp).await
    }

    async fn has_marker(&self, name: &str) -> Result<bool> {
        crate::util::check_marker_name(name)?;
        let now = now_ms();
        self.lookup(|txn| {
            let t = match txn.open_table(MARKERS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
                Err(e) => return Err(dberr(e)),
            };
            Ok(t.get(name).map_err(dberr)?.is_some_and(|v| v.value() > now))
        })
    }

    async fn get_record(&self, ns: &str, key: &str) -> Result<Option<Record>> {
        self.records_get(ns, key)
    }

    async fn put_record(
        &self,
        ns: &str,
        key: &str,
        expected: u64,
        put: RecordPut,
    ) -> Result<Option<u64>> {
        self.records_put(ns, key, expected, put).await
    }

    async fn list_records(
        &self,
        ns: &str,
        scores: std::ops::RangeInclusive<i64>,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<(String, Record)>> {
        self.records_list(ns, scores, offset, limit).await
    }

    async fn count_records(
        &self,
        ns: &str,
        scores: std::ops::RangeInclusive<i64>,
    ) -> Result<(u64, Option<i64>)> {
        self.records_count(ns, scores).await
    }

    async fn release_lease(&self, name: &str, owner: &str) -> Result<()> {
        let (name, owner) = (name.to_string(), owner.to_string());
        self.write(move |txn| {
            let mut t = txn.open_table(LEASES).map_err(dberr)?;
            let mine = t
                .get(name.as_str())
                .map_err(dberr)?
                .map(|v| v.value().0 == owner)
                .unwrap_or(false);
            if mine {
                t.remove(name.as_str()).map_err(dberr)?;
            }
            Ok(())
        })
        .await
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks common to both backends before a rename.
pub(crate) fn check_rename(from: &str, to: &str) -> Result<()> {
    if to == "INBOX" {
        return Err(Error::AlreadyExists("mailbox \"INBOX\"".into()));
    }
    if from == to {
        return Err(Error::AlreadyExists(format!("mailbox {to:?}")));
    }
    if from != "INBOX" && to.starts_with(&format!("{from}/")) {
        return Err(Error::Invalid {
            what: "mailbox rename",
            reason: format!("cannot rename {from:?} into its own inferior {to:?}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod marker_tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn markers_persist_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        {
            let s = EmbeddedStore::open(&path).unwrap();
            assert!(!s.has_marker("delivered/Q1/abc").await.unwrap());
            s.set_marker("delivered/Q1/abc", Duration::from_secs(60))
                .await
                .unwrap();
            s.set_marker("delivered/Q1/abc", Duration::from_secs(60))
                .await
                .unwrap();
            s.set_marker("gone", Duration::ZERO).await.unwrap();
            assert!(s.set_marker("a{b}", Duration::from_secs(1)).await.is_err());
        }
        // Durable across a reopen; an expired marker reads as unset.
        let s = EmbeddedStore::open(&path).unwrap();
        assert!(s.has_marker("delivered/Q1/abc").await.unwrap());
        assert!(!s.has_marker("delivered/Q1/abd").await.unwrap());
        assert!(!s.has_marker("gone").await.unwrap());
    }
}
