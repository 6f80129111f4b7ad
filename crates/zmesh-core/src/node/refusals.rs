//! Decides, per client connection, whether a refusal the node is about to send (an `ERR`
//! for garbage, an unknown method, a message over the limit, or load) goes out, is
//! suppressed, or ends the connection. Pure: no sockets, no clock of its own.
//!
//! Every refusal is a message the node writes to a peer that did something wrong. Without a
//! bound, a peer that sends 2-byte requests for unknown methods makes the node write 60-byte
//! `ERR`s back, as fast as it likes and whether or not it reads them. Each connection gets a
//! token bucket of refusals for garbage; past it they are suppressed (counted). A
//! connection that keeps sending garbage for [`RefusalPolicy::disconnect_after`] messages
//! in a row, with no accepted call between, is disconnected.
//!
//! Refusals for load (`Overloaded`, `PeerOverloaded`, `Unavailable`) are never suppressed:
//! an overloaded node refuses correct clients too, and they need the fast, clear answer to
//! back off or fail over, not a timeout. What they cost a node is bounded elsewhere: they go
//! out only while their peer reads (a full queue drops them), one per request received.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Why a request is refused, for the policy: garbage counts towards a disconnect, load does
/// not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalClass {
    /// The peer sent something no correct client sends: malformed, unknown method, over the
    /// size limit, not sealed with the mesh key, a replay.
    Garbage,
    /// The node or the connection is at a limit; a correct client can meet it.
    Load,
}

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send the `ERR`.
    Send,
    /// Over the connection's rate: drop it (counted).
    Suppress,
    /// The connection has sent garbage for too long: close it.
    Disconnect,
}

/// The limits of [`RefusalGate`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct RefusalPolicy {
    /// Refusals for garbage a connection may receive in a burst.
    pub(crate) burst: u32,
    /// Refusals for garbage per second it may receive after the burst.
    pub(crate) per_second: u32,
    /// Garbage refusals in a row (no accepted call between) after which the connection is
    /// closed; 0 never closes.
    pub(crate) disconnect_after: u32,
    /// Connections tracked at once; the state of the longest-idle one is dropped past it, so
    /// a thousand short connections cannot grow the table.
    pub(crate) max_peers: usize,
}

impl Default for RefusalPolicy {
    fn default() -> Self {
        Self {
            burst: 256,
            per_second: 100,
            disconnect_after: 10_000,
            max_peers: 4096,
        }
    }
}

#[derive(Debug)]
struct PeerState {
    /// Refusals the bucket still allows, in thousandths (integer arithmetic, exact refill).
    tokens_milli: u64,
    refilled: Instant,
    garbage_in_a_row: u32,
}

/// Per-connection refusal accounting; see the module doc.
#[derive(Debug)]
pub(crate) struct RefusalGate {
    policy: RefusalPolicy,
    peers: HashMap<Bytes, PeerState>,
}

impl RefusalGate {
    pub(crate) fn new(policy: RefusalPolicy) -> Self {
        Self {
            policy,
            peers: HashMap::new(),
        }
    }

    /// Decides the fate of one refusal to `peer` at `now`.
    pub(crate) fn refuse(&mut self, peer: &Bytes, class: RefusalClass, now: Instant) -> Verdict {
        if class == RefusalClass::Load {
            return Verdict::Send;
        }
        if self.note_garbage(peer, now) == Verdict::Disconnect {
            return Verdict::Disconnect;
        }
        let state = self.state(peer, now);
        if state.tokens_milli >= 1000 {
            state.tokens_milli -= 1000;
            Verdict::Send
        } else {
            Verdict::Suppress
        }
    }

    /// Counts one bad message from `peer` that gets no reply (nothing to address it to):
    /// [`Verdict::Disconnect`] when its run of garbage is long enough, else
    /// [`Verdict::Send`] (meaning: carry on).
    pub(crate) fn note_garbage(&mut self, peer: &Bytes, now: Instant) -> Verdict {
        let disconnect_after = self.policy.disconnect_after;
        let state = self.state(peer, now);
        state.garbage_in_a_row = state.garbage_in_a_row.saturating_add(1);
        if disconnect_after > 0 && state.garbage_in_a_row >= disconnect_after {
            self.peers.remove(peer);
            return Verdict::Disconnect;
        }
        Verdict::Send
    }

    /// `peer`'s state with its bucket refilled up to `now`.
    fn state(&mut self, peer: &Bytes, now: Instant) -> &mut PeerState {
        let policy = self.policy;
        let full = u64::from(policy.burst) * 1000;
        if !self.peers.contains_key(peer) && self.peers.len() >= policy.max_peers {
            self.evict_idlest();
        }
        let state = self.peers.entry(peer.clone()).or_insert(PeerState {
            tokens_milli: full,
            refilled: now,
            garbage_in_a_row: 0,
        });
        let elapsed = now.saturating_duration_since(state.refilled);
        let earned = elapsed.as_millis() as u64 * u64::from(policy.per_second);
        state.tokens_milli = (state.tokens_milli + earned).min(full);
        state.refilled = now;
        state
    }

    /// A call from `peer` was accepted: its run of garbage ends.
    pub(crate) fn accepted(&mut self, peer: &Bytes) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.garbage_in_a_row = 0;
        }
    }

    /// The connection closed.
    pub(crate) fn forget(&mut self, peer: &Bytes) {
        self.peers.remove(peer);
    }

    /// Drops the state of connections not refused for `idle` (their buckets are full again
    /// by then, so nothing is lost but their garbage count).
    pub(crate) fn sweep(&mut self, now: Instant, idle: Duration) {
        self.peers
            .retain(|_, s| now.saturating_duration_since(s.refilled) < idle);
    }

    /// Whether no connection is tracked.
    pub(crate) fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    fn evict_idlest(&mut self) {
        let idlest = self
            .peers
            .iter()
            .min_by_key(|(_, s)| s.refilled)
            .map(|(peer, _)| peer.clone());
        if let Some(peer) = idlest {
            self.peers.remove(&peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RefusalPolicy {
        RefusalPolicy {
            burst: 3,
            per_second: 10,
            disconnect_after: 5,
            max_peers: 2,
        }
    }

    fn peer(n: u8) -> Bytes {
        Bytes::from(vec![n; 5])
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut gate = RefusalGate::new(RefusalPolicy {
            disconnect_after: 0,
            ..policy()
        });
        let t0 = Instant::now();
        let verdicts: Vec<_> = (0..5)
            .map(|_| gate.refuse(&peer(1), RefusalClass::Garbage, t0))
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Send,
                Verdict::Send,
                Verdict::Send,
                Verdict::Suppress,
                Verdict::Suppress
            ]
        );
        // 10 per second: one more after 100 ms, not after 50.
        assert_eq!(
            gate.refuse(
                &peer(1),
                RefusalClass::Garbage,
                t0 + Duration::from_millis(50)
            ),
            Verdict::Suppress
        );
        assert_eq!(
            gate.refuse(
                &peer(1),
                RefusalClass::Load,
                t0 + Duration::from_millis(150)
            ),
            Verdict::Send
        );
        // Another connection has its own bucket.
        assert_eq!(
            gate.refuse(&peer(2), RefusalClass::Garbage, t0),
            Verdict::Send
        );
    }

    #[test]
    fn garbage_in_a_row_disconnects_and_an_accepted_call_resets_it() {
        let mut gate = RefusalGate::new(policy());
        let t0 = Instant::now();
        for _ in 0..4 {
            assert_ne!(
                gate.refuse(&peer(1), RefusalClass::Garbage, t0),
                Verdict::Disconnect
            );
        }
        gate.accepted(&peer(1));
        for _ in 0..4 {
            assert_ne!(
                gate.refuse(&peer(1), RefusalClass::Garbage, t0),
                Verdict::Disconnect
            );
        }
        assert_eq!(
            gate.refuse(&peer(1), RefusalClass::Garbage, t0),
            Verdict::Disconnect
        );
        // Garbage that gets no reply counts too.
        for _ in 0..4 {
            assert_eq!(gate.note_garbage(&peer(3), t0), Verdict::Send);
        }
        assert_eq!(
            gate.refuse(&peer(3), RefusalClass::Garbage, t0),
            Verdict::Disconnect
        );
        // Load is never suppressed and never disconnects.
        for _ in 0..20 {
            assert_eq!(gate.refuse(&peer(2), RefusalClass::Load, t0), Verdict::Send);
        }
    }

    #[test]
    fn the_table_is_bounded_and_swept() {
        let mut gate = RefusalGate::new(policy());
        let t0 = Instant::now();
        for n in 0..10 {
            gate.refuse(
                &peer(n),
                RefusalClass::Garbage,
                t0 + Duration::from_millis(n.into()),
            );
            assert!(gate.peers.len() <= 2);
        }
        gate.sweep(t0 + Duration::from_secs(60), Duration::from_secs(10));
        assert!(gate.is_empty());
        gate.refuse(&peer(1), RefusalClass::Garbage, t0);
        gate.forget(&peer(1));
        assert!(gate.is_empty());
    }
}
