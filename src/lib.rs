//! zmesh: a brokerless RPC mesh over ZeroMQ that speaks the zerorpc v3 wire protocol.
//!
//! Services on many machines call each other directly, peer to peer; stock zerorpc clients
//! and servers (Python, Node) join unchanged. This crate gathers the workspace's public API:
//!
//! | to... | use | in |
//! |---|---|---|
//! | write a service: typed async handlers, streams | [`Service`], [`HandlerError`] | |
//! | serve it on tcp/ipc endpoints, with limits, heartbeats, graceful shutdown | [`Node`], [`NodeBuilder`], [`NodeConfig`], [`NodeStats`] | |
//! | call a node (or a stock zerorpc server): calls, streams, deadlines, cancellation | [`Client`], [`ClientConfig`], [`CallOptions`], [`CallStream`], [`CallError`], [`ErrorKind`] | |
//! | publish and subscribe to events, with gap reports and snapshots | [`Publisher`], [`Subscriber`], [`Delivery`], [`NodeBuilder::on_event`] | [`events`] |
//! | put one address in front of a pool of workers | [`device::Device`], [`device::DeviceConfig`], [`NodeBuilder::worker_of`] | [`device`] |
//! | find services by name, balance and fail over | [`MeshNode`], [`MeshClient`], [`Discovery`] | [`mesh`] |
//! | admit only holders of a pre-shared key | [`MeshKey`] | [`trust`] |
//! | read or write the wire format yourself | [`wire`] (events, headers, framing) | [`wire`] |
//!
//! ```no_run
//! use zmesh::{Client, HandlerError, Node, Service};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let greeter = Service::new("greeter")
//!     .method("hello", |name: String| async move { Ok::<_, HandlerError>(format!("Hello, {name}")) });
//! let node = Node::builder().bind("tcp://127.0.0.1:0").service(greeter).start().await?;
//!
//! let client = Client::new(node.endpoint());
//! let reply: String = client.call("greeter.hello", ("zmesh",)).await?;
//! assert_eq!(reply, "Hello, zmesh");
//! # Ok(()) }
//! ```
//!
//! The repository's README has a runnable example of each part (`examples/`), and
//! `docs/PROTOCOL.md` the wire format with zmesh's additions (extra header keys that stock
//! zerorpc peers ignore).

pub use zmesh_core::*;

pub mod device {
    //! The optional proxy device (the `zmesh-device` crate): one stable address in front of
    //! a changing pool of worker nodes, which connect to it with
    //! [`NodeBuilder::worker_of`](crate::NodeBuilder::worker_of). Start one with
    //! [`Device::builder`]; [`Device::wait_for_workers`] waits until a service has a worker.
    pub use zmesh_device::*;
}

/// Compiles the README's Rust examples as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
