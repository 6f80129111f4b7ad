//! Holds what a node serves: named sets of methods ([`Service`]), each method's erased
//! handler, docs, argument names and markers, and the [`HandlerError`] a handler fails
//! with. Building them is in `builder`, turning closures into handlers in `handler`.

mod builder;
mod handler;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use zmesh_proto::ErrorKind;

pub use builder::{MethodBuilder, Registry, StatefulService};
pub(crate) use handler::ErasedHandler;
pub use handler::{
    Handler, HandlerFuture, ItemStream, Reply, State, StreamHandler, WithCallContext, WithState,
};

use crate::stats::MethodStats;

/// A failure a handler reports to its caller; travels as `ERR [name, message, traceback]`.
///
/// The name is always explicit, never derived from a Rust type (whose path the compiler
/// does not promise to keep): any `std::error::Error` converts into it with `?` under
/// [`HandlerError::DEFAULT_NAME`] (`Error`) and its `Display` text; choose the name with
/// [`HandlerError::new`] or [`HandlerError::named`] (for example `ValueError` for Python
/// peers, or a name per error of your own), or [`HandlerError::from_kind`] for one of
/// zmesh's own [`ErrorKind`]s.
#[derive(Clone, PartialEq, Eq)]
pub struct HandlerError {
    name: Cow<'static, str>,
    message: String,
    traceback: Option<String>,
}

impl HandlerError {
    /// The name of an error converted from a `std::error::Error` with `?` or `into()`.
    pub const DEFAULT_NAME: &'static str = "Error";

    /// An error with an explicit name and message.
    pub fn new(name: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            message: message.into(),
            traceback: None,
        }
    }

    /// `err`'s `Display` text under an explicit `name`:
    /// `.map_err(|e| HandlerError::named("ParseError", e))`.
    pub fn named(name: impl Into<Cow<'static, str>>, err: impl fmt::Display) -> Self {
        Self::new(name, err.to_string())
    }

    /// An error named after one of zmesh's own kinds (`TypeError`, `Unavailable`, ...).
    pub fn from_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(kind.as_str(), message)
    }

    /// An error that tells a job queue not to try again: the job goes to dead at once. Named
    /// [`PERMANENT_ERROR`](crate::PERMANENT_ERROR) (`PermanentError`), the convention any
    /// zerorpc worker can follow by raising an error of that name.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(crate::PERMANENT_ERROR, message)
    }

    /// Whether this error is marked permanent ([`HandlerError::permanent`], or any name
    /// ending in `PermanentError`).
    pub fn is_permanent(&self) -> bool {
        crate::is_permanent_error(&self.name)
    }

    /// Adds a traceback text (sent as the third `ERR` element).
    #[must_use]
    pub fn with_traceback(mut self, traceback: impl Into<String>) -> Self {
        self.traceback = Some(traceback.into());
        self
    }

    /// The error's name (the first `ERR` element).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The traceback, if any.
    pub fn traceback(&self) -> Option<&str> {
        self.traceback.as_deref()
    }

    pub(crate) fn type_error(message: impl Into<String>) -> Self {
        Self::from_kind(ErrorKind::TypeError, message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(err: E) -> Self {
        Self::named(Self::DEFAULT_NAME, err)
    }
}

/// A method name a service does not have (from [`Service::mark_idempotent`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("service {service:?} has no method {method:?}")]
pub struct UnknownMethod {
    /// The service's name.
    pub service: String,
    /// The name it does not have.
    pub method: String,
}

/// One registered method.
#[derive(Clone)]
pub(crate) struct Method {
    pub(crate) handler: ErasedHandler,
    pub(crate) doc: Option<String>,
    pub(crate) arg_names: Option<Vec<String>>,
    pub(crate) streaming: bool,
    /// Safe to run more than once: a mesh caller may retry or hedge it on another peer,
    /// and a device re-runs it on another worker when its worker is lost mid-call.
    pub(crate) idempotent: bool,
    /// Calls, errors and latency of this method on one node (see [`Method::for_node`]).
    pub(crate) stats: Arc<MethodStats>,
}

impl Method {
    /// This method with statistics of its own, for one node: a [`Service`] may be cloned
    /// onto several nodes, and each node reports only its own calls.
    pub(crate) fn for_node(&self) -> Self {
        Self {
            stats: Arc::default(),
            ..self.clone()
        }
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("doc", &self.doc)
            .field("arg_names", &self.arg_names)
            .field("streaming", &self.streaming)
            .field("idempotent", &self.idempotent)
            .finish_non_exhaustive()
    }
}

/// A named set of methods. Its methods are called as `service.method`.
///
/// Handlers are async and must not block the thread: a node polls a new call's handler once
/// on its reader task (most handlers finish right there, which is what makes calls cheap),
/// so CPU-heavy or blocking work belongs in `tokio::task::spawn_blocking`.
///
/// Most services are written as a trait with `#[zmesh::service]`; this builder is for
/// services assembled at run time. [`Service::method`] returns a [`MethodBuilder`] on which
/// the method's doc, argument names and markers chain without repeating its name, and from
/// which the next method is registered; the result converts into a `Service` wherever one
/// is taken. A handler's `Ok(value)` needs no type annotation: its error type is
/// [`HandlerError`], into which `?` converts any `std::error::Error`.
///
/// ```
/// use zmesh_core::{HandlerError, Service};
///
/// let svc: Service = Service::new("greeter")
///     .method("hello", |name: String| async move { Ok(format!("Hello, {name}")) })
///     .doc("Return a greeting.")
///     .arg_names(["name"])
///     .idempotent()
///     .method("parse", |text: String| async move { Ok(text.parse::<i64>()?) })
///     .into();
/// assert_eq!(svc.name(), "greeter");
/// assert!(svc.is_idempotent("hello") && !svc.is_idempotent("parse"));
/// ```
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    pub(crate) methods: BTreeMap<String, Method>,
}

impl Service {
    /// An empty service.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            methods: BTreeMap::new(),
        }
    }

    /// This service with a state its handlers share: a handler that takes a
    /// [`State<S>`](State) first is handed it, without a clone per method or a capture per
    /// closure.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use zmesh_core::{Service, State};
    ///
    /// let svc: zmesh_core::Service = Service::new("counter")
    ///     .with_state(AtomicU64::new(0))
    ///     .method("add", |n: State<AtomicU64>, by: u64| async move {
    ///         Ok(n.fetch_add(by, Ordering::Relaxed) + by)
    ///     })
    ///     .method("get", |n: State<AtomicU64>| async move { Ok(n.load(Ordering::Relaxed)) })
    ///     .into();
    /// assert_eq!(svc.method_names().collect::<Vec<_>>(), ["add", "get"]);
    /// ```
    pub fn with_state<S: Send + Sync + 'static>(self, state: S) -> StatefulService<S> {
        self.with_shared_state(Arc::new(state))
    }

    /// Like [`Service::with_state`], for a state the caller keeps a handle on too.
    pub fn with_shared_state<S: Send + Sync + 'static>(self, state: Arc<S>) -> StatefulService<S> {
        StatefulService::new(self, State(state))
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name a caller sends for `method`: `service.method`, or `method` alone when the
    /// service's name is empty (a service that describes a stock zerorpc server's
    /// unprefixed methods).
    pub fn full_name(&self, method: &str) -> String {
        if self.name.is_empty() {
            method.to_owned()
        } else {
            format!("{}.{method}", self.name)
        }
    }

    /// Names of the registered methods, without the service prefix.
    pub fn method_names(&self) -> impl Iterator<Item = &str> {
        self.methods.keys().map(String::as_str)
    }

    /// Registers a request-reply method; the builder it returns sets the method's doc,
    /// argument names and markers. Registering a name again replaces its handler and keeps
    /// what was set on it.
    pub fn method<Args, H: Handler<Args>>(
        self,
        name: impl Into<String>,
        handler: H,
    ) -> MethodBuilder<Service> {
        MethodBuilder::register(self, name.into(), handler::erase(handler, ()), false)
    }

    /// Registers a streaming method: its items go out as `STREAM` events under credit.
    pub fn stream<Args, H: StreamHandler<Args>>(
        self,
        name: impl Into<String>,
        handler: H,
    ) -> MethodBuilder<Service> {
        MethodBuilder::register(self, name.into(), handler::erase_stream(handler, ()), true)
    }

    fn insert(&mut self, name: String, handler: ErasedHandler, streaming: bool) {
        let previous = self.methods.remove(&name);
        self.methods.insert(
            name,
            Method {
                handler,
                doc: previous.as_ref().and_then(|m| m.doc.clone()),
                idempotent: previous.as_ref().is_some_and(|m| m.idempotent),
                arg_names: previous.and_then(|m| m.arg_names),
                streaming,
                stats: Arc::default(),
            },
        );
    }

    /// Marks methods of a service built elsewhere [idempotent](MethodBuilder::idempotent)
    /// (a stock service whose methods the deployment knows are safe to re-run). Every name
    /// must be one of the service's methods; on an unknown one nothing is marked.
    pub fn mark_idempotent<'a>(
        &mut self,
        methods: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), UnknownMethod> {
        let methods: Vec<&str> = methods.into_iter().collect();
        if let Some(missing) = methods.iter().find(|m| !self.methods.contains_key(**m)) {
            return Err(UnknownMethod {
                service: self.name.clone(),
                method: (*missing).to_owned(),
            });
        }
        for name in methods {
            if let Some(m) = self.methods.get_mut(name) {
                m.idempotent = true;
            }
        }
        Ok(())
    }

    /// Whether a method is marked [idempotent](MethodBuilder::idempotent).
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.methods.get(method).is_some_and(|m| m.idempotent)
    }

    /// Names of the methods marked [idempotent](MethodBuilder::idempotent), without the
    /// service prefix.
    pub fn idempotent_methods(&self) -> impl Iterator<Item = &str> {
        self.methods
            .iter()
            .filter(|(_, m)| m.idempotent)
            .map(|(name, _)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde::Serialize;

    use super::*;
    use crate::context::CallContext;

    fn args<T: Serialize>(v: &T) -> Bytes {
        Bytes::from(rmp_serde::to_vec(v).expect("encodes"))
    }

    async fn call(svc: &Service, method: &str, a: Bytes) -> Result<rmpv::Value, HandlerError> {
        let m = svc.methods.get(method).expect("registered");
        match (m.handler)(CallContext::local(format!("t.{method}")), a).await? {
            Reply::Value(bytes) => Ok(rmpv::decode::read_value(&mut &bytes[..]).expect("valid")),
            Reply::Stream(_) => panic!("unexpected stream"),
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("nope: {0}")]
    struct NopeError(String);

    fn svc() -> Service {
        Service::new("t")
            .method("add", |a: i64, b: i64| async move { Ok(a + b) })
            .method("none", || async { Ok(()) })
            .method("fail", |m: String| async move {
                Err::<(), _>(NopeError(m).into())
            })
            .method("fail_named", |m: String| async move {
                Err::<(), _>(HandlerError::named("NopeError", NopeError(m)))
            })
            .method(
                "parse",
                |text: String| async move { Ok(text.parse::<i64>()?) },
            )
            .method("whoami", |ctx: CallContext| async move {
                Ok(ctx.method().to_owned())
            })
            .method("tagged", |ctx: CallContext, a: i64| async move {
                Ok(format!("{} {a}", ctx.method()))
            })
            .into()
    }

    /// A closure whose first parameter is the context gets it, and it is no wire argument.
    #[tokio::test]
    async fn a_context_parameter_is_handed_the_call_context() {
        let no_args = Bytes::from_static(&[0x90]);
        assert_eq!(
            call(&svc(), "whoami", no_args).await,
            Ok(rmpv::Value::from("t.whoami"))
        );
        assert_eq!(
            call(&svc(), "tagged", args(&(7,))).await,
            Ok(rmpv::Value::from("t.tagged 7"))
        );
        let err = call(&svc(), "tagged", args(&(1, 2)))
            .await
            .expect_err("arity");
        assert_eq!(
            err.message(),
            "takes 1 positional argument but 2 were given"
        );
    }

    #[tokio::test]
    async fn typed_args_and_results() {
        assert_eq!(
            call(&svc(), "add", args(&(2, 3))).await,
            Ok(rmpv::Value::from(5))
        );
        // `()` encodes as nil; an empty args array is msgpack 0x90.
        let no_args = Bytes::from_static(&[0x90]);
        assert_eq!(call(&svc(), "none", no_args).await, Ok(rmpv::Value::Nil));
    }

    #[tokio::test]
    async fn arity_and_type_errors_are_precise() {
        let err = call(&svc(), "add", args(&(1,))).await.expect_err("arity");
        assert_eq!(err.name(), "TypeError");
        assert_eq!(
            err.message(),
            "takes 2 positional arguments but 1 was given"
        );
        let err = call(&svc(), "add", args(&(1, "x")))
            .await
            .expect_err("type");
        assert!(
            err.message().starts_with("argument 2: "),
            "{}",
            err.message()
        );
        let err = call(&svc(), "add", args(&"not an array"))
            .await
            .expect_err("shape");
        assert_eq!(err.message(), "arguments must be a msgpack array");
    }

    #[tokio::test]
    async fn std_errors_travel_under_the_default_name_unless_named() {
        let err = call(&svc(), "fail", args(&("x",)))
            .await
            .expect_err("fails");
        assert_eq!((err.name(), err.message()), ("Error", "nope: x"));
        let err = call(&svc(), "fail_named", args(&("x",)))
            .await
            .expect_err("fails");
        assert_eq!((err.name(), err.message()), ("NopeError", "nope: x"));
        assert_eq!(
            HandlerError::from_kind(ErrorKind::Unavailable, "later").name(),
            "Unavailable"
        );
    }
}
