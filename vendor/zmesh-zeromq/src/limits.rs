//! zmesh patch: the resource limits of a socket and the counters of what they cut.
//!
//! The crate as released trusted its peers: no bound on a message's size or frame count
//! while reading it, no deadline on the handshake, no cap on accepted connections, no
//! back-off when `accept` fails for want of descriptors, and per-peer send queues bounded
//! in messages only. The limits are set in [`SocketOptions`](crate::SocketOptions); this
//! module holds the pieces they share: [`SocketStats`] (what each limit cut, readable by
//! the application), the per-peer send-queue byte budget, the accepted-connection slots and
//! the accept back-off.

use crate::codec::Message;

use futures::{AsyncRead, AsyncWrite};
use parking_lot::Mutex;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// What one frame costs beyond its payload when a message's size is measured against
/// [`SocketOptions::max_message_size`](crate::SocketOptions::max_message_size) and against
/// the send-queue byte bound: about the memory of the frame's handle in a message. Without
/// it, empty frames (2 bytes on the wire, about 34 bytes in memory each) would be free.
pub const FRAME_OVERHEAD: usize = 32;

/// Default [`SocketOptions::max_message_size`](crate::SocketOptions::max_message_size):
/// 64 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
/// Default [`SocketOptions::max_frames`](crate::SocketOptions::max_frames): 1024.
pub const DEFAULT_MAX_FRAMES: usize = 1024;
/// Default [`SocketOptions::handshake_timeout`](crate::SocketOptions::handshake_timeout):
/// 5 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`SocketOptions::send_queue_bytes`](crate::SocketOptions::send_queue_bytes):
/// 16 MiB per peer.
pub const DEFAULT_SEND_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// The first pause after a failed `accept` (such as `EMFILE`); it doubles on each failure
/// in a row up to [`ACCEPT_BACKOFF_MAX`] and starts again after a success.
pub(crate) const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest pause between two `accept` attempts after failures.
pub(crate) const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What a message costs against the limits: its payload bytes plus [`FRAME_OVERHEAD`] per
/// frame. Greetings and commands never wait in a send queue and cost nothing there.
pub(crate) fn message_cost(message: &Message) -> usize {
    match message {
        Message::Message(message) => message
            .iter()
            .map(|frame| frame.len().saturating_add(FRAME_OVERHEAD))
            .fold(0usize, usize::saturating_add),
        Message::Greeting(_) | Message::Command(_) => 0,
    }
}

/// Counters of the connections and messages a socket's limits cut, shared by the socket,
/// its split halves and every connection's tasks. Read them with
/// [`Socket::stats`](crate::Socket::stats) (or the halves' `stats`) and
/// [`SocketStats::snapshot`]. They only grow.
#[derive(Debug, Default)]
pub struct SocketStats {
    oversized: AtomicU64,
    too_many_frames: AtomicU64,
    handshake_timeouts: AtomicU64,
    connections_refused: AtomicU64,
    accept_errors: AtomicU64,
    send_queue_full: AtomicU64,
    send_dropped: AtomicU64,
    disconnected: AtomicU64,
}

/// A copy of a socket's [`SocketStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SocketStatsSnapshot {
    /// Connections closed because a message (or command) being read would have exceeded
    /// [`SocketOptions::max_message_size`](crate::SocketOptions::max_message_size).
    pub oversized: u64,
    /// Connections closed because a message being read had more frames than
    /// [`SocketOptions::max_frames`](crate::SocketOptions::max_frames).
    pub too_many_frames: u64,
    /// Connections dropped because the ZMTP greeting or READY did not complete within
    /// [`SocketOptions::handshake_timeout`](crate::SocketOptions::handshake_timeout).
    pub handshake_timeouts: u64,
    /// Accepted connections closed at once because the endpoint already had
    /// [`SocketOptions::max_connections`](crate::SocketOptions::max_connections) open.
    pub connections_refused: u64,
    /// Failed `accept` calls (such as `EMFILE`, out of descriptors), each followed by a
    /// back-off pause.
    pub accept_errors: u64,
    /// Sends that found a peer's queue at its byte bound
    /// ([`SocketOptions::send_queue_bytes`](crate::SocketOptions::send_queue_bytes)): a
    /// `try_send` returned `WouldBlock`, an async `send` waited.
    pub send_queue_full: u64,
    /// Messages a PUB socket dropped for one subscriber whose queue was at its byte bound.
    pub send_dropped: u64,
    /// Connections the application closed with `disconnect_peer`.
    pub disconnected: u64,
}

impl SocketStats {
    /// A copy of every counter.
    pub fn snapshot(&self) -> SocketStatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SocketStatsSnapshot {
            oversized: load(&self.oversized),
            too_many_frames: load(&self.too_many_frames),
            handshake_timeouts: load(&self.handshake_timeouts),
            connections_refused: load(&self.connections_refused),
            accept_errors: load(&self.accept_errors),
            send_queue_full: load(&self.send_queue_full),
            send_dropped: load(&self.send_dropped),
            disconnected: load(&self.disconnected),
        }
    }

    pub(crate) fn count_oversized(&self) {
        self.oversized.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_too_many_frames(&self) {
        self.too_many_frames.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_handshake_timeout(&self) {
        self.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_send_queue_full(&self) {
        self.send_queue_full.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_send_dropped(&self) {
        self.send_dropped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_disconnected(&self) {
        self.disconnected.fetch_add(1, Ordering::Relaxed);
    }
}

/// The bytes one peer's send queue may hold: reserved by a sender before it queues a
/// message, released by the peer's writer task once the message is written. A message is
/// always let into an empty queue, however large, so a message over the bound can still
/// be sent; otherwise a reservation that would pass the bound fails.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    limit: usize,
    closed: AtomicBool,
    /// Senders waiting for room (async `send`), woken on every release and at close.
    waiters: Mutex<Vec<Waker>>,
}

impl ByteBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
            closed: AtomicBool::new(false),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// Reserves `bytes` if they fit (or the queue is empty).
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used != 0 && used.saturating_add(bytes) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(
                used,
                used.saturating_add(bytes),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    /// Waits until `bytes` fit; `Err(())` once the peer's writer is gone.
    pub(crate) fn poll_reserve(&self, cx: &mut Context<'_>, bytes: usize) -> Poll<Result<(), ()>> {
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(()));
        }
        if self.try_reserve(bytes) {
            return Poll::Ready(Ok(()));
        }
        {
            let mut waiters = self.waiters.lock();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
        }
        // Re-check after registering: a release in between would otherwise be missed.
        if self.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(()));
        }
        if self.try_reserve(bytes) {
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }

    /// Returns `bytes` (written, or never queued after all) and wakes waiting senders.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // Saturating: a message that entered the queue without a reservation must not
        // wrap the count (which would block the queue for good).
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
        self.wake_all();
    }

    /// Marks the peer's writer gone: waiting and later senders fail instead of waiting.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for waker in waiters {
            waker.wake();
        }
    }

    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Closes the budget when the writer task that owns it ends, however it ends.
pub(crate) struct CloseOnDrop(pub(crate) Arc<ByteBudget>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The accepted connections one bound endpoint has open, against its cap.
#[derive(Debug)]
pub(crate) struct ConnectionSlots {
    open: AtomicUsize,
    cap: usize,
}

impl ConnectionSlots {
    pub(crate) fn new(cap: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            cap: cap.unwrap_or(usize::MAX),
        })
    }

    /// A slot for one more connection, or `None` at the cap.
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Arc<ConnectionSlot>> {
        let mut open = self.open.load(Ordering::Acquire);
        loop {
            if open >= self.cap {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Arc::new(ConnectionSlot(self.clone()))),
                Err(now) => open = now,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One open accepted connection; held by both halves of its stream, so the slot is
/// given back when the descriptor is really closed (both halves dropped).
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<ConnectionSlots>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream half that holds its connection's slot.
pub(crate) struct Slotted<T> {
    inner: T,
    _slot: Option<Arc<ConnectionSlot>>,
}

impl<T> Slotted<T> {
    pub(crate) fn new(inner: T, slot: Option<Arc<ConnectionSlot>>) -> Self {
        Self { inner, _slot: slot }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Slotted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Slotted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The pause before the next `accept` after failures: 10 ms doubling to 1 s.
#[derive(Debug)]
pub(crate) struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    pub(crate) fn new() -> Self {
        Self {
            next: ACCEPT_BACKOFF_MIN,
        }
    }

    /// The pause to take now; the next one is twice as long (up to the maximum).
    pub(crate) fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(ACCEPT_BACKOFF_MAX);
        pause
    }

    pub(crate) fn succeeded(&mut self) {
        self.next = ACCEPT_BACKOFF_MIN;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZmqMessage;

    use bytes::Bytes;
    use futures::task::noop_waker_ref;

    #[test]
    fn message_cost_counts_payload_and_frame_overhead() {
        let mut message = ZmqMessage::from(Bytes::from_static(b"abc"));
        message.push_back(Bytes::new());
        assert_eq!(
            message_cost(&Message::Message(message)),
            3 + 2 * FRAME_OVERHEAD
        );
    }

    #[test]
    fn byte_budget_admits_into_an_empty_queue_and_bounds_the_rest() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_reserve(1000), "an empty queue takes any message");
        assert!(!budget.try_reserve(1));
        budget.release(1000);
        assert!(budget.try_reserve(60));
        assert!(budget.try_reserve(40));
        assert!(!budget.try_reserve(1));
        assert_eq!(budget.used(), 100);
    }

    #[test]
    fn byte_budget_wakes_waiters_on_release_and_fails_them_at_close() {
        let budget = ByteBudget::new(10);
        let mut cx = Context::from_waker(noop_waker_ref());
        assert!(budget.try_reserve(10));
        assert!(budget.poll_reserve(&mut cx, 5).is_pending());
        budget.release(10);
        assert_eq!(budget.poll_reserve(&mut cx, 5), Poll::Ready(Ok(())));
        assert!(budget.poll_reserve(&mut cx, 10).is_pending());
        budget.close();
        assert_eq!(budget.poll_reserve(&mut cx, 10), Poll::Ready(Err(())));
    }

    #[test]
    fn connection_slots_stop_at_the_cap_and_come_back_on_drop() {
        let slots = ConnectionSlots::new(Some(2));
        let a = slots.try_acquire().expect("first");
        let b = slots.try_acquire().expect("second");
        assert!(slots.try_acquire().is_none());
        drop(a);
        assert_eq!(slots.open(), 1);
        let c = slots.try_acquire().expect("freed slot");
        drop((b, c));
        assert_eq!(slots.open(), 0);
    }

    #[test]
    fn accept_backoff_doubles_to_one_second_and_resets() {
        let mut backoff = AcceptBackoff::new();
        let pauses: Vec<_> = (0..9).map(|_| backoff.failed()).collect();
        assert_eq!(pauses[0], Duration::from_millis(10));
        assert_eq!(pauses[1], Duration::from_millis(20));
        assert_eq!(pauses[7], Duration::from_secs(1));
        assert_eq!(pauses[8], Duration::from_secs(1));
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(10));
    }
}
