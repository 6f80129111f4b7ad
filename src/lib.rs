//! zmesh: a brokerless RPC mesh over ZeroMQ that speaks the zerorpc v3 wire protocol.
//!
//! This facade re-exports the public API of the workspace crates.
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

pub use zmesh_core::*;

/// The optional proxy device (the `zmesh-device` crate): one stable address in front of a
/// pool of worker nodes.
pub use zmesh_device as device;

/// Compiles the README's Rust examples as doctests so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
