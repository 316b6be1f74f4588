//! The answer cache, shared by every caller of one resolver process.
//!
//! Keyed by (lower-case name, record type); an entry lives for its answer's
//! TTL: the smallest record TTL for records, the negative TTL for NODATA
//! and NXDOMAIN (RFC 2308 §5: `min(SOA TTL, SOA MINIMUM)`). Temporary
//! failures are never stored, nor answers with a TTL of 0 (a negative
//! answer without SOA gets 0, RFC 2308 §5). TTLs are capped at
//! [`MAX_POSITIVE_TTL`] and [`MAX_NEGATIVE_TTL`]. A hit reports the TTL
//! left, as a caching resolver does.
//!
//! When full, expired entries are dropped first, then the entry closest to
//! expiry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::{RData, RecordType};

/// Longest a positive answer is kept: one day.
pub const MAX_POSITIVE_TTL: u32 = 86_400;
/// Longest a negative answer is kept: three hours (RFC 2308 §5).
pub const MAX_NEGATIVE_TTL: u32 = 10_800;

/// What one (name, type) query came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The records of the asked type (never empty).
    Records(Vec<RData>),
    /// The name exists, with no records of the type (NODATA).
    NoRecords,
    /// The name does not exist.
    NxDomain,
    /// No usable answer now; what failed.
    Temporary(String),
}

/// An outcome with the seconds it stays valid.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The outcome, shared with the cache.
    pub outcome: Arc<Outcome>,
    /// Seconds left; 0 for temporary failures.
    pub ttl: u32,
}

type Key = (String, RecordType);

struct Entry {
    outcome: Arc<Outcome>,
    expires: Instant,
}

/// A bounded TTL cache of [`Outcome`]s.
pub struct Cache {
    max: usize,
    map: Mutex<HashMap<Key, Entry>>,
}

impl Cache {
    /// A cache of at most `max` entries (0 disables caching).
    pub fn new(max: usize) -> Self {
        Cache {
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The live entry for `name` (lower case) and `rtype`, with its TTL left.
    pub fn get(&self, name: &str, rtype: RecordType, now: Instant) -> Option<Answer> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let key = (name.to_string(), rtype);
        let e = map.get(&key)?;
        if e.expires <= now {
            map.remove(&key);
            return None;
        }
        let left = e.expires - now;
        Some(Answer {
            outcome: e.outcome.clone(),
            // Rounded down, and a still-live entry never reports 0
            // ("do not cache") to callers.
            ttl: (left.as_secs() as u32).max(1),
        })
    }

    /// Store `outcome` for `ttl` seconds (capped); temporary failures and
    /// TTL 0 are not stored. Returns the TTL the answer is reported with.
    pub fn insert(
        &self,
        name: &str,
        rtype: RecordType,
        outcome: Outcome,
        ttl: u32,
        now: Instant,
    ) -> Answer {
        let ttl = match outcome {
            Outcome::Records(_) => ttl.min(MAX_POSITIVE_TTL),
            Outcome::NoRecords | Outcome::NxDomain => ttl.min(MAX_NEGATIVE_TTL),
            Outcome::Temporary(_) => 0,
        };
        let outcome = Arc::new(outcome);
        if ttl > 0 && self.max > 0 {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            let key = (name.to_string(), rtype);
            if map.len() >= self.max && !map.contains_key(&key) {
                map.retain(|_, e| e.expires > now);
                if map.len() >= self.max
                    && let Some(k) = map
                        .iter()
                        .min_by_key(|(_, e)| e.expires)
                        .map(|(k, _)| k.clone())
                {
                    map.remove(&k);
                }
            }
            map.insert(
                key,
                Entry {
                    outcome: outcome.clone(),
                    expires: now + Duration::from_secs(ttl.into()),
                },
            );
        }
        Answer { outcome, ttl }
    }

    /// Entries held, live or not yet purged.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn a(ip: [u8; 4]) -> Outcome {
        Outcome::Records(vec![RData::A(Ipv4Addr::from(ip).into())])
    }

    #[test]
    fn entries_expire_with_their_ttl() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        c.insert("a.test.", RecordType::A, a([127, 0, 0, 1]), 5, t0);
        let hit = c.get("a.test.", RecordType::A, t0 + Duration::from_secs(2));
        assert_eq!(hit.unwrap().ttl, 3);
        assert!(c.get("a.test.", RecordType::AAAA, t0).is_none());
        assert!(
            c.get("a.test.", RecordType::A, t0 + Duration::from_secs(5))
                .is_none()
        );
        assert!(c.is_empty());
    }

    #[test]
    fn temporary_and_zero_ttl_are_not_stored_and_ttls_are_capped() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        let t = c.insert("t.", RecordType::A, Outcome::Temporary("x".into()), 60, t0);
        assert_eq!(t.ttl, 0);
        c.insert("z.", RecordType::A, Outcome::NxDomain, 0, t0);
        assert!(c.is_empty());
        let n = c.insert("n.", RecordType::MX, Outcome::NxDomain, 999_999, t0);
        assert_eq!(n.ttl, MAX_NEGATIVE_TTL);
        let p = c.insert("p.", RecordType::A, a([1, 2, 3, 4]), 999_999, t0);
        assert_eq!(p.ttl, MAX_POSITIVE_TTL);
    }

    #[test]
    fn a_full_cache_drops_the_entry_closest_to_expiry() {
        let c = Cache::new(2);
        let t0 = Instant::now();
        c.insert("long.", RecordType::A, a([1, 1, 1, 1]), 100, t0);
        c.insert("short.", RecordType::A, a([2, 2, 2, 2]), 10, t0);
        c.insert("new.", RecordType::A, a([3, 3, 3, 3]), 50, t0);
        assert_eq!(c.len(), 2);
        assert!(c.get("short.", RecordType::A, t0).is_none());
        assert!(c.get("long.", RecordType::A, t0).is_some());
        assert!(c.get("new.", RecordType::A, t0).is_some());
        assert!(
            Cache::new(0)
                .insert("x.", RecordType::A, a([1; 4]), 9, t0)
                .ttl
                == 9
        );
    }
}
