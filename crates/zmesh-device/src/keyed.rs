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
use zmesh_core::wire::{self, Header, worker as proto};

use crate::Side;
use crate::router::{Outbox, Outgoing, Router, Sent};

/// The event inside a received frame: opened with the key when the device has one.
///
/// # Errors
/// Why the frame is refused; hand it to [`refuse`].
pub(crate) fn open_event(
    trust: Option<&Trust>,
    side: Side,
    frame: &Bytes,
) -> Result<Bytes, Rejection> {
    let kind = match side {
        Side::Client => Kind::Request,
        Side::Worker => Kind::Reply,
    };
    match trust {
        Some(trust) => trust.open(frame, kind),
        None if trust::envelope::is_sealed(frame) => Err(Rejection::Unauthenticated(
            "message is sealed with a mesh key, but this device has none".to_owned(),
        )),
        None => Ok(frame.clone()),
    }
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
                    rejection.err_name(),
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

/// Seals the event frame of a message the router produced, unless `passthrough` and it is
/// already sealed (with one key on both sockets, a client's or worker's frame is forwarded
/// unchanged: it opened, so it is sealed). Without `passthrough` (a key on one socket only,
/// or a different key on each) the router only ever holds opened frames, so everything is
/// sealed here.
pub(crate) fn seal_outgoing(
    trust: &Trust,
    kind: Kind,
    passthrough: bool,
    message: ZmqMessage,
) -> ZmqMessage {
    let mut frames = message.into_vec();
    if let Some(event) = frames.pop() {
        let sealed = if passthrough && trust::envelope::is_sealed(&event) {
            event
        } else {
            trust.seal(kind, &event, &[])
        };
        frames.push(sealed);
    }
    // Never empty: the frames came out of a message.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}
