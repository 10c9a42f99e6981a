//! Process lifecycle shared by every task: readiness and graceful drain.
//!
//! `/ready` answers 200 only once every readiness gate is open (an SVID is loaded and every
//! listener is bound); SIGTERM, SIGINT or `POST /shutdown` start a drain that every listener
//! observes through [`Lifecycle::draining`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Shared readiness gates and the drain signal. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    gates: Mutex<BTreeMap<String, bool>>,
    ready_tx: watch::Sender<bool>,
    drain_tx: watch::Sender<bool>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A lifecycle with no gates (not ready until at least one gate is registered and opened).
    pub fn new() -> Self {
        let (ready_tx, _) = watch::channel(false);
        let (drain_tx, _) = watch::channel(false);
        Lifecycle {
            inner: Arc::new(Inner {
                gates: Mutex::new(BTreeMap::new()),
                ready_tx,
                drain_tx,
            }),
        }
    }

    /// Registers a readiness gate (closed) under `name`, e.g. `"identity"` or `"outbound"`.
    pub fn register_gate(&self, name: &str) {
        self.set_gate(name, false);
    }

    /// Opens the gate `name`; `/ready` turns 200 once every registered gate is open.
    pub fn open_gate(&self, name: &str) {
        self.set_gate(name, true);
    }

    fn set_gate(&self, name: &str, open: bool) {
        let mut gates = self.inner.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates.insert(name.to_owned(), open);
        let ready = !gates.is_empty() && gates.values().all(|&g| g);
        self.inner.ready_tx.send_replace(ready);
    }

    /// The gates that are still closed, for the `/ready` body.
    pub fn closed_gates(&self) -> Vec<String> {
        let gates = self.inner.gates.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .iter()
            .filter(|(_, open)| !**open)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// True once every registered gate is open.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready_tx.borrow()
    }

    /// Resolves once the proxy is ready.
    pub async fn ready(&self) {
        let mut rx = self.inner.ready_tx.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Starts the drain: listeners stop accepting and in-flight work finishes.
    pub fn start_drain(&self) {
        self.inner.drain_tx.send_replace(true);
    }

    /// True once a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.inner.drain_tx.borrow()
    }

    /// Resolves once a drain has started.
    pub async fn draining(&self) {
        let mut rx = self.inner.drain_tx.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_gate_is_open() {
        let l = Lifecycle::new();
        assert!(!l.is_ready());
        l.register_gate("identity");
        l.register_gate("outbound");
        l.open_gate("identity");
        assert!(!l.is_ready());
        assert_eq!(l.closed_gates(), vec!["outbound".to_string()]);
        l.open_gate("outbound");
        assert!(l.is_ready());
    }

    #[tokio::test]
    async fn drain_wakes_waiters() {
        let l = Lifecycle::new();
        let w = tokio::spawn({
            let l = l.clone();
            async move { l.draining().await }
        });
        l.start_drain();
        w.await.unwrap();
        assert!(l.is_draining());
    }
}
