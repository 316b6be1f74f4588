//! Recipient, sender and password checks, asked of the router over gRPC,
//! with a short-lived cache of recipient answers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use posthorn_proto::router::v1 as pb;
use posthorn_proto::router::v1::router_service_client::RouterServiceClient;
use tonic::transport::Channel;

/// How long a recipient answer is reused: briefly, so a directory change
/// is seen within seconds.
const CACHE_TTL: Duration = Duration::from_secs(5);
/// Entries kept at most; the cache is cleared when full.
const CACHE_MAX: usize = 10_000;
/// Deadline of every router call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Cache key: (address, authenticated, relay network, size declared).
type CacheKey = (String, bool, bool, bool);

/// The router client plus cache.
pub struct Checks {
    client: RouterServiceClient<Channel>,
    cache: Mutex<HashMap<CacheKey, (Instant, pb::CheckRecipientResponse)>>,
}

/// The router could not be asked.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl Checks {
    /// A lazily connecting client of `url`.
    pub fn new(url: &str) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| format!("smtp.router_url {url}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(Checks {
            client: RouterServiceClient::new(channel),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Decide one recipient. Quota answers depend on the size, so a
    /// declared size bypasses the cache for local over-quota answers.
    pub async fn recipient(
        &self,
        address: &str,
        authenticated: bool,
        relay_network: bool,
        size: u64,
    ) -> Result<pb::CheckRecipientResponse, Unavailable> {
        let key = (
            address.to_ascii_lowercase(),
            authenticated,
            relay_network,
            size > 0,
        );
        if let Ok(cache) = self.cache.lock()
            && let Some((at, r)) = cache.get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(r.clone());
        }
        let resp = self
            .client
            .clone()
            .check_recipient(pb::CheckRecipientRequest {
                address: address.to_string(),
                authenticated,
                relay_network,
                size,
            })
            .await
            .map_err(|s| Unavailable(s.message().to_string()))?
            .into_inner();
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), resp.clone()));
        }
        Ok(resp)
    }

    /// Whether `account` may send as `address`.
    pub async fn sender(&self, account: &str, address: &str) -> Result<bool, Unavailable> {
        Ok(self
            .client
            .clone()
            .check_sender(pb::CheckSenderRequest {
                account: account.into(),
                address: address.into(),
            })
            .await
            .map_err(|s| Unavailable(s.message().to_string()))?
            .into_inner()
            .allowed)
    }

    /// Verify a password; `Some(account)` on success.
    pub async fn authenticate(
        &self,
        user: &str,
        password: &str,
    ) -> Result<Option<String>, Unavailable> {
        let r = self
            .client
            .clone()
            .authenticate(pb::AuthenticateRequest {
                address: user.into(),
                password: password.into(),
            })
            .await
            .map_err(|s| Unavailable(s.message().to_string()))?
            .into_inner();
        Ok(r.ok.then_some(r.account))
    }
}
