//! Provides the node's send side over either socket it can serve from: the ROUTER it binds,
//! or the DEALER a worker connects to its proxy device (replaced on every reconnect). Both
//! carry the same `[route.., "", event]` messages, so the dispatcher does not care which.
//! With a mesh key, the send side also seals each event frame, except to the connections of
//! endpoints that allow plain zerorpc (see [`Keyed`]). [`Keyed::seal`] is the one place a
//! keyed node seals: replies numbered within their call are sealed by the dispatcher with it
//! (it knows each reply's place), everything else here; frames that arrive sealed pass on.
//! A third, socket-free variant collects messages for the node's fuzzing harness.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSendHalf, RouterSendHalf, SocketSend, TrySendError, ZmqError, ZmqMessage, ZmqResult,
};

use crate::trust::{KeySlot, Trust, envelope};

/// Where a node's replies, stream items and heartbeats go. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Sender {
    /// A bound ROUTER: the route's first frame picks the client connection.
    Router(RouterSendHalf),
    /// A worker's DEALER to its device: the route is the client's envelope, which the device
    /// uses to pass the event on.
    Worker(Arc<WorkerOutlet>),
    /// A node with a mesh key: a ROUTER on its keyed endpoints and, when it has any, one on
    /// its plain endpoints. A route whose first frame is a [`plain_route_id`] goes to the
    /// plain ROUTER, any other to the keyed one.
    Keyed {
        sealed: RouterSendHalf,
        plain: Option<RouterSendHalf>,
        keyed: Arc<Keyed>,
    },
    /// No socket: messages are collected for inspection ([`super::harness`]).
    Capture(tokio::sync::mpsc::UnboundedSender<ZmqMessage>),
}

/// Whether a keyed sender seals an event frame. Refusals to peers without the key go out
/// plain: they could not open a sealed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seal {
    /// Seal where the socket is keyed (every reply, item and heartbeat).
    AsUsual,
    /// Never seal (the `ERR` that tells an unkeyed peer why it was refused).
    Never,
}

impl Sender {
    /// Sends from a task that may wait: a full client queue delays only this send.
    pub(crate) async fn send(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        let message = self.seal(message, Seal::AsUsual);
        self.send_sealed(message).await
    }

    /// Sends at once when that needs no waiting (the client has room in its queue, the
    /// usual case), with no future or allocation; otherwise hands the message back,
    /// already sealed, for [`Sender::send_sealed`] or to be dropped. Never waits.
    pub(crate) fn try_send(&self, message: ZmqMessage, seal: Seal) -> Result<(), TrySendError> {
        self.try_send_sealed(self.seal(message, seal))
    }

    /// Seals the event frame (the last) of `message` where this socket is keyed, with the
    /// key slot its client last used; a keyed node's plain-endpoint peers get it as is.
    pub(crate) fn seal(&self, message: ZmqMessage, seal: Seal) -> ZmqMessage {
        let keyed = match self {
            Self::Keyed { keyed, .. } => {
                // A plain-endpoint connection gets its replies as they are.
                if seal == Seal::Never
                    || message.get(0).is_some_and(|p| plain_identity(p).is_some())
                {
                    return message;
                }
                keyed
            }
            Self::Worker(outlet) => match &outlet.keyed {
                // The device, the only peer of this socket, holds the key and drops anything
                // unsealed, so a worker seals refusals too.
                Some(keyed) => keyed,
                None => return message,
            },
            Self::Router(_) | Self::Capture(_) => return message,
        };
        let mut frames = message.into_vec();
        keyed.seal_last(&mut frames);
        to_message(frames)
    }

    /// Closes the client connection `peer` (one that keeps sending garbage); true when it
    /// was open. A worker cannot: its clients are the device's connections, not its own.
    pub(crate) fn disconnect(&self, peer: &Bytes) -> bool {
        let close = |router: &RouterSendHalf, id: Bytes| {
            PeerIdentity::try_from(id).is_ok_and(|id| router.disconnect_peer(&id))
        };
        match self {
            Self::Router(router) => close(router, peer.clone()),
            Self::Keyed { sealed, plain, .. } => match (plain_identity(peer), plain) {
                (Some(identity), Some(plain)) => close(plain, identity),
                (Some(_), None) => false,
                (None, _) => close(sealed, peer.clone()),
            },
            Self::Worker(_) | Self::Capture(_) => false,
        }
    }

    /// [`Sender::try_send`] of a message already through [`Sender::seal`].
    pub(crate) fn try_send_sealed(&self, message: ZmqMessage) -> Result<(), TrySendError> {
        match self {
            Self::Router(router) => router.try_send(message),
            Self::Worker(outlet) => outlet.try_send(message),
            Self::Keyed { sealed, plain, .. } => match to_plain(message) {
                Ok(message) => match plain {
                    // Handed back as it came, with its plain route id, for `send_sealed`.
                    Some(plain) => plain.try_send(message).map_err(back_to_plain_route),
                    None => Err(TrySendError::Failed(ZmqError::Other(NO_PLAIN_ENDPOINT))),
                },
                Err(message) => sealed.try_send(message),
            },
            Self::Capture(out) => out
                .send(message)
                .map_err(|_| TrySendError::Failed(ZmqError::Other("capture receiver dropped"))),
        }
    }

    /// The async send of a message already through [`Sender::seal`].
    pub(crate) async fn send_sealed(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        match self {
            Self::Router(router) => router.send(message).await,
            Self::Worker(outlet) => outlet.send(message).await,
            Self::Keyed { sealed, plain, .. } => match to_plain(message) {
                Ok(message) => match plain {
                    Some(plain) => plain.send(message).await,
                    None => Err(ZmqError::Other(NO_PLAIN_ENDPOINT)),
                },
                Err(message) => sealed.send(message).await,
            },
            Self::Capture(out) => out
                .send(message)
                .map_err(|_| ZmqError::Other("capture receiver dropped")),
        }
    }

    /// The key a reply to `route` is sealed with, if it is sealed: not for a node without a
    /// key, nor for a connection of a keyed node's plain endpoint.
    pub(crate) fn sealer_for(&self, route: &[Bytes]) -> Option<Arc<Keyed>> {
        match self {
            Self::Keyed { keyed, .. } => route
                .first()
                .is_none_or(|id| plain_identity(id).is_none())
                .then(|| keyed.clone()),
            Self::Worker(outlet) => outlet.keyed.clone(),
            Self::Router(_) | Self::Capture(_) => None,
        }
    }
}

const NO_PLAIN_ENDPOINT: &str = "no plain endpoint for a plain route";

/// A message to a keyed node's plain-endpoint connection, with the connection's identity in
/// place of its plain route id (`Ok`); a message to a keyed connection as is (`Err`).
fn to_plain(message: ZmqMessage) -> Result<ZmqMessage, ZmqMessage> {
    match message.get(0).and_then(plain_identity) {
        Some(identity) => {
            let mut frames = message.into_vec();
            frames[0] = identity;
            Ok(to_message(frames))
        }
        None => Err(message),
    }
}

/// Puts the plain route id back into a message [`to_plain`] took it out of, when the plain
/// socket hands it back for a send that waits.
fn back_to_plain_route(error: TrySendError) -> TrySendError {
    match error {
        TrySendError::WouldBlock(message) => {
            let mut frames = message.into_vec();
            if let Some(identity) = frames.first_mut() {
                *identity = plain_route_id(identity);
            }
            TrySendError::WouldBlock(to_message(frames))
        }
        failed => failed,
    }
}

/// Marks the routes of a keyed node's plain endpoint: their first frame is the connection
/// identity behind this prefix. ZMTP identities are at most 255 bytes
/// ([`PeerIdentity::MAX_LENGTH`]), so a longer frame can only have been made here: the plain
/// and the keyed endpoint have separate identity namespaces, and a peer of the plain
/// endpoint that takes a keyed client's identity shares nothing with it (not its replies,
/// not its channels for heartbeats, credit and cancels).
const PLAIN_ROUTE_PREFIX: [u8; PeerIdentity::MAX_LENGTH + 1] = [0; PeerIdentity::MAX_LENGTH + 1];

/// The route id of a connection of a keyed node's plain endpoint (see [`PLAIN_ROUTE_PREFIX`]).
pub(crate) fn plain_route_id(identity: &[u8]) -> Bytes {
    let mut id = Vec::with_capacity(PLAIN_ROUTE_PREFIX.len() + identity.len());
    id.extend_from_slice(&PLAIN_ROUTE_PREFIX);
    id.extend_from_slice(identity);
    Bytes::from(id)
}

/// The plain endpoint's connection identity behind a [`plain_route_id`], if it is one.
pub(crate) fn plain_identity(route_id: &Bytes) -> Option<Bytes> {
    (route_id.len() > PLAIN_ROUTE_PREFIX.len() && route_id.starts_with(&PLAIN_ROUTE_PREFIX))
        .then(|| route_id.slice(PLAIN_ROUTE_PREFIX.len()..))
}

fn to_message(frames: Vec<Bytes>) -> ZmqMessage {
    // Never empty here: the frames came out of a message.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}

/// A keyed node's trust state: the key (with the receive side's replay guard) and the
/// connections that use the previous key during a rotation.
#[derive(Debug)]
pub(crate) struct Keyed {
    pub(crate) trust: Trust,
    /// Connections whose last message used the previous key (rotation): they get replies
    /// sealed with it while its grace lasts.
    previous_peers: Mutex<HashSet<Bytes>>,
}

impl Keyed {
    pub(crate) fn new(trust: Trust) -> Self {
        Self {
            trust,
            previous_peers: Mutex::new(HashSet::new()),
        }
    }

    /// Seals a reply event to the connection `peer` (the route's first frame): the one
    /// place a keyed node seals, in the key that connection uses (rotation), numbered
    /// within its call when `seq` is given (see [`Trust::seal_reply`]).
    pub(crate) fn seal(&self, peer: Option<&Bytes>, event: &[u8], seq: Option<u32>) -> Bytes {
        self.trust
            .seal_reply_with(self.reply_slot(peer), event, seq)
    }

    /// Seals the last frame of a message unnumbered, unless the dispatcher sealed it
    /// already (a numbered reply). `[client_id, "", event]` names the client whose key
    /// slot the reply follows; a worker's control events (`["", event]`) have none.
    fn seal_last(&self, frames: &mut Vec<Bytes>) {
        if let Some(event) = frames.pop() {
            let sealed = if envelope::is_sealed(&event) {
                event
            } else {
                self.seal(frames.first().filter(|f| !f.is_empty()), &event, None)
            };
            frames.push(sealed);
        }
    }

    /// Records which key a connection's message opened with (only when rotating keys).
    pub(crate) fn note_key_slot(&self, peer: &Bytes, slot: KeySlot) {
        if !self.trust.has_previous() {
            return;
        }
        let mut peers = lock(&self.previous_peers);
        match slot {
            KeySlot::Previous => {
                if !peers.contains(peer) {
                    peers.insert(peer.clone());
                }
            }
            KeySlot::Current => {
                peers.remove(peer);
            }
        }
    }

    fn reply_slot(&self, peer: Option<&Bytes>) -> KeySlot {
        match peer {
            Some(peer)
                if self.trust.has_previous() && lock(&self.previous_peers).contains(peer) =>
            {
                KeySlot::Previous
            }
            _ => KeySlot::Current,
        }
    }

    /// Forgets a connection when it closes.
    pub(crate) fn forget_peer(&self, peer: &Bytes) {
        if self.trust.has_previous() {
            lock(&self.previous_peers).remove(peer);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere while editing a set; it is still valid.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The send half of a worker's current link to its device.
///
/// Each link has its own lock, so a send stuck on a dead link (the `zeromq` DEALER blocks
/// when a peer stops reading) never holds up the link that replaces it. Sends that must not
/// wait go through a clone of the half that needs no lock.
#[derive(Default)]
pub(crate) struct WorkerOutlet {
    current: Mutex<Option<Arc<Link>>>,
    keyed: Option<Arc<Keyed>>,
}

/// One link's send half: a lock-free clone for `try_send`, and the locked one for sends
/// that wait (the async send takes `&mut`).
struct Link {
    now: DealerSendHalf,
    waiting: tokio::sync::Mutex<DealerSendHalf>,
}

impl WorkerOutlet {
    pub(crate) fn new(keyed: Option<Arc<Keyed>>) -> Self {
        Self {
            current: Mutex::new(None),
            keyed,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Link>>> {
        // Poisoning only means a panic elsewhere while swapping an Option; it is still valid.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Installs a new link (or none while reconnecting).
    pub(crate) fn set(&self, link: Option<DealerSendHalf>) {
        *self.slot() = link.map(|half| {
            Arc::new(Link {
                now: half.clone(),
                waiting: tokio::sync::Mutex::new(half),
            })
        });
    }

    fn try_send(&self, message: ZmqMessage) -> Result<(), TrySendError> {
        match self.slot().as_ref() {
            Some(link) => link.now.try_send(message),
            None => Err(TrySendError::Failed(ZmqError::Other(NOT_CONNECTED))),
        }
    }

    async fn send(&self, message: ZmqMessage) -> ZmqResult<()> {
        let link = self.slot().clone();
        match link {
            Some(link) => link.waiting.lock().await.send(message).await,
            None => Err(ZmqError::Other(NOT_CONNECTED)),
        }
    }
}

const NOT_CONNECTED: &str = "worker is not connected to its device";
