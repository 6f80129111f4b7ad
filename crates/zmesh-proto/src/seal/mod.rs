//! Provides the mesh key's pure rules: the sealed envelope ([`envelope`]), the replay guard
//! ([`replay`]), and the key ring that chooses the key to seal with and authenticates what
//! arrives ([`KeyRing`]), current and previous key, rotation by a wall-clock time.
//!
//! Pure: no clock, no randomness. The time (`now`) and the nonces are the caller's; zmesh-core's
//! `trust::Trust` supplies them and holds the replay guard per receiving socket.

pub mod envelope;
pub mod replay;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::ErrorKind;
pub use envelope::{Kind, OpenError, SealKey, SealParams};
pub use replay::{ReplayError, ReplayGuard};

/// Which of a key ring's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// The key everything is sent with.
    Current,
    /// The previous key, accepted during its grace period.
    Previous,
}

/// The keys a peer holds: the current one, which seals everything it sends, and optionally
/// the previous one, still accepted (and answered in) until a wall-clock time.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: SealKey,
    /// The previous key and the wall-clock time its acceptance ends.
    previous: Option<(SealKey, SystemTime)>,
}

/// Why a received frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Not sealed, malformed, wrong key, retired key or a bad tag.
    #[error("{0}")]
    Unauthenticated(String),
    /// Stale, or already received.
    #[error("{0}")]
    Replayed(ReplayError),
}

impl Rejection {
    /// The error sent back where a reply is addressable.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Self::Replayed(_) => ErrorKind::Replayed,
        }
    }

    /// The zerorpc error name sent back where a reply is addressable.
    pub fn err_name(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// A frame whose kind, key and tag checked out; not yet checked for freshness.
#[derive(Debug, Clone)]
pub struct Authentic {
    /// The zerorpc event inside.
    pub event: Bytes,
    /// A reply's number within its call (see [`envelope::Parsed::reply_seq`]).
    pub seq: Option<u32>,
    /// The sender's clock when it sealed the frame, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The nonce, for the replay guard.
    pub nonce: [u8; 12],
    /// Which key opened it.
    pub slot: KeySlot,
}

impl KeyRing {
    /// A ring of one key derived from `secret` (see [`SealKey::derive`]).
    pub fn derive(secret: &[u8]) -> Self {
        Self {
            current: SealKey::derive(secret),
            previous: None,
        }
    }

    /// Also accepts frames sealed with `previous`'s current key until `until`.
    #[must_use]
    pub fn with_previous_until(mut self, previous: &KeyRing, until: SystemTime) -> Self {
        self.previous = Some((previous.current.clone(), until));
        self
    }

    /// The id of the current key.
    pub fn key_id(&self) -> u32 {
        self.current.id()
    }

    /// The previous key's id, if there is one.
    pub fn previous_id(&self) -> Option<u32> {
        self.previous.as_ref().map(|(key, _)| key.id())
    }

    /// When the previous key stops being accepted, if there is one.
    pub fn previous_until(&self) -> Option<SystemTime> {
        self.previous.as_ref().map(|(_, until)| *until)
    }

    /// The key to seal with at `now`: the previous one when asked for and its grace lasts
    /// (a node answers a peer in the key it used, so peers not yet moved to the new key
    /// still read their replies), the current one otherwise.
    pub fn sealing_key(&self, slot: KeySlot, now: SystemTime) -> &SealKey {
        match (&self.previous, slot) {
            (Some((previous, until)), KeySlot::Previous) if now <= *until => previous,
            _ => &self.current,
        }
    }

    /// Checks a frame's kind, key (the previous one only within its grace at `now`) and tag,
    /// and returns what is inside. Freshness (window, skew, nonce) is the replay guard's.
    ///
    /// # Errors
    /// [`Rejection::Unauthenticated`].
    pub fn authenticate(
        &self,
        frame: &Bytes,
        kind: Kind,
        now: SystemTime,
    ) -> Result<Authentic, Rejection> {
        let unauth = |e: &dyn std::fmt::Display| Rejection::Unauthenticated(e.to_string());
        let parsed = envelope::parse(frame).map_err(|e| unauth(&e))?;
        if parsed.kind != kind {
            return Err(unauth(&OpenError::WrongKind {
                found: parsed.kind,
                expected: kind,
            }));
        }
        let (key, slot) = if parsed.key_id == self.current.id() {
            (&self.current, KeySlot::Current)
        } else {
            match &self.previous {
                Some((previous, until)) if parsed.key_id == previous.id() => {
                    if now > *until {
                        return Err(Rejection::Unauthenticated(format!(
                            "sealed with the previous mesh key (id {:08x}), whose grace period is over",
                            parsed.key_id
                        )));
                    }
                    (previous, KeySlot::Previous)
                }
                _ => return Err(unauth(&OpenError::UnknownKey(parsed.key_id))),
            }
        };
        let event = envelope::open(key, frame, &parsed).map_err(|e| unauth(&e))?;
        Ok(Authentic {
            event,
            seq: parsed.reply_seq(),
            timestamp_ms: parsed.timestamp_ms,
            nonce: parsed.nonce,
            slot,
        })
    }
}

/// The clear id a receiver may use to address an error to a frame it could not open.
pub fn clear_id(frame: &[u8]) -> Option<&[u8]> {
    envelope::parse(frame)
        .ok()
        .map(|p| p.clear_id)
        .filter(|id| !id.is_empty())
}

/// A duration in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A wall-clock time in milliseconds since the Unix epoch (0 before it), as envelopes carry.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(key: &SealKey, kind: Kind, clear_id: &[u8]) -> Bytes {
        let params = SealParams {
            kind,
            encrypt: true,
            timestamp_ms: 1_700_000_000_000,
            nonce: [3; 12],
            clear_id,
        };
        envelope::seal(key, &params, b"event")
    }

    #[test]
    fn the_previous_key_opens_and_seals_only_within_its_grace() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let old = KeyRing::derive(b"alphaalphaalphaalpha");
        let ring = KeyRing::derive(b"bravobravobravobravo").with_previous_until(&old, at(100));
        let frame = sealed(old.sealing_key(KeySlot::Current, at(0)), Kind::Request, b"");
        let opened = ring
            .authenticate(&frame, Kind::Request, at(100))
            .expect("within the grace");
        assert_eq!(
            (opened.slot, &opened.event[..]),
            (KeySlot::Previous, &b"event"[..])
        );
        assert!(matches!(
            ring.authenticate(&frame, Kind::Request, at(101)),
            Err(Rejection::Unauthenticated(m)) if m.contains("grace")
        ));
        assert_eq!(
            ring.sealing_key(KeySlot::Previous, at(100)).id(),
            old.key_id()
        );
        assert_eq!(
            ring.sealing_key(KeySlot::Previous, at(101)).id(),
            ring.key_id()
        );
        assert_eq!(ring.previous_id(), Some(old.key_id()));
        assert_eq!(ring.previous_until(), Some(at(100)));
    }

    #[test]
    fn wrong_kind_unknown_key_and_plain_frames_are_unauthenticated() {
        let ring = KeyRing::derive(b"alphaalphaalphaalpha");
        let other = KeyRing::derive(b"bravobravobravobravo");
        let now = UNIX_EPOCH;
        let frame = sealed(ring.sealing_key(KeySlot::Current, now), Kind::Reply, b"");
        let refused = |r: Result<Authentic, Rejection>| matches!(r, Err(ref e @ Rejection::Unauthenticated(_)) if e.kind() == ErrorKind::Unauthenticated);
        assert!(refused(ring.authenticate(&frame, Kind::Request, now)));
        assert!(refused(other.authenticate(&frame, Kind::Reply, now)));
        assert!(refused(ring.authenticate(
            &Bytes::from_static(b"\x93\x80\xa1x\x90"),
            Kind::Reply,
            now
        )));
        assert!(ring.authenticate(&frame, Kind::Reply, now).is_ok());
    }

    #[test]
    fn the_clear_id_is_readable_without_the_key() {
        let ring = KeyRing::derive(b"alphaalphaalphaalpha");
        let frame = sealed(
            ring.sealing_key(KeySlot::Current, UNIX_EPOCH),
            Kind::Request,
            b"\xc4\x01z",
        );
        assert_eq!(clear_id(&frame), Some(&b"\xc4\x01z"[..]));
        assert_eq!(clear_id(b"\x93"), None);
    }

    #[test]
    fn times_are_whole_saturating_milliseconds() {
        assert_eq!(millis(Duration::from_micros(2_999)), 2);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
