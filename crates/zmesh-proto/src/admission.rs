//! Provides the admission of one message from a ROUTER, the rule node and device share:
//! its frames become a routing envelope within the size limit, then an event, or a typed
//! [`Refusal`] that says which counter it goes to and what, if anything, to answer.
//!
//! Admission is two steps because the mesh key sits between them, and what a keyed
//! receiver does there is its own: [`envelope`] takes the frames as received, the receiver
//! opens the event frame when it has a key, and [`decode`] takes the opened bytes. A
//! receiver without a key calls the two back to back, and refuses a sealed frame (which it
//! cannot open) with [`sealed_without_key`].

use bytes::Bytes;

use crate::error::ErrorKind;
use crate::wire::{self, DecodeError, Envelope, EventDecodeError, MessageId};

/// The stats counter a refusal is counted in; [`Counter::name`] is the field's name in
/// the node's and the device's stats alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// Messages that are not valid zerorpc events.
    Malformed,
    /// Messages over the size limit.
    Oversized,
    /// Messages refused for their mesh key, or for having one where none is taken.
    Unauthenticated,
}

impl Counter {
    /// The stats field this counter is reported as.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Malformed => "malformed",
            Counter::Oversized => "oversized",
            Counter::Unauthenticated => "unauthenticated",
        }
    }
}

/// Why a message was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No frames, or no routing envelope in front of the event (a ROUTER always puts the
    /// connection's identity first, so this is a broken peer or socket).
    #[error("message has no routing envelope")]
    Unrouted,
    /// The event frame is over the size limit; it was not decoded beyond its header.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// The event frame's size.
        size: usize,
        /// The receiver's `max_message_size`.
        limit: usize,
        /// The request to answer, when the frame is a readable request header.
        request: Option<MessageId>,
    },
    /// The event frame is not a valid zerorpc event.
    #[error("{error}")]
    Malformed {
        /// What is wrong with it.
        error: DecodeError,
        /// The request to answer, when decoding got as far as a request's header.
        request: Option<MessageId>,
    },
    /// A frame sealed with a mesh key reached a receiver that has none: a keyed client
    /// pointed at a plain endpoint. Answered (unsealed, which a keyed client accepts for
    /// this kind) so that the client learns why at once instead of at its deadline.
    #[error("this endpoint takes no mesh key")]
    SealedWithoutKey {
        /// The request to answer: the sealed frame's clear id, when it carries one.
        request: Option<MessageId>,
    },
}

/// The `ERR` a refusal is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The request it answers (`response_to`).
    pub request: &'a MessageId,
    /// The error's name.
    pub kind: ErrorKind,
    /// The error's message.
    pub message: String,
}

impl Refusal {
    /// The one counter this refusal is counted in.
    pub fn counter(&self) -> Counter {
        match self {
            Refusal::Unrouted | Refusal::Malformed { .. } => Counter::Malformed,
            Refusal::Oversized { .. } => Counter::Oversized,
            Refusal::SealedWithoutKey { .. } => Counter::Unauthenticated,
        }
    }

    /// The `ERR` to answer, when the message is an addressable request: an event that
    /// continues a call (a heartbeat, a cancel) is never answered, nor is anything whose
    /// header cannot be read.
    pub fn answer(&self) -> Option<Answer<'_>> {
        match self {
            Refusal::Unrouted => None,
            Refusal::Oversized { request, .. } => request.as_ref().map(|request| Answer {
                request,
                kind: ErrorKind::MessageTooLarge,
                message: self.to_string(),
            }),
            Refusal::Malformed { error, request } => request.as_ref().map(|request| Answer {
                request,
                kind: ErrorKind::ProtocolError,
                message: format!("malformed request: {error}"),
            }),
            Refusal::SealedWithoutKey { request } => request.as_ref().map(|request| Answer {
                request,
                kind: ErrorKind::Unauthenticated,
                message: self.to_string(),
            }),
        }
    }
}

/// First step: splits the frames into the routing envelope and the event frame, and checks
/// the event frame against `max_message_size`.
///
/// # Errors
/// [`Refusal::Unrouted`] without a routing envelope; [`Refusal::Oversized`], with the
/// envelope's route for the answer, over the limit.
pub fn envelope(
    frames: Vec<Bytes>,
    max_message_size: usize,
) -> Result<Envelope, (Refusal, Vec<Bytes>)> {
    let Some(envelope) = wire::split_frames(frames).filter(|e| !e.route.is_empty()) else {
        return Err((Refusal::Unrouted, Vec::new()));
    };
    let size = envelope.event.len();
    if size > max_message_size {
        let request = wire::decode_header(&envelope.event)
            .ok()
            .filter(|header| header.response_to.is_none())
            .map(|header| header.message_id);
        let refusal = Refusal::Oversized {
            size,
            limit: max_message_size,
            request,
        };
        return Err((refusal, envelope.route));
    }
    Ok(envelope)
}

/// Second step: decodes the (opened) event frame.
///
/// # Errors
/// [`Refusal::Malformed`] when it is not a valid zerorpc event.
pub fn decode(event: &Bytes) -> Result<wire::Event, Refusal> {
    wire::decode_event(event).map_err(|EventDecodeError { error, header }| Refusal::Malformed {
        error,
        request: header
            .filter(|header| header.response_to.is_none())
            .map(|header| header.message_id),
    })
}

/// The refusal of a sealed frame by a receiver without a mesh key. Telling a sealed frame
/// apart, and reading its clear id, is the envelope codec's (zmesh-core's `trust`); this is
/// what the receiver does about it: count it as unauthenticated and answer the request.
pub fn sealed_without_key(request: Option<MessageId>) -> Refusal {
    Refusal::SealedWithoutKey { request }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Header, names};

    fn request(id: &[u8], args: &[u8]) -> Bytes {
        let header = Header::zmesh_with_id(MessageId::from_bin(id), None);
        wire::encode_event(&header, "echo.upper", args)
    }

    fn frames(event: Bytes) -> Vec<Bytes> {
        vec![Bytes::from_static(b"peer"), Bytes::new(), event]
    }

    #[test]
    fn a_good_request_is_admitted() {
        let event = request(b"id", b"\x91\xa2hi");
        let envelope = envelope(frames(event.clone()), 1024).expect("within the limit");
        assert_eq!(envelope.route, vec![Bytes::from_static(b"peer")]);
        assert_eq!(envelope.event, event);
        let event = decode(&envelope.event).expect("a valid event");
        assert_eq!(event.name, "echo.upper");
        assert_eq!(event.header.message_id, MessageId::from_bin(b"id"));
        assert_eq!(&event.args[..], b"\x91\xa2hi");
    }

    #[test]
    fn exactly_the_limit_is_admitted_one_more_byte_is_oversized() {
        let event = request(b"id", b"\x90");
        let size = event.len();
        assert!(envelope(frames(event.clone()), size).is_ok());
        let (refusal, route) = envelope(frames(event), size - 1).expect_err("over the limit");
        assert_eq!(route, vec![Bytes::from_static(b"peer")]);
        assert_eq!(refusal.counter(), Counter::Oversized);
        assert_eq!(refusal.counter().name(), "oversized");
        let answer = refusal.answer().expect("the header is a request's");
        assert_eq!(answer.request, &MessageId::from_bin(b"id"));
        assert_eq!(answer.kind, ErrorKind::MessageTooLarge);
        assert_eq!(
            answer.message,
            format!(
                "message of {size} bytes exceeds the limit of {} bytes",
                size - 1
            )
        );
    }

    #[test]
    fn an_oversized_channel_event_or_garbage_is_not_answered() {
        let header = Header::zmesh(Some(MessageId::from_bin(b"call")));
        let heartbeat = wire::encode_event(&header, names::HEARTBEAT, wire::HEARTBEAT_ARGS);
        let (refusal, _) = envelope(frames(heartbeat), 1).expect_err("over the limit");
        assert_eq!(refusal.counter(), Counter::Oversized);
        assert_eq!(refusal.answer(), None);
        let (refusal, _) =
            envelope(frames(Bytes::from(vec![0xc1; 64])), 8).expect_err("over the limit");
        assert_eq!(refusal.counter(), Counter::Oversized);
        assert_eq!(refusal.answer(), None);
    }

    #[test]
    fn a_message_without_route_is_unrouted() {
        assert_eq!(
            envelope(Vec::new(), 1024),
            Err((Refusal::Unrouted, Vec::new()))
        );
        let (refusal, _) = envelope(vec![request(b"id", b"\x90")], 1024).expect_err("a bare event");
        assert_eq!(refusal, Refusal::Unrouted);
        assert_eq!(refusal.counter(), Counter::Malformed);
        assert_eq!(refusal.counter().name(), "malformed");
        assert_eq!(refusal.answer(), None);
    }

    #[test]
    fn truncated_msgpack_is_malformed_and_answered_when_the_header_was_read() {
        let event = request(b"id", b"\x92\xa2hi\xa2yo");
        // Cut inside the args: the header was read, so the request is answered.
        let cut = event.slice(..event.len() - 2);
        let refusal = decode(&cut).expect_err("truncated");
        assert!(matches!(
            refusal,
            Refusal::Malformed {
                error: DecodeError::Truncated,
                ..
            }
        ));
        assert_eq!(refusal.counter(), Counter::Malformed);
        let answer = refusal.answer().expect("answerable");
        assert_eq!(answer.request, &MessageId::from_bin(b"id"));
        assert_eq!(answer.kind, ErrorKind::ProtocolError);
        assert_eq!(answer.message, "malformed request: message is truncated");
        // Cut inside the header: nobody to answer.
        let refusal = decode(&event.slice(..3)).expect_err("truncated");
        assert_eq!(refusal.counter(), Counter::Malformed);
        assert_eq!(refusal.answer(), None);
    }

    #[test]
    fn wrong_event_shapes_are_malformed() {
        // Not an array, a two-element array, a name that is not a string.
        let not_array = Bytes::from_static(b"\x81\xa1a\x01");
        let refusal = decode(&not_array).expect_err("a map");
        assert_eq!(
            refusal,
            Refusal::Malformed {
                error: DecodeError::NotAnArray,
                request: None
            }
        );
        let two = Bytes::from_static(b"\x92\x80\xa1x");
        assert!(matches!(
            decode(&two),
            Err(Refusal::Malformed {
                error: DecodeError::WrongEventArity(2),
                request: None
            })
        ));
        let mut name_not_str = request(b"id", b"\x90").to_vec();
        // [header, name, args]: keep the array marker and the header, then an integer
        // where the name belongs and an empty args array.
        let header_len = name_not_str.len() - 1 - 1 - "echo.upper".len();
        name_not_str.truncate(header_len);
        name_not_str.extend_from_slice(b"\x07\x90");
        let refusal = decode(&Bytes::from(name_not_str)).expect_err("the name is an int");
        assert_eq!(
            refusal.answer().map(|a| a.message),
            Some("malformed request: event name is not a string".to_string())
        );
    }

    #[test]
    fn a_sealed_request_without_a_key_is_unauthenticated_and_answered() {
        let refusal = sealed_without_key(Some(MessageId::from_bin(b"id")));
        assert_eq!(refusal.counter(), Counter::Unauthenticated);
        assert_eq!(refusal.counter().name(), "unauthenticated");
        let answer = refusal.answer().expect("addressable by its clear id");
        assert_eq!(answer.request, &MessageId::from_bin(b"id"));
        assert_eq!(answer.kind, ErrorKind::Unauthenticated);
        assert!(
            answer.kind.is_trust_refusal(),
            "a keyed client takes it unsealed"
        );
        assert_eq!(answer.message, "this endpoint takes no mesh key");
        // A sealed channel event (no clear id) is counted, not answered.
        let refusal = sealed_without_key(None);
        assert_eq!(refusal.counter(), Counter::Unauthenticated);
        assert_eq!(refusal.answer(), None);
    }

    #[test]
    fn a_malformed_channel_event_is_not_answered() {
        let header = Header::zmesh(Some(MessageId::from_bin(b"call")));
        let mut event = wire::encode_event(&header, names::HEARTBEAT, b"\x90").to_vec();
        event.truncate(event.len() - 1);
        let refusal = decode(&Bytes::from(event)).expect_err("truncated");
        assert_eq!(refusal.counter(), Counter::Malformed);
        assert_eq!(refusal.answer(), None);
    }
}
