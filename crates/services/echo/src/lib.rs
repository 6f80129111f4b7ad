//! The zmesh reference service. Other tests and tools rely on exactly this contract:
//!
//! | method | behaviour |
//! |---|---|
//! | `echo.echo(x)` | returns `x` unchanged (any msgpack value) |
//! | `echo.upper(s)` | returns `s` upper-cased |
//! | `echo.sleep(ms)` | sleeps `ms` milliseconds, then returns `ms` |
//! | `echo.fail(msg)` | fails with error name `EchoError` and message `msg` |
//! | `echo.count(n)` | streams the integers `0..n` |
//! | `echo.size(b)` | returns the length of a bin or str argument |

use std::time::Duration;

use futures::StreamExt;
use rmpv::Value;
use zmesh_core::{ErrorKind, HandlerError, ItemStream, Service};

/// The service name.
pub const NAME: &str = "echo";

/// The error `echo.fail` raises; travels as `ERR ["EchoError", msg, nil]`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EchoError(pub String);

impl EchoError {
    /// The error name callers see.
    pub const NAME: &'static str = "EchoError";
}

/// The echo service's contract, as a `#[zmesh::service]` trait: [`EchoClient`] calls it
/// typed, [`EchoServer`] serves an implementation (this crate's is [`Reference`]).
#[zmesh_macros::service(name = "echo", crate = "zmesh_core")]
pub trait Echo {
    /// Return the argument unchanged.
    async fn echo(&self, x: Value) -> Result<Value, HandlerError>;
    /// Return the string upper-cased.
    async fn upper(&self, s: String) -> Result<String, HandlerError>;
    /// Sleep for ms milliseconds, then return ms.
    async fn sleep(&self, ms: u64) -> Result<u64, HandlerError>;
    /// Fail with EchoError(msg).
    async fn fail(&self, msg: String) -> Result<(), HandlerError>;
    /// Stream the integers 0..n.
    #[zmesh(stream)]
    async fn count(&self, n: u64) -> Result<ItemStream<u64>, HandlerError>;
    /// Return the length of a bin or str argument.
    async fn size(&self, b: Value) -> Result<usize, HandlerError>;
}

/// The reference implementation of [`Echo`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Reference;

impl Echo for Reference {
    async fn echo(&self, x: Value) -> Result<Value, HandlerError> {
        Ok(x)
    }

    async fn upper(&self, s: String) -> Result<String, HandlerError> {
        Ok(s.to_uppercase())
    }

    async fn sleep(&self, ms: u64) -> Result<u64, HandlerError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }

    async fn fail(&self, msg: String) -> Result<(), HandlerError> {
        Err(HandlerError::named(EchoError::NAME, EchoError(msg)))
    }

    async fn count(&self, n: u64) -> Result<ItemStream<u64>, HandlerError> {
        Ok(futures::stream::iter((0..n).map(Ok)).boxed())
    }

    async fn size(&self, b: Value) -> Result<usize, HandlerError> {
        match b {
            Value::Binary(bytes) => Ok(bytes.len()),
            Value::String(s) => Ok(s.as_bytes().len()),
            other => Err(HandlerError::from_kind(
                ErrorKind::TypeError,
                format!("size expects bin or str, got {}", kind(&other)),
            )),
        }
    }
}

/// Builds the echo service: [`Reference`] served by [`EchoServer`].
pub fn service() -> Service {
    EchoServer::new(Reference).into_service()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Boolean(_) => "bool",
        Value::Integer(_) => "int",
        Value::F32(_) | Value::F64(_) => "float",
        Value::String(_) => "str",
        Value::Binary(_) => "bin",
        Value::Array(_) => "array",
        Value::Map(_) => "map",
        Value::Ext(..) => "ext",
    }
}
