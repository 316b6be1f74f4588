//! Passwords and login throttling.
//!
//! - [`hash_password`] / [`verify_password`]: argon2id PHC strings (the
//!   argon2 crate's defaults: m = 19 MiB, t = 2, p = 1, OWASP's
//!   recommendation), computed on tokio's blocking pool.
//! - [`Throttle`]: failed logins per key (account, client IP) in a sliding
//!   window; after too many, further attempts are refused until the window
//!   passes (what Dovecot's auth penalty and fail2ban achieve).

#![warn(missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

/// argon2id hash of a random password, verified against when an account
/// does not exist, so response time does not reveal which accounts exist.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$3O3sLBy8Ad1qjxDw1nR8HzBRZJm0mXNOo9L7+qOLrO0";

/// Hash a password (argon2id, random salt). `Err` only on an empty password
/// or an internal failure.
pub async fn hash_password(password: String) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password may not be empty".into());
    }
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
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
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

    #[test]
    fn throttle() {
        let t = Throttle::new(2, Duration::from_millis(200));
        assert!(t.allowed("a"));
        t.failed("a");
        assert!(t.allowed("a"));
        t.failed("a");
        assert!(!t.allowed("a"));
        assert!(t.allowed("b"));
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.allowed("a"));
        t.failed("a");
        t.succeeded("a");
        assert!(t.allowed("a"));
    }
}
