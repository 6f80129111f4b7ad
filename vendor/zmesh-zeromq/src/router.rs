use crate::backend::GenericSocketBackend;
use crate::codec::*;
use crate::endpoint::Endpoint;
use crate::error::{TrySendError, ZmqError, ZmqResult};
use crate::fair_queue::FairQueue;
use crate::message::*;
use crate::transport::AcceptStopHandle;
use crate::util::PeerIdentity;
use crate::{MultiPeerBackend, SocketEvent, SocketOptions, SocketRecv, SocketSend, SocketType};
use crate::{Socket, SocketBackend};

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::StreamExt;

use std::collections::HashMap;
use std::convert::TryInto;
use std::sync::Arc;

pub struct RouterSocket {
    backend: Arc<GenericSocketBackend>,
    binds: HashMap<Endpoint, AcceptStopHandle>,
    fair_queue: FairQueue<ZmqFramedRead, PeerIdentity>,
}

impl Drop for RouterSocket {
    fn drop(&mut self) {
        self.backend.shutdown();
    }
}

#[async_trait]
impl Socket for RouterSocket {
    fn with_options(options: SocketOptions) -> Self {
        let mut fair_queue = FairQueue::new(true);
        let backend = Arc::new(GenericSocketBackend::with_options(
            Some(fair_queue.inner()),
            SocketType::ROUTER,
            options,
        ));

        let backend_weak = Arc::downgrade(&backend);
        fair_queue.set_on_disconnect(move |peer_id: PeerIdentity| {
            if let Some(backend) = backend_weak.upgrade() {
                backend.peer_disconnected(&peer_id);
            }
        });

        Self {
            backend,
            binds: HashMap::new(),
            fair_queue,
        }
    }

    fn backend(&self) -> Arc<dyn MultiPeerBackend> {
        self.backend.clone()
    }

    fn binds(&mut self) -> &mut HashMap<Endpoint, AcceptStopHandle> {
        &mut self.binds
    }

    fn monitor(&mut self) -> mpsc::Receiver<SocketEvent> {
        let (sender, receiver) = mpsc::channel(1024);
        self.backend.socket_monitor.lock().replace(sender);
        receiver
    }
}

#[async_trait]
impl SocketRecv for RouterSocket {
    async fn recv(&mut self) -> ZmqResult<ZmqMessage> {
        loop {
            match self.fair_queue.next().await {
                Some((peer_id, Ok(Message::Message(mut message)))) => {
                    message.push_front(peer_id.into());
                    return Ok(message);
                }
                Some((_peer_id, Ok(_msg))) => {
                    // todo: Log or handle other message types if needed
                    // We could take an approach of using `tracing` and have that be an optional feature
                    // tracing::warn!("Received unimplemented message type: {:?}", msg);
                }
                Some((peer_id, Err(_e))) => {
                    // zmesh patch: a read error (a broken limit among them) closes the
                    // connection both ways at once.
                    self.backend.peer_failed(&peer_id);
                    // We could take an approach of using `tracing` and have that be an optional feature
                    // tracing::error!("Error receiving message from peer {}: {:?}", peer_id, e);
                }
                None => {
                    // The fair queue is empty, which shouldn't happen in normal operation
                    return Err(ZmqError::NoMessage);
                }
            };
        }
    }
}

#[async_trait]
impl SocketSend for RouterSocket {
    async fn send(&mut self, mut message: ZmqMessage) -> ZmqResult<()> {
        if message.len() <= 1 {
            return Err(ZmqError::Socket(
                "ROUTER send requires at least 2 frames: identity frame + message",
            ));
        }
        let peer_id: PeerIdentity = message.pop_front().unwrap().try_into()?;
        self.backend
            .send_to_peer(&peer_id, Message::Message(message))
            .await
    }
}

impl RouterSocket {
    /// zmesh patch: the remote address of a connected peer, for the application to report
    /// whom it serves (OpenTelemetry's `network.peer.address`/`network.peer.port`, say):
    /// the identity is the one [`recv`](SocketRecv::recv) puts in a message's first frame.
    /// `None` once the peer has disconnected, and for a peer over `ipc://` (the connecting
    /// end of a Unix socket has no name). The address is kept from the accept, so this is
    /// one read of the peer map, with no system call and no allocation.
    pub fn peer_address(&self, peer_id: &PeerIdentity) -> Option<std::net::SocketAddr> {
        self.backend.peer_address(peer_id)
    }

    /// zmesh patch: closes the connection of one peer, for example one that keeps sending
    /// garbage. What was queued for it is dropped and the connection is closed at once,
    /// whether or not the peer reads; the monitor reports `Disconnected` as for any lost
    /// peer, and [`SocketStatsSnapshot::disconnected`](crate::SocketStatsSnapshot) counts
    /// it. The peer may connect again (as a new peer). Returns whether it was connected.
    pub fn disconnect_peer(&self, peer_id: &PeerIdentity) -> bool {
        self.backend.disconnect_peer(peer_id)
    }

    /// Splits the socket into separate send and recv halves, allowing concurrent
    /// sending and receiving from independent async tasks.
    ///
    /// The underlying socket stays alive until both halves are dropped.
    pub fn split(mut self) -> (RouterSendHalf, RouterRecvHalf) {
        let backend = std::mem::replace(
            &mut self.backend,
            Arc::new(GenericSocketBackend::with_options(
                None,
                SocketType::ROUTER,
                SocketOptions::default(),
            )),
        );
        let fair_queue = std::mem::replace(&mut self.fair_queue, FairQueue::new(true));
        let binds = std::mem::take(&mut self.binds);

        let inner = Arc::new(RouterSocketInner {
            backend,
            _binds: binds,
        });

        (
            RouterSendHalf {
                inner: inner.clone(),
            },
            RouterRecvHalf { inner, fair_queue },
        )
    }
}

struct RouterSocketInner {
    backend: Arc<GenericSocketBackend>,
    _binds: HashMap<Endpoint, AcceptStopHandle>,
}

impl Drop for RouterSocketInner {
    fn drop(&mut self) {
        self.backend.shutdown();
    }
}

/// The send half of a [`RouterSocket`] produced by [`RouterSocket::split`].
///
/// This half can be cloned to send from multiple async tasks concurrently.
#[derive(Clone)]
pub struct RouterSendHalf {
    inner: Arc<RouterSocketInner>,
}

/// The recv half of a [`RouterSocket`] produced by [`RouterSocket::split`].
pub struct RouterRecvHalf {
    inner: Arc<RouterSocketInner>,
    fair_queue: FairQueue<ZmqFramedRead, PeerIdentity>,
}

#[async_trait]
impl SocketSend for RouterSendHalf {
    async fn send(&mut self, mut message: ZmqMessage) -> ZmqResult<()> {
        if message.len() <= 1 {
            return Err(ZmqError::Socket(
                "ROUTER send requires at least 2 frames: identity frame + message",
            ));
        }
        let peer_id: PeerIdentity = message.pop_front().unwrap().try_into()?;
        self.inner
            .backend
            .send_to_peer(&peer_id, Message::Message(message))
            .await
    }
}

impl RouterSendHalf {
    /// zmesh patch: the remote address of a connected peer, as
    /// [`RouterSocket::peer_address`].
    pub fn peer_address(&self, peer_id: &PeerIdentity) -> Option<std::net::SocketAddr> {
        self.inner.backend.peer_address(peer_id)
    }

    /// zmesh patch: closes one peer's connection, as [`RouterSocket::disconnect_peer`].
    pub fn disconnect_peer(&self, peer_id: &PeerIdentity) -> bool {
        self.inner.backend.disconnect_peer(peer_id)
    }

    /// zmesh patch: the socket's limit counters (see [`Socket::stats`]).
    pub fn stats(&self) -> Arc<crate::SocketStats> {
        Arc::clone(&self.inner.backend.socket_options().stats)
    }

    /// zmesh patch: sends at once when that needs no waiting (the addressed peer is
    /// connected and has room in its queue), else hands the message back in
    /// [`TrySendError::WouldBlock`] for the async `send`. No allocation and no `&mut`.
    pub fn try_send(&self, mut message: ZmqMessage) -> Result<(), TrySendError> {
        if message.len() <= 1 {
            return Err(TrySendError::Failed(ZmqError::Socket(
                "ROUTER send requires at least 2 frames: identity frame + message",
            )));
        }
        let Some(frame) = message.pop_front() else {
            return Err(TrySendError::Failed(ZmqError::Socket("empty message")));
        };
        let peer_id: PeerIdentity = frame.try_into().map_err(TrySendError::Failed)?;
        self.inner
            .backend
            .try_send_now(Message::Message(message), Some(&peer_id))
            .map_err(|outcome| match TrySendError::from(outcome) {
                // Put the route back so the async `send` can be used as is.
                TrySendError::WouldBlock(mut message) => {
                    message.push_front(peer_id.into());
                    TrySendError::WouldBlock(message)
                }
                failed => failed,
            })
    }
}

#[async_trait]
impl SocketRecv for RouterRecvHalf {
    async fn recv(&mut self) -> ZmqResult<ZmqMessage> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl RouterRecvHalf {
    /// zmesh patch: the remote address of a connected peer, as
    /// [`RouterSocket::peer_address`].
    pub fn peer_address(&self, peer_id: &PeerIdentity) -> Option<std::net::SocketAddr> {
        self.inner.backend.peer_address(peer_id)
    }

    /// zmesh patch: the socket's limit counters (see [`Socket::stats`]).
    pub fn stats(&self) -> Arc<crate::SocketStats> {
        Arc::clone(&self.inner.backend.socket_options().stats)
    }

    /// zmesh patch: [`SocketRecv::recv`] as a poll method, so a read loop can await it
    /// without the boxed future `async_trait` makes for every message.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<ZmqResult<ZmqMessage>> {
        use std::task::Poll;
        loop {
            match self.fair_queue.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some((peer_id, Ok(Message::Message(mut message))))) => {
                    message.push_front(peer_id.into());
                    return Poll::Ready(Ok(message));
                }
                Poll::Ready(Some((_peer_id, Ok(_)))) => {}
                Poll::Ready(Some((peer_id, Err(_e)))) => {
                    // zmesh patch: a read error (a broken limit among them) closes the
                    // connection both ways at once.
                    self.inner.backend.peer_failed(&peer_id);
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(ZmqError::NoMessage));
                }
            };
        }
    }
}
