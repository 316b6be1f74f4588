//! One process-wide subscription to mailbox events, fanned out to IMAP
//! sessions by account, so an idle session costs no polling task.
//!
//! The first session of a process (per bus) starts one task that reads
//! `bus.subscribe_events(None)` and forwards each event to the
//! `broadcast` channel of its account, if any session of that account is
//! registered. If the subscription fails or ends, the hub is dropped and the
//! next registration tries again; sessions also re-check every 30 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use futures::StreamExt;
use posthorn_bus::Bus;
use tokio::sync::broadcast;

/// Fan-out of events to the sessions of each account.
pub struct EventHub {
    accounts: Mutex<HashMap<String, broadcast::Sender<String>>>,
}

/// A session's registration: receives the names of changed mailboxes of its
/// account. Unregisters on drop.
pub struct Registration {
    hub: Arc<EventHub>,
    account: String,
    /// Mailbox names of events (a `Lagged` error means "something changed").
    pub rx: broadcast::Receiver<String>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.hub.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(&self.account) {
            // `self.rx` is still alive here, hence `<= 1`.
            if tx.receiver_count() <= 1 {
                map.remove(&self.account);
            }
        }
    }
}

type Hubs = Mutex<HashMap<usize, Weak<EventHub>>>;

fn hubs() -> &'static Hubs {
    static HUBS: OnceLock<Hubs> = OnceLock::new();
    HUBS.get_or_init(|| Mutex::new(HashMap::new()))
}

impl EventHub {
    /// The hub of this bus, starting its subscription task if needed.
    /// `None` if the bus cannot subscribe now (sessions fall back to polling).
    pub async fn get(bus: &Arc<dyn Bus>) -> Option<Arc<EventHub>> {
        let key = Arc::as_ptr(bus) as *const () as usize;
        if let Some(h) = hubs()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .and_then(Weak::upgrade)
        {
            return Some(h);
        }
        let mut stream = match bus.subscribe_events(None).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "imap: cannot subscribe to mailbox events; polling");
                return None;
            }
        };
        let mut map = hubs().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(&key).and_then(Weak::upgrade) {
            return Some(h); // lost a race; our extra stream is dropped
        }
        let hub = Arc::new(EventHub {
            accounts: Mutex::new(HashMap::new()),
        });
        map.insert(key, Arc::downgrade(&hub));
        drop(map);
        // The task holds the hub strongly: hubs live as long as their subscription.
        let h = hub.clone();
        tokio::spawn(async move {
            while let Some(ev) = stream.next().await {
                let map = h.accounts.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(tx) = map.get(&ev.account) {
                    let _ = tx.send(ev.mailbox);
                }
            }
            tracing::warn!("imap: mailbox event subscription ended");
            let mut map = hubs().lock().unwrap_or_else(|e| e.into_inner());
            if map
                .get(&key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&h)))
            {
                map.remove(&key);
            }
        });
        Some(hub)
    }

    /// Register a session of `account`.
    pub fn register(self: &Arc<Self>, account: &str) -> Registration {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let rx = map
            .entry(account.to_string())
            .or_insert_with(|| broadcast::channel(64).0)
            .subscribe();
        Registration {
            hub: self.clone(),
            account: account.to_string(),
            rx,
        }
    }
}
