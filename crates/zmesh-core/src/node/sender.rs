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

impl Sender {
    pub(crate) async fn send(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        match self {
            Self::Router(router) => router.send(message).await,
            Self::Worker(outlet) => outlet.send(message).await,
            Self::Keyed {
                sealed,
                plain,
                keyed,
            } => {
                let mut frames = message.into_vec();
                // The plain-peer set (a lock) is consulted only when plain endpoints exist.
                let plain = plain
                    .as_mut()
                    .filter(|_| frames.first().is_some_and(|peer| keyed.is_plain_peer(peer)));
                match plain {
                    Some(plain) => plain.send(to_message(frames)).await,
                    _ => {
                        if let Some(event) = frames.pop() {
                            let slot = keyed.reply_slot(frames.first());
                            frames.push(keyed.trust.seal_with(slot, Kind::Reply, &event, &[]));
                        }
                        sealed.send(to_message(frames)).await
                    }
                }
            }
            Self::Capture(out) => out
                .send(message)
                .map_err(|_| ZmqError::Other("capture receiver dropped")),
        }
    }

    /// Sends at once when that needs no waiting (a bound ROUTER whose client has room in its
    /// queue, the usual case), with no future or allocation; otherwise hands the message back
    /// unchanged for [`Sender::send`]. Keyed and worker senders always take that path.
    pub(crate) fn try_send(&self, message: ZmqMessage) -> Result<(), TrySendError> {
        match self {
            Self::Router(router) => router.try_send(message),
            Self::Capture(out) => out
                .send(message)
                .map_err(|_| TrySendError::Failed(ZmqError::Other("capture receiver dropped"))),
            Self::Worker(_) | Self::Keyed { .. } => Err(TrySendError::WouldBlock(message)),
        }
    }

    /// Sends without sealing: the `ERR` that tells a peer without the key why it was
    /// refused (it could not open a sealed one).
    pub(crate) async fn send_unsealed(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        match self {
            Self::Keyed { sealed, .. } => sealed.send(message).await,
            other => other.send(message).await,
        }
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
/// when a peer stops reading) never holds up the link that replaces it.
///
/// With a mesh key every event frame is sealed as a reply, refusals included: the device,
/// the only peer of this socket, holds the key and drops anything unsealed.
#[derive(Default)]
pub(crate) struct WorkerOutlet {
    current: Mutex<Option<Arc<tokio::sync::Mutex<DealerSendHalf>>>>,
    keyed: Option<Arc<Keyed>>,
}

impl WorkerOutlet {
    pub(crate) fn new(keyed: Option<Arc<Keyed>>) -> Self {
        Self {
            current: Mutex::new(None),
            keyed,
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<tokio::sync::Mutex<DealerSendHalf>>>> {
        // Poisoning only means a panic elsewhere while swapping an Option; it is still valid.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Installs a new link (or none while reconnecting).
    pub(crate) fn set(&self, link: Option<DealerSendHalf>) {
        *self.slot() = link.map(|half| Arc::new(tokio::sync::Mutex::new(half)));
    }

    async fn send(&self, message: ZmqMessage) -> ZmqResult<()> {
        let message = match &self.keyed {
            None => message,
            Some(keyed) => {
                let mut frames = message.into_vec();
                if let Some(event) = frames.pop() {
                    // `[client_id, "", event]`: the first frame names the client whose key
                    // slot (rotation) the reply follows; `["", event]` is control.
                    let slot = keyed.reply_slot(frames.first().filter(|f| !f.is_empty()));
                    frames.push(keyed.trust.seal_with(slot, Kind::Reply, &event, &[]));
                }
                to_message(frames)
            }
        };
        let link = self.slot().clone();
        match link {
            Some(link) => link.lock().await.send(message).await,
            None => Err(ZmqError::Other("worker is not connected to its device")),
        }
    }
}
