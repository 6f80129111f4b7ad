//! Provides the replay guard: a time window around the receiver's clock plus a bounded cache
//! of the nonces seen inside it, so a captured sealed frame is accepted at most once; and a
//! floor at the receiver's start, so a frame captured before a restart is not accepted again
//! by the fresh, empty cache.
//!
//! Pure: every check takes the time as an argument (milliseconds since the Unix epoch).

use std::collections::BTreeSet;

/// Why a frame's freshness was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The timestamp is further in the past than the window.
    #[error("message timestamp is {skew_ms} ms away from this clock (window {window_ms} ms)")]
    OutsideWindow {
        /// Distance from our clock.
        skew_ms: u64,
        /// The allowed distance.
        window_ms: u64,
    },
    /// The timestamp is further in the future than the allowed clock skew.
    #[error("message timestamp is {ahead_ms} ms ahead of this clock (allowed skew {skew_ms} ms)")]
    FromTheFuture {
        /// How far ahead of our clock.
        ahead_ms: u64,
        /// The allowed skew.
        skew_ms: u64,
    },
    /// Sealed before this receiver started (less the allowed skew): its nonce cache cannot
    /// know whether it was accepted before a restart, so it is refused.
    #[error(
        "message was sealed {before_ms} ms before this receiver started (allowed skew {skew_ms} ms)"
    )]
    BeforeStart {
        /// How long before the start floor.
        before_ms: u64,
        /// The allowed skew.
        skew_ms: u64,
    },
    /// The nonce was seen before: a replay.
    #[error("message was already received (replayed nonce)")]
    Replayed,
    /// Older than entries the full cache had to forget, so it can no longer be told apart
    /// from a replay.
    #[error("message is older than the replay cache can vouch for")]
    TooOld,
}

/// Remembers the nonces of accepted frames while their timestamps are inside the window,
/// and at most `capacity` of them.
///
/// Accepted timestamps lie between `now - window` and `now + skew` (and not before the
/// start floor). Entries are kept ordered by timestamp and forgotten by timestamp: the
/// oldest leave first whatever order they arrived in, so a frame stamped in the future
/// (by a key holder with a bad clock) neither stays forever nor pushes correctly stamped
/// entries out. When full, the entry with the oldest timestamp is forgotten and that
/// timestamp becomes a floor: anything at or below it is refused as
/// [`ReplayError::TooOld`]. Memory stays bounded and no replay gets through; only messages
/// delayed past the floor under a flood are lost, and the floor can never rise above the
/// oldest timestamp still remembered.
#[derive(Debug)]
pub struct ReplayGuard {
    window_ms: u64,
    skew_ms: u64,
    capacity: usize,
    /// `(timestamp, nonce)` of every remembered frame. A replay carries the same timestamp
    /// and nonce as the original (both are under the tag), so one ordered set answers both
    /// "seen before?" and "which is oldest?".
    seen: BTreeSet<(u64, [u8; 12])>,
    /// Timestamps at or below this are refused (see [`ReplayError::TooOld`]).
    floor_ms: u64,
    /// Timestamps below this are refused as sealed before the start.
    not_before_ms: u64,
}

impl ReplayGuard {
    /// A guard with the given window, allowed future skew and capacity (at least 1), with
    /// no start floor.
    pub fn new(window_ms: u64, skew_ms: u64, capacity: usize) -> Self {
        Self {
            window_ms,
            skew_ms,
            capacity: capacity.max(1),
            seen: BTreeSet::new(),
            floor_ms: 0,
            not_before_ms: 0,
        }
    }

    /// Refuses frames sealed before `started_ms` less the allowed skew: call with the
    /// receiver's start time, so a frame captured before a restart is not accepted again.
    #[must_use]
    pub fn started_at(mut self, started_ms: u64) -> Self {
        self.not_before_ms = started_ms.saturating_sub(self.skew_ms);
        self
    }

    /// Nonces remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Checks a timestamp against the window, the future skew and the start floor, without
    /// the nonce cache (for announcements that may legitimately repeat).
    ///
    /// # Errors
    /// [`ReplayError::OutsideWindow`], [`ReplayError::FromTheFuture`] or
    /// [`ReplayError::BeforeStart`].
    pub fn check_time(&self, now_ms: u64, timestamp_ms: u64) -> Result<(), ReplayError> {
        if timestamp_ms > now_ms.saturating_add(self.skew_ms) {
            return Err(ReplayError::FromTheFuture {
                ahead_ms: timestamp_ms - now_ms,
                skew_ms: self.skew_ms,
            });
        }
        let age_ms = now_ms.saturating_sub(timestamp_ms);
        if age_ms > self.window_ms {
            return Err(ReplayError::OutsideWindow {
                skew_ms: age_ms,
                window_ms: self.window_ms,
            });
        }
        if timestamp_ms < self.not_before_ms {
            return Err(ReplayError::BeforeStart {
                before_ms: self.not_before_ms.saturating_add(self.skew_ms) - timestamp_ms,
                skew_ms: self.skew_ms,
            });
        }
        Ok(())
    }

    /// Checks a message's timestamp and nonce at `now_ms` and remembers the nonce if fresh.
    ///
    /// # Errors
    /// [`ReplayError`] when the message is stale, from the future, sealed before the start,
    /// too old for the cache, or a replay.
    pub fn check(
        &mut self,
        now_ms: u64,
        timestamp_ms: u64,
        nonce: [u8; 12],
    ) -> Result<(), ReplayError> {
        self.check_time(now_ms, timestamp_ms)?;
        // Forget what has left the window; anything that old is refused by the check above.
        let oldest_kept = now_ms.saturating_sub(self.window_ms);
        while let Some(&(ts, _)) = self.seen.first() {
            if ts >= oldest_kept {
                break;
            }
            self.seen.pop_first();
        }
        if timestamp_ms <= self.floor_ms {
            return Err(ReplayError::TooOld);
        }
        if !self.seen.insert((timestamp_ms, nonce)) {
            return Err(ReplayError::Replayed);
        }
        while self.seen.len() > self.capacity {
            if let Some((ts, _)) = self.seen.pop_first() {
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
        let mut g = ReplayGuard::new(1000, 1000, 100);
        assert_eq!(g.check(10_000, 10_000, nonce(1)), Ok(()));
        assert_eq!(
            g.check(10_001, 10_000, nonce(1)),
            Err(ReplayError::Replayed)
        );
        assert_eq!(g.check(10_001, 10_000, nonce(2)), Ok(()));
    }

    #[test]
    fn refuses_outside_the_window_both_ways() {
        let mut g = ReplayGuard::new(1000, 1000, 100);
        assert!(matches!(
            g.check(10_000, 8_999, nonce(1)),
            Err(ReplayError::OutsideWindow { .. })
        ));
        assert!(matches!(
            g.check(10_000, 11_001, nonce(1)),
            Err(ReplayError::FromTheFuture { .. })
        ));
        assert_eq!(g.check(10_000, 9_000, nonce(1)), Ok(()));
    }

    #[test]
    fn expired_entries_are_forgotten() {
        let mut g = ReplayGuard::new(1000, 1000, 100);
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
        let mut g = ReplayGuard::new(60_000, 2_000, 10);
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

    #[test]
    fn future_stamps_beyond_the_skew_are_refused() {
        let mut g = ReplayGuard::new(30_000, 2_000, 100);
        assert_eq!(g.check(100_000, 102_000, nonce(1)), Ok(()));
        assert_eq!(
            g.check(100_000, 102_001, nonce(2)),
            Err(ReplayError::FromTheFuture {
                ahead_ms: 2_001,
                skew_ms: 2_000
            })
        );
        assert_eq!(
            g.check(100_000, 125_000, nonce(3)),
            Err(ReplayError::FromTheFuture {
                ahead_ms: 25_000,
                skew_ms: 2_000
            })
        );
    }

    #[test]
    fn a_future_stamp_inside_the_skew_cannot_poison_a_full_cache() {
        // Before the fix, entries were forgotten in arrival order: a frame stamped 25 s
        // ahead, once pushed out of a full cache, raised the floor to 25 s ahead and every
        // correctly clocked frame was refused as too old until the clock caught up.
        let mut g = ReplayGuard::new(30_000, 2_000, 4);
        assert_eq!(g.check(100_000, 101_900, nonce(0)), Ok(()));
        for i in 1..=20u32 {
            let now = 100_000 + u64::from(i);
            assert_eq!(g.check(now, now, nonce(i)), Ok(()), "frame {i}");
            assert!(g.len() <= 4);
        }
        // The future entry is still remembered (it is the newest), so its replay is refused.
        assert!(g.check(100_021, 101_900, nonce(0)).is_err());
        // And correctly clocked traffic flows on.
        assert_eq!(g.check(100_030, 100_030, nonce(99)), Ok(()));
    }

    #[test]
    fn entries_are_forgotten_by_timestamp_not_arrival() {
        let mut g = ReplayGuard::new(1_000, 500, 100);
        // Arrives first, stamped late; then an older one arrives.
        g.check(10_000, 10_400, nonce(1)).expect("fresh");
        g.check(10_000, 9_500, nonce(2)).expect("fresh");
        // At 10_600 the 9_500 entry has left the window even though it arrived last.
        g.check(10_600, 10_600, nonce(3)).expect("fresh");
        assert_eq!(g.len(), 2);
        // The one stamped 10_400 is still there until 11_400.
        assert_eq!(
            g.check(11_300, 10_400, nonce(1)),
            Err(ReplayError::Replayed)
        );
    }

    #[test]
    fn frames_sealed_before_the_start_are_refused() {
        let started = 1_000_000;
        let mut g = ReplayGuard::new(30_000, 2_000, 100).started_at(started);
        // Captured 10 s before a restart, replayed right after it: inside the window, but
        // sealed before this receiver started.
        assert_eq!(
            g.check(started + 100, started - 10_000, nonce(1)),
            Err(ReplayError::BeforeStart {
                before_ms: 10_000,
                skew_ms: 2_000
            })
        );
        // Within the skew (a sender whose clock is a little behind) is accepted.
        assert_eq!(g.check(started + 100, started - 1_500, nonce(2)), Ok(()));
        assert_eq!(g.check(started + 100, started + 90, nonce(3)), Ok(()));
        assert!(g.check_time(started + 100, started - 2_001).is_err());
    }
}
