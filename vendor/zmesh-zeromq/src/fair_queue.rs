//! zmesh patch: the fair queue keeps its streams in slots and its ready order in a FIFO of
//! slot numbers, and gives each stream one waker for its lifetime, so receiving a message
//! costs no hashing, no allocation and no heap reordering. Upstream's queue (a `HashMap` of
//! streams and a `HashSet` of queued keys, both SipHash over the peer identity, a
//! `BinaryHeap` ordered by a counter, and a new `Arc` waker per poll) spent about 3k
//! instructions per message there. The key map is touched only when a peer connects or
//! goes. The order is upstream's: streams are polled in the order they were woken (a
//! stream that yielded an item goes to the back), and a poll takes only the streams that
//! were ready when it started, so a stream that wakes itself cannot starve the others.

use futures::task::{waker_ref, ArcWake};
use futures::Stream;
use parking_lot::Mutex;

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

/// Where a stream lives: its slot, and the number of its insertion, which a slot reused
/// by a later stream does not share (so a stale waker or ready entry is recognised).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    slot: usize,
    generation: u64,
}

struct Entry<S, K: Clone> {
    key: K,
    generation: u64,
    /// `None` while `poll_next` polls it outside the lock.
    stream: Option<Pin<Box<S>>>,
    /// Whether its place is in the ready FIFO.
    queued: bool,
    /// The stream's waker, made on its first poll and reused for every later one.
    waker: Option<Arc<StreamWaker<S, K>>>,
}

pub(crate) struct QueueInner<S, K: Clone> {
    slots: Vec<Option<Entry<S, K>>>,
    free: Vec<usize>,
    /// The slot of each key.
    index: HashMap<K, usize>,
    /// Places woken and not yet polled, in the order they were woken.
    ready: VecDeque<Place>,
    next_generation: u64,
    waker: Option<Waker>,
    /// Callback invoked when a stream ends (peer disconnected).
    /// Wrapped in Arc so it can be cloned and called outside the lock.
    on_disconnect: Option<Arc<dyn Fn(K) + Send + Sync>>,
}

impl<S, K: Clone + Eq + Hash> QueueInner<S, K> {
    pub fn insert(&mut self, k: K, s: S) {
        // A key inserted again (a peer reconnecting under its identity) replaces its stream.
        self.remove(&k);
        let generation = self.next_generation;
        self.next_generation += 1;
        let entry = Entry {
            key: k.clone(),
            generation,
            stream: Some(Box::pin(s)),
            queued: false,
            waker: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.index.insert(k, slot);
        self.push_ready(Place { slot, generation });
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    pub fn remove(&mut self, k: &K) {
        if let Some(slot) = self.index.remove(k) {
            self.slots[slot] = None;
            self.free.push(slot);
        }
    }

    /// Clear all streams and the ready queue.
    ///
    /// Used during shutdown to ensure TCP connections are closed even when
    /// other components (like reconnect tasks) hold Arc references to the inner.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.index.clear();
        self.ready.clear();
        // Wake the waker so any pending poll_next returns
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// The live entry at `place`, if the stream inserted there is still there.
    fn entry_mut(&mut self, place: Place) -> Option<&mut Entry<S, K>> {
        self.slots
            .get_mut(place.slot)?
            .as_mut()
            .filter(|entry| entry.generation == place.generation)
    }

    /// Frees `place` after its stream ended.
    fn forget(&mut self, place: Place) {
        if let Some(entry) = self.entry_mut(place) {
            let key = entry.key.clone();
            self.index.remove(&key);
            self.slots[place.slot] = None;
            self.free.push(place.slot);
        }
    }

    fn push_ready(&mut self, place: Place) {
        if let Some(entry) = self.entry_mut(place) {
            if !entry.queued {
                entry.queued = true;
                self.ready.push_back(place);
            }
        }
    }

    /// Keeps `waker` as the consumer's, cloning it only when it changed.
    fn set_waker(&mut self, waker: &Waker) {
        match &self.waker {
            Some(current) if current.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
    }

    fn has_streams(&self) -> bool {
        !self.index.is_empty()
    }

    #[cfg(test)]
    fn streams_mut(&mut self) -> impl Iterator<Item = &mut Pin<Box<S>>> {
        self.slots
            .iter_mut()
            .flatten()
            .filter_map(|entry| entry.stream.as_mut())
    }

    #[cfg(test)]
    fn stream_mut(&mut self, k: &K) -> Option<&mut Pin<Box<S>>> {
        let slot = *self.index.get(k)?;
        self.slots[slot].as_mut()?.stream.as_mut()
    }

    #[cfg(test)]
    fn queued_len(&self) -> usize {
        self.slots.iter().flatten().filter(|e| e.queued).count()
    }
}

pub struct FairQueue<S, K: Clone> {
    block_on_no_clients: bool,
    inner: Arc<Mutex<QueueInner<S, K>>>,
}

/// A stream's waker: marks its place ready and wakes the consumer. It holds the queue
/// weakly, as the queue holds it.
struct StreamWaker<S, K: Clone> {
    inner: Weak<Mutex<QueueInner<S, K>>>,
    place: Place,
}

impl<S, K> ArcWake for StreamWaker<S, K>
where
    S: Send,
    K: Clone + Eq + Hash + Send + Sync,
{
    fn wake_by_ref(arc_self: &Arc<Self>) {
        let Some(inner) = arc_self.inner.upgrade() else {
            return;
        };
        let mut inner = inner.lock();
        inner.push_ready(arc_self.place);
        if let Some(waker) = inner.waker.take() {
            waker.wake_by_ref();
        }
    }
}

impl<S, T, K> Stream for FairQueue<S, K>
where
    T: Send,
    S: Stream<Item = T> + Send + 'static,
    K: Eq + Hash + Unpin + Clone + Send + Sync + 'static,
{
    type Item = (K, T);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let fair_queue = self.get_mut();
        let mut remaining_ready = {
            let mut inner = fair_queue.inner.lock();
            inner.set_waker(cx.waker());
            inner.ready.len()
        };

        while remaining_ready > 0 {
            remaining_ready -= 1;
            let (place, key, mut io_stream, waker) = {
                let mut inner = fair_queue.inner.lock();
                let Some(place) = inner.ready.pop_front() else {
                    break;
                };
                // A place whose stream was removed since it was woken is skipped.
                let Some(entry) = inner.entry_mut(place) else {
                    continue;
                };
                entry.queued = false;
                let Some(stream) = entry.stream.take() else {
                    continue;
                };
                let queue = &fair_queue.inner;
                let waker = entry
                    .waker
                    .get_or_insert_with(|| {
                        Arc::new(StreamWaker {
                            inner: Arc::downgrade(queue),
                            place,
                        })
                    })
                    .clone();
                (place, entry.key.clone(), stream, waker)
            };

            let waker_ref = waker_ref(&waker);
            let mut stream_cx = Context::from_waker(&waker_ref);
            match io_stream.as_mut().poll_next(&mut stream_cx) {
                Poll::Ready(Some(res)) => {
                    let mut inner = fair_queue.inner.lock();
                    // Not put back if the stream was removed while it was polled.
                    if let Some(entry) = inner.entry_mut(place) {
                        entry.stream = Some(io_stream);
                        inner.push_ready(place);
                    }
                    return Poll::Ready(Some((key, res)));
                }
                Poll::Ready(None) => {
                    // Peer disconnected. Don't put the stream back.
                    // Clone the callback Arc so we can call it outside the lock
                    // (to avoid deadlock if callback accesses inner)
                    let callback = {
                        let mut inner = fair_queue.inner.lock();
                        inner.forget(place);
                        inner.on_disconnect.clone()
                    };
                    // Call callback outside the lock
                    if let Some(callback) = callback {
                        callback(key);
                    }
                    // Continue to poll other streams instead of returning None immediately.
                    continue;
                }
                Poll::Pending => {
                    let mut inner = fair_queue.inner.lock();
                    if let Some(entry) = inner.entry_mut(place) {
                        entry.stream = Some(io_stream);
                    }
                    continue;
                }
            }
        }

        let mut inner = fair_queue.inner.lock();
        inner.set_waker(cx.waker());
        let should_wake = !inner.ready.is_empty();
        let result = if inner.has_streams() || fair_queue.block_on_no_clients {
            Poll::Pending
        } else {
            Poll::Ready(None)
        };
        drop(inner);

        if should_wake {
            cx.waker().wake_by_ref();
        }
        result
    }
}

impl<S, K: Clone> FairQueue<S, K> {
    pub fn new(block_on_no_clients: bool) -> Self {
        Self {
            block_on_no_clients,
            inner: Arc::new(Mutex::new(QueueInner {
                slots: Vec::new(),
                free: Vec::new(),
                index: HashMap::new(),
                ready: VecDeque::new(),
                next_generation: 0,
                waker: None,
                on_disconnect: None,
            })),
        }
    }

    /// Set a callback to be invoked when a stream ends (peer disconnected).
    ///
    /// The callback receives the key of the disconnected stream.
    pub fn set_on_disconnect<F>(&mut self, callback: F)
    where
        F: Fn(K) + Send + Sync + 'static,
    {
        self.inner.lock().on_disconnect = Some(Arc::new(callback));
    }

    pub(crate) fn inner(&self) -> Arc<Mutex<QueueInner<S, K>>> {
        self.inner.clone()
    }
}

#[cfg(test)]
mod test {
    use crate::async_rt;
    use crate::fair_queue::FairQueue;
    use futures::task::noop_waker;
    use futures::Future;
    use futures::{stream, Stream, StreamExt};
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    /// Test stream that yields Pending for the first N polls, then emits messages FIFO
    struct TestStream {
        pending_polls: usize,
        messages: VecDeque<&'static str>,
    }

    struct CountPendingStream {
        poll_count: usize,
    }

    struct WakePendingStream {
        poll_count: usize,
    }

    struct WakeThenReadyStream {
        poll_count: usize,
        message: Option<&'static str>,
    }

    impl TestStream {
        fn new(pending_polls: usize, messages: &[&'static str]) -> Self {
            Self {
                pending_polls,
                messages: messages.iter().copied().collect(),
            }
        }

        fn ready(messages: &[&'static str]) -> Self {
            Self::new(0, messages)
        }

        fn pending_once(messages: &[&'static str]) -> Self {
            Self::new(1, messages)
        }
    }

    impl Stream for CountPendingStream {
        type Item = &'static str;

        fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.get_mut().poll_count += 1;
            Poll::Pending
        }
    }

    impl Stream for WakePendingStream {
        type Item = &'static str;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.get_mut().poll_count += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    impl Stream for WakeThenReadyStream {
        type Item = &'static str;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            this.poll_count += 1;
            if this.poll_count == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(this.message.take())
            }
        }
    }

    impl Stream for TestStream {
        type Item = &'static str;

        fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            if this.pending_polls > 0 {
                this.pending_polls -= 1;
                return Poll::Pending;
            }
            Poll::Ready(this.messages.pop_front())
        }
    }

    enum UnifiedStream {
        Test(TestStream),
        CountPending(CountPendingStream),
        WakePending(WakePendingStream),
    }

    impl Stream for UnifiedStream {
        type Item = &'static str;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            match self.get_mut() {
                UnifiedStream::Test(stream) => Pin::new(stream).poll_next(cx),
                UnifiedStream::CountPending(stream) => Pin::new(stream).poll_next(cx),
                UnifiedStream::WakePending(stream) => Pin::new(stream).poll_next(cx),
            }
        }
    }

    #[async_rt::test]
    async fn test_fair_queue_ready() {
        let a = stream::iter(vec!["a1", "a2", "a3"]);
        let b = stream::iter(vec!["b1", "b2", "b3"]);
        let c = stream::iter(vec!["c1", "c2", "c3"]);

        let mut f_queue: FairQueue<_, u64> = FairQueue::new(false);
        {
            let inner = f_queue.inner();
            let mut inner_lock = inner.lock();
            inner_lock.insert(1, a);
            inner_lock.insert(2, b);
            inner_lock.insert(3, c);
        }

        let mut results = Vec::new();
        while let Some(i) = f_queue.next().await {
            results.push(i);
        }

        assert_eq!(
            results,
            vec![
                (1, "a1"),
                (2, "b1"),
                (3, "c1"),
                (1, "a2"),
                (2, "b2"),
                (3, "c2"),
                (1, "a3"),
                (2, "b3"),
                (3, "c3")
            ]
        );
    }

    #[async_rt::test]
    async fn test_fair_queue_next_future_can_be_dropped_after_pending() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);

        let mut fair_queue: FairQueue<WakeThenReadyStream, &str> = FairQueue::new(false);
        {
            let inner = fair_queue.inner();
            let mut lock = inner.lock();
            lock.insert(
                "peer",
                WakeThenReadyStream {
                    poll_count: 0,
                    message: Some("message"),
                },
            );
        }

        {
            let mut next = fair_queue.next();
            assert!(
                matches!(Pin::new(&mut next).poll(&mut cx), Poll::Pending),
                "first poll should park the recv future"
            );
        }

        assert_eq!(fair_queue.next().await, Some(("peer", "message")));
    }

    #[async_rt::test]
    async fn test_fair_queue_different_size() {
        let a = stream::iter(vec!["a1", "a2", "a3"]);
        let b = stream::iter(vec!["b1"]);
        let c = stream::iter(vec!["c1", "c2"]);

        let mut f_queue: FairQueue<_, u64> = FairQueue::new(false);
        {
            let inner = f_queue.inner();
            let mut inner_lock = inner.lock();
            inner_lock.insert(1, a);
            inner_lock.insert(2, b);
            inner_lock.insert(3, c);
        }

        let mut results = Vec::new();
        while let Some(i) = f_queue.next().await {
            results.push(i);
        }

        // FairQueue continues polling all streams until all are exhausted
        assert_eq!(
            results,
            vec![
                (1, "a1"),
                (2, "b1"),
                (3, "c1"),
                (1, "a2"),
                (3, "c2"),
                (1, "a3")
            ]
        );
    }

    #[test]
    fn test_fair_queue_continues_on_pending() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);

        let mut fair_queue: FairQueue<UnifiedStream, &str> = FairQueue::new(false);
        {
            let inner = fair_queue.inner();
            let mut lock = inner.lock();
            lock.insert(
                "slow",
                UnifiedStream::Test(TestStream::pending_once(&["s1"])),
            );
            lock.insert(
                "fast",
                UnifiedStream::Test(TestStream::ready(&["f1", "f2"])),
            );
        }

        // First poll should return fast stream (regression test: no starvation)
        let result = Pin::new(&mut fair_queue).poll_next(&mut cx);
        match result {
            Poll::Ready(Some((key, value))) => {
                assert_eq!(key, "fast");
                assert_eq!(value, "f1");
            }
            other => panic!("Expected fast stream first, got: {:#?}", other),
        }

        // Second poll: fast stream still ready, slow stream pending
        let result = Pin::new(&mut fair_queue).poll_next(&mut cx);
        match result {
            Poll::Ready(Some((key, value))) => {
                assert_eq!(key, "fast");
                assert_eq!(value, "f2");
            }
            other => panic!("Expected fast stream second, got: {:#?}", other),
        }

        // Third poll: With noop_waker, slow stream hasn't been re-polled
        let result = Pin::new(&mut fair_queue).poll_next(&mut cx);
        match result {
            Poll::Pending => {} // Expected with noop_waker
            other @ Poll::Ready(_) => panic!("Expected Pending, got: {:#?}", other),
        }
    }

    #[test]
    fn test_fair_queue_multiple_clients_fairness() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);

        let mut fair_queue: FairQueue<UnifiedStream, &str> = FairQueue::new(false);
        {
            let inner = fair_queue.inner();
            let mut lock = inner.lock();
            lock.insert(
                "fast",
                UnifiedStream::Test(TestStream::ready(&["f1", "f2", "f3"])),
            );
            lock.insert("slow", UnifiedStream::Test(TestStream::new(2, &["s1"])));
            lock.insert(
                "mid",
                UnifiedStream::Test(TestStream::new(1, &["m1", "m2"])),
            );
        }

        let mut messages = Vec::new();
        const MAX_ITERATIONS: usize = 20; // Upper bound - 3 for fast, 2 for mid, 1 for slow.

        for _ in 0..MAX_ITERATIONS {
            match Pin::new(&mut fair_queue).poll_next(&mut cx) {
                Poll::Ready(Some((key, value))) => {
                    messages.push(format!("{}:{}", key, value));

                    let has_slow = messages.iter().any(|m| m.starts_with("slow:"));
                    let fast_count = messages.iter().filter(|m| m.starts_with("fast:")).count();
                    let mid_count = messages.iter().filter(|m| m.starts_with("mid:")).count();

                    if has_slow && fast_count == 3 && mid_count == 2 {
                        break;
                    }
                }
                Poll::Ready(None) => break,
                Poll::Pending => {}
            }
        }

        // Ensure fast stream isn't starved by pending streams
        let fast_messages = messages.iter().filter(|m| m.starts_with("fast:")).count();
        assert!(
            fast_messages >= 1,
            "Fast stream was starved: {:?}",
            messages
        );
    }

    #[test]
    fn test_fair_queue_polls_ready_set_before_yielding_pending() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);

        let mut fair_queue: FairQueue<UnifiedStream, &str> = FairQueue::new(false);
        {
            let inner = fair_queue.inner();
            let mut lock = inner.lock();
            lock.insert(
                "pending-1",
                UnifiedStream::CountPending(CountPendingStream { poll_count: 0 }),
            );
            lock.insert(
                "pending-2",
                UnifiedStream::CountPending(CountPendingStream { poll_count: 0 }),
            );
            lock.insert(
                "pending-3",
                UnifiedStream::CountPending(CountPendingStream { poll_count: 0 }),
            );
        }

        let result = Pin::new(&mut fair_queue).poll_next(&mut cx);
        assert!(
            matches!(result, Poll::Pending),
            "expected FairQueue to yield Pending, got {result:?}"
        );

        let inner = fair_queue.inner();
        let mut lock = inner.lock();
        let poll_count: usize = lock
            .streams_mut()
            .map(|stream| {
                let UnifiedStream::CountPending(stream) = stream.as_mut().get_mut() else {
                    panic!("unexpected stream type");
                };
                stream.poll_count
            })
            .sum();
        assert_eq!(
            poll_count, 3,
            "FairQueue should poll all initially ready streams before yielding Pending"
        );
    }

    #[test]
    fn test_fair_queue_defers_ready_events_generated_during_poll() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);

        let mut fair_queue: FairQueue<UnifiedStream, &str> = FairQueue::new(false);
        {
            let inner = fair_queue.inner();
            let mut lock = inner.lock();
            lock.insert(
                "pending",
                UnifiedStream::WakePending(WakePendingStream { poll_count: 0 }),
            );
        }

        let result = Pin::new(&mut fair_queue).poll_next(&mut cx);
        assert!(
            matches!(result, Poll::Pending),
            "expected FairQueue to yield Pending, got {result:?}"
        );

        let inner = fair_queue.inner();
        let mut lock = inner.lock();
        assert_eq!(
            lock.ready.len(),
            1,
            "wake generated during poll should remain queued for a later poll"
        );
        assert_eq!(
            lock.queued_len(),
            1,
            "wake generated during poll should be tracked as queued"
        );
        let stream = lock.stream_mut(&"pending").unwrap();
        let UnifiedStream::WakePending(stream) = stream.as_mut().get_mut() else {
            panic!("unexpected stream type");
        };
        assert_eq!(
            stream.poll_count, 1,
            "FairQueue should not consume same-poll wake events immediately"
        );
    }

    /// zmesh patch: a stream keeps one waker for its lifetime (no allocation per poll).
    struct WakerCheckStream {
        seen: Option<std::task::Waker>,
        same: Arc<std::sync::atomic::AtomicUsize>,
        items: VecDeque<&'static str>,
    }

    impl Stream for WakerCheckStream {
        type Item = &'static str;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            if let Some(seen) = &this.seen {
                if seen.will_wake(cx.waker()) {
                    this.same.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            this.seen = Some(cx.waker().clone());
            Poll::Ready(this.items.pop_front())
        }
    }

    #[test]
    fn test_fair_queue_reuses_a_streams_waker() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let same = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut fair_queue: FairQueue<WakerCheckStream, &str> = FairQueue::new(true);
        fair_queue.inner().lock().insert(
            "peer",
            WakerCheckStream {
                seen: None,
                same: same.clone(),
                items: ["a", "b", "c"].into_iter().collect(),
            },
        );
        for want in ["a", "b", "c"] {
            match Pin::new(&mut fair_queue).poll_next(&mut cx) {
                Poll::Ready(Some((_, got))) => assert_eq!(got, want),
                other => panic!("expected {want}, got {other:?}"),
            }
        }
        assert_eq!(
            same.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "the second and third polls saw the first poll's waker"
        );
    }

    /// zmesh patch: a stream removed while its place is ready is skipped, and a stream
    /// inserted later into the same slot is not mistaken for it.
    #[test]
    fn test_fair_queue_removed_stream_is_skipped_and_its_slot_reused() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut fair_queue: FairQueue<UnifiedStream, &str> = FairQueue::new(true);
        {
            let inner = fair_queue.inner();
            let mut lock = inner.lock();
            lock.insert("a", UnifiedStream::Test(TestStream::ready(&["a1"])));
            lock.insert("b", UnifiedStream::Test(TestStream::ready(&["b1"])));
            lock.remove(&"a");
            lock.insert("c", UnifiedStream::Test(TestStream::ready(&["c1"])));
            assert_eq!(lock.slots.len(), 2, "c took a's slot");
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            if let Poll::Ready(Some((key, item))) = Pin::new(&mut fair_queue).poll_next(&mut cx) {
                got.push((key, item));
            }
        }
        assert_eq!(got, vec![("b", "b1"), ("c", "c1")]);
    }

    /// zmesh patch: a key inserted again replaces its stream (a peer reconnecting).
    #[test]
    fn test_fair_queue_reinserted_key_replaces_its_stream() {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut fair_queue: FairQueue<UnifiedStream, &str> = FairQueue::new(true);
        {
            let inner = fair_queue.inner();
            let mut lock = inner.lock();
            lock.insert("peer", UnifiedStream::Test(TestStream::ready(&["old"])));
            lock.insert("peer", UnifiedStream::Test(TestStream::ready(&["new"])));
        }
        match Pin::new(&mut fair_queue).poll_next(&mut cx) {
            Poll::Ready(Some((key, item))) => assert_eq!((key, item), ("peer", "new")),
            other => panic!("expected the new stream's item, got {other:?}"),
        }
        // The new stream has ended and the old one is gone: nothing more, ever.
        assert!(matches!(
            Pin::new(&mut fair_queue).poll_next(&mut cx),
            Poll::Pending
        ));
        assert!(fair_queue.inner().lock().index.is_empty());
    }
}
