//! Provides brokerless events: a [`Publisher`] binds a PUB socket and publishes typed events
//! under topics; a [`Subscriber`] connects SUB sockets to any number of publishers, subscribes
//! by topic prefix and yields a typed stream of events and gap reports; a node can do both
//! (`NodeBuilder::events`, `NodeBuilder::on_event`).
//!
//! Every event carries its publisher's id and a per-publisher, per-topic sequence number, so
//! a subscriber either sees every event of a topic or is told exactly which ones it missed
//! ([`Gap`]). An optional last-value cache on the publisher, served by the built-in
//! `_zmesh.snapshot` method of its node, lets a late joiner start from current state with no
//! gap and no duplicate ([`Subscriber::snapshot`]).
//!
//! Layout: `codec` is the framing (pure), `gap` the sequence tracking (pure), `cache` the
//! publisher's per-topic table (pure), `publisher` and `subscriber` the sockets and tasks,
//! `node` the integration with [`Node`](crate::Node). The wire format is in
//! `docs/PROTOCOL.md`.

mod cache;
mod codec;
mod gap;
mod metrics;
pub(crate) mod node;
mod publisher;
mod subscriber;

use std::sync::Arc;

pub use publisher::{Publisher, PublisherBuilder, PublisherStats};
pub use subscriber::{Subscriber, SubscriberBuilder, SubscriberConfig, SubscriberStats};

/// Header keys zmesh adds to a published event. Stock zerorpc peers ignore them.
pub mod keys {
    /// The publisher's id: a str, fresh for every publisher socket (so a restarted
    /// publisher has a new id).
    pub const PUBLISHER: &str = "zmesh_pub";
    /// The event's sequence number within its publisher and topic: 1, 2, 3, ...
    pub const SEQ: &str = "zmesh_seq";
}

/// Topics starting with this prefix are zmesh's own (snapshot markers); `publish` refuses them
/// ([`reserved::TOPIC_PREFIX`](crate::reserved::TOPIC_PREFIX)).
pub const RESERVED_TOPIC_PREFIX: &str = crate::reserved::TOPIC_PREFIX;

/// The name of the snapshot method every node with events serves
/// ([`reserved::SNAPSHOT`](crate::reserved::SNAPSHOT)).
pub const SNAPSHOT_METHOD: &str = crate::reserved::SNAPSHOT;

/// Parses an endpoint given to a publisher or subscriber.
fn parse_endpoint(endpoint: &str) -> Result<crate::Endpoint, EventsError> {
    endpoint
        .parse()
        .map_err(|source| EventsError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// A received event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Received<T> {
    /// The topic (for a single-frame event from a stock zerorpc publisher: the event name).
    pub topic: String,
    /// The publisher's id; `None` for a stock zerorpc publisher.
    pub publisher: Option<Arc<str>>,
    /// The sequence number within publisher and topic; `None` for a stock zerorpc publisher.
    pub seq: Option<u64>,
    /// The endpoint it arrived from.
    pub endpoint: Arc<str>,
    /// The payload.
    pub payload: T,
}

/// Events a subscriber did not receive: sequence numbers `first..=last` of one topic of one
/// publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gap {
    /// The endpoint the publisher was reached through.
    pub endpoint: Arc<str>,
    /// The id of the publisher whose events are missing.
    pub publisher: Arc<str>,
    /// The topic whose events are missing.
    pub topic: String,
    /// The first missing sequence number.
    pub first: u64,
    /// The last missing sequence number; `None` when unknown (the publisher was replaced, so
    /// whatever it sent after `first - 1` never arrived).
    pub last: Option<u64>,
    /// Why the events are missing.
    pub reason: GapReason,
}

impl Gap {
    /// How many events are missing, when known.
    pub fn missing(&self) -> Option<u64> {
        self.last.map(|last| last - self.first + 1)
    }
}

/// Why a [`Gap`] happened.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapReason {
    /// Sequence numbers were skipped: dropped for a slow subscriber (by the publisher's
    /// socket or the subscriber's own bounded queue), lost across a reconnect, or sent by a
    /// restarted publisher before this subscriber reconnected.
    Missed,
    /// The publisher at this endpoint was replaced by another one (a restart); events of the
    /// old one after `first - 1` may have been lost.
    PublisherRestarted {
        /// The id of the new publisher.
        successor: Arc<str>,
    },
}

/// One item of a subscriber's stream: an event, or a report of events it missed. A gap is
/// always reported before the first event after it.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery<T> {
    /// An event.
    Event(Received<T>),
    /// Events that were missed.
    Gap(Gap),
}

/// A publisher's state for a topic prefix, fetched by [`Subscriber::snapshot`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot<T> {
    /// The publisher's id.
    pub publisher: Arc<str>,
    /// Every topic under the prefix the publisher has published, by topic.
    pub entries: Vec<SnapshotEntry<T>>,
}

/// One topic of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SnapshotEntry<T> {
    /// The topic.
    pub topic: String,
    /// The sequence number of the last event published on it.
    pub seq: u64,
    /// Its payload; `None` when the publisher keeps no last-value cache.
    pub value: Option<T>,
}

/// Why a publisher or subscriber could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventsError {
    /// A setting of the [`SubscriberConfig`] is out of range.
    #[error("invalid events configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// No endpoint was given.
    #[error("no endpoint given")]
    NoEndpoint,
    /// No topic prefix was given to subscribe to (use `""` for everything).
    #[error("no topic prefix given to subscribe to (use \"\" for every topic)")]
    NoSubscription,
    /// An endpoint is not a valid `tcp://host:port` or `ipc://path` (`inproc://`, a missing
    /// scheme or port, a wildcard `ipc://` path...).
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        #[source]
        source: crate::EndpointError,
    },
    /// A node was given both endpoints to publish on and an already started publisher.
    #[error("a node publishes either on its own endpoints or through a given publisher, not both")]
    PublisherTwice,
    /// An endpoint could not be bound.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// The socket error.
        #[source]
        source: zeromq::ZmqError,
    },
    /// A publisher could not be reached within the connect timeout.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The topic starts with [`RESERVED_TOPIC_PREFIX`].
    #[error("topic {0:?} is reserved (prefix {RESERVED_TOPIC_PREFIX:?})")]
    ReservedTopic(String),
    /// The payload could not be encoded.
    #[error("cannot encode payload: {0}")]
    Encode(String),
    /// The publisher was closed.
    #[error("publisher is closed")]
    Closed,
    /// The socket refused the message.
    #[error("socket error: {0}")]
    Socket(#[from] zeromq::ZmqError),
}

/// Why a snapshot could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot call failed.
    #[error("snapshot call failed: {0}")]
    Call(#[from] crate::CallError),
    /// The publisher's sync marker never arrived on this subscriber's connections within the
    /// deadline: this subscriber is not connected to that node's publisher.
    #[error("no sync marker from publisher {publisher} within {waited:?}: not subscribed to it?")]
    NotSynced {
        /// The publisher that answered the call.
        publisher: String,
        /// How long it was waited for.
        waited: std::time::Duration,
    },
    /// A value in the snapshot does not decode into the requested type.
    #[error("snapshot value of topic {topic:?} does not decode: {reason}")]
    Decode {
        /// The topic.
        topic: String,
        /// The decoder's message.
        reason: String,
    },
}
