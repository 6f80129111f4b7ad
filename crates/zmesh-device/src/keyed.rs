//! Provides the device's side of the mesh key: opening what clients and workers send, so
//! the router can read it, and sealing what the device itself says.
//!
//! Design: the device opens each message only to read what routing needs (a request's
//! method and id, a reply's channel), with one replay guard for both sockets, and then
//! **forwards the original sealed frame unchanged**: a client's request goes to the worker
//! as the client sealed it (the worker opens it again with its own guard) and a worker's
//! reply goes to the client as the worker sealed it. So the device never re-seals someone
//! else's message: end to end, the worker checks the client's seal and the client the
//! worker's, and a frame replayed to the device is caught at the device. Only what the
//! device says itself (heartbeats, its own `ERR`s and `OK`s, cancels it makes, the worker
//! protocol's control events) is sealed by the device: toward clients as replies, toward
//! workers as requests, the directions a node and a client use.
//!
//! Refusals go out unsealed, as a node's do: `ERR Unauthenticated` / `ERR Replayed` to a
//! client request that can be addressed (see [`zmesh_core::trust::refused_request`]), and a
//! `_zmesh_device_refused` control event to a worker whose message was refused (it is not
//! registered and gets no request).
//!
//! With a key on the backend only (`DeviceBuilder::backend_key`), or a different key on each
//! socket, forwarding unchanged is impossible (the other side could not open the frame): the
//! device opens what it receives on a keyed socket and seals what it forwards for the other
//! one (a request when it dispatches it, so a re-dispatched one is sealed afresh; a reply as
//! a node would). Workers then check the device's seal, not the client's.
//!
//! One consequence of forwarding unchanged: a request re-dispatched (its worker was lost)
//! or queued for longer than the key's replay window reaches its worker sealed at the
//! client's send time; a worker refuses one older than the window (`ERR Replayed`).

use bytes::Bytes;
use zeromq::ZmqMessage;
use zmesh_core::trust::{self, Kind, Rejection, Trust};
use zmesh_core::wire::{self, Header, names, worker as proto};

use crate::Side;
use crate::router::{Outbox, Outgoing, Router, Sent};

/// The event inside a received frame, with its reply number: opened with the key when the
/// device has one.
///
/// # Errors
/// Why the frame is refused; hand it to [`refuse`].
pub(crate) fn open_event(
    trust: Option<&Trust>,
    side: Side,
    frame: &Bytes,
) -> Result<(Bytes, Option<u32>), Rejection> {
    let kind = match side {
        Side::Client => Kind::Request,
        Side::Worker => Kind::Reply,
    };
    match trust {
        Some(trust) => trust
            .open_detailed(frame, kind)
            .map(|opened| (opened.event, opened.seq))
            .map_err(|refusal| refusal.rejection),
        None if trust::envelope::is_sealed(frame) => Err(Rejection::Unauthenticated(
            "message is sealed with a mesh key, but this device has none".to_owned(),
        )),
        None => Ok((frame.clone(), None)),
    }
}

/// A worker's opened reply sealed afresh for a keyed frontend whose key is not the
/// backend's, keeping the reply's number within its call (a keyed client checks it).
pub(crate) fn reseal_reply(front: &Trust, event: &Bytes, seq: Option<u32>) -> Bytes {
    front.seal_reply(event, seq)
}

/// Counts a refused message, logs it (rate-limited) and queues the refusal in `out` (to a
/// client, within its connection's refusal rate).
pub(crate) fn refuse(
    router: &mut Router,
    side: Side,
    envelope: &wire::Envelope,
    rejection: &Rejection,
    now: std::time::Instant,
    out: &mut Outbox,
) {
    let frame = &envelope.event;
    let refused = router.count_refused(matches!(rejection, Rejection::Replayed(_)));
    // Rate-limited: every refusal at debug, a warning at 1, 2, 4, 8, ... refusals.
    if refused.is_power_of_two() {
        tracing::warn!(side = ?side, %rejection, refused, "refusing a message (mesh key)");
    } else {
        tracing::debug!(side = ?side, %rejection, "refusing a message (mesh key)");
    }
    match side {
        Side::Client => {
            if let Some(request) = trust::refused_request(frame) {
                let message = rejection.to_string();
                router.refuse_request(
                    &envelope.route,
                    &request,
                    rejection.kind(),
                    &message,
                    false,
                    now,
                    out,
                );
            }
        }
        // Only the worker's own control events (`[worker_id]` route) are answered: a reply
        // for a client cannot be handed to anyone.
        Side::Worker if envelope.route.len() == 1 => {
            let reason = format!("{}: {rejection}", rejection.err_name());
            let args = rmp_serde::to_vec(&(reason,)).unwrap_or_default();
            let event = wire::encode_event(&Header::zmesh(None), proto::REFUSED, &args);
            out.unsealed_backend.push(Outgoing {
                what: Sent::Control,
                message: wire::join_frames(&envelope.route, event),
            });
        }
        Side::Worker => {}
    }
}

/// Seals the event frame of a message the router produced, unless it is sealed for this
/// side already: with one key on both sockets (`passthrough`) a client's or worker's frame
/// is forwarded unchanged (it opened, so it is sealed); without it, a worker's reply was
/// sealed afresh for the frontend when it arrived ([`reseal_reply`]), keeping its number.
///
/// A keyed client takes an `OK` only with its number in the call (see
/// [`Trust::seal_reply`]). The device's own `OK`s (built-ins it answers) are always a
/// call's first and only reply, number 0; its `ERR`s (`NameError`, `Overloaded`, a worker
/// lost mid-stream) and heartbeats go unnumbered, which a client accepts wherever they
/// come because an `ERR` fails the call anyway.
pub(crate) fn seal_outgoing(
    trust: &Trust,
    kind: Kind,
    passthrough: bool,
    message: ZmqMessage,
) -> ZmqMessage {
    let mut frames = message.into_vec();
    if let Some(event) = frames.pop() {
        let sealed = if (passthrough || kind == Kind::Reply) && trust::envelope::is_sealed(&event) {
            event
        } else if kind == Kind::Reply {
            let first_and_only = wire::decode_reply(&event)
                .is_ok_and(|e| e.name.as_ref() == names::OK)
                .then_some(0);
            trust.seal_reply(&event, first_and_only)
        } else {
            trust.seal(kind, &event, &[])
        };
        frames.push(sealed);
    }
    // Never empty: the frames came out of a message.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}
