//! Provides the optional mesh key: a pre-shared secret that seals every zmesh message
//! (authenticated with AES-256-GCM, optionally encrypted), with replay protection and
//! key rotation. The rules are zmesh-proto's `seal` module (the envelope codec, the bounded
//! nonce cache, the key ring); this module gives them a clock and nonces for the node, client
//! and events sockets. The primitives (derive a key, seal, open) stay in zmesh-proto: here
//! everything seals and opens through a [`Trust`], so each rule has one implementation.
//!
//! Give the same [`MeshKey`] to [`NodeBuilder::mesh_key`](crate::NodeBuilder::mesh_key),
//! [`ClientConfig::mesh_key`](crate::ClientConfig::mesh_key) and the events builders.
//! [`Trust`] is public so that the proxy device (its own crate) opens and seals with the
//! same code and replay guard as a node.

pub mod envelope {
    //! Provides the sealed envelope's format facts a receiver needs before it holds a key
    //! (is a frame sealed, how small can one be); the codec itself is zmesh-proto's
    //! `seal::envelope`, and sealing and opening go through [`Trust`](super::Trust).
    pub use zmesh_proto::seal::envelope::{
        Kind, MAGIC, MAX_CLEAR_ID, MIN_SEALED, OpenError, REPLY_SEQ_LEN, is_sealed,
    };
}

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use zmesh_proto::seal::{Kind, OpenError, Rejection, ReplayError};

pub(crate) use zmesh_proto::seal::KeySlot;
use zmesh_proto::seal::{KeyRing, ReplayGuard, SealParams, clear_id, millis, unix_ms};

/// Shortest accepted secret: 16 bytes (128 bits) of key material.
pub const MIN_SECRET_LEN: usize = 16;
/// Default of [`MeshKey::replay_window`].
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(30);
/// Default of [`MeshKey::replay_cache`].
pub const DEFAULT_REPLAY_CACHE: usize = 200_000;
/// Default of [`MeshKey::clock_skew`].
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(2);
/// The environment variable [`MeshKey::from_default_env`] reads.
pub const MESH_KEY_ENV: &str = "ZMESH_MESH_KEY";

/// Why a mesh key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The secret is too short to be a key.
    #[error("a mesh key needs at least {MIN_SECRET_LEN} bytes of secret, got {0}")]
    TooShort(usize),
    /// The key file could not be read.
    #[error("cannot read mesh key file {path}: {source}")]
    File {
        /// The file as given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The environment variable is unset or not Unicode.
    #[error("environment variable {0} is not set")]
    Env(String),
}

/// A pre-shared mesh key with its options: whether to encrypt, the replay window, clock
/// skew and cache size, and an optional previous key still accepted until a wall-clock
/// time (rotation).
///
/// Cheap to clone. Its `Debug` form shows only the key ids.
#[derive(Clone)]
pub struct MeshKey {
    /// The current key, and the previous one with the wall-clock time its acceptance ends.
    ring: KeyRing,
    encrypt: bool,
    replay_window: Duration,
    clock_skew: Duration,
    replay_cache: usize,
}

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshKey")
            .field("id", &format_args!("{:08x}", self.ring.key_id()))
            .field(
                "previous",
                &self.ring.previous_id().map(|id| format!("{id:08x}")),
            )
            .field("previous_until", &self.ring.previous_until())
            .field("encrypt", &self.encrypt)
            .field("replay_window", &self.replay_window)
            .field("clock_skew", &self.clock_skew)
            .finish_non_exhaustive()
    }
}

impl MeshKey {
    /// A key from secret bytes (at least [`MIN_SECRET_LEN`]); encryption on by default.
    ///
    /// # Errors
    /// [`KeyError::TooShort`].
    pub fn from_secret(secret: impl AsRef<[u8]>) -> Result<Self, KeyError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(Self {
            ring: KeyRing::derive(secret),
            encrypt: true,
            replay_window: DEFAULT_REPLAY_WINDOW,
            clock_skew: DEFAULT_CLOCK_SKEW,
            replay_cache: DEFAULT_REPLAY_CACHE,
        })
    }

    /// A key from a file's contents, without surrounding whitespace (so `echo secret >
    /// file` works).
    ///
    /// # Errors
    /// [`KeyError::File`] or [`KeyError::TooShort`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| KeyError::File {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_secret(bytes.trim_ascii())
    }

    /// A key from an environment variable's value, without surrounding whitespace.
    ///
    /// # Errors
    /// [`KeyError::Env`] or [`KeyError::TooShort`].
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let value = std::env::var(var).map_err(|_| KeyError::Env(var.to_owned()))?;
        Self::from_secret(value.trim())
    }

    /// A key from [`MESH_KEY_ENV`] (`ZMESH_MESH_KEY`).
    ///
    /// # Errors
    /// As [`from_env`](Self::from_env).
    pub fn from_default_env() -> Result<Self, KeyError> {
        Self::from_env(MESH_KEY_ENV)
    }

    /// Also accepts messages sealed with `previous` (its current key) for `grace` from now,
    /// so peers can be moved to the new key one by one. Everything sent uses this key.
    ///
    /// The grace is counted from this call: a service that builds its key at every start
    /// would give the old key a fresh grace at every restart. Such services should fix the
    /// end once, with [`with_previous_until`](Self::with_previous_until).
    #[must_use]
    pub fn with_previous(self, previous: &MeshKey, grace: Duration) -> Self {
        // A grace too long for the clock to add (`Duration::MAX`) ends in the year 2106:
        // as good as never.
        let never = UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX));
        let until = SystemTime::now().checked_add(grace).unwrap_or(never);
        self.with_previous_until(previous, until)
    }

    /// Also accepts messages sealed with `previous` (its current key) until the wall-clock
    /// time `until`, whenever this process started: a restart does not extend the grace.
    /// Everything sent uses this key.
    #[must_use]
    pub fn with_previous_until(mut self, previous: &MeshKey, until: SystemTime) -> Self {
        self.ring = self.ring.with_previous_until(&previous.ring, until);
        self
    }

    /// When the previous key stops being accepted, if there is one.
    pub fn previous_until(&self) -> Option<SystemTime> {
        self.ring.previous_until()
    }

    /// Encrypts payloads (default) or only authenticates them. Receivers open both.
    #[must_use]
    pub fn encrypt(mut self, encrypt: bool) -> Self {
        self.encrypt = encrypt;
        self
    }

    /// Largest accepted distance between a sender's clock and ours (default 30 s); keep
    /// the mesh's clocks well within it.
    #[must_use]
    pub fn replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// Largest accepted distance of a sender's clock *ahead* of ours, and how long before
    /// this receiver's start a message may have been sealed (default 2 s). Small on purpose:
    /// a message stamped further ahead is refused (it would otherwise be remembered, and
    /// accepted, longer than the window), and a message sealed before the receiver started
    /// is refused, because the fresh nonce cache cannot know whether it was received before
    /// a restart. Keep the mesh's clocks (NTP) well within it.
    #[must_use]
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew;
        self
    }

    /// Nonces remembered per receiving socket to refuse replays (default 200,000; about
    /// 60 bytes each).
    #[must_use]
    pub fn replay_cache(mut self, entries: usize) -> Self {
        self.replay_cache = entries;
        self
    }

    /// The id of the key messages are sealed with (derived, safe to log).
    pub fn key_id(&self) -> u32 {
        self.ring.key_id()
    }

    /// Whether payloads are encrypted.
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// `event` (an encoded zerorpc event) sealed as one published event, as a keyed
    /// [`Publisher`](crate::Publisher) seals it: for a process that publishes once (the
    /// `zmesh publish` command). Each call draws fresh nonces; a sender of many events
    /// keeps one [`Trust`] and calls [`Trust::seal_event`].
    pub fn seal_event(&self, event: &[u8]) -> Bytes {
        Trust::new(self.clone()).seal_event(event)
    }
}

/// A received frame that opened: the event inside, with what the envelope said about it.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The zerorpc event.
    pub event: Bytes,
    /// A reply's number within its call (0 for the first `OK`, `ERR` or `STREAM` item, each
    /// counted, up to the `STREAM_DONE`); `None` for an unnumbered reply (a heartbeat).
    pub seq: Option<u32>,
    /// The sender's clock when it sealed the frame, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    slot: KeySlot,
}

/// Why a received frame was refused, with the frame's content when it was authentic but not
/// fresh (a duplicate, or stale): the receiver may still attribute it to the call it belongs
/// to, which it could not do for a forgery.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why.
    pub rejection: Rejection,
    /// The content, when the tag verified and only a freshness check failed.
    pub authentic: Option<Opened>,
}

/// A mesh key in use by one receiving socket: the key ring plus that socket's replay guard.
///
/// Seal what you send with [`seal`](Self::seal) and open what you receive with
/// [`open`](Self::open); each `Trust` remembers the nonces it opened, so a frame is
/// accepted at most once per `Trust`, and refuses frames sealed before it was made (less
/// the key's [`clock_skew`](MeshKey::clock_skew)), so a process that restarts does not
/// accept again what it accepted before.
#[derive(Debug)]
pub struct Trust {
    key: MeshKey,
    guard: Mutex<ReplayGuard>,
    nonces: NonceSource,
}

/// Nonces without a system call per message: a random 32-bit prefix and a 64-bit counter
/// that starts at a random value, both drawn from the OS once. Two senders with the same key
/// repeat a nonce only if their prefixes are equal and their counter ranges overlap, about
/// `2^-32 * messages / 2^64`: never, in practice. (A repeated nonce under one key would break
/// AES-GCM's confidentiality and let its tags be forged, hence not a plain random or
/// time-based value; a fixed field and a counter is SP 800-38D's own construction.)
#[derive(Debug)]
struct NonceSource {
    prefix: [u8; 4],
    counter: std::sync::atomic::AtomicU64,
}

impl NonceSource {
    fn new() -> Self {
        let mut seed = [0u8; 12];
        // Without the OS's randomness no nonce is safe to use: failing loudly at start is
        // the only honest answer (getrandom fails only on a broken or sandboxed kernel).
        getrandom::fill(&mut seed).expect("the OS random source");
        let mut prefix = [0u8; 4];
        prefix.copy_from_slice(&seed[..4]);
        let mut start = [0u8; 8];
        start.copy_from_slice(&seed[4..]);
        Self {
            prefix,
            counter: std::sync::atomic::AtomicU64::new(u64::from_be_bytes(start)),
        }
    }

    fn next(&self) -> [u8; 12] {
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.prefix);
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        nonce
    }
}

impl Trust {
    /// Starts using `key` with an empty replay guard.
    pub fn new(key: MeshKey) -> Self {
        let window = millis(key.replay_window);
        let skew = millis(key.clock_skew);
        let guard = ReplayGuard::new(window, skew, key.replay_cache).started_at(now_ms());
        let guard = Mutex::new(guard);
        Self {
            key,
            guard,
            nonces: NonceSource::new(),
        }
    }

    /// Seals an event frame, carrying `clear_id` (a request's encoded message id) outside.
    pub fn seal(&self, kind: Kind, event: &[u8], clear_id: &[u8]) -> Bytes {
        self.seal_with(KeySlot::Current, kind, event, clear_id)
    }

    /// Seals one published event (the event frame; the topic frame stays clear, for the
    /// subscribers' filters).
    pub fn seal_event(&self, event: &[u8]) -> Bytes {
        self.seal(Kind::Event, event, &[])
    }

    /// Seals a reply, numbered within its call when `seq` is given (every `OK`, `ERR`,
    /// `STREAM` and `STREAM_DONE` of a call, from 0) and unnumbered otherwise (heartbeats;
    /// a refusal sent before the call ran). A keyed client takes an `OK`, `STREAM` or
    /// `STREAM_DONE` only with the number it expects next.
    pub fn seal_reply(&self, event: &[u8], seq: Option<u32>) -> Bytes {
        self.seal_reply_with(KeySlot::Current, event, seq)
    }

    pub(crate) fn seal_reply_with(&self, slot: KeySlot, event: &[u8], seq: Option<u32>) -> Bytes {
        match seq {
            Some(seq) => {
                let field = zmesh_proto::seal::envelope::reply_seq_field(seq);
                self.seal_with(slot, Kind::Reply, event, &field)
            }
            None => self.seal_with(slot, Kind::Reply, event, &[]),
        }
    }

    /// True when a previous key is configured (whether or not its grace is over).
    pub(crate) fn has_previous(&self) -> bool {
        self.key.ring.previous_id().is_some()
    }

    /// Seals with the current key, or with the previous one while its grace lasts (a node
    /// answers a peer in the key it used, so peers not yet moved to the new key still read
    /// their replies).
    pub(crate) fn seal_with(
        &self,
        slot: KeySlot,
        kind: Kind,
        event: &[u8],
        clear_id: &[u8],
    ) -> Bytes {
        let now = SystemTime::now();
        let params = SealParams {
            kind,
            encrypt: self.key.encrypt,
            timestamp_ms: unix_ms(now),
            nonce: self.nonces.next(),
            clear_id,
        };
        zmesh_proto::seal::envelope::seal(self.key.ring.sealing_key(slot, now), &params, event)
    }

    /// Opens a received frame expected to be of `kind`: checks the key, the tag, the time
    /// window and the nonce cache, in that order (the cache only learns authentic nonces,
    /// so forged frames cannot fill it).
    ///
    /// # Errors
    /// [`Rejection::Unauthenticated`] or [`Rejection::Replayed`].
    pub fn open(&self, frame: &Bytes, kind: Kind) -> Result<Bytes, Rejection> {
        self.open_slot(frame, kind).map(|(event, _)| event)
    }

    /// As [`open`](Self::open), also telling which key opened the frame.
    pub(crate) fn open_slot(
        &self,
        frame: &Bytes,
        kind: Kind,
    ) -> Result<(Bytes, KeySlot), Rejection> {
        self.open_detailed(frame, kind)
            .map(|opened| (opened.event, opened.slot))
            .map_err(|refusal| refusal.rejection)
    }

    /// As [`open`](Self::open), with the envelope's reply number and timestamp, and on a
    /// refusal the content of an authentic frame that was only not fresh (see [`Refusal`]).
    ///
    /// # Errors
    /// A [`Refusal`].
    pub fn open_detailed(&self, frame: &Bytes, kind: Kind) -> Result<Opened, Refusal> {
        // One clock read serves the key ring's grace check and the replay window: it is a
        // visible share of a sealed call's cost, and one instant keeps both checks agreeing.
        let now = SystemTime::now();
        let (opened, nonce) = self
            .authenticate(frame, kind, now)
            .map_err(|rejection| Refusal {
                rejection,
                authentic: None,
            })?;
        let fresh = self
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check(unix_ms(now), opened.timestamp_ms, nonce);
        match fresh {
            Ok(()) => Ok(opened),
            Err(e) => Err(Refusal {
                rejection: Rejection::Replayed(e),
                authentic: Some(opened),
            }),
        }
    }

    /// Opens a frame checking the key, the tag and the time (window, clock skew, start),
    /// but not the nonce cache: for announcements (beacons) that may legitimately arrive
    /// twice (one datagram heard on two interfaces). Their receiver refuses repeats and
    /// stale ones itself, by the sender's sequence number and the returned timestamp
    /// (see `mesh::discovery`).
    ///
    /// # Errors
    /// [`Rejection::Unauthenticated`], or [`Rejection::Replayed`] when the time is refused.
    pub fn open_windowed(&self, frame: &Bytes, kind: Kind) -> Result<Opened, Rejection> {
        let now = SystemTime::now();
        let (opened, _) = self.authenticate(frame, kind, now)?;
        self.guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .check_time(unix_ms(now), opened.timestamp_ms)
            .map_err(Rejection::Replayed)?;
        Ok(opened)
    }

    /// Checks the kind, key and tag; returns what opened, and the nonce for the replay
    /// checks, as of `now`.
    fn authenticate(
        &self,
        frame: &Bytes,
        kind: Kind,
        now: SystemTime,
    ) -> Result<(Opened, [u8; 12]), Rejection> {
        let authentic = self.key.ring.authenticate(frame, kind, now)?;
        let opened = Opened {
            event: authentic.event,
            seq: authentic.seq,
            timestamp_ms: authentic.timestamp_ms,
            slot: authentic.slot,
        };
        Ok((opened, authentic.nonce))
    }
}

/// The request a refused frame can be answered to (with an unsealed `ERR`): the clear id of
/// a sealed frame, or the header of a plain zerorpc request (so a stock client learns why
/// it is refused). `None` for channel events and frames that say nothing readable.
pub fn refused_request(frame: &[u8]) -> Option<crate::wire::MessageId> {
    match clear_id(frame) {
        Some(id) => crate::wire::MessageId::from_encoded(Bytes::copy_from_slice(id)).ok(),
        None if !zmesh_proto::seal::envelope::is_sealed(frame) => crate::wire::decode_header(frame)
            .ok()
            .filter(|h| h.response_to.is_none())
            .map(|h| h.message_id),
        None => None,
    }
}

/// This host's clock in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> MeshKey {
        MeshKey::from_secret(s.repeat(4)).expect("long enough")
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(matches!(
            MeshKey::from_secret("short"),
            Err(KeyError::TooShort(5))
        ));
    }

    #[test]
    fn file_keys_are_trimmed() {
        let dir = std::env::temp_dir().join(format!("zmesh-key-{}", std::process::id()));
        std::fs::write(&dir, "alphaalphaalphaalpha\n").expect("write");
        let from_file = MeshKey::from_file(&dir).expect("loads");
        let _ = std::fs::remove_file(&dir);
        assert_eq!(from_file.key_id(), key("alpha").key_id());
        assert!(matches!(
            MeshKey::from_file("/nonexistent/zmesh"),
            Err(KeyError::File { .. })
        ));
    }

    #[test]
    fn opens_own_frames_once() {
        let t = Trust::new(key("alpha"));
        let frame = t.seal(Kind::Request, b"event", b"");
        assert_eq!(t.open(&frame, Kind::Request).expect("opens"), &b"event"[..]);
        assert!(matches!(
            t.open(&frame, Kind::Request),
            Err(Rejection::Replayed(ReplayError::Replayed))
        ));
    }

    #[test]
    fn wrong_kind_wrong_key_and_plain_are_unauthenticated() {
        let t = Trust::new(key("alpha"));
        let other = Trust::new(key("bravo"));
        let frame = t.seal(Kind::Reply, b"event", b"");
        assert!(matches!(
            t.open(&frame, Kind::Request),
            Err(Rejection::Unauthenticated(_))
        ));
        assert!(matches!(
            other.open(&frame, Kind::Reply),
            Err(Rejection::Unauthenticated(_))
        ));
        let plain = Bytes::from_static(b"\x93\x80\xa1x\x90");
        assert!(matches!(
            t.open(&plain, Kind::Reply),
            Err(Rejection::Unauthenticated(_))
        ));
    }

    #[test]
    fn previous_key_only_within_grace() {
        let old = Trust::new(key("alpha"));
        let rotated =
            Trust::new(key("bravo").with_previous(&key("alpha"), Duration::from_secs(60)));
        let expired = Trust::new(key("bravo").with_previous(&key("alpha"), Duration::ZERO));
        let frame = old.seal(Kind::Request, b"e", b"");
        assert!(rotated.open(&frame, Kind::Request).is_ok());
        std::thread::sleep(Duration::from_millis(2));
        assert!(
            matches!(expired.open(&frame, Kind::Request), Err(Rejection::Unauthenticated(m)) if m.contains("grace"))
        );
    }

    #[test]
    fn windowed_open_repeats_but_refuses_stale_beacons() {
        let t = Trust::new(key("alpha"));
        let frame = t.seal(Kind::Beacon, b"beacon", b"");
        // No nonce cache: the same announcement heard twice is fine.
        assert!(t.open_windowed(&frame, Kind::Beacon).is_ok());
        assert!(t.open_windowed(&frame, Kind::Beacon).is_ok());
        let stale = zmesh_proto::seal::envelope::seal(
            t.key.ring.sealing_key(KeySlot::Current, SystemTime::now()),
            &SealParams {
                kind: Kind::Beacon,
                encrypt: true,
                timestamp_ms: now_ms() - 60_000,
                nonce: t.nonces.next(),
                clear_id: b"",
            },
            b"beacon",
        );
        assert!(matches!(
            t.open_windowed(&stale, Kind::Beacon),
            Err(Rejection::Replayed(ReplayError::OutsideWindow { .. }))
        ));
        let other = Trust::new(key("bravo")).seal(Kind::Beacon, b"beacon", b"");
        assert!(matches!(
            t.open_windowed(&other, Kind::Beacon),
            Err(Rejection::Unauthenticated(_))
        ));
        assert!(matches!(
            t.open_windowed(&Bytes::from_static(b"\x83plain"), Kind::Beacon),
            Err(Rejection::Unauthenticated(_))
        ));
    }

    #[test]
    fn nonces_never_repeat_within_a_sender() {
        let t = Trust::new(key("alpha"));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(t.nonces.next()));
        }
        assert_ne!(Trust::new(key("alpha")).nonces.next(), t.nonces.next());
    }

    #[test]
    fn a_restarted_receiver_refuses_what_was_sealed_before_it_started() {
        let sender = Trust::new(key("alpha"));
        let skew = Duration::from_millis(50);
        let captured = sender.seal(Kind::Request, b"event", b"");
        let before = Trust::new(key("alpha").clock_skew(skew));
        assert!(before.open(&captured, Kind::Request).is_ok());
        std::thread::sleep(skew * 3);
        // The same process "restarted": a fresh Trust, an empty nonce cache.
        let after = Trust::new(key("alpha").clock_skew(skew));
        assert!(matches!(
            after.open(&captured, Kind::Request),
            Err(Rejection::Replayed(ReplayError::BeforeStart { .. }))
        ));
        // What is sealed after the start opens as usual.
        let fresh = sender.seal(Kind::Request, b"event", b"");
        assert!(after.open(&fresh, Kind::Request).is_ok());
    }

    #[test]
    fn previous_key_grace_is_a_wall_clock_time_that_restarts_do_not_extend() {
        let old = Trust::new(key("alpha"));
        let until = SystemTime::now() + Duration::from_millis(100);
        let ring = || key("bravo").with_previous_until(&key("alpha"), until);
        assert_eq!(ring().previous_until(), Some(until));
        assert!(
            Trust::new(ring())
                .open(&old.seal(Kind::Request, b"e", b""), Kind::Request)
                .is_ok()
        );
        std::thread::sleep(Duration::from_millis(150));
        // A key ring built after the time (a restart) refuses the old key at once.
        let restarted = Trust::new(ring());
        assert!(matches!(
            restarted.open(&old.seal(Kind::Request, b"e", b""), Kind::Request),
            Err(Rejection::Unauthenticated(m)) if m.contains("grace")
        ));
    }

    #[test]
    fn replies_carry_their_number_and_duplicates_stay_attributable() {
        let node = Trust::new(key("alpha"));
        let client = Trust::new(key("alpha"));
        let item = node.seal_reply(b"item", Some(3));
        let opened = client.open_detailed(&item, Kind::Reply).expect("opens");
        assert_eq!((opened.seq, &opened.event[..]), (Some(3), &b"item"[..]));
        let refusal = client
            .open_detailed(&item, Kind::Reply)
            .expect_err("a duplicate");
        assert!(matches!(
            refusal.rejection,
            Rejection::Replayed(ReplayError::Replayed)
        ));
        assert_eq!(refusal.authentic.map(|o| o.seq), Some(Some(3)));
        assert_eq!(
            client
                .open_detailed(&node.seal_reply(b"hb", None), Kind::Reply)
                .expect("opens")
                .seq,
            None
        );
        // A forgery is never attributed.
        let forged = Trust::new(key("bravo")).seal_reply(b"item", Some(4));
        assert!(
            client
                .open_detailed(&forged, Kind::Reply)
                .expect_err("forged")
                .authentic
                .is_none()
        );
    }

    #[test]
    fn windowed_open_refuses_future_stamps() {
        let t = Trust::new(key("alpha"));
        let ahead = zmesh_proto::seal::envelope::seal(
            t.key.ring.sealing_key(KeySlot::Current, SystemTime::now()),
            &SealParams {
                kind: Kind::Beacon,
                encrypt: true,
                timestamp_ms: now_ms() + 25_000,
                nonce: t.nonces.next(),
                clear_id: b"",
            },
            b"beacon",
        );
        assert!(matches!(
            t.open_windowed(&ahead, Kind::Beacon),
            Err(Rejection::Replayed(ReplayError::FromTheFuture { .. }))
        ));
    }
}
