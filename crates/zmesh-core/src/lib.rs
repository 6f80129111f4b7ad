//! zmesh core: the zerorpc v3 wire protocol, the node (server) and the client, over the
//! native-Rust `zeromq` crate, in zmesh's fork `zmesh-zeromq` (its `PATCHED.md` lists the
//! changes).
//!
//! - [`wire`]: the pure codec (events, ids, headers, framing) from the `zmesh-proto` crate,
//!   re-exported, plus its conversion to zeromq messages.
//! - [`Service`]: typed async handlers registered by name; each call's [`CallContext`]
//!   (deadline, trace context, peer, cancellation), passed on with [`Call::with_context`].
//! - [`Node`]: binds a ROUTER on tcp/ipc endpoints and serves services to zmesh and stock
//!   zerorpc clients, with limits, heartbeats, cancellation and graceful shutdown.
//! - [`events`]: brokerless PUB/SUB with topics, per-topic sequence numbers, gap reports and
//!   late-joiner snapshots ([`Publisher`], [`Subscriber`], `NodeBuilder::on_event`).
//! - [`mesh`]: discovery (seeds, UDP beacons, gossip), the service-level [`MeshClient`]
//!   with health-aware balancing, failover and duplicate suppression, and [`MeshNode`].
//! - [`Client`]: multiplexes concurrent calls over one DEALER connection, with deadlines,
//!   streaming under credit, heartbeat-based peer-loss detection and reconnection.
//! - [`trust`]: the optional pre-shared mesh key ([`MeshKey`]).
//! - [`config`]: the one rule of every configuration, [`ConfigError`] and its checks.
//! - [`Endpoint`]: every tcp/ipc endpoint parsed once, with one error type
//!   ([`EndpointError`]).
//! - `otel` (cargo feature `otel`): exporting the node's and clients' spans over OTLP/HTTP
//!   (`otel::Exporter`); the spans themselves follow the OpenTelemetry RPC conventions in
//!   every build.
//! - [`reserved`]: the method names and topic prefixes zmesh reserves (`_zerorpc_*`,
//!   `_zmesh.*`, and the aliases `_zmesh_stats`, `_zmesh_device_stats`).
//!
//! The `endpoint` (housekeeping), `read_turns`, `wait` and `zmtp` modules are public for
//! zmesh's own crates (the device, the CLI) and hidden from the documentation: they are not
//! a stable API.
//!
//! zmesh's additions to the zerorpc protocol travel as extra header keys that stock peers
//! ignore; see `docs/PROTOCOL.md` in the repository.

mod call;
pub mod client;
pub mod config;
mod context;
#[doc(hidden)]
pub mod endpoint;
pub mod events;
pub mod mesh;
pub mod metrics;
pub mod node;
#[cfg(feature = "otel")]
pub mod otel;
#[doc(hidden)]
pub mod read_turns;
mod service;
mod spin;
mod stats;
mod submit;
mod telemetry;
pub mod trust;
#[doc(hidden)]
pub mod wait;
pub mod wire;
#[doc(hidden)]
pub mod zmtp;

pub use endpoint::{Endpoint, EndpointError};
/// Every method name and topic prefix zmesh reserves (from zmesh-proto).
pub use zmesh_proto::reserved;

pub use call::Call;
pub use client::{
    CallError, CallOptions, CallStream, Client, ClientConfig, NoAnswer, RemoteError, Request,
    Response,
};
pub use config::ConfigError;
pub use context::{CallContext, CallPeer, WithContext};
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
pub use service::{
    Handler, HandlerError, ItemStream, MethodBuilder, Registry, Service, State, StatefulService,
    StreamHandler, UnknownMethod, WithCallContext, WithState,
};
#[doc(hidden)]
pub use service::{HandlerFuture, Reply};
pub use submit::Submit;
pub use trust::MeshKey;
pub use wait::WaitError;
pub use zmesh_proto::{ErrorKind, PERMANENT_ERROR, Retry, TraceParent, is_permanent_error};
