//! Provides the multipart framing around an event: the identity envelope, the empty
//! delimiter and the event in the last frame, split and joined the way zerorpc does it.
//! Frames are plain `Bytes`; turning them into a socket library's message type is the
//! caller's business (zmesh-core's `wire::join_frames`).

use bytes::Bytes;

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

/// Joins a route, the empty delimiter and an event into the frames of one message: the
/// inverse of [`split_frames`]. Never empty (the event is always the last frame).
pub fn join_route(route: &[Bytes], event: Bytes) -> Vec<Bytes> {
    let mut frames = Vec::with_capacity(route.len() + 2);
    frames.extend_from_slice(route);
    frames.push(Bytes::new());
    frames.push(event);
    frames
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
        let joined = join_route(&env.route, env.event);
        assert_eq!(joined, vec![b("a"), b("b"), b(""), b("ev")]);
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
