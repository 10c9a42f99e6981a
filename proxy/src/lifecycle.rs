//! Process lifecycle shared by every task: readiness and graceful drain.
//!
//! `/ready` answers 200 only once every readiness gate is open (an SVID is loaded and every
//! listener is bound); SIGTERM, SIGINT or `POST /shutdown` start a drain that every listener
//! observes through [`Lifecycle::draining`]. Work that must finish before the process exits
//! holds an [`InFlight`] guard from [`Lifecycle::track`]; [`Lifecycle::drain_with_grace`] waits
//! for those guards up to the configured grace period.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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
    drain_reason: Mutex<Option<String>>,
    in_flight_tx: watch::Sender<usize>,
    /// Details `/ready` shows without changing readiness (e.g. a failed config reload).
    notes: Mutex<BTreeMap<String, String>>,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every tracked piece of work finished within the grace period.
    Clean,
    /// The grace period ran out with this many pieces of work still in flight.
    GraceExpired {
        /// Work still in flight when the grace period ended.
        still_in_flight: usize,
    },
}

/// Marks one piece of in-flight work (a connection, a request); the drain waits until every
/// guard is dropped or the grace period ends.
#[derive(Debug)]
pub struct InFlight {
    lifecycle: Lifecycle,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.lifecycle
            .inner
            .in_flight_tx
            .send_modify(|n| *n = n.saturating_sub(1));
    }
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
        let (in_flight_tx, _) = watch::channel(0);
        Lifecycle {
            inner: Arc::new(Inner {
                gates: Mutex::new(BTreeMap::new()),
                ready_tx,
                drain_tx,
                drain_reason: Mutex::new(None),
                in_flight_tx,
                notes: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Sets (or with `None` clears) the note `key` that `/ready` shows as `key: note` without
    /// changing readiness (e.g. `config`: a reload that failed, the old config still serving).
    pub fn set_note(&self, key: &str, note: Option<String>) {
        let mut notes = self.inner.notes.lock().unwrap_or_else(|e| e.into_inner());
        match note {
            Some(n) => notes.insert(key.to_owned(), n),
            None => notes.remove(key),
        };
    }

    /// The notes, as `key: note` lines.
    pub fn notes(&self) -> Vec<String> {
        let notes = self.inner.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.iter().map(|(k, n)| format!("{k}: {n}")).collect()
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
        self.start_drain_because("requested");
    }

    /// Starts the drain and records why (`"SIGTERM"`, `"POST /shutdown"`, ...); the first
    /// reason wins and is logged once.
    pub fn start_drain_because(&self, reason: &str) {
        {
            let mut r = self
                .inner
                .drain_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if r.is_none() {
                tracing::info!(reason, "drain started: no new connections are accepted");
                *r = Some(reason.to_owned());
            }
        }
        self.inner.drain_tx.send_replace(true);
    }

    /// Why the drain started, if it has.
    pub fn drain_reason(&self) -> Option<String> {
        self.inner
            .drain_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Registers one piece of in-flight work; the drain waits until the guard is dropped.
    pub fn track(&self) -> InFlight {
        self.inner.in_flight_tx.send_modify(|n| *n += 1);
        InFlight {
            lifecycle: self.clone(),
        }
    }

    /// How many pieces of work are in flight.
    pub fn in_flight(&self) -> usize {
        *self.inner.in_flight_tx.borrow()
    }

    /// Waits for the drain to start, then for every [`InFlight`] guard to be dropped, for at
    /// most `grace` after the drain started.
    pub async fn drain_with_grace(&self, grace: Duration) -> DrainOutcome {
        self.draining().await;
        let mut rx = self.inner.in_flight_tx.subscribe();
        let finished = tokio::time::timeout(grace, rx.wait_for(|n| *n == 0))
            .await
            .is_ok();
        match finished {
            true => DrainOutcome::Clean,
            false => {
                let still_in_flight = self.in_flight();
                tracing::warn!(
                    still_in_flight,
                    grace_secs = grace.as_secs_f64(),
                    "drain grace period ended with work still in flight; exiting anyway"
                );
                DrainOutcome::GraceExpired { still_in_flight }
            }
        }
    }

    /// Installs SIGTERM and SIGINT handlers that start the drain. The handlers are installed
    /// before this returns, so a signal that arrives afterwards never kills the process.
    pub fn spawn_signal_handler(&self) -> std::io::Result<JoinHandle<()>> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let lifecycle = self.clone();
        Ok(tokio::spawn(async move {
            loop {
                let reason = tokio::select! {
                    Some(()) = term.recv() => "SIGTERM",
                    Some(()) = int.recv() => "SIGINT",
                    else => return,
                };
                if lifecycle.is_draining() {
                    tracing::info!(reason, "already draining; waiting for in-flight work");
                }
                lifecycle.start_drain_because(reason);
            }
        }))
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
        assert_eq!(l.drain_reason().as_deref(), Some("requested"));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_in_flight_work_then_ends_clean() {
        let l = Lifecycle::new();
        let guard = l.track();
        let _second = l.track();
        drop(_second);
        assert_eq!(l.in_flight(), 1);
        let d = tokio::spawn({
            let l = l.clone();
            async move { l.drain_with_grace(Duration::from_secs(10)).await }
        });
        l.start_drain_because("test");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!d.is_finished(), "drain must wait for the in-flight guard");
        drop(guard);
        assert_eq!(d.await.unwrap(), DrainOutcome::Clean);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_the_grace_period() {
        let l = Lifecycle::new();
        let _guard = l.track();
        l.start_drain_because("test");
        let start = tokio::time::Instant::now();
        let outcome = l.drain_with_grace(Duration::from_secs(5)).await;
        assert_eq!(outcome, DrainOutcome::GraceExpired { still_in_flight: 1 });
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn sigterm_starts_the_drain() {
        let l = Lifecycle::new();
        let _h = l.spawn_signal_handler().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(5), l.draining())
            .await
            .unwrap();
        assert_eq!(l.drain_reason().as_deref(), Some("SIGTERM"));
    }
}
