//! Backend-generic conformance suite for [`MetaStore`] implementations.
//!
//! Every implementation must pass [`run_all`]. Each case is also a public
//! function, uses its own domains, accounts and blob keys, and so cases can
//! share one (initially empty) store. Failures panic with the case name and
//! what was expected.
//!
//! ```ignore
//! let store: Arc<dyn MetaStore> = Arc::new(EmbeddedStore::open(&path)?);
//! posthorn_mailbox_store::conformance::run_all(store).await;
//! ```

mod records;

pub use records::{queue_index, records};

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::{
    Alias, AppendOutcome, DEFAULT_MAILBOXES, Error, FlagOp, MetaStore, NewMessage, Quota,
    SpecialUse, Usage,
};

/// Run every case, in order, on one store.
pub async fn run_all(store: Arc<dyn MetaStore>) {
    leases(store.clone()).await;
    ping(&store).await;
    domains(&store).await;
    accounts(&store).await;
    default_mailboxes(&store).await;
    aliases(&store).await;
    quota_and_usage(&store).await;
    mailboxes(&store).await;
    rename_inbox(&store).await;
    concurrent_appends(store.clone()).await;
    dedupe(&store).await;
    store_flags(&store).await;
    expunge(&store).await;
    blob_refs(&store).await;
    remove_account(&store).await;
    uids_never_reused(&store).await;
    uidvalidity_changes_on_recreate(&store).await;
    account_isolation(&store).await;
    header_prefix_roundtrip(&store).await;
    markers(&store).await;
    records(&store).await;
    queue_index(&store).await;
}

// --- helpers ---

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A message of `size` octets with body `blob`.
fn msg(blob: &str, size: u64, flags: &[&str], dedupe_key: Option<&str>) -> NewMessage {
    NewMessage {
        dedupe_key: dedupe_key.map(String::from),
        flags: flags.iter().map(|f| f.to_string()).collect(),
        internal_date: 1_700_000_000,
        size,
        blob_key: blob.to_string(),
        header_prefix: String::new(),
        envelope: Some(format!("(envelope of {blob})")),
        bodystructure: Some("(\"text\" \"plain\")".to_string()),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Unwrap with the case name in the panic message.
fn ok<T>(case: &str, what: &str, r: crate::Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("[{case}] {what}: unexpected error: {e:?}"),
    }
}

macro_rules! expect_err {
    ($case:expr, $what:expr, $r:expr, $pat:pat) => {
        match $r {
            Err($pat) => {}
            other => panic!(
                "[{}] {}: expected {}, got {:?}",
                $case,
                $what,
                stringify!($pat),
                other
            ),
        }
    };
}

async fn setup_account(store: &Arc<dyn MetaStore>, case: &str, domain: &str, account: &str) {
    if !ok(case, "is_local_domain", store.is_local_domain(domain).await) {
        ok(case, "add_domain", store.add_domain(domain).await);
    }
    ok(
        case,
        "add_account",
        store
            .add_account(account, "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA")
            .await,
    );
}

async fn appended(
    store: &Arc<dyn MetaStore>,
    case: &str,
    account: &str,
    mailbox: &str,
    m: NewMessage,
) -> (u32, u64) {
    match ok(case, "append", store.append(account, mailbox, m).await) {
        AppendOutcome::Appended { uid, modseq } => (uid, modseq),
        other => panic!("[{case}] append: expected Appended, got {other:?}"),
    }
}

async fn mailbox(
    store: &Arc<dyn MetaStore>,
    case: &str,
    account: &str,
    name: &str,
) -> crate::MailboxInfo {
    ok(case, "get_mailbox", store.get_mailbox(account, name).await)
        .unwrap_or_else(|| panic!("[{case}] mailbox {name} of {account} missing"))
}

async fn usage(store: &Arc<dyn MetaStore>, case: &str, account: &str) -> Usage {
    ok(case, "get_usage", store.get_usage(account).await)
}

// --- cases ---

/// The backend answers.
pub async fn ping(store: &Arc<dyn MetaStore>) {
    ok("ping", "ping", store.ping().await);
}

/// Domains: add, list, duplicate, removal refused while accounts exist, remove.
pub async fn domains(store: &Arc<dyn MetaStore>) {
    let case = "domains";
    let d = "conf-domains.test";
    assert!(
        !ok(case, "is_local", store.is_local_domain(d).await),
        "[{case}] fresh domain must not be local"
    );
    ok(case, "add_domain", store.add_domain(d).await);
    expect_err!(
        case,
        "duplicate domain",
        store.add_domain(d).await,
        Error::AlreadyExists(_)
    );
    expect_err!(
        case,
        "duplicate domain in other case",
        store.add_domain("CONF-Domains.TEST").await,
        Error::AlreadyExists(_)
    );
    assert!(ok(case, "is_local", store.is_local_domain(d).await));
    assert!(
        ok(
            case,
            "is_local (case)",
            store.is_local_domain("Conf-Domains.Test").await
        ),
        "[{case}] domains are case-insensitive"
    );
    ok(
        case,
        "add second domain",
        store.add_domain("conf-domains-b.test").await,
    );
    let list = ok(case, "list_domains", store.list_domains().await);
    assert!(
        list.contains(&d.to_string()) && list.contains(&"conf-domains-b.test".to_string()),
        "[{case}] list_domains {list:?} lacks the added domains"
    );
    let mut sorted = list.clone();
    sorted.sort();
    assert_eq!(list, sorted, "[{case}] list_domains must be sorted");

    ok(
        case,
        "add_account",
        store.add_account("u@conf-domains.test", "h").await,
    );
    expect_err!(
        case,
        "remove domain with accounts",
        store.remove_domain(d).await,
        Error::Invalid { .. }
    );
    ok(
        case,
        "remove_account",
        store.remove_account("u@conf-domains.test").await,
    );
    ok(case, "remove_domain", store.remove_domain(d).await);
    expect_err!(
        case,
        "remove absent domain",
        store.remove_domain(d).await,
        Error::NotFound(_)
    );
    assert!(
        !ok(case, "is_local", store.is_local_domain(d).await),
        "[{case}] removed domain still local"
    );
    let list = ok(case, "list_domains", store.list_domains().await);
    assert!(
        !list.contains(&d.to_string()),
        "[{case}] removed domain still listed"
    );
    ok(
        case,
        "remove_domain b",
        store.remove_domain("conf-domains-b.test").await,
    );
}

/// Accounts: unknown domain, duplicate, normalisation, password, listing.
pub async fn accounts(store: &Arc<dyn MetaStore>) {
    let case = "accounts";
    let d = "conf-accounts.test";
    expect_err!(
        case,
        "account of unknown domain",
        store.add_account("bob@conf-accounts.test", "h").await,
        Error::UnknownDomain(_)
    );
    ok(case, "add_domain", store.add_domain(d).await);
    ok(
        case,
        "add_account",
        store.add_account("Bob@Conf-Accounts.TEST", "hash1").await,
    );
    ok(
        case,
        "add_account 2",
        store.add_account("alice@conf-accounts.test", "hash2").await,
    );
    expect_err!(
        case,
        "duplicate account",
        store.add_account("bob@conf-accounts.test", "x").await,
        Error::AlreadyExists(_)
    );
    expect_err!(
        case,
        "address without @",
        store.add_account("nobody", "x").await,
        Error::Invalid { .. }
    );
    expect_err!(
        case,
        "address with hash-tag braces",
        store.add_account("a{b}@conf-accounts.test", "x").await,
        Error::Invalid { .. }
    );
    let acct = ok(
        case,
        "get_account",
        store.get_account("BOB@conf-accounts.test").await,
    )
    .unwrap_or_else(|| panic!("[{case}] account missing"));
    assert_eq!(
        acct.address, "bob@conf-accounts.test",
        "[{case}] address normalised"
    );
    assert_eq!(acct.password_hash, "hash1");
    assert_eq!(
        acct.quota,
        Quota::default(),
        "[{case}] new accounts are unlimited"
    );
    assert_eq!(
        usage(store, case, "bob@conf-accounts.test").await,
        Usage::default()
    );

    ok(
        case,
        "set_password",
        store.set_password("bob@conf-accounts.test", "hash3").await,
    );
    let acct = ok(
        case,
        "get_account",
        store.get_account("bob@conf-accounts.test").await,
    )
    .unwrap();
    assert_eq!(
        acct.password_hash, "hash3",
        "[{case}] password not replaced"
    );
    expect_err!(
        case,
        "set_password absent",
        store.set_password("nobody@conf-accounts.test", "x").await,
        Error::NotFound(_)
    );
    assert!(
        ok(
            case,
            "get absent",
            store.get_account("nobody@conf-accounts.test").await
        )
        .is_none(),
        "[{case}] absent account found"
    );
    let list = ok(case, "list_accounts", store.list_accounts(Some(d)).await);
    assert_eq!(
        list,
        strings(&["alice@conf-accounts.test", "bob@conf-accounts.test"]),
        "[{case}] list_accounts(domain)"
    );
    let all = ok(case, "list_accounts all", store.list_accounts(None).await);
    assert!(all.contains(&"bob@conf-accounts.test".to_string()));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "[{case}] list_accounts must be sorted");
    expect_err!(
        case,
        "remove absent",
        store.remove_account("nobody@conf-accounts.test").await,
        Error::NotFound(_)
    );
}

/// A new account has [`DEFAULT_MAILBOXES`] with their special-use attributes.
pub async fn default_mailboxes(store: &Arc<dyn MetaStore>) {
    let case = "default_mailboxes";
    let a = "carol@conf-defaults.test";
    setup_account(store, case, "conf-defaults.test", a).await;
    let list = ok(case, "list_mailboxes", store.list_mailboxes(a).await);
    let mut want: Vec<(String, Option<SpecialUse>)> = DEFAULT_MAILBOXES
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
    want.sort_by(|x, y| x.0.cmp(&y.0));
    let got: Vec<(String, Option<SpecialUse>)> = list
        .iter()
        .map(|m| (m.name.clone(), m.special_use))
        .collect();
    assert_eq!(got, want, "[{case}] default mailboxes (sorted by name)");
    for m in &list {
        assert!(m.uidvalidity != 0, "[{case}] {} has UIDVALIDITY 0", m.name);
        assert_eq!(m.uidnext, 1, "[{case}] {} uidnext", m.name);
        assert_eq!(m.highest_modseq, 1, "[{case}] {} highest_modseq", m.name);
        assert_eq!((m.exists, m.unseen), (0, 0), "[{case}] {} counts", m.name);
    }
    expect_err!(
        case,
        "list_mailboxes of absent account",
        store.list_mailboxes("nobody@conf-defaults.test").await,
        Error::NotFound(_)
    );
}

/// Aliases: set, get (case-insensitive), catch-all, replace, list, remove.
pub async fn aliases(store: &Arc<dyn MetaStore>) {
    let case = "aliases";
    let pm = Alias {
        address: "Postmaster@Conf-Alias.test".into(),
        targets: strings(&["root@conf-alias.test", "ops@elsewhere.test"]),
    };
    ok(case, "set_alias", store.set_alias(&pm).await);
    let got = ok(
        case,
        "get_alias",
        store.get_alias("postmaster@conf-alias.test").await,
    )
    .unwrap_or_else(|| panic!("[{case}] alias missing"));
    assert_eq!(
        got.address, "postmaster@conf-alias.test",
        "[{case}] alias normalised"
    );
    assert_eq!(got.targets, pm.targets, "[{case}] targets in order");
    let catch_all = Alias {
        address: "@conf-alias.test".into(),
        targets: strings(&["catch@conf-alias.test"]),
    };
    ok(case, "set catch-all", store.set_alias(&catch_all).await);
    let got = ok(
        case,
        "get catch-all",
        store.get_alias("@CONF-ALIAS.test").await,
    )
    .unwrap_or_else(|| panic!("[{case}] catch-all missing"));
    assert_eq!(got, catch_all);
    assert!(
        ok(
            case,
            "get absent",
            store.get_alias("nobody@conf-alias.test").await
        )
        .is_none(),
        "[{case}] absent alias found"
    );
    let replaced = Alias {
        address: "postmaster@conf-alias.test".into(),
        targets: strings(&["admin@conf-alias.test"]),
    };
    ok(case, "replace alias", store.set_alias(&replaced).await);
    let list = ok(case, "list_aliases", store.list_aliases().await);
    let ours: Vec<&Alias> = list
        .iter()
        .filter(|a| a.address.ends_with("conf-alias.test"))
        .collect();
    assert_eq!(ours, vec![&catch_all, &replaced], "[{case}] list_aliases");
    let addrs: Vec<&String> = list.iter().map(|a| &a.address).collect();
    let mut sorted = addrs.clone();
    sorted.sort();
    assert_eq!(addrs, sorted, "[{case}] list_aliases must be sorted");
    ok(
        case,
        "remove_alias",
        store.remove_alias("postmaster@conf-alias.test").await,
    );
    assert!(
        ok(
            case,
            "get removed",
            store.get_alias("postmaster@conf-alias.test").await
        )
        .is_none()
    );
    expect_err!(
        case,
        "remove absent alias",
        store.remove_alias("postmaster@conf-alias.test").await,
        Error::NotFound(_)
    );
    ok(
        case,
        "remove catch-all",
        store.remove_alias("@conf-alias.test").await,
    );
}

/// Quota set/get; usage follows appends and expunges.
pub async fn quota_and_usage(store: &Arc<dyn MetaStore>) {
    let case = "quota_and_usage";
    let a = "dave@conf-quota.test";
    setup_account(store, case, "conf-quota.test", a).await;
    let q = Quota {
        max_bytes: Some(10_000),
        max_messages: Some(5),
    };
    ok(case, "set_quota", store.set_quota(a, q).await);
    let acct = ok(case, "get_account", store.get_account(a).await).unwrap();
    assert_eq!(acct.quota, q, "[{case}] quota not stored");
    ok(
        case,
        "set_quota partial",
        store
            .set_quota(
                a,
                Quota {
                    max_bytes: None,
                    max_messages: Some(7),
                },
            )
            .await,
    );
    let acct = ok(case, "get_account", store.get_account(a).await).unwrap();
    assert_eq!(acct.quota.max_bytes, None, "[{case}] unlimited bytes");
    assert_eq!(acct.quota.max_messages, Some(7));
    expect_err!(
        case,
        "set_quota absent",
        store.set_quota("nobody@conf-quota.test", q).await,
        Error::NotFound(_)
    );
    expect_err!(
        case,
        "get_usage absent",
        store.get_usage("nobody@conf-quota.test").await,
        Error::NotFound(_)
    );
    let (u1, _) = appended(store, case, a, "INBOX", msg("conf-quota-1", 100, &[], None)).await;
    appended(store, case, a, "Sent", msg("conf-quota-2", 250, &[], None)).await;
    assert_eq!(
        usage(store, case, a).await,
        Usage {
            bytes: 350,
            messages: 2
        },
        "[{case}] usage after two appends"
    );
    ok(case, "expunge", store.expunge(a, "INBOX", &[u1]).await);
    assert_eq!(
        usage(store, case, a).await,
        Usage {
            bytes: 250,
            messages: 1
        },
        "[{case}] usage after expunge"
    );
}

/// Mailbox create/list/subscribe/rename/delete and name validation.
pub async fn mailboxes(store: &Arc<dyn MetaStore>) {
    let case = "mailboxes";
    let a = "erin@conf-mbox.test";
    setup_account(store, case, "conf-mbox.test", a).await;

    let info = ok(
        case,
        "create",
        store.create_mailbox(a, "Projects", None).await,
    );
    assert_eq!(info.name, "Projects");
    assert_eq!((info.uidnext, info.highest_modseq, info.exists), (1, 1, 0));
    assert!(info.uidvalidity != 0);
    assert!(
        !info.subscribed,
        "[{case}] created mailboxes start unsubscribed"
    );
    let arch = ok(
        case,
        "create special-use",
        store
            .create_mailbox(a, "Old", Some(SpecialUse::Archive))
            .await,
    );
    assert_eq!(arch.special_use, Some(SpecialUse::Archive));
    expect_err!(
        case,
        "duplicate mailbox",
        store.create_mailbox(a, "Projects", None).await,
        Error::AlreadyExists(_)
    );
    expect_err!(
        case,
        "create inbox (any case)",
        store.create_mailbox(a, "inbox", None).await,
        Error::AlreadyExists(_)
    );
    ok(
        case,
        "create child",
        store.create_mailbox(a, "Projects/2024", None).await,
    );
    for bad in ["../x", "a//b", "*", "a/%", "", "a/./b", "/a", "a/", "x\ny"] {
        expect_err!(
            case,
            format!("invalid name {bad:?}"),
            store.create_mailbox(a, bad, None).await,
            Error::Invalid { .. }
        );
    }
    expect_err!(
        case,
        "create for absent account",
        store
            .create_mailbox("nobody@conf-mbox.test", "X", None)
            .await,
        Error::NotFound(_)
    );

    // Subscription.
    ok(
        case,
        "subscribe",
        store.set_subscribed(a, "Projects", true).await,
    );
    assert!(mailbox(store, case, a, "Projects").await.subscribed);
    ok(
        case,
        "unsubscribe",
        store.set_subscribed(a, "Projects", false).await,
    );
    assert!(!mailbox(store, case, a, "Projects").await.subscribed);
    expect_err!(
        case,
        "subscribe absent",
        store.set_subscribed(a, "Nope", true).await,
        Error::NotFound(_)
    );

    // INBOX is case-insensitive and cannot be deleted.
    assert_eq!(mailbox(store, case, a, "inbox").await.name, "INBOX");
    expect_err!(
        case,
        "delete INBOX",
        store.delete_mailbox(a, "INBOX").await,
        Error::Invalid { .. }
    );
    expect_err!(
        case,
        "delete inbox",
        store.delete_mailbox(a, "inbox").await,
        Error::Invalid { .. }
    );

    // Rename keeps messages and UIDVALIDITY and moves inferiors.
    let (uid, _) = appended(
        store,
        case,
        a,
        "Projects",
        msg("conf-mbox-1", 10, &[], None),
    )
    .await;
    let before = mailbox(store, case, a, "Projects").await;
    expect_err!(
        case,
        "rename to existing",
        store.rename_mailbox(a, "Projects", "Old").await,
        Error::AlreadyExists(_)
    );
    expect_err!(
        case,
        "rename absent",
        store.rename_mailbox(a, "Nope", "Other").await,
        Error::NotFound(_)
    );
    expect_err!(
        case,
        "rename to invalid",
        store.rename_mailbox(a, "Projects", "../evil").await,
        Error::Invalid { .. }
    );
    ok(
        case,
        "rename",
        store
            .rename_mailbox(a, "Projects", "Archive/Projects")
            .await,
    );
    assert!(
        ok(case, "get old", store.get_mailbox(a, "Projects").await).is_none(),
        "[{case}] old name still present"
    );
    assert!(
        ok(
            case,
            "get old child",
            store.get_mailbox(a, "Projects/2024").await
        )
        .is_none(),
        "[{case}] old child name still present"
    );
    let after = mailbox(store, case, a, "Archive/Projects").await;
    assert_eq!(
        after.uidvalidity, before.uidvalidity,
        "[{case}] rename keeps UIDVALIDITY"
    );
    assert_eq!(after.uidnext, before.uidnext);
    assert_eq!(after.exists, 1);
    mailbox(store, case, a, "Archive/Projects/2024").await;
    let msgs = ok(
        case,
        "fetch renamed",
        store.fetch(a, "Archive/Projects", 1, u32::MAX).await,
    );
    assert_eq!(msgs.len(), 1, "[{case}] renamed mailbox lost its message");
    assert_eq!(msgs[0].uid, uid);

    let names: Vec<String> = ok(case, "list", store.list_mailboxes(a).await)
        .into_iter()
        .map(|m| m.name)
        .collect();
    let want = strings(&[
        "Archive/Projects",
        "Archive/Projects/2024",
        "Drafts",
        "INBOX",
        "Junk",
        "Old",
        "Sent",
        "Trash",
    ]);
    assert_eq!(names, want, "[{case}] list_mailboxes sorted");

    // Delete releases usage and blob references.
    assert_eq!(
        ok(case, "blob_refs", store.blob_refs("conf-mbox-1").await),
        1
    );
    ok(
        case,
        "delete",
        store.delete_mailbox(a, "Archive/Projects").await,
    );
    assert!(
        ok(
            case,
            "get deleted",
            store.get_mailbox(a, "Archive/Projects").await
        )
        .is_none()
    );
    assert_eq!(
        usage(store, case, a).await,
        Usage::default(),
        "[{case}] usage after delete"
    );
    assert_eq!(
        ok(case, "blob_refs", store.blob_refs("conf-mbox-1").await),
        0,
        "[{case}] blob refs after delete"
    );
    expect_err!(
        case,
        "delete absent",
        store.delete_mailbox(a, "Archive/Projects").await,
        Error::NotFound(_)
    );
    expect_err!(
        case,
        "fetch absent mailbox",
        store.fetch(a, "Archive/Projects", 1, 10).await,
        Error::NotFound(_)
    );
}

/// RENAME INBOX moves its messages and leaves an empty INBOX (RFC 3501).
pub async fn rename_inbox(store: &Arc<dyn MetaStore>) {
    let case = "rename_inbox";
    let a = "frank@conf-rename.test";
    setup_account(store, case, "conf-rename.test", a).await;
    appended(store, case, a, "INBOX", msg("conf-rename-1", 10, &[], None)).await;
    appended(store, case, a, "INBOX", msg("conf-rename-2", 20, &[], None)).await;
    let before = mailbox(store, case, a, "INBOX").await;
    ok(
        case,
        "rename INBOX",
        store.rename_mailbox(a, "INBOX", "Old-Inbox").await,
    );
    let moved = mailbox(store, case, a, "Old-Inbox").await;
    assert_eq!(moved.exists, 2, "[{case}] messages moved");
    assert_eq!(moved.uidnext, before.uidnext);
    let inbox = mailbox(store, case, a, "INBOX").await;
    assert_eq!(inbox.exists, 0, "[{case}] INBOX left empty");
    assert!(
        inbox.uidvalidity != before.uidvalidity || inbox.uidnext >= before.uidnext,
        "[{case}] new INBOX must not reuse UIDs under the same UIDVALIDITY"
    );
    assert!(
        ok(
            case,
            "fetch INBOX",
            store.fetch(a, "INBOX", 1, u32::MAX).await
        )
        .is_empty()
    );
    assert_eq!(
        ok(
            case,
            "fetch moved",
            store.fetch(a, "Old-Inbox", 1, u32::MAX).await
        )
        .len(),
        2
    );
    assert_eq!(
        usage(store, case, a).await,
        Usage {
            bytes: 30,
            messages: 2
        }
    );
}

/// 1,000 concurrent appends to one mailbox from 8 tasks: distinct, strictly
/// ascending UIDs and MODSEQs.
pub async fn concurrent_appends(store: Arc<dyn MetaStore>) {
    let case = "concurrent_appends";
    let a = "grace@conf-concurrent.test";
    setup_account(&store, case, "conf-concurrent.test", a).await;
    const TASKS: usize = 8;
    const TOTAL: usize = 1000;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut i = t;
            while i < TOTAL {
                let m = msg(
                    &format!("conf-concurrent-{i}"),
                    1 + i as u64,
                    &[],
                    Some(&format!("<{i}@conf>/{a}")),
                );
                match store.append(a, "INBOX", m).await {
                    Ok(AppendOutcome::Appended { uid, modseq }) => got.push((uid, modseq)),
                    other => panic!("[{case}] append {i}: {other:?}"),
                }
                i += TASKS;
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.await
                .unwrap_or_else(|e| panic!("[{case}] task failed: {e}")),
        );
    }
    assert_eq!(all.len(), TOTAL);
    let uids: BTreeSet<u32> = all.iter().map(|(u, _)| *u).collect();
    assert_eq!(uids.len(), TOTAL, "[{case}] UIDs not distinct");
    let modseqs: BTreeSet<u64> = all.iter().map(|(_, m)| *m).collect();
    assert_eq!(modseqs.len(), TOTAL, "[{case}] MODSEQs not distinct");
    // The same atomic step assigns both: a bigger UID has a bigger MODSEQ.
    all.sort();
    for w in all.windows(2) {
        assert!(
            w[1].1 > w[0].1,
            "[{case}] MODSEQ not increasing with UID: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    let fetched = ok(case, "fetch", store.fetch(a, "INBOX", 1, u32::MAX).await);
    assert_eq!(fetched.len(), TOTAL, "[{case}] fetch count");
    for w in fetched.windows(2) {
        assert!(w[1].uid > w[0].uid, "[{case}] fetch not ascending by UID");
        assert!(
            w[1].modseq > w[0].modseq,
            "[{case}] MODSEQ not strictly increasing"
        );
    }
    let fetched_uids: BTreeSet<u32> = fetched.iter().map(|m| m.uid).collect();
    assert_eq!(
        fetched_uids, uids,
        "[{case}] fetched UIDs differ from appended"
    );
    let max = *uids.iter().next_back().unwrap();
    let info = mailbox(&store, case, a, "INBOX").await;
    assert_eq!(info.uidnext, max + 1, "[{case}] uidnext = max + 1");
    assert_eq!(info.exists as usize, TOTAL);
    assert_eq!(info.unseen as usize, TOTAL);
    assert_eq!(info.highest_modseq, *modseqs.iter().next_back().unwrap());
    let u = usage(&store, case, a).await;
    assert_eq!(u.messages as usize, TOTAL);
    assert_eq!(u.bytes, (1..=TOTAL as u64).sum::<u64>());
    // A sub-range.
    let some = ok(case, "fetch range", store.fetch(a, "INBOX", 10, 19).await);
    assert_eq!(
        some.iter().map(|m| m.uid).collect::<Vec<_>>(),
        (10..=19).collect::<Vec<_>>()
    );
    assert!(
        ok(
            case,
            "fetch empty range",
            store.fetch(a, "INBOX", 5000, 6000).await
        )
        .is_empty()
    );
}

/// A retried append with the same dedupe key adds nothing.
pub async fn dedupe(store: &Arc<dyn MetaStore>) {
    let case = "dedupe";
    let a = "heidi@conf-dedupe.test";
    let b = "ivan@conf-dedupe.test";
    setup_account(store, case, "conf-dedupe.test", a).await;
    ok(case, "add_account b", store.add_account(b, "h").await);
    let key = "<m1@conf-dedupe>/heidi@conf-dedupe.test";
    let (uid, _) = appended(
        store,
        case,
        a,
        "INBOX",
        msg("conf-dedupe-blob", 500, &[], Some(key)),
    )
    .await;
    let u = usage(store, case, a).await;
    let refs = ok(case, "blob_refs", store.blob_refs("conf-dedupe-blob").await);
    assert_eq!(refs, 1);
    let info = mailbox(store, case, a, "INBOX").await;
    for mbox in ["INBOX", "Junk"] {
        let r = ok(
            case,
            "retried append",
            store
                .append(a, mbox, msg("conf-dedupe-blob", 500, &[], Some(key)))
                .await,
        );
        assert_eq!(
            r,
            AppendOutcome::Duplicate { uid },
            "[{case}] retry to {mbox} must be a duplicate with the first UID"
        );
    }
    assert_eq!(
        usage(store, case, a).await,
        u,
        "[{case}] usage changed by a duplicate"
    );
    assert_eq!(
        ok(case, "blob_refs", store.blob_refs("conf-dedupe-blob").await),
        refs,
        "[{case}] blob refs changed by a duplicate"
    );
    assert_eq!(
        mailbox(store, case, a, "INBOX").await,
        info,
        "[{case}] mailbox changed"
    );
    assert_eq!(mailbox(store, case, a, "Junk").await.exists, 0);
    assert_eq!(
        ok(case, "fetch", store.fetch(a, "INBOX", 1, u32::MAX).await).len(),
        1
    );
    // The key is per account.
    appended(
        store,
        case,
        b,
        "INBOX",
        msg("conf-dedupe-blob", 500, &[], Some(key)),
    )
    .await;
    assert_eq!(
        ok(case, "blob_refs", store.blob_refs("conf-dedupe-blob").await),
        2
    );
    // Still a duplicate after the message was expunged.
    ok(case, "expunge", store.expunge(a, "INBOX", &[uid]).await);
    assert_eq!(
        ok(
            case,
            "append after expunge",
            store
                .append(a, "INBOX", msg("conf-dedupe-blob", 500, &[], Some(key)))
                .await
        ),
        AppendOutcome::Duplicate { uid }
    );
    assert_eq!(
        ok(case, "blob_refs", store.blob_refs("conf-dedupe-blob").await),
        1
    );
}

/// STORE: Set/Add/Remove assign new MODSEQs; UNCHANGEDSINCE refuses.
pub async fn store_flags(store: &Arc<dyn MetaStore>) {
    let case = "store_flags";
    let a = "judy@conf-flags.test";
    setup_account(store, case, "conf-flags.test", a).await;
    let (u1, m1) = appended(
        store,
        case,
        a,
        "INBOX",
        msg("conf-flags-1", 1, &["\\Seen"], None),
    )
    .await;
    let (u2, _) = appended(store, case, a, "INBOX", msg("conf-flags-2", 1, &[], None)).await;
    let info = mailbox(store, case, a, "INBOX").await;
    assert_eq!((info.exists, info.unseen), (2, 1), "[{case}] exists/unseen");
    let f = |v: &[&str]| strings(v);

    let r = ok(
        case,
        "set",
        store
            .store_flags(
                a,
                "INBOX",
                &[u1, 999],
                FlagOp::Set,
                &f(&["\\Flagged"]),
                None,
            )
            .await,
    );
    assert_eq!(r.len(), 1, "[{case}] missing UIDs are skipped");
    assert!(r[0].applied && r[0].uid == u1);
    assert_eq!(r[0].flags, f(&["\\Flagged"]));
    assert!(r[0].modseq > m1, "[{case}] set must raise MODSEQ");
    let ms_set = r[0].modseq;
    assert_eq!(
        mailbox(store, case, a, "INBOX").await.unseen,
        2,
        "[{case}] unseen after -\\Seen"
    );

    let r = ok(
        case,
        "add",
        store
            .store_flags(
                a,
                "INBOX",
                &[u1],
                FlagOp::Add,
                &f(&["\\seen", "$Work", "\\flagged"]),
                None,
            )
            .await,
    );
    assert_eq!(
        r[0].flags,
        f(&["\\Flagged", "\\seen", "$Work"]),
        "[{case}] add (case-insensitive)"
    );
    assert!(r[0].modseq > ms_set);
    let ms_add = r[0].modseq;
    assert_eq!(mailbox(store, case, a, "INBOX").await.unseen, 1);

    let r = ok(
        case,
        "remove",
        store
            .store_flags(a, "INBOX", &[u1], FlagOp::Remove, &f(&["\\FLAGGED"]), None)
            .await,
    );
    assert_eq!(
        r[0].flags,
        f(&["\\seen", "$Work"]),
        "[{case}] remove (case-insensitive)"
    );
    assert!(r[0].modseq > ms_add);
    let ms_rem = r[0].modseq;

    // A STORE that changes nothing keeps the MODSEQ.
    let r = ok(
        case,
        "no-op add",
        store
            .store_flags(a, "INBOX", &[u1], FlagOp::Add, &f(&["$work"]), None)
            .await,
    );
    assert!(r[0].applied);
    assert_eq!(
        r[0].modseq, ms_rem,
        "[{case}] unchanged flags must keep MODSEQ"
    );

    // UNCHANGEDSINCE older than the message's MODSEQ: refused.
    let r = ok(
        case,
        "unchangedsince refused",
        store
            .store_flags(
                a,
                "INBOX",
                &[u1, u2],
                FlagOp::Add,
                &f(&["$X"]),
                Some(ms_add),
            )
            .await,
    );
    assert_eq!(r.len(), 2);
    let r1 = r.iter().find(|x| x.uid == u1).unwrap();
    let r2 = r.iter().find(|x| x.uid == u2).unwrap();
    assert!(
        !r1.applied,
        "[{case}] UNCHANGEDSINCE must refuse a newer message"
    );
    assert_eq!(r1.modseq, ms_rem);
    assert_eq!(r1.flags, f(&["\\seen", "$Work"]));
    assert!(
        r2.applied,
        "[{case}] UNCHANGEDSINCE must allow an older message"
    );
    assert_eq!(r2.flags, f(&["$X"]));
    assert!(r2.modseq > ms_rem);

    // UNCHANGEDSINCE equal to the current MODSEQ: applied.
    let r = ok(
        case,
        "unchangedsince equal",
        store
            .store_flags(a, "INBOX", &[u1], FlagOp::Set, &[], Some(ms_rem))
            .await,
    );
    assert!(r[0].applied);
    assert!(r[0].flags.is_empty());
    let info = mailbox(store, case, a, "INBOX").await;
    assert_eq!(
        info.highest_modseq, r[0].modseq,
        "[{case}] HIGHESTMODSEQ follows STORE"
    );
    assert_eq!(info.unseen, 2);

    let fetched = ok(case, "fetch", store.fetch(a, "INBOX", 1, u32::MAX).await);
    assert!(fetched[0].flags.is_empty());
    assert_eq!(fetched[1].flags, f(&["$X"]));
    assert_eq!(fetched[0].modseq, r[0].modseq);
    expect_err!(
        case,
        "flag with space",
        store
            .store_flags(a, "INBOX", &[u1], FlagOp::Add, &f(&["a b"]), None)
            .await,
        Error::Invalid { .. }
    );
    expect_err!(
        case,
        "store in absent mailbox",
        store
            .store_flags(a, "Nope", &[u1], FlagOp::Add, &f(&["x"]), None)
            .await,
        Error::NotFound(_)
    );
}

/// EXPUNGE removes, logs with new MODSEQs, and `expunged_since` reports.
pub async fn expunge(store: &Arc<dyn MetaStore>) {
    let case = "expunge";
    let a = "ken@conf-expunge.test";
    setup_account(store, case, "conf-expunge.test", a).await;
    let mut uids = Vec::new();
    for i in 0..3 {
        uids.push(
            appended(
                store,
                case,
                a,
                "INBOX",
                msg(&format!("conf-expunge-{i}"), 10, &[], None),
            )
            .await
            .0,
        );
    }
    let hms = mailbox(store, case, a, "INBOX").await.highest_modseq;
    let removed = ok(
        case,
        "expunge",
        store.expunge(a, "INBOX", &[uids[2], 999, uids[0]]).await,
    );
    assert_eq!(
        removed,
        vec![uids[0], uids[2]],
        "[{case}] removed UIDs ascending, missing skipped"
    );
    let info = mailbox(store, case, a, "INBOX").await;
    assert_eq!(info.exists, 1);
    assert_eq!(info.unseen, 1);
    assert!(
        info.highest_modseq >= hms + 2,
        "[{case}] each expunge gets a new MODSEQ"
    );
    assert_eq!(
        ok(
            case,
            "expunged_since",
            store.expunged_since(a, "INBOX", hms).await
        ),
        vec![uids[0], uids[2]]
    );
    assert_eq!(
        ok(
            case,
            "expunged_since 0",
            store.expunged_since(a, "INBOX", 0).await
        ),
        vec![uids[0], uids[2]]
    );
    assert!(
        ok(
            case,
            "expunged_since now",
            store.expunged_since(a, "INBOX", info.highest_modseq).await
        )
        .is_empty()
    );
    let left = ok(case, "fetch", store.fetch(a, "INBOX", 1, u32::MAX).await);
    assert_eq!(
        left.iter().map(|m| m.uid).collect::<Vec<_>>(),
        vec![uids[1]]
    );
    assert!(
        ok(
            case,
            "expunge again",
            store.expunge(a, "INBOX", &[uids[0]]).await
        )
        .is_empty(),
        "[{case}] expunging twice removes nothing"
    );
    assert!(
        ok(
            case,
            "expunged_since other",
            store.expunged_since(a, "Sent", 0).await
        )
        .is_empty()
    );
    expect_err!(
        case,
        "expunge absent mailbox",
        store.expunge(a, "Nope", &[1]).await,
        Error::NotFound(_)
    );
}

/// Blob reference counts, GC candidates and forget_blob.
pub async fn blob_refs(store: &Arc<dyn MetaStore>) {
    let case = "blob_refs";
    let a = "lena@conf-blobs.test";
    setup_account(store, case, "conf-blobs.test", a).await;
    let blob = "conf-blobs-shared";
    assert_eq!(ok(case, "unknown blob", store.blob_refs(blob).await), 0);
    let (u1, _) = appended(store, case, a, "INBOX", msg(blob, 10, &[], None)).await;
    let (u2, _) = appended(store, case, a, "Sent", msg(blob, 10, &[], None)).await;
    assert_eq!(ok(case, "refs 2", store.blob_refs(blob).await), 2);
    let far = now() + 3600;
    assert!(
        !ok(case, "gc_candidates", store.gc_candidates(far).await).contains(&blob.to_string()),
        "[{case}] referenced blob is a GC candidate"
    );
    ok(case, "expunge 1", store.expunge(a, "INBOX", &[u1]).await);
    assert_eq!(ok(case, "refs 1", store.blob_refs(blob).await), 1);
    ok(case, "expunge 2", store.expunge(a, "Sent", &[u2]).await);
    assert_eq!(ok(case, "refs 0", store.blob_refs(blob).await), 0);
    let c = ok(case, "gc_candidates", store.gc_candidates(far).await);
    assert!(
        c.contains(&blob.to_string()),
        "[{case}] unreferenced blob not a GC candidate: {c:?}"
    );
    let c = ok(
        case,
        "gc_candidates past",
        store.gc_candidates(now() - 3600).await,
    );
    assert!(
        !c.contains(&blob.to_string()),
        "[{case}] blob dropped to 0 just now is a candidate for an hour ago"
    );
    assert!(
        ok(case, "forget", store.forget_blob(blob).await),
        "[{case}] forget_blob refused"
    );
    assert!(
        !ok(case, "gc_candidates", store.gc_candidates(far).await).contains(&blob.to_string()),
        "[{case}] forgotten blob still a candidate"
    );
    assert_eq!(
        ok(case, "refs after forget", store.blob_refs(blob).await),
        0
    );

    // A referenced blob is not forgotten.
    let other = "conf-blobs-kept";
    let (u3, _) = appended(store, case, a, "INBOX", msg(other, 10, &[], None)).await;
    ok(case, "expunge", store.expunge(a, "INBOX", &[u3]).await);
    appended(store, case, a, "INBOX", msg(other, 10, &[], None)).await;
    assert!(
        !ok(case, "forget referenced", store.forget_blob(other).await),
        "[{case}] forget_blob forgot a referenced blob"
    );
    assert_eq!(ok(case, "refs kept", store.blob_refs(other).await), 1);
    assert!(
        !ok(case, "gc_candidates", store.gc_candidates(far).await).contains(&other.to_string()),
        "[{case}] re-referenced blob is a candidate"
    );
}

/// remove_account removes mailboxes, messages, usage, blob refs, dedupe keys.
pub async fn remove_account(store: &Arc<dyn MetaStore>) {
    let case = "remove_account";
    let a = "mike@conf-remove.test";
    setup_account(store, case, "conf-remove.test", a).await;
    ok(case, "create", store.create_mailbox(a, "Keep", None).await);
    let key = "<r1@conf>/mike@conf-remove.test";
    appended(
        store,
        case,
        a,
        "INBOX",
        msg("conf-remove-1", 10, &[], Some(key)),
    )
    .await;
    appended(store, case, a, "Keep", msg("conf-remove-2", 20, &[], None)).await;
    appended(store, case, a, "Keep", msg("conf-remove-1", 10, &[], None)).await;
    assert_eq!(ok(case, "refs", store.blob_refs("conf-remove-1").await), 2);
    ok(case, "remove_account", store.remove_account(a).await);
    assert!(ok(case, "get_account", store.get_account(a).await).is_none());
    expect_err!(
        case,
        "list_mailboxes",
        store.list_mailboxes(a).await,
        Error::NotFound(_)
    );
    expect_err!(
        case,
        "get_usage",
        store.get_usage(a).await,
        Error::NotFound(_)
    );
    assert!(ok(case, "get_mailbox", store.get_mailbox(a, "Keep").await).is_none());
    expect_err!(
        case,
        "fetch",
        store.fetch(a, "INBOX", 1, u32::MAX).await,
        Error::NotFound(_)
    );
    expect_err!(
        case,
        "append",
        store
            .append(a, "INBOX", msg("conf-remove-3", 1, &[], None))
            .await,
        Error::NotFound(_)
    );
    assert_eq!(
        ok(case, "refs 1", store.blob_refs("conf-remove-1").await),
        0
    );
    assert_eq!(
        ok(case, "refs 2", store.blob_refs("conf-remove-2").await),
        0
    );
    assert_eq!(
        ok(case, "refs 3", store.blob_refs("conf-remove-3").await),
        0
    );
    assert!(
        !ok(
            case,
            "list",
            store.list_accounts(Some("conf-remove.test")).await
        )
        .contains(&a.to_string())
    );
    expect_err!(
        case,
        "remove twice",
        store.remove_account(a).await,
        Error::NotFound(_)
    );
    // Re-created, the account starts empty, without old dedupe keys.
    ok(case, "re-add", store.add_account(a, "h").await);
    assert_eq!(usage(store, case, a).await, Usage::default());
    let names: Vec<String> = ok(case, "list_mailboxes", store.list_mailboxes(a).await)
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(
        !names.contains(&"Keep".to_string()),
        "[{case}] old mailbox survived"
    );
    assert!(ok(case, "fetch", store.fetch(a, "INBOX", 1, u32::MAX).await).is_empty());
    appended(
        store,
        case,
        a,
        "INBOX",
        msg("conf-remove-1", 10, &[], Some(key)),
    )
    .await;
}

/// UIDs are never reused after EXPUNGE.
pub async fn uids_never_reused(store: &Arc<dyn MetaStore>) {
    let case = "uids_never_reused";
    let a = "nina@conf-uids.test";
    setup_account(store, case, "conf-uids.test", a).await;
    let mut uids = Vec::new();
    for i in 0..3 {
        uids.push(
            appended(
                store,
                case,
                a,
                "INBOX",
                msg(&format!("conf-uids-{i}"), 1, &[], None),
            )
            .await
            .0,
        );
    }
    let max = *uids.iter().max().unwrap();
    ok(case, "expunge max", store.expunge(a, "INBOX", &[max]).await);
    let (next, _) = appended(store, case, a, "INBOX", msg("conf-uids-x", 1, &[], None)).await;
    assert!(
        next > max,
        "[{case}] UID {next} reused after expunging {max}"
    );
    let all: Vec<u32> = ok(case, "fetch", store.fetch(a, "INBOX", 1, u32::MAX).await)
        .into_iter()
        .map(|m| m.uid)
        .collect();
    ok(case, "expunge all", store.expunge(a, "INBOX", &all).await);
    let (later, _) = appended(store, case, a, "INBOX", msg("conf-uids-y", 1, &[], None)).await;
    assert!(
        later > next,
        "[{case}] UID {later} reused in an emptied mailbox"
    );
    assert_eq!(mailbox(store, case, a, "INBOX").await.uidnext, later + 1);
}

/// A deleted and recreated mailbox gets a different UIDVALIDITY.
pub async fn uidvalidity_changes_on_recreate(store: &Arc<dyn MetaStore>) {
    let case = "uidvalidity_changes_on_recreate";
    let a = "oscar@conf-uidv.test";
    setup_account(store, case, "conf-uidv.test", a).await;
    let first = ok(case, "create", store.create_mailbox(a, "Temp", None).await);
    appended(store, case, a, "Temp", msg("conf-uidv-1", 1, &[], None)).await;
    ok(case, "delete", store.delete_mailbox(a, "Temp").await);
    let second = ok(
        case,
        "recreate",
        store.create_mailbox(a, "Temp", None).await,
    );
    assert_ne!(
        first.uidvalidity, second.uidvalidity,
        "[{case}] recreated mailbox kept its UIDVALIDITY"
    );
    assert_eq!(second.uidnext, 1);
    assert_eq!(second.exists, 0);
    assert!(ok(case, "fetch", store.fetch(a, "Temp", 1, u32::MAX).await).is_empty());
    ok(case, "delete again", store.delete_mailbox(a, "Temp").await);
    let third = ok(
        case,
        "recreate again",
        store.create_mailbox(a, "Temp", None).await,
    );
    assert!(
        third.uidvalidity != first.uidvalidity && third.uidvalidity != second.uidvalidity,
        "[{case}] UIDVALIDITY repeated"
    );
}

/// One account never sees another's mailboxes or messages.
pub async fn account_isolation(store: &Arc<dyn MetaStore>) {
    let case = "account_isolation";
    let a = "pat@conf-iso.test";
    let b = "quinn@conf-iso.test";
    setup_account(store, case, "conf-iso.test", a).await;
    ok(case, "add b", store.add_account(b, "h").await);
    ok(
        case,
        "create",
        store.create_mailbox(a, "Secret", None).await,
    );
    appended(store, case, a, "Secret", msg("conf-iso-a", 1, &[], None)).await;
    appended(store, case, b, "INBOX", msg("conf-iso-b", 1, &[], None)).await;
    assert!(ok(case, "get_mailbox", store.get_mailbox(b, "Secret").await).is_none());
    let b_inbox = ok(case, "fetch b", store.fetch(b, "INBOX", 1, u32::MAX).await);
    assert_eq!(b_inbox.len(), 1);
    assert_eq!(b_inbox[0].blob_key, "conf-iso-b");
    assert!(ok(case, "fetch a", store.fetch(a, "INBOX", 1, u32::MAX).await).is_empty());
    for evil in ["../pat@conf-iso.test/Secret", "Secret/../../x"] {
        expect_err!(
            case,
            format!("traversal {evil:?}"),
            store.fetch(b, evil, 1, u32::MAX).await,
            Error::Invalid { .. }
        );
    }
    expect_err!(
        case,
        "hash-tag escape",
        store.fetch("x}:@conf-iso.test", "INBOX", 1, 10).await,
        Error::Invalid { .. }
    );
    let m = ok(
        case,
        "fetch a secret",
        store.fetch(a, "Secret", 1, u32::MAX).await,
    );
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].envelope.as_deref(), Some("(envelope of conf-iso-a)"));
    assert_eq!(m[0].internal_date, 1_700_000_000);
    assert_eq!(m[0].size, 1);
}

/// The per-copy header prefix is stored byte-identical and returned by
/// fetch; one blob shared by two copies keeps each copy's own prefix; the
/// prefix survives STORE and RENAME; without one, fetch returns "".
pub async fn header_prefix_roundtrip(store: &Arc<dyn MetaStore>) {
    let case = "header_prefix_roundtrip";
    let a = "rita@conf-prefix.test";
    setup_account(store, case, "conf-prefix.test", a).await;
    let blob = "conf-prefix-shared";
    // CRLFs, a tab (folded line), quotes, a backslash, JSON-ish and Lua
    // pattern characters, spaces and non-ASCII: all must come back as is.
    let p1 = "Return-Path: <sender+x@conf-prefix.test>\r\n\
              Delivered-To: rita@conf-prefix.test\r\n\
              X-Trace: \"q\" \\ {\"k\":[1]} %s %d 100%\r\n\
              \tfolded  two  spaces, caf\u{e9}\r\n";
    let p2 = "Return-Path: <>\r\nDelivered-To: other@conf-prefix.test\r\n";
    let with = |prefix: &str, key: Option<&str>| {
        let mut m = msg(blob, (prefix.len() + 100) as u64, &[], key);
        m.header_prefix = prefix.to_string();
        m
    };
    let before = usage(store, case, a).await;
    let key1 = "<p1@conf>/rita@conf-prefix.test";
    let (u1, _) = appended(store, case, a, "INBOX", with(p1, Some(key1))).await;
    ok(
        case,
        "create",
        store.create_mailbox(a, "Copies", None).await,
    );
    let (u2, _) = appended(store, case, a, "Copies", with(p2, None)).await;
    let (u3, _) = appended(
        store,
        case,
        a,
        "INBOX",
        msg("conf-prefix-plain", 7, &[], None),
    )
    .await;
    assert_eq!(
        ok(case, "blob_refs", store.blob_refs(blob).await),
        2,
        "[{case}] two copies share one blob"
    );
    assert_eq!(
        usage(store, case, a).await,
        Usage {
            bytes: before.bytes + (p1.len() + 100) as u64 + (p2.len() + 100) as u64 + 7,
            messages: before.messages + 3,
        },
        "[{case}] usage counts size as passed (prefix included)"
    );

    // A duplicate with another prefix changes nothing.
    match ok(
        case,
        "duplicate append",
        store.append(a, "INBOX", with(p2, Some(key1))).await,
    ) {
        AppendOutcome::Duplicate { uid } => assert_eq!(uid, u1, "[{case}] duplicate uid"),
        other => panic!("[{case}] duplicate append: expected Duplicate, got {other:?}"),
    }

    let inbox = ok(case, "fetch", store.fetch(a, "INBOX", 1, u32::MAX).await);
    assert_eq!(inbox.len(), 2, "[{case}] INBOX messages");
    assert_eq!(inbox[0].uid, u1);
    assert_eq!(
        inbox[0].header_prefix.as_bytes(),
        p1.as_bytes(),
        "[{case}] prefix not byte-identical"
    );
    assert_eq!(inbox[0].size, (p1.len() + 100) as u64, "[{case}] size");
    assert_eq!(inbox[0].blob_key, blob);
    assert_eq!(inbox[1].uid, u3);
    assert_eq!(
        inbox[1].header_prefix, "",
        "[{case}] append without a prefix must fetch \"\""
    );
    let copies = ok(
        case,
        "fetch copies",
        store.fetch(a, "Copies", 1, u32::MAX).await,
    );
    assert_eq!(copies.len(), 1);
    assert_eq!((copies[0].uid, copies[0].blob_key.as_str()), (u2, blob));
    assert_eq!(
        copies[0].header_prefix, p2,
        "[{case}] each copy keeps its own prefix"
    );

    // The prefix is immutable: flag changes and a rename keep it.
    ok(
        case,
        "store_flags",
        store
            .store_flags(a, "INBOX", &[u1], FlagOp::Add, &strings(&["\\Seen"]), None)
            .await,
    );
    ok(
        case,
        "rename",
        store.rename_mailbox(a, "Copies", "Copies2").await,
    );
    let one = ok(
        case,
        "fetch after store",
        store.fetch(a, "INBOX", u1, u1).await,
    );
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].flags, strings(&["\\Seen"]));
    assert_eq!(one[0].header_prefix, p1, "[{case}] prefix changed by STORE");
    let moved = ok(
        case,
        "fetch after rename",
        store.fetch(a, "Copies2", 1, u32::MAX).await,
    );
    assert_eq!(moved.len(), 1);
    assert_eq!(
        moved[0].header_prefix, p2,
        "[{case}] prefix changed by RENAME"
    );
}

/// Leases: exclusive, renewable by the owner, expiring, releasable only by the owner.
pub async fn leases(store: Arc<dyn MetaStore>) {
    use std::time::{Duration, Instant};
    let name = format!("pop3:lease-{}@conformance.test", std::process::id());
    // Exclusivity is checked with leases no step can outlast, however slow
    // the machine; expiry below with a short one, waited for.
    let long = Duration::from_secs(120);
    assert!(
        store.acquire_lease(&name, "a", long).await.unwrap(),
        "[leases] first acquire"
    );
    assert!(
        !store.acquire_lease(&name, "b", long).await.unwrap(),
        "[leases] second owner must be refused"
    );
    assert!(
        store.acquire_lease(&name, "a", long).await.unwrap(),
        "[leases] owner renews"
    );
    store.release_lease(&name, "b").await.unwrap();
    assert!(
        !store.acquire_lease(&name, "b", long).await.unwrap(),
        "[leases] a stranger cannot release"
    );
    store.release_lease(&name, "a").await.unwrap();
    assert!(
        store.acquire_lease(&name, "b", long).await.unwrap(),
        "[leases] free after release"
    );
    store.release_lease(&name, "b").await.unwrap();
    // Expiry: a lease taken for `ttl` is free once it expires, not before.
    let ttl = Duration::from_millis(600);
    let taken = Instant::now();
    assert!(
        store.acquire_lease(&name, "b", ttl).await.unwrap(),
        "[leases] acquire after release"
    );
    let deadline = taken + Duration::from_secs(60);
    while !store.acquire_lease(&name, "c", long).await.unwrap() {
        assert!(
            Instant::now() < deadline,
            "[leases] an expired lease is free: still refused 60 s after a {ttl:?} lease"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `taken` is before the lease was set, so this is a lower bound (50 ms
    // for clock granularity).
    let freed = taken.elapsed();
    assert!(
        freed + Duration::from_millis(50) >= ttl,
        "[leases] a {ttl:?} lease was free after {freed:?}"
    );
    store.release_lease(&name, "c").await.unwrap();
}

/// Markers (idempotence records of side effects): set, renewed, visible,
/// checked names, expired.
pub async fn markers(store: &Arc<dyn MetaStore>) {
    use std::time::{Duration, Instant};
    let ttl = Duration::from_secs(120);
    let name = format!("delivered/conformance-{}/abc", std::process::id());
    assert!(!store.has_marker(&name).await.unwrap(), "[markers] unset");
    store.set_marker(&name, ttl).await.unwrap();
    store.set_marker(&name, ttl).await.unwrap();
    assert!(store.has_marker(&name).await.unwrap(), "[markers] set");
    assert!(
        !store.has_marker(&format!("{name}d")).await.unwrap(),
        "[markers] another name"
    );
    for bad in ["a b", "a{b}", "a\nb", ""] {
        assert!(
            store.set_marker(bad, ttl).await.is_err(),
            "[markers] name {bad:?} refused"
        );
    }
    // Expiry: a 1 ms marker reads as unset once its time is up (polled;
    // the deadline only bounds a hang).
    let short = format!("short-{}", std::process::id());
    store
        .set_marker(&short, Duration::from_millis(1))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.has_marker(&short).await.unwrap() {
        assert!(Instant::now() < deadline, "[markers] never expired");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        store.has_marker(&name).await.unwrap(),
        "[markers] still set"
    );
}
