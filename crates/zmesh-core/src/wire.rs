//! Provides the zerorpc v3 wire codec of [`zmesh_proto::wire`] under its historical path,
//! plus the one thing that needs the socket library: turning frames into a `ZmqMessage`.

use bytes::Bytes;
use zeromq::ZmqMessage;

pub use zmesh_proto::wire::*;

/// Joins a route, the empty delimiter and an event into one message ready to send.
pub fn join_frames(route: &[Bytes], event: Bytes) -> ZmqMessage {
    // The frames are never empty (the event is last), so the conversion cannot fail; fall
    // back to an empty message rather than panic all the same.
    ZmqMessage::try_from(join_route(route, event))
        .unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}

/// The bytes a message's frames carry, for byte bounds on queues.
pub fn message_len(message: &ZmqMessage) -> usize {
    message.iter().map(Bytes::len).sum()
}
