//! Provides one client connection: a DEALER to one endpoint, the driver of its table of
//! open calls (the pure `calls::CallTable`), and the tasks that read replies, send heartbeats
//! and control events, and notice when the peer is gone (the `zeromq` DEALER neither reconnects nor fails a pending `recv`, so the
//! socket monitor and per-channel heartbeats are what detect a dead peer).
//!
//! Who reads the socket: the connection's reader task always can, and a caller waiting for
//! its first reply reads it too when it gets there first (see [`ConnShared::poll_reply`]).
//! A reply then reaches its caller without a hop through the reader task: on a
//! `current_thread` runtime that hop costs a scheduler pass and an extra `epoll_wait` per
//! sequential call, a large share of what zmesh adds to a raw round trip. While that caller
//! is the connection's only open call, the socket wakes it alone, not the reader task too
//! (the hand-off and its invariants are in `readers.rs`).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::calls::{Call, CallTable, Route, Sealing};
use super::readers::Readers;
use super::{CallError, Cause, ClientConfig};
use crate::read_turns::{MESSAGES_PER_TURN, ReadTurns};
use crate::trust::{Kind, Refusal, Rejection, ReplayError, Trust};
use crate::wire::{self, EMPTY_ARRAY_ARGS, HEARTBEAT_ARGS, Header, MessageId, ReplyEvent, names};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketEvent, SocketSend, TrySendError,
    ZmqMessage, ZmqResult,
};
use zmesh_proto::ErrorKind;

/// Control events (heartbeats, credit grants, cancels) waiting for the socket; a peer that
/// lets this many pile up has stopped reading and is treated as lost.
const CONTROL_QUEUE: usize = 16_384;

/// What the reader hands to a waiting call.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// Not boxed: a call's one reply travels in the one-shot slot's own allocation, and a
    /// box would be a second allocation and free per call.
    Event(Reply),
    /// The first reply was a `STREAM` item: here is the queue for the rest.
    Stream(Reply, mpsc::Receiver<Inbound>),
    Failed(CallError),
}

/// An event as the call it answers sees it. The header has done its job once the reader
/// has matched the event to its call (only `response_to` and the zmesh marker are even
/// decoded, see [`wire::decode_reply`]).
#[derive(Debug)]
pub(crate) struct Reply {
    /// `OK`, `ERR`, `STREAM`, `STREAM_DONE` or, from a broken server, anything.
    pub(crate) name: Cow<'static, str>,
    /// The event's args, still encoded.
    pub(crate) args: Bytes,
}

/// One open call on this connection: plain calls only ever need the one-shot slot; the
/// bounded queue is made when the first reply turns out to be a stream item.
type Pending = Call<oneshot::Sender<Inbound>, mpsc::Sender<Inbound>>;

/// The connection's open calls (the pure table, [`CallTable`]).
type PendingMap = CallTable<oneshot::Sender<Inbound>, mpsc::Sender<Inbound>>;

/// Ends a call with an error, through whichever slot the caller is waiting on.
fn fail(mut call: Pending, error: CallError) {
    if let Some(first) = call.first.take() {
        let _ = first.send(Inbound::Failed(error));
    } else if let Some(stream) = call.stream.take() {
        let _ = stream.try_send(Inbound::Failed(error));
    }
}

/// State shared by the connection's tasks and its calls.
pub(crate) struct ConnShared {
    pub(crate) endpoint: String,
    pub(crate) config: ClientConfig,
    /// Cloned per waiting send: the half needs `&mut` only to wait for room in a full
    /// queue, and the common case (room) goes through `try_send` on a shared reference.
    sender: DealerSendHalf,
    pending: Mutex<PendingMap>,
    alive: AtomicBool,
    zmesh_peer: AtomicBool,
    control: mpsc::Sender<Bytes>,
    trust: TrustState,
    /// The earliest deadline [`deadline_loop`] is waiting for, as nanoseconds after
    /// `opened` (`u64::MAX`: none). Lowered by `register` and recomputed by
    /// `expire_deadlines`, both under the `pending` lock, so no deadline is ever missed.
    next_deadline: AtomicU64,
    /// Wakes [`deadline_loop`] when a call's deadline is earlier than the one it waits for.
    deadline_changed: tokio::sync::Notify,
    opened: Instant,
    /// The socket's receive half, polled by the reader task and by waiting callers.
    recv: Mutex<DealerRecvHalf>,
    /// Who the socket's next message wakes.
    readers: Arc<Readers>,
    /// The waker every poll of `recv` registers: [`Readers`] as a waker.
    readers_waker: Waker,
}

/// A client's mesh key with its replay guard, and the count of replies it refused; shared by
/// the client's successive connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustState {
    trust: Option<Arc<Trust>>,
    rejected: Arc<AtomicU64>,
    integrity_failures: Arc<AtomicU64>,
}

impl TrustState {
    pub(crate) fn new(key: Option<crate::trust::MeshKey>) -> Self {
        Self {
            trust: key.map(|k| Arc::new(Trust::new(k))),
            rejected: Arc::default(),
            integrity_failures: Arc::default(),
        }
    }

    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    pub(crate) fn integrity_failures(&self) -> u64 {
        self.integrity_failures.load(Ordering::Relaxed)
    }
}

impl ConnShared {
    fn pending(&self) -> std::sync::MutexGuard<'_, PendingMap> {
        // Poisoning only means a panic elsewhere; the map itself is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// True once any event from the peer carried the zmesh marker.
    pub(crate) fn is_zmesh_peer(&self) -> bool {
        self.zmesh_peer.load(Ordering::Acquire)
    }

    /// Registers a call before its request is sent, so no reply can outrun it. With a
    /// deadline, the call fails with [`CallError::DeadlineExceeded`] if no first reply
    /// arrived by then (the caller substitutes its own timeout in the error). `now` is the
    /// caller's clock reading for this call, taken once for the request and the entry.
    ///
    /// One timer per connection instead of one per call: most deadlines are later than
    /// the earliest one already armed, so registering usually costs one comparison.
    pub(crate) fn register(
        &self,
        id: MessageId,
        first: oneshot::Sender<Inbound>,
        deadline: Option<Instant>,
        now: Instant,
    ) {
        let mut pending = self.pending();
        // A call alone on the connection reads for itself; one that shares it relies on
        // the reader task.
        if !pending.is_empty() {
            self.readers.call_joins();
        }
        pending.insert(id, first, deadline, now);
        if let Some(deadline) = deadline {
            let at = self.deadline_nanos(deadline);
            if at < self.next_deadline.load(Ordering::Relaxed) {
                self.next_deadline.store(at, Ordering::Relaxed);
                drop(pending);
                self.deadline_changed.notify_one();
            }
        }
    }

    fn deadline_nanos(&self, deadline: Instant) -> u64 {
        let nanos = deadline.saturating_duration_since(self.opened).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1)
    }

    /// The earliest deadline of a call still waiting for its first reply, if any.
    fn next_deadline(&self) -> Option<Instant> {
        match self.next_deadline.load(Ordering::Relaxed) {
            u64::MAX => None,
            nanos => Some(self.opened + Duration::from_nanos(nanos)),
        }
    }

    /// Fails the calls whose deadline has passed before their first reply, tells a zmesh
    /// server to stop working on them, and re-arms for the earliest remaining deadline.
    fn expire_deadlines(&self) {
        let expired = {
            let mut pending = self.pending();
            let (expired, earliest) = pending.expire(Instant::now());
            let earliest = earliest.map_or(u64::MAX, |at| self.deadline_nanos(at));
            self.next_deadline.store(earliest, Ordering::Relaxed);
            expired
        };
        for (id, first) in expired {
            // The caller replaces the zero with its own timeout.
            let _ = first.send(Inbound::Failed(CallError::DeadlineExceeded(Duration::ZERO)));
            self.cancel(&id);
        }
    }

    /// Forgets a call dropped before its end; true if it was still open. A caller reading
    /// the socket alone may be this one: the reader task takes over.
    pub(crate) fn unregister(&self, id: &MessageId) -> bool {
        let removed = self.pending().remove(id).is_some();
        self.readers.leave_alone();
        removed
    }

    /// Seals an outgoing event when the client has a mesh key. A request (`request` is
    /// its id, which the caller encoded into it) carries that id in the clear, so a node
    /// that cannot open it can still answer an `ERR`; a channel event (`None`) carries none.
    fn outgoing(&self, event: Bytes, request: Option<&MessageId>) -> Bytes {
        match &self.trust.trust {
            None => event,
            Some(trust) => {
                let clear_id = request.map(MessageId::encoded).unwrap_or_default();
                trust.seal(Kind::Request, &event, clear_id)
            }
        }
    }

    /// Opens an incoming frame with the mesh key; `None` (counted and traced) when it must
    /// not be delivered.
    ///
    /// Unsealed, only the refusals a node sends a peer it cannot seal for are taken
    /// (`ERR Unauthenticated`, `ERR Replayed`); they fail the call as not retryable
    /// ([`CallError::Remote`] under those names), never as "did not run", because anyone on
    /// the path could have sent them. Anything else unsealed (an `OK`, or an `ERR
    /// Overloaded` that would have the call retried elsewhere) is dropped, and the call
    /// waits for the real, sealed reply. An authentic reply received twice is handed on as
    /// a duplicate, so its call fails as tampered with.
    fn incoming(&self, frame: Bytes) -> Option<(Bytes, Sealing)> {
        let Some(trust) = &self.trust.trust else {
            return Some((frame, Sealing::Unkeyed));
        };
        if !crate::trust::envelope::is_sealed(&frame) {
            let refusal = wire::decode_event(&frame).is_ok_and(|e| {
                e.name.as_ref() == names::ERR
                    && wire::parse_err_args(&e.args)
                        .0
                        .parse()
                        .is_ok_and(ErrorKind::is_trust_refusal)
            });
            if !refusal {
                self.trust.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(endpoint = %self.endpoint, "dropping unsealed reply");
                return None;
            }
            return Some((frame, Sealing::Unsealed));
        }
        match trust.open_detailed(&frame, Kind::Reply) {
            Ok(opened) => Some((opened.event, Sealing::Sealed(opened.seq))),
            Err(Refusal {
                rejection,
                authentic,
            }) => {
                self.trust.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %self.endpoint, %rejection, "reply refused by the mesh key");
                match (rejection, authentic) {
                    (Rejection::Replayed(ReplayError::Replayed), Some(opened)) => {
                        Some((opened.event, Sealing::Duplicate(opened.seq)))
                    }
                    _ => None,
                }
            }
        }
    }

    /// Sends one request as `["", event]`; `id` is the message id encoded in it.
    pub(crate) async fn send(&self, event: Bytes, id: &MessageId) -> Result<(), CallError> {
        match self.try_send(event, id)? {
            None => Ok(()),
            Some(message) => self.send_waiting(message).await,
        }
    }

    /// Sends one request as `["", event]` (`id` is the message id encoded in it) if that
    /// needs no waiting (the usual case: room in the socket's queue), with no lock, future
    /// or allocation; otherwise returns the message for [`ConnShared::send_waiting`].
    pub(crate) fn try_send(
        &self,
        event: Bytes,
        id: &MessageId,
    ) -> Result<Option<ZmqMessage>, CallError> {
        let message = wire::join_frames(&[], self.outgoing(event, Some(id)));
        match self.sender.try_send(message) {
            Ok(()) => Ok(None),
            Err(TrySendError::WouldBlock(message)) => Ok(Some(message)),
            Err(TrySendError::Failed(e)) => Err(self.send_failed(e)),
        }
    }

    /// Sends a message [`ConnShared::try_send`] could not, waiting for room.
    pub(crate) async fn send_waiting(&self, message: ZmqMessage) -> Result<(), CallError> {
        let mut sender = self.sender.clone();
        sender.send(message).await.map_err(|e| self.send_failed(e))
    }

    fn send_failed(&self, e: zeromq::ZmqError) -> CallError {
        let cause = Cause::with_source(format!("send to {} failed: {e}", self.endpoint), e);
        self.mark_dead(cause.clone());
        CallError::PeerLost(cause)
    }

    /// Queues an event for the control writer (usable from `Drop` and `poll_next`).
    pub(crate) fn send_control(&self, channel: &MessageId, name: &str, args: &[u8]) {
        let header = Header::zmesh(Some(channel.clone()));
        let event = wire::encode_event(&header, name, args);
        if let Err(mpsc::error::TrySendError::Full(_)) = self.control.try_send(event) {
            // Heartbeats, credit and cancels queue up only while the socket cannot take
            // them: the peer has stopped reading. Give up on it rather than grow without bound.
            self.mark_dead(format!(
                "{} stopped reading (control queue full)",
                self.endpoint
            ));
        }
    }

    /// Tells a zmesh server to abort a call the caller gave up on.
    pub(crate) fn cancel(&self, channel: &MessageId) {
        if self.is_zmesh_peer() && self.is_alive() {
            self.send_control(channel, names::CANCEL, EMPTY_ARRAY_ARGS);
        }
    }

    /// Marks the connection unusable and fails every open call with `PeerLost` for `cause`.
    pub(crate) fn mark_dead(&self, cause: impl Into<Cause>) {
        let cause = cause.into();
        let was_alive = self.alive.swap(false, Ordering::AcqRel);
        let failed: Vec<Pending> = self.pending().drain();
        if was_alive {
            tracing::info!(endpoint = %self.endpoint, calls = failed.len(), reason = %cause, "connection lost");
        }
        for p in failed {
            fail(p, CallError::PeerLost(cause.clone()));
        }
    }

    /// Locks the receive half unless someone else is polling it right now.
    fn try_lock_recv(&self) -> Option<MutexGuard<'_, DealerRecvHalf>> {
        match self.recv.try_lock() {
            Ok(recv) => Some(recv),
            // Poisoning only means a panic elsewhere; the half itself is still usable.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The reader task's read. When a caller holds the socket, this returns `Pending`: that
    /// caller wakes the reader task when it lets go after taking messages (more may be
    /// buffered), and otherwise left the socket's waker registered, which wakes it too.
    fn poll_reader(&self, cx: &mut Context<'_>) -> Poll<ZmqResult<ZmqMessage>> {
        self.readers.register_task(cx.waker());
        let Some(mut recv) = self.try_lock_recv() else {
            return Poll::Pending;
        };
        recv.poll_recv(&mut Context::from_waker(&self.readers_waker))
    }

    /// A caller's wait for its first reply on `rx`. When it is the connection's only open
    /// call and nobody else is reading the socket right now, the caller reads it too,
    /// handing every message on as the reader task would ([`ConnShared::handle_incoming`]),
    /// until its own reply is among them or nothing is left; the socket's next message then
    /// wakes this caller as well as the reader task.
    pub(crate) fn poll_reply(
        &self,
        own: &MessageId,
        rx: &mut oneshot::Receiver<Inbound>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Inbound, oneshot::error::RecvError>> {
        if let Poll::Ready(inbound) = std::pin::Pin::new(&mut *rx).poll(cx) {
            // Failed by another task (deadline, lost peer) or answered by the reader task.
            self.readers.leave_alone();
            return Poll::Ready(inbound);
        }
        // With other calls open, the reader task reads: many callers taking turns would
        // each poll the socket in vain and wake the task as well (pipelined calls measured
        // ~7% more instructions per call that way). A call alone on its connection, as in
        // back-to-back calls, reads for itself.
        let pending = self.pending();
        if pending.len() > 1 {
            return Poll::Pending;
        }
        let Some(mut recv) = self.try_lock_recv() else {
            // The reader (task or caller) now polling delivers this call's reply.
            return Poll::Pending;
        };
        // Under the `pending` lock: one registered before was counted above.
        self.readers.enter_alone(cx.waker());
        drop(pending);
        let mut socket_cx = Context::from_waker(&self.readers_waker);
        // A burst that does not contain this call's reply is left to the reader task after
        // a turn's worth, as the reader task itself yields every turn (see `read_turns`).
        let outcome = 'read: {
            for _ in 0..MESSAGES_PER_TURN {
                match recv.poll_recv(&mut socket_cx) {
                    // The socket's waker (this caller and the reader task) is registered.
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(message)) => {
                        if let Some((sender, inbound)) = self.handle_incoming(message, Some(own)) {
                            // Closed first, so dropping the sender does not wake this caller:
                            // on a `current_thread` runtime a wake of the `block_on` future
                            // from inside it costs an extra pass through the I/O driver.
                            rx.close();
                            drop(sender);
                            break 'read Poll::Ready(Ok(inbound));
                        }
                        // Failures for this call (an oversized or undecodable reply) come
                        // through the slot.
                        if let ready @ Poll::Ready(_) = std::pin::Pin::new(&mut *rx).poll(cx) {
                            break 'read ready;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        let why = format!("connection to {} failed: {e}", self.endpoint);
                        self.mark_dead(Cause::with_source(why, e));
                        break 'read std::pin::Pin::new(&mut *rx).poll(cx);
                    }
                }
            }
            Poll::Pending
        };
        drop(recv);
        if outcome.is_ready() {
            // This caller stops reading, and the socket is unarmed; the reader task takes
            // what other calls' events may be buffered (and sees a failed socket for itself).
            let pending = self.pending();
            let others_open = !pending.is_empty();
            self.readers.leave_with_reply(pending, others_open);
        } else {
            // A turn's worth of other calls' events: the reader task reads on.
            self.readers.yield_to_task();
        }
        outcome
    }

    /// Handles one message from the socket: frames, size limit, mesh key, decoding, and
    /// delivery to the call it answers (for `own`, see [`ConnShared::deliver`]).
    fn handle_incoming(&self, message: ZmqMessage, own: Option<&MessageId>) -> Option<OwnReply> {
        let mut envelope = wire::split_frames(message.into_vec())?;
        let limit = self.config.max_message_size;
        if envelope.event.len() > limit {
            let size = envelope.event.len();
            tracing::warn!(endpoint = %self.endpoint, size, limit, "reply over the size limit");
            if let Some(channel) = wire::decode_header(&envelope.event)
                .ok()
                .and_then(|h| h.response_to)
            {
                self.fail_call(&channel, CallError::MessageTooLarge { size, limit });
            }
            return None;
        }
        let sealing = if self.trust.trust.is_some() {
            let (event, sealing) = self.incoming(envelope.event)?;
            envelope.event = event;
            sealing
        } else {
            Sealing::Unkeyed
        };
        match wire::decode_reply(&envelope.event) {
            Ok(event) => {
                if event.zmesh && !self.zmesh_peer.load(Ordering::Relaxed) {
                    self.zmesh_peer.store(true, Ordering::Release);
                }
                self.deliver(event, own, sealing)
            }
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e.error, "undecodable reply");
                if let Some(channel) = e.response_to {
                    let why = format!("undecodable reply: {}", e.error);
                    self.fail_call(
                        &channel,
                        CallError::Protocol(Cause::with_source(why, e.error)),
                    );
                }
                None
            }
        }
    }

    /// Hands an event to the call it answers. A first reply for `own` (the call of a caller
    /// reading the socket itself) is returned instead of sent: see [`OwnReply`]. With a mesh
    /// key, a reply out of its place in the call fails the call ([`Call::check_order`]).
    fn deliver(
        &self,
        event: ReplyEvent,
        own: Option<&MessageId>,
        sealing: Sealing,
    ) -> Option<OwnReply> {
        let ReplyEvent {
            response_to,
            name,
            args,
            ..
        } = event;
        let channel = response_to.as_ref();
        let event = Reply { name, args };
        let mut pending = self.pending();
        let own = |call: &MessageId| own == Some(call);
        match pending.route(channel, event.name.as_ref(), sealing, Instant::now()) {
            Route::Dropped => {
                // Late heartbeats and replies to calls that timed out: zerorpc drops these too.
                let dropped = pending.dropped();
                match channel {
                    None => {
                        tracing::debug!(name = %event.name, ?dropped, "dropping unsolicited event")
                    }
                    Some(channel) => {
                        tracing::trace!(name = %event.name, %channel, ?dropped, "event for a closed call")
                    }
                }
                None
            }
            Route::Control => None,
            Route::OutOfOrder(call, why) => {
                drop(pending);
                self.trust
                    .integrity_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %self.endpoint, channel = ?channel, problem = %why, "reply stream tampered with");
                fail(call, CallError::Integrity(why));
                if let Some(channel) = channel {
                    self.cancel(channel);
                }
                None
            }
            Route::End(mut call) => {
                drop(pending);
                if let Some(first) = call.first.take() {
                    return hand_over(first, Inbound::Event(event), channel.is_some_and(own));
                } else if let Some(stream) = call.stream {
                    let _ = stream.try_send(Inbound::Event(event));
                }
                None
            }
            Route::FirstOfStream(first, call) => {
                // The queue holds the credit window plus one spare slot; a server that
                // fills the spare slot has sent beyond its credit.
                let (tx, rx) = mpsc::channel(self.config.stream_window as usize + 1);
                call.stream = Some(tx);
                drop(pending);
                hand_over(first, Inbound::Stream(event, rx), channel.is_some_and(own))
            }
            Route::FirstOther(first) => {
                // An unknown event name as the first reply: the caller reports it.
                drop(pending);
                hand_over(first, Inbound::Event(event), channel.is_some_and(own))
            }
            Route::Item(call) => {
                let over_credit = call.stream.as_ref().is_some_and(|s| s.capacity() <= 1);
                if !over_credit {
                    if let Some(stream) = &call.stream {
                        let _ = stream.try_send(Inbound::Event(event));
                    }
                    return None;
                }
                let entry = channel.and_then(|c| pending.remove(c));
                drop(pending);
                if let Some(entry) = entry {
                    let why = "server sent more stream items than the credit it was granted";
                    fail(entry, CallError::Protocol(Cause::new(why)));
                }
                None
            }
        }
    }

    fn fail_call(&self, channel: &MessageId, error: CallError) {
        let entry = self.pending().remove(channel);
        if let Some(entry) = entry {
            fail(entry, error);
        }
    }
}

/// A first reply for the call of the caller that read it from the socket, with the slot's
/// sender, which that caller drops after closing its receiver.
type OwnReply = (oneshot::Sender<Inbound>, Inbound);

/// Sends a call's first reply through its slot, or returns it when it is `own`.
fn hand_over(first: oneshot::Sender<Inbound>, inbound: Inbound, own: bool) -> Option<OwnReply> {
    if own {
        return Some((first, inbound));
    }
    let _ = first.send(inbound);
    None
}

/// A live connection; dropping it stops its tasks and closes the socket.
pub(crate) struct Connection {
    pub(crate) shared: Arc<ConnShared>,
    tasks: Vec<AbortHandle>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.mark_dead("connection closed");
    }
}

impl Connection {
    /// Connects (waiting for the ZMTP handshake) and starts the connection's tasks.
    ///
    /// The `zeromq` crate retries a refused connection by itself (until a refusal has
    /// lasted `endpoint::REFUSED_GRACE`, when this fails with a refused
    /// [`CallError::Connect`]), but a handshake cut short (a peer restarting, a reset under
    /// load) fails at once; those are retried here with backoff until the deadline.
    pub(crate) async fn open(
        endpoint: &str,
        config: &ClientConfig,
        trust: &TrustState,
        deadline: Instant,
    ) -> Result<Self, CallError> {
        let mut backoff = Duration::from_millis(5);
        let (socket, monitor) = loop {
            match Self::connect_once(endpoint, config, deadline).await {
                Ok(connected) => break connected,
                Err(e) => {
                    let retry_at = Instant::now() + backoff;
                    // A refusal has been retried for its grace already.
                    if retry_at >= deadline || e.is_refused() {
                        return Err(e);
                    }
                    tracing::debug!(endpoint, error = %e, "connect failed; retrying");
                    tokio::time::sleep_until(retry_at.into()).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        };
        let (send, recv) = socket.split();
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let readers = Arc::new(Readers::default());
        let shared = Arc::new(ConnShared {
            endpoint: endpoint.to_owned(),
            config: config.clone(),
            sender: send,
            next_deadline: AtomicU64::new(u64::MAX),
            deadline_changed: tokio::sync::Notify::new(),
            opened: Instant::now(),
            pending: Mutex::new(PendingMap::new(config.heartbeat)),
            alive: AtomicBool::new(true),
            zmesh_peer: AtomicBool::new(false),
            control: control_tx,
            trust: trust.clone(),
            recv: Mutex::new(recv),
            readers: readers.clone(),
            readers_waker: Waker::from(readers),
        });
        let tasks = vec![
            tokio::spawn(read_loop(shared.clone())).abort_handle(),
            tokio::spawn(watch_disconnect(shared.clone(), monitor)).abort_handle(),
            tokio::spawn(write_control(shared.clone(), control_rx)).abort_handle(),
            tokio::spawn(sweep_loop(shared.clone())).abort_handle(),
            tokio::spawn(deadline_loop(shared.clone())).abort_handle(),
            tokio::spawn(learn_peer_kind(shared.clone())).abort_handle(),
        ];
        tracing::debug!(endpoint, "connected");
        Ok(Self { shared, tasks })
    }
}

impl Connection {
    async fn connect_once(
        endpoint: &str,
        config: &ClientConfig,
        deadline: Instant,
    ) -> Result<(DealerSocket, futures::channel::mpsc::Receiver<SocketEvent>), CallError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A hostile or broken server is cut while reading as a client is by a node: a
        // reply over the wire limit, or one of too many frames, closes the connection.
        let mut options = crate::zmtp::options(config.max_message_size, crate::zmtp::MAX_FRAMES);
        options.connect_timeout(
            remaining
                .min(config.connect_timeout)
                .max(Duration::from_millis(1)),
        );
        let mut socket = DealerSocket::with_options(options);
        let monitor = socket.monitor();
        let connect_error = |reason: Cause| CallError::Connect {
            endpoint: endpoint.to_owned(),
            reason,
        };
        // The crate retries a refused connection until its timeout without a word; the
        // probe is what tells "nothing listens there" from "slow" (one rule, in `endpoint`).
        let refused = async {
            match endpoint.parse::<crate::Endpoint>() {
                Ok(parsed) => crate::endpoint::refused(&parsed).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            connected = tokio::time::timeout_at(deadline.into(), socket.connect(endpoint)) => {
                match connected {
                    Ok(Ok(())) => Ok((socket, monitor)),
                    Ok(Err(e)) => Err(connect_error(Cause::of(e))),
                    Err(_) => Err(connect_error("deadline passed while connecting".into())),
                }
            }
            error = refused => Err(connect_error(Cause::with_source(
                crate::endpoint::REFUSED,
                error,
            ))),
        }
    }
}

async fn read_loop(shared: Arc<ConnShared>) {
    // Delivering a reply only wakes its caller; on a `current_thread` runtime the callers
    // (and their next requests) run only when this loop yields (see `read_turns`).
    let mut turns = ReadTurns::client();
    loop {
        turns.handled_one().await;
        match std::future::poll_fn(|cx| shared.poll_reader(cx)).await {
            Ok(message) => {
                shared.handle_incoming(message, None);
            }
            Err(e) => {
                let why = format!("connection to {} failed: {e}", shared.endpoint);
                shared.mark_dead(Cause::with_source(why, e));
                return;
            }
        }
    }
}

async fn watch_disconnect(
    shared: Arc<ConnShared>,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
) {
    while let Some(event) = monitor.next().await {
        if let SocketEvent::Disconnected(_) = event {
            shared.mark_dead(format!("{} disconnected", shared.endpoint));
            return;
        }
    }
}

async fn write_control(shared: Arc<ConnShared>, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(event) = rx.recv().await {
        if !shared.is_alive() {
            continue;
        }
        // Not `ConnShared::send`: a failed control event is not a reason to fail the calls.
        // Control events answer a channel (`response_to`): no request id goes in the clear.
        let message = wire::join_frames(&[], shared.outgoing(event, None));
        let sent = match shared.sender.try_send(message) {
            Ok(()) => Ok(()),
            Err(TrySendError::WouldBlock(message)) => shared.sender.clone().send(message).await,
            Err(TrySendError::Failed(e)) => Err(e),
        };
        if let Err(e) = sent {
            tracing::debug!(endpoint = %shared.endpoint, error = %e, "control event not sent");
        }
    }
}

/// Heartbeats every open call and fails calls whose server went silent
/// ([`Liveness::channel`]: zerorpc's timing).
async fn sweep_loop(shared: Arc<ConnShared>) {
    let period = shared.config.heartbeat;
    let mut ticker = tokio::time::interval(period / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let swept = shared.pending().sweep(Instant::now());
        for p in swept.lost {
            let limit = p.liveness.silence_limit();
            let error = if p.liveness.was_heard() {
                tracing::info!(endpoint = %shared.endpoint, "peer stopped heartbeating");
                CallError::PeerLost(
                    format!(
                        "no heartbeat from {} for more than {limit:?}",
                        shared.endpoint
                    )
                    .into(),
                )
            } else {
                // Not one event on the channel since the request: a server that ignores
                // the call, rather than one that died while running it.
                tracing::info!(endpoint = %shared.endpoint, "call unanswered");
                let silent = super::NoAnswer {
                    endpoint: shared.endpoint.to_string(),
                    silence: limit,
                };
                CallError::PeerLost(Cause::of(silent))
            };
            fail(p, error);
        }
        for id in swept.due {
            shared.send_control(&id, names::HEARTBEAT, HEARTBEAT_ARGS);
        }
    }
}

/// Enforces the deadlines of calls waiting for their first reply with one timer, armed for
/// the earliest of them (see [`ConnShared::register`]).
async fn deadline_loop(shared: Arc<ConnShared>) {
    loop {
        match shared.next_deadline() {
            None => shared.deadline_changed.notified().await,
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => shared.expire_deadlines(),
                    () = shared.deadline_changed.notified() => {}
                }
            }
        }
    }
}

/// Pings the new peer once so the connection learns whether it speaks zmesh's extensions
/// (its reply carries the marker) before any call needs to be cancelled.
async fn learn_peer_kind(shared: Arc<ConnShared>) {
    let id = MessageId::generate();
    let header = Header::zmesh_with_id(id.clone(), None);
    let (tx, rx) = oneshot::channel();
    shared.register(id.clone(), tx, None, Instant::now());
    // This call waits on its slot, never on the socket: the reader task must be reading.
    shared.readers.wake_task();
    let event = wire::encode_event(&header, crate::reserved::ZERORPC_PING, EMPTY_ARRAY_ARGS);
    if shared.send(event, &id).await.is_ok() {
        let _ = tokio::time::timeout(shared.config.heartbeat * 3, rx).await;
    }
    shared.unregister(&id);
}
