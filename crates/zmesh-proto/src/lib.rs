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
//!
//! The crates that do IO (zmesh-core, zmesh-device, the CLI) drive these types from their
//! sockets and timers; everything here is unit-tested on bytes and made-up instants.

pub mod endpoint;
pub mod error;
pub mod reserved;
pub mod wire;

pub use endpoint::{Endpoint, EndpointError};
pub use error::{ErrorKind, Retry, UnknownErrorName};
