//! The directory and admin gRPC service (`posthorn.router.v1.RouterService`).

use std::sync::Arc;

use posthorn_auth::{DUMMY_HASH, verify_password};
use posthorn_mailbox_store::{Alias, Error as StoreError, MetaStore, Quota, normalize_address};
use posthorn_proto::router::v1 as pb;
use posthorn_proto::router::v1::router_service_server::RouterService;
use tonic::{Request, Response, Status};

use crate::route::{Addressing, Decision, Target};

/// UIDs per page of `ListMessages` (about 100 bytes a message: 0.5 MB a
/// page at most, well below gRPC's 4 MB default limit).
const LIST_PAGE_UIDS: u32 = 5_000;

/// Implements [`RouterService`] over a [`MetaStore`].
pub struct Directory {
    meta: Arc<dyn MetaStore>,
    blobs: posthorn_blob_store::BlobStore,
    addressing: Arc<Addressing>,
    verified: posthorn_auth::VerifyCache,
}

impl Directory {
    /// A directory service over `meta`; successful SMTP AUTH password
    /// checks are remembered for `auth_cache`.
    pub fn new(
        meta: Arc<dyn MetaStore>,
        blobs: posthorn_blob_store::BlobStore,
        addressing: Arc<Addressing>,
        auth_cache: std::time::Duration,
    ) -> Self {
        Directory {
            meta,
            blobs,
            addressing,
            verified: posthorn_auth::VerifyCache::new(auth_cache),
        }
    }
}

/// Map store errors to gRPC statuses: the only place this is decided.
pub fn status(err: StoreError) -> Status {
    match err {
        StoreError::AlreadyExists(what) => Status::already_exists(format!("{what} already exists")),
        StoreError::NotFound(what) => Status::not_found(format!("{what} does not exist")),
        StoreError::UnknownDomain(d) => Status::failed_precondition(format!(
            "domain {d} is not a local domain (add it first: posthorn domain add {d})"
        )),
        StoreError::Invalid { what, reason } => {
            Status::invalid_argument(format!("invalid {what}: {reason}"))
        }
        StoreError::Unavailable(e) => {
            Status::unavailable(format!("metadata store unavailable: {e}"))
        }
        StoreError::Corrupt(e) => Status::internal(format!("corrupt record: {e}")),
    }
}

/// Validate a domain name (RFC 1035 letters-digits-hyphen labels, or an
/// IDNA A-label); returns it lower-cased.
pub fn validate_domain(d: &str) -> Result<String, Status> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| Status::invalid_argument(format!("invalid domain {d:?}: {why}"));
    if d.is_empty() || d.len() > 253 {
        return Err(bad("must be 1 to 253 characters"));
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("labels must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(bad("only letters, digits, `-` and `.` are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label may not start or end with `-`"));
        }
    }
    Ok(d)
}

/// Validate an account or alias address `local@domain`: RFC 5321 dot-atom
/// local part (no quoting, no `%`, `!` or `@` tricks). Returns it normalised.
pub fn validate_address(a: &str) -> Result<String, Status> {
    let a = normalize_address(a);
    let (local, domain) = a.rsplit_once('@').ok_or_else(|| {
        Status::invalid_argument(format!("invalid address {a:?}: expected local@domain"))
    })?;
    validate_domain(domain)?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "!#$&'*+-/=?^_`{|}~.".contains(c);
    if local.is_empty()
        || local.len() > 64
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
        || !local.chars().all(|c| ok_char(c) || !c.is_ascii())
        || local.contains('%')
        || local.contains('!')
    {
        return Err(Status::invalid_argument(format!(
            "invalid address {a:?}: the local part must be a dot-atom of at most 64 characters without `%` or `!`"
        )));
    }
    Ok(a)
}

/// Hash a password (argon2id); an empty one is an invalid argument.
pub async fn hash_password(password: String) -> Result<String, Status> {
    posthorn_auth::hash_password(password)
        .await
        .map_err(Status::invalid_argument)
}

fn quota_from(max_bytes: u64, max_messages: u64) -> Quota {
    Quota {
        max_bytes: (max_bytes > 0).then_some(max_bytes),
        max_messages: (max_messages > 0).then_some(max_messages),
    }
}

#[tonic::async_trait]
impl RouterService for Directory {
    async fn add_domain(
        &self,
        req: Request<pb::AddDomainRequest>,
    ) -> Result<Response<pb::AddDomainResponse>, Status> {
        let d = validate_domain(&req.get_ref().domain)?;
        self.meta.add_domain(&d).await.map_err(status)?;
        tracing::info!(domain = %d, "domain added");
        Ok(Response::new(pb::AddDomainResponse {}))
    }

    async fn remove_domain(
        &self,
        req: Request<pb::RemoveDomainRequest>,
    ) -> Result<Response<pb::RemoveDomainResponse>, Status> {
        let d = validate_domain(&req.get_ref().domain)?;
        self.meta.remove_domain(&d).await.map_err(status)?;
        tracing::info!(domain = %d, "domain removed");
        Ok(Response::new(pb::RemoveDomainResponse {}))
    }

    async fn list_domains(
        &self,
        _req: Request<pb::ListDomainsRequest>,
    ) -> Result<Response<pb::ListDomainsResponse>, Status> {
        let domains = self.meta.list_domains().await.map_err(status)?;
        Ok(Response::new(pb::ListDomainsResponse { domains }))
    }

    async fn add_user(
        &self,
        req: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::AddUserResponse>, Status> {
        let req = req.into_inner();
        let a = validate_address(&req.address)?;
        if self.meta.get_account(&a).await.map_err(status)?.is_some() {
            return Err(Status::already_exists(format!("user {a} already exists")));
        }
        let hash = hash_password(req.password).await?;
        self.meta.add_account(&a, &hash).await.map_err(status)?;
        tracing::info!(account = %a, "user added");
        Ok(Response::new(pb::AddUserResponse {}))
    }

    async fn remove_user(
        &self,
        req: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserResponse>, Status> {
        let a = validate_address(&req.get_ref().address)?;
        self.meta.remove_account(&a).await.map_err(status)?;
        tracing::info!(account = %a, "user removed");
        Ok(Response::new(pb::RemoveUserResponse {}))
    }

    async fn list_users(
        &self,
        req: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let d = &req.get_ref().domain;
        let domain = if d.is_empty() {
            None
        } else {
            Some(validate_domain(d)?)
        };
        let addresses = self
            .meta
            .list_accounts(domain.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ListUsersResponse { addresses }))
    }

    async fn set_password(
        &self,
        req: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let req = req.into_inner();
        let a = validate_address(&req.address)?;
        if self.meta.get_account(&a).await.map_err(status)?.is_none() {
            return Err(Status::not_found(format!("user {a} does not exist")));
        }
        let hash = hash_password(req.password).await?;
        self.meta.set_password(&a, &hash).await.map_err(status)?;
        tracing::info!(account = %a, "password changed");
        Ok(Response::new(pb::SetPasswordResponse {}))
    }

    async fn set_quota(
        &self,
        req: Request<pb::SetQuotaRequest>,
    ) -> Result<Response<pb::SetQuotaResponse>, Status> {
        let req = req.into_inner();
        let a = validate_address(&req.address)?;
        self.meta
            .set_quota(&a, quota_from(req.max_bytes, req.max_messages))
            .await
            .map_err(status)?;
        tracing::info!(account = %a, max_bytes = req.max_bytes, max_messages = req.max_messages, "quota set");
        Ok(Response::new(pb::SetQuotaResponse {}))
    }

    async fn get_user(
        &self,
        req: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let a = validate_address(&req.get_ref().address)?;
        let acct = self
            .meta
            .get_account(&a)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("user {a} does not exist")))?;
        let usage = self.meta.get_usage(&a).await.map_err(status)?;
        Ok(Response::new(pb::GetUserResponse {
            address: acct.address,
            max_bytes: acct.quota.max_bytes.unwrap_or(0),
            max_messages: acct.quota.max_messages.unwrap_or(0),
            used_bytes: usage.bytes,
            used_messages: usage.messages,
        }))
    }

    async fn add_alias(
        &self,
        req: Request<pb::AddAliasRequest>,
    ) -> Result<Response<pb::AddAliasResponse>, Status> {
        let req = req.into_inner();
        let alias = if let Some(domain) = req.alias.trim().strip_prefix('@') {
            format!("@{}", validate_domain(domain)?)
        } else {
            validate_address(&req.alias)?
        };
        let domain = alias
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        if !self.meta.is_local_domain(&domain).await.map_err(status)? {
            return Err(status(StoreError::UnknownDomain(domain)));
        }
        if req.targets.is_empty() {
            return Err(Status::invalid_argument(
                "an alias needs at least one target",
            ));
        }
        let mut targets = Vec::new();
        for t in &req.targets {
            let t = t.trim();
            // `@domain`: the same local part at that domain (catch-all rewrite).
            if let Some(d) = t.strip_prefix('@') {
                targets.push(format!("@{}", validate_domain(d)?));
                continue;
            }
            if t.starts_with('|') {
                return Err(Status::invalid_argument(format!(
                    "target {t:?}: program targets (`|command`) are not supported"
                )));
            }
            if t.starts_with(":include:") {
                return Err(Status::invalid_argument(format!(
                    "target {t:?}: `:include:` files are not supported; list the addresses"
                )));
            }
            if t.starts_with('/') {
                return Err(Status::invalid_argument(format!(
                    "target {t:?}: file targets are not supported"
                )));
            }
            // A bare local name is allowed (it is qualified when expanded).
            if t.contains('@') {
                targets.push(validate_address(t)?);
            } else {
                targets.push(normalize_address(t));
            }
        }
        self.meta
            .set_alias(&Alias {
                address: alias.clone(),
                targets,
            })
            .await
            .map_err(status)?;
        tracing::info!(alias = %alias, "alias set");
        Ok(Response::new(pb::AddAliasResponse {}))
    }

    async fn remove_alias(
        &self,
        req: Request<pb::RemoveAliasRequest>,
    ) -> Result<Response<pb::RemoveAliasResponse>, Status> {
        let a = normalize_address(&req.get_ref().alias);
        self.meta.remove_alias(&a).await.map_err(status)?;
        Ok(Response::new(pb::RemoveAliasResponse {}))
    }

    async fn list_aliases(
        &self,
        _req: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        let aliases = self
            .meta
            .list_aliases()
            .await
            .map_err(status)?
            .into_iter()
            .map(|a| pb::Alias {
                alias: a.address,
                targets: a.targets,
            })
            .collect();
        Ok(Response::new(pb::ListAliasesResponse { aliases }))
    }

    async fn check_recipient(
        &self,
        req: Request<pb::CheckRecipientRequest>,
    ) -> Result<Response<pb::CheckRecipientResponse>, Status> {
        Ok(Response::new(
            self.check_recipient_impl(req.into_inner()).await?,
        ))
    }

    async fn list_messages(
        &self,
        req: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let req = req.into_inner();
        let a = validate_address(&req.address)?;
        let mailbox = if req.mailbox.is_empty() {
            "INBOX".to_string()
        } else {
            req.mailbox
        };
        let info = self
            .meta
            .get_mailbox(&a, &mailbox)
            .await
            .map_err(status)?
            .ok_or_else(|| Status::not_found(format!("mailbox {mailbox} of {a} does not exist")))?;
        let first = req.first_uid.max(1);
        let last = first.saturating_add(LIST_PAGE_UIDS - 1);
        let next_uid = if last < info.uidnext.saturating_sub(1) {
            last + 1
        } else {
            0
        };
        let messages = self
            .meta
            .fetch(&a, &mailbox, first, last)
            .await
            .map_err(status)?
            .into_iter()
            .map(|m| pb::MessageSummary {
                uid: m.uid,
                size: m.size,
                blob_key: m.blob_key,
                flags: m.flags,
                internal_date: m.internal_date,
                modseq: m.modseq,
            })
            .collect();
        Ok(Response::new(pb::ListMessagesResponse {
            uidvalidity: info.uidvalidity,
            messages,
            next_uid,
        }))
    }

    async fn fetch_message(
        &self,
        req: Request<pb::FetchMessageRequest>,
    ) -> Result<Response<pb::FetchMessageResponse>, Status> {
        let req = req.into_inner();
        let a = validate_address(&req.address)?;
        let mailbox = if req.mailbox.is_empty() {
            "INBOX".to_string()
        } else {
            req.mailbox
        };
        let m = self
            .meta
            .fetch(&a, &mailbox, req.uid, req.uid)
            .await
            .map_err(status)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no message with UID {} in {mailbox} of {a}",
                    req.uid
                ))
            })?;
        let body = self.blobs.get(&m.blob_key).await.map_err(|e| {
            if e.is_transient() {
                Status::unavailable(e.to_string())
            } else {
                Status::internal(e.to_string())
            }
        })?;
        let mut content = m.header_prefix.into_bytes();
        content.extend_from_slice(&body);
        Ok(Response::new(pb::FetchMessageResponse { content }))
    }

    async fn check_sender(
        &self,
        req: Request<pb::CheckSenderRequest>,
    ) -> Result<Response<pb::CheckSenderResponse>, Status> {
        let req = req.into_inner();
        let account = normalize_address(&req.account);
        let address = normalize_address(&req.address);
        // Its own address, or an alias/catch-all that delivers to it.
        let allowed = address == account
            || (address.contains('@')
                && self
                    .addressing
                    .expand(&address)
                    .await
                    .map_err(status)?
                    .contains(&Target::Local(account.clone())));
        Ok(Response::new(pb::CheckSenderResponse { allowed }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = req.into_inner();
        let a = normalize_address(&req.address);
        let acct = self.meta.get_account(&a).await.map_err(status)?;
        let ok = match acct {
            Some(acct) => {
                self.verified
                    .verify(&req.password, &acct.password_hash)
                    .await
            }
            None => {
                // Spend the same time as a real check, so timing does not
                // reveal which accounts exist.
                let _ = verify_password(req.password, DUMMY_HASH.to_string()).await;
                false
            }
        };
        Ok(Response::new(pb::AuthenticateResponse {
            ok,
            account: if ok { a } else { String::new() },
        }))
    }
}

impl Directory {
    /// RCPT TO decision (see [`Addressing::decide`]).
    pub async fn check_recipient_impl(
        &self,
        req: pb::CheckRecipientRequest,
    ) -> Result<pb::CheckRecipientResponse, Status> {
        use pb::Verdict;
        let d = self
            .addressing
            .decide(&req.address, req.authenticated, req.relay_network, req.size)
            .await
            .map_err(status)?;
        let (verdict, detail, qualified) = match d {
            Decision::Local(q) => (Verdict::Local, String::new(), q),
            Decision::Relay(q) => (Verdict::Relay, String::new(), q),
            Decision::UnknownUser(q) => {
                (Verdict::UnknownUser, format!("{q}: no such user here"), q)
            }
            Decision::OverQuota(q) => (Verdict::OverQuota, format!("{q}: mailbox full"), q),
            Decision::RelayDenied(q) => (Verdict::RelayDenied, format!("{q}: relaying denied"), q),
            Decision::Invalid(why) => (Verdict::Invalid, why, String::new()),
        };
        Ok(pb::CheckRecipientResponse {
            verdict: verdict as i32,
            detail,
            qualified,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posthorn_mailbox_store::NewMessage;
    use posthorn_mailbox_store::embedded::EmbeddedStore;

    /// `ListMessages` answers in pages whatever the mailbox's size: 12,000
    /// messages (about 1.2 MB of summaries) come back complete, in order,
    /// in three pages, none of them near gRPC's 4 MB limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_messages_pages_a_big_mailbox() {
        let dir = tempfile::tempdir().unwrap();
        let meta: Arc<dyn MetaStore> =
            Arc::new(EmbeddedStore::open(&dir.path().join("m.redb")).unwrap());
        meta.add_domain("example.test").await.unwrap();
        meta.add_account("alice@example.test", "x").await.unwrap();
        const N: u32 = 12_000;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let meta = meta.clone();
            tasks.spawn(async move {
                let key = posthorn_blob_store::key_for(format!("body {i}").as_bytes());
                meta.append(
                    "alice@example.test",
                    "INBOX",
                    NewMessage {
                        dedupe_key: Some(format!("m{i}")),
                        flags: vec![],
                        internal_date: 0,
                        size: 10,
                        blob_key: key,
                        header_prefix: String::new(),
                        envelope: None,
                        bodystructure: None,
                    },
                )
                .await
                .unwrap();
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let addressing = Arc::new(Addressing::new(meta.clone(), "example.test", "mx.test"));
        let d = Directory::new(
            meta,
            posthorn_blob_store::BlobStore::memory(),
            addressing,
            std::time::Duration::ZERO,
        );
        let (mut uids, mut pages, mut first_uid) = (Vec::new(), 0, 0);
        loop {
            let r = d
                .list_messages(Request::new(pb::ListMessagesRequest {
                    address: "alice@example.test".into(),
                    mailbox: String::new(),
                    first_uid,
                }))
                .await
                .unwrap()
                .into_inner();
            pages += 1;
            assert!(
                prost::Message::encoded_len(&r) < 1 << 20,
                "page of {} bytes",
                prost::Message::encoded_len(&r)
            );
            uids.extend(r.messages.iter().map(|m| m.uid));
            if r.next_uid == 0 {
                break;
            }
            first_uid = r.next_uid;
        }
        assert_eq!(pages, 3);
        assert_eq!(uids, (1..=N).collect::<Vec<_>>());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            validate_address("Alice@Example.TEST").unwrap(),
            "alice@example.test"
        );
        for bad in [
            "alice",
            "@example.test",
            "a..b@x.test",
            "user%elsewhere@x.test",
            "a@-x.test",
            "a@x_y.test",
        ] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
    }
}
