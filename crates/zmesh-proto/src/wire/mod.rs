//! Provides the zerorpc v3 wire format, pure: events, headers, ids and multipart framing.
//! No sockets, no clocks, no tasks; everything here is unit-tested against real captures.
//! zmesh-core re-exports it as `zmesh_core::wire`, adding the conversion to `ZmqMessage`.

mod event;
mod frames;
mod job;
pub mod msgpack;
pub mod worker;

pub use event::{
    EMPTY_ARRAY_ARGS, Event, EventDecodeError, HEARTBEAT_ARGS, Header, MessageId, NIL_ARGS,
    PROTOCOL_VERSION, ReplyDecodeError, ReplyEvent, ZMESH_EXTENSION_VERSION, decode_event,
    decode_header, decode_reply, encode_event, encode_event_into, encoded_len, err_args, keys,
    more_args, names, parse_err_args, parse_more_args,
};
pub use frames::{Envelope, join_route, split_frames};
pub use job::JobTag;

/// Deepest nesting of arrays and maps zmesh decodes into values. serde decoding recurses
/// once per level, and a few KiB of stack per level (debug builds) times rmp-serde's own
/// limit of 1024 overflows a 2 MiB tokio worker stack: a stack overflow aborts the process
/// and cannot be caught. 128 levels is far beyond real payloads and far within the stack.
pub const MAX_VALUE_DEPTH: usize = 128;

/// Starting capacity of buffers that args and results are serialized into. rmp-serde grows
/// an empty `Vec` by doubling from a few bytes, and those reallocations cost more than the
/// encoding itself for typical small payloads.
pub const ENCODE_START_CAPACITY: usize = 128;

/// Why bytes from a peer are not a valid zerorpc event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The bytes end in the middle of a value.
    #[error("message is truncated")]
    Truncated,
    /// The event is not a msgpack array.
    #[error("event is not a msgpack array")]
    NotAnArray,
    /// The event array does not have exactly three elements.
    #[error("event has {0} elements, expected 3 ([header, name, args])")]
    WrongEventArity(u64),
    /// The header is not a map.
    #[error("event header is not a map")]
    HeaderNotMap,
    /// A header key is not a msgpack str.
    #[error("event header has a key that is not a string")]
    HeaderKeyNotStr,
    /// The header has no `message_id`.
    #[error("event header has no message_id")]
    MissingMessageId,
    /// An id is not a bin, str or integer.
    #[error("message_id/response_to must be bin, str or int")]
    BadMessageId,
    /// A known header key has a value of the wrong type.
    #[error("header key {0:?} has a value of the wrong type")]
    BadHeaderValue(String),
    /// The event name is not a msgpack str.
    #[error("event name is not a string")]
    NameNotStr,
    /// A string is not valid UTF-8.
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// The reserved marker 0xc1 appeared.
    #[error("reserved msgpack marker 0xc1")]
    ReservedMarker,
}
