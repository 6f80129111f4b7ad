//! Provides the replay guard: a time window around the receiver's clock plus a bounded cache
//! of the nonces seen inside it, so a captured sealed frame is accepted at most once.

use std::collections::{HashSet, VecDeque};

/// Why a frame's freshness was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The timestamp is outside the window around our clock.
    #[error("message timestamp is {skew_ms} ms away from this clock (window {window_ms} ms)")]
    OutsideWindow {
        /// Distance from our clock.
        skew_ms: u64,
        /// The allowed distance.
        window_ms: u64,
    },
    /// The nonce was seen before: a replay.
    #[error("message was already received (replayed nonce)")]
    Replayed,
    /// Older than entries the full cache had to forget, so it can no longer be told apart
    /// from a replay.
    #[error("message is older than the replay cache can vouch for")]
    TooOld,
}

/// Remembers nonces for `window_ms` and at most `capacity` of them.
///
/// When full, the oldest entry is forgotten and its timestamp becomes a floor: anything at
/// or below the floor is refused as [`ReplayError::TooOld`]. Memory stays bounded and no
/// replay gets through; only messages delayed past the floor under a flood are lost.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    capacity: usize,
    seen: HashSet<[u8; 12]>,
    order: VecDeque<(u64, [u8; 12])>,
    floor_ms: u64,
}

impl ReplayGuard {
    /// A guard with the given window and capacity (at least 1).
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        Self {
            window_ms,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
            floor_ms: 0,
        }
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Checks a message's timestamp and nonce at `now_ms` and remembers the nonce if fresh.
    ///
    /// # Errors
    /// [`ReplayError`] when the message is stale, too old for the cache, or a replay.
    pub fn check(
        &mut self,
        now_ms: u64,
        timestamp_ms: u64,
        nonce: [u8; 12],
    ) -> Result<(), ReplayError> {
        let skew_ms = now_ms.abs_diff(timestamp_ms);
        if skew_ms > self.window_ms {
            return Err(ReplayError::OutsideWindow {
                skew_ms,
                window_ms: self.window_ms,
            });
        }
        // Forget what has left the window; anything that old is refused by the check above.
        let oldest_kept = now_ms.saturating_sub(self.window_ms);
        while let Some(&(ts, n)) = self.order.front() {
            if ts >= oldest_kept {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&n);
        }
        if timestamp_ms <= self.floor_ms {
            return Err(ReplayError::TooOld);
        }
        if !self.seen.insert(nonce) {
            return Err(ReplayError::Replayed);
        }
        self.order.push_back((timestamp_ms, nonce));
        while self.order.len() > self.capacity {
            if let Some((ts, n)) = self.order.pop_front() {
                self.seen.remove(&n);
                self.floor_ms = self.floor_ms.max(ts);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce(i: u32) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&i.to_be_bytes());
        n
    }

    #[test]
    fn accepts_once_and_refuses_the_replay() {
        let mut g = ReplayGuard::new(1000, 100);
        assert_eq!(g.check(10_000, 10_000, nonce(1)), Ok(()));
        assert_eq!(
            g.check(10_001, 10_000, nonce(1)),
            Err(ReplayError::Replayed)
        );
        assert_eq!(g.check(10_001, 10_000, nonce(2)), Ok(()));
    }

    #[test]
    fn refuses_outside_the_window_both_ways() {
        let mut g = ReplayGuard::new(1000, 100);
        assert!(matches!(
            g.check(10_000, 8_999, nonce(1)),
            Err(ReplayError::OutsideWindow { .. })
        ));
        assert!(matches!(
            g.check(10_000, 11_001, nonce(1)),
            Err(ReplayError::OutsideWindow { .. })
        ));
        assert_eq!(g.check(10_000, 9_000, nonce(1)), Ok(()));
    }

    #[test]
    fn expired_entries_are_forgotten() {
        let mut g = ReplayGuard::new(1000, 100);
        for i in 0..50 {
            g.check(10_000, 10_000, nonce(i)).expect("fresh");
        }
        assert_eq!(g.len(), 50);
        g.check(11_500, 11_500, nonce(999)).expect("fresh");
        assert_eq!(g.len(), 1);
        // The old nonce is forgotten, but its timestamp is outside the window: still refused.
        assert!(g.check(11_500, 10_000, nonce(1)).is_err());
    }

    #[test]
    fn full_cache_stays_bounded_and_never_lets_a_replay_through() {
        let mut g = ReplayGuard::new(60_000, 10);
        for i in 0..100u32 {
            g.check(100_000, 50_000 + u64::from(i), nonce(i))
                .expect("fresh");
            assert!(g.len() <= 10);
        }
        // Every earlier nonce is refused, whether still cached or already forgotten.
        for i in 0..100u32 {
            assert!(
                g.check(100_000, 50_000 + u64::from(i), nonce(i)).is_err(),
                "nonce {i}"
            );
        }
        // Newer traffic still flows.
        assert_eq!(g.check(100_000, 50_200, nonce(1000)), Ok(()));
    }
}
