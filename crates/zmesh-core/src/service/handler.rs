//! Turns async closures into the one erased handler type a node dispatches to: decodes the
//! positional args array into the closure's parameters (naming the argument a type error is
//! about), hands it the call's context and its service's shared state where it asks for
//! them, and encodes its result or stream items back.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zmesh_proto::ErrorKind;

use super::HandlerError;
use crate::context::CallContext;
use crate::wire::msgpack::Cursor;

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

/// The state a service built with [`Service::with_state`](super::Service::with_state)
/// shares between its handlers: a handler asks for it by taking a `State<S>` as its first
/// parameter (before the [`CallContext`], if it takes that too). Every call gets a handle
/// on the same value; cloning one is an `Arc` clone.
#[derive(Debug, Default)]
pub struct State<S>(pub Arc<S>);

impl<S> Clone for State<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S> Deref for State<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.0
    }
}

/// An async function usable as a request-reply method: a closure of up to eight wire
/// parameters, each `DeserializeOwned`, returning a future of `Result<impl Serialize,
/// HandlerError>` (so `Ok(value)` needs no annotation, and `?` converts any
/// `std::error::Error`). Before its wire parameters it may take a [`CallContext`], which is
/// handed the call's context, and before that a [`State<S>`] when its service has one; neither
/// is a wire argument. `St` is the service's state: `()` for a [`Service`](super::Service).
pub trait Handler<Args, St = ()>: Clone + Send + Sync + 'static {
    /// Decodes `args` and starts the call.
    #[doc(hidden)]
    fn call(&self, state: &St, ctx: CallContext, args: Bytes) -> HandlerFuture;
}

/// An async function usable as a streaming method: like [`Handler`], but its future
/// resolves to a `Stream` of `Result<impl Serialize, HandlerError>` items.
pub trait StreamHandler<Args, St = ()>: Clone + Send + Sync + 'static {
    /// Decodes `args` and starts the call.
    #[doc(hidden)]
    fn call_stream(&self, state: &St, ctx: CallContext, args: Bytes) -> HandlerFuture;
}

/// Marks the [`Handler`]s and [`StreamHandler`]s whose first parameter is the
/// [`CallContext`] and whose wire arguments are `Args`. Never built; it only keeps their
/// implementations apart from those of handlers without a context.
#[allow(missing_debug_implementations)]
pub struct WithCallContext<Args>(std::marker::PhantomData<Args>);

/// Marks the [`Handler`]s and [`StreamHandler`]s whose first parameter is their service's
/// [`State`], followed by what `Args` marks. Never built, like [`WithCallContext`].
#[allow(missing_debug_implementations)]
pub struct WithState<Args>(std::marker::PhantomData<Args>);

/// Erases a request-reply handler together with the state it is handed.
pub(crate) fn erase<Args, St, H>(handler: H, state: St) -> ErasedHandler
where
    H: Handler<Args, St>,
    St: Send + Sync + 'static,
{
    // The handler's own boxed future is the erased one: one allocation per call, not two.
    Arc::new(move |ctx, args| handler.call(&state, ctx, args))
}

/// Erases a streaming handler together with the state it is handed.
pub(crate) fn erase_stream<Args, St, H>(handler: H, state: St) -> ErasedHandler
where
    H: StreamHandler<Args, St>,
    St: Send + Sync + 'static,
{
    Arc::new(move |ctx, args| handler.call_stream(&state, ctx, args))
}

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
async fn encode_result<R: Serialize>(
    fut: impl Future<Output = Result<R, HandlerError>>,
) -> Result<Reply, HandlerError> {
    encode_value(&fut.await?).map(Reply::Value)
}

/// What a streaming handler's future resolves to, its items encoded.
async fn encode_stream<S, I>(
    fut: impl Future<Output = Result<S, HandlerError>>,
) -> Result<Reply, HandlerError>
where
    S: Stream<Item = Result<I, HandlerError>> + Send + 'static,
    I: Serialize + Send + 'static,
{
    let stream = fut.await?;
    Ok(Reply::Stream(
        stream
            .map(|item| item.and_then(|v| encode_value(&v)))
            .boxed(),
    ))
}

/// Implements both handler traits for closures of the given wire parameters. `<$g>` are
/// the impl's own generics besides the closure's, `$st_ty` the state it is handed, `$args`
/// the marker type, `[$lead]` the types of the closure's parameters before its wire
/// parameters and `[$pass]` what it is given for them (from the state `$st` and the context
/// `$ctx`).
macro_rules! impl_handlers_for {
    (
        <$($g:ident),*> $st_ty:ty, $args:ty, [$($lead:ty),*], |$st:ident, $ctx:ident| [$($pass:expr),*],
        $($ty:ident $var:ident),*
    ) => {
        impl<F, Fut, R, $($g,)* $($ty,)*> Handler<$args, $st_ty> for F
        where
            F: Fn($($lead,)* $($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
            R: Serialize + Send + 'static,
            $($g: Send + Sync + 'static,)*
            $($ty: DeserializeOwned + Send + 'static,)*
        {
            #[allow(unused_variables)]
            fn call(&self, $st: &$st_ty, $ctx: CallContext, args: Bytes) -> HandlerFuture {
                let ($($var,)*) = match decode_args::<($($ty,)*)>(&args) {
                    Ok(decoded) => decoded,
                    Err(e) => return futures::future::ready(Err(e)).boxed(),
                };
                encode_result((self)($($pass,)* $($var),*)).boxed()
            }
        }

        impl<F, Fut, S, I, $($g,)* $($ty,)*> StreamHandler<$args, $st_ty> for F
        where
            F: Fn($($lead,)* $($ty),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<S, HandlerError>> + Send + 'static,
            S: Stream<Item = Result<I, HandlerError>> + Send + 'static,
            I: Serialize + Send + 'static,
            $($g: Send + Sync + 'static,)*
            $($ty: DeserializeOwned + Send + 'static,)*
        {
            #[allow(unused_variables)]
            fn call_stream(&self, $st: &$st_ty, $ctx: CallContext, args: Bytes) -> HandlerFuture {
                let ($($var,)*) = match decode_args::<($($ty,)*)>(&args) {
                    Ok(decoded) => decoded,
                    Err(e) => return futures::future::ready(Err(e)).boxed(),
                };
                encode_stream((self)($($pass,)* $($var),*)).boxed()
            }
        }
    };
}

/// Handlers of these wire parameters: without and with a context first, for any state;
/// and taking their service's state first, without and with a context after it.
macro_rules! impl_handlers {
    ($($ty:ident $var:ident),*) => {
        impl_handlers_for!(<St> St, ($($ty,)*), [], |st, ctx| [], $($ty $var),*);
        impl_handlers_for!(
            <St> St, WithCallContext<($($ty,)*)>, [CallContext], |st, ctx| [ctx], $($ty $var),*
        );
        impl_handlers_for!(
            <T> State<T>, WithState<($($ty,)*)>, [State<T>], |st, ctx| [st.clone()],
            $($ty $var),*
        );
        impl_handlers_for!(
            <T> State<T>, WithState<WithCallContext<($($ty,)*)>>, [State<T>, CallContext],
            |st, ctx| [st.clone(), ctx], $($ty $var),*
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
