//! Retry back-off and the retry budget.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Exponential back-off with full jitter: a random wait in `[0, min(max, base * 2^(n-1))]`
/// before retry `n` (1-based), so retries from many clients do not arrive in step.
pub fn backoff(retry: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << (retry.saturating_sub(1)).min(16)).min(max);
    ceiling.mul_f64(fastrand::f64())
}

/// Limits retries to `ratio` of requests plus `min_per_second`, so a failing upstream sees
/// at most that much extra load instead of a retry storm. Tokens are kept in thousandths;
/// each request deposits `ratio`, each retry withdraws one, time adds `min_per_second`.
#[derive(Debug)]
pub struct Budget {
    deposit: u64,
    per_second: u64,
    cap: u64,
    balance: AtomicU64,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last time-based refill.
    refilled: AtomicU64,
}

const TOKEN: u64 = 1000;

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        let per_second = u64::from(min_per_second) * TOKEN;
        // A burst may spend ten seconds' worth of the floor, plus 100 retries.
        let cap = 10 * per_second + 100 * TOKEN;
        Budget {
            deposit: (ratio * TOKEN as f64) as u64,
            per_second,
            cap,
            balance: AtomicU64::new(10 * per_second),
            epoch: Instant::now(),
            refilled: AtomicU64::new(0),
        }
    }

    /// Counts a request.
    pub fn deposit(&self) {
        if self.deposit == 0 {
            return;
        }
        if self.balance.fetch_add(self.deposit, Ordering::Relaxed) + self.deposit > self.cap {
            self.balance.fetch_min(self.cap, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let now_nanos = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let last = self.refilled.load(Ordering::Relaxed);
        if now_nanos > last
            && self
                .refilled
                .compare_exchange(last, now_nanos, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let add = (now_nanos - last).saturating_mul(self.per_second) / 1_000_000_000;
            self.balance.fetch_add(add, Ordering::Relaxed);
            self.balance.fetch_min(self.cap, Ordering::Relaxed);
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(TOKEN))
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_under_the_cap_with_jitter() {
        let (base, max) = (Duration::from_millis(10), Duration::from_millis(50));
        for _ in 0..1000 {
            assert!(backoff(1, base, max) <= Duration::from_millis(10));
            assert!(backoff(3, base, max) <= Duration::from_millis(40));
            assert!(backoff(9, base, max) <= max);
        }
        let mean = (0..10_000).map(|_| backoff(3, base, max).as_secs_f64()).sum::<f64>() / 1e4;
        assert!((mean - 0.020).abs() < 0.002, "full jitter averages half the ceiling: {mean}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_the_ratio_plus_the_floor() {
        let b = Budget::new(0.2, 0);
        assert!(!b.try_withdraw(Instant::now()), "no requests, no floor: no retries");
        for _ in 0..100 {
            b.deposit();
        }
        let allowed = (0..100).filter(|_| b.try_withdraw(Instant::now())).count();
        assert_eq!(allowed, 20);

        let b = Budget::new(0.0, 5);
        let now = Instant::now();
        // It starts with ten seconds of the floor...
        assert_eq!((0..100).filter(|_| b.try_withdraw(now)).count(), 50);
        // ...and time adds `min_per_second`.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!((0..100).filter(|_| b.try_withdraw(Instant::now())).count(), 10);
    }
}
