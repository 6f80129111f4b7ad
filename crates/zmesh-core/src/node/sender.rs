//! Provides the node's send side over either socket it can serve from: the ROUTER it binds,
//! or the DEALER a worker connects to its proxy device (replaced on every reconnect). Both
//! carry the same `[route.., "", event]` messages, so the dispatcher does not care which.
//! A third, socket-free variant collects messages for the node's fuzzing harness.

use std::sync::{Arc, Mutex};

use zeromq::{DealerSendHalf, RouterSendHalf, SocketSend, ZmqError, ZmqMessage, ZmqResult};

/// Where a node's replies, stream items and heartbeats go. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Sender {
    /// A bound ROUTER: the route's first frame picks the client connection.
    Router(RouterSendHalf),
    /// A worker's DEALER to its device: the route is the client's envelope, which the device
    /// uses to pass the event on.
    Worker(Arc<WorkerOutlet>),
    /// No socket: messages are collected for inspection ([`super::harness`]).
    Capture(tokio::sync::mpsc::UnboundedSender<ZmqMessage>),
}

impl Sender {
    pub(crate) async fn send(&mut self, message: ZmqMessage) -> ZmqResult<()> {
        match self {
            Self::Router(router) => router.send(message).await,
            Self::Worker(outlet) => outlet.send(message).await,
            Self::Capture(out) => out
                .send(message)
                .map_err(|_| ZmqError::Other("capture receiver dropped")),
        }
    }
}

/// The send half of a worker's current link to its device.
///
/// Each link has its own lock, so a send stuck on a dead link (the `zeromq` DEALER blocks
/// when a peer stops reading) never holds up the link that replaces it.
#[derive(Default)]
pub(crate) struct WorkerOutlet {
    current: Mutex<Option<Arc<tokio::sync::Mutex<DealerSendHalf>>>>,
}

impl WorkerOutlet {
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
        let link = self.slot().clone();
        match link {
            Some(link) => link.lock().await.send(message).await,
            None => Err(ZmqError::Other("worker is not connected to its device")),
        }
    }
}
