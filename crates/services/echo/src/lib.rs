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

use rmpv::Value;
use zmesh_core::{ErrorKind, HandlerError, Service};

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

/// Builds the echo service.
pub fn service() -> Service {
    Service::new(NAME)
        .method("echo", |x: Value| async move { Ok::<_, HandlerError>(x) })
        .doc("echo", "Return the argument unchanged.")
        .arg_names("echo", ["x"])
        .method("upper", |s: String| async move {
            Ok::<_, HandlerError>(s.to_uppercase())
        })
        .doc("upper", "Return the string upper-cased.")
        .arg_names("upper", ["s"])
        .method("sleep", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, HandlerError>(ms)
        })
        .doc("sleep", "Sleep for ms milliseconds, then return ms.")
        .arg_names("sleep", ["ms"])
        .method("fail", |msg: String| async move {
            Err::<(), _>(HandlerError::named(EchoError::NAME, EchoError(msg)))
        })
        .doc("fail", "Fail with EchoError(msg).")
        .arg_names("fail", ["msg"])
        .stream("count", |n: u64| async move {
            Ok::<_, HandlerError>(futures::stream::iter((0..n).map(Ok::<u64, HandlerError>)))
        })
        .doc("count", "Stream the integers 0..n.")
        .arg_names("count", ["n"])
        .method("size", |b: Value| async move {
            match b {
                Value::Binary(bytes) => Ok(bytes.len()),
                Value::String(s) => Ok(s.as_bytes().len()),
                other => Err(HandlerError::from_kind(
                    ErrorKind::TypeError,
                    format!("size expects bin or str, got {}", kind(&other)),
                )),
            }
        })
        .doc("size", "Return the length of a bin or str argument.")
        .arg_names("size", ["b"])
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
