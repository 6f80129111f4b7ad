//! Provides the subscriber: one SUB socket per publisher endpoint, each read by its own task
//! that decodes events, tracks sequence numbers and feeds one bounded queue; the consumer
//! side is a typed `Stream` of events and gap reports.
//!
//! Reconnection is ours, not the `zeromq` crate's (whose SUB retries with a backoff growing
//! to 30 s): the reader watches the socket monitor and, when the publisher's connection
//! drops, replaces the socket and reconnects with a backoff capped at
//! [`SubscriberConfig::reconnect_max`]. A publisher that comes back with a new id is a
//! restart and is reported as gaps.
//!
//! Memory is bounded: the queue holds at most [`SubscriberConfig::queue`] items; when the
//! consumer falls behind, the reader keeps draining the socket (so the publisher's
//! per-subscriber queue does not grow) and drops events, which the next delivered event of
//! their topic reports as a gap.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketEvent, SocketRecv, SubSocket};

use super::codec::{self, Incoming};
use super::gap::{Check, Tracker};
use super::publisher::SnapshotReply;
use super::{
    Delivery, EventsError, Gap, Received, SNAPSHOT_METHOD, Snapshot, SnapshotEntry, SnapshotError,
};
use crate::config::{self, ConfigError};
use crate::{CallOptions, Client};

/// Topic prefix of sync markers; a subscriber's own marker topic is this plus its id.
pub(super) const MARKER_PREFIX: &str = crate::reserved::SYNC_TOPIC_PREFIX;

/// Subscriber settings. Build with `SubscriberConfig::default()` and the chained setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscriberConfig {
    /// Items (events and gap reports) buffered for the consumer (default 10,000). When it is
    /// full, further events are dropped and reported as gaps.
    pub queue: usize,
    /// Largest accepted message in bytes (default 16 MiB); larger ones count as undecodable.
    pub max_message_size: usize,
    /// Longest wait for the first connection to each endpoint in `start` (default 5 s).
    pub connect_timeout: Duration,
    /// Longest pause between reconnection attempts after a publisher went away (default 1 s).
    pub reconnect_max: Duration,
    /// Topics tracked per publisher (default 100,000); events of further topics are
    /// delivered without gap detection.
    pub max_topics: usize,
    /// Longest wait for a snapshot, sync included (default 10 s).
    pub snapshot_timeout: Duration,
    /// The mesh key events must be sealed with (default none). With it, unsealed, tampered
    /// and replayed events are dropped, counted and traced, never delivered.
    pub mesh_key: Option<crate::trust::MeshKey>,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            queue: 10_000,
            max_message_size: 16 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            reconnect_max: Duration::from_secs(1),
            max_topics: 100_000,
            snapshot_timeout: Duration::from_secs(10),
            mesh_key: None,
        }
    }
}

impl SubscriberConfig {
    /// Sets the queue bound (at least 2: a gap report and its event).
    #[must_use]
    pub fn queue(mut self, items: usize) -> Self {
        self.queue = items;
        self
    }

    /// Sets the message size limit.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the first-connection timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the longest pause between reconnection attempts (at least 10 ms).
    #[must_use]
    pub fn reconnect_max(mut self, pause: Duration) -> Self {
        self.reconnect_max = pause;
        self
    }

    /// Sets the number of topics tracked per publisher.
    #[must_use]
    pub fn max_topics(mut self, topics: usize) -> Self {
        self.max_topics = topics;
        self
    }

    /// Sets the snapshot timeout.
    #[must_use]
    pub fn snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.snapshot_timeout = timeout;
        self
    }

    /// Requires every event to be sealed with the mesh key.
    #[must_use]
    pub fn mesh_key(mut self, key: crate::trust::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Checks every setting against its range (see [`crate::config`]); the subscriber's
    /// start does.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::in_range("queue", self.queue, 2, tokio::sync::Semaphore::MAX_PERMITS)?;
        config::at_least(
            "reconnect_max",
            self.reconnect_max,
            Duration::from_millis(10),
        )?;
        Ok(())
    }
}

/// A subscriber's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Events handed to the consumer's queue.
    pub received: u64,
    /// Gap reports handed to the consumer's queue.
    pub gaps: u64,
    /// Events known to be missing (the sum of the reported ranges with a known end).
    pub lost: u64,
    /// Events dropped here because the queue was full (also part of `lost` once reported).
    pub dropped: u64,
    /// Messages that were not valid events, and payloads that did not decode.
    pub undecodable: u64,
    /// Events refused by the mesh key: not sealed, wrong key or tampered.
    pub unauthenticated: u64,
    /// Sealed events refused as replays (seen before, or outside the time window).
    pub replay_rejected: u64,
    /// Messages over [`SubscriberConfig::max_message_size`], dropped unread (also counted
    /// in `undecodable`).
    pub oversized: u64,
    /// Events whose sequence number was already accounted for.
    pub duplicates: u64,
    /// Reconnections after a publisher's connection dropped.
    pub reconnects: u64,
    /// Publishers replaced by another one at the same endpoint.
    pub publisher_restarts: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    gaps: AtomicU64,
    lost: AtomicU64,
    dropped: AtomicU64,
    undecodable: AtomicU64,
    unauthenticated: AtomicU64,
    replay_rejected: AtomicU64,
    oversized: AtomicU64,
    duplicates: AtomicU64,
    reconnects: AtomicU64,
    publisher_restarts: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// State shared by the reader tasks and the consumer.
#[derive(Debug)]
pub(super) struct Shared {
    marker_topic: String,
    counters: Counters,
    /// The mesh key with this subscriber's replay guard.
    trust: Option<crate::trust::Trust>,
    /// Snapshot calls waiting for their marker, by token.
    waiters: Mutex<HashMap<String, oneshot::Sender<Arc<str>>>>,
}

impl Shared {
    pub(super) fn count_undecodable(&self) {
        bump(&self.counters.undecodable, 1);
    }

    pub(super) fn stats(&self) -> SubscriberStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SubscriberStats {
            received: get(&c.received),
            gaps: get(&c.gaps),
            lost: get(&c.lost),
            dropped: get(&c.dropped),
            undecodable: get(&c.undecodable),
            unauthenticated: get(&c.unauthenticated),
            replay_rejected: get(&c.replay_rejected),
            oversized: get(&c.oversized),
            duplicates: get(&c.duplicates),
            reconnects: get(&c.reconnects),
            publisher_restarts: get(&c.publisher_restarts),
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Arc<str>>>> {
        self.waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An event as the reader hands it over, payload still encoded.
#[derive(Debug)]
pub(super) struct RawEvent {
    pub(super) topic: String,
    pub(super) publisher: Option<Arc<str>>,
    pub(super) seq: Option<u64>,
    pub(super) endpoint: Arc<str>,
    pub(super) args: Bytes,
}

impl RawEvent {
    /// The event with its decoded payload, moving topic and ids (no copies).
    fn into_received<T>(self, payload: T) -> Received<T> {
        Received {
            topic: self.topic,
            publisher: self.publisher,
            seq: self.seq,
            endpoint: self.endpoint,
            payload,
        }
    }

    pub(super) fn decode<T: DeserializeOwned>(&self) -> Result<Received<T>, String> {
        Ok(Received {
            topic: self.topic.clone(),
            publisher: self.publisher.clone(),
            seq: self.seq,
            endpoint: self.endpoint.clone(),
            payload: codec::decode_payload(&self.args)?,
        })
    }
}

/// What the readers put in the queue.
#[derive(Debug)]
pub(super) enum Item {
    Event(RawEvent),
    Gap(Gap),
}

/// Builds a [`Subscriber`].
#[derive(Debug, Default)]
#[must_use]
pub struct SubscriberBuilder {
    endpoints: Vec<String>,
    prefixes: Vec<String>,
    config: SubscriberConfig,
}

impl SubscriberBuilder {
    /// Adds a publisher endpoint to connect to.
    pub fn connect(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Adds a topic prefix to receive (`""` receives every topic, and is the only way to
    /// receive a stock zerorpc publisher's single-frame events).
    pub fn subscribe(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: SubscriberConfig) -> Self {
        self.config = config;
        self
    }

    /// Connects to every endpoint (waiting up to the connect timeout for each) and starts
    /// receiving events decoded as `T` (`rmpv::Value` takes anything).
    ///
    /// # Errors
    /// [`EventsError`] when an endpoint is invalid or cannot be reached in time.
    pub async fn start<T: DeserializeOwned>(self) -> Result<Subscriber<T>, EventsError> {
        let config = self.config.clone();
        Ok(Subscriber {
            core: self.start_core().await?,
            config,
            floors: HashMap::new(),
            next_token: 0,
            _payload: PhantomData,
        })
    }

    pub(super) async fn start_core(self) -> Result<Core, EventsError> {
        self.config.validate()?;
        if self.endpoints.is_empty() {
            return Err(EventsError::NoEndpoint);
        }
        if self.prefixes.is_empty() {
            return Err(EventsError::NoSubscription);
        }
        for endpoint in &self.endpoints {
            super::parse_endpoint(endpoint)?;
        }
        let shared = Arc::new(Shared {
            marker_topic: format!("{MARKER_PREFIX}{}", crate::wire::MessageId::generate()),
            counters: Counters::default(),
            trust: self.config.mesh_key.clone().map(crate::trust::Trust::new),
            waiters: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = mpsc::channel(self.config.queue);
        let prefixes: Arc<[String]> = self.prefixes.into();
        let connects = self.endpoints.iter().map(|endpoint| {
            connect(
                endpoint,
                &prefixes,
                &shared.marker_topic,
                self.config.connect_timeout,
                self.config.max_message_size,
            )
        });
        let sockets = futures::future::join_all(connects).await;
        let mut tasks = Vec::with_capacity(sockets.len());
        for (endpoint, socket) in self.endpoints.iter().zip(sockets) {
            let socket = socket.map_err(|reason| EventsError::Connect {
                endpoint: endpoint.clone(),
                reason,
            })?;
            let endpoint: Arc<str> = Arc::from(endpoint.as_str());
            let reader = Reader {
                tracker: Tracker::new(endpoint.clone(), self.config.max_topics),
                endpoint,
                prefixes: prefixes.clone(),
                shared: shared.clone(),
                tx: tx.clone(),
                config: self.config.clone(),
            };
            tasks.push(tokio::spawn(reader.run(socket)));
        }
        tracing::debug!(endpoints = ?self.endpoints, prefixes = ?prefixes, "subscriber started");
        Ok(Core { rx, shared, tasks })
    }
}

/// Opens a sealed `[topic, event]` message in place with the mesh key, and checks that the
/// topic frame (in the clear, for filtering) names the topic sealed inside the event.
fn open_event(
    trust: &crate::trust::Trust,
    frames: &mut [Bytes],
) -> Result<(), crate::trust::Rejection> {
    use crate::trust::{Kind, Rejection};
    let Some(last) = frames.last_mut() else {
        return Err(Rejection::Unauthenticated("empty message".into()));
    };
    *last = trust.open(last, Kind::Event)?;
    if let [topic, event] = &*frames {
        let inner = crate::wire::decode_event(event).map_err(|e| {
            Rejection::Unauthenticated(format!("sealed event does not decode: {}", e.error))
        })?;
        if inner.name.as_bytes() != topic.as_ref() {
            return Err(Rejection::Unauthenticated(
                "topic frame does not match the sealed event's topic".into(),
            ));
        }
    }
    Ok(())
}

/// A connected SUB socket and its monitor.
type Connected = (SubSocket, futures::channel::mpsc::Receiver<SocketEvent>);

/// Creates a SUB socket with the user's prefixes, connects it, then subscribes the marker
/// topic: sent after the prefixes on the same connection, so a marker that arrives proves
/// the prefixes are active at the publisher.
async fn connect(
    endpoint: &str,
    prefixes: &[String],
    marker_topic: &str,
    timeout: Duration,
    max_message_size: usize,
) -> Result<Connected, String> {
    // An event over the wire limit (or of too many frames) closes the connection while it
    // is being read; the subscriber reconnects. Events have two frames.
    let mut options = crate::zmtp::options(max_message_size, 16);
    options.connect_timeout(timeout);
    let mut socket = SubSocket::with_options(options);
    for prefix in prefixes {
        socket.subscribe(prefix).await.map_err(|e| e.to_string())?;
    }
    let monitor = socket.monitor();
    // The crate's connect has its own timeout; ours bounds it in case it does not fire.
    match tokio::time::timeout(timeout + Duration::from_secs(1), socket.connect(endpoint)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("not connected within {timeout:?}")),
    }
    socket
        .subscribe(marker_topic)
        .await
        .map_err(|e| e.to_string())?;
    Ok((socket, monitor))
}

/// The reader of one endpoint.
struct Reader {
    endpoint: Arc<str>,
    prefixes: Arc<[String]>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Item>,
    tracker: Tracker,
    config: SubscriberConfig,
}

/// Whether the reader goes on.
enum Flow {
    Continue,
    /// The consumer is gone.
    Stop,
}

impl Reader {
    async fn run(mut self, first: Connected) {
        let mut connected = Some(first);
        loop {
            let (mut socket, mut monitor) = match connected.take() {
                Some(c) => c,
                None => match self.reconnect().await {
                    Some(c) => c,
                    None => return,
                },
            };
            loop {
                tokio::select! {
                    biased;
                    message = socket.recv() => match message {
                        Ok(message) => {
                            if let Flow::Stop = self.handle(message.into_vec()) {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::info!(endpoint = %self.endpoint, error = %e, "publisher connection failed");
                            break;
                        }
                    },
                    event = monitor.next() => match event {
                        Some(SocketEvent::Disconnected(_)) | None => {
                            tracing::info!(endpoint = %self.endpoint, "publisher disconnected");
                            break;
                        }
                        Some(_) => {}
                    },
                    () = self.tx.closed() => return,
                }
            }
            // Dropping the socket also stops the crate's own reconnect task for it.
            drop(socket);
        }
    }

    /// Reconnects with a capped backoff until it succeeds or the consumer is gone.
    async fn reconnect(&mut self) -> Option<Connected> {
        let mut pause = Duration::from_millis(20);
        loop {
            if self.tx.is_closed() {
                return None;
            }
            match connect(
                &self.endpoint,
                &self.prefixes,
                &self.shared.marker_topic,
                self.config.reconnect_max,
                self.config.max_message_size,
            )
            .await
            {
                Ok(connected) => {
                    bump(&self.shared.counters.reconnects, 1);
                    tracing::info!(endpoint = %self.endpoint, "reconnected to publisher");
                    return Some(connected);
                }
                Err(reason) => {
                    tracing::debug!(endpoint = %self.endpoint, %reason, "reconnect attempt failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.tx.closed() => return None,
            }
            pause = (pause * 2).min(self.config.reconnect_max);
        }
    }

    fn handle(&mut self, mut frames: Vec<Bytes>) -> Flow {
        if let Some(trust) = &self.shared.trust {
            let size: usize = frames.iter().map(Bytes::len).sum();
            if size <= self.config.max_message_size {
                match open_event(trust, &mut frames) {
                    Ok(()) => {}
                    Err(rejection) => {
                        let counter = match rejection {
                            crate::trust::Rejection::Replayed(_) => {
                                &self.shared.counters.replay_rejected
                            }
                            _ => &self.shared.counters.unauthenticated,
                        };
                        bump(counter, 1);
                        tracing::warn!(endpoint = %self.endpoint, %rejection, "event refused by the mesh key");
                        return Flow::Continue;
                    }
                }
            }
        }
        let incoming = match codec::decode(frames, self.config.max_message_size) {
            Ok(incoming) => incoming,
            Err(e) => {
                bump(&self.shared.counters.undecodable, 1);
                if matches!(e, codec::IncomingError::TooLarge { .. }) {
                    bump(&self.shared.counters.oversized, 1);
                }
                tracing::warn!(endpoint = %self.endpoint, error = %e, "undecodable event dropped");
                return Flow::Continue;
            }
        };
        if crate::reserved::is_reserved_topic(&incoming.topic) {
            if incoming.topic == self.shared.marker_topic {
                self.marker(&incoming);
            }
            // Other subscribers' markers reach a subscriber of "" too: not for us.
            return Flow::Continue;
        }
        // The shared id first, so the event can move on without a copy of its publisher.
        let before = self.tracker.current();
        let publisher = incoming.publisher().map(|p| self.tracker.publisher(p));
        match (publisher, incoming.seq) {
            (Some(id), Some(seq)) => {
                if before.is_some_and(|b| !Arc::ptr_eq(&b, &id)) {
                    bump(&self.shared.counters.publisher_restarts, 1);
                    tracing::warn!(endpoint = %self.endpoint, publisher = %id, "publisher restarted");
                }
                self.tracked(incoming, id, seq)
            }
            (publisher, _) => self.untracked(incoming, publisher),
        }
    }

    fn event(&self, incoming: Incoming, publisher: Option<Arc<str>>) -> Item {
        Item::Event(RawEvent {
            topic: incoming.topic,
            publisher,
            seq: incoming.seq,
            endpoint: self.endpoint.clone(),
            args: incoming.args,
        })
    }

    fn untracked(&mut self, incoming: Incoming, publisher: Option<Arc<str>>) -> Flow {
        // Counted before it is queued, so a consumer never sees more than the counter says.
        match self.tx.try_reserve() {
            Ok(permit) => {
                bump(&self.shared.counters.received, 1);
                permit.send(self.event(incoming, publisher));
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                bump(&self.shared.counters.dropped, 1);
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Flow::Stop,
        }
        Flow::Continue
    }

    /// An event of `id` (already made the tracker's current publisher) numbered `seq`.
    fn tracked(&mut self, incoming: Incoming, id: Arc<str>, seq: u64) -> Flow {
        // Restart reports go first; an event cannot overtake them.
        while let Some(gap) = self.tracker.pending().pop_front() {
            match self.tx.try_reserve() {
                Ok(permit) => {
                    bump(&self.shared.counters.gaps, 1);
                    tracing::warn!(
                        endpoint = %self.endpoint, publisher = %gap.publisher, topic = %gap.topic,
                        first = gap.first, "publisher restarted; later events of the old one unknown"
                    );
                    permit.send(Item::Gap(gap));
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    self.tracker.pending().push_front(gap);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(())) => return Flow::Stop,
            }
        }
        if !self.tracker.pending().is_empty() {
            self.tracker.dropped(&incoming.topic, seq);
            bump(&self.shared.counters.dropped, 1);
            return Flow::Continue;
        }
        match self.tracker.check(&incoming.topic, seq) {
            Check::Duplicate => {
                bump(&self.shared.counters.duplicates, 1);
                tracing::debug!(endpoint = %self.endpoint, topic = %incoming.topic, seq, "duplicate event dropped");
                Flow::Continue
            }
            Check::Untracked => self.untracked(incoming, Some(id)),
            Check::Fresh(gap) => {
                let need = 1 + usize::from(gap.is_some());
                let mut permits = match self.tx.try_reserve_many(need) {
                    Ok(permits) => permits,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        self.tracker.dropped(&incoming.topic, seq);
                        bump(&self.shared.counters.dropped, 1);
                        return Flow::Continue;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return Flow::Stop,
                };
                // Accounted for before the event moves into the queue (no copy of its topic).
                self.tracker.delivered(&incoming.topic, seq);
                // One permit per item reserved above: the gap's (if any), then the event's.
                if let Some((gap, permit)) = gap.and_then(|g| permits.next().map(|p| (g, p))) {
                    bump(&self.shared.counters.gaps, 1);
                    bump(&self.shared.counters.lost, gap.missing().unwrap_or(0));
                    tracing::warn!(
                        endpoint = %self.endpoint, publisher = %gap.publisher, topic = %gap.topic,
                        first = gap.first, last = ?gap.last, "events missed"
                    );
                    permit.send(Item::Gap(gap));
                }
                if let Some(permit) = permits.next() {
                    bump(&self.shared.counters.received, 1);
                    permit.send(self.event(incoming, Some(id)));
                }
                Flow::Continue
            }
        }
    }

    /// A sync marker for this subscriber: install the snapshot's sequence numbers here, in
    /// stream order, and wake the snapshot call waiting for it.
    fn marker(&mut self, incoming: &Incoming) {
        let Some(publisher) = incoming.publisher() else {
            bump(&self.shared.counters.undecodable, 1);
            return;
        };
        let (token, baselines) = match codec::decode_payload::<(String, Vec<(String, u64)>)>(
            &incoming.args,
        ) {
            Ok(marker) => marker,
            Err(e) => {
                bump(&self.shared.counters.undecodable, 1);
                tracing::warn!(endpoint = %self.endpoint, error = %e, "undecodable sync marker");
                return;
            }
        };
        self.tracker.install(publisher, &baselines);
        let id = self.tracker.publisher(publisher);
        if let Some(waiter) = self.shared.waiters().remove(&token) {
            let _ = waiter.send(id);
        }
    }
}

/// The untyped subscriber: reader tasks and the queue they feed. Dropping it stops them.
#[derive(Debug)]
pub(super) struct Core {
    pub(super) rx: mpsc::Receiver<Item>,
    pub(super) shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Core {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Receives events from any number of publishers: a `Stream` of [`Delivery`] items, each an
/// event decoded as `T` or a [`Gap`] report. Dropping it disconnects.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures::StreamExt;
/// use zmesh_core::{Delivery, Subscriber};
///
/// let mut orders = Subscriber::builder()
///     .connect("tcp://127.0.0.1:5600")
///     .subscribe("orders.")
///     .start::<(String, u32)>()
///     .await?;
/// while let Some(item) = orders.next().await {
///     match item {
///         Delivery::Event(event) => println!("{} #{:?}: {:?}", event.topic, event.seq, event.payload),
///         Delivery::Gap(gap) => eprintln!("missed {:?} events of {}", gap.missing(), gap.topic),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscriber<T> {
    core: Core,
    config: SubscriberConfig,
    /// After a snapshot: per publisher and topic, the sequence number the snapshot covers.
    /// Queued events at or below it are older than the snapshot and are skipped.
    floors: HashMap<(Arc<str>, String), u64>,
    next_token: u64,
    _payload: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscriber<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("marker_topic", &self.core.shared.marker_topic)
            .field("stats", &self.core.shared.stats())
            .finish_non_exhaustive()
    }
}

impl Subscriber<()> {
    /// Starts building a subscriber.
    pub fn builder() -> SubscriberBuilder {
        SubscriberBuilder::default()
    }
}

impl<T: DeserializeOwned> Subscriber<T> {
    /// The counters.
    pub fn stats(&self) -> SubscriberStats {
        self.core.shared.stats()
    }

    /// The next item; `None` never happens while the subscriber lives (it reconnects).
    pub async fn recv(&mut self) -> Option<Delivery<T>> {
        self.next().await
    }

    /// Fetches the state of every topic under `prefix` from the publisher of the node that
    /// `client` calls, in step with this subscriber's stream: after it returns, the stream
    /// yields only events newer than the snapshot, and any event missing after it is
    /// reported as a gap. Apply the entries, then the stream: current state with no gap and
    /// no duplicate.
    ///
    /// How: the node's `_zmesh.snapshot` publishes a marker for this subscriber and takes the
    /// snapshot under its publishing lock; the marker's arrival proves this subscriber's
    /// prefixes are live at the publisher and marks the exact place of the snapshot in the
    /// stream. Until the marker arrives (a fresh connection may not be subscribed yet) the
    /// call is retried.
    ///
    /// # Errors
    /// [`SnapshotError`] when the call fails, the marker never arrives within
    /// [`SubscriberConfig::snapshot_timeout`], or a value does not decode as `T`.
    pub async fn snapshot(
        &mut self,
        client: &Client,
        prefix: &str,
    ) -> Result<Snapshot<T>, SnapshotError> {
        let started = Instant::now();
        let deadline = started + self.config.snapshot_timeout;
        let mut wait = Duration::from_millis(50);
        loop {
            self.next_token += 1;
            let token = format!("{}", self.next_token);
            let (tx, mut rx) = oneshot::channel();
            self.core.shared.waiters().insert(token.clone(), tx);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let reply: Result<SnapshotReply, _> = client
                .call_with(
                    SNAPSHOT_METHOD,
                    (prefix, &self.core.shared.marker_topic, &token),
                    CallOptions::timeout(remaining.max(Duration::from_millis(1))),
                )
                .await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    self.core.shared.waiters().remove(&token);
                    return Err(e.into());
                }
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let synced = tokio::time::timeout(wait.min(remaining), &mut rx).await;
            if let Ok(Ok(publisher)) = synced
                && *publisher == *reply.publisher
            {
                return self.apply(publisher, reply);
            }
            self.core.shared.waiters().remove(&token);
            if Instant::now() >= deadline {
                return Err(SnapshotError::NotSynced {
                    publisher: reply.publisher,
                    waited: started.elapsed(),
                });
            }
            wait = (wait * 2).min(Duration::from_secs(1));
        }
    }

    fn apply(
        &mut self,
        publisher: Arc<str>,
        reply: SnapshotReply,
    ) -> Result<Snapshot<T>, SnapshotError> {
        let mut entries = Vec::with_capacity(reply.topics.len());
        for (topic, seq, value) in reply.topics {
            let value = if reply.cached {
                Some(T::deserialize(value).map_err(|e| SnapshotError::Decode {
                    topic: topic.clone(),
                    reason: e.to_string(),
                })?)
            } else {
                None
            };
            self.floors.insert((publisher.clone(), topic.clone()), seq);
            entries.push(SnapshotEntry { topic, seq, value });
        }
        Ok(Snapshot { publisher, entries })
    }

    /// Whether a queued item is older than a snapshot already applied.
    fn superseded(&mut self, publisher: &Arc<str>, topic: &str, seq: u64) -> bool {
        if self.floors.is_empty() {
            return false;
        }
        let key = (publisher.clone(), topic.to_owned());
        match self.floors.get(&key) {
            Some(&floor) if seq <= floor => true,
            Some(_) => {
                // Nothing older can follow a newer event: the floor has done its job.
                self.floors.remove(&key);
                false
            }
            None => false,
        }
    }
}

impl<T: DeserializeOwned> Stream for Subscriber<T> {
    type Item = Delivery<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let item = match this.core.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match item {
                Item::Gap(mut gap) => {
                    if let Some(last) = gap.last {
                        // Numbers a snapshot covers are not missing.
                        let key = (gap.publisher.clone(), gap.topic.clone());
                        if let Some(&floor) = this.floors.get(&key) {
                            gap.first = gap.first.max(floor + 1);
                        }
                        if this.superseded(&gap.publisher, &gap.topic, last) {
                            continue;
                        }
                    }
                    return Poll::Ready(Some(Delivery::Gap(gap)));
                }
                Item::Event(raw) => {
                    if let (Some(publisher), Some(seq)) = (&raw.publisher, raw.seq)
                        && this.superseded(publisher, &raw.topic, seq)
                    {
                        continue;
                    }
                    match codec::decode_payload(&raw.args) {
                        Ok(payload) => {
                            return Poll::Ready(Some(Delivery::Event(raw.into_received(payload))));
                        }
                        Err(e) => {
                            this.core.shared.count_undecodable();
                            tracing::warn!(
                                endpoint = %raw.endpoint, topic = %raw.topic, error = %e,
                                "event payload does not decode; dropped"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_validated_by_name() {
        assert!(SubscriberConfig::default().validate().is_ok());
        for (config, field) in [
            (SubscriberConfig::default().queue(1), "queue"),
            (SubscriberConfig::default().queue(usize::MAX), "queue"),
            (
                SubscriberConfig::default().reconnect_max(Duration::from_millis(9)),
                "reconnect_max",
            ),
        ] {
            assert_eq!(config.validate().map_err(|e| e.field), Err(field));
        }
        assert_eq!(SubscriberConfig::default().queue(1).queue, 1);
    }
}
