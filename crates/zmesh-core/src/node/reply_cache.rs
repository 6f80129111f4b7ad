//! Provides the node's reply cache: a request that carries a stable `zmesh_request_id` runs
//! its handler at most once per node while its reply is remembered; a repeat (a caller's
//! retry after a lost connection) gets the remembered reply, or waits for the first run to
//! finish. Bounded in entries, with a time to live.
//!
//! Only single-value replies are remembered (streams are not), and only for requests that
//! carry the header, so plain calls pay nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::watch;
use zmesh_proto::ErrorKind;

use crate::service::{HandlerError, HandlerFuture, Reply};
use crate::wire::{Header, keys};

/// Longest request id (its msgpack encoding) that is remembered; longer ids are served
/// without deduplication rather than letting a peer choose how much memory a key takes.
const MAX_KEY_BYTES: usize = 256;

/// A remembered request: method name and the raw msgpack of its request id.
pub(crate) type Key = (Box<str>, Bytes);

/// What a finished handler produced, as remembered.
#[derive(Clone)]
enum Outcome {
    Value(Vec<u8>),
    Err(HandlerError),
}

impl Outcome {
    fn into_result(self) -> Result<Reply, HandlerError> {
        match self {
            Self::Value(v) => Ok(Reply::Value(v)),
            Self::Err(e) => Err(e),
        }
    }
}

enum Entry {
    /// The first run is in progress; repeats wait on this for its outcome.
    Running(watch::Receiver<Option<Outcome>>),
    Done {
        outcome: Outcome,
        at: Instant,
        generation: u64,
    },
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Finished entries, oldest first, for eviction by age and count.
    order: VecDeque<(Key, u64)>,
    next_generation: u64,
}

/// The cache; one per node. Cheap to clone (the runs it tracks hold a clone).
#[derive(Clone)]
pub(crate) struct ReplyCache {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    capacity: usize,
    ttl: Duration,
    replayed: AtomicU64,
}

impl ReplyCache {
    pub(crate) fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                capacity,
                ttl,
                replayed: AtomicU64::new(0),
            }),
        }
    }

    /// Requests answered from the cache (or by waiting for their first run).
    pub(crate) fn replayed(&self) -> u64 {
        self.inner.replayed.load(Ordering::Relaxed)
    }

    /// The cache key of a request, if it carries a usable request id and the cache is on.
    pub(crate) fn key(&self, header: &Header, method: &str) -> Option<Key> {
        if self.inner.capacity == 0 || header.extra.is_empty() {
            return None;
        }
        let (_, id) = header.extra.iter().find(|(k, _)| k == keys::REQUEST_ID)?;
        if id.len() > MAX_KEY_BYTES {
            tracing::debug!(
                len = id.len(),
                "request id too long to remember; not deduplicated"
            );
            return None;
        }
        Some((method.into(), id.clone()))
    }

    /// Runs `start` unless this request already ran (or runs) here; the returned future
    /// resolves to the one outcome every repeat shares.
    pub(crate) fn run(
        &self,
        key: Option<Key>,
        start: impl FnOnce() -> HandlerFuture,
    ) -> HandlerFuture {
        let Some(key) = key else { return start() };
        let now = Instant::now();
        let inner = &self.inner;
        let mut state = inner.state();
        match state.entries.get(&key) {
            Some(Entry::Done { outcome, at, .. }) if now.duration_since(*at) < inner.ttl => {
                let outcome = outcome.clone();
                drop(state);
                inner.replayed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(method = %key.0, "repeat of a finished request answered from the reply cache");
                return futures::future::ready(outcome.into_result()).boxed();
            }
            Some(Entry::Running(rx)) => {
                let mut rx = rx.clone();
                drop(state);
                inner.replayed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(method = %key.0, "repeat of a running request waits for its first run");
                return async move {
                    match rx.wait_for(Option::is_some).await {
                        Ok(outcome) => outcome.clone().map_or_else(aborted, Outcome::into_result),
                        Err(_) => aborted(),
                    }
                }
                .boxed();
            }
            _ => {}
        }
        let (tx, rx) = watch::channel(None);
        state.entries.insert(key.clone(), Entry::Running(rx));
        drop(state);
        let guard = RunGuard {
            cache: self.clone(),
            key: Some(key),
            tx,
        };
        let future = start();
        async move {
            let result = future.await;
            guard.finish(&result);
            result
        }
        .boxed()
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // No user code runs under the lock, so a poisoned lock still guards consistent maps.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn finish(&self, key: Key, outcome: Outcome) {
        let now = Instant::now();
        let mut state = self.state();
        let generation = state.next_generation;
        state.next_generation += 1;
        state.entries.insert(
            key.clone(),
            Entry::Done {
                outcome,
                at: now,
                generation,
            },
        );
        state.order.push_back((key, generation));
        // Evict by age, then by count. Stale queue slots (an entry since replaced) are
        // skipped by their generation.
        while let Some((front, front_gen)) = state.order.front() {
            let over = state.order.len() > self.capacity;
            let entry_at = match state.entries.get(front) {
                Some(Entry::Done { at, generation, .. }) if generation == front_gen => Some(*at),
                _ => None,
            };
            let expired = entry_at.is_none_or(|at| now.duration_since(at) >= self.ttl);
            if !(over || expired) {
                break;
            }
            if let Some((key, _)) = state.order.pop_front()
                && entry_at.is_some()
            {
                state.entries.remove(&key);
            }
        }
    }

    fn abandon(&self, key: &Key) {
        let mut state = self.state();
        if matches!(state.entries.get(key), Some(Entry::Running(_))) {
            state.entries.remove(key);
        }
    }
}

fn aborted() -> Result<Reply, HandlerError> {
    Err(HandlerError::new(
        ErrorKind::RequestAborted.as_str(),
        "the first run of this request was aborted before it finished; it may have partly run",
    ))
}

/// Owned by the first run: records its outcome, or clears the entry if the run is
/// dropped (aborted, cancelled or panicked) so waiting repeats learn it did not finish.
struct RunGuard {
    cache: ReplyCache,
    key: Option<Key>,
    tx: watch::Sender<Option<Outcome>>,
}

impl RunGuard {
    fn finish(mut self, result: &Result<Reply, HandlerError>) {
        let outcome = match result {
            Ok(Reply::Value(v)) => Outcome::Value(v.clone()),
            Err(e) => Outcome::Err(e.clone()),
            // Streams are not remembered (the method table keeps them out; this is a guard).
            Ok(Reply::Stream(_)) => return,
        };
        if let Some(key) = self.key.take() {
            self.cache.inner.finish(key, outcome.clone());
        }
        let _ = self.tx.send(Some(outcome));
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.cache.inner.abandon(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn cache(capacity: usize, ttl: Duration) -> ReplyCache {
        ReplyCache::new(capacity, ttl)
    }

    fn key(id: &str) -> Option<Key> {
        Some(("m".into(), Bytes::copy_from_slice(id.as_bytes())))
    }

    fn counting(runs: &Arc<AtomicUsize>, value: u8) -> impl FnOnce() -> HandlerFuture + use<> {
        let runs = runs.clone();
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
            futures::future::ready(Ok(Reply::Value(vec![value]))).boxed()
        }
    }

    fn value(r: Result<Reply, HandlerError>) -> Vec<u8> {
        match r {
            Ok(Reply::Value(v)) => v,
            _ => panic!("expected a value"),
        }
    }

    #[tokio::test]
    async fn a_repeat_gets_the_first_reply_without_running() {
        let c = cache(10, Duration::from_secs(60));
        let runs = Arc::new(AtomicUsize::new(0));
        assert_eq!(value(c.run(key("a"), counting(&runs, 1)).await), [1]);
        assert_eq!(value(c.run(key("a"), counting(&runs, 2)).await), [1]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.replayed(), 1);
        // Without a key nothing is remembered.
        c.run(None, counting(&runs, 3)).await.ok();
        c.run(None, counting(&runs, 3)).await.ok();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_repeat_during_the_first_run_waits_for_it() {
        let c = cache(10, Duration::from_secs(60));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = c.run(key("a"), move || {
            async move {
                let _ = released.await;
                Ok(Reply::Value(vec![7]))
            }
            .boxed()
        });
        let runs = Arc::new(AtomicUsize::new(0));
        let repeat = c.run(key("a"), counting(&runs, 9));
        let first = tokio::spawn(first);
        let repeat = tokio::spawn(repeat);
        let _ = release.send(());
        assert_eq!(value(first.await.expect("joins")), [7]);
        assert_eq!(value(repeat.await.expect("joins")), [7]);
        assert_eq!(runs.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_aborted_first_run_fails_its_waiters_and_is_forgotten() {
        let c = cache(10, Duration::from_secs(60));
        let first = c.run(key("a"), || futures::future::pending().boxed());
        let repeat = c.run(key("a"), || unreachable!("must wait"));
        drop(first);
        let err = repeat.await.err().expect("aborted");
        assert_eq!(err.name(), "RequestAborted");
        let runs = Arc::new(AtomicUsize::new(0));
        assert_eq!(value(c.run(key("a"), counting(&runs, 4)).await), [4]);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn entries_are_bounded_by_count_and_age() {
        let c = cache(2, Duration::from_secs(60));
        let runs = Arc::new(AtomicUsize::new(0));
        for id in ["a", "b", "c"] {
            c.run(key(id), counting(&runs, 0)).await.ok();
        }
        assert_eq!(c.inner.state().entries.len(), 2);
        // "a" was evicted, so it runs again.
        c.run(key("a"), counting(&runs, 0)).await.ok();
        assert_eq!(runs.load(Ordering::SeqCst), 4);

        let c = cache(100, Duration::from_millis(1));
        c.run(key("x"), counting(&runs, 0)).await.ok();
        std::thread::sleep(Duration::from_millis(5));
        c.run(key("x"), counting(&runs, 0)).await.ok();
        assert_eq!(runs.load(Ordering::SeqCst), 6, "expired entries run again");
    }
}
