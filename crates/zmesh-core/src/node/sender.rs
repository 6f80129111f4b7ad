//! Provides the node's send side over either socket it can serve from: the ROUTER it binds,
//! or the DEALER a worker connects to its proxy device (replaced on every reconnect). Both
//! carry the same `[route.., "", event]` messages, so the dispatcher does not care which.
//! With a mesh key, the send side also seals each event frame, except to the connections of
//! endpoints that allow plain zerorpc (see [`Keyed`]).
//! A third, socket-free variant collects messages for the node's fuzzing harness.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use zeromq::{
    DealerSendHalf, RouterSendHalf, SocketSend, TrySendError, ZmqError, ZmqMessage, ZmqResult,
};

use crate::trust::{KeySlot, Kind, Trust};

/// Where a node's replies, stream items and heartbeats go. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Sender {
    /// A bound ROUTER: the route's first frame picks the client connection.
    Router(RouterSendHalf),
    /// A worker's DEALER to its device: the route is the client's envelope, which the device
    /// uses to pass the event on.
    Worker(Arc<WorkerOutlet>),
    /// A node with a mesh key: a ROUTER on its keyed endpoints and, when it has any, one on
    /// its plain endpoints.
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
            Self::Keyed { keyed, plain, .. } => {
                if seal == Seal::Never
                    || (plain.is_some() && message.get(0).is_some_and(|p| keyed.is_plain_peer(p)))
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
        if let Some(event) = frames.pop() {
            // `[client_id, .., "", event]`; a worker's control events are `["", event]`.
            let slot = keyed.reply_slot(frames.first().filter(|f| !f.is_empty()));
            frames.push(keyed.trust.seal_with(slot, Kind::Reply, &event, &[]));
        }
        to_message(frames)
    }

    /// Closes the client connection `peer` (one that keeps sending garbage).
    pub(crate) fn disconnect(&self, peer: &Bytes) {
        // Wired to the socket by the ZMTP-limits change; until then the connection stays
        // open and only its refusals are suppressed.
        tracing::debug!(peer_len = peer.len(), "disconnect requested");
    }

    /// [`Sender::try_send`] of a message already through [`Sender::seal`].
    pub(crate) fn try_send_sealed(&self, message: ZmqMessage) -> Result<(), TrySendError> {
        match self {
            Self::Router(router) => router.try_send(message),
            Self::Worker(outlet) => outlet.try_send(message),
            Self::Keyed {
                sealed,
                plain,
                keyed,
            } => keyed_socket(sealed, plain, keyed, &message).try_send(message),
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
            Self::Keyed {
                sealed,
                plain,
                keyed,
            } => {
                let mut socket = keyed_socket(sealed, plain, keyed, &message).clone();
                socket.send(message).await
            }
            Self::Capture(out) => out
                .send(message)
                .map_err(|_| ZmqError::Other("capture receiver dropped")),
        }
    }
}

/// A keyed node's socket for `message`: the plain one for its plain-endpoint peers.
fn keyed_socket<'a>(
    sealed: &'a RouterSendHalf,
    plain: &'a Option<RouterSendHalf>,
    keyed: &Keyed,
    message: &ZmqMessage,
) -> &'a RouterSendHalf {
    // The plain-peer set (a lock) is consulted only when plain endpoints exist.
    match plain {
        Some(plain) if message.get(0).is_some_and(|p| keyed.is_plain_peer(p)) => plain,
        _ => sealed,
    }
}

fn to_message(frames: Vec<Bytes>) -> ZmqMessage {
    // Never empty here: the frames came out of a message.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}

/// A keyed node's trust state: the key (with the receive side's replay guard) and the
/// connections that came in on a plain endpoint, whose replies go out unsealed on the
/// plain socket.
#[derive(Debug)]
pub(crate) struct Keyed {
    pub(crate) trust: Trust,
    plain_peers: Mutex<HashSet<Bytes>>,
    /// Connections whose last message used the previous key (rotation): they get replies
    /// sealed with it while its grace lasts.
    previous_peers: Mutex<HashSet<Bytes>>,
}

impl Keyed {
    pub(crate) fn new(trust: Trust) -> Self {
        Self {
            trust,
            plain_peers: Mutex::new(HashSet::new()),
            previous_peers: Mutex::new(HashSet::new()),
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

    fn peers(&self) -> std::sync::MutexGuard<'_, HashSet<Bytes>> {
        lock(&self.plain_peers)
    }

    fn is_plain_peer(&self, peer: &Bytes) -> bool {
        self.peers().contains(peer)
    }

    /// Records a connection of a plain endpoint (called for each of its messages).
    pub(crate) fn note_plain_peer(&self, peer: &Bytes) {
        let mut peers = self.peers();
        if !peers.contains(peer) {
            peers.insert(peer.clone());
        }
    }

    /// Forgets a connection when it closes.
    pub(crate) fn forget_peer(&self, peer: &Bytes) {
        self.peers().remove(peer);
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
