//! Passwords and login throttling.
//!
//! - [`hash_password`] / [`verify_password`]: argon2id PHC strings (the
//!   argon2 crate's defaults: m = 19 MiB, t = 2, p = 1, OWASP's
//!   recommendation), computed on tokio's blocking pool, at most one per
//!   CPU at a time, in reused memory (a pool of argon2 work areas: without
//!   it every login allocated and freed 19 MiB, which glibc's arenas keep,
//!   and a process that had served a few hundred logins held gigabytes).
//! - [`VerifyCache`]: remembers recent successful verifications (keyed by a
//!   per-process secret hash of password and stored hash) so clients that
//!   reconnect often do not pay an argon2 computation every time.
//! - [`Throttle`]: failed logins per key (account, client IP) in a sliding
//!   window; after too many, further attempts are refused until the window
//!   passes (what Dovecot's auth penalty and fail2ban achieve).

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Largest argon2 work area accepted from a stored hash (256 MiB): a
/// corrupt or hostile hash cannot make a login allocate more.
const MAX_M_COST_KIB: u32 = 256 * 1024;

/// At most this many argon2 computations run at once (the CPU count).
fn permits() -> &'static Semaphore {
    static S: OnceLock<Semaphore> = OnceLock::new();
    S.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Semaphore::new(n)
    })
}

/// Reused argon2 work areas (at most one per permit stays allocated).
fn pool() -> &'static Mutex<Vec<Vec<Block>>> {
    static P: OnceLock<Mutex<Vec<Vec<Block>>>> = OnceLock::new();
    P.get_or_init(|| Mutex::new(Vec::new()))
}

/// Run argon2 with a pooled work area of `blocks` blocks.
fn with_memory<T>(blocks: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let mut mem = pool()
        .lock()
        .ok()
        .and_then(|mut p| p.pop())
        .unwrap_or_default();
    if mem.len() < blocks {
        mem.resize(blocks, Block::default());
    }
    let out = f(&mut mem[..blocks]);
    if let Ok(mut p) = pool().lock() {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        if p.len() < n && mem.len() <= 64 * 1024 {
            p.push(mem);
        }
    }
    out
}

/// Verify synchronously (argon2 PHC string), in a pooled work area.
fn verify_sync(password: &[u8], hash: &str) -> bool {
    let Ok(phc) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(alg), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(phc.algorithm),
        Params::try_from(&phc),
        phc.salt,
        phc.hash,
    ) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let version = phc
        .version
        .map_or(Ok(Version::default()), Version::try_from)
        .unwrap_or_default();
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(alg, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let ok = with_memory(params.block_count(), |mem| {
        argon
            .hash_password_into_with_memory(password, salt, &mut out, mem)
            .is_ok()
    });
    // `Output`'s equality is constant-time.
    ok && Output::new(&out).is_ok_and(|o| o == expected)
}

/// argon2id hash of a random password, verified against when an account
/// does not exist, so response time does not reveal which accounts exist.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3O3sLBy8Ad1qjxDw1nR8HzBRZJm0mXNOo9L7+qOLrO0";

/// Hash a password (argon2id, random salt). `Err` only on an empty password
/// or an internal failure.
pub async fn hash_password(password: String) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password may not be empty".into());
    }
    let _permit = permits().acquire().await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| format!("hashing failed: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Verify a password against a PHC string (constant time inside argon2).
pub async fn verify_password(password: String, hash: String) -> bool {
    let Ok(_permit) = permits().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || verify_sync(password.as_bytes(), &hash))
        .await
        .unwrap_or(false)
}

/// Recent successful verifications, so a client that logs in again with
/// the same password skips argon2 (like Dovecot's auth cache). Entries are
/// SHA-256 digests of a per-process random secret, the stored hash and the
/// password — never the password — and expire after the TTL; a changed
/// password (stored hash) never matches an old entry. A wrong password
/// always takes the full argon2 path. A TTL of zero disables the cache.
pub struct VerifyCache {
    ttl: Duration,
    secret: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

/// Most entries kept; beyond it expired ones are dropped, then all.
const CACHE_MAX: usize = 100_000;

impl VerifyCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        VerifyCache {
            ttl,
            secret,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, password: &str, hash: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update((hash.len() as u64).to_be_bytes());
        h.update(hash.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// [`verify_password`], answered from the cache when this password was
    /// verified against this hash within the TTL.
    pub async fn verify(&self, password: &str, hash: &str) -> bool {
        if self.ttl.is_zero() {
            return verify_password(password.to_string(), hash.to_string()).await;
        }
        let key = self.key(password, hash);
        if let Ok(m) = self.entries.lock()
            && m.get(&key).is_some_and(|t| t.elapsed() < self.ttl)
        {
            return true;
        }
        let ok = verify_password(password.to_string(), hash.to_string()).await;
        if ok && let Ok(mut m) = self.entries.lock() {
            if m.len() >= CACHE_MAX {
                let ttl = self.ttl;
                m.retain(|_, t| t.elapsed() < ttl);
                if m.len() >= CACHE_MAX {
                    m.clear();
                }
            }
            m.insert(key, Instant::now());
        }
        ok
    }
}

/// Failed-login throttle: at most `max_failures` failures per key within
/// `window`; [`Throttle::allowed`] says whether another attempt may be made.
pub struct Throttle {
    max_failures: u32,
    window: Duration,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    /// A throttle allowing `max_failures` per `window` per key.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Throttle {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may try again now.
    pub fn allowed(&self, key: &str) -> bool {
        let Ok(mut m) = self.failures.lock() else {
            return true;
        };
        match m.get(key) {
            Some((n, since)) if since.elapsed() < self.window => *n < self.max_failures,
            Some(_) => {
                m.remove(key);
                true
            }
            None => true,
        }
    }

    /// Record a failure of `key`.
    pub fn failed(&self, key: &str) {
        let Ok(mut m) = self.failures.lock() else {
            return;
        };
        if m.len() > 100_000 {
            let window = self.window;
            m.retain(|_, (_, since)| since.elapsed() < window);
        }
        let e = m.entry(key.to_string()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= self.window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }

    /// Forget `key`'s failures (after a success).
    pub fn succeeded(&self, key: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn password_roundtrip() {
        let h = hash_password("s3cret".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret".into(), h.clone()).await);
        assert!(!verify_password("wrong".into(), h).await);
        assert!(!verify_password("x".into(), DUMMY_HASH.into()).await);
        assert!(hash_password(String::new()).await.is_err());
    }

    #[tokio::test]
    async fn pooled_verify_matches_the_argon2_crate() {
        // A hash made by the argon2 crate's own hasher with other parameters.
        let salt = SaltString::generate(&mut OsRng);
        let params = Params::new(1024, 3, 1, Some(24)).unwrap();
        let h = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"pw", &salt)
            .unwrap()
            .to_string();
        assert!(verify_password("pw".into(), h.clone()).await);
        assert!(!verify_password("pW".into(), h.clone()).await);
        // Concurrent verifications share the bounded pool.
        let mut tasks = Vec::new();
        for i in 0..8 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                verify_password(if i % 2 == 0 { "pw" } else { "no" }.into(), h).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), i % 2 == 0);
        }
        // Garbage and absurd parameters are refused, not computed.
        assert!(
            !verify_password(
                "pw".into(),
                "$argon2id$v=19$m=99999999,t=1,p=1$c29tZXNhbHQ$AAAA".into()
            )
            .await
        );
        assert!(!verify_password("pw".into(), "not a hash".into()).await);
    }

    /// `cache.verify(password, hash)` if it answers without running argon2
    /// (from the cache), `None` if it would have to compute. Decided without
    /// timing: every argon2 permit is held while the call is polled once, so
    /// a computation cannot start and a cache miss stays pending.
    async fn answered_from_cache(cache: &VerifyCache, password: &str, hash: &str) -> Option<bool> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        let _all = permits()
            .acquire_many(u32::try_from(n).unwrap())
            .await
            .unwrap();
        tokio::select! {
            biased;
            ok = cache.verify(password, hash) => Some(ok),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn verify_cache() {
        let h = hash_password("s3cret".into()).await.unwrap();
        // Entries outlive the test however slow the machine: hits are
        // checked here, expiry with a short TTL below.
        let c = VerifyCache::new(Duration::from_secs(600));
        assert_eq!(answered_from_cache(&c, "s3cret", &h).await, None);
        assert!(c.verify("s3cret", &h).await);
        assert_eq!(
            answered_from_cache(&c, "s3cret", &h).await,
            Some(true),
            "a verified password is answered from the cache"
        );
        // A wrong password is never cached, a different hash never matches.
        assert!(!c.verify("wrong", &h).await);
        assert_eq!(answered_from_cache(&c, "wrong", &h).await, None);
        let h2 = hash_password("s3cret".into()).await.unwrap();
        assert_eq!(answered_from_cache(&c, "s3cret", &h2).await, None);
        assert!(c.verify("s3cret", &h2).await);
        assert!(!c.verify("s3cret", DUMMY_HASH).await);
        // Expiry: an entry older than the TTL is not used (the sleep is a
        // lower bound: the entry was made before `verify` returned).
        let short = VerifyCache::new(Duration::from_millis(300));
        assert!(short.verify("s3cret", &h).await);
        std::thread::sleep(Duration::from_millis(350));
        assert_eq!(
            answered_from_cache(&short, "s3cret", &h).await,
            None,
            "expired entry used"
        );
        assert!(short.verify("s3cret", &h).await);
        let off = VerifyCache::new(Duration::ZERO);
        assert!(off.verify("s3cret", &h).await);
        assert_eq!(answered_from_cache(&off, "s3cret", &h).await, None);
        assert!(!off.verify("x", &h).await);
    }

    #[test]
    fn throttle() {
        // A window no step of the test can outlast.
        let t = Throttle::new(2, Duration::from_secs(600));
        assert!(t.allowed("a"));
        t.failed("a");
        assert!(t.allowed("a"));
        t.failed("a");
        assert!(!t.allowed("a"));
        assert!(t.allowed("b"));
        t.succeeded("a");
        assert!(t.allowed("a"));
        // Failures older than the window no longer count (the sleep is a
        // lower bound on their age).
        let t = Throttle::new(2, Duration::from_millis(200));
        t.failed("a");
        t.failed("a");
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.allowed("a"));
        t.failed("a");
        t.succeeded("a");
        assert!(t.allowed("a"));
    }
}
