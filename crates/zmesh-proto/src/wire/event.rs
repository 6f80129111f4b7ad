//! Provides the zerorpc v3 event, `[header, name, args]`, with its exact encoding and a
//! decoder that never panics on peer bytes.
//!
//! Message ids are kept as the raw msgpack bytes they arrived in, so a reply's `response_to`
//! echoes the opening id with the same bytes and the same msgpack type (Python compares
//! `bytes` ids and silently drops a reply whose id comes back as `str`). Arguments stay as
//! raw msgpack too: the node and client decode them straight into the handler's or caller's
//! types, with no intermediate dynamic value.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::DecodeError;
use super::msgpack::{self, Cursor};

/// Reserved event names of the zerorpc protocol, plus zmesh's own.
pub mod names {
    /// Successful reply; args `[result]`.
    pub const OK: &str = "OK";
    /// Error reply; args `[name, message, traceback-or-nil]`.
    pub const ERR: &str = "ERR";
    /// One stream item; args are the bare item.
    pub const STREAM: &str = "STREAM";
    /// End of a stream; args nil.
    pub const STREAM_DONE: &str = "STREAM_DONE";
    /// Channel heartbeat; args `[0]`.
    pub const HEARTBEAT: &str = "_zpc_hb";
    /// Flow-control credit grant; args `[n]`.
    pub const MORE: &str = "_zpc_more";
    /// zmesh only: the caller gave up on this channel; args `[]`. Sent only to peers whose
    /// events carry the zmesh marker.
    pub const CANCEL: &str = "_zmesh_cancel";
}

/// Header keys zmesh reads and writes. Stock zerorpc peers ignore unknown keys.
pub mod keys {
    /// Unique id of this event (msgpack bin from zmesh and Python).
    pub const MESSAGE_ID: &str = "message_id";
    /// Protocol version, always 3.
    pub const VERSION: &str = "v";
    /// The channel this event belongs to: the opening event's `message_id`.
    pub const RESPONSE_TO: &str = "response_to";
    /// zmesh marker: the version of zmesh's extensions the sender speaks (1).
    pub const ZMESH: &str = "zmesh";
    /// zmesh: the caller's remaining deadline in milliseconds when the request was sent.
    pub const DEADLINE_MS: &str = "zmesh_deadline_ms";
    /// W3C trace context of the call.
    pub const TRACEPARENT: &str = "traceparent";
    /// zmesh: a request's stable id, the same on every retry of one logical call; nodes
    /// answer a repeat from their reply cache instead of running it again.
    pub const REQUEST_ID: &str = "zmesh_request_id";
    /// zmesh jobs: the id of the job a queue's dispatched call runs (see `wire::JobTag`).
    pub const JOB_ID: &str = "zmesh_job_id";
    /// zmesh jobs: which attempt of that job the call is, from 1.
    pub const JOB_ATTEMPT: &str = "zmesh_job_attempt";
}

/// The header keys as msgpack str, written as constants: every event carries several of
/// them, and copying a constant costs less than encoding a str's length each time.
mod encoded_keys {
    pub(super) const MESSAGE_ID: &[u8] = b"\xaamessage_id";
    pub(super) const VERSION: &[u8] = b"\xa1v";
    pub(super) const ZMESH: &[u8] = b"\xa5zmesh";
    pub(super) const DEADLINE_MS: &[u8] = b"\xb1zmesh_deadline_ms";
    pub(super) const TRACEPARENT: &[u8] = b"\xabtraceparent";
    pub(super) const RESPONSE_TO: &[u8] = b"\xabresponse_to";
}

/// The header keys as bytes, for matching a key read without its UTF-8 check.
mod key_bytes {
    use super::keys;
    pub(super) const MESSAGE_ID: &[u8] = keys::MESSAGE_ID.as_bytes();
    pub(super) const VERSION: &[u8] = keys::VERSION.as_bytes();
    pub(super) const ZMESH: &[u8] = keys::ZMESH.as_bytes();
    pub(super) const DEADLINE_MS: &[u8] = keys::DEADLINE_MS.as_bytes();
    pub(super) const TRACEPARENT: &[u8] = keys::TRACEPARENT.as_bytes();
    pub(super) const RESPONSE_TO: &[u8] = keys::RESPONSE_TO.as_bytes();
}

/// The zmesh extension version written in the [`keys::ZMESH`] marker.
pub const ZMESH_EXTENSION_VERSION: u64 = 1;

/// The zerorpc protocol version zmesh speaks.
pub const PROTOCOL_VERSION: u64 = 3;

/// An event or channel id: the raw msgpack encoding of the id value (bin, str or int).
///
/// Equality is byte equality of the encoding, which is what makes echoing exact. Ids of
/// up to 38 encoded bytes (zmesh's and Python's are 34) are stored inline,
/// so making, decoding, cloning and dropping one never touches the allocator: every call
/// handles its id several times on both ends.
#[derive(Clone)]
pub struct MessageId(IdBytes);

/// Longest id encoding stored inline in a [`MessageId`].
const INLINE_ID_BYTES: usize = 38;

#[derive(Clone)]
enum IdBytes {
    Inline {
        len: u8,
        bytes: [u8; INLINE_ID_BYTES],
    },
    Shared(Bytes),
}

impl MessageId {
    /// Makes a fresh id the way Python zerorpc does: 32 lowercase hex digits sent as msgpack
    /// bin8. The first 16 digits are a per-process counter, the rest a per-process random
    /// base, so ids are unique within and (with overwhelming probability) across processes.
    pub fn generate() -> Self {
        static BASE: OnceLock<[u8; 16]> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = BASE.get_or_init(|| {
            // std's RandomState is seeded from the OS per process; good enough for uniqueness
            // (ids are not secrets).
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            h.write_u128(t);
            hex16(h.finish())
        });
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; INLINE_ID_BYTES];
        bytes[..2].copy_from_slice(&[0xc4, 32]);
        bytes[2..18].copy_from_slice(&hex16(n));
        bytes[18..34].copy_from_slice(base);
        Self(IdBytes::Inline { len: 34, bytes })
    }

    /// Wraps an already encoded msgpack value (bin, str or int).
    ///
    /// # Errors
    /// `DecodeError::BadMessageId` when the bytes are not exactly one such value.
    pub fn from_encoded(raw: Bytes) -> Result<Self, DecodeError> {
        if !msgpack::is_id_kind(&raw) || msgpack::skip_value(&raw, 0)? != raw.len() {
            return Err(DecodeError::BadMessageId);
        }
        Ok(Self::from_checked(raw.as_ref(), || raw.clone()))
    }

    /// Builds an id sent as msgpack bin from the given bytes.
    pub fn from_bin(bytes: &[u8]) -> Self {
        let mut out = Vec::with_capacity(bytes.len() + 5);
        msgpack::write_bin(&mut out, bytes);
        Self::from_checked(&out, || Bytes::from(out.clone()))
    }

    /// An id from an encoding already known to be one id value: copied inline when short,
    /// otherwise kept as the bytes `shared` returns (a zero-copy slice where there is one).
    fn from_checked(encoded: &[u8], shared: impl FnOnce() -> Bytes) -> Self {
        if encoded.len() <= INLINE_ID_BYTES {
            let mut bytes = [0u8; INLINE_ID_BYTES];
            bytes[..encoded.len()].copy_from_slice(encoded);
            Self(IdBytes::Inline {
                len: encoded.len() as u8,
                bytes,
            })
        } else {
            Self(IdBytes::Shared(shared()))
        }
    }

    /// The raw msgpack encoding.
    pub fn encoded(&self) -> &[u8] {
        match &self.0 {
            IdBytes::Inline { len, bytes } => &bytes[..usize::from(*len)],
            IdBytes::Shared(bytes) => bytes,
        }
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.encoded() == other.encoded()
    }
}

impl Eq for MessageId {}

impl std::hash::Hash for MessageId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.encoded().hash(state);
    }
}

fn hex16(n: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl fmt::Display for MessageId {
    /// Shows the id's payload: text as text, anything else as hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encoded();
        let mut c = Cursor::new(encoded);
        if let Ok(Some(s)) = c.str() {
            return f.write_str(s);
        }
        let payload = match encoded.first() {
            Some(0xc4) => encoded.get(2..),
            Some(0xc5) => encoded.get(3..),
            Some(0xc6) => encoded.get(5..),
            _ => None,
        };
        match payload.map(std::str::from_utf8) {
            Some(Ok(s)) => f.write_str(s),
            _ => encoded.iter().try_for_each(|b| write!(f, "{b:02x}")),
        }
    }
}

/// The event header: the keys zerorpc and zmesh define, plus any other keys preserved as
/// raw msgpack so middleware keys survive a decode/encode round trip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Unique id of this event.
    pub message_id: MessageId,
    /// The `v` key; `None` when absent (a legacy peer).
    pub version: Option<u64>,
    /// The channel id for every event after the opening one.
    pub response_to: Option<MessageId>,
    /// The zmesh marker: `Some(version)` when the sender is a zmesh peer.
    pub zmesh: Option<u64>,
    /// zmesh: the remaining deadline of the call in milliseconds, on the opening request.
    pub deadline_ms: Option<u64>,
    /// W3C `traceparent` of the call.
    pub traceparent: Option<String>,
    /// Every other key, in arrival order, with its raw msgpack value.
    pub extra: Vec<(String, Bytes)>,
}

impl Header {
    /// A header for an event sent by zmesh: fresh id, `v` = 3 and the zmesh marker.
    pub fn zmesh(response_to: Option<MessageId>) -> Self {
        Self::zmesh_with_id(MessageId::generate(), response_to)
    }

    /// A zmesh header with a given id (a request whose id the caller keeps).
    pub fn zmesh_with_id(message_id: MessageId, response_to: Option<MessageId>) -> Self {
        Self {
            message_id,
            version: Some(PROTOCOL_VERSION),
            response_to,
            zmesh: Some(ZMESH_EXTENSION_VERSION),
            deadline_ms: None,
            traceparent: None,
            extra: Vec::new(),
        }
    }

    /// True when the sender marked itself as a zmesh peer.
    pub fn is_zmesh(&self) -> bool {
        self.zmesh.is_some()
    }
}

/// One decoded event. `args` is the raw msgpack of the third element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The header map.
    pub header: Header,
    /// The method name or one of the reserved [`names`] (borrowed, so replies, heartbeats
    /// and credit grants decode without allocating a name).
    pub name: Cow<'static, str>,
    /// The third element, still encoded.
    pub args: Bytes,
}

/// A decode failure, with the header when it was readable (so a server can still address an
/// `ERR` reply to the request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct EventDecodeError {
    /// What was wrong.
    pub error: DecodeError,
    /// The header, when decoding got that far.
    pub header: Option<Box<Header>>,
}

impl From<DecodeError> for EventDecodeError {
    fn from(error: DecodeError) -> Self {
        Self {
            error,
            header: None,
        }
    }
}

/// Decodes only the header of an event (used to address an `ERR` for a message that is
/// rejected before full decoding, such as an oversized one).
///
/// # Errors
/// Any [`DecodeError`] met before the header is complete.
pub fn decode_header(frame: &[u8]) -> Result<Header, DecodeError> {
    let mut c = Cursor::new(frame);
    open_event(&mut c)?;
    read_header(&mut c, &|range| Bytes::copy_from_slice(&frame[range]))
}

/// Reads the start of an event: an array of exactly three elements.
fn open_event(c: &mut Cursor<'_>) -> Result<(), DecodeError> {
    match c.array_len()? {
        Some(3) => Ok(()),
        Some(n) => Err(DecodeError::WrongEventArity(n)),
        None => Err(DecodeError::NotAnArray),
    }
}

/// Decodes a whole event frame. Trailing bytes after the event are ignored, as in Python.
///
/// # Errors
/// An [`EventDecodeError`] carrying the header when it was readable.
pub fn decode_event(frame: &Bytes) -> Result<Event, EventDecodeError> {
    let mut c = Cursor::new(frame);
    open_event(&mut c)?;
    let header = read_header(&mut c, &|range| frame.slice(range))?;
    match read_name_and_args(&mut c, frame) {
        Ok((name, args)) => Ok(Event { header, name, args }),
        Err(error) => Err(EventDecodeError {
            error,
            header: Some(Box::new(header)),
        }),
    }
}

/// The reserved event names, borrowed; anything else (a method name) is copied.
fn intern_name(name: &str) -> Cow<'static, str> {
    const RESERVED: [&str; 7] = [
        names::OK,
        names::ERR,
        names::STREAM,
        names::STREAM_DONE,
        names::HEARTBEAT,
        names::MORE,
        names::CANCEL,
    ];
    match RESERVED.iter().find(|reserved| **reserved == name) {
        Some(reserved) => Cow::Borrowed(reserved),
        None => Cow::Owned(name.to_owned()),
    }
}

/// One checked header entry, as [`read_header_entries`] hands it over. Ranges are
/// positions in the frame being read.
enum HeaderEntry<'a> {
    /// `message_id` (`response_to: false`) or `response_to`: the id's raw msgpack.
    Id {
        response_to: bool,
        raw: &'a [u8],
        range: Range<usize>,
    },
    Version(u64),
    Zmesh(u64),
    DeadlineMs(u64),
    Traceparent(&'a str),
    /// Any other key, with the range of its raw value.
    Other {
        key: &'a str,
        range: Range<usize>,
    },
}

/// Walks the header map, checking each entry as zerorpc and zmesh define it, and hands every
/// entry to `entry`. The one walk behind both [`read_header`] (everything kept) and
/// [`decode_reply`] (only what a client needs), so both accept exactly the same headers.
fn read_header_entries<'a>(
    c: &mut Cursor<'a>,
    mut entry: impl FnMut(HeaderEntry<'a>),
) -> Result<(), DecodeError> {
    let Some(entries) = c.map_len()? else {
        return Err(DecodeError::HeaderNotMap);
    };
    let mut has_message_id = false;
    for _ in 0..entries {
        // Known keys are ASCII, so they are matched as bytes; only an unknown key, kept as
        // text, needs the UTF-8 check (a quarter of a reply's decoding cost otherwise).
        let Some(key) = c.str_bytes()? else {
            return Err(DecodeError::HeaderKeyNotStr);
        };
        let bad = || DecodeError::BadHeaderValue(String::from_utf8_lossy(key).into_owned());
        match key {
            key_bytes::MESSAGE_ID | key_bytes::RESPONSE_TO => {
                let start = c.position();
                let raw = c.value()?;
                if !msgpack::is_id_kind(raw) {
                    return Err(DecodeError::BadMessageId);
                }
                let response_to = key == key_bytes::RESPONSE_TO;
                has_message_id |= !response_to;
                let range = start..c.position();
                entry(HeaderEntry::Id {
                    response_to,
                    raw,
                    range,
                });
            }
            key_bytes::VERSION => entry(HeaderEntry::Version(c.uint()?.ok_or_else(bad)?)),
            key_bytes::ZMESH => entry(HeaderEntry::Zmesh(c.uint()?.ok_or_else(bad)?)),
            key_bytes::DEADLINE_MS => entry(HeaderEntry::DeadlineMs(c.uint()?.ok_or_else(bad)?)),
            key_bytes::TRACEPARENT => entry(HeaderEntry::Traceparent(c.str()?.ok_or_else(bad)?)),
            _ => {
                let key = std::str::from_utf8(key).map_err(|_| DecodeError::InvalidUtf8)?;
                let start = c.position();
                c.value()?;
                let range = start..c.position();
                entry(HeaderEntry::Other { key, range });
            }
        }
    }
    if has_message_id {
        Ok(())
    } else {
        Err(DecodeError::MissingMessageId)
    }
}

/// Reads the header map; `bytes_of` turns a range of the frame into owned bytes (a
/// zero-copy slice when the frame is already `Bytes`).
fn read_header(
    c: &mut Cursor<'_>,
    bytes_of: &dyn Fn(Range<usize>) -> Bytes,
) -> Result<Header, DecodeError> {
    let mut message_id = None;
    let mut header = Header {
        message_id: MessageId(IdBytes::Inline {
            len: 0,
            bytes: [0; INLINE_ID_BYTES],
        }),
        version: None,
        response_to: None,
        zmesh: None,
        deadline_ms: None,
        traceparent: None,
        extra: Vec::new(),
    };
    read_header_entries(c, |entry| match entry {
        HeaderEntry::Id {
            response_to,
            raw,
            range,
        } => {
            let id = MessageId::from_checked(raw, || bytes_of(range));
            if response_to {
                header.response_to = Some(id);
            } else {
                message_id = Some(id);
            }
        }
        HeaderEntry::Version(v) => header.version = Some(v),
        HeaderEntry::Zmesh(z) => header.zmesh = Some(z),
        HeaderEntry::DeadlineMs(ms) => header.deadline_ms = Some(ms),
        HeaderEntry::Traceparent(tp) => header.traceparent = Some(tp.to_owned()),
        HeaderEntry::Other { key, range } => header.extra.push((key.to_owned(), bytes_of(range))),
    })?;
    header.message_id = message_id.ok_or(DecodeError::MissingMessageId)?;
    Ok(header)
}

/// What a client needs of an event it receives: the call it answers, whether the sender
/// is a zmesh peer, and what it says. See [`decode_reply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyEvent {
    /// The header's `response_to`: the id of the request this event answers.
    pub response_to: Option<MessageId>,
    /// Whether the header carries the zmesh marker.
    pub zmesh: bool,
    /// The event name (borrowed for the reserved names).
    pub name: Cow<'static, str>,
    /// The third element, still encoded.
    pub args: Bytes,
}

/// A [`decode_reply`] failure, with the `response_to` id when the header was readable (so
/// the client can fail the call the broken event was meant for).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ReplyDecodeError {
    /// What was wrong.
    pub error: DecodeError,
    /// The call the event answers, when the header was readable.
    pub response_to: Option<MessageId>,
}

/// Decodes an event the way a client reads replies: the same checks as [`decode_event`]
/// (an event one accepts, the other accepts), but of the header only `response_to` and the
/// zmesh marker are kept. A reply's own id, its version and any other keys are checked and
/// skipped, which spares the client building and dropping a [`Header`] per reply.
///
/// # Errors
/// A [`ReplyDecodeError`] carrying `response_to` when the header was readable.
pub fn decode_reply(frame: &Bytes) -> Result<ReplyEvent, ReplyDecodeError> {
    let unaddressed = |error| ReplyDecodeError {
        error,
        response_to: None,
    };
    let mut c = Cursor::new(frame);
    open_event(&mut c).map_err(unaddressed)?;
    let mut response_to = None;
    let mut zmesh = false;
    read_header_entries(&mut c, |entry| match entry {
        HeaderEntry::Id {
            response_to: true,
            raw,
            range,
        } => response_to = Some(MessageId::from_checked(raw, || frame.slice(range))),
        HeaderEntry::Zmesh(_) => zmesh = true,
        _ => {}
    })
    .map_err(unaddressed)?;
    match read_name_and_args(&mut c, frame) {
        Ok((name, args)) => Ok(ReplyEvent {
            response_to,
            zmesh,
            name,
            args,
        }),
        Err(error) => Err(ReplyDecodeError { error, response_to }),
    }
}

/// Reads the event's name and args, after its header.
fn read_name_and_args(
    c: &mut Cursor<'_>,
    frame: &Bytes,
) -> Result<(Cow<'static, str>, Bytes), DecodeError> {
    let name = intern_name(c.str()?.ok_or(DecodeError::NameNotStr)?);
    let start = c.position();
    c.value()?;
    Ok((name, frame.slice(start..c.position())))
}

/// Encodes an event whose args are already msgpack (`args` must hold exactly one value).
///
/// Key order follows Python (`message_id`, `v`, other keys, `response_to`), so a decoded
/// Python event re-encodes to identical bytes.
pub fn encode_event(header: &Header, name: &str, args: &[u8]) -> Bytes {
    // Exactly the encoded size: `Bytes` takes a full `Vec` over as is, but one with spare
    // capacity costs an extra allocation for its shared control block.
    let mut out = Vec::with_capacity(encoded_len(header, name, args.len()));
    encode_event_into(&mut out, header, name, |out| out.extend_from_slice(args));
    debug_assert_eq!(out.len(), out.capacity(), "encoded_len is exact");
    Bytes::from(out)
}

/// The size of the event [`encode_event_into`] writes for `header`, `name` and args of
/// `args_len` bytes: the capacity that makes the buffer's conversion to `Bytes` free.
pub fn encoded_len(header: &Header, name: &str, args_len: usize) -> usize {
    use msgpack::{str_encoded_len as text, uint_encoded_len as uint};
    let entries = header_entries(header);
    let mut len = 1 + if entries < 16 { 1 } else { 3 };
    len += encoded_keys::MESSAGE_ID.len() + header.message_id.encoded().len();
    if let Some(v) = header.version {
        len += encoded_keys::VERSION.len() + uint(v);
    }
    if let Some(z) = header.zmesh {
        len += encoded_keys::ZMESH.len() + uint(z);
    }
    if let Some(ms) = header.deadline_ms {
        len += encoded_keys::DEADLINE_MS.len() + uint(ms);
    }
    if let Some(tp) = &header.traceparent {
        len += encoded_keys::TRACEPARENT.len() + text(tp.len());
    }
    for (key, value) in &header.extra {
        len += text(key.len()) + value.len();
    }
    if let Some(rt) = &header.response_to {
        len += encoded_keys::RESPONSE_TO.len() + rt.encoded().len();
    }
    len + text(name.len()) + args_len
}

/// The number of entries of the encoded header map.
fn header_entries(header: &Header) -> usize {
    1 + usize::from(header.version.is_some())
        + usize::from(header.zmesh.is_some())
        + usize::from(header.deadline_ms.is_some())
        + usize::from(header.traceparent.is_some())
        + header.extra.len()
        + usize::from(header.response_to.is_some())
}

/// Encodes an event, letting `write_args` append the args value in place (saves a copy for
/// large payloads).
pub fn encode_event_into(
    out: &mut Vec<u8>,
    header: &Header,
    name: &str,
    write_args: impl FnOnce(&mut Vec<u8>),
) {
    out.push(0x93);
    msgpack::write_map_len(out, header_entries(header));
    out.extend_from_slice(encoded_keys::MESSAGE_ID);
    out.extend_from_slice(header.message_id.encoded());
    if let Some(v) = header.version {
        out.extend_from_slice(encoded_keys::VERSION);
        msgpack::write_uint(out, v);
    }
    if let Some(z) = header.zmesh {
        out.extend_from_slice(encoded_keys::ZMESH);
        msgpack::write_uint(out, z);
    }
    if let Some(ms) = header.deadline_ms {
        out.extend_from_slice(encoded_keys::DEADLINE_MS);
        msgpack::write_uint(out, ms);
    }
    if let Some(tp) = &header.traceparent {
        out.extend_from_slice(encoded_keys::TRACEPARENT);
        msgpack::write_str(out, tp);
    }
    for (key, value) in &header.extra {
        msgpack::write_str(out, key);
        out.extend_from_slice(value);
    }
    if let Some(rt) = &header.response_to {
        out.extend_from_slice(encoded_keys::RESPONSE_TO);
        out.extend_from_slice(rt.encoded());
    }
    msgpack::write_str(out, name);
    write_args(out);
}

/// Args of an `ERR` event: `[name, message, traceback-or-nil]`.
pub fn err_args(name: &str, message: &str, traceback: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + name.len() + message.len());
    out.push(0x93);
    msgpack::write_str(&mut out, name);
    msgpack::write_str(&mut out, message);
    match traceback {
        Some(tb) => msgpack::write_str(&mut out, tb),
        None => out.push(0xc0),
    }
    out
}

/// Args of a `_zpc_more` event: `[n]`.
pub fn more_args(n: u64) -> Vec<u8> {
    let mut out = vec![0x91];
    msgpack::write_uint(&mut out, n);
    out
}

/// Args of a `_zpc_hb` event: `[0]`.
pub const HEARTBEAT_ARGS: &[u8] = &[0x91, 0x00];
/// Args of `STREAM_DONE`: nil.
pub const NIL_ARGS: &[u8] = &[0xc0];
/// Args of `_zmesh_cancel`: `[]`.
pub const EMPTY_ARRAY_ARGS: &[u8] = &[0x90];

/// Reads the three elements of `ERR` args. Tolerates a legacy one-element `[repr]` and
/// non-str elements (rendered as text) so a remote error is never lost to its shape.
pub fn parse_err_args(args: &[u8]) -> (String, String, Option<String>) {
    let value =
        rmpv::decode::read_value_with_max_depth(&mut &args[..], super::MAX_VALUE_DEPTH).ok();
    let text = |v: &rmpv::Value| match v {
        rmpv::Value::String(s) => s
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    };
    match value {
        Some(rmpv::Value::Array(items)) => match items.as_slice() {
            [name, message, tb, ..] => (
                text(name),
                text(message),
                match tb {
                    rmpv::Value::Nil => None,
                    tb => Some(text(tb)),
                },
            ),
            [name, message] => (text(name), text(message), None),
            [repr] => ("RemoteError".to_owned(), text(repr), None),
            [] => ("RemoteError".to_owned(), String::new(), None),
        },
        Some(other) => ("RemoteError".to_owned(), text(&other), None),
        None => (
            "RemoteError".to_owned(),
            "undecodable ERR arguments".to_owned(),
            None,
        ),
    }
}

/// Reads `[n]` from a `_zpc_more` event.
pub fn parse_more_args(args: &[u8]) -> Option<u64> {
    let mut c = Cursor::new(args);
    match c.array_len() {
        Ok(Some(n)) if n >= 1 => c.uint().ok().flatten(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("test vectors are hex"))
            .collect()
    }

    /// Appendix A.1 of the protocol notes: `hello("hi")` from a stock DEALER client.
    const REQUEST_HELLO: &str = "93 82 aa 6d 65 73 73 61 67 65 5f 69 64 c4 20 32
        31 63 64 64 34 34 39 38 35 31 63 34 31 65 35 62 37 37 31 63 32 33 65 61 35 31 38 35 63
        61 30 a1 76 03 a5 68 65 6c 6c 6f 91 a2 68 69";

    /// Appendix A.3: the OK reply as received by the client.
    const REPLY_OK: &str = "93 83 aa 6d 65 73 73 61 67 65 5f 69 64 c4 20 30
        38 63 61 63 39 33 39 32 64 64 65 34 38 34 65 39 63 63 66 61 39 39 35 33 36 61 33 62 33
        35 35 a1 76 03 ab 72 65 73 70 6f 6e 73 65 5f 74 6f c4 20 32 31 63 64 64 34 34 39 38 35
        31 63 34 31 65 35 62 37 37 31 63 32 33 65 61 35 31 38 35 63 61 30 a2 4f 4b 91 a9 48 65
        6c 6c 6f 2c 20 68 69";

    /// Appendix D.2: the first STREAM item, the bare integer 0.
    const STREAM_ZERO: &str = "93 83 aa 6d 65 73 73 61 67 65 5f 69 64 c4 20 30
        38 63 61 63 39 33 64 32 64 64 65 34 38 34 65 39 63 63 66 61 39 39 35 33 36 61 33 62 33
        35 35 a1 76 03 ab 72 65 73 70 6f 6e 73 65 5f 74 6f c4 20 32 31 63 64 64 34 34 64 38 35
        31 63 34 31 65 35 62 37 37 31 63 32 33 65 61 35 31 38 35 63 61 30 a6 53 54 52 45 41 4d
        00";

    /// Appendix E.1: a client heartbeat.
    const HEARTBEAT: &str = "93 83 aa 6d 65 73 73 61 67 65 5f 69 64 c4 20 32
        31 63 64 64 34 35 39 38 35 31 63 34 31 65 35 62 37 37 31 63 32 33 65 61 35 31 38 35 63
        61 30 a1 76 03 ab 72 65 73 70 6f 6e 73 65 5f 74 6f c4 20 32 31 63 64 64 34 35 38 38 35
        31 63 34 31 65 35 62 37 37 31 63 32 33 65 61 35 31 38 35 63 61 30 a7 5f 7a 70 63 5f 68
        62 91 00";

    /// Appendix D.3: the client's credit grant `_zpc_more [100]`.
    const MORE_100: &str = "93 83 aa 6d 65 73 73 61 67 65 5f 69 64 c4 20 32
        31 63 64 64 34 34 65 38 35 31 63 34 31 65 35 62 37 37 31 63 32 33 65 61 35 31 38 35 63
        61 30 a1 76 03 ab 72 65 73 70 6f 6e 73 65 5f 74 6f c4 20 32 31 63 64 64 34 34 64 38 35
        31 63 34 31 65 35 62 37 37 31 63 32 33 65 61 35 31 38 35 63 61 30 a9 5f 7a 70 63 5f 6d
        6f 72 65 91 64";

    #[test]
    fn golden_request_decodes_and_reencodes_identically() {
        let bytes = Bytes::from(hex(REQUEST_HELLO));
        let ev = decode_event(&bytes).expect("capture decodes");
        assert_eq!(ev.name, "hello");
        assert_eq!(ev.header.version, Some(3));
        assert_eq!(ev.header.response_to, None);
        assert_eq!(
            ev.header.message_id,
            MessageId::from_bin(b"21cdd449851c41e5b771c23ea5185ca0")
        );
        assert_eq!(&ev.args[..], &[0x91, 0xa2, b'h', b'i']);
        assert_eq!(encode_event(&ev.header, &ev.name, &ev.args), bytes);
    }

    #[test]
    fn golden_replies_reencode_identically() {
        for capture in [REPLY_OK, STREAM_ZERO, HEARTBEAT, MORE_100] {
            let bytes = Bytes::from(hex(capture));
            let ev = decode_event(&bytes).expect("capture decodes");
            assert_eq!(encode_event(&ev.header, &ev.name, &ev.args), bytes);
        }
    }

    #[test]
    fn golden_ok_reply_is_what_we_build_from_the_request() {
        let request = decode_event(&Bytes::from(hex(REQUEST_HELLO))).expect("decodes");
        // Build the reply the way the node does, with the captured reply's own message id.
        let header = Header {
            message_id: MessageId::from_bin(b"08cac9392dde484e9ccfa99536a3b355"),
            version: Some(3),
            response_to: Some(request.header.message_id.clone()),
            zmesh: None,
            deadline_ms: None,
            traceparent: None,
            extra: vec![],
        };
        let mut ok_args = vec![0x91];
        ok_args.extend_from_slice(&hex("a9 48 65 6c 6c 6f 2c 20 68 69"));
        assert_eq!(
            &encode_event(&header, names::OK, &ok_args)[..],
            &hex(REPLY_OK)[..]
        );
    }

    #[test]
    fn golden_control_args() {
        let hb = decode_event(&Bytes::from(hex(HEARTBEAT))).expect("decodes");
        assert_eq!(&hb.args[..], HEARTBEAT_ARGS);
        let more = decode_event(&Bytes::from(hex(MORE_100))).expect("decodes");
        assert_eq!(parse_more_args(&more.args), Some(100));
        assert_eq!(more_args(100), vec![0x91, 0x64]);
        assert_eq!(
            more.header.response_to,
            Some(MessageId::from_bin(b"21cdd44d851c41e5b771c23ea5185ca0"))
        );
    }

    #[test]
    fn constant_keys_are_their_msgpack_encoding() {
        for (key, encoded) in [
            (keys::MESSAGE_ID, encoded_keys::MESSAGE_ID),
            (keys::VERSION, encoded_keys::VERSION),
            (keys::ZMESH, encoded_keys::ZMESH),
            (keys::DEADLINE_MS, encoded_keys::DEADLINE_MS),
            (keys::TRACEPARENT, encoded_keys::TRACEPARENT),
            (keys::RESPONSE_TO, encoded_keys::RESPONSE_TO),
        ] {
            let mut out = Vec::new();
            msgpack::write_str(&mut out, key);
            assert_eq!(out, encoded, "{key}");
        }
    }

    #[test]
    fn generated_ids_are_bin32_hex_and_unique() {
        // Every call future holds ids; inline storage must not make them bigger than a
        // few words (38 bytes inline plus length and tag fit in 40).
        assert!(std::mem::size_of::<MessageId>() <= 40);
        let a = MessageId::generate();
        let b = MessageId::generate();
        assert_ne!(a, b);
        assert_eq!(a.encoded().len(), 34);
        assert_eq!(&a.encoded()[..2], &[0xc4, 32]);
        assert!(a.encoded()[2..].iter().all(u8::is_ascii_hexdigit));
    }

    #[test]
    fn str_ids_are_echoed_as_str() {
        let mut out = vec![0x93, 0x82];
        msgpack::write_str(&mut out, "message_id");
        msgpack::write_str(&mut out, "abc");
        msgpack::write_str(&mut out, "v");
        out.push(3);
        msgpack::write_str(&mut out, "ping");
        out.push(0x90);
        let ev = decode_event(&Bytes::from(out)).expect("decodes");
        let reply = encode_event(
            &Header::zmesh(Some(ev.header.message_id.clone())),
            "OK",
            &[0x91, 0xc0],
        );
        let back = decode_event(&reply).expect("decodes");
        assert_eq!(
            back.header.response_to.expect("set").encoded()[..],
            [0xa3, b'a', b'b', b'c']
        );
    }

    /// Ids too long to store inline are kept as shared bytes and still echo exactly, and
    /// compare equal to the same id built another way.
    #[test]
    fn long_ids_echo_exactly() {
        let long = "x".repeat(100);
        let mut out = vec![0x93, 0x81];
        msgpack::write_str(&mut out, "message_id");
        msgpack::write_str(&mut out, &long);
        msgpack::write_str(&mut out, "ping");
        out.push(0x90);
        let ev = decode_event(&Bytes::from(out)).expect("decodes");
        let mut encoded = Vec::new();
        msgpack::write_str(&mut encoded, &long);
        let same = MessageId::from_encoded(Bytes::from(encoded.clone())).expect("one str");
        assert_eq!(ev.header.message_id, same);
        let reply = encode_event(&Header::zmesh(Some(same)), "OK", &[0x91, 0xc0]);
        let back = decode_event(&reply).expect("decodes");
        assert_eq!(
            back.header.response_to.expect("set").encoded(),
            &encoded[..]
        );
    }

    #[test]
    fn zmesh_keys_round_trip_and_unknown_keys_are_kept() {
        let mut header = Header::zmesh(None);
        header.deadline_ms = Some(1500);
        header.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        header
            .extra
            .push(("tenant".into(), Bytes::from_static(&[0xa2, b'o', b'k'])));
        let bytes = encode_event(&header, "echo.echo", &[0x91, 0x01]);
        let ev = decode_event(&bytes).expect("decodes");
        assert_eq!(ev.header, header);
        assert!(ev.header.is_zmesh());
    }

    #[test]
    fn malformed_events_name_their_problem() {
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (vec![], DecodeError::Truncated),
            (vec![0xc0], DecodeError::NotAnArray),
            (vec![0x92, 0x80, 0xa0], DecodeError::WrongEventArity(2)),
            (vec![0x93, 0x01, 0xa0, 0x90], DecodeError::HeaderNotMap),
            (
                vec![0x93, 0x81, 0x01, 0x01, 0xa0, 0x90],
                DecodeError::HeaderKeyNotStr,
            ),
            (vec![0x93, 0x80, 0xa0, 0x90], DecodeError::MissingMessageId),
        ];
        for (bytes, want) in cases {
            let got = decode_event(&Bytes::from(bytes.clone())).expect_err("must fail");
            assert_eq!(got.error, want, "input {bytes:02x?}");
        }
        // A readable header is reported with the error so the server can answer ERR.
        let mut out = vec![0x93, 0x81];
        msgpack::write_str(&mut out, "message_id");
        msgpack::write_bin(&mut out, b"id");
        out.push(0x07); // name is an int
        out.push(0x90);
        let err = decode_event(&Bytes::from(out)).expect_err("must fail");
        assert_eq!(err.error, DecodeError::NameNotStr);
        assert_eq!(
            err.header.expect("header kept").message_id,
            MessageId::from_bin(b"id")
        );
    }

    #[test]
    fn err_args_shapes() {
        let args = err_args("EchoError", "boom", None);
        assert_eq!(
            parse_err_args(&args),
            ("EchoError".into(), "boom".into(), None)
        );
        let args = err_args("E", "m", Some("tb"));
        assert_eq!(
            parse_err_args(&args),
            ("E".into(), "m".into(), Some("tb".into()))
        );
        let legacy = rmp_serde::to_vec(&("ValueError('x')",)).expect("encodes");
        assert_eq!(parse_err_args(&legacy).1, "ValueError('x')");
    }

    /// `decode_reply` must accept exactly what `decode_event` accepts and agree with it on
    /// everything it keeps, errors included.
    fn assert_reply_decoding_agrees(bytes: &Bytes) {
        match (decode_event(bytes), decode_reply(bytes)) {
            (Ok(event), Ok(reply)) => {
                assert_eq!(reply.response_to, event.header.response_to);
                assert_eq!(reply.zmesh, event.header.is_zmesh());
                assert_eq!(reply.name, event.name);
                assert_eq!(reply.args, event.args);
            }
            (Err(event), Err(reply)) => {
                assert_eq!(reply.error, event.error);
                assert_eq!(reply.response_to, event.header.and_then(|h| h.response_to));
            }
            (event, reply) => panic!("decode_event {event:?} but decode_reply {reply:?}"),
        }
    }

    #[test]
    fn replies_decode_as_a_client_needs_them() {
        for golden in [REPLY_OK, REQUEST_HELLO, STREAM_ZERO, HEARTBEAT] {
            assert_reply_decoding_agrees(&Bytes::from(hex(golden)));
        }
        let reply = decode_reply(&Bytes::from(hex(REPLY_OK))).expect("decodes");
        assert!(reply.response_to.is_some());
        assert_eq!(reply.name, names::OK);
        let zmesh = encode_event(
            &Header::zmesh(Some(MessageId::generate())),
            names::OK,
            &[0x91, 0x01],
        );
        let reply = decode_reply(&zmesh).expect("decodes");
        assert!(reply.zmesh);
        assert_eq!(&reply.args[..], &[0x91, 0x01]);
        // A header it cannot read addresses no call; a bad name after a good header does.
        let mut broken = zmesh.to_vec();
        let name_at = broken.len() - 2 - 1 - names::OK.len();
        broken[name_at] = 0xc0;
        let broken = Bytes::from(broken);
        assert_reply_decoding_agrees(&broken);
        let error = decode_reply(&broken).expect_err("the name is nil");
        assert_eq!(error.error, DecodeError::NameNotStr);
        assert!(error.response_to.is_some());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let bytes = Bytes::from(bytes);
            let _ = decode_event(&bytes);
            let _ = decode_header(&bytes);
            let _ = parse_err_args(&bytes);
            let _ = parse_more_args(&bytes);
            assert_reply_decoding_agrees(&bytes);
        }

        #[test]
        fn mutated_valid_events_never_panic(pos in 0usize..120, byte in proptest::num::u8::ANY) {
            let mut bytes = hex(REPLY_OK);
            let at = pos % bytes.len();
            bytes[at] = byte;
            let bytes = Bytes::from(bytes);
            let _ = decode_event(&bytes);
            assert_reply_decoding_agrees(&bytes);
        }

        #[test]
        fn encode_decode_round_trip(
            id in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            name in "[a-zA-Z_.]{1,40}",
            deadline in proptest::option::of(proptest::num::u64::ANY),
            reply in proptest::bool::ANY,
            arg in proptest::collection::vec(proptest::num::i64::ANY, 0..20),
            extra in proptest::option::of("[a-z]{1,10}"),
            traceparent in proptest::option::of("[0-9a-f-]{0,60}"),
        ) {
            let mut header = Header::zmesh(reply.then(|| MessageId::from_bin(&id)));
            header.message_id = MessageId::from_bin(&id);
            header.deadline_ms = deadline;
            header.traceparent = traceparent;
            if let Some(k) = extra {
                header.extra.push((format!("x_{k}"), Bytes::from_static(&[0xc3])));
            }
            let args = rmp_serde::to_vec(&arg).expect("encodes");
            let bytes = encode_event(&header, &name, &args);
            let ev = decode_event(&bytes).expect("round trip decodes");
            assert_reply_decoding_agrees(&bytes);
            proptest::prop_assert_eq!(&ev.header, &header);
            proptest::prop_assert_eq!(&ev.name, &name);
            proptest::prop_assert_eq!(&ev.args[..], &args[..]);
        }
    }
}
