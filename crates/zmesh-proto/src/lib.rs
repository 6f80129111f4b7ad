//! zmesh's protocol, sans IO: the rules every zmesh node, client and proxy device shares,
//! written once, with no sockets, no runtime and no clocks of its own.
//!
//! - [`wire`]: the zerorpc v3 codec (events, ids, headers, multipart framing) and zmesh's
//!   worker protocol between a worker node and a device.
//! - [`error`]: the error names zmesh sends and matches in `ERR`, as [`ErrorKind`], and
//!   what each means for retrying ([`Retry`]).
//! - [`endpoint`]: the endpoints zmesh binds and connects to, parsed once ([`Endpoint`],
//!   [`EndpointError`]).
//! - [`reserved`]: every method name and topic prefix zmesh reserves, and the one check
//!   for them ([`reserved::is_reserved_method`]).
//! - [`admission`]: one message from a ROUTER to an envelope and an event, or a typed
//!   refusal with its counter and its answer (node and device).
//! - [`liveness`]: heartbeats due and peers lost, for a call's channel (node, client,
//!   device) and a worker-device link.
//! - [`credit`]: stream credit (`_zpc_more`), the producer's and the consumer's side.
//! - [`seal`]: the mesh key's sealed envelope, replay guard and key ring (rotation), with
//!   the time and the nonces passed in.
//! - [`trace`]: the W3C `traceparent` a call carries, parsed once ([`TraceParent`]), and
//!   the child context a call made on its behalf sends.
//!
//! The crates that do IO (zmesh-core, zmesh-device, the CLI) drive these types from their
//! sockets and timers; everything here is unit-tested on bytes and made-up instants.

pub mod admission;
pub mod credit;
pub mod endpoint;
pub mod error;
pub mod liveness;
pub mod reserved;
pub mod seal;
pub mod trace;
pub mod wire;

pub use endpoint::{Endpoint, EndpointError};
pub use error::{ErrorKind, PERMANENT_ERROR, Retry, UnknownErrorName, is_permanent_error};
pub use trace::TraceParent;
