//! zmesh core: the zerorpc v3 wire protocol, the node (server) and the client, over the
//! native-Rust `zeromq` crate, in zmesh's fork `zmesh-zeromq` (its `PATCHED.md` lists the
//! changes).
//!
//! - [`wire`]: the pure codec (events, ids, headers, framing) from the `zmesh-proto` crate,
//!   re-exported, plus its conversion to zeromq messages.
//! - [`Service`]: typed async handlers registered by name.
//! - [`Node`]: binds a ROUTER on tcp/ipc endpoints and serves services to zmesh and stock
//!   zerorpc clients, with limits, heartbeats, cancellation and graceful shutdown.
//! - [`events`]: brokerless PUB/SUB with topics, per-topic sequence numbers, gap reports and
//!   late-joiner snapshots ([`Publisher`], [`Subscriber`], `NodeBuilder::on_event`).
//! - [`mesh`]: discovery (seeds, UDP beacons, gossip), the service-level [`MeshClient`]
//!   with health-aware balancing, failover and duplicate suppression, and [`MeshNode`].
//! - [`Client`]: multiplexes concurrent calls over one DEALER connection, with deadlines,
//!   streaming under credit, heartbeat-based peer-loss detection and reconnection.
//! - [`config`]: the one rule of every configuration, [`ConfigError`] and its checks.
//! - [`read_turns`]: how socket read loops share their thread with the writers.
//! - [`zmtp`]: the ZMTP-level limits on zmesh's sockets (wire size, frames, descriptors).
//! - [`endpoint`]: ipc/tcp endpoint housekeeping (stale ipc files, waiting until a closed
//!   listener has let go of its address so a restart can bind it).
//!
//! zmesh's additions to the zerorpc protocol travel as extra header keys that stock peers
//! ignore; see `docs/PROTOCOL.md` in the repository.

pub mod client;
pub mod config;
pub mod endpoint;
pub mod events;
pub mod mesh;
pub mod node;
pub mod read_turns;
mod service;
mod stats;
pub mod trust;
pub mod wire;
pub mod zmtp;

pub use client::{
    CallError, CallOptions, CallStream, Client, ClientConfig, RemoteError, Request, Response,
};
pub use config::ConfigError;
pub use events::{
    Delivery, EventsError, Gap, GapReason, PublishError, Publisher, PublisherBuilder,
    PublisherStats, Received, Snapshot, SnapshotEntry, SnapshotError, Subscriber,
    SubscriberBuilder, SubscriberConfig, SubscriberStats,
};
pub use mesh::{
    BeaconConfig, Discovery, DiscoveryConfig, MeshCallError, MeshCallOptions, MeshClient,
    MeshClientConfig, MeshNode, PeerRecord, Presence,
};
pub use node::{Node, NodeBuilder, NodeConfig, NodeError, NodeStats};
pub use service::{Handler, HandlerError, Service, StreamHandler};
#[doc(hidden)]
pub use service::{HandlerFuture, Reply};
pub use trust::MeshKey;
pub use zmesh_proto::{ErrorKind, Retry};
