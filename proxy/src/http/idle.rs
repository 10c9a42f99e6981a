//! Idle tracking of a served HTTP/2 connection: hyper's server has no idle limit for HTTP/2,
//! so a mesh connection nobody uses would stay open for good. The serve loop sends GOAWAY once
//! no request has been waiting for its response for the limit (the peer's pool reconnects when
//! it needs to).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Requests of one connection waiting for their response, and when the last one got it.
#[derive(Debug)]
pub struct Activity {
    waiting: AtomicUsize,
    since: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            waiting: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        }
    }
}

/// Marks one request as waiting for its response until dropped.
pub struct Waiting(Arc<Activity>);

impl Drop for Waiting {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// Counts a request until the returned guard is dropped (when its response is ready).
    pub fn start(self: &Arc<Self>) -> Waiting {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(self.clone())
    }

    /// Resolves once the connection has had no request waiting for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let busy = self.waiting.load(Ordering::Acquire) > 0;
            let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
            let deadline = if busy {
                Instant::now() + limit
            } else {
                since + limit
            };
            if !busy && Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_limit_without_a_waiting_request() {
        let a = Arc::new(Activity::default());
        let limit = Duration::from_secs(30);
        let t0 = Instant::now();
        let g = a.start();
        let a2 = a.clone();
        let idle = tokio::spawn(async move { a2.idle_for(limit).await });
        tokio::time::sleep(Duration::from_secs(50)).await;
        assert!(!idle.is_finished(), "a waiting request keeps it busy");
        drop(g);
        idle.await.unwrap();
        assert_eq!(Instant::now().duration_since(t0), Duration::from_secs(80));
    }
}
