//! Retry budget (finagle/linkerd style): every original request deposits `ratio` of a retry,
//! every retry withdraws one, and a reserve of `min_per_second * ttl` retries is always there.
//! Deposits and withdrawals expire after `ttl`, so a burst of failures cannot turn into a retry
//! storm: with the upstream failing every request, retries stay near `ratio` of the traffic.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::policy::BudgetPolicy;

/// Number of time slots the `ttl` window is cut into.
const SLOTS: usize = 10;

/// A thread-safe retry budget for one service.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    reserve: f64,
    slot_len: Duration,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Start of slot `head`.
    head_start: Instant,
    head: usize,
    deposits: [u64; SLOTS],
    withdrawals: [u64; SLOTS],
}

impl RetryBudget {
    /// A budget for the given policy, starting full (only the reserve).
    pub fn new(policy: &BudgetPolicy) -> Self {
        let ttl = policy.ttl.max(Duration::from_millis(SLOTS as u64));
        RetryBudget {
            ratio: policy.ratio.max(0.0),
            reserve: f64::from(policy.min_per_second) * ttl.as_secs_f64(),
            slot_len: ttl / SLOTS as u32,
            state: Mutex::new(Window {
                head_start: Instant::now(),
                head: 0,
                deposits: [0; SLOTS],
                withdrawals: [0; SLOTS],
            }),
        }
    }

    /// Records an original request (not a retry).
    pub fn deposit(&self) {
        let mut w = self.lock();
        self.advance(&mut w);
        let h = w.head;
        w.deposits[h] += 1;
    }

    /// Takes one retry from the budget; `false` when the budget is exhausted.
    pub fn withdraw(&self) -> bool {
        let mut w = self.lock();
        self.advance(&mut w);
        let deposits: u64 = w.deposits.iter().sum();
        let withdrawals: u64 = w.withdrawals.iter().sum();
        let balance = self.reserve + self.ratio * deposits as f64 - withdrawals as f64;
        if balance >= 1.0 {
            let h = w.head;
            w.withdrawals[h] += 1;
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // A poisoned lock only means another thread panicked mid-update of plain counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires slots older than the window.
    fn advance(&self, w: &mut Window) {
        let now = Instant::now();
        let mut steps = 0;
        while now.duration_since(w.head_start) >= self.slot_len && steps < SLOTS {
            w.head = (w.head + 1) % SLOTS;
            w.head_start += self.slot_len;
            let h = w.head;
            w.deposits[h] = 0;
            w.withdrawals[h] = 0;
            steps += 1;
        }
        if now.duration_since(w.head_start) >= self.slot_len {
            // Idle for longer than the whole window: everything expired.
            w.head_start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ratio: f64, min: u32) -> BudgetPolicy {
        BudgetPolicy {
            ratio,
            min_per_second: min,
            ttl: Duration::from_secs(10),
        }
    }

    fn drain(b: &RetryBudget) -> usize {
        (0..10_000).take_while(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_is_floor_times_ttl() {
        let b = RetryBudget::new(&policy(0.2, 2));
        assert_eq!(drain(&b), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_add_ratio() {
        let b = RetryBudget::new(&policy(0.2, 0));
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(drain(&b), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn refills_after_ttl() {
        let b = RetryBudget::new(&policy(0.5, 1));
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(drain(&b), 15);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.withdraw(), "withdrawals still inside the window");
        tokio::time::advance(Duration::from_secs(5)).await;
        // Both the deposits and the withdrawals expired: only the reserve is left.
        assert_eq!(drain(&b), 10);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(drain(&b), 10);
    }
}
