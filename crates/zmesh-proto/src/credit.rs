//! Provides the stream credit rule (`_zpc_more`), both sides of it: the producer's
//! [`SendCredit`], spent one unit per item, and the consumer's [`Window`], which decides
//! when to grant more and how much. Pure: no waiting here, the driver around `SendCredit`
//! parks the producer until a grant lands.
//!
//! zerorpc's rule: the producer starts with one unit of credit (so the first item needs no
//! grant) and spends one per message; the consumer keeps up to `window` items granted and,
//! each time it wants another item, tops the grant back up to the window once fewer than
//! half of it are left.

use std::sync::atomic::{AtomicU64, Ordering};

/// The producer's side: the items it may still send. Shared between the task that sends and
/// the reader that receives grants, hence atomic.
#[derive(Debug)]
pub struct SendCredit {
    available: AtomicU64,
}

impl Default for SendCredit {
    fn default() -> Self {
        Self::new()
    }
}

impl SendCredit {
    /// The credit a stream starts with: one unit.
    pub fn new() -> Self {
        Self {
            available: AtomicU64::new(1),
        }
    }

    /// Takes one unit if there is one; false if the producer must wait for a grant.
    pub fn try_take(&self) -> bool {
        self.available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
            .is_ok()
    }

    /// Adds the `n` units the consumer granted (saturating: a peer cannot overflow it).
    pub fn grant(&self, n: u64) {
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_add(n))
            });
    }

    /// The units left now.
    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Acquire)
    }
}

/// The consumer's side: how many items the producer may still send without a new grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Items the producer may still send (zerorpc's "reserved").
    reserved: u64,
    window: u64,
}

impl Window {
    /// A stream whose first item came with the producer's initial unit, so nothing is
    /// reserved yet. `window` must be at least 2: half of 1 rounds down to 0, and such a
    /// window would never grant.
    pub fn new(window: u64) -> Self {
        Self {
            reserved: 0,
            window,
        }
    }

    /// The consumer wants another item: the grant to send first, if the reserve fell
    /// below half the window (it is then topped up to the whole window).
    pub fn wants_item(&mut self) -> Option<u64> {
        if self.reserved < self.window / 2 {
            let grant = self.window - self.reserved;
            self.reserved = self.window;
            Some(grant)
        } else {
            None
        }
    }

    /// An item arrived, spending one reserved unit.
    pub fn received(&mut self) {
        self.reserved = self.reserved.saturating_sub(1);
    }

    /// Items the producer may still send without a new grant.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// The most the consumer grants.
    pub fn window(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_credit_starts_at_one_and_is_spent_per_item() {
        let credit = SendCredit::new();
        assert_eq!(credit.available(), 1);
        assert!(credit.try_take());
        assert!(!credit.try_take(), "the second item waits for a grant");
        credit.grant(2);
        assert!(credit.try_take());
        assert!(credit.try_take());
        assert!(!credit.try_take());
    }

    #[test]
    fn grants_saturate() {
        let credit = SendCredit::default();
        credit.grant(u64::MAX);
        credit.grant(u64::MAX);
        assert_eq!(credit.available(), u64::MAX);
        assert!(credit.try_take());
        assert_eq!(credit.available(), u64::MAX - 1);
    }

    #[test]
    fn window_grants_the_whole_window_before_the_second_item() {
        let mut w = Window::new(100);
        assert_eq!(w.wants_item(), Some(100));
        assert_eq!(w.reserved(), 100);
        assert_eq!(w.wants_item(), None, "nothing spent yet");
    }

    #[test]
    fn window_tops_up_once_below_half() {
        let mut w = Window::new(100);
        assert_eq!(w.wants_item(), Some(100));
        for _ in 0..50 {
            w.received();
            assert_eq!(w.wants_item(), None);
        }
        assert_eq!(w.reserved(), 50, "half left is not below half");
        w.received();
        assert_eq!(w.wants_item(), Some(51), "back up to the window");
        assert_eq!(w.reserved(), 100);
    }

    #[test]
    fn items_beyond_the_grant_do_not_underflow() {
        let mut w = Window::new(4);
        w.received();
        assert_eq!(w.reserved(), 0);
        assert_eq!(w.wants_item(), Some(4));
    }

    #[test]
    fn the_smallest_window() {
        let mut w = Window::new(2);
        assert_eq!(w.window(), 2);
        assert_eq!(w.wants_item(), Some(2));
        w.received();
        assert_eq!(w.wants_item(), None);
        w.received();
        assert_eq!(w.wants_item(), Some(2));
    }

    #[test]
    fn both_sides_agree_on_what_may_be_sent() {
        // The producer never runs dry while the consumer keeps asking: what the consumer
        // holds reserved is what the producer may send, plus the initial unit.
        let credit = SendCredit::new();
        let mut w = Window::new(10);
        assert!(credit.try_take(), "the first item");
        for _ in 0..1000 {
            if let Some(n) = w.wants_item() {
                credit.grant(n);
            }
            assert!(credit.try_take());
            w.received();
            assert_eq!(credit.available(), w.reserved());
        }
    }
}
