//! Provides typed service registration: async closures whose parameters are decoded from the
//! request's positional args array and whose result is encoded back, erased into one
//! handler type the node can dispatch to.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zmesh_proto::ErrorKind;

use crate::context::CallContext;
use crate::stats::MethodStats;
use crate::wire::msgpack::Cursor;

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

/// What a handler produced: one encoded value, or a stream of encoded items. An
/// implementation detail of [`StreamHandler`], public only because the trait names it.
#[doc(hidden)]
#[allow(missing_debug_implementations)]
pub enum Reply {
    /// One msgpack-encoded value.
    Value(Vec<u8>),
    /// Msgpack-encoded items.
    Stream(BoxStream<'static, Result<Vec<u8>, HandlerError>>),
}

/// The stream a streaming method of a `#[zmesh::service]` trait returns: its items, each
/// a value or the error that ends the stream (build one with `futures::StreamExt::boxed`).
pub type ItemStream<T> = BoxStream<'static, Result<T, HandlerError>>;

/// The future a handler returns once erased.
#[doc(hidden)]
pub type HandlerFuture = BoxFuture<'static, Result<Reply, HandlerError>>;

/// The erased form every registered method has: the call's context and its encoded args.
pub(crate) type ErasedHandler = Arc<dyn Fn(CallContext, Bytes) -> HandlerFuture + Send + Sync>;

/// Encodes a result the way Python peers expect it: structs as maps with field names.
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, HandlerError> {
    let mut out = Vec::with_capacity(crate::wire::ENCODE_START_CAPACITY);
    rmp_serde::encode::write_named(&mut out, value).map_err(|e| {
        HandlerError::new(
            ErrorKind::EncodeError.as_str(),
            format!("cannot encode result: {e}"),
        )
    })?;
    Ok(out)
}

/// Walks the positional args array, decoding one parameter at a time so a type error names
/// the argument it is about.
pub(crate) struct ArgReader<'a> {
    de: rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>,
}

impl<'a> ArgReader<'a> {
    pub(crate) fn new(args: &'a [u8], arity: u64) -> Result<Self, HandlerError> {
        let mut cursor = Cursor::new(args);
        let given = match cursor.array_len() {
            Ok(Some(n)) => n,
            _ => {
                return Err(HandlerError::type_error(
                    "arguments must be a msgpack array",
                ));
            }
        };
        if given != arity {
            return Err(HandlerError::type_error(format!(
                "takes {arity} positional argument{} but {given} {} given",
                if arity == 1 { "" } else { "s" },
                if given == 1 { "was" } else { "were" }
            )));
        }
        let rest = &args[cursor.position()..];
        let mut de = rmp_serde::Deserializer::from_read_ref(rest);
        de.set_max_depth(crate::wire::MAX_VALUE_DEPTH);
        Ok(Self { de })
    }

    pub(crate) fn next<T: DeserializeOwned>(&mut self, index: usize) -> Result<T, HandlerError> {
        T::deserialize(&mut self.de)
            .map_err(|e| HandlerError::type_error(format!("argument {index}: {e}")))
    }
}

/// An async function usable as a request-reply method. Implemented for closures of up to
/// eight parameters, each `DeserializeOwned`, returning `Result<impl Serialize, impl
/// Into<HandlerError>>`; and for those whose first parameter is a [`CallContext`] (then
/// up to eight more), which is handed the call's context and is not a wire argument.
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// Decodes `args` and starts the call.
    #[doc(hidden)]
    fn call(
        &self,
        ctx: CallContext,
        args: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>>;
}

/// An async function usable as a streaming method: like [`Handler`], but it resolves to a
/// `Stream` of `Result<impl Serialize, impl Into<HandlerError>>` items.
pub trait StreamHandler<Args>: Clone + Send + Sync + 'static {
    /// Decodes `args` and starts the call.
    #[doc(hidden)]
    fn call_stream(&self, ctx: CallContext, args: Bytes) -> HandlerFuture;
}

/// Marks the [`Handler`]s and [`StreamHandler`]s whose first parameter is the
/// [`CallContext`] and whose wire arguments are `Args`. Never built; it only keeps their
/// implementations apart from those of handlers without a context.
#[allow(missing_debug_implementations)]
pub struct WithCallContext<Args>(std::marker::PhantomData<Args>);

macro_rules! count {
    () => { 0u64 };
    ($head:ident $($tail:ident)*) => { 1u64 + count!($($tail)*) };
}

/// A tuple of handler parameters, decoded from the positional args array one element at a
/// time so a type error names its argument.
pub(crate) trait DecodeArgs: Sized {
    fn decode(args: &[u8]) -> Result<Self, HandlerError>;
}

fn decode_args<T: DecodeArgs>(args: &[u8]) -> Result<T, HandlerError> {
    T::decode(args)
}

macro_rules! impl_decode_args {
    ($($ty:ident),*) => {
        impl<$($ty: DeserializeOwned,)*> DecodeArgs for ($($ty,)*) {
            #[allow(unused_mut, unused_variables)]
            fn decode(args: &[u8]) -> Result<Self, HandlerError> {
                let mut reader = ArgReader::new(args, count!($($ty)*))?;
                let mut index = 0usize;
                Ok(($({
                    index += 1;
                    reader.next::<$ty>(index)?
                },)*))
            }
        }
    };
}

impl_decode_args!();
impl_decode_args!(A1);
impl_decode_args!(A1, A2);
impl_decode_args!(A1, A2, A3);
impl_decode_args!(A1, A2, A3, A4);
impl_decode_args!(A1, A2, A3, A4, A5);
impl_decode_args!(A1, A2, A3, A4, A5, A6);
impl_decode_args!(A1, A2, A3, A4, A5, A6, A7);
impl_decode_args!(A1, A2, A3, A4, A5, A6, A7, A8);

/// What a handler's future resolves to, encoded: one value.
async fn encode_result<R: Serialize, E: Into<HandlerError>>(
    fut: impl Future<Output = Result<R, E>>,
) -> Result<Vec<u8>, HandlerError> {
    match fut.await {
        Ok(value) => encode_value(&value),
        Err(e) => Err(e.into()),
    }
}

/// What a streaming handler's future resolves to, its items encoded.
async fn encode_stream<S, I, E, E2>(
    fut: impl Future<Output = Result<S, E>>,
) -> Result<Reply, HandlerError>
where
    S: Stream<Item = Result<I, E2>> + Send + 'static,
    I: Serialize + Send + 'static,
    E: Into<HandlerError>,
    E2: Into<HandlerError> + Send + 'static,
{
    match fut.await {
        Ok(stream) => Ok(Reply::Stream(
            stream
                .map(|item| match item {
                    Ok(v) => encode_value(&v),
                    Err(e) => Err(e.into()),
                })
                .boxed(),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Implements both handler traits for closures of the given wire parameters: `$args` is
/// the marker type, `$ctx` binds the context and `$pass` is what the closure is given of
/// it (nothing, for a handler without a context).
macro_rules! impl_handlers_for {
    ($args:ty, [$($ctx_ty:ty)?], |$ctx:ident| [$($pass:expr)?], $($ty:ident $var:ident),*) => {
        impl<F, Fut, R, E, $($ty,)*> Handler<$args> for F
        where
            F: Fn($($ctx_ty,)? $($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<R, E>> + Send + 'static,
            R: Serialize + Send + 'static,
            E: Into<HandlerError> + Send + 'static,
            $($ty: DeserializeOwned + Send + 'static,)*
        {
            #[allow(unused_variables)]
            fn call(
                &self,
                $ctx: CallContext,
                args: Bytes,
            ) -> BoxFuture<'static, Result<Vec<u8>, HandlerError>> {
                let ($($var,)*) = match decode_args::<($($ty,)*)>(&args) {
                    Ok(decoded) => decoded,
                    Err(e) => return futures::future::ready(Err(e)).boxed(),
                };
                encode_result((self)($($pass,)? $($var),*)).boxed()
            }
        }

        impl<F, Fut, S, I, E, E2, $($ty,)*> StreamHandler<$args> for F
        where
            F: Fn($($ctx_ty,)? $($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<S, E>> + Send + 'static,
            S: Stream<Item = Result<I, E2>> + Send + 'static,
            I: Serialize + Send + 'static,
            E: Into<HandlerError> + Send + 'static,
            E2: Into<HandlerError> + Send + 'static,
            $($ty: DeserializeOwned + Send + 'static,)*
        {
            #[allow(unused_variables)]
            fn call_stream(&self, $ctx: CallContext, args: Bytes) -> HandlerFuture {
                let ($($var,)*) = match decode_args::<($($ty,)*)>(&args) {
                    Ok(decoded) => decoded,
                    Err(e) => return futures::future::ready(Err(e)).boxed(),
                };
                encode_stream((self)($($pass,)? $($var),*)).boxed()
            }
        }
    };
}

/// Handlers of these wire parameters, without and with a context first.
macro_rules! impl_handlers {
    ($($ty:ident $var:ident),*) => {
        impl_handlers_for!(($($ty,)*), [], |ctx| [], $($ty $var),*);
        impl_handlers_for!(
            WithCallContext<($($ty,)*)>, [CallContext], |ctx| [ctx], $($ty $var),*
        );
    };
}

impl_handlers!();
impl_handlers!(A1 a1);
impl_handlers!(A1 a1, A2 a2);
impl_handlers!(A1 a1, A2 a2, A3 a3);
impl_handlers!(A1 a1, A2 a2, A3 a3, A4 a4);
impl_handlers!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5);
impl_handlers!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6);
impl_handlers!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7);
impl_handlers!(A1 a1, A2 a2, A3 a3, A4 a4, A5 a5, A6 a6, A7 a7, A8 a8);

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
/// ```
/// use zmesh_core::{HandlerError, Service};
///
/// let svc = Service::new("greeter")
///     .method("hello", |name: String| async move { Ok::<_, HandlerError>(format!("Hello, {name}")) })
///     .doc("hello", "Return a greeting.")
///     .arg_names("hello", ["name"]);
/// assert_eq!(svc.name(), "greeter");
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

    /// Registers a request-reply method. Registering a name again replaces it.
    #[must_use]
    pub fn method<Args, H: Handler<Args>>(mut self, name: impl Into<String>, handler: H) -> Self {
        let erased: ErasedHandler = Arc::new(move |ctx, args| {
            let fut = handler.call(ctx, args);
            async move { fut.await.map(Reply::Value) }.boxed()
        });
        self.insert(name.into(), erased, false);
        self
    }

    /// Registers a streaming method: its items go out as `STREAM` events under credit.
    #[must_use]
    pub fn stream<Args, H: StreamHandler<Args>>(
        mut self,
        name: impl Into<String>,
        handler: H,
    ) -> Self {
        let erased: ErasedHandler = Arc::new(move |ctx, args| handler.call_stream(ctx, args));
        self.insert(name.into(), erased, true);
        self
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

    /// Sets a method's documentation (answered by `_zerorpc_help` and `_zerorpc_inspect`).
    /// Ignored for a method not registered yet.
    #[must_use]
    pub fn doc(mut self, method: &str, doc: impl Into<String>) -> Self {
        if let Some(m) = self.methods.get_mut(method) {
            m.doc = Some(doc.into());
        }
        self
    }

    /// Marks a method idempotent: running it twice has the same effect as running it once.
    /// A mesh caller ([`MeshClient`](crate::MeshClient)) may then retry it on another peer
    /// when its peer is lost, or hedge it (nodes advertise the mark in their beacons and
    /// gossip), and behind a proxy device a call whose worker is lost before any reply is run
    /// again on another worker instead of failing with `PeerLost`. Methods not marked are
    /// never sent to a second peer once they may have run. Ignored for a
    /// method not registered yet.
    #[must_use]
    pub fn idempotent(mut self, method: &str) -> Self {
        if let Some(m) = self.methods.get_mut(method) {
            m.idempotent = true;
        }
        self
    }

    /// Whether a method is marked [idempotent](Service::idempotent).
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.methods.get(method).is_some_and(|m| m.idempotent)
    }

    /// Names of the methods marked [`Service::idempotent`], without the service prefix.
    pub fn idempotent_methods(&self) -> impl Iterator<Item = &str> {
        self.methods
            .iter()
            .filter(|(_, m)| m.idempotent)
            .map(|(name, _)| name.as_str())
    }

    /// Sets a method's parameter names (answered by `_zerorpc_inspect`).
    #[must_use]
    pub fn arg_names<I, S>(mut self, method: &str, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        if let Some(m) = self.methods.get_mut(method) {
            m.arg_names = Some(names.into_iter().map(Into::into).collect());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            .method("add", |a: i64, b: i64| async move {
                Ok::<_, HandlerError>(a + b)
            })
            .method("none", || async { Ok::<_, HandlerError>(()) })
            .method(
                "fail",
                |m: String| async move { Err::<(), _>(NopeError(m)) },
            )
            .method("fail_named", |m: String| async move {
                Err::<(), _>(HandlerError::named("NopeError", NopeError(m)))
            })
            .method("whoami", |ctx: CallContext| async move {
                Ok::<_, HandlerError>(ctx.method().to_owned())
            })
            .method("tagged", |ctx: CallContext, a: i64| async move {
                Ok::<_, HandlerError>(format!("{} {a}", ctx.method()))
            })
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
