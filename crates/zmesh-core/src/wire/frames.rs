//! Provides the multipart framing around an event: the identity envelope, the empty
//! delimiter and the event in the last frame, split and joined the way zerorpc does it.

use bytes::Bytes;
use zeromq::ZmqMessage;

/// A received multipart message split into its routing envelope and its event frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Routing frames to echo in front of the delimiter on reply (the ROUTER identity first).
    pub route: Vec<Bytes>,
    /// The msgpack event: always the last frame.
    pub event: Bytes,
}

/// Splits frames as zerorpc does: the event is the last frame; with three or more frames
/// everything but the last two is the envelope (the second-to-last is the delimiter, which
/// is not checked); with exactly two, the first is the envelope, which accepts a ROUTER
/// request whose sender left out the delimiter. `None` for a message with no frames.
pub fn split_frames(mut frames: Vec<Bytes>) -> Option<Envelope> {
    let event = frames.pop()?;
    match frames.len() {
        0 | 1 => {}
        _ => {
            frames.pop();
        }
    }
    Some(Envelope {
        route: frames,
        event,
    })
}

/// Joins a route, the empty delimiter and an event into one message.
pub fn join_frames(route: &[Bytes], event: Bytes) -> ZmqMessage {
    let mut frames = Vec::with_capacity(route.len() + 2);
    frames.extend_from_slice(route);
    frames.push(Bytes::new());
    frames.push(event);
    // A non-empty Vec always converts; fall back to the bare event just in case.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}

/// The bytes a message's frames carry, for byte bounds on queues.
pub fn message_len(message: &ZmqMessage) -> usize {
    message.iter().map(Bytes::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn splits_router_request_with_delimiter() {
        let env = split_frames(vec![b("id"), b(""), b("ev")]).expect("has frames");
        assert_eq!(env.route, vec![b("id")]);
        assert_eq!(env.event, b("ev"));
    }

    #[test]
    fn accepts_missing_delimiter() {
        let env = split_frames(vec![b("id"), b("ev")]).expect("has frames");
        assert_eq!(env.route, vec![b("id")]);
    }

    #[test]
    fn keeps_multi_hop_envelopes() {
        let env = split_frames(vec![b("a"), b("b"), b(""), b("ev")]).expect("has frames");
        assert_eq!(env.route, vec![b("a"), b("b")]);
        let joined = join_frames(&env.route, env.event);
        assert_eq!(joined.into_vec(), vec![b("a"), b("b"), b(""), b("ev")]);
    }

    #[test]
    fn single_frame_has_no_route_and_empty_has_nothing() {
        assert_eq!(
            split_frames(vec![b("ev")]).expect("one frame").route,
            Vec::<Bytes>::new()
        );
        assert_eq!(split_frames(vec![]), None);
    }
}
