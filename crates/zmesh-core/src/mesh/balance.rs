//! Provides the balancing and retry arithmetic of the mesh client, pure: power-of-two-choices
//! peer selection by outstanding calls, the client-wide retry budget, and retry backoff.

use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fast per-thread xorshift generator; picks only need to be spread, not unpredictable.
pub(crate) fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// A uniform index below `n` (`n > 0`).
fn index_below(n: usize) -> usize {
    (random_u64() % n as u64) as usize
}

/// Power of two choices: of `n` candidates, sample two distinct ones at random and take the
/// one with fewer outstanding calls (`load(i)`), skipping those `eligible(i)` rejects.
/// Returns `None` when no candidate is eligible.
///
/// Two random samples avoid the herd effect of always picking the global minimum (every
/// caller would pile onto the same peer between updates) while keeping the maximum load
/// close to optimal.
pub(crate) fn pick_two(
    n: usize,
    eligible: impl Fn(usize) -> bool,
    load: impl Fn(usize) -> usize,
) -> Option<usize> {
    match n {
        0 => None,
        1 => eligible(0).then_some(0),
        _ => {
            let a = index_below(n);
            let b = (a + 1 + index_below(n - 1)) % n;
            match (eligible(a), eligible(b)) {
                (true, true) => Some(if load(b) < load(a) { b } else { a }),
                (true, false) => Some(a),
                (false, true) => Some(b),
                // Both samples were ineligible: fall back to a scan from a random start, so
                // a call still finds the one live peer among many dead ones.
                (false, false) => {
                    let start = index_below(n);
                    (0..n)
                        .map(|k| (start + k) % n)
                        .filter(|&i| eligible(i))
                        .min_by_key(|&i| load(i))
                }
            }
        }
    }
}

/// Client-wide retry budget: every call deposits `ratio` of a retry, time deposits
/// `per_second`, and each retry or hedge withdraws one, so retries stay a bounded fraction
/// of traffic when the whole mesh is failing (no retry storm) while a burst after one
/// peer's death still has retries to spend.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    state: Mutex<BudgetState>,
    ratio: f64,
    per_second: f64,
    cap: f64,
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    refilled: Instant,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, per_second: f64, cap: f64, now: Instant) -> Self {
        Self {
            state: Mutex::new(BudgetState {
                tokens: cap.min(per_second.max(1.0)),
                refilled: now,
            }),
            ratio,
            per_second,
            cap,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A call was made.
    pub(crate) fn deposit(&self) {
        let mut s = self.state();
        s.tokens = (s.tokens + self.ratio).min(self.cap);
    }

    /// Takes one retry if the budget has it.
    pub(crate) fn withdraw(&self, now: Instant) -> bool {
        let mut s = self.state();
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.refilled = now;
        s.tokens = (s.tokens + elapsed * self.per_second).min(self.cap);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Delay before retry number `attempt` (1-based): exponential from `base`, capped at `max`,
/// with "equal jitter" (half fixed, half random) so retries of many callers spread out.
pub(crate) fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let full = exp.min(max);
    let half = full / 2;
    let jitter_us = half.as_micros() as u64;
    let jitter = if jitter_us == 0 {
        Duration::ZERO
    } else {
        Duration::from_micros(random_u64() % (jitter_us + 1))
    };
    half + jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_choices_prefers_the_less_loaded_and_skips_the_ineligible() {
        let loads = [5usize, 0, 9];
        // With two peers, both are always sampled, so the lighter one always wins.
        for _ in 0..100 {
            assert_eq!(pick_two(2, |_| true, |i| loads[i]), Some(1));
        }
        // The heaviest of three is never chosen: it loses against either other sample.
        for _ in 0..1000 {
            assert_ne!(pick_two(3, |_| true, |i| loads[i]), Some(2));
        }
        // Only one eligible candidate among many: always found.
        for _ in 0..1000 {
            assert_eq!(pick_two(10, |i| i == 7, |_| 0), Some(7));
        }
        assert_eq!(pick_two(0, |_| true, |_| 0), None);
        assert_eq!(pick_two(1, |_| false, |_| 0), None);
        assert_eq!(pick_two(4, |_| false, |_| 0), None);
    }

    #[test]
    fn two_choices_spreads_equal_load() {
        let mut hits = [0usize; 4];
        for _ in 0..4000 {
            let i = pick_two(4, |_| true, |_| 0).expect("eligible");
            hits[i] += 1;
        }
        assert!(hits.iter().all(|&h| h > 600), "{hits:?}");
    }

    #[test]
    fn budget_bounds_retries_to_a_fraction_of_calls() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.25, 0.0, 100.0, t0);
        // Starts with a reserve of one token (per_second floors at 1).
        assert!(budget.withdraw(t0));
        assert!(!budget.withdraw(t0));
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw(t0)).count();
        assert_eq!(granted, 25);
        // Time refills it.
        let timed = RetryBudget::new(0.0, 10.0, 20.0, t0);
        let later = t0 + Duration::from_secs(1);
        let granted = (0..100).filter(|_| timed.withdraw(later)).count();
        assert_eq!(
            granted, 20,
            "reserve of 10 plus 10 per second, capped at 20"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(4);
        let max = Duration::from_millis(100);
        for _ in 0..100 {
            let d1 = backoff(1, base, max);
            assert!(d1 >= Duration::from_millis(2) && d1 <= base, "{d1:?}");
            let d3 = backoff(3, base, max);
            assert!(d3 >= Duration::from_millis(8) && d3 <= Duration::from_millis(16));
            let d20 = backoff(20, base, max);
            assert!(d20 >= Duration::from_millis(50) && d20 <= max);
        }
    }
}
