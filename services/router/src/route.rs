//! Addressing: qualify, classify and expand recipient addresses
//! (docs/smtp.md, "Addressing").
//!
//! - Unqualified addresses (`user`) and `user@localhost` / `user@<shorthost>`
//!   / `user@<hostname>` are qualified with the primary domain, but only for
//!   clients that may relay (authenticated or from a relay network), like
//!   Sendmail's `$j`/class `w`. `postmaster` without a domain is always
//!   accepted (RFC 5321 §4.5.1).
//! - Aliases take precedence over accounts (Sendmail and Postfix look up
//!   aliases first). An alias that names itself (`alice: alice, archive`)
//!   delivers to the account of that name, as Sendmail does.
//! - Expansion is breadth-first with a visited set (loops are cut, each
//!   account gets one copy) and a depth limit of [`MAX_ALIAS_DEPTH`].
//! - Catch-all `@domain` aliases apply when nothing else matches. A
//!   catch-all target `@other.test` means "the same local part at
//!   other.test" (virtusertable's `%1@other.test`).
//! - `postmaster@<local domain>` always exists: an alias or account of that
//!   name, else the catch-all, else `postmaster@<primary>`, else the first
//!   account (in sort order) of the domain, else of the primary domain.
//!   Operators set it explicitly with `posthorn alias add postmaster@D admin@D`.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Arc;

use posthorn_mailbox_store::{MetaStore, Result, normalize_address};

/// Nested alias levels followed before giving up (Sendmail's MaxAliasRecursion is 10; Postfix 1000).
pub const MAX_ALIAS_DEPTH: usize = 20;

/// Where one expanded recipient goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A local account (normalised address).
    Local(String),
    /// A remote address (forwarding or relay).
    Remote(String),
}

/// The RCPT-time decision for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Local: accept. Carries the qualified address.
    Local(String),
    /// Remote and the client may relay: accept.
    Relay(String),
    /// Local domain, no such user.
    UnknownUser(String),
    /// A local account it expands to is over quota.
    OverQuota(String),
    /// Remote and the client may not relay.
    RelayDenied(String),
    /// Not a usable address.
    Invalid(String),
}

/// The addressing logic over the directory.
pub struct Addressing {
    meta: Arc<dyn MetaStore>,
    /// Configured primary domain (empty: the first local domain).
    primary: String,
    /// Fully qualified host name (`$j`).
    hostname: String,
}

impl Addressing {
    /// The host name (`$j`), as used in Received and DSNs.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// New addressing over `meta`.
    pub fn new(meta: Arc<dyn MetaStore>, primary: &str, hostname: &str) -> Self {
        Addressing {
            meta,
            primary: primary.to_ascii_lowercase(),
            hostname: hostname.to_ascii_lowercase(),
        }
    }

    /// The primary domain: configured, else the first local domain.
    pub async fn primary_domain(&self) -> Result<Option<String>> {
        if !self.primary.is_empty() {
            return Ok(Some(self.primary.clone()));
        }
        Ok(self.meta.list_domains().await?.into_iter().next())
    }

    fn is_host_alias(&self, domain: &str) -> bool {
        let short = self.hostname.split('.').next().unwrap_or("");
        domain == "localhost" || domain == self.hostname || (!short.is_empty() && domain == short)
    }

    /// Qualify an address; `Err` is the decision to answer instead.
    pub async fn qualify(
        &self,
        address: &str,
        relay_client: bool,
    ) -> Result<std::result::Result<String, Decision>> {
        let a = normalize_address(address);
        let (local, domain) = match a.rsplit_once('@') {
            Some((l, d)) => (l.to_string(), Some(d.to_string())),
            None => (a.clone(), None),
        };
        if local.is_empty() {
            return Ok(Err(Decision::Invalid(format!("{a}: empty local part"))));
        }
        let needs_primary = match &domain {
            None => true,
            Some(d) => self.is_host_alias(d) && !self.meta.is_local_domain(d).await?,
        };
        if !needs_primary {
            return Ok(Ok(a));
        }
        if !(relay_client || local == "postmaster") {
            return Ok(Err(Decision::Invalid(format!("{a}: a domain is required"))));
        }
        match self.primary_domain().await? {
            Some(p) => Ok(Ok(format!("{local}@{p}"))),
            None => Ok(Err(Decision::Invalid(format!(
                "{a}: no local domain is configured"
            )))),
        }
    }

    /// Decide one RCPT TO.
    pub async fn decide(
        &self,
        address: &str,
        authenticated: bool,
        relay_network: bool,
        size: u64,
    ) -> Result<Decision> {
        let relay = authenticated || relay_network;
        let q = match self.qualify(address, relay).await? {
            Ok(q) => q,
            Err(d) => return Ok(d),
        };
        let domain = q.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        if !self.meta.is_local_domain(domain).await? {
            return Ok(if relay {
                Decision::Relay(q)
            } else {
                Decision::RelayDenied(q)
            });
        }
        let targets = self.expand(&q).await?;
        if targets.is_empty() {
            return Ok(Decision::UnknownUser(q));
        }
        for t in &targets {
            if let Target::Local(acct) = t
                && self.over_quota(acct, size).await?
            {
                return Ok(Decision::OverQuota(acct.clone()));
            }
        }
        Ok(Decision::Local(q))
    }

    /// Whether one more message of `size` bytes would exceed `account`'s quota.
    pub async fn over_quota(&self, account: &str, size: u64) -> Result<bool> {
        let Some(acct) = self.meta.get_account(account).await.ok().flatten() else {
            return Ok(false);
        };
        if acct.quota.max_bytes.is_none() && acct.quota.max_messages.is_none() {
            return Ok(false);
        }
        let usage = self.meta.get_usage(account).await?;
        let bytes = acct
            .quota
            .max_bytes
            .is_some_and(|m| usage.bytes.saturating_add(size) > m);
        let msgs = acct
            .quota
            .max_messages
            .is_some_and(|m| usage.messages.saturating_add(1) > m);
        Ok(bytes || msgs)
    }

    /// Expand a qualified address into accounts and remote addresses,
    /// sorted and without duplicates. Empty: no such local recipient.
    pub async fn expand(&self, address: &str) -> Result<Vec<Target>> {
        let mut out = BTreeSet::new();
        let mut seen_alias = HashSet::new();
        let mut queue = VecDeque::from([(normalize_address(address), 0usize)]);
        while let Some((addr, depth)) = queue.pop_front() {
            let Some((local, domain)) = addr.rsplit_once('@') else {
                continue;
            };
            if !self.meta.is_local_domain(domain).await? {
                out.insert(Target::Remote(addr.clone()));
                continue;
            }
            let is_account = self.account_exists(&addr).await?;
            if seen_alias.contains(&addr) {
                // A loop back to an alias: deliver to the account of that
                // name if there is one (Sendmail's self-reference rule).
                if is_account {
                    out.insert(Target::Local(addr.clone()));
                }
                continue;
            }
            if depth > MAX_ALIAS_DEPTH {
                tracing::warn!(address = %addr, "alias nesting deeper than {MAX_ALIAS_DEPTH}; cut");
                continue;
            }
            if let Some(alias) = self.alias(&addr).await? {
                seen_alias.insert(addr.clone());
                for t in alias.targets {
                    queue.push_back((qualify_target(&t, local, domain), depth + 1));
                }
                continue;
            }
            if is_account {
                out.insert(Target::Local(addr.clone()));
                continue;
            }
            let catch_all = format!("@{domain}");
            if !seen_alias.contains(&catch_all)
                && let Some(alias) = self.alias(&catch_all).await?
            {
                seen_alias.insert(addr.clone());
                for t in alias.targets {
                    queue.push_back((qualify_target(&t, local, domain), depth + 1));
                }
                continue;
            }
            if local == "postmaster"
                && let Some(p) = self.postmaster_fallback(domain).await?
            {
                seen_alias.insert(addr.clone());
                queue.push_back((p, depth + 1));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Whether an account exists; a name the store refuses (quotes,
    /// spaces, braces) simply does not exist.
    async fn account_exists(&self, addr: &str) -> Result<bool> {
        match self.meta.get_account(addr).await {
            Ok(a) => Ok(a.is_some()),
            Err(posthorn_mailbox_store::Error::Invalid { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn alias(&self, addr: &str) -> Result<Option<posthorn_mailbox_store::Alias>> {
        match self.meta.get_alias(addr).await {
            Ok(a) => Ok(a),
            Err(posthorn_mailbox_store::Error::Invalid { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn postmaster_fallback(&self, domain: &str) -> Result<Option<String>> {
        if let Some(primary) = self.primary_domain().await?
            && primary != domain
        {
            let p = format!("postmaster@{primary}");
            if self.meta.get_alias(&p).await?.is_some()
                || self.meta.get_account(&p).await?.is_some()
            {
                return Ok(Some(p));
            }
        }
        if let Some(first) = self
            .meta
            .list_accounts(Some(domain))
            .await?
            .into_iter()
            .next()
        {
            return Ok(Some(first));
        }
        if let Some(primary) = self.primary_domain().await? {
            return Ok(self
                .meta
                .list_accounts(Some(&primary))
                .await?
                .into_iter()
                .next());
        }
        Ok(None)
    }
}

/// Qualify an alias target: `name` → `name@<alias domain>`, `@other` →
/// `<local>@other`, anything else as written.
fn qualify_target(target: &str, local: &str, domain: &str) -> String {
    let t = normalize_address(target);
    if let Some(d) = t.strip_prefix('@') {
        format!("{local}@{d}")
    } else if t.contains('@') {
        t
    } else {
        format!("{t}@{domain}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posthorn_mailbox_store::Alias;
    use posthorn_mailbox_store::embedded::EmbeddedStore;

    async fn setup() -> (tempfile::TempDir, Addressing, Arc<dyn MetaStore>) {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("m.redb")).unwrap());
        meta.add_domain("example.test").await.unwrap();
        meta.add_domain("other.test").await.unwrap();
        for a in ["alice@example.test", "bob@example.test", "carol@other.test"] {
            meta.add_account(a, "x").await.unwrap();
        }
        let alias = |a: &str, t: &[&str]| Alias {
            address: a.into(),
            targets: t.iter().map(|s| s.to_string()).collect(),
        };
        meta.set_alias(&alias(
            "team@example.test",
            &["alice", "bob@example.test", "friend@elsewhere.test"],
        ))
        .await
        .unwrap();
        meta.set_alias(&alias("loop1@example.test", &["loop2"]))
            .await
            .unwrap();
        meta.set_alias(&alias("loop2@example.test", &["loop1", "alice"]))
            .await
            .unwrap();
        meta.set_alias(&alias(
            "alice@example.test",
            &["alice", "archive@other.test"],
        ))
        .await
        .unwrap();
        meta.set_alias(&alias("archive@other.test", &["carol"]))
            .await
            .unwrap();
        meta.set_alias(&alias("@other.test", &["@example.test"]))
            .await
            .unwrap();
        let a = Addressing::new(meta.clone(), "example.test", "mx.example.test");
        (dir, a, meta)
    }

    fn local(s: &str) -> Target {
        Target::Local(s.into())
    }

    #[tokio::test]
    async fn expansion() {
        let (_d, a, _m) = setup().await;
        assert_eq!(
            a.expand("team@example.test").await.unwrap(),
            vec![
                local("alice@example.test"),
                local("bob@example.test"),
                local("carol@other.test"),
                Target::Remote("friend@elsewhere.test".into())
            ]
        );
        // Loops are cut; everybody once.
        assert_eq!(
            a.expand("loop1@example.test").await.unwrap(),
            vec![local("alice@example.test"), local("carol@other.test")]
        );
        // Catch-all with a domain rewrite: bob@other.test -> bob@example.test.
        assert_eq!(
            a.expand("bob@other.test").await.unwrap(),
            vec![local("bob@example.test")]
        );
        assert_eq!(a.expand("nobody@example.test").await.unwrap(), vec![]);
        // postmaster always exists: here the domain's first account, alice,
        // whose own alias also sends a copy to carol.
        assert_eq!(
            a.expand("postmaster@example.test").await.unwrap(),
            vec![local("alice@example.test"), local("carol@other.test")]
        );
    }

    #[tokio::test]
    async fn decisions() {
        let (_d, a, meta) = setup().await;
        let d = |s: &'static str, auth: bool| {
            let a = &a;
            async move { a.decide(s, auth, false, 0).await.unwrap() }
        };
        assert_eq!(
            d("Alice@Example.TEST", false).await,
            Decision::Local("alice@example.test".into())
        );
        assert_eq!(
            d("nobody@example.test", false).await,
            Decision::UnknownUser("nobody@example.test".into())
        );
        assert_eq!(
            d("x@elsewhere.test", false).await,
            Decision::RelayDenied("x@elsewhere.test".into())
        );
        assert_eq!(
            d("x@elsewhere.test", true).await,
            Decision::Relay("x@elsewhere.test".into())
        );
        assert_eq!(
            d("postmaster", false).await,
            Decision::Local("postmaster@example.test".into())
        );
        assert!(matches!(d("alice", false).await, Decision::Invalid(_)));
        assert_eq!(
            d("alice", true).await,
            Decision::Local("alice@example.test".into())
        );
        assert_eq!(
            d("bob@localhost", true).await,
            Decision::Local("bob@example.test".into())
        );
        assert_eq!(
            d("bob@mx", true).await,
            Decision::Local("bob@example.test".into())
        );
        // Address tricks land on a local domain and are unknown users, never relayed.
        assert!(matches!(
            d("user%elsewhere.test@example.test", false).await,
            Decision::UnknownUser(_)
        ));
        assert!(matches!(
            d("\"user@elsewhere.test\"@example.test", false).await,
            Decision::UnknownUser(_)
        ));
        meta.set_quota(
            "bob@example.test",
            posthorn_mailbox_store::Quota {
                max_bytes: Some(10),
                max_messages: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(
            a.decide("bob@example.test", false, false, 11)
                .await
                .unwrap(),
            Decision::OverQuota("bob@example.test".into())
        );
        assert_eq!(
            a.decide("bob@example.test", false, false, 5).await.unwrap(),
            Decision::Local("bob@example.test".into())
        );
    }
}
