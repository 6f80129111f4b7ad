//! Provides the client: any number of concurrent calls to one endpoint, multiplexed over one
//! DEALER connection and correlated by message id, with per-call deadlines, cancel on drop,
//! credit-based streams, heartbeat-based peer-loss detection and automatic reconnection.

mod calls;
mod connection;
mod metrics;
mod readers;
mod stream;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{self, Either, Ready};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::spin::SpinBudget;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use zmesh_proto::ErrorKind;

pub use metrics::ClientMetrics;
pub use stream::CallStream;

use crate::config::{self, ConfigError};
use crate::telemetry;
use crate::wire::{self, Header, MessageId, msgpack::Cursor, names, parse_err_args};
use connection::{Connection, Inbound};
use stream::CallGuard;

/// An error reported by the remote handler (`ERR [name, message, traceback]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct RemoteError {
    /// The error's name, such as `NameError`, `TypeError`, `Overloaded` or `EchoError`.
    pub name: String,
    /// The error's message.
    pub message: String,
    /// The remote traceback, when the server sent one.
    pub traceback: Option<String>,
}

/// A server that took a request and then said nothing about it, not even a heartbeat, for
/// longer than a silent peer is given: the source of such a [`CallError::PeerLost`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no answer from {endpoint}: neither a reply nor a heartbeat for more than {silence:?} after \
     the request; it died before answering, or it ignores this method (zerorpc-node servers \
     drop calls to methods they do not have without a word)"
)]
pub struct NoAnswer {
    /// The server's endpoint.
    pub endpoint: String,
    /// How long it stayed silent.
    pub silence: Duration,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The server answered with `ERR`.
    #[error("remote error {0}")]
    Remote(RemoteError),
    /// The connection died or the server stopped heartbeating while the call was open.
    /// When the server never said a word about the call, not even a heartbeat, the cause's
    /// source is a [`NoAnswer`] ([`CallError::is_unanswered`]).
    #[error("peer lost: {0}")]
    PeerLost(#[source] Cause),
    /// The call's deadline passed before the (first) reply.
    #[error("deadline of {0:?} exceeded")]
    DeadlineExceeded(Duration),
    /// The client's endpoint is not a valid `tcp://host:port` or `ipc://path`: every call
    /// fails so at once, before any connection attempt.
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        #[source]
        source: crate::EndpointError,
    },
    /// The endpoint could not be reached.
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        #[source]
        reason: Cause,
    },
    /// A message is over the configured size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The arguments could not be encoded.
    #[error("cannot encode arguments: {0}")]
    Encode(#[source] Cause),
    /// The result could not be decoded into the requested type.
    #[error("cannot decode result: {0}")]
    Decode(#[source] Cause),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[source] Cause),
    /// A setting of the [`ClientConfig`] is out of range: every call fails with it.
    #[error("invalid client configuration: {0}")]
    Config(#[from] ConfigError),
    /// With a mesh key: the call's sealed replies did not arrive as the server sent them
    /// (one lost, reordered, repeated, or the stream cut short before its `STREAM_DONE`),
    /// which only something on the path between the two does. The call may have run, and
    /// what was received of it cannot be trusted to be complete: not retried.
    #[error("integrity error: {0}")]
    Integrity(String),
    /// A call by service name (through a [`MeshClient`](crate::mesh::MeshClient)) found no
    /// live peer offering the service before its deadline; nothing was sent.
    #[error("no live peer offers service {service:?} (waited {waited:?})")]
    NoPeer {
        /// The service.
        service: String,
        /// How long the call waited for one.
        waited: Duration,
    },
    /// A call by service name whose method is not `service.method`, so it names no service
    /// to look up; nothing was sent.
    #[error("method {0:?} names no service: use service.method")]
    BadMethod(String),
}

/// Why a call failed, in words, and the error value behind it when there is one (a socket
/// error, a MessagePack encoding or decoding error, an undecodable event), which
/// [`std::error::Error::source`] returns. Cheap to clone: one connection's failure is
/// every open call's. Reads as its words (`Display`, `Deref<Target = str>`).
#[derive(Debug, Clone)]
pub struct Cause {
    what: Box<str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Cause {
    /// A cause that is only words.
    pub fn new(what: impl Into<Box<str>>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    /// A cause in words with the error behind it.
    pub fn with_source(
        what: impl Into<Box<str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The error as its own words, with itself as the source.
    pub fn of(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::with_source(source.to_string(), source)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl std::ops::Deref for Cause {
    type Target = str;

    fn deref(&self) -> &str {
        &self.what
    }
}

impl From<String> for Cause {
    fn from(what: String) -> Self {
        Self::new(what)
    }
}

impl From<&str> for Cause {
    fn from(what: &str) -> Self {
        Self::new(what)
    }
}

impl RemoteError {
    /// The error's kind when it is one zmesh itself sends (`Overloaded`, `NameError`, ...);
    /// `None` for a handler's own error name.
    pub fn kind(&self) -> Option<ErrorKind> {
        ErrorKind::of_err(&self.name, &self.message)
    }
}

impl CallError {
    /// The remote error, if the server answered `ERR`.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Self::Remote(e) => Some(e),
            _ => None,
        }
    }

    /// True for [`CallError::PeerLost`].
    pub fn is_peer_lost(&self) -> bool {
        matches!(self, Self::PeerLost(_))
    }

    /// True for a [`CallError::PeerLost`] whose server never said a word about the call,
    /// not even a heartbeat ([`NoAnswer`]): it ignored the call (zerorpc-node servers drop
    /// calls to methods they do not have this way) or died before it answered.
    pub fn is_unanswered(&self) -> bool {
        match self {
            Self::PeerLost(cause) => std::error::Error::source(cause)
                .is_some_and(|e| e.downcast_ref::<NoAnswer>().is_some()),
            _ => false,
        }
    }

    /// True for a [`CallError::Connect`] because nothing listens at the endpoint (its
    /// cause's source is the refusal, an [`std::io::Error`] of kind `ConnectionRefused`, or
    /// `NotFound` for a missing ipc socket file), as opposed to one that was slow to answer.
    pub fn is_refused(&self) -> bool {
        match self {
            Self::Connect { reason, .. } => std::error::Error::source(reason)
                .and_then(|e| e.downcast_ref::<std::io::Error>())
                .is_some_and(crate::endpoint::is_refusal),
            _ => false,
        }
    }
}

/// Client settings. Build with `ClientConfig::default()` and the chained setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Heartbeat period on every open call (default 5 s, as zerorpc); a server silent for
    /// more than two periods is lost. Use the server's period.
    pub heartbeat: Duration,
    /// Deadline of a call that sets none (default 30 s, as zerorpc).
    pub default_timeout: Duration,
    /// Longest a call keeps trying to (re)connect before it fails with
    /// [`CallError::Connect`] (default 5 s; never beyond the call's deadline).
    pub connect_timeout: Duration,
    /// Stream credit window: items the server may send ahead of the consumer (default 100).
    pub stream_window: u64,
    /// Calls open at once through this client; further calls wait for a slot within their
    /// deadline (default 10,000).
    pub max_in_flight: usize,
    /// Largest accepted reply frame and request args in bytes (default 16 MiB).
    pub max_message_size: usize,
    /// The mesh key to seal requests with and to require on replies (default none: plain
    /// zerorpc). A keyed client only accepts unsealed events that are `ERR Unauthenticated`
    /// or `ERR Replayed`, which is how a node tells a peer with a wrong key (or a stale
    /// request) why it was refused; they fail the call as [`CallError::Remote`], never as a
    /// refusal to retry elsewhere. Sealed replies must arrive in order, each in its place
    /// in the call, or the call fails with [`CallError::Integrity`].
    pub mesh_key: Option<crate::trust::MeshKey>,
    /// The low-latency mode (default off): a call awaiting its reply keeps polling the
    /// socket for up to this long before its task parks, so a reply arriving within it is
    /// read without a wake-up. Costs a CPU kept busy for up to this long per call (at most
    /// 1 ms); see docs/PERFORMANCE.md.
    pub spin: Option<Duration>,
    /// Where this client records its calls' figures for Prometheus (default none: nothing
    /// is recorded). Clients may share one [`ClientMetrics`].
    pub metrics: Option<ClientMetrics>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            default_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            stream_window: 100,
            max_in_flight: 10_000,
            max_message_size: 16 * 1024 * 1024,
            mesh_key: None,
            spin: None,
            metrics: None,
        }
    }
}

impl ClientConfig {
    /// Sets the heartbeat period (at least 10 ms).
    #[must_use]
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// Sets the default call deadline.
    #[must_use]
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the stream credit window (at least 2).
    #[must_use]
    pub fn stream_window(mut self, window: u64) -> Self {
        self.stream_window = window;
        self
    }

    /// Sets the bound on calls in flight (at least 1).
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Sets the message size limit.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Turns the low-latency mode on: a spin of up to `spin` while a reply is awaited (at
    /// most 1 ms; see [`ClientConfig::spin`](struct.ClientConfig.html#structfield.spin)).
    #[must_use]
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = Some(spin);
        self
    }

    /// Records this client's calls in `metrics` (see [`ClientConfig::metrics`]).
    #[must_use]
    pub fn metrics(mut self, metrics: ClientMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Seals every request with the mesh key and requires it on replies.
    #[must_use]
    pub fn mesh_key(mut self, key: crate::trust::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Checks every setting against its range (see [`crate::config`]); a [`Client`] does
    /// when it is made, and fails its calls with [`CallError::Config`] if a setting is out.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::at_least("heartbeat", self.heartbeat, Duration::from_millis(10))?;
        // The stream's queue holds the window plus one spare slot.
        config::in_range(
            "stream_window",
            self.stream_window,
            2,
            (Semaphore::MAX_PERMITS - 1) as u64,
        )?;
        config::in_range(
            "max_in_flight",
            self.max_in_flight,
            1,
            Semaphore::MAX_PERMITS,
        )?;
        if let Some(spin) = self.spin {
            config::in_range("spin", spin, Duration::ZERO, crate::spin::MAX_SPIN)?;
        }
        Ok(())
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// This call's deadline, from now; `None` uses the client's default.
    pub timeout: Option<Duration>,
    /// A W3C `traceparent` to propagate.
    pub traceparent: Option<String>,
    /// A stable id for this logical request (header `zmesh_request_id`): send the same id
    /// on every retry and a zmesh node answers a repeat from its reply cache instead of
    /// running the handler again.
    pub request_id: Option<Box<str>>,
    /// The job this call runs, for a job queue's dispatch (headers `zmesh_job_id`,
    /// `zmesh_job_attempt`; the worker reads it as [`CallContext::job`](crate::CallContext::job)).
    pub job: Option<wire::JobTag>,
    /// Whether the caller's own client span covers this call (a `MeshClient`'s, over all
    /// its attempts), so the `Client` makes none.
    pub(crate) spanned: bool,
}

impl CallOptions {
    /// Options with a deadline.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            ..Self::default()
        }
    }

    /// Adds a `traceparent`.
    #[must_use]
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Adds a stable request id (see [`CallOptions::request_id`]).
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into().into_boxed_str());
        self
    }

    /// Tags the call with the job and attempt it runs (see [`CallOptions::job`]).
    #[must_use]
    pub fn job(mut self, job: wire::JobTag) -> Self {
        self.job = Some(job);
        self
    }
}

/// The first reply decides what a call is: a single value or a stream.
#[derive(Debug)]
pub enum Response {
    /// `OK`: the result, still msgpack-encoded.
    Value(Bytes),
    /// `STREAM`/`STREAM_DONE`: the items.
    Stream(CallStream<rmpv::Value>),
}

impl Response {
    /// The single value a plain call expects; a stream is the caller's mistake (the method
    /// streams), reported as [`CallError::Protocol`].
    pub(crate) fn into_value(self, method: &str) -> Result<Bytes, CallError> {
        match self {
            Self::Value(value) => Ok(value),
            Self::Stream(_) => Err(CallError::Protocol(
                format!("{method} answered with a stream; use call_stream").into(),
            )),
        }
    }

    /// The stream a streaming call expects; a single value is reported as
    /// [`CallError::Protocol`].
    pub(crate) fn into_stream(self, method: &str) -> Result<CallStream<rmpv::Value>, CallError> {
        match self {
            Self::Stream(stream) => Ok(stream),
            Self::Value(_) => Err(CallError::Protocol(
                format!("{method} answered with a single value; use call").into(),
            )),
        }
    }
}

/// A client of one endpoint. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: String,
    /// Why `endpoint` does not parse, if it does not (the client was built all the same).
    invalid_endpoint: Option<crate::EndpointError>,
    config: ClientConfig,
    current: Mutex<Option<Arc<Connection>>>,
    connecting: tokio::sync::Mutex<()>,
    in_flight: Arc<Semaphore>,
    /// Why `config` cannot be used, if it cannot: every call fails with it at once.
    invalid: Option<ConfigError>,
    /// The mesh key and replay guard shared by all of this client's connections.
    trust: connection::TrustState,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `endpoint` with default settings. Connects on first use.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self::with_config(endpoint, ClientConfig::default())
    }

    /// A client with explicit settings. Connects on first use.
    ///
    /// The endpoint is parsed and the settings checked ([`ClientConfig::validate`]) here;
    /// when either is invalid, every call fails at once with [`CallError::InvalidEndpoint`]
    /// or [`CallError::Config`].
    pub fn with_config(endpoint: impl Into<String>, config: ClientConfig) -> Self {
        let endpoint = endpoint.into();
        let invalid = config.validate().err();
        // Never used when the config is invalid; a size out of range would panic here.
        let permits = if invalid.is_some() {
            0
        } else {
            config.max_in_flight
        };
        Self {
            inner: Arc::new(Inner {
                invalid_endpoint: endpoint.parse::<crate::Endpoint>().err(),
                endpoint,
                in_flight: Arc::new(Semaphore::new(permits)),
                invalid,
                trust: connection::TrustState::new(config.mesh_key.clone()),
                config,
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// A client that is already connected.
    ///
    /// # Errors
    /// [`CallError::InvalidEndpoint`] at once for an invalid endpoint, [`CallError::Config`]
    /// for settings out of range, [`CallError::Connect`] when the endpoint cannot be reached
    /// within the connect timeout.
    pub async fn connect(
        endpoint: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Self, CallError> {
        config.validate()?;
        let client = Self::with_config(endpoint, config);
        let deadline = Instant::now() + client.inner.config.connect_timeout;
        client.connection(deadline).await?;
        Ok(client)
    }

    /// The endpoint this client calls.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// Replies dropped because they did not open with the mesh key (unsealed and not an
    /// `ERR Unauthenticated` / `ERR Replayed`, wrong key, tampered or replayed); always 0
    /// without a key.
    pub fn rejected_replies(&self) -> u64 {
        self.inner.trust.rejected()
    }

    /// Calls failed with [`CallError::Integrity`]: their sealed replies arrived lost,
    /// reordered, repeated or cut short (see [`ClientConfig::mesh_key`]).
    pub fn integrity_failures(&self) -> u64 {
        self.inner.trust.integrity_failures()
    }

    /// Whether the current connection's peer speaks zmesh's extensions (`None` when not
    /// connected).
    pub fn is_zmesh_peer(&self) -> Option<bool> {
        self.current().map(|c| c.shared.is_zmesh_peer())
    }

    /// Calls `method` with positional `args` (a tuple, such as `("hi",)` or `()`) and decodes
    /// the result as `T`.
    ///
    /// The arguments are encoded when this is called; the request goes out when the
    /// returned future is first polled.
    ///
    /// # Errors
    /// [`CallError`]: remote errors, deadline, peer loss, connection and codec failures.
    pub fn call<'a, T: DeserializeOwned>(
        &'a self,
        method: &'a str,
        args: impl Serialize,
    ) -> impl Future<Output = Result<T, CallError>> {
        self.call_with(method, args, CallOptions::default())
    }

    /// [`Client::call`] with per-call options.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn call_with<'a, T: DeserializeOwned>(
        &'a self,
        method: &'a str,
        args: impl Serialize,
        options: CallOptions,
    ) -> impl Future<Output = Result<T, CallError>> {
        self.encoded_request(method, encode_args(&args), options)
            .map(move |response| decode_result(&response?.into_value(method)?))
    }

    /// Calls a streaming method; items are decoded as `T`.
    ///
    /// # Errors
    /// As [`Client::call`], for the first reply; later failures arrive as stream items.
    pub fn call_stream<'a, T: DeserializeOwned>(
        &'a self,
        method: &'a str,
        args: impl Serialize,
    ) -> impl Future<Output = Result<CallStream<T>, CallError>> {
        self.call_stream_with(method, args, CallOptions::default())
    }

    /// [`Client::call_stream`] with per-call options (the deadline covers the first reply).
    ///
    /// # Errors
    /// As [`Client::call_stream`].
    pub fn call_stream_with<'a, T: DeserializeOwned>(
        &'a self,
        method: &'a str,
        args: impl Serialize,
        options: CallOptions,
    ) -> impl Future<Output = Result<CallStream<T>, CallError>> {
        self.encoded_request(method, encode_args(&args), options)
            .map(move |response| Ok(response?.into_stream(method)?.typed()))
    }

    /// [`Client::request`] once the arguments are encoded.
    fn encoded_request<'a>(
        &'a self,
        method: &'a str,
        args: Result<Bytes, CallError>,
        options: CallOptions,
    ) -> Either<Request<'a>, Ready<Result<Response, CallError>>> {
        match args {
            Ok(args) => Either::Left(self.request(method, args, options)),
            Err(e) => Either::Right(future::ready(Err(e))),
        }
    }

    /// Sends a request whose args are already msgpack (an array) and returns the first
    /// reply's interpretation, for callers that do not know the method's shape.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub fn request<'a>(
        &'a self,
        method: &'a str,
        args: Bytes,
        options: CallOptions,
    ) -> Request<'a> {
        let timeout = options.timeout.unwrap_or(self.inner.config.default_timeout);
        let span = if options.spanned {
            tracing::Span::none()
        } else {
            telemetry::client_span(method, Some(&self.inner.endpoint), options.job)
        };
        #[cfg(feature = "otel")]
        let options = {
            let mut options = options;
            telemetry::send_own_context(&span, &mut options.traceparent);
            options
        };
        Request {
            client: self,
            method,
            span,
            started: None,
            state: RequestState::Start {
                method,
                args,
                options,
                timeout,
            },
        }
    }

    /// The first step of a call, done at its first poll. The common case (a free slot, a
    /// live connection, room in the socket's queue) registers the call and hands its
    /// request over without waiting; anything that must wait continues in
    /// [`Client::request_waiting`].
    fn begin<'a>(
        &'a self,
        method: &'a str,
        args: Bytes,
        options: CallOptions,
        timeout: Duration,
    ) -> Result<RequestState<'a>, CallError> {
        if let Some(invalid) = &self.inner.invalid {
            return Err(CallError::Config(invalid.clone()));
        }
        let config = &self.inner.config;
        if args.len() > config.max_message_size {
            return Err(CallError::MessageTooLarge {
                size: args.len(),
                limit: config.max_message_size,
            });
        }
        let now = Instant::now();
        let deadline = now + timeout;
        let started = match self.inner.in_flight.clone().try_acquire_owned() {
            Err(_) => None,
            Ok(permit) => match self.current() {
                None => Some(Started { permit, call: None }),
                Some(conn) => {
                    let call = start_call(&conn, method, &args, &options, deadline, now);
                    if matches!(call.handed_over, Ok(None)) {
                        return Ok(RequestState::Sent(SentCall {
                            rx: call.reply,
                            guard: call.guard,
                            permit,
                            timeout,
                            spin: SpinBudget::new(config.spin),
                            _conn: conn,
                        }));
                    }
                    Some(Started {
                        permit,
                        call: Some((conn, call)),
                    })
                }
            },
        };
        let waiting = self.request_waiting(method, args, options, timeout, deadline, started);
        Ok(RequestState::Waiting(Box::pin(waiting)))
    }

    /// The rest of a call that had to wait (for a slot, a connection or room in the
    /// socket's queue), from wherever [`Client::begin`] stopped. Boxed by its caller: it is
    /// the rare path, and its state would otherwise enlarge every call's future.
    ///
    /// A request that could not even be handed to a dead connection never reached the
    /// server, so one retry on a fresh connection is safe for any method.
    async fn request_waiting(
        &self,
        method: &str,
        args: Bytes,
        options: CallOptions,
        timeout: Duration,
        deadline: Instant,
        started: Option<Started>,
    ) -> Result<Response, CallError> {
        let (permit, mut call) = match started {
            Some(Started { permit, call }) => (permit, call),
            None => (self.wait_for_slot(deadline, timeout).await?, None),
        };
        for attempt in 0..2 {
            let (conn, call) = match call.take() {
                Some(started) => started,
                None => {
                    let conn = self.connection(deadline).await?;
                    let call = start_call(&conn, method, &args, &options, deadline, Instant::now());
                    (conn, call)
                }
            };
            let StartedCall {
                guard,
                mut reply,
                handed_over,
            } = call;
            let sent = match handed_over {
                Ok(None) => Some(Ok(())),
                Ok(Some(message)) => within(deadline, conn.shared.send_waiting(message)).await,
                Err(e) => Some(Err(e)),
            };
            match sent {
                Some(Ok(())) => {
                    let spin = self.inner.config.spin;
                    let waited = crate::spin::poll_spinning(spin, |cx| {
                        guard.conn.poll_reply(&guard.id, &mut reply, cx)
                    })
                    .await;
                    let sent = SentCall {
                        rx: reply,
                        guard,
                        permit,
                        timeout,
                        spin: SpinBudget::new(None),
                        _conn: conn,
                    };
                    return self.first_reply(waited, sent);
                }
                Some(Err(_)) if attempt == 0 => continue,
                Some(Err(e)) => return Err(e),
                None => return Err(CallError::DeadlineExceeded(timeout)),
            }
        }
        Err(CallError::PeerLost(
            format!("{} is unreachable", self.inner.endpoint).into(),
        ))
    }

    async fn wait_for_slot(
        &self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<OwnedSemaphorePermit, CallError> {
        tokio::time::timeout_at(
            deadline.into(),
            self.inner.in_flight.clone().acquire_owned(),
        )
        .await
        .map_err(|_| CallError::DeadlineExceeded(timeout))?
        .map_err(|_| CallError::Protocol("client closed".into()))
    }

    /// What a sent call's first reply (or its failure) means to the caller. No timer while
    /// waiting for it: the connection fails the call at its deadline (one timer per
    /// connection, see `ConnShared::register`), and also sends the cancel.
    fn first_reply(
        &self,
        waited: Result<Inbound, oneshot::error::RecvError>,
        call: SentCall,
    ) -> Result<Response, CallError> {
        let SentCall {
            mut guard,
            permit,
            timeout,
            ..
        } = call;
        let inbound = match waited {
            Err(_) => return Err(CallError::PeerLost("connection closed".into())),
            Ok(Inbound::Failed(CallError::DeadlineExceeded(_))) => {
                return Err(CallError::DeadlineExceeded(timeout));
            }
            Ok(inbound) => inbound,
        };
        let window = self.inner.config.stream_window;
        let event = match inbound {
            Inbound::Failed(e) => return Err(e),
            Inbound::Stream(first, items) => {
                return Ok(Response::Stream(CallStream::new(
                    Some(items),
                    guard,
                    Some(first.args),
                    window,
                    timeout,
                    permit,
                )));
            }
            Inbound::Event(event) => event,
        };
        match event.name.as_ref() {
            names::OK => {
                guard.complete();
                Ok(Response::Value(first_element(&event.args)?))
            }
            names::ERR => {
                guard.complete();
                Err(err_reply(&event.args, timeout))
            }
            names::STREAM_DONE => Ok(Response::Stream(CallStream::new(
                None, guard, None, window, timeout, permit,
            ))),
            other => Err(CallError::Protocol(
                format!("unexpected reply {other:?}").into(),
            )),
        }
    }

    fn current(&self) -> Option<Arc<Connection>> {
        let current = self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.as_ref().filter(|c| c.shared.is_alive()).cloned()
    }

    /// The live connection, reconnecting if the last one died.
    async fn connection(&self, deadline: Instant) -> Result<Arc<Connection>, CallError> {
        match self.current() {
            Some(conn) => Ok(conn),
            None => Box::pin(self.reconnect(deadline)).await,
        }
    }

    async fn reconnect(&self, deadline: Instant) -> Result<Arc<Connection>, CallError> {
        if let Some(source) = &self.inner.invalid_endpoint {
            return Err(CallError::InvalidEndpoint {
                endpoint: self.inner.endpoint.clone(),
                source: source.clone(),
            });
        }
        let connect_error = |reason: &str| CallError::Connect {
            endpoint: self.inner.endpoint.clone(),
            reason: reason.into(),
        };
        // Connecting gives up after the connect timeout even when the call has longer: a
        // caller with somewhere else to go (the mesh client, a failover list) must learn
        // that this address is dead, not wait out its whole deadline here.
        let deadline = deadline.min(Instant::now() + self.inner.config.connect_timeout);
        // One caller connects; the others wait here and then share its connection.
        let _gate = tokio::time::timeout_at(deadline.into(), self.inner.connecting.lock())
            .await
            .map_err(|_| connect_error("deadline passed while waiting for another connect"))?;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = Arc::new(
            Connection::open(
                &self.inner.endpoint,
                &self.inner.config,
                &self.inner.trust,
                deadline,
            )
            .await?,
        );
        *self
            .inner
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }
}

/// What an `ERR` reply with these args means for a call whose deadline was `timeout`; the
/// same whether it ends the call or a stream.
pub(crate) fn err_reply(args: &[u8], timeout: Duration) -> CallError {
    let (name, message, traceback) = parse_err_args(args);
    match name.parse() {
        // The server enforces the same deadline we sent; its verdict and our timer race,
        // and both mean the same thing to the caller.
        Ok(ErrorKind::DeadlineExceeded) => CallError::DeadlineExceeded(timeout),
        // A proxy device reports a worker lost mid-call as `ERR PeerLost`: the same verdict
        // the client reaches when its own peer dies.
        Ok(ErrorKind::PeerLost) => CallError::PeerLost(message.into()),
        _ => CallError::Remote(RemoteError {
            name,
            message,
            traceback,
        }),
    }
}

/// A call in progress: the future [`Client::request`] returns (and the one inside
/// [`Client::call`]'s), resolving to the first reply.
///
/// Nothing is sent before it is first polled. Dropping it before the reply cancels the call:
/// its registration is removed and a zmesh peer is told to stop the handler. The deadline
/// (from [`CallOptions`] or the client's default) covers connecting, waiting for a slot
/// and the reply.
// A hand-written state machine rather than nested `async fn`s: every concurrent call is one
// such future, and an `async fn` keeps its parameters beside the future it awaits, so the
// layers stored the arguments again and again (1,000 bytes, past the allocator's
// small-chunk cache; a unit test bounds it now).
#[must_use = "futures do nothing unless polled"]
pub struct Request<'a> {
    client: &'a Client,
    /// The method, for the client's metrics.
    method: &'a str,
    /// `zmesh.client_call`, entered on every poll; the outcome and duration are recorded
    /// in it when the call completes.
    span: tracing::Span,
    /// Set at the first poll, only when the span is recorded or the client keeps metrics
    /// (a clock read per call otherwise).
    started: Option<Instant>,
    state: RequestState<'a>,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            RequestState::Start { .. } => "not started",
            RequestState::Sent(_) => "sent",
            RequestState::Waiting(_) => "waiting",
            RequestState::Done => "done",
        };
        f.debug_struct("Request")
            .field("endpoint", &self.client.inner.endpoint)
            .field("state", &state)
            .finish()
    }
}

enum RequestState<'a> {
    /// Not polled yet: nothing is sent until then.
    Start {
        method: &'a str,
        args: Bytes,
        options: CallOptions,
        timeout: Duration,
    },
    /// The request is out; waiting for the first reply.
    Sent(SentCall),
    /// Something had to wait; the rest of the call.
    Waiting(Pin<Box<dyn Future<Output = Result<Response, CallError>> + Send + 'a>>),
    /// Completed (polling again answers an error).
    Done,
}

/// A call whose request is out, waiting for its first reply.
struct SentCall {
    rx: oneshot::Receiver<Inbound>,
    /// Forgets (and for a zmesh peer cancels) the call when dropped before it completes.
    guard: CallGuard,
    permit: OwnedSemaphorePermit,
    timeout: Duration,
    /// The low-latency mode's spin while the reply is awaited ([`ClientConfig::spin`]).
    spin: SpinBudget,
    /// Keeps the connection (and its reader task) up while the call waits.
    _conn: Arc<Connection>,
}

/// How far [`Client::begin`] got before something had to wait.
struct Started {
    permit: OwnedSemaphorePermit,
    call: Option<(Arc<Connection>, StartedCall)>,
}

impl Future for Request<'_> {
    type Output = Result<Response, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let metrics = this.client.inner.config.metrics.as_ref();
        if this.started.is_none() && (!this.span.is_disabled() || metrics.is_some()) {
            this.started = Some(Instant::now());
        }
        let mut result = std::task::ready!(poll_request(this.client, &mut this.state, cx));
        this.state = RequestState::Done;
        if let Ok(Response::Stream(stream)) = &mut result {
            stream.keep_span(&this.span);
        }
        if let (Some(metrics), Some(started)) = (metrics, this.started) {
            let error_type = result.as_ref().err().map(telemetry::error_type);
            metrics.record(this.method, started.elapsed(), error_type);
        }
        if let Some(started) = this.started.take()
            && !this.span.is_disabled()
        {
            let outcome = match &result {
                Ok(Response::Value(_)) => "ok".to_owned(),
                Ok(Response::Stream(_)) => "stream".to_owned(),
                Err(e) => {
                    telemetry::record_error(&this.span, telemetry::error_type(e));
                    e.to_string()
                }
            };
            this.span.record("outcome", outcome);
            this.span
                .record("duration_us", started.elapsed().as_micros() as u64);
        }
        Poll::Ready(result)
    }
}

/// Advances a [`Request`]'s state.
fn poll_request<'a>(
    client: &'a Client,
    state: &mut RequestState<'a>,
    cx: &mut Context<'_>,
) -> Poll<Result<Response, CallError>> {
    loop {
        match state {
            RequestState::Start { .. } => {
                if let RequestState::Start {
                    method,
                    args,
                    options,
                    timeout,
                } = std::mem::replace(state, RequestState::Done)
                {
                    *state = client.begin(method, args, options, timeout)?;
                }
            }
            RequestState::Sent(sent) => {
                let polled = sent.guard.conn.poll_reply(&sent.guard.id, &mut sent.rx, cx);
                let Poll::Ready(waited) = polled else {
                    sent.spin.turn(cx);
                    return Poll::Pending;
                };
                if let RequestState::Sent(sent) = std::mem::replace(state, RequestState::Done) {
                    return Poll::Ready(client.first_reply(waited, sent));
                }
            }
            RequestState::Waiting(rest) => return rest.as_mut().poll(cx),
            RequestState::Done => {
                let misuse = "the call was polled after it completed";
                return Poll::Ready(Err(CallError::Protocol(misuse.into())));
            }
        }
    }
}

/// A call registered on its connection, with its request handed to the socket or not.
struct StartedCall {
    /// Forgets (and for a zmesh peer cancels) the call when dropped before it completes.
    guard: CallGuard,
    /// Where the first reply arrives.
    reply: oneshot::Receiver<Inbound>,
    /// `Ok(None)`: the request is in the socket's queue; `Ok(Some(message))`: the queue was
    /// full, wait for room and send `message`.
    handed_over: Result<Option<zeromq::ZmqMessage>, CallError>,
}

/// Registers a call on `conn` and hands its request to the socket if that needs no
/// waiting. A plain function, so its temporaries (id, encoded request, reply sender) never
/// occupy space in the caller's future.
fn start_call(
    conn: &Connection,
    method: &str,
    args: &[u8],
    options: &CallOptions,
    deadline: Instant,
    now: Instant,
) -> StartedCall {
    let (id, event) = build_request(method, args, options, deadline, now);
    let (tx, reply) = oneshot::channel();
    conn.shared.register(id.clone(), tx, Some(deadline), now);
    let guard = CallGuard {
        conn: conn.shared.clone(),
        id,
        open: true,
    };
    let handed_over = conn.shared.try_send(event, &guard.id);
    StartedCall {
        guard,
        reply,
        handed_over,
    }
}

/// Encodes a request with a fresh id, carrying the time the caller has left. A plain
/// function so the header never occupies space in the caller's future.
fn build_request(
    method: &str,
    args: &[u8],
    options: &CallOptions,
    deadline: Instant,
    now: Instant,
) -> (MessageId, Bytes) {
    let id = MessageId::generate();
    let mut header = Header::zmesh_with_id(id.clone(), None);
    let remaining = deadline.saturating_duration_since(now);
    header.deadline_ms = Some((remaining.as_millis() as u64).max(1));
    header.traceparent = options.traceparent.clone();
    if let Some(request_id) = &options.request_id {
        let mut value = Vec::with_capacity(request_id.len() + 2);
        wire::msgpack::write_str(&mut value, request_id);
        let key = wire::keys::REQUEST_ID.to_owned();
        header.extra.push((key, Bytes::from(value)));
    }
    if let Some(job) = &options.job {
        header.extra.extend(job.header_entries());
    }
    (id, wire::encode_event(&header, method, args))
}

/// Awaits `future` until `deadline`; `None` if the deadline passed first. Polls once before
/// arming a timer, so work that is already done (a send into a non-full queue) costs no
/// timer, and the timer lives on the heap instead of in every caller's future.
async fn within<F: std::future::Future>(deadline: Instant, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    if let std::task::Poll::Ready(output) = futures::poll!(future.as_mut()) {
        return Some(output);
    }
    let expiry = Box::pin(tokio::time::sleep_until(deadline.into()));
    match futures::future::select(future, expiry).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(_) => None,
    }
}

/// Encodes positional args; they must form a msgpack array.
pub(crate) fn encode_args(args: &impl Serialize) -> Result<Bytes, CallError> {
    let mut bytes = Vec::with_capacity(wire::ENCODE_START_CAPACITY);
    rmp_serde::encode::write_named(&mut bytes, args)
        .map_err(|e| CallError::Encode(Cause::of(e)))?;
    // `()` encodes as nil; it means "no arguments".
    if bytes == [0xc0] {
        return Ok(Bytes::from_static(&[0x90]));
    }
    match Cursor::new(&bytes).array_len() {
        Ok(Some(_)) => Ok(Bytes::from(bytes)),
        _ => Err(CallError::Encode(Cause::new(
            "arguments must serialize as an array: pass a tuple such as (x,) or ()",
        ))),
    }
}

/// The result inside `OK [result]` (extra elements are ignored, as in Python).
fn first_element(args: &Bytes) -> Result<Bytes, CallError> {
    let mut cursor = Cursor::new(args);
    match cursor.array_len() {
        Ok(Some(n)) if n >= 1 => {
            let start = cursor.position();
            cursor.value().map_err(|e| {
                CallError::Protocol(Cause::with_source(format!("bad OK reply: {e}"), e))
            })?;
            Ok(args.slice(start..cursor.position()))
        }
        _ => Err(CallError::Protocol("OK reply args are not [result]".into())),
    }
}

/// Decodes a result or stream item, with the same depth bound the node applies to args so
/// a hostile server cannot overflow the caller's stack.
pub(crate) fn decode_result<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(wire::MAX_VALUE_DEPTH);
    T::deserialize(&mut de).map_err(|e| CallError::Decode(Cause::of(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_validated_by_name() {
        assert!(ClientConfig::default().validate().is_ok());
        for (config, field) in [
            (
                ClientConfig::default().heartbeat(Duration::ZERO),
                "heartbeat",
            ),
            (
                ClientConfig::default().heartbeat(Duration::from_millis(9)),
                "heartbeat",
            ),
            (ClientConfig::default().stream_window(1), "stream_window"),
            (
                ClientConfig::default().stream_window(u64::MAX),
                "stream_window",
            ),
            (ClientConfig::default().max_in_flight(0), "max_in_flight"),
            (
                ClientConfig::default().max_in_flight(usize::MAX),
                "max_in_flight",
            ),
            (
                ClientConfig::default().spin(Duration::from_millis(2)),
                "spin",
            ),
        ] {
            assert_eq!(config.validate().map_err(|e| e.field), Err(field));
        }
        assert!(
            ClientConfig::default()
                .spin(Duration::from_micros(50))
                .validate()
                .is_ok()
        );
        // Stored as given, not clamped.
        assert_eq!(ClientConfig::default().stream_window(1).stream_window, 1);
    }

    #[tokio::test]
    async fn a_client_with_a_bad_setting_fails_its_first_call_with_it() {
        let config = ClientConfig {
            max_in_flight: usize::MAX,
            ..ClientConfig::default()
        };
        let client = Client::with_config("tcp://127.0.0.1:1", config.clone());
        match client.call::<()>("x", ()).await {
            Err(CallError::Config(e)) => assert_eq!(e.field, "max_in_flight"),
            other => panic!("{other:?}"),
        }
        match Client::connect("tcp://127.0.0.1:1", config).await {
            Err(CallError::Config(e)) => assert_eq!(e.field, "max_in_flight"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_port_nobody_listens_on_fails_as_refused_long_before_the_connect_timeout() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let connect_timeout = Duration::from_secs(60);
        let config = ClientConfig::default()
            .connect_timeout(connect_timeout)
            .default_timeout(connect_timeout);
        let client = Client::with_config(format!("tcp://127.0.0.1:{port}"), config);
        let error = tokio::time::timeout(connect_timeout / 4, client.call::<()>("x", ()))
            .await
            .expect("refused well before the connect timeout")
            .expect_err("nothing listens");
        assert!(error.is_refused(), "{error}");
        assert!(error.to_string().contains("connection refused"), "{error}");
    }

    /// Every concurrent caller allocates this future and copies it into its task; past
    /// glibc's small-chunk limit (about 1 KiB) each call takes the allocator's slow path,
    /// which halved pipelined throughput before these futures were slimmed down. The
    /// state machine of [`Request`] brought it from 1,000 bytes to about 200; the bound
    /// leaves room for a field or two, not for the nested `async fn`s that grew it before.
    #[test]
    fn call_future_stays_small() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let client = Client::new("tcp://127.0.0.1:1");
        let call = client.call::<u64>("x", (1u64,));
        assert!(
            size(&call) <= 320,
            "Client::call future is {} bytes",
            size(&call)
        );
        let request = client.request("x", Bytes::new(), CallOptions::default());
        assert!(
            size(&request) <= 256,
            "Client::request future is {} bytes",
            size(&request)
        );
    }
}
