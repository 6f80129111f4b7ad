//! Provides the framing of a published event, pure: `[topic, event]` with the zerorpc event
//! `[header, name, args]` in the last frame, and a decoder for what a SUB socket receives
//! (zmesh's two frames, or a stock zerorpc publisher's single frame) that never panics on
//! peer bytes.

use std::ops::Range;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use zeromq::ZmqMessage;

use super::keys;
use crate::wire::msgpack::{self, Cursor};
use crate::wire::{self, DecodeError, MessageId};

/// Encodes an event: header with a fresh `message_id`, `v`, the zmesh marker, the publisher
/// id and (unless `None`) the sequence number; name = `topic`; args = `[payload]`, where
/// `payload` is one encoded msgpack value. Returns the event and where the payload sits in it.
pub(super) fn encode_event(
    publisher: &str,
    topic: &str,
    seq: Option<u64>,
    payload: &[u8],
) -> (Bytes, Range<usize>) {
    let id = MessageId::generate();
    let mut out = Vec::with_capacity(96 + publisher.len() + topic.len() + payload.len());
    out.push(0x93);
    msgpack::write_map_len(&mut out, 4 + usize::from(seq.is_some()));
    msgpack::write_str(&mut out, wire::keys::MESSAGE_ID);
    out.extend_from_slice(id.encoded());
    msgpack::write_str(&mut out, wire::keys::VERSION);
    msgpack::write_uint(&mut out, wire::PROTOCOL_VERSION);
    msgpack::write_str(&mut out, wire::keys::ZMESH);
    msgpack::write_uint(&mut out, wire::ZMESH_EXTENSION_VERSION);
    msgpack::write_str(&mut out, keys::PUBLISHER);
    msgpack::write_str(&mut out, publisher);
    if let Some(seq) = seq {
        msgpack::write_str(&mut out, keys::SEQ);
        msgpack::write_uint(&mut out, seq);
    }
    msgpack::write_str(&mut out, topic);
    out.push(0x91);
    let start = out.len();
    out.extend_from_slice(payload);
    let end = out.len();
    (Bytes::from(out), start..end)
}

/// The two frames on the wire: the topic (what SUB prefix filtering matches) and the event.
pub(super) fn frames(topic: &str, event: Bytes) -> ZmqMessage {
    let mut message = ZmqMessage::from(Bytes::copy_from_slice(topic.as_bytes()));
    message.push_back(event);
    message
}

/// Why a received message is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum IncomingError {
    /// More bytes than the configured limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    /// No frames, or more than two.
    #[error("message has {0} frames, expected 1 or 2")]
    FrameCount(usize),
    /// The topic frame is not UTF-8.
    #[error("topic frame is not UTF-8")]
    TopicNotUtf8,
    /// The event frame is not a zerorpc event.
    #[error("event frame: {0}")]
    Event(#[from] DecodeError),
    /// Bytes follow the event.
    #[error("trailing bytes after the event")]
    Trailing,
}

/// A received event, still encoded where that saves work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Incoming {
    /// The topic frame, or the event name for a single-frame event.
    pub(super) topic: String,
    event: Bytes,
    publisher: Option<Range<usize>>,
    /// `zmesh_seq` from the header.
    pub(super) seq: Option<u64>,
    /// The args value (an array from every sender that follows zerorpc).
    pub(super) args: Bytes,
}

impl Incoming {
    /// `zmesh_pub` from the header.
    pub(super) fn publisher(&self) -> Option<&str> {
        let range = self.publisher.clone()?;
        std::str::from_utf8(self.event.get(range)?).ok()
    }
}

/// Decodes one SUB message: `[topic, event]` from zmesh, `[event]` from stock zerorpc.
pub(super) fn decode(frames: Vec<Bytes>, max_size: usize) -> Result<Incoming, IncomingError> {
    let size: usize = frames.iter().map(Bytes::len).sum();
    if size > max_size {
        return Err(IncomingError::TooLarge {
            size,
            limit: max_size,
        });
    }
    let (topic_frame, event) = match <[Bytes; 2]>::try_from(frames) {
        Ok([topic, event]) => (Some(topic), event),
        Err(frames) => match <[Bytes; 1]>::try_from(frames) {
            Ok([event]) => (None, event),
            Err(frames) => return Err(IncomingError::FrameCount(frames.len())),
        },
    };
    let mut c = Cursor::new(&event);
    match c.array_len()? {
        Some(3) => {}
        Some(n) => return Err(DecodeError::WrongEventArity(n).into()),
        None => return Err(DecodeError::NotAnArray.into()),
    }
    let mut publisher = None;
    let mut seq = None;
    // zerorpc tolerates a header that is not a map (legacy peers); so do we.
    if let Some(entries) = c.map_len()? {
        for _ in 0..entries {
            let key = c.str()?.ok_or(DecodeError::HeaderKeyNotStr)?;
            match key {
                keys::PUBLISHER => {
                    let value = c.str()?.ok_or_else(|| bad(key))?;
                    // The range covers the text only, not the str marker before it.
                    let end = c.position();
                    publisher = Some(end - value.len()..end);
                }
                keys::SEQ => seq = Some(c.uint()?.ok_or_else(|| bad(key))?),
                _ => {
                    c.value()?;
                }
            }
        }
    } else {
        c.value()?;
    }
    let name = c.str()?.ok_or(DecodeError::NameNotStr)?;
    let topic = match &topic_frame {
        Some(frame) => std::str::from_utf8(frame)
            .map_err(|_| IncomingError::TopicNotUtf8)?
            .to_owned(),
        None => name.to_owned(),
    };
    let start = c.position();
    c.value()?;
    let end = c.position();
    if end != event.len() {
        return Err(IncomingError::Trailing);
    }
    Ok(Incoming {
        topic,
        args: event.slice(start..end),
        event,
        publisher,
        seq,
    })
}

fn bad(key: &str) -> DecodeError {
    DecodeError::BadHeaderValue(key.to_owned())
}

/// Decodes an event's payload: the only element of a one-element args array (what zmesh
/// publishes, and a stock publisher's one-argument call), or else the whole args array (a
/// stock publisher's call with several arguments, decoded as a tuple).
pub(super) fn decode_payload<T: DeserializeOwned>(args: &[u8]) -> Result<T, String> {
    let mut c = Cursor::new(args);
    let body = match c.array_len() {
        Ok(Some(1)) => &args[c.position()..],
        _ => args,
    };
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    de.set_max_depth(wire::MAX_VALUE_DEPTH);
    T::deserialize(&mut de).map_err(|e| e.to_string())
}

/// Encodes a payload the way Python peers expect it (structs as maps).
pub(super) fn encode_payload<T: serde::Serialize + ?Sized>(payload: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload<T: serde::Serialize>(v: &T) -> Vec<u8> {
        encode_payload(v).expect("encodes")
    }

    #[test]
    fn round_trip_two_frames() {
        let (event, range) = encode_event("p1", "orders.created", Some(7), &payload(&("x", 3)));
        assert_eq!(&event[range], &payload(&("x", 3))[..]);
        let message = frames("orders.created", event.clone());
        let incoming = decode(message.into_vec(), 1 << 20).expect("decodes");
        assert_eq!(incoming.topic, "orders.created");
        assert_eq!(incoming.publisher(), Some("p1"));
        assert_eq!(incoming.seq, Some(7));
        let back: (String, u32) = decode_payload(&incoming.args).expect("payload");
        assert_eq!(back, ("x".to_owned(), 3));
        // It is a valid zerorpc event with the zmesh marker, named after the topic.
        let ev = wire::decode_event(&event).expect("zerorpc event");
        assert_eq!(ev.name, "orders.created");
        assert!(ev.header.is_zmesh());
        assert_eq!(ev.header.version, Some(3));
    }

    #[test]
    fn stock_single_frame_event_uses_the_name_as_topic() {
        // What zerorpc.Publisher().greet("hi", 2) sends: one frame, args ["hi", 2].
        let header = wire::Header {
            zmesh: None,
            ..wire::Header::zmesh(None)
        };
        let event = wire::encode_event(&header, "greet", &payload(&("hi", 2)));
        let incoming = decode(vec![event], 1 << 20).expect("decodes");
        assert_eq!(incoming.topic, "greet");
        assert_eq!((incoming.publisher(), incoming.seq), (None, None));
        let args: (String, u8) = decode_payload(&incoming.args).expect("tuple");
        assert_eq!(args, ("hi".to_owned(), 2));
        // A one-argument call decodes as that argument.
        let event = wire::encode_event(&header, "greet", &payload(&("hi",)));
        let incoming = decode(vec![event], 1 << 20).expect("decodes");
        assert_eq!(
            decode_payload::<String>(&incoming.args),
            Ok("hi".to_owned())
        );
    }

    #[test]
    fn bad_messages_are_errors() {
        let (event, _) = encode_event("p", "t", Some(1), &payload(&1));
        assert_eq!(decode(vec![], 100), Err(IncomingError::FrameCount(0)));
        assert_eq!(
            decode(vec![Bytes::new(), Bytes::new(), event.clone()], 1000),
            Err(IncomingError::FrameCount(3))
        );
        assert!(matches!(
            decode(vec![Bytes::from_static(b"t"), event.clone()], 10),
            Err(IncomingError::TooLarge { .. })
        ));
        assert_eq!(
            decode(vec![Bytes::from_static(&[0xff]), event.clone()], 1000),
            Err(IncomingError::TopicNotUtf8)
        );
        assert!(matches!(
            decode(
                vec![Bytes::from_static(b"t"), Bytes::from_static(b"garbage")],
                1000
            ),
            Err(IncomingError::Event(_))
        ));
        let mut trailing = event.to_vec();
        trailing.push(0);
        assert_eq!(
            decode(vec![Bytes::from_static(b"t"), Bytes::from(trailing)], 1000),
            Err(IncomingError::Trailing)
        );
        // A seq that is not an unsigned integer.
        let mut header = wire::Header::zmesh(None);
        header
            .extra
            .push((keys::SEQ.into(), Bytes::from_static(&[0xa1, b'x'])));
        let event = wire::encode_event(&header, "t", &[0x91, 0x01]);
        assert!(matches!(
            decode(vec![event], 1000),
            Err(IncomingError::Event(DecodeError::BadHeaderValue(_)))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(
            topic in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
            event in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let _ = decode(vec![Bytes::from(topic), Bytes::from(event.clone())], 1 << 20);
            let _ = decode(vec![Bytes::from(event.clone())], 1 << 20);
            let _ = decode_payload::<rmpv::Value>(&event);
        }
    }
}
