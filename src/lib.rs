//! zmesh: a brokerless RPC mesh over ZeroMQ that speaks the zerorpc v3 wire protocol.
//!
//! Services on many machines call each other directly, peer to peer; stock zerorpc clients
//! and servers (Python, Node) join unchanged. This crate gathers the workspace's public API:
//!
//! | to... | use | in |
//! |---|---|---|
//! | define a service as a trait, with a typed client and server generated | [`service`](macro@service), [`Call`], [`ItemStream`] | |
//! | write a service from closures (dynamic services) | [`Service`], [`HandlerError`] | |
//! | read a call's deadline, trace context, peer, cancellation; pass them on | [`CallContext`], [`Call::with_context`], [`CallOptions::from_context`], [`TraceParent`] | |
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
//!     .method("hello", |name: String| async move { Ok(format!("Hello, {name}")) });
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

/// Generates a typed client and a server from a service trait.
///
/// On `trait Greeter`, it generates:
/// - `GreeterClient<C = Client>`: `GreeterClient::new(c)` for any [`Call`] (a [`Client`], a
///   `Client` of a device's frontend, `&Client`, `Arc<Client>`), one typed `async fn` per
///   method returning `Result<T, CallError>` (a [`CallStream<T>`] for streams), and
///   `with_options(CallOptions)` for the deadline and trace context of its calls;
/// - `GreeterServer<T: Greeter>`: `GreeterServer::new(imp)`, and `.into_service()` (or
///   `.into()`) giving the [`Service`] that [`NodeBuilder::service`] hosts, each method
///   registered with its doc comment, its argument names (the parameter names) and markers.
///
/// Methods are `async fn name(&self, [ctx: &CallContext,] args...) -> Result<T, E>` with `E:
/// Into<HandlerError>`: the optional [`CallContext`] right after `&self` (no wire argument)
/// gives the handler its deadline, caller's trace context, peer and cancellation, and
/// `GreeterClient::new(client.with_context(ctx))` passes deadline and trace on to the
/// calls it makes ([`Call::with_context`]). The trait gains `Send + Sync + 'static`, and its methods return
/// `Send` futures, so implementations write plain `async fn`s. Method attributes:
/// `#[zmesh(stream)]` for a streaming method (returning `Result<ItemStream<T>, E>`),
/// `#[zmesh(idempotent)]` for the retry marker. The service's name defaults to the trait's
/// in snake_case (`KeyValue` is `key_value`); `#[zmesh::service(name = "...")]` sets it, and
/// `name = ""` leaves the methods unprefixed, so a trait can describe a stock zerorpc
/// server and call it typed. On the wire nothing changes: `greeter.hello` with positional
/// arguments, so Python and Node zerorpc clients call these services as before. An
/// unsupported signature (not `async`, no `&self`, a borrowed parameter, a result that is
/// not a `Result`, a context that is not first or is `&mut`) is a compile error at that
/// signature.
///
/// ```
/// use futures::StreamExt;
/// use zmesh::{Client, HandlerError, ItemStream, Node};
///
/// #[zmesh::service]
/// trait Greeter {
///     /// Greets `name`.
///     async fn hello(&self, name: String) -> Result<String, HandlerError>;
///     /// Counts from 0 to `n - 1`.
///     #[zmesh(stream)]
///     async fn count(&self, n: u64) -> Result<ItemStream<u64>, HandlerError>;
/// }
///
/// struct Polite;
///
/// impl Greeter for Polite {
///     async fn hello(&self, name: String) -> Result<String, HandlerError> {
///         Ok(format!("Hello, {name}"))
///     }
///     async fn count(&self, n: u64) -> Result<ItemStream<u64>, HandlerError> {
///         Ok(futures::stream::iter((0..n).map(Ok)).boxed())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let node = Node::builder()
///     .bind("tcp://127.0.0.1:0")
///     .service(GreeterServer::new(Polite))
///     .start()
///     .await?;
/// let greeter = GreeterClient::new(Client::new(node.endpoint()));
/// assert_eq!(greeter.hello("zmesh".into()).await?, "Hello, zmesh");
/// let counted: Vec<u64> = greeter.count(3).await?.map(|item| item.unwrap()).collect().await;
/// assert_eq!(counted, [0, 1, 2]);
/// # node.shutdown(std::time::Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
pub use zmesh_macros::service;

pub mod device {
    //! The optional proxy device (the `zmesh-device` crate): one stable address in front of
    //! a changing pool of worker nodes, which connect to it with
    //! [`NodeBuilder::worker_of`](crate::NodeBuilder::worker_of). Start one with
    //! [`Device::builder`]; [`Device::wait_for_workers`] waits until a service has a worker.
    pub use zmesh_device::*;
}

/// Durable jobs (the `zmesh-jobs` crate): a queue any node can host as the `jobs` service,
/// running each submitted call at least once, with retries, backoff and a dead state.
pub use zmesh_jobs as jobs;

/// Compiles the README's Rust examples as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
