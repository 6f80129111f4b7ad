//! Provides a client connection's table of open calls, sans IO: each call's first-reply
//! deadline, heartbeat liveness and (with a mesh key) the number its next reply must carry,
//! and the table's sweeps (deadlines passed, heartbeats due, peers lost) at a `now` the
//! caller passes in.
//!
//! The slots a reply is handed through (tokio channels in `connection.rs`) are type
//! parameters: the table only stores them, so it is unit-tested with made-up `Instant`s and
//! plain values.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use zmesh_proto::liveness::{Liveness, Verdict};

use crate::wire::{MessageId, names};

/// What the mesh key said about a received event, for [`Call::check_order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sealing {
    /// This client has no mesh key: nothing to check.
    Unkeyed,
    /// Opened with the key; the reply's number within its call, if it has one.
    Sealed(Option<u32>),
    /// Authentic, but received before: a copy made on the way.
    Duplicate(Option<u32>),
    /// An unsealed refusal (`ERR Unauthenticated` or `ERR Replayed`, how a node answers a
    /// peer it cannot seal for): anyone on the path could have sent it.
    Unsealed,
}

/// Event names a keyed client takes only with the reply number it expects next: the ones
/// that carry a result or continue a call.
fn needs_number(name: &str) -> bool {
    matches!(name, names::OK | names::STREAM | names::STREAM_DONE)
}

/// One open call. `F` is the slot of the first reply, `S` the queue of a stream's items,
/// made when the first reply turns out to be a stream item.
#[derive(Debug)]
pub(super) struct Call<F, S> {
    /// Taken when the first reply (or the call's failure) is handed over.
    pub(super) first: Option<F>,
    /// Set when the first reply is a stream item.
    pub(super) stream: Option<S>,
    /// The number the call's next sealed reply must carry (keyed clients only).
    next_seq: u32,
    /// When the caller stops waiting for the first reply.
    deadline: Option<Instant>,
    /// The server's heartbeats and ours.
    pub(super) liveness: Liveness,
}

impl<F, S> Call<F, S> {
    /// Checks a keyed reply's place in its call: an `OK`, `STREAM` or `STREAM_DONE` must
    /// carry the next number (so a `STREAM_DONE` carries the count of items), and a
    /// numbered `ERR` too. An unnumbered `ERR` (a refusal sent before the call ran, a
    /// device's own error) or an unsealed refusal ends the call as a failure wherever it
    /// comes, so its place cannot turn a loss into a success. Heartbeats are not numbered.
    ///
    /// # Errors
    /// What went wrong on the way, for `CallError::Integrity`.
    pub(super) fn check_order(&mut self, name: &str, sealing: Sealing) -> Result<(), String> {
        let expected = self.next_seq;
        let seq = match sealing {
            Sealing::Unkeyed | Sealing::Unsealed => return Ok(()),
            Sealing::Duplicate(Some(seq)) => {
                return Err(format!("reply {seq} of the call arrived twice"));
            }
            Sealing::Duplicate(None) | Sealing::Sealed(None) if !needs_number(name) => {
                return Ok(());
            }
            Sealing::Duplicate(None) | Sealing::Sealed(None) => {
                return Err(format!(
                    "{name} reply carries no number (expected {expected})"
                ));
            }
            Sealing::Sealed(Some(seq)) => seq,
        };
        if name == names::HEARTBEAT || name == names::MORE {
            return Ok(());
        }
        if seq != expected {
            let what = if seq > expected {
                "replies were lost or reordered on the way"
            } else {
                "a reply was repeated or reordered on the way"
            };
            return Err(format!(
                "{name} reply {seq} arrived where reply {expected} was expected: {what}"
            ));
        }
        self.next_seq = expected.wrapping_add(1);
        Ok(())
    }
}

/// Open calls by id. Only ids this client generated are ever inserted, so a peer cannot
/// choose colliding keys: a fast unkeyed hash is safe here, and SipHash's cost per call
/// (two hashes of a 34-byte id) showed up in the pipelined profile.
type CallMap<F, S> = HashMap<MessageId, Call<F, S>, BuildHasherDefault<OwnIdHasher>>;

/// FxHash-style multiply-rotate hash for [`CallMap`] keys.
#[derive(Default)]
struct OwnIdHasher(u64);

impl Hasher for OwnIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(SEED);
        }
        for &byte in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(SEED);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A connection's open calls.
#[derive(Debug)]
pub(super) struct CallTable<F, S> {
    calls: CallMap<F, S>,
    /// Each call's channel liveness: heartbeat period, lost after two silent periods.
    heartbeat: Duration,
    /// Events that answered no call, or a call no longer open; see [`Dropped`].
    dropped: Dropped,
}

/// Received events the table dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Dropped {
    /// Without a `response_to`: they answer no call.
    pub(super) unsolicited: u64,
    /// For a call no longer open (a late heartbeat, a reply after the caller gave up):
    /// zerorpc drops these too.
    pub(super) closed: u64,
    /// Authentic copies of an unnumbered event (a heartbeat): harmless, and dropped.
    pub(super) duplicates: u64,
}

/// Where a received event goes, as [`CallTable::route`] decided.
#[derive(Debug)]
pub(super) enum Route<'a, F, S> {
    /// Dropped (and counted): see [`Dropped`].
    Dropped,
    /// A keyed reply out of its place in its call: the call is closed; fail it with
    /// `CallError::Integrity` for the reason given.
    OutOfOrder(Call<F, S>, String),
    /// A heartbeat or a credit grant: the call heard from its server, nothing to hand on.
    Control,
    /// The call's last event (`OK`, `ERR`, `STREAM_DONE`): the call is closed; hand the
    /// event through its first-reply slot if still there, else its stream queue.
    End(Call<F, S>),
    /// The call's first reply, which is a stream item: the caller opens the call's stream
    /// queue (`Call::stream`) and hands the queue's receiver over with the item.
    FirstOfStream(F, &'a mut Call<F, S>),
    /// The call's first reply under a name that neither ends nor streams (a broken server):
    /// the call is closed; hand the event over, the caller reports it.
    FirstOther(F),
    /// A later item of the call's stream.
    Item(&'a mut Call<F, S>),
}

/// What [`CallTable::sweep`] found.
#[derive(Debug)]
pub(super) struct Swept<F, S> {
    /// Calls that are owed a heartbeat now.
    pub(super) due: Vec<MessageId>,
    /// Calls whose server went silent, removed from the table.
    pub(super) lost: Vec<Call<F, S>>,
}

impl<F, S> CallTable<F, S> {
    /// An empty table whose calls heartbeat every `heartbeat`.
    pub(super) fn new(heartbeat: Duration) -> Self {
        Self {
            calls: CallMap::default(),
            heartbeat,
            dropped: Dropped::default(),
        }
    }

    /// What the table has dropped so far.
    pub(super) fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Matches an event received at `now` to its call by `response_to` and decides where it
    /// goes. With a mesh key (`sealing` not `Unkeyed`), a reply out of its place closes its
    /// call ([`Call::check_order`]), and a copy is dropped unless it is one.
    pub(super) fn route(
        &mut self,
        response_to: Option<&MessageId>,
        name: &str,
        sealing: Sealing,
        now: Instant,
    ) -> Route<'_, F, S> {
        let Some(channel) = response_to else {
            self.dropped.unsolicited += 1;
            return Route::Dropped;
        };
        if sealing != Sealing::Unkeyed {
            let Some(call) = self.calls.get_mut(channel) else {
                self.dropped.closed += 1;
                return Route::Dropped;
            };
            if let Err(why) = call.check_order(name, sealing) {
                return match self.calls.remove(channel) {
                    Some(call) => Route::OutOfOrder(call, why),
                    None => Route::Dropped,
                };
            }
            // A copy of a heartbeat changes nothing.
            if matches!(sealing, Sealing::Duplicate(_)) {
                self.dropped.duplicates += 1;
                return Route::Dropped;
            }
        }
        if matches!(name, names::OK | names::ERR | names::STREAM_DONE) {
            // The common case, a call's one reply: a single lookup that also closes the call.
            return match self.calls.remove(channel) {
                Some(call) => Route::End(call),
                None => {
                    self.dropped.closed += 1;
                    Route::Dropped
                }
            };
        }
        let (first, streaming) = {
            let Some(call) = self.calls.get_mut(channel) else {
                self.dropped.closed += 1;
                return Route::Dropped;
            };
            call.liveness.heard(now);
            if name == names::HEARTBEAT || name == names::MORE {
                return Route::Control;
            }
            (call.first.take(), call.stream.is_some())
        };
        match first {
            Some(first) if name != names::STREAM => {
                self.calls.remove(channel);
                Route::FirstOther(first)
            }
            None if !streaming => Route::Dropped,
            // Looked up again: a reference kept from the lookup above could not be returned
            // on this path while the other paths change the map.
            first => match (self.calls.get_mut(channel), first) {
                (Some(call), Some(first)) => Route::FirstOfStream(first, call),
                (Some(call), None) => Route::Item(call),
                (None, _) => Route::Dropped,
            },
        }
    }

    /// Opens a call at `now`, waiting for its first reply in `first` until `deadline`.
    pub(super) fn insert(
        &mut self,
        id: MessageId,
        first: F,
        deadline: Option<Instant>,
        now: Instant,
    ) {
        self.calls.insert(
            id,
            Call {
                first: Some(first),
                stream: None,
                next_seq: 0,
                deadline,
                liveness: Liveness::channel(self.heartbeat, now),
            },
        );
    }

    /// The open call `id`, if any.
    #[cfg(test)]
    pub(super) fn get_mut(&mut self, id: &MessageId) -> Option<&mut Call<F, S>> {
        self.calls.get_mut(id)
    }

    /// Closes the call `id`, returning it if it was open.
    pub(super) fn remove(&mut self, id: &MessageId) -> Option<Call<F, S>> {
        self.calls.remove(id)
    }

    /// Open calls.
    pub(super) fn len(&self) -> usize {
        self.calls.len()
    }

    /// True when no call is open.
    pub(super) fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Closes every call (the connection is gone).
    pub(super) fn drain(&mut self) -> Vec<Call<F, S>> {
        self.calls.drain().map(|(_, call)| call).collect()
    }

    /// Takes the first-reply slots of the calls whose deadline is at or before `now` while
    /// they still wait for their first reply, closing those calls; and returns the earliest
    /// deadline still to come, for the one timer that waits for it.
    pub(super) fn expire(&mut self, now: Instant) -> (Vec<(MessageId, F)>, Option<Instant>) {
        let mut expired = Vec::new();
        let mut earliest: Option<Instant> = None;
        self.calls
            .retain(|id, call| match (call.deadline, call.first.take()) {
                (Some(deadline), Some(first)) if deadline <= now => {
                    expired.push((id.clone(), first));
                    false
                }
                (deadline, first) => {
                    if let (Some(deadline), Some(_)) = (deadline, &first) {
                        earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                    }
                    call.first = first;
                    true
                }
            });
        (expired, earliest)
    }

    /// The heartbeats due and the calls whose server went silent at `now` (removed).
    pub(super) fn sweep(&mut self, now: Instant) -> Swept<F, S> {
        let mut due = Vec::new();
        let mut lost_ids = Vec::new();
        for (id, call) in &mut self.calls {
            match call.liveness.poll(now) {
                Verdict::Lost => lost_ids.push(id.clone()),
                Verdict::Heartbeat => due.push(id.clone()),
                Verdict::Quiet => {}
            }
        }
        let lost = lost_ids
            .iter()
            .filter_map(|id| self.calls.remove(id))
            .collect();
        Swept { due, lost }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(5);

    fn table() -> CallTable<&'static str, ()> {
        CallTable::new(HB)
    }

    #[test]
    fn deadlines_expire_only_calls_still_waiting_for_their_first_reply() {
        let t0 = Instant::now();
        let mut calls = table();
        let (a, b, c) = (
            MessageId::generate(),
            MessageId::generate(),
            MessageId::generate(),
        );
        calls.insert(a.clone(), "a", Some(t0 + Duration::from_millis(10)), t0);
        calls.insert(b.clone(), "b", Some(t0 + Duration::from_millis(30)), t0);
        calls.insert(c.clone(), "c", None, t0);
        assert_eq!(calls.expire(t0).1, Some(t0 + Duration::from_millis(10)));
        let (expired, next) = calls.expire(t0 + Duration::from_millis(10));
        assert_eq!(expired, vec![(a.clone(), "a")]);
        assert_eq!(next, Some(t0 + Duration::from_millis(30)));
        // b's first reply arrives (its slot is taken): its deadline no longer applies.
        calls.get_mut(&b).expect("open").first.take();
        let (expired, next) = calls.expire(t0 + Duration::from_secs(1));
        assert!(expired.is_empty());
        assert_eq!(next, None);
        assert_eq!(calls.len(), 2);
        assert!(calls.remove(&a).is_none());
    }

    #[test]
    fn silent_calls_are_owed_heartbeats_then_lost() {
        let t0 = Instant::now();
        let mut calls = table();
        let (quiet, heard) = (MessageId::generate(), MessageId::generate());
        calls.insert(quiet.clone(), "q", None, t0);
        calls.insert(heard.clone(), "h", None, t0);
        let mut swept = calls.sweep(t0 + HB);
        swept.due.sort_by(|x, y| x.encoded().cmp(y.encoded()));
        let mut both = vec![quiet.clone(), heard.clone()];
        both.sort_by(|x, y| x.encoded().cmp(y.encoded()));
        assert_eq!(swept.due, both);
        assert!(swept.lost.is_empty());
        // Only `heard` hears from its server; `quiet` is then silent past the channel's limit
        // (its grace included: zerorpc's timing, `Liveness::channel`).
        calls
            .get_mut(&heard)
            .expect("open")
            .liveness
            .heard(t0 + HB * 2);
        let late = t0 + HB * 3 + Duration::from_millis(1);
        assert!(Liveness::channel(HB, t0).is_lost(late));
        let swept = calls.sweep(late);
        assert_eq!(swept.lost.len(), 1);
        assert_eq!(swept.lost[0].first, Some("q"));
        assert!(calls.get_mut(&quiet).is_none());
        assert!(calls.get_mut(&heard).is_some());
        assert_eq!(calls.drain().len(), 1);
        assert!(calls.is_empty());
    }

    #[test]
    fn events_are_matched_to_their_call_by_id_and_strays_counted() {
        let t0 = Instant::now();
        let mut calls = table();
        let (plain, stream) = (MessageId::generate(), MessageId::generate());
        calls.insert(plain.clone(), "plain", None, t0);
        calls.insert(stream.clone(), "stream", None, t0);
        let unkeyed = Sealing::Unkeyed;
        assert!(matches!(
            calls.route(None, names::OK, unkeyed, t0),
            Route::Dropped
        ));
        let other = MessageId::generate();
        assert!(matches!(
            calls.route(Some(&other), names::OK, unkeyed, t0),
            Route::Dropped
        ));
        assert!(matches!(
            calls.route(Some(&plain), names::HEARTBEAT, unkeyed, t0),
            Route::Control
        ));
        match calls.route(Some(&stream), names::STREAM, unkeyed, t0) {
            Route::FirstOfStream(first, call) => {
                assert_eq!(first, "stream");
                call.stream = Some(());
            }
            other => panic!("expected the first stream item, got {other:?}"),
        }
        assert!(matches!(
            calls.route(Some(&stream), names::STREAM, unkeyed, t0),
            Route::Item(_)
        ));
        assert!(matches!(
            calls.route(Some(&stream), names::STREAM_DONE, unkeyed, t0),
            Route::End(Call {
                first: None,
                stream: Some(()),
                ..
            })
        ));
        assert!(matches!(
            calls.route(Some(&plain), names::OK, unkeyed, t0),
            Route::End(Call {
                first: Some("plain"),
                ..
            })
        ));
        // Both calls are closed: what comes after is counted as for a closed call.
        assert!(matches!(
            calls.route(Some(&plain), names::OK, unkeyed, t0),
            Route::Dropped
        ));
        assert!(calls.is_empty());
        assert_eq!(
            calls.dropped(),
            Dropped {
                unsolicited: 1,
                closed: 2,
                duplicates: 0
            }
        );
        // A first reply under another name closes the call; the caller reports it.
        calls.insert(plain.clone(), "plain", None, t0);
        assert!(matches!(
            calls.route(Some(&plain), "BOGUS", unkeyed, t0),
            Route::FirstOther("plain")
        ));
        assert!(calls.is_empty());
    }

    #[test]
    fn a_keyed_reply_out_of_place_closes_its_call_and_copies_are_dropped() {
        let t0 = Instant::now();
        let mut calls = table();
        let id = MessageId::generate();
        calls.insert(id.clone(), "x", None, t0);
        assert!(matches!(
            calls.route(Some(&id), names::HEARTBEAT, Sealing::Duplicate(None), t0),
            Route::Dropped
        ));
        assert_eq!(calls.dropped().duplicates, 1);
        assert!(matches!(
            calls.route(Some(&id), names::HEARTBEAT, Sealing::Sealed(None), t0),
            Route::Control
        ));
        match calls.route(Some(&id), names::OK, Sealing::Sealed(Some(1)), t0) {
            Route::OutOfOrder(call, why) => {
                assert_eq!(call.first, Some("x"));
                assert!(why.contains("lost or reordered"), "{why}");
            }
            other => panic!("expected out of order, got {other:?}"),
        }
        assert!(calls.is_empty());
    }

    #[test]
    fn keyed_replies_must_come_in_order_and_once() {
        let mut calls = table();
        let id = MessageId::generate();
        calls.insert(id.clone(), "x", None, Instant::now());
        let call = calls.get_mut(&id).expect("open");
        assert_eq!(
            call.check_order(names::STREAM, Sealing::Sealed(Some(0))),
            Ok(())
        );
        // Heartbeats are not numbered, and do not move the count.
        assert_eq!(
            call.check_order(names::HEARTBEAT, Sealing::Sealed(None)),
            Ok(())
        );
        assert!(
            call.check_order(names::STREAM, Sealing::Sealed(Some(2)))
                .expect_err("a gap")
                .contains("lost or reordered")
        );
        assert!(
            call.check_order(names::STREAM, Sealing::Sealed(Some(0)))
                .expect_err("a repeat")
                .contains("repeated or reordered")
        );
        assert!(
            call.check_order(names::OK, Sealing::Duplicate(Some(1)))
                .expect_err("a copy")
                .contains("arrived twice")
        );
        assert!(call.check_order(names::OK, Sealing::Sealed(None)).is_err());
        assert_eq!(call.check_order(names::ERR, Sealing::Sealed(None)), Ok(()));
        assert_eq!(call.check_order(names::OK, Sealing::Unsealed), Ok(()));
        assert_eq!(
            call.check_order(names::STREAM_DONE, Sealing::Sealed(Some(1))),
            Ok(())
        );
    }
}
