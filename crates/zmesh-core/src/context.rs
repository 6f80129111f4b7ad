//! Provides [`CallContext`], what a handler knows about the call it serves (method, peer,
//! deadline, the caller's trace context, whether the call was abandoned), and the one way
//! calls made on its behalf inherit it: [`CallOptions::from_context`], used by the
//! [`WithContext`] wrapper that [`Call::with_context`] returns.
//!
//! The node builds one context per call (one allocation, shared by every clone) and fires
//! its cancellation when it stops serving the call unfinished: a `_zmesh_cancel` from the
//! caller, the deadline, a lost peer or shutdown.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use zmesh_proto::TraceParent;

use crate::call::Call;
use crate::client::{CallError, CallOptions, CallStream};
use crate::wire::JobTag;

/// What a handler knows about the call it serves. Cheap to clone (one shared allocation);
/// a `#[zmesh::service]` method takes it as `ctx: &zmesh::CallContext` right after
/// `&self`, a closure handler as its first parameter (`|ctx: CallContext, name: String|`).
///
/// Pass it on with [`Call::with_context`] (or [`CallOptions::from_context`]) when the
/// handler calls another service: that call's deadline is never later than this one's,
/// and it belongs to the same trace.
///
/// ```
/// use zmesh_core::{Call, CallContext, CallOptions, Client, HandlerError, Service};
///
/// let back = Client::new("tcp://127.0.0.1:4243");
/// let front = Service::new("front").method("hello", move |ctx: CallContext, name: String| {
///     let back = back.clone();
///     async move {
///         // Within what is left of this call's deadline, in the caller's trace.
///         let reply: String = back
///             .with_context(&ctx)
///             .call_with("back.hello", (name,), CallOptions::default())
///             .await?;
///         Ok(reply)
///     }
/// });
/// # let _ = front;
/// ```
#[derive(Clone)]
pub struct CallContext {
    inner: Arc<Inner>,
}

struct Inner {
    method: String,
    deadline: Option<Instant>,
    /// The caller's, as it sent it (`None`: absent or invalid).
    traceparent: Option<TraceParent>,
    /// The trace calls made on behalf of this one join when the caller sent none: started
    /// at the first such call (not per call served: most handlers call nobody), so every
    /// call this handler makes shares it.
    root: OnceLock<TraceParent>,
    peer: CallPeer,
    /// The job and attempt, when a job queue dispatched the call.
    job: Option<JobTag>,
    cancelled: AtomicBool,
    notify: Notify,
}

/// Who made a call, as the node saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallPeer {
    identity: Bytes,
    endpoint: Option<Arc<str>>,
    keyed: bool,
}

impl CallPeer {
    /// The peer's ZeroMQ routing identity on the socket the call came in on (behind a
    /// device, the identity the device gives the client).
    pub fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// The endpoint of this node the call came in on, as bound (`tcp://127.0.0.1:4242`),
    /// or for a worker, its device's backend. `None` when the socket that received it
    /// listens on several endpoints: a ZeroMQ socket does not say which one a message
    /// used.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Whether the call came sealed with the node's mesh key (a keyed endpoint): the peer
    /// holds the key.
    pub fn is_keyed(&self) -> bool {
        self.keyed
    }

    pub(crate) fn new(identity: Bytes, endpoint: Option<Arc<str>>, keyed: bool) -> Self {
        Self {
            identity,
            endpoint,
            keyed,
        }
    }
}

impl CallContext {
    pub(crate) fn new(
        method: String,
        deadline: Option<Instant>,
        traceparent: Option<TraceParent>,
        peer: CallPeer,
        job: Option<JobTag>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                method,
                deadline,
                traceparent,
                root: OnceLock::new(),
                peer,
                job,
                cancelled: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        }
    }

    /// A context for running a handler outside a node (a test, a local call): no deadline,
    /// no trace context, an empty local peer, never cancelled.
    pub fn local(method: impl Into<String>) -> Self {
        Self::new(
            method.into(),
            None,
            None,
            CallPeer::new(Bytes::new(), None, false),
            None,
        )
    }

    /// The method as the caller named it (`greeter.hello`, or `hello` when unprefixed).
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    /// Who made the call.
    pub fn peer(&self) -> &CallPeer {
        &self.inner.peer
    }

    /// The job and attempt this call runs, when a job queue dispatched it (headers
    /// `zmesh_job_id`, `zmesh_job_attempt`). Delivery is at least once: the same id with a
    /// later attempt is a redelivery, which an idempotent handler recognises (for example
    /// by recording the ids it has done in the same transaction as its effect).
    pub fn job(&self) -> Option<JobTag> {
        self.inner.job
    }

    /// When the caller stops waiting, if it said (zmesh callers always do; a stock zerorpc
    /// caller does not).
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// The time left before [`CallContext::deadline`] (zero once passed), on the node's
    /// clock.
    pub fn remaining(&self) -> Option<Duration> {
        self.inner
            .deadline
            .map(|deadline| deadline.saturating_duration_since(now()))
    }

    /// The caller's W3C trace context, when it sent a valid `traceparent`.
    pub fn traceparent(&self) -> Option<&TraceParent> {
        self.inner.traceparent.as_ref()
    }

    /// The trace context for a call made on behalf of this one: the caller's trace (or
    /// one started for this call when the caller sent none), with a new span id each time.
    pub fn child_traceparent(&self) -> TraceParent {
        let inner = &self.inner;
        match &inner.traceparent {
            Some(caller) => caller.child(),
            None => inner.root.get_or_init(TraceParent::new_root).child(),
        }
    }

    /// Whether the node has stopped serving this call unfinished: the caller cancelled,
    /// the deadline passed, the peer was lost, or the node shut down.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Resolves when the call is [cancelled](CallContext::is_cancelled); never, for a
    /// call that completes.
    ///
    /// The node stops polling a cancelled handler (its future is dropped, and with it any
    /// call it was making), so this is for what outlives that future: a task the handler
    /// spawned with a clone of the context, a stream's producer, a cleanup.
    pub async fn cancelled(&self) {
        let notified = self.inner.notify.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the flag is read, so a cancel in between is not missed.
        notified.as_mut().enable();
        if self.is_cancelled() {
            return;
        }
        notified.await;
    }

    /// Marks the call cancelled and wakes every [`CallContext::cancelled`] waiter.
    pub(crate) fn cancel(&self) {
        if !self.inner.cancelled.swap(true, Ordering::AcqRel) {
            self.inner.notify.notify_waiters();
        }
    }
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("method", &self.inner.method)
            .field("deadline", &self.inner.deadline)
            .field("traceparent", &self.inner.traceparent)
            .field("peer", &self.inner.peer)
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// The node's clock (tokio's, so paused-time tests move deadlines too), which its
/// deadlines are on.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl CallOptions {
    /// Options for a call made on behalf of the call `ctx` serves: its remaining deadline
    /// and a child of its trace context (same trace id, a new span id).
    pub fn from_context(ctx: &CallContext) -> Self {
        Self::default().inherit(ctx)
    }

    /// These options under `ctx`: the deadline is the earlier of the one set here and
    /// `ctx`'s; a `traceparent` set here is kept, otherwise `ctx`'s child is sent.
    #[must_use]
    pub fn inherit(mut self, ctx: &CallContext) -> Self {
        if let Some(remaining) = ctx.remaining() {
            self.timeout = Some(self.timeout.map_or(remaining, |own| own.min(remaining)));
        }
        if self.traceparent.is_none() {
            self.traceparent = Some(ctx.child_traceparent().to_string());
        }
        self
    }
}

/// A [`Call`] whose every call inherits a [`CallContext`] ([`CallOptions::inherit`]):
/// what [`Call::with_context`] returns, so a typed client made from it
/// (`GreeterClient::new(client.with_context(ctx))`) propagates the context on each call.
///
/// A call under a context whose deadline has passed fails at once with
/// [`CallError::DeadlineExceeded`], without being sent.
#[derive(Clone, Debug)]
pub struct WithContext<C> {
    call: C,
    ctx: CallContext,
}

impl<C: Call> WithContext<C> {
    /// `call` under `ctx`.
    pub fn new(call: C, ctx: &CallContext) -> Self {
        Self {
            call,
            ctx: ctx.clone(),
        }
    }

    /// The context calls inherit.
    pub fn context(&self) -> &CallContext {
        &self.ctx
    }

    /// The `Call` calls go through.
    pub fn inner(&self) -> &C {
        &self.call
    }

    /// `options` under the context, or the error of a context already out of time.
    fn options(&self, options: CallOptions) -> Result<CallOptions, CallError> {
        if self.ctx.remaining() == Some(Duration::ZERO) {
            return Err(CallError::DeadlineExceeded(Duration::ZERO));
        }
        Ok(options.inherit(&self.ctx))
    }
}

/// The options are made at the first poll, so the deadline sent is the time left when the
/// call leaves, not when its future was made.
///
/// Boxed, one allocation per call: the box's `Send` is its declared one, so a handler
/// awaiting it (a closure's future, which must be `Send`) needs no look through `C`'s
/// future, which rustc cannot do for some `Call`s under the handler's borrowed lifetimes
/// (rust-lang/rust#100013) and would then refuse to compile.
impl<C: Call> Call for WithContext<C> {
    fn call_with<'a, T>(
        &'a self,
        method: &'a str,
        args: impl Serialize + Send + 'static,
        options: CallOptions,
    ) -> impl Future<Output = Result<T, CallError>> + Send + 'a
    where
        T: DeserializeOwned + Send + 'static,
    {
        async move {
            let options = self.options(options)?;
            self.call.call_with(method, args, options).await
        }
        .boxed()
    }

    fn call_stream_with<'a, T>(
        &'a self,
        method: &'a str,
        args: impl Serialize + Send + 'static,
        options: CallOptions,
    ) -> impl Future<Output = Result<CallStream<T>, CallError>> + Send + 'a
    where
        T: DeserializeOwned + Send + 'static,
    {
        async move {
            let options = self.options(options)?;
            self.call.call_stream_with(method, args, options).await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn context(deadline: Option<Instant>, traceparent: Option<&str>) -> CallContext {
        CallContext::new(
            "greeter.hello".into(),
            deadline,
            traceparent.and_then(TraceParent::parse),
            CallPeer::new(Bytes::from_static(b"peer"), Some("ipc:///x".into()), true),
            None,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn options_inherit_the_remaining_deadline_and_a_child_trace() {
        let ctx = context(Some(now() + Duration::from_secs(10)), Some(PARENT));
        tokio::time::advance(Duration::from_secs(4)).await;
        let options = CallOptions::from_context(&ctx);
        assert_eq!(options.timeout, Some(Duration::from_secs(6)));
        let sent =
            TraceParent::parse(options.traceparent.as_deref().expect("sent")).expect("valid");
        let caller = ctx.traceparent().expect("parsed");
        assert_eq!(sent.trace_id(), caller.trace_id());
        assert_ne!(sent.parent_id(), caller.parent_id());

        // An earlier deadline of the caller's own wins; a later one does not.
        let shorter = CallOptions::timeout(Duration::from_secs(1)).inherit(&ctx);
        assert_eq!(shorter.timeout, Some(Duration::from_secs(1)));
        let longer = CallOptions::timeout(Duration::from_secs(60)).inherit(&ctx);
        assert_eq!(longer.timeout, Some(Duration::from_secs(6)));
        // An explicit traceparent is kept.
        let own = CallOptions::default().traceparent("mine").inherit(&ctx);
        assert_eq!(own.traceparent.as_deref(), Some("mine"));
    }

    #[test]
    fn an_untraced_call_starts_one_trace_for_all_its_calls() {
        let ctx = context(None, Some("not a traceparent"));
        assert_eq!(ctx.traceparent(), None, "an invalid header is ignored");
        let (a, b) = (ctx.child_traceparent(), ctx.child_traceparent());
        assert_eq!(a.trace_id(), b.trace_id());
        assert_ne!(a.parent_id(), b.parent_id());
        assert_eq!(CallOptions::from_context(&ctx).timeout, None);
    }

    #[tokio::test]
    async fn cancellation_wakes_every_waiter_once_and_stays() {
        let ctx = context(None, None);
        assert!(!ctx.is_cancelled());
        let waiter = tokio::spawn({
            let ctx = ctx.clone();
            async move { ctx.cancelled().await }
        });
        tokio::task::yield_now().await;
        ctx.cancel();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert!(ctx.is_cancelled());
        // Already cancelled: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), ctx.cancelled())
            .await
            .expect("at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_context_out_of_time_fails_its_calls_unsent() {
        let ctx = context(Some(now()), None);
        // Nothing listens there: the call would fail otherwise only after connecting.
        let client = crate::Client::new("tcp://127.0.0.1:9");
        let result: Result<String, _> = client
            .with_context(&ctx)
            .call_with("greeter.hello", ("x",), CallOptions::default())
            .await;
        assert!(
            matches!(result, Err(CallError::DeadlineExceeded(d)) if d == Duration::ZERO),
            "{result:?}"
        );
    }
}
