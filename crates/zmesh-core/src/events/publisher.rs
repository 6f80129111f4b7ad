//! Provides the publisher: a PUB socket bound to one or more endpoints that numbers every
//! event per topic, keeps the optional last-value cache, and answers snapshot requests with a
//! sync marker published in line with the events.
//!
//! The `zeromq` crate's PUB never blocks a sender: it queues each message for every matching
//! subscriber in a bounded per-subscriber queue (100,000 messages) and drops it for a
//! subscriber whose queue is full. Subscribers see those drops as sequence gaps.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use zeromq::{PubSocket, Socket, SocketSend};

use super::cache::TopicTable;
use super::codec;
use super::{EventsError, PublishError};
use crate::WaitError;

/// Builds a [`Publisher`].
#[derive(Debug, Default)]
#[must_use]
pub struct PublisherBuilder {
    endpoints: Vec<String>,
    last_value_cache: bool,
    mesh_key: Option<crate::trust::MeshKey>,
}

impl PublisherBuilder {
    /// Adds an endpoint to bind: `tcp://127.0.0.1:0` (port 0 picks a free port) or
    /// `ipc:///path/to/socket`.
    pub fn bind(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Keeps the payload of the last event of every topic, served in snapshots (default off:
    /// snapshots then carry sequence numbers only).
    pub fn last_value_cache(mut self, on: bool) -> Self {
        self.last_value_cache = on;
        self
    }

    /// Seals every published event with the mesh key (the topic frame stays in the clear so
    /// subscribers and forwarders can filter on it; the sealed event repeats the topic, so a
    /// changed topic frame is detected).
    pub fn mesh_key(mut self, key: crate::trust::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Binds every endpoint.
    ///
    /// # Errors
    /// [`EventsError`] when there is no endpoint or one cannot be bound.
    pub async fn start(self) -> Result<Publisher, EventsError> {
        if self.endpoints.is_empty() {
            return Err(EventsError::NoEndpoint);
        }
        // Every endpoint is checked before any is bound.
        let endpoints = self
            .endpoints
            .iter()
            .map(|e| super::parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()?;
        // Subscribers only send subscriptions: a topic prefix each, one frame. Anything
        // larger closes the connection while it is read. Each subscriber's queue is
        // bounded in bytes (the crate's default, 16 MiB): past it its events are dropped,
        // which it sees as a sequence gap.
        let mut options = zeromq::SocketOptions::default();
        options.max_message_size(64 * 1024).max_frames(4);
        // Kept to report the drops at the byte bound (`PublisherStats::dropped`).
        let socket_stats = options.stats();
        let mut socket = PubSocket::with_options(options);
        let mut bound = Vec::with_capacity(self.endpoints.len());
        for endpoint in &endpoints {
            crate::endpoint::remove_stale_ipc_socket(endpoint);
            let endpoint = endpoint.to_string();
            let resolved = socket
                .bind(&endpoint)
                .await
                .map_err(|source| EventsError::Bind { endpoint, source })?;
            bound.push(resolved.to_string());
        }
        let id: Arc<str> = Arc::from(fresh_id().as_str());
        tracing::info!(publisher = %id, endpoints = ?bound, "publisher started");
        Ok(Publisher {
            inner: Arc::new(Inner {
                id,
                endpoints: bound,
                state: Mutex::new(State {
                    socket: Some(socket),
                    table: TopicTable::new(self.last_value_cache),
                }),
                published: AtomicU64::new(0),
                snapshots: AtomicU64::new(0),
                socket_stats,
                trust: self.mesh_key.map(crate::trust::Trust::new),
            }),
        })
    }
}

/// A fresh publisher id: 16 hex digits, unique per process run and counter.
fn fresh_id() -> String {
    // MessageId::generate is unique per process (counter + per-process random base); hash
    // it down to 64 bits so the id stays short on every event.
    use std::hash::{BuildHasher, Hasher};
    let id = crate::wire::MessageId::generate();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(id.encoded());
    format!("{:016x}", h.finish())
}

/// Publishes events; cheap to clone (all clones share one socket and one numbering).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = zmesh_core::Publisher::builder()
///     .bind("tcp://127.0.0.1:5600")
///     .last_value_cache(true)
///     .start()
///     .await?;
/// let seq = publisher.publish("orders.created", &("order-1", 42)).await?;
/// assert_eq!(seq, 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    id: Arc<str>,
    endpoints: Vec<String>,
    state: Mutex<State>,
    published: AtomicU64,
    /// `_zmesh.snapshot` calls answered.
    snapshots: AtomicU64,
    socket_stats: Arc<zeromq::SocketStats>,
    trust: Option<crate::trust::Trust>,
}

impl Inner {
    /// The event as it goes on the wire: sealed when the publisher has a mesh key.
    fn sealed(&self, event: bytes::Bytes) -> bytes::Bytes {
        match &self.trust {
            None => event,
            Some(trust) => trust.seal_event(&event),
        }
    }
}

struct State {
    /// `None` once closed.
    socket: Option<PubSocket>,
    table: TopicTable,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("id", &self.inner.id)
            .field("endpoints", &self.inner.endpoints)
            .finish_non_exhaustive()
    }
}

/// A publisher's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublisherStats {
    /// Events handed to the socket.
    pub published: u64,
    /// Events dropped for one subscriber whose queue was at its byte bound (that
    /// subscriber sees a gap).
    pub dropped: u64,
    /// Snapshots served (`_zmesh.snapshot`), each with its sync marker.
    pub snapshots: u64,
}

/// What `_zmesh.snapshot` answers.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotReply {
    pub(super) publisher: String,
    /// Whether values are included (the publisher keeps a last-value cache).
    pub(super) cached: bool,
    /// `[topic, seq, value-or-nil]`, sorted by topic.
    pub(super) topics: Vec<(String, u64, rmpv::Value)>,
}

impl Publisher {
    /// Starts building a publisher.
    pub fn builder() -> PublisherBuilder {
        PublisherBuilder::default()
    }

    /// A publisher bound to one endpoint, without last-value cache.
    ///
    /// # Errors
    /// [`EventsError`] when the endpoint cannot be bound.
    pub async fn bind(endpoint: impl Into<String>) -> Result<Self, EventsError> {
        Self::builder().bind(endpoint).start().await
    }

    /// This publisher's id, carried by every event (`zmesh_pub`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The bound endpoints, resolved (a `tcp://…:0` endpoint shows its real port).
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    /// The first bound endpoint.
    pub fn endpoint(&self) -> &str {
        self.inner
            .endpoints
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The counters.
    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            published: self.inner.published.load(Ordering::Relaxed),
            dropped: self.inner.socket_stats.snapshot().send_dropped,
            snapshots: self.inner.snapshots.load(Ordering::Relaxed),
        }
    }

    /// Publishes `payload` under `topic` and returns its sequence number within the topic.
    /// Never waits for subscribers: a subscriber that cannot keep up loses events and is
    /// told so by a gap report.
    ///
    /// # Errors
    /// [`PublishError`] for a reserved topic, a payload that cannot be encoded, or a closed
    /// publisher.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<u64, PublishError> {
        if crate::reserved::is_reserved_topic(topic) {
            return Err(PublishError::ReservedTopic(topic.to_owned()));
        }
        let payload = codec::encode_payload(payload).map_err(PublishError::Encode)?;
        let mut state = self.inner.state.lock().await;
        let State { socket, table } = &mut *state;
        let socket = socket.as_mut().ok_or(PublishError::Closed)?;
        // Numbering and sending under one lock keeps every topic's events in number order
        // on the wire, which is what lets subscribers tell a gap from a reordering.
        let seq = table.next_seq(topic);
        let (event, range) = codec::encode_event(&self.inner.id, topic, Some(seq), &payload);
        table.store(topic, || event.slice(range));
        socket
            .send(codec::frames(topic, self.inner.sealed(event)))
            .await?;
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Waits until at least `count` subscribers would receive an event published on `topic`
    /// now, for at most `timeout`; returns how many there are.
    ///
    /// A subscription reaches the publisher some time after the subscriber connected, and
    /// events published before it arrives are not delivered to that subscriber (ZeroMQ's
    /// "slow joiner"). Publishing never waits, so a program that publishes right after its
    /// subscribers start calls this first.
    ///
    /// # Errors
    /// [`WaitError::TimedOut`] (with the number seen) when fewer subscribers than `count`
    /// arrived in time; [`WaitError::Closed`] for a closed publisher.
    pub async fn wait_for_subscribers(
        &self,
        topic: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<usize, WaitError> {
        crate::wait::until_count(count, timeout, || async {
            let state = self.inner.state.lock().await;
            let socket = state.socket.as_ref().ok_or(WaitError::Closed)?;
            Ok(socket.subscribers_matching(topic.as_bytes()))
        })
        .await
        .map_err(|e| e.waiting_for(|| format!("subscribers to {topic:?}")))
    }

    /// The last sequence number of every topic starting with `prefix`, sorted by topic.
    pub async fn sequences(&self, prefix: &str) -> Vec<(String, u64)> {
        let state = self.inner.state.lock().await;
        state
            .table
            .snapshot(prefix)
            .into_iter()
            .map(|(topic, seq, _)| (topic, seq))
            .collect()
    }

    /// Closes the socket: subscribers see the connection drop. Later publishes fail with
    /// [`PublishError::Closed`].
    pub async fn close(&self) {
        let socket = self.inner.state.lock().await.socket.take();
        if let Some(socket) = socket {
            let errors = socket.close().await;
            if !errors.is_empty() {
                tracing::debug!(publisher = %self.inner.id, ?errors, "errors while closing");
            }
            tracing::info!(publisher = %self.inner.id, "publisher closed");
        }
    }

    /// Serves `_zmesh.snapshot`: under the publishing lock, publishes a sync marker on
    /// `marker_topic` (carrying `token` and the sequence numbers) and takes the snapshot, so
    /// the marker sits exactly between the events the snapshot covers and the ones after it.
    pub(super) async fn sync_snapshot(
        &self,
        prefix: &str,
        marker_topic: &str,
        token: &str,
    ) -> Result<SnapshotReply, PublishError> {
        if !marker_topic.starts_with(super::subscriber::MARKER_PREFIX) {
            return Err(PublishError::ReservedTopic(marker_topic.to_owned()));
        }
        let mut state = self.inner.state.lock().await;
        let State { socket, table } = &mut *state;
        let socket = socket.as_mut().ok_or(PublishError::Closed)?;
        let rows = table.snapshot(prefix);
        let baselines: Vec<(&str, u64)> = rows.iter().map(|(t, s, _)| (t.as_str(), *s)).collect();
        let marker = codec::encode_payload(&(token, baselines)).map_err(PublishError::Encode)?;
        let (event, _) = codec::encode_event(&self.inner.id, marker_topic, None, &marker);
        socket
            .send(codec::frames(marker_topic, self.inner.sealed(event)))
            .await?;
        let cached = table.keeps_values();
        drop(state);
        self.inner.snapshots.fetch_add(1, Ordering::Relaxed);
        let topics = rows
            .into_iter()
            .map(|(topic, seq, value)| {
                let value = value
                    .and_then(|raw| {
                        rmpv::decode::read_value_with_max_depth(
                            &mut &raw[..],
                            crate::wire::MAX_VALUE_DEPTH,
                        )
                        .ok()
                    })
                    .unwrap_or(rmpv::Value::Nil);
                (topic, seq, value)
            })
            .collect();
        Ok(SnapshotReply {
            publisher: self.inner.id.to_string(),
            cached,
            topics,
        })
    }
}
