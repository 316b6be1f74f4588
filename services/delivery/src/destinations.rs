//! Per-destination limits of one delivery process (docs/delivery.md,
//! "Destinations"): at most `delivery.per_domain_concurrency` transactions
//! to one destination at once — up to half as many more items wait for a
//! free slot, the rest go back to the queue for a few seconds — and a
//! destination none of whose next hops answered is suspended for
//! `delivery.dead_destination_secs`, its items deferred without a
//! connection (Postfix's "delivery temporarily suspended"). A destination
//! is the recipient domain, or the relay when `relayhost`/`transports`
//! send the domain's mail through one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The destinations of one process.
#[derive(Debug)]
pub struct Destinations {
    per_destination: usize,
    suspend_for: Duration,
    state: Mutex<HashMap<String, Dest>>,
}

#[derive(Debug, Default)]
struct Dest {
    active: usize,
    waiting: usize,
    suspended: Option<(Instant, String)>,
    /// Wakes a waiter when a slot frees.
    freed: Arc<tokio::sync::Notify>,
}

/// Whether an item for a destination may be attempted now.
#[derive(Debug)]
pub enum Admission {
    /// Yes; the slot is held until dropped.
    Go(Slot),
    /// The destination has its limit of transactions open and of items
    /// waiting: try later, it costs no attempt.
    Busy,
    /// The destination is suspended: defer with this reason.
    Suspended(String),
}

/// One open transaction to a destination; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<Destinations>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.owner.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = s.get_mut(&self.key) {
            d.active = d.active.saturating_sub(1);
            d.freed.notify_one();
            if d.active == 0 && d.waiting == 0 && d.suspended.is_none() {
                s.remove(&self.key);
            }
        }
    }
}

impl Destinations {
    /// At most `per_destination` transactions per destination (0: no
    /// limit); suspend for `suspend_for` (zero: never).
    pub fn new(per_destination: usize, suspend_for: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_destination,
            suspend_for,
            state: Mutex::new(HashMap::new()),
        })
    }

    /// May an item for `key` be attempted now? Never waits (the tests'
    /// view of [`Destinations::admit_waiting`]).
    #[cfg(test)]
    fn admit(self: &Arc<Self>, key: &str) -> Admission {
        self.try_admit(key, false).0
    }

    /// May an item for `key` be attempted? If the destination is at its
    /// limit and fewer than half the limit wait already, wait up to
    /// `patience` for a free slot.
    pub async fn admit_waiting(self: &Arc<Self>, key: &str, patience: Duration) -> Admission {
        let (a, freed) = self.try_admit(key, true);
        let Some(freed) = freed else { return a };
        let deadline = tokio::time::Instant::now() + patience;
        let mut freed_now = freed;
        loop {
            let woken = tokio::time::timeout_at(deadline, freed_now.notified()).await;
            let (a, again) = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let d = s.entry(key.to_string()).or_default();
                match self.take_slot(key, d) {
                    Some(a) => {
                        d.waiting = d.waiting.saturating_sub(1);
                        (Some(a), None)
                    }
                    None if woken.is_err() => {
                        d.waiting = d.waiting.saturating_sub(1);
                        (Some(Admission::Busy), None)
                    }
                    None => (None, Some(d.freed.clone())),
                }
            };
            match (a, again) {
                (Some(a), _) => return a,
                (None, Some(f)) => freed_now = f,
                (None, None) => return Admission::Busy,
            }
        }
    }

    /// Admit now, or (with `wait`) register as a waiter and return what to
    /// wait on.
    fn try_admit(
        self: &Arc<Self>,
        key: &str,
        wait: bool,
    ) -> (Admission, Option<Arc<tokio::sync::Notify>>) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let d = s.entry(key.to_string()).or_default();
        if let Some(a) = self.take_slot(key, d) {
            return (a, None);
        }
        if wait && d.waiting < self.per_destination.div_ceil(2) {
            d.waiting += 1;
            return (Admission::Busy, Some(d.freed.clone()));
        }
        (Admission::Busy, None)
    }

    /// A slot of `d`, or why not (`None`: at the limit).
    fn take_slot(self: &Arc<Self>, key: &str, d: &mut Dest) -> Option<Admission> {
        if let Some((until, why)) = &d.suspended {
            if Instant::now() < *until {
                return Some(Admission::Suspended(why.clone()));
            }
            d.suspended = None;
        }
        if self.per_destination > 0 && d.active >= self.per_destination {
            return None;
        }
        d.active += 1;
        Some(Admission::Go(Slot {
            owner: self.clone(),
            key: key.to_string(),
        }))
    }

    /// No next hop of `key` answered (`why`): suspend it.
    pub fn unreachable(&self, key: &str, why: &str) {
        if self.suspend_for.is_zero() {
            return;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let d = s.entry(key.to_string()).or_default();
        if d.suspended.is_none() {
            tracing::warn!(destination = %key, %why, suspend_for = ?self.suspend_for, "no next hop answers; delivery to it suspended");
        }
        d.suspended = Some((Instant::now() + self.suspend_for, why.to_string()));
        drop(s);
        self.wake_all(key);
    }

    /// A next hop of `key` answered: lift a suspension.
    pub fn reachable(&self, key: &str) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = s.get_mut(key)
            && d.suspended.take().is_some()
        {
            tracing::info!(destination = %key, "next hop answers again; delivery resumed");
        }
    }

    /// Wake every waiter of `key` (a suspension: they defer at once).
    fn wake_all(&self, key: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = s.get(key) {
            d.freed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_suspension() {
        let d = Destinations::new(2, Duration::from_secs(60));
        let a = d.admit("remote.test");
        let b = d.admit("remote.test");
        assert!(matches!(a, Admission::Go(_)));
        assert!(matches!(b, Admission::Go(_)));
        assert!(matches!(d.admit("remote.test"), Admission::Busy));
        assert!(
            matches!(d.admit("other.test"), Admission::Go(_)),
            "per destination"
        );
        drop(a);
        let c = d.admit("remote.test");
        assert!(matches!(c, Admission::Go(_)), "a slot freed");
        d.unreachable("remote.test", "connection timed out");
        match d.admit("remote.test") {
            Admission::Suspended(why) => assert_eq!(why, "connection timed out"),
            other => panic!("{other:?}"),
        }
        d.reachable("remote.test");
        drop((b, c));
        assert!(
            matches!(d.admit("remote.test"), Admission::Go(_)),
            "resumed"
        );
        assert!(
            d.state.lock().unwrap().is_empty(),
            "idle destinations are forgotten"
        );
    }

    #[tokio::test]
    async fn waiters_get_a_freed_slot_or_give_up() {
        let d = Destinations::new(2, Duration::from_secs(60));
        let a = d.admit("r");
        let _b = d.admit("r");
        let patience = Duration::from_secs(30);
        let waiting = |d: &Arc<Destinations>| d.state.lock().unwrap()["r"].waiting;
        // One waiter (half of 2) gets the slot `a` frees.
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.admit_waiting("r", patience).await })
        };
        while waiting(&d) == 0 {
            tokio::task::yield_now().await;
        }
        // A second would-be waiter is turned away at once.
        let second = d.admit_waiting("r", patience).await;
        assert!(matches!(second, Admission::Busy), "{second:?}");
        drop(a);
        let got = waiter.await.unwrap();
        assert!(matches!(got, Admission::Go(_)), "{got:?}");
        // Out of patience: busy.
        let short = d.admit_waiting("r", Duration::from_millis(10)).await;
        assert!(matches!(short, Admission::Busy), "{short:?}");
        // A suspension wakes waiters, who defer.
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.admit_waiting("r", patience).await })
        };
        while waiting(&d) == 0 {
            tokio::task::yield_now().await;
        }
        d.unreachable("r", "down");
        let w = waiter.await.unwrap();
        assert!(matches!(w, Admission::Suspended(_)), "{w:?}");
    }

    #[test]
    fn a_suspension_ends() {
        let d = Destinations::new(0, Duration::from_millis(1));
        d.unreachable("x", "down");
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(d.admit("x"), Admission::Go(_)));
        let off = Destinations::new(0, Duration::ZERO);
        off.unreachable("x", "down");
        assert!(matches!(off.admit("x"), Admission::Go(_)), "suspension off");
    }
}
