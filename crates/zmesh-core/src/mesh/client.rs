//! Provides the service-level client: `call("billing.charge", args)` with no endpoint. It
//! resolves the service to live peers from discovery, keeps one [`Client`] (one DEALER
//! connection) per peer, picks a peer by power of two choices on outstanding calls, takes
//! peers out of rotation when health probes or calls say they stopped answering and back
//! in when they answer again, and retries or hedges calls only where that cannot run a
//! request twice by accident. Streams are picked and failed over as calls are, up to their
//! first item and not after. It is a [`Call`], so typed clients run over it unchanged.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::{Instrument, field};
use zmesh_proto::{ErrorKind, Retry};

use super::balance::{RetryBudget, backoff, pick_two};
use super::directory::PeerRecord;
use super::discovery::Discovery;
use crate::call::Call;
use crate::client::{
    CallError, CallOptions, CallStream, Client, ClientConfig, Response, decode_result, encode_args,
};
use crate::config::{self, ConfigError};
use crate::telemetry;
use crate::wire::MessageId;

/// Why a service-level call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshCallError {
    /// A setting of the [`MeshClientConfig`] is out of range: every call fails with it.
    #[error("invalid mesh client configuration: {0}")]
    Config(#[from] ConfigError),
    /// The method is not `service.method`.
    #[error("method {0:?} names no service: use service.method")]
    BadMethod(String),
    /// No live peer offered the service before the call's deadline.
    #[error("no live peer offers service {service:?} (waited {waited:?})")]
    NoPeer {
        /// The service.
        service: String,
        /// How long the call waited for one.
        waited: Duration,
    },
    /// The call failed; `attempts` counts the peers (or the same peer again) it was sent to.
    #[error("{error} (after {attempts} attempt(s))")]
    Call {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        error: CallError,
    },
}

/// `error.type` of a failed call by service name: its last attempt's, or the mesh's own
/// reason for sending none (named as its [`CallError`] variant).
fn mesh_error_type(error: &MeshCallError) -> &str {
    match error {
        MeshCallError::Call { error, .. } => telemetry::error_type(error),
        MeshCallError::Config(_) => "Config",
        MeshCallError::BadMethod(_) => "BadMethod",
        MeshCallError::NoPeer { .. } => "NoPeer",
    }
}

impl MeshCallError {
    /// The underlying call error, if a call was made.
    pub fn call_error(&self) -> Option<&CallError> {
        match self {
            Self::Call { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The typed API's view of a service-level failure (what a generated client over a
/// [`MeshClient`] returns): each mesh-only case has a [`CallError`] variant of its own, and
/// a failed call is its last attempt's error itself, with its source chain, so a caller
/// matches `Remote`, `PeerLost` or `DeadlineExceeded` the same over the mesh as over a
/// [`Client`]. Only the attempt count stays behind (the mesh client's own bookkeeping).
impl From<MeshCallError> for CallError {
    fn from(error: MeshCallError) -> Self {
        match error {
            MeshCallError::Config(e) => Self::Config(e),
            MeshCallError::BadMethod(method) => Self::BadMethod(method),
            MeshCallError::NoPeer { service, waited } => Self::NoPeer { service, waited },
            MeshCallError::Call { error, .. } => error,
        }
    }
}

/// Hedging: for idempotent calls, a second attempt on another peer when the first has not
/// answered after a latency percentile of that method.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// The percentile of the method's recent latency after which to hedge (default 95).
    pub percentile: f64,
    /// Never hedge sooner than this (default 1 ms).
    pub min_delay: Duration,
    /// Latencies recorded for a method before it is hedged at all (default 100).
    pub min_samples: u64,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            percentile: 95.0,
            min_delay: Duration::from_millis(1),
            min_samples: 100,
        }
    }
}

impl HedgeConfig {
    /// Sets the percentile (0 to 100).
    #[must_use]
    pub fn percentile(mut self, percentile: f64) -> Self {
        self.percentile = percentile;
        self
    }

    /// Sets the shortest hedge delay.
    #[must_use]
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// Sets the samples needed before hedging.
    #[must_use]
    pub fn min_samples(mut self, n: u64) -> Self {
        self.min_samples = n;
        self
    }
}

/// Service-level client settings. Build with `MeshClientConfig::default()` and the setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MeshClientConfig {
    /// Heartbeat period (default 5 s): of calls, as [`ClientConfig::heartbeat`], and of the
    /// health probes; a peer that stops answering leaves the rotation within two periods.
    pub heartbeat: Duration,
    /// Deadline of a call that sets none (default 30 s); retries happen within it.
    pub default_timeout: Duration,
    /// Most retries of one call (default 3).
    pub max_retries: u32,
    /// Retries earned per call made (default 0.2: retries stay within 20% of calls).
    pub retry_ratio: f64,
    /// Retries earned per second regardless of traffic, and the initial reserve
    /// (default 10).
    pub retries_per_second: f64,
    /// First retry backoff (default 2 ms); doubles per retry, with jitter.
    pub backoff_base: Duration,
    /// Longest retry backoff (default 200 ms).
    pub backoff_max: Duration,
    /// Hedging of idempotent calls (default off).
    pub hedge: Option<HedgeConfig>,
    /// The mesh key calls are sealed with (default: the discovery's key, if it has one).
    pub mesh_key: Option<crate::trust::MeshKey>,
    /// Where the calls to every peer are recorded for Prometheus (default none), as
    /// [`ClientConfig::metrics`]: each attempt is a call of its own.
    pub metrics: Option<crate::client::ClientMetrics>,
}

impl Default for MeshClientConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            default_timeout: Duration::from_secs(30),
            max_retries: 3,
            retry_ratio: 0.2,
            retries_per_second: 10.0,
            backoff_base: Duration::from_millis(2),
            backoff_max: Duration::from_millis(200),
            hedge: None,
            mesh_key: None,
            metrics: None,
        }
    }
}

impl MeshClientConfig {
    /// Records the calls to every peer in `metrics` (see [`MeshClientConfig::metrics`]).
    #[must_use]
    pub fn metrics(mut self, metrics: crate::client::ClientMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Sets the heartbeat period (at least 10 ms).
    #[must_use]
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// Sets the default deadline.
    #[must_use]
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Sets the most retries per call.
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the retry budget: retries per call made, and per second.
    #[must_use]
    pub fn retry_budget(mut self, ratio: f64, per_second: f64) -> Self {
        self.retry_ratio = ratio;
        self.retries_per_second = per_second;
        self
    }

    /// Seals every call with the mesh key.
    #[must_use]
    pub fn mesh_key(mut self, key: crate::trust::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Turns on hedging.
    #[must_use]
    pub fn hedge(mut self, hedge: HedgeConfig) -> Self {
        self.hedge = Some(hedge);
        self
    }

    /// Checks every setting against its range (see [`crate::config`]); a [`MeshClient`]
    /// does when it is made, and fails its calls with [`MeshCallError::Config`] if a
    /// setting is out.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::at_least("heartbeat", self.heartbeat, Duration::from_millis(10))?;
        config::non_negative("retry_ratio", self.retry_ratio)?;
        config::non_negative("retries_per_second", self.retries_per_second)?;
        if let Some(hedge) = &self.hedge {
            config::finite_in("hedge.percentile", hedge.percentile, 0.0, 100.0)?;
        }
        Ok(())
    }
}

/// Per-call options of a service-level call.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MeshCallOptions {
    /// This call's deadline, from now; `None` uses the client's default.
    pub timeout: Option<Duration>,
    /// Overrides whether the call is idempotent; `None` uses what the serving nodes
    /// advertise for the method ([`MethodBuilder::idempotent`](crate::MethodBuilder::idempotent)).
    pub idempotent: Option<bool>,
    /// A W3C `traceparent` to propagate.
    pub traceparent: Option<String>,
    /// A stable id for this logical request, sent on every attempt (see
    /// [`CallOptions::request_id`]); `None` lets the client make one for each
    /// non-idempotent plain call.
    pub request_id: Option<Box<str>>,
    /// The job this call runs (see [`CallOptions::job`]), sent on every attempt.
    pub job: Option<crate::wire::JobTag>,
}

/// A [`Client`]'s options for a call by service name: deadline, `traceparent` and request
/// id carry over; whether the call is idempotent stays what the serving nodes advertise.
/// So `CallOptions`' setters build these options too:
/// `MeshCallOptions::from(CallOptions::timeout(t).traceparent(tp))`.
impl From<CallOptions> for MeshCallOptions {
    fn from(options: CallOptions) -> Self {
        // No `..`: an option added to `CallOptions` fails to compile here until it is
        // mapped, instead of being dropped on the mesh path unnoticed.
        let CallOptions {
            timeout,
            traceparent,
            request_id,
            job,
            // The mesh client makes the client span of a call by name itself.
            spanned: _,
        } = options;
        Self {
            timeout,
            idempotent: None,
            traceparent,
            request_id,
            job,
        }
    }
}

impl MeshCallOptions {
    /// Options with a deadline.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            ..Self::default()
        }
    }

    /// Marks this call idempotent (or not), whatever the nodes advertise.
    #[must_use]
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = Some(idempotent);
        self
    }
}

/// Counters of a [`MeshClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MeshClientStats {
    /// Calls made.
    pub calls: u64,
    /// Retries (on another peer, or on the same peer with the same request id).
    pub retries: u64,
    /// Hedged second attempts started.
    pub hedges: u64,
    /// Times a peer was taken out of rotation.
    pub peers_down: u64,
    /// Times a peer was put back into rotation.
    pub peers_up: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    retries: AtomicU64,
    hedges: AtomicU64,
    peers_down: AtomicU64,
    peers_up: AtomicU64,
}

/// A client of services, not endpoints. Cheap to clone; clones share connections, and the
/// background tasks stop when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct MeshClient {
    inner: Arc<Inner>,
    _tasks: Arc<Tasks>,
}

#[derive(Debug)]
struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

struct Inner {
    discovery: Discovery,
    config: MeshClientConfig,
    client_config: ClientConfig,
    routes: RwLock<Arc<Routes>>,
    /// Bumped whenever the routes or a peer's health change; calls waiting for a peer
    /// wake on it.
    version: watch::Sender<u64>,
    budget: RetryBudget,
    /// Why `config` cannot be used, if it cannot: every call fails with it at once.
    invalid: Option<ConfigError>,
    latency: Mutex<HashMap<String, hdrhistogram::Histogram<u64>>>,
    counters: Counters,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("mesh", &self.discovery.mesh())
            .finish_non_exhaustive()
    }
}

/// Which peers serve what, rebuilt from the directory whenever it changes.
#[derive(Default)]
struct Routes {
    links: HashMap<String, Arc<PeerLink>>,
    by_service: HashMap<String, Vec<Arc<PeerLink>>>,
    /// Full method names (`service.method`) that some serving node marks idempotent.
    idempotent: HashSet<String>,
}

/// One peer: its connection, its load and its health.
struct PeerLink {
    id: String,
    endpoint: String,
    client: Mutex<Client>,
    client_config: ClientConfig,
    outstanding: AtomicUsize,
    up: AtomicBool,
    /// When a call or probe last succeeded, in microseconds since [`epoch`].
    last_ok_us: AtomicU64,
    probing: AtomicBool,
    /// Woken when the peer is taken out of rotation, so idempotent calls waiting on it
    /// fail over at once instead of waiting for their own heartbeats to time out.
    down: Notify,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_micros() as u64
}

impl PeerLink {
    fn new(record: &PeerRecord, endpoint: &str, client_config: &ClientConfig) -> Self {
        Self {
            id: record.id.clone(),
            endpoint: endpoint.to_owned(),
            client: Mutex::new(Client::with_config(endpoint, client_config.clone())),
            client_config: client_config.clone(),
            outstanding: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            last_ok_us: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            down: Notify::new(),
        }
    }

    fn client(&self) -> Client {
        self.client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn heard(&self) {
        self.last_ok_us
            .store(micros_since_epoch(Instant::now()), Ordering::Relaxed);
    }

    fn quiet_for(&self, now: Instant) -> Duration {
        let last = self.last_ok_us.load(Ordering::Relaxed);
        Duration::from_micros(micros_since_epoch(now).saturating_sub(last))
    }

    /// Takes the peer out of rotation; true if it was in. Its connection is replaced, so
    /// the probes that may re-admit it use a fresh one (a cut TCP connection can take
    /// minutes of retransmission backoff to come back by itself).
    fn mark_down(&self, why: &str) -> bool {
        if !self.up.swap(false, Ordering::AcqRel) {
            return false;
        }
        tracing::info!(peer = %self.id, endpoint = %self.endpoint, why, "peer taken out of rotation");
        *self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Client::with_config(self.endpoint.clone(), self.client_config.clone());
        self.down.notify_waiters();
        true
    }

    fn mark_up(&self) -> bool {
        let was_down = !self.up.swap(true, Ordering::AcqRel);
        if was_down {
            tracing::info!(peer = %self.id, endpoint = %self.endpoint, "peer back in rotation");
        }
        was_down
    }
}

/// One of a peer's outstanding calls, counted from the attempt's start until it is dropped:
/// when the attempt ends, or for a stream when the stream ends.
struct Outstanding(Arc<PeerLink>);

impl Outstanding {
    fn new(link: &Arc<PeerLink>) -> Self {
        link.outstanding.fetch_add(1, Ordering::Relaxed);
        Self(link.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What keeps a call open on its peer once its attempt is over (a stream's): the
/// connection, which a `CallStream` does not keep alive by itself and which the link drops
/// when it replaces its client (the peer taken out of rotation) or leaves the directory,
/// so that only the stream's own liveness ends it; and its place in the peer's count.
struct Held {
    _client: Client,
    _outstanding: Outstanding,
}

/// What a call expects its first reply to be, and what that allows the retry loop: the one
/// place plain calls and streams differ. A stream's first reply is its first item (or its
/// end), so everything the loop does, failing over included, happens before the first
/// item; once the caller holds the stream, a lost peer ends it with that error.
trait Shape {
    /// What a successful attempt gives the caller.
    type Out: Send;
    /// Whether an idempotent attempt may be hedged (a second one raced on another peer):
    /// plain calls only, since two streams' items cannot be merged.
    const HEDGED: bool;
    /// Whether a non-idempotent attempt that may have run can be repeated on its peer with
    /// the same request id: only where the node's reply cache answers the repeat, which it
    /// does for single values. A repeated stream would run again.
    const REPEATABLE: bool;
    /// The response as `Out`, keeping `held` for as long as the call stays open.
    fn accept(response: Response, method: &str, held: Held) -> Result<Self::Out, CallError>;
    /// Keeps the call's client span open for as long as `out` keeps the call open.
    fn keep_span(_out: &mut Self::Out, _span: &tracing::Span) {}
}

/// A plain call: one value, still msgpack.
struct Value;

impl Shape for Value {
    type Out = Bytes;
    const HEDGED: bool = true;
    const REPEATABLE: bool = true;

    fn accept(response: Response, method: &str, _: Held) -> Result<Bytes, CallError> {
        response.into_value(method)
    }
}

/// A streaming call: its items, its connection kept and its peer counted until it ends.
struct Streamed;

impl Shape for Streamed {
    type Out = CallStream<rmpv::Value>;
    const HEDGED: bool = false;
    const REPEATABLE: bool = false;

    fn accept(
        response: Response,
        method: &str,
        held: Held,
    ) -> Result<CallStream<rmpv::Value>, CallError> {
        Ok(response.into_stream(method)?.hold(held))
    }

    fn keep_span(out: &mut CallStream<rmpv::Value>, span: &tracing::Span) {
        out.keep_span(span);
    }
}

/// What a failed attempt means for retrying it. A remote error's class is its
/// [`ErrorKind`]'s (see [`ErrorKind::retry`]): a handler's own error name is final.
fn classify(error: &CallError) -> Retry {
    match error {
        CallError::Connect { .. } | CallError::InvalidEndpoint { .. } => Retry::NotRun,
        CallError::PeerLost(_) => Retry::MayHaveRun,
        CallError::Remote(e) => e.kind().map_or(Retry::Final, ErrorKind::retry),
        // The replies were tampered with on the way: the call may have run, and a retry
        // cannot help.
        CallError::Integrity(_) => Retry::Final,
        _ => Retry::Final,
    }
}

impl MeshClient {
    /// A service-level client over `discovery` (a [`MeshNode`](super::MeshNode)'s, or one
    /// started with [`Discovery::start`]). Must be called within a tokio runtime.
    ///
    /// Settings out of range ([`MeshClientConfig::validate`]) fail every call with
    /// [`MeshCallError::Config`], and the client then runs no tasks.
    pub fn new(discovery: Discovery, config: MeshClientConfig) -> Self {
        let invalid = config.validate().err();
        let mut client_config = ClientConfig::default()
            .heartbeat(config.heartbeat)
            .connect_timeout(config.heartbeat);
        client_config.mesh_key = config
            .mesh_key
            .clone()
            .or_else(|| discovery.mesh_key().cloned());
        client_config.metrics = config.metrics.clone();
        let (version, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            budget: RetryBudget::new(
                config.retry_ratio,
                config.retries_per_second,
                (config.retries_per_second * 10.0).max(100.0),
                Instant::now(),
            ),
            discovery,
            client_config,
            config,
            invalid,
            routes: RwLock::new(Arc::new(Routes::default())),
            version,
            latency: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        // An invalid config's heartbeat may be zero, which no probe ticker takes; its
        // calls fail before they need peers.
        let tasks = if inner.invalid.is_none() {
            inner.rebuild_routes();
            vec![
                tokio::spawn(follow_directory(inner.clone())).abort_handle(),
                tokio::spawn(probe_loop(inner.clone())).abort_handle(),
            ]
        } else {
            Vec::new()
        };
        Self {
            inner,
            _tasks: Arc::new(Tasks(tasks)),
        }
    }

    /// The discovery this client resolves services with.
    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// Ids of the peers offering `service` that are in rotation now.
    pub fn live_peers(&self, service: &str) -> Vec<String> {
        self.inner
            .routes()
            .by_service
            .get(service)
            .map(|links| {
                links
                    .iter()
                    .filter(|l| l.is_up())
                    .map(|l| l.id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MeshClientStats {
        let c = &self.inner.counters;
        MeshClientStats {
            calls: c.calls.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            hedges: c.hedges.load(Ordering::Relaxed),
            peers_down: c.peers_down.load(Ordering::Relaxed),
            peers_up: c.peers_up.load(Ordering::Relaxed),
        }
    }

    /// Calls `service.method` on a live peer offering the service, with positional `args`
    /// (a tuple), and decodes the result as `T`.
    ///
    /// # Errors
    /// [`MeshCallError`]: no peer within the deadline, or the call's error after retries.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<T, MeshCallError> {
        self.call_with(method, args, MeshCallOptions::default())
            .await
    }

    /// [`MeshClient::call`] with per-call options.
    ///
    /// # Errors
    /// As [`MeshClient::call`].
    pub async fn call_with<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        options: MeshCallOptions,
    ) -> Result<T, MeshCallError> {
        let args =
            encode_args(&args).map_err(|error| MeshCallError::Call { attempts: 0, error })?;
        let value = self.request(method, args, options).await?;
        decode_result(&value).map_err(|error| MeshCallError::Call { attempts: 1, error })
    }

    /// Calls the streaming `service.method` on a live peer offering the service; its items
    /// decode as `T`.
    ///
    /// The peer is picked as for [`MeshClient::call`], and the call moves to another peer
    /// on the same terms (a refusal that shows it did not run; a lost peer only if the
    /// method is idempotent) until the first item arrives, within the deadline, which
    /// covers that first item. After it, the stream is bound to its peer: losing the peer
    /// ends the stream with that error, never with a silent restart elsewhere, since the
    /// items already consumed may not be produced again.
    ///
    /// # Errors
    /// [`MeshCallError`] for the first item, as [`MeshClient::call`]; later failures arrive
    /// as items.
    pub async fn call_stream<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<CallStream<T>, MeshCallError> {
        self.call_stream_with(method, args, MeshCallOptions::default())
            .await
    }

    /// [`MeshClient::call_stream`] with per-call options.
    ///
    /// # Errors
    /// As [`MeshClient::call_stream`].
    pub async fn call_stream_with<T: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        options: MeshCallOptions,
    ) -> Result<CallStream<T>, MeshCallError> {
        let args =
            encode_args(&args).map_err(|error| MeshCallError::Call { attempts: 0, error })?;
        let stream = self.run::<Streamed>(method, args, options).await?;
        Ok(stream.typed())
    }

    /// Sends a request whose args are already msgpack (an array); returns the result's
    /// msgpack bytes.
    ///
    /// # Errors
    /// As [`MeshClient::call`].
    pub async fn request(
        &self,
        method: &str,
        args: Bytes,
        options: MeshCallOptions,
    ) -> Result<Bytes, MeshCallError> {
        self.run::<Value>(method, args, options).await
    }

    /// A call of either shape under one client span, which covers all its attempts (the
    /// conventions' client span of a call with retries; each attempt's `Client` makes
    /// none, and with the `otel` feature every attempt names this span on the wire).
    async fn run<S: Shape>(
        &self,
        method: &str,
        args: Bytes,
        options: MeshCallOptions,
    ) -> Result<S::Out, MeshCallError> {
        let span = telemetry::client_span(method, None, options.job);
        #[cfg(feature = "otel")]
        let options = {
            let mut options = options;
            telemetry::send_own_context(&span, &mut options.traceparent);
            options
        };
        let mut result = self
            .run_attempts::<S>(method, args, options)
            .instrument(span.clone())
            .await;
        if let Ok(out) = &mut result {
            S::keep_span(out, &span);
        }
        if !span.is_disabled() {
            match &result {
                Ok(_) => span.record("outcome", "ok"),
                Err(error) => {
                    if let MeshCallError::Call { attempts, .. } = error {
                        span.record("zmesh.attempts", i64::from(*attempts));
                    }
                    telemetry::record_error(&span, mesh_error_type(error));
                    span.record("outcome", field::display(error))
                }
            };
        }
        result
    }

    /// A call of either shape: resolves the service, picks peers, retries and fails over
    /// as the error, the method's idempotency and the shape allow.
    async fn run_attempts<S: Shape>(
        &self,
        method: &str,
        args: Bytes,
        options: MeshCallOptions,
    ) -> Result<S::Out, MeshCallError> {
        let inner = &*self.inner;
        if let Some(invalid) = &inner.invalid {
            return Err(MeshCallError::Config(invalid.clone()));
        }
        let timeout = options.timeout.unwrap_or(inner.config.default_timeout);
        let started = Instant::now();
        let deadline = started + timeout;
        let Some((service, _)) = method.split_once('.') else {
            return Err(MeshCallError::BadMethod(method.to_owned()));
        };
        inner.counters.calls.fetch_add(1, Ordering::Relaxed);
        inner.budget.deposit();
        let idempotent = options
            .idempotent
            .unwrap_or_else(|| inner.routes().idempotent.contains(method));
        // Non-idempotent calls carry one stable id across every attempt, so a repeat on
        // the same node is answered from its reply cache instead of running twice. A
        // stream is never repeated, so it needs none of its own.
        let request_id = options.request_id.clone().or_else(|| {
            (!idempotent && S::REPEATABLE).then(|| MessageId::generate().to_string().into())
        });
        let mut tried: Vec<Arc<PeerLink>> = Vec::new();
        let mut pinned: Option<Arc<PeerLink>> = None;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let link = match &pinned {
                Some(link) => link.clone(),
                None => inner.pick(service, &tried, deadline, started).await?,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let call_options = CallOptions {
                timeout: Some(remaining.max(Duration::from_millis(1))),
                traceparent: options.traceparent.clone(),
                request_id: request_id.clone(),
                job: options.job,
                spanned: true,
            };
            let hedge = if S::HEDGED && idempotent {
                inner.hedge_delay(method)
            } else {
                None
            };
            let result = match hedge {
                Some(delay) => {
                    inner
                        .hedged::<S>(&link, service, method, &args, call_options, delay, &tried)
                        .await
                }
                None => {
                    inner
                        .attempt::<S>(&link, method, &args, call_options, idempotent)
                        .await
                }
            };
            let error = match result {
                Ok(value) => {
                    if S::HEDGED && inner.config.hedge.is_some() && idempotent {
                        inner.record_latency(method, started.elapsed());
                    }
                    return Ok(value);
                }
                Err(error) => error,
            };
            let give_up = |error| Err(MeshCallError::Call { attempts, error });
            match (classify(&error), idempotent, pinned.is_some()) {
                (Retry::Final, ..) => return give_up(error),
                // A non-idempotent request that may have run goes to the same peer only,
                // once, with the same request id; a stream, not at all.
                (Retry::MayHaveRun, false, false) if S::REPEATABLE => pinned = Some(link.clone()),
                (Retry::MayHaveRun, false, false) => return give_up(error),
                (_, false, true) => {
                    inner.take_down(&link, "repeat of a request failed");
                    return give_up(error);
                }
                (Retry::NotRun | Retry::MayHaveRun, ..) => tried.push(link.clone()),
            }
            let now = Instant::now();
            if attempts > inner.config.max_retries || now >= deadline {
                return give_up(error);
            }
            if !inner.budget.withdraw(now) {
                tracing::debug!(method, "retry budget exhausted; not retrying");
                return give_up(error);
            }
            inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            let pause = backoff(
                attempts,
                inner.config.backoff_base,
                inner.config.backoff_max,
            );
            let pause = pause.min(deadline.saturating_duration_since(now));
            tracing::debug!(method, attempts, error = %error, ?pause, "retrying call");
            tokio::time::sleep(pause).await;
        }
    }
}

impl Inner {
    fn routes(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Rebuilds the routes from the directory, keeping the links (connections, load,
    /// health) of peers that are still there with the same endpoint.
    fn rebuild_routes(&self) {
        let records = self.discovery.peers();
        let old = self.routes();
        let mut routes = Routes::default();
        for record in &records {
            let Some(endpoint) = record.endpoint() else {
                continue;
            };
            let link = match old.links.get(&record.id) {
                Some(link) if link.endpoint == endpoint => link.clone(),
                _ => Arc::new(PeerLink::new(record, endpoint, &self.client_config)),
            };
            for service in &record.services {
                routes
                    .by_service
                    .entry(service.name.clone())
                    .or_default()
                    .push(link.clone());
                routes.idempotent.extend(
                    service
                        .idempotent
                        .iter()
                        .map(|m| format!("{}.{m}", service.name)),
                );
            }
            routes.links.insert(record.id.clone(), link);
        }
        *self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
        self.version.send_modify(|v| *v += 1);
    }

    fn take_down(&self, link: &PeerLink, why: &str) {
        if link.mark_down(why) {
            self.counters.peers_down.fetch_add(1, Ordering::Relaxed);
            self.version.send_modify(|v| *v += 1);
        }
    }

    fn bring_up(&self, link: &PeerLink) {
        if link.mark_up() {
            self.counters.peers_up.fetch_add(1, Ordering::Relaxed);
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// A peer for the next attempt: power of two choices among the live peers offering the
    /// service that were not tried yet (then among all live ones). Waits for one to appear
    /// (discovery, or a peer coming back) until the deadline.
    async fn pick(
        &self,
        service: &str,
        tried: &[Arc<PeerLink>],
        deadline: Instant,
        started: Instant,
    ) -> Result<Arc<PeerLink>, MeshCallError> {
        if let Some(link) = self.pick_now(service, tried, None) {
            return Ok(link);
        }
        // Slow path: subscribe first, then look again, so no change is missed in between.
        let mut changes = self.version.subscribe();
        loop {
            if let Some(link) = self.pick_now(service, tried, None) {
                return Ok(link);
            }
            let waited = tokio::time::timeout_at(deadline.into(), changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Err(MeshCallError::NoPeer {
                    service: service.to_owned(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    fn pick_now(
        &self,
        service: &str,
        tried: &[Arc<PeerLink>],
        except: Option<&Arc<PeerLink>>,
    ) -> Option<Arc<PeerLink>> {
        let routes = self.routes();
        let links = routes.by_service.get(service)?;
        let untried = |i: usize| {
            let l = &links[i];
            l.is_up()
                && !tried.iter().any(|t| Arc::ptr_eq(t, l))
                && except.is_none_or(|e| !Arc::ptr_eq(e, l))
        };
        let load = |i: usize| links[i].outstanding.load(Ordering::Relaxed);
        let index = pick_two(links.len(), untried, load).or_else(|| {
            if except.is_some() {
                return None;
            }
            pick_two(links.len(), |i| links[i].is_up(), load)
        })?;
        Some(links[index].clone())
    }

    /// One attempt on one peer, until its first reply.
    async fn attempt<S: Shape>(
        &self,
        link: &Arc<PeerLink>,
        method: &str,
        args: &Bytes,
        options: CallOptions,
        idempotent: bool,
    ) -> Result<S::Out, CallError> {
        let client = link.client();
        telemetry::record_server(&tracing::Span::current(), &link.endpoint);
        let outstanding = Outstanding::new(link);
        let call = client.request(method, args.clone(), options);
        let result = if idempotent {
            // Only idempotent calls are abandoned when their peer is taken out of
            // rotation: abandoning cancels the call on the node, which could stop a
            // non-idempotent handler halfway.
            let down = link.down.notified();
            tokio::select! {
                biased;
                r = call => r,
                () = down => Err(CallError::PeerLost(
                    format!("{} was taken out of rotation", link.endpoint).into(),
                )),
            }
        } else {
            call.await
        };
        match result {
            Ok(response) => {
                link.heard();
                let held = Held {
                    _client: client,
                    _outstanding: outstanding,
                };
                S::accept(response, method, held)
            }
            Err(e) => {
                match &e {
                    CallError::PeerLost(why) => self.take_down(link, why),
                    CallError::Connect { reason, .. } => self.take_down(link, reason),
                    // Any answer shows the peer is alive.
                    CallError::Remote(_) => link.heard(),
                    _ => {}
                }
                Err(e)
            }
        }
    }

    /// The hedge delay for an idempotent method, once enough latencies are recorded.
    fn hedge_delay(&self, method: &str) -> Option<Duration> {
        let hedge = self.config.hedge.as_ref()?;
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let histogram = latency.get(method)?;
        if histogram.len() < hedge.min_samples {
            return None;
        }
        let quantile = (hedge.percentile / 100.0).clamp(0.0, 1.0);
        let us = histogram.value_at_quantile(quantile);
        Some(Duration::from_micros(us).max(hedge.min_delay))
    }

    fn record_latency(&self, method: &str, elapsed: Duration) {
        /// Methods tracked at most: latency memory stays bounded whatever callers name.
        const MAX_METHODS: usize = 1024;
        let mut latency = self
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !latency.contains_key(method) {
            if latency.len() >= MAX_METHODS {
                return;
            }
            // 1 us to 1 hour at 2 significant digits: a few KiB per method.
            match hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 2) {
                Ok(h) => latency.insert(method.to_owned(), h),
                Err(_) => return,
            };
        }
        if let Some(h) = latency.get_mut(method) {
            h.saturating_record(elapsed.as_micros() as u64);
        }
    }

    /// An idempotent attempt that starts a second one on another peer if the first has not
    /// answered after `delay`; the first success wins, the loser is cancelled.
    #[allow(clippy::too_many_arguments)]
    async fn hedged<S: Shape>(
        &self,
        link: &Arc<PeerLink>,
        service: &str,
        method: &str,
        args: &Bytes,
        options: CallOptions,
        delay: Duration,
        tried: &[Arc<PeerLink>],
    ) -> Result<S::Out, CallError> {
        let first = self.attempt::<S>(link, method, args, options.clone(), true);
        let mut first = std::pin::pin!(first);
        let timer = tokio::time::sleep(delay);
        tokio::select! {
            biased;
            r = &mut first => return r,
            () = timer => {}
        }
        let Some(other) = self.pick_now(service, tried, Some(link)) else {
            return first.await;
        };
        if !self.budget.withdraw(Instant::now()) {
            return first.await;
        }
        self.counters.hedges.fetch_add(1, Ordering::Relaxed);
        let second = self.attempt::<S>(&other, method, args, options, true);
        let mut second = std::pin::pin!(second);
        tokio::select! {
            r = &mut first => match r {
                Ok(v) => Ok(v),
                Err(_) => second.await,
            },
            r = &mut second => match r {
                Ok(v) => Ok(v),
                Err(_) => first.await,
            },
        }
    }
}

/// Calls by service name through the typed API: options as [`MeshCallOptions`] take them
/// (`From<CallOptions>`), errors as [`CallError`] takes them (`From<MeshCallError>`).
impl Call for MeshClient {
    fn call_with<'a, T>(
        &'a self,
        method: &'a str,
        args: impl Serialize + Send + 'static,
        options: CallOptions,
    ) -> impl Future<Output = Result<T, CallError>> + Send + 'a
    where
        T: DeserializeOwned + Send + 'static,
    {
        MeshClient::call_with(self, method, args, options.into())
            .map(|result| result.map_err(CallError::from))
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
        MeshClient::call_stream_with(self, method, args, options.into())
            .map(|result| result.map_err(CallError::from))
    }
}

/// Rebuilds the routes whenever the directory changes.
async fn follow_directory(inner: Arc<Inner>) {
    let mut changes = inner.discovery.changes();
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        inner.rebuild_routes();
    }
}

/// Probes peers that have been quiet: a peer in rotation is pinged when no call or probe
/// succeeded for a quarter period, a peer out of rotation every quarter period. A probe
/// that fails, or does not answer within one period, takes the peer out; one that answers
/// puts it back. So a peer that stops answering leaves the rotation within
/// 1/4 + 1/4 + 1 = 1.5 periods of its last sign of life.
async fn probe_loop(inner: Arc<Inner>) {
    let period = inner.config.heartbeat;
    let mut ticker = tokio::time::interval(period / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let routes = inner.routes();
        for link in routes.links.values() {
            let due = !link.is_up() || link.quiet_for(now) >= period / 4;
            if !due || link.probing.swap(true, Ordering::AcqRel) {
                continue;
            }
            let inner = inner.clone();
            let link = link.clone();
            tokio::spawn(async move {
                let client = link.client();
                let ping = client.call_with::<rmpv::Value>(
                    crate::reserved::ZERORPC_PING,
                    (),
                    CallOptions::timeout(period),
                );
                match ping.await {
                    Ok(_) => {
                        link.heard();
                        inner.bring_up(&link);
                    }
                    Err(e) => inner.take_down(&link, &format!("health probe failed: {e}")),
                }
                link.probing.store(false, Ordering::Release);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::RemoteError;

    #[test]
    fn every_setting_is_validated_by_name() {
        assert!(MeshClientConfig::default().validate().is_ok());
        let hedged = |p| MeshClientConfig::default().hedge(HedgeConfig::default().percentile(p));
        assert!(hedged(100.0).validate().is_ok());
        for (config, field) in [
            (
                MeshClientConfig::default().heartbeat(Duration::ZERO),
                "heartbeat",
            ),
            (
                MeshClientConfig::default().retry_budget(-0.1, 1.0),
                "retry_ratio",
            ),
            (
                MeshClientConfig::default().retry_budget(0.2, f64::NAN),
                "retries_per_second",
            ),
            (hedged(100.5), "hedge.percentile"),
            (hedged(f64::NAN), "hedge.percentile"),
        ] {
            assert_eq!(config.validate().map_err(|e| e.field), Err(field));
        }
    }

    fn remote(name: &str, message: &str) -> CallError {
        CallError::Remote(RemoteError {
            name: name.into(),
            message: message.into(),
            traceback: None,
        })
    }

    #[test]
    fn every_mesh_failure_maps_to_its_own_call_error() {
        let invalid = MeshClientConfig::default()
            .heartbeat(Duration::ZERO)
            .validate()
            .expect_err("a zero heartbeat is out of range");
        match CallError::from(MeshCallError::Config(invalid)) {
            CallError::Config(e) => assert_eq!(e.field, "heartbeat"),
            other => panic!("expected Config, got {other:?}"),
        }
        match CallError::from(MeshCallError::BadMethod("ping".into())) {
            CallError::BadMethod(method) => assert_eq!(method, "ping"),
            other => panic!("expected BadMethod, got {other:?}"),
        }
        let waited = Duration::from_millis(250);
        let no_peer = MeshCallError::NoPeer {
            service: "billing".into(),
            waited,
        };
        let said = no_peer.to_string();
        let mapped = CallError::from(no_peer);
        // The same words either way, so logs read alike over both APIs.
        assert_eq!(mapped.to_string(), said);
        match mapped {
            CallError::NoPeer { service, waited: w } => {
                assert_eq!((service.as_str(), w), ("billing", waited));
            }
            other => panic!("expected NoPeer, got {other:?}"),
        }
        // A failed call is its last attempt's error itself.
        let mapped = CallError::from(MeshCallError::Call {
            attempts: 3,
            error: remote("Refused", "no"),
        });
        assert_eq!(
            mapped.remote(),
            Some(&RemoteError {
                name: "Refused".into(),
                message: "no".into(),
                traceback: None,
            })
        );
    }

    #[test]
    fn a_mapped_call_error_keeps_its_source_chain() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let error = MeshCallError::Call {
            attempts: 2,
            error: CallError::Connect {
                endpoint: "tcp://127.0.0.1:1".into(),
                reason: crate::client::Cause::of(refused),
            },
        };
        let mapped = CallError::from(error);
        assert!(mapped.is_refused(), "{mapped:?}");
        let cause = std::error::Error::source(&mapped).expect("the connect cause");
        let io = cause
            .source()
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .expect("the socket error behind it");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn call_options_carry_deadline_trace_and_request_id_but_not_idempotency() {
        let options = CallOptions::timeout(Duration::from_millis(700))
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .request_id("order-17");
        let mesh = MeshCallOptions::from(options);
        assert_eq!(mesh.timeout, Some(Duration::from_millis(700)));
        assert_eq!(
            mesh.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(mesh.request_id.as_deref(), Some("order-17"));
        // What the serving nodes advertise decides.
        assert_eq!(mesh.idempotent, None);
        let defaults = MeshCallOptions::from(CallOptions::default());
        assert_eq!(
            (defaults.timeout, defaults.traceparent, defaults.request_id),
            (None, None, None)
        );
    }

    #[test]
    fn only_refusals_a_node_seals_count_as_not_run() {
        assert_eq!(classify(&remote("Overloaded", "full")), Retry::NotRun);
        assert_eq!(
            classify(&remote("Unavailable", "node is shutting down")),
            Retry::NotRun
        );
        // The refusals a keyed client takes unsealed may be forged on the path: final.
        assert_eq!(classify(&remote("Unauthenticated", "x")), Retry::Final);
        assert_eq!(classify(&remote("Replayed", "x")), Retry::Final);
        // Tampered replies: the call may have run, and a retry cannot help.
        assert_eq!(
            classify(&CallError::Integrity("reply 2 lost".into())),
            Retry::Final
        );
        assert_eq!(
            classify(&CallError::PeerLost("x".into())),
            Retry::MayHaveRun
        );
    }
}
