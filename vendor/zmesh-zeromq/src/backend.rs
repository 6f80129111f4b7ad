use crate::async_rt;
use crate::codec::{FramedIo, Message, ZmqFramedRead};
use crate::fair_queue::QueueInner;
use crate::limits::{message_cost, ByteBudget, SocketStats};
use crate::util::PeerIdentity;
use crate::write_queue::{message_queue, write_until_aborted, QueueSender};
use crate::{
    MultiPeerBackend, SocketBackend, SocketEvent, SocketOptions, SocketType, ZmqError, ZmqResult,
};

use async_trait::async_trait;
use crossbeam_queue::SegQueue;
use futures::channel::{mpsc, oneshot};
use parking_lot::Mutex;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Sender for notifying reconnection tasks when a peer disconnects.
pub(crate) type DisconnectNotifier = mpsc::Sender<PeerIdentity>;
const PEER_SEND_QUEUE_CAPACITY: usize = 100_000;

pub(crate) struct Peer {
    pub(crate) send_queue: PeerQueue,
    /// zmesh patch: stops the peer's writer at once when sent (`disconnect_peer`, a limit
    /// broken); dropped unsent (the peer forgotten otherwise), the writer drains its queue
    /// first, as before the patch.
    pub(crate) abort_writer: Option<oneshot::Sender<()>>,
    /// zmesh patch: the connection's remote address (TCP only), kept from the accept or
    /// connect so that the application can ask for it once it knows the identity
    /// ([`GenericSocketBackend::peer_address`]).
    pub(crate) address: Option<SocketAddr>,
}

impl Peer {
    /// A peer whose queue is `send_queue` with the given byte bound and no writer to abort.
    #[allow(dead_code)] // Used by the tests and the bench internals.
    pub(crate) fn with_queue(send_queue: QueueSender, bytes: usize) -> Self {
        Self {
            send_queue: PeerQueue {
                messages: send_queue,
                bytes: Arc::new(ByteBudget::new(bytes)),
            },
            abort_writer: None,
            address: None,
        }
    }
}

/// zmesh patch: a peer's send queue, bounded in messages (the channel) and in bytes
/// (`SocketOptions::send_queue_bytes`, released by the writer as it writes).
#[derive(Clone)]
pub(crate) struct PeerQueue {
    pub(crate) messages: QueueSender,
    pub(crate) bytes: Arc<ByteBudget>,
}

/// Why a message could not be queued without waiting.
enum QueueTry {
    /// No room (messages or bytes); the message back.
    Full(Message),
    /// The peer's writer is gone.
    Closed(ZmqError),
}

/// The error of a peer queue whose writer is gone (or that cannot take the message).
fn queue_broken() -> ZmqError {
    ZmqError::BufferFull("Failed to send message. Send queue full/broken")
}

impl PeerQueue {
    /// Queues `message` if there is room now.
    fn try_send(&mut self, message: Message, stats: &SocketStats) -> Result<(), QueueTry> {
        let cost = message_cost(&message);
        if !self.bytes.try_reserve(cost) {
            if self.messages.is_closed() {
                return Err(QueueTry::Closed(queue_broken()));
            }
            stats.count_send_queue_full();
            return Err(QueueTry::Full(message));
        }
        use tokio::sync::mpsc::error::TrySendError;
        self.messages.try_send(message).map_err(|error| {
            self.bytes.release(cost);
            match error {
                TrySendError::Full(message) => QueueTry::Full(message),
                TrySendError::Closed(_) => QueueTry::Closed(queue_broken()),
            }
        })
    }

    /// Queues `message`, waiting for room in bytes and then in messages.
    async fn send(&mut self, message: Message, stats: &SocketStats) -> ZmqResult<()> {
        let cost = message_cost(&message);
        if !self.bytes.try_reserve(cost) {
            stats.count_send_queue_full();
            std::future::poll_fn(|cx| self.bytes.poll_reserve(cx, cost))
                .await
                .map_err(|()| queue_broken())?;
        }
        // Given back if this future is dropped before the message is queued.
        let reservation = Reservation {
            budget: &self.bytes,
            bytes: cost,
        };
        let result = self.messages.send(message).await;
        match result {
            Ok(()) => {
                std::mem::forget(reservation);
                Ok(())
            }
            Err(_) => Err(queue_broken()),
        }
    }
}

/// Bytes reserved for a message not queued yet.
struct Reservation<'a> {
    budget: &'a ByteBudget,
    bytes: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[derive(Clone)]
struct SinglePeer {
    peer_id: PeerIdentity,
    send_queue: PeerQueue,
}

enum CachedSend {
    Sent,
    Full {
        peer_id: PeerIdentity,
        send_queue: PeerQueue,
        message: Message,
    },
    Disconnected {
        peer_id: PeerIdentity,
        error: ZmqError,
    },
    Miss(Message),
}

/// zmesh patch: why [`GenericSocketBackend::try_send_now`] did not send.
pub(crate) enum TrySend {
    /// Sending needs to wait (a full queue) or the async path; here is the message back.
    WouldBlock(Message),
    /// The peer is gone.
    Failed(ZmqError),
}

enum SendResolution {
    Sent,
    Miss(Message),
}

pub(crate) struct GenericSocketBackend {
    pub(crate) peers: scc::HashMap<PeerIdentity, Peer>,
    fair_queue_inner: Option<Arc<Mutex<QueueInner<ZmqFramedRead, PeerIdentity>>>>,
    pub(crate) round_robin: SegQueue<PeerIdentity>,
    socket_type: SocketType,
    socket_options: Arc<SocketOptions>,
    pub(crate) socket_monitor: Mutex<Option<mpsc::Sender<SocketEvent>>>,
    single_peer: Mutex<Option<SinglePeer>>,
    peer_count: AtomicUsize,
    /// Notifiers for reconnection tasks - keyed by `peer_id`
    disconnect_notifiers: Mutex<HashMap<PeerIdentity, DisconnectNotifier>>,
}

impl GenericSocketBackend {
    pub(crate) fn with_options(
        fair_queue_inner: Option<Arc<Mutex<QueueInner<ZmqFramedRead, PeerIdentity>>>>,
        socket_type: SocketType,
        options: SocketOptions,
    ) -> Self {
        Self {
            peers: scc::HashMap::new(),
            fair_queue_inner,
            round_robin: SegQueue::new(),
            socket_type,
            socket_options: Arc::new(options),
            socket_monitor: Mutex::new(None),
            single_peer: Mutex::new(None),
            peer_count: AtomicUsize::new(0),
            disconnect_notifiers: Mutex::new(HashMap::new()),
        }
    }

    /// Register a notifier to be called when a peer disconnects.
    ///
    /// Used by reconnection tasks to be notified when they should attempt reconnection.
    #[allow(dead_code)] // Will be used when reconnection is added to more socket types
    pub(crate) fn register_disconnect_notifier(
        &self,
        peer_id: PeerIdentity,
        notifier: DisconnectNotifier,
    ) {
        self.disconnect_notifiers.lock().insert(peer_id, notifier);
    }

    /// Unregister a disconnect notifier for a peer.
    #[allow(dead_code)] // Will be used when reconnection is added to more socket types
    pub(crate) fn unregister_disconnect_notifier(&self, peer_id: &PeerIdentity) {
        self.disconnect_notifiers.lock().remove(peer_id);
    }

    pub(crate) async fn send_round_robin(&self, message: Message) -> ZmqResult<()> {
        let message = match self
            .finish_cached_send(self.try_send_cached_single_peer(message, None))
            .await?
        {
            SendResolution::Sent => return Ok(()),
            SendResolution::Miss(message) => message,
        };

        // In normal scenario this will always be only 1 iteration
        // There can be special case when peer has disconnected and his id is still in
        // RR queue This happens because SegQueue don't have an api to delete
        // items from queue. So in such case we'll just pop item and skip it if
        // we don't have a matching peer in peers map
        loop {
            let next_peer_id = match self.round_robin.pop() {
                Some(peer) => peer,
                None => match message {
                    Message::Greeting(_) => {
                        return Err(ZmqError::Socket("Sending greeting is not supported"))
                    }
                    Message::Command(_) => {
                        return Err(ZmqError::Socket("Sending commands is not supported"))
                    }
                    Message::Message(m) => {
                        return Err(ZmqError::ReturnToSender {
                            reason: "Not connected to peers. Unable to send messages",
                            message: m,
                        })
                    }
                },
            };
            // zmesh patch: sync access, see `send_to_peer_queue`.
            let send_result = match self.peers.get_sync(&next_peer_id) {
                Some(peer) => send_to_peer_queue(peer, message, &self.socket_options.stats).await,
                None => continue,
            };
            return match send_result {
                Ok(()) => {
                    self.round_robin.push(next_peer_id);
                    Ok(())
                }
                Err(e) => {
                    self.peer_disconnected(&next_peer_id);
                    Err(e)
                }
            };
        }
    }

    pub(crate) async fn send_to_peer(
        &self,
        peer_id: &PeerIdentity,
        message: Message,
    ) -> ZmqResult<()> {
        let message = match self
            .finish_cached_send(self.try_send_cached_single_peer(message, Some(peer_id)))
            .await?
        {
            SendResolution::Sent => return Ok(()),
            SendResolution::Miss(message) => message,
        };

        // zmesh patch: sync access, see `send_to_peer_queue`.
        let send_result = match self.peers.get_sync(peer_id) {
            Some(peer) => send_to_peer_queue(peer, message, &self.socket_options.stats).await,
            None => return Err(ZmqError::Other("Destination client not found by identity")),
        };
        match send_result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.peer_disconnected(peer_id);
                Err(e)
            }
        }
    }

    /// zmesh patch: sends without waiting when that needs no await (a peer to hand the
    /// message to, room in its queue); otherwise gives the message back so the caller can
    /// take the async path. Saves the boxed `async_trait` future, and the caller's lock
    /// around the socket, on every message of a busy connection.
    pub(crate) fn try_send_now(
        &self,
        message: Message,
        peer_id: Option<&PeerIdentity>,
    ) -> Result<(), TrySend> {
        let message = match self.try_send_cached_single_peer(message, peer_id) {
            CachedSend::Sent => return Ok(()),
            CachedSend::Full { message, .. } | CachedSend::Miss(message) => message,
            CachedSend::Disconnected { peer_id, error } => {
                self.peer_disconnected(&peer_id);
                return Err(TrySend::Failed(error));
            }
        };
        let Some(peer_id) = peer_id else {
            // Round robin over several peers: left to the async path.
            return Err(TrySend::WouldBlock(message));
        };
        let stats = &self.socket_options.stats;
        let result = match self.peers.get_sync(peer_id) {
            Some(mut peer) => peer.send_queue.try_send(message, stats),
            None => {
                return Err(TrySend::Failed(ZmqError::Other(
                    "Destination client not found by identity",
                )))
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(QueueTry::Full(message)) => Err(TrySend::WouldBlock(message)),
            Err(QueueTry::Closed(error)) => {
                self.peer_disconnected(peer_id);
                Err(TrySend::Failed(error))
            }
        }
    }

    fn try_send_cached_single_peer(
        &self,
        message: Message,
        expected_peer_id: Option<&PeerIdentity>,
    ) -> CachedSend {
        if self.peer_count.load(Ordering::Acquire) != 1 {
            return CachedSend::Miss(message);
        }

        let mut single_peer = self.single_peer.lock();
        let Some(single_peer) = single_peer.as_mut() else {
            return CachedSend::Miss(message);
        };

        if let Some(expected_peer_id) = expected_peer_id {
            if single_peer.peer_id != *expected_peer_id {
                return CachedSend::Miss(message);
            }
        }

        match single_peer
            .send_queue
            .try_send(message, &self.socket_options.stats)
        {
            Ok(()) => CachedSend::Sent,
            Err(QueueTry::Full(message)) => CachedSend::Full {
                peer_id: single_peer.peer_id.clone(),
                send_queue: single_peer.send_queue.clone(),
                message,
            },
            Err(QueueTry::Closed(error)) => CachedSend::Disconnected {
                peer_id: single_peer.peer_id.clone(),
                error,
            },
        }
    }

    async fn finish_cached_send(&self, cached_send: CachedSend) -> ZmqResult<SendResolution> {
        match cached_send {
            CachedSend::Sent => Ok(SendResolution::Sent),
            CachedSend::Full {
                peer_id,
                mut send_queue,
                message,
            } => match send_queue.send(message, &self.socket_options.stats).await {
                Ok(()) => Ok(SendResolution::Sent),
                Err(e) => {
                    self.peer_disconnected(&peer_id);
                    Err(e)
                }
            },
            CachedSend::Disconnected { peer_id, error } => {
                self.peer_disconnected(&peer_id);
                Err(error)
            }
            CachedSend::Miss(message) => Ok(SendResolution::Miss(message)),
        }
    }

    fn refresh_single_peer_cache(&self) {
        let peer_count = self.peers.len();
        self.peer_count.store(peer_count, Ordering::Release);

        let mut single_peer = self.single_peer.lock();
        if peer_count == 1 {
            *single_peer = self.peers.begin_sync().map(|peer| SinglePeer {
                peer_id: peer.key().clone(),
                send_queue: peer.send_queue.clone(),
            });
        } else {
            *single_peer = None;
        }
    }
}

/// Sends to a peer's queue; `peer` is its map entry.
///
/// zmesh patch: an entry of the peer map is a lock on its bucket (with few peers, on all of
/// them). Two things together wedged a ROUTER for good under a client that never read its
/// replies: a send waited for room in that client's full queue while holding its entry,
/// and `peer_disconnected` takes the lock with a blocking `remove_sync` on a runtime thread,
/// so once every runtime thread blocked there, the task holding (or being handed) the lock
/// could never run to release it. Now the map is only ever locked synchronously and
/// briefly (`get_sync`, `upsert_sync`, `remove_sync`: no lock is held across an await or
/// handed to a task that is not running), and a send waits for room on a clone of the
/// queue after releasing the entry.
async fn send_to_peer_queue<E: std::ops::DerefMut<Target = Peer>>(
    mut peer: E,
    message: Message,
    stats: &SocketStats,
) -> ZmqResult<()> {
    match peer.send_queue.try_send(message, stats) {
        Ok(()) => Ok(()),
        Err(QueueTry::Full(message)) => {
            let mut send_queue = peer.send_queue.clone();
            drop(peer);
            send_queue.send(message, stats).await
        }
        Err(QueueTry::Closed(error)) => Err(error),
    }
}

impl SocketBackend for GenericSocketBackend {
    fn socket_type(&self) -> SocketType {
        self.socket_type
    }

    fn socket_options(&self) -> &Arc<SocketOptions> {
        &self.socket_options
    }

    fn shutdown(&self) {
        self.peers.clear_sync();
        self.single_peer.lock().take();
        self.peer_count.store(0, Ordering::Release);
        // Clear fair_queue streams to ensure TCP connections are closed
        // even when reconnect tasks still hold Arc references to the backend
        if let Some(inner) = &self.fair_queue_inner {
            inner.lock().clear();
        }
    }

    fn monitor(&self) -> &Mutex<Option<mpsc::Sender<SocketEvent>>> {
        &self.socket_monitor
    }
}

#[async_trait]
impl MultiPeerBackend for GenericSocketBackend {
    async fn peer_connected(self: Arc<Self>, peer_id: &PeerIdentity, io: FramedIo) {
        let address = io.peer_addr;
        let (recv_queue, send_queue) = io.into_parts();
        let (queue_sender, queue_receiver) = message_queue(PEER_SEND_QUEUE_CAPACITY);
        // zmesh patch: the queue's byte bound, and the writer's abort signal.
        let bytes = Arc::new(ByteBudget::new(self.socket_options.send_queue_bytes));
        let (abort_writer, abort_received) = oneshot::channel();
        // zmesh patch: sync access, see `send_to_peer_queue`.
        self.peers.upsert_sync(
            peer_id.clone(),
            Peer {
                send_queue: PeerQueue {
                    messages: queue_sender,
                    bytes: bytes.clone(),
                },
                abort_writer: Some(abort_writer),
                address,
            },
        );
        self.refresh_single_peer_cache();
        let writer_backend = self.clone();
        let writer_peer_id = peer_id.clone();
        async_rt::task::spawn(async move {
            let written =
                write_until_aborted(queue_receiver, send_queue, bytes, abort_received).await;
            if let Err(error) = written {
                log::debug!(
                    "Error sending message to peer {:?}: {:?}",
                    writer_peer_id,
                    error
                );
                writer_backend.peer_disconnected(&writer_peer_id);
            }
        });
        self.round_robin.push(peer_id.clone());
        match &self.fair_queue_inner {
            None => {}
            Some(inner) => {
                inner.lock().insert(peer_id.clone(), recv_queue);
            }
        };
    }

    fn peer_disconnected(&self, peer_id: &PeerIdentity) {
        self.forget_peer(peer_id, false);
    }
}

impl GenericSocketBackend {
    /// zmesh patch: the remote address of a connected peer's TCP connection: `None` for a
    /// peer that is not (or no longer) connected and for one over `ipc://`. One read of
    /// the peer map (a shared lock on one bucket), nothing allocated; the address was
    /// stored when the peer connected.
    pub(crate) fn peer_address(&self, peer_id: &PeerIdentity) -> Option<SocketAddr> {
        self.peers
            .read_sync(peer_id, |_, peer| peer.address)
            .flatten()
    }

    /// zmesh patch: the remote address of the socket's one peer, when it has exactly one
    /// (a DEALER connected to one endpoint, say) and that peer is over TCP.
    pub(crate) fn only_peer_address(&self) -> Option<SocketAddr> {
        if self.peers.len() != 1 {
            return None;
        }
        self.peers.begin_sync().and_then(|peer| peer.address)
    }

    /// zmesh patch: closes one peer's connection from the application: its writer stops
    /// at once (what it had queued is dropped) and its reader is dropped, so the
    /// descriptor is closed even if the peer reads nothing. Emits `Disconnected` as for any
    /// lost peer. Returns whether the peer was connected.
    pub(crate) fn disconnect_peer(&self, peer_id: &PeerIdentity) -> bool {
        let removed = self.forget_peer(peer_id, true);
        if removed {
            self.socket_options.stats.count_disconnected();
        }
        removed
    }

    /// zmesh patch: forgets a peer after a read error (a limit broken among them): as
    /// `disconnect_peer`, without counting it as the application's doing.
    pub(crate) fn peer_failed(&self, peer_id: &PeerIdentity) {
        self.forget_peer(peer_id, true);
    }

    /// Forgets a peer; `abort` stops its writer at once instead of letting it drain.
    fn forget_peer(&self, peer_id: &PeerIdentity, abort: bool) -> bool {
        let removed = self.peers.remove_sync(peer_id);
        let peer_removed = removed.is_some();
        if let Some((_, mut peer)) = removed {
            if abort {
                if let Some(abort_writer) = peer.abort_writer.take() {
                    let _ = abort_writer.send(());
                }
            }
        }
        self.refresh_single_peer_cache();
        match &self.fair_queue_inner {
            None => {}
            Some(inner) => {
                inner.lock().remove(peer_id);
            }
        };

        if peer_removed {
            if let Some(monitor) = self.monitor().lock().as_mut() {
                let _ = monitor.try_send(SocketEvent::Disconnected(peer_id.clone()));
            }
        }

        // Notify reconnection task if registered
        if let Some(mut notifier) = self.disconnect_notifiers.lock().remove(peer_id) {
            // Use try_send to avoid blocking - if channel is full, the reconnect task
            // will eventually notice the peer is gone
            let _ = notifier.try_send(peer_id.clone());
        }
        peer_removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZmqMessage;

    use bytes::Bytes;
    use futures::StreamExt;

    fn message_with_frame(frame: &'static [u8]) -> Message {
        Message::Message(ZmqMessage::from(Bytes::from_static(frame)))
    }

    fn first_frame(message: Message) -> Bytes {
        let Message::Message(message) = message else {
            panic!("unexpected queued message type");
        };
        message.get(0).expect("message frame").clone()
    }

    async fn insert_peer(
        backend: &GenericSocketBackend,
        peer_id: PeerIdentity,
    ) -> (PeerIdentity, crate::write_queue::QueueReceiver) {
        let (send_queue, recv_queue) = message_queue(8);
        backend
            .peers
            .upsert_async(
                peer_id.clone(),
                Peer::with_queue(send_queue, crate::DEFAULT_SEND_QUEUE_BYTES),
            )
            .await;
        backend.refresh_single_peer_cache();
        backend.round_robin.push(peer_id.clone());
        (peer_id, recv_queue)
    }

    #[crate::async_rt::test]
    async fn test_send_round_robin_uses_single_peer_cache() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::PUSH, SocketOptions::default());
        let (_peer_id, mut recv_queue) =
            insert_peer(&backend, "peer-a".parse().expect("peer id")).await;

        assert_eq!(1, backend.peer_count.load(Ordering::Acquire));
        assert!(backend.single_peer.lock().is_some());

        backend
            .send_round_robin(message_with_frame(b"payload"))
            .await
            .expect("send through single peer cache");

        let queued = recv_queue.recv().await.expect("queued message");
        assert_eq!(Bytes::from_static(b"payload"), first_frame(queued));
    }

    #[crate::async_rt::test]
    async fn test_send_to_peer_uses_single_peer_cache_for_matching_identity() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (peer_id, mut recv_queue) =
            insert_peer(&backend, "router-peer".parse().expect("peer id")).await;

        assert_eq!(
            Some(peer_id.clone()),
            backend
                .single_peer
                .lock()
                .as_ref()
                .map(|peer| peer.peer_id.clone())
        );

        backend
            .send_to_peer(&peer_id, message_with_frame(b"routed"))
            .await
            .expect("send to cached peer");

        let queued = recv_queue.recv().await.expect("queued message");
        assert_eq!(Bytes::from_static(b"routed"), first_frame(queued));
    }

    #[crate::async_rt::test]
    async fn test_send_to_peer_routes_by_identity_with_multiple_peers() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (_first_peer_id, mut first_recv_queue) =
            insert_peer(&backend, "router-peer-a".parse().expect("peer id")).await;
        let (second_peer_id, mut second_recv_queue) =
            insert_peer(&backend, "router-peer-b".parse().expect("peer id")).await;

        assert_eq!(2, backend.peer_count.load(Ordering::Acquire));
        assert!(backend.single_peer.lock().is_none());

        backend
            .send_to_peer(&second_peer_id, message_with_frame(b"routed-b"))
            .await
            .expect("send to selected peer");

        assert!(first_recv_queue.try_recv().is_err());
        let queued = second_recv_queue.recv().await.expect("queued message");
        assert_eq!(Bytes::from_static(b"routed-b"), first_frame(queued));
    }

    #[crate::async_rt::test]
    async fn test_send_round_robin_waits_when_cached_sender_is_full() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::PUSH, SocketOptions::default());
        let peer_id: PeerIdentity = "full-peer".parse().expect("peer id");
        let (send_queue, mut recv_queue) = message_queue(1);
        send_queue
            .try_send(message_with_frame(b"prefilled"))
            .expect("prefill peer queue");
        backend
            .peers
            .upsert_async(
                peer_id.clone(),
                Peer::with_queue(send_queue, crate::DEFAULT_SEND_QUEUE_BYTES),
            )
            .await;
        backend.refresh_single_peer_cache();
        backend.round_robin.push(peer_id.clone());

        let send_future = backend.send_round_robin(message_with_frame(b"after-full"));
        let recv_future = async {
            let first = recv_queue.recv().await.expect("prefilled message");
            let second = recv_queue
                .recv()
                .await
                .expect("message sent after capacity frees");
            (first, second)
        };

        let (send_result, (first, second)) = futures::join!(send_future, recv_future);

        send_result.expect("send waits for cached sender capacity");
        assert_eq!(Bytes::from_static(b"prefilled"), first_frame(first));
        assert_eq!(Bytes::from_static(b"after-full"), first_frame(second));
    }

    #[crate::async_rt::test]
    async fn test_single_peer_cache_is_cleared_when_cached_sender_is_disconnected() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::PUSH, SocketOptions::default());
        let peer_id: PeerIdentity = "closed-peer".parse().expect("peer id");
        let (send_queue, recv_queue) = message_queue(1);
        drop(recv_queue);
        backend
            .peers
            .upsert_async(
                peer_id.clone(),
                Peer::with_queue(send_queue, crate::DEFAULT_SEND_QUEUE_BYTES),
            )
            .await;
        backend.refresh_single_peer_cache();
        backend.round_robin.push(peer_id.clone());

        let error = backend
            .send_round_robin(message_with_frame(b"lost"))
            .await
            .expect_err("closed cached sender should fail");

        assert!(matches!(error, ZmqError::BufferFull(_)));
        assert_eq!(0, backend.peer_count.load(Ordering::Acquire));
        assert!(backend.single_peer.lock().is_none());
        assert!(backend.peers.get_async(&peer_id).await.is_none());
    }

    #[crate::async_rt::test]
    async fn test_peer_disconnected_emits_one_monitor_event() {
        let backend =
            GenericSocketBackend::with_options(None, SocketType::ROUTER, SocketOptions::default());
        let (monitor_sender, mut monitor_receiver) = mpsc::channel(8);
        backend.socket_monitor.lock().replace(monitor_sender);
        let (peer_id, _recv_queue) =
            insert_peer(&backend, "monitor-peer".parse().expect("peer id")).await;

        backend.peer_disconnected(&peer_id);

        let event = monitor_receiver.next().await.expect("disconnect event");
        assert!(matches!(
            event,
            SocketEvent::Disconnected(disconnected_peer) if disconnected_peer == peer_id
        ));

        backend.peer_disconnected(&peer_id);
        assert!(monitor_receiver.try_recv().is_err());
    }
}
