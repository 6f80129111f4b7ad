//! zmesh proxy device: one stable address in front of a changing pool of worker nodes.
//!
//! To a client the device is just another node: its **frontend** ROUTER speaks exactly the
//! node protocol, so zmesh clients and stock zerorpc clients call through it unchanged,
//! streams and heartbeats included. Worker nodes connect out to its **backend** ROUTER
//! ([`NodeBuilder::worker_of`](zmesh_core::NodeBuilder::worker_of)) and announce the
//! services they offer; the device queues each request per service and hands it to the
//! least loaded worker offering it (the Majordomo pattern), heartbeats workers both ways and
//! re-dispatches or fails the calls of a worker it loses (Paranoid Pirate). An optional
//! **event forwarder** (XSUB/XPUB) lets subscribers reach every publisher through the device.
//!
//! - [`Device`] / [`DeviceBuilder`]: bind and run.
//! - [`DeviceConfig`]: heartbeat, queue bound, size limits.
//! - [`DeviceStats`] / [`ServiceStats`]: figures, also answered by the `_zmesh.device_stats`
//!   method on the frontend.
//!
//! The worker protocol is described in `docs/PROTOCOL.md` ("Worker protocol").
//!
//! With a mesh key ([`DeviceBuilder::mesh_key`]) the device refuses anything not sealed
//! with it, from clients and workers alike. It opens each request to route it (so it must
//! hold the key) and forwards the sealed frames unchanged; see the `keyed` module. A
//! backend key ([`DeviceBuilder::backend_key`]) makes workers prove a key while clients call
//! unkeyed. Without either, any process that reaches the backend is trusted as a worker,
//! which the device warns about at start; what a worker may announce is bounded either way
//! (capacity, heartbeat period, table sizes: [`DeviceConfig`]).
//!
//! ```no_run
//! use zmesh_device::Device;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::builder()
//!     .frontend("tcp://127.0.0.1:4242")
//!     .backend("tcp://127.0.0.1:4243")
//!     .start()
//!     .await?;
//! println!("clients call {}, workers connect to {}", device.frontend(), device.backend());
//! # Ok(()) }
//! ```

mod config;
mod forwarder;
mod keyed;
pub mod metrics;
mod router;
mod stats;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeromq::{RouterRecvHalf, RouterSendHalf, RouterSocket, Socket, SocketEvent, TrySendError};
use zmesh_core::Endpoint;
use zmesh_core::read_turns::ReadTurns;
use zmesh_proto::admission::{self, Refusal};

pub use config::DeviceConfig;
pub use router::STATS_METHOD;
pub use stats::{DeviceStats, ServiceStats};

use router::{Drops, Outbox, Outgoing, Router, Sent};

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The frontend or backend endpoint is missing.
    #[error("a device needs a {0} endpoint")]
    MissingEndpoint(&'static str),
    /// Only one of the two event forwarder endpoints was given.
    #[error("the event forwarder needs both events_in and events_out")]
    HalfForwarder,
    /// An endpoint is not a valid `tcp://host:port` or `ipc://path` (`inproc://`, a missing
    /// scheme or port, a wildcard `ipc://` path...).
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        #[source]
        source: zmesh_core::EndpointError,
    },
    /// An endpoint could not be bound.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// The socket error.
        #[source]
        source: zeromq::ZmqError,
    },
    /// A setting is out of range.
    #[error("invalid device configuration: {0}")]
    Config(#[from] zmesh_core::ConfigError),
}

/// Builds and starts a [`Device`].
#[derive(Debug, Default)]
#[must_use]
pub struct DeviceBuilder {
    name: Option<String>,
    frontend: Option<String>,
    backend: Option<String>,
    events_in: Option<String>,
    events_out: Option<String>,
    config: DeviceConfig,
    mesh_key: Option<zmesh_core::MeshKey>,
    backend_key: Option<zmesh_core::MeshKey>,
}

impl DeviceBuilder {
    /// The device's name, answered by `_zerorpc_name` and `_zerorpc_ping` (default
    /// `zmesh-device`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The endpoint clients call (`tcp://127.0.0.1:0` picks a free port).
    pub fn frontend(mut self, endpoint: impl Into<String>) -> Self {
        self.frontend = Some(endpoint.into());
        self
    }

    /// The endpoint worker nodes connect to.
    pub fn backend(mut self, endpoint: impl Into<String>) -> Self {
        self.backend = Some(endpoint.into());
        self
    }

    /// Also runs the event forwarder: publishers connect to `events_in` (XSUB), subscribers
    /// to `events_out` (XPUB).
    pub fn events(mut self, events_in: impl Into<String>, events_out: impl Into<String>) -> Self {
        self.events_in = Some(events_in.into());
        self.events_out = Some(events_out.into());
        self
    }

    /// Requires the mesh key from clients and workers: every request, reply and worker
    /// control event must be sealed with it; anything else is refused (counted in
    /// [`DeviceStats::unauthenticated`] / [`DeviceStats::replay_rejected`], with an
    /// `ERR Unauthenticated` / `ERR Replayed` where a request can be addressed). Give the
    /// same key to the clients and to the worker nodes
    /// ([`NodeBuilder::mesh_key`](zmesh_core::NodeBuilder::mesh_key)). The device opens
    /// requests to read their method, so it sees their content.
    pub fn mesh_key(mut self, key: zmesh_core::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Requires a key from workers only, on the backend: every worker control event and
    /// reply must be sealed with it, and the device seals what it sends them (requests
    /// included, which it seals itself when it dispatches them). The frontend keeps the
    /// [`mesh_key`](Self::mesh_key) if one is given (then requests are opened with it and
    /// sealed again with this one, and replies the other way), else takes unsealed calls
    /// from any client. Give this key to the worker nodes
    /// ([`NodeBuilder::mesh_key`](zmesh_core::NodeBuilder::mesh_key)).
    ///
    /// Without a backend key (this or a mesh key) any process that can connect to the
    /// backend is trusted as a worker: it is sent calls and its answers reach the clients.
    pub fn backend_key(mut self, key: zmesh_core::MeshKey) -> Self {
        self.backend_key = Some(key);
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: DeviceConfig) -> Self {
        self.config = config;
        self
    }

    /// Binds every endpoint and starts routing.
    ///
    /// # Errors
    /// [`DeviceError`] when an endpoint is missing, unsupported or cannot be bound, or the
    /// configuration is out of range.
    pub async fn start(self) -> Result<Device, DeviceError> {
        self.config.validate()?;
        let frontend = self
            .frontend
            .ok_or(DeviceError::MissingEndpoint("frontend"))?;
        let backend = self
            .backend
            .ok_or(DeviceError::MissingEndpoint("backend"))?;
        // Every endpoint is checked before any is bound.
        let frontend = parse_endpoint(&frontend)?;
        let backend = parse_endpoint(&backend)?;
        let events = match (&self.events_in, &self.events_out) {
            (Some(i), Some(o)) => Some((parse_endpoint(i)?, parse_endpoint(o)?)),
            (None, None) => None,
            _ => return Err(DeviceError::HalfForwarder),
        };
        let forwarder = match &events {
            Some((i, o)) => Some(forwarder::Forwarder::bind(i, o).await?),
            None => None,
        };

        let mut front = RouterSocket::new();
        let frontend = bind(&mut front, &frontend).await?;
        let mut back = RouterSocket::new();
        let backend = bind(&mut back, &backend).await?;
        let front_monitor = front.monitor();
        let back_monitor = back.monitor();
        let (front_send, front_recv) = front.split();
        let (back_send, back_recv) = back.split();

        let name = self.name.unwrap_or_else(|| "zmesh-device".to_owned());
        let router = Router::new(name.clone(), self.config.clone());
        let drops = router.drops();
        let front_trust = self
            .mesh_key
            .map(|k| Arc::new(zmesh_core::trust::Trust::new(k)));
        let (back_trust, passthrough) = match self.backend_key {
            Some(key) => (Some(Arc::new(zmesh_core::trust::Trust::new(key))), false),
            None => (front_trust.clone(), true),
        };
        if back_trust.is_none() {
            tracing::warn!(
                %backend,
                "the backend has no key: any process that can connect to it is trusted as a worker (it is sent calls and its answers reach clients); give the device a backend key or a mesh key"
            );
        }
        let shared = Arc::new(Shared {
            router: Mutex::new(router),
            config: self.config,
            front: front_send,
            back: back_send,
            drops,
            front_trust,
            back_trust,
            passthrough,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = vec![
            tokio::spawn(read_frontend(shared.clone(), front_recv, stop_rx.clone())),
            tokio::spawn(read_backend(shared.clone(), back_recv, stop_rx.clone())),
            tokio::spawn(timers(shared.clone(), stop_rx.clone())),
            tokio::spawn(watch_clients(shared.clone(), front_monitor)),
            tokio::spawn(watch_workers(shared.clone(), back_monitor)),
        ];
        let events = forwarder.map(|f| {
            let endpoints = (f.events_in.clone(), f.events_out.clone());
            tasks.push(tokio::spawn(f.run(shared.clone(), stop_rx)));
            endpoints
        });
        tracing::info!(device = %name, %frontend, %backend, events = ?events, "device started");
        Ok(Device {
            shared: Some(shared),
            frontend,
            backend,
            events,
            stop_tx,
            tasks,
        })
    }
}

/// Parses an endpoint the device was given.
fn parse_endpoint(endpoint: &str) -> Result<Endpoint, DeviceError> {
    endpoint
        .parse()
        .map_err(|source| DeviceError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// Binds one socket, after removing a stale ipc socket file.
async fn bind(socket: &mut impl Socket, endpoint: &Endpoint) -> Result<String, DeviceError> {
    zmesh_core::endpoint::remove_stale_ipc_socket(endpoint);
    let endpoint = endpoint.to_string();
    socket
        .bind(&endpoint)
        .await
        .map(|resolved| resolved.to_string())
        .map_err(|source| DeviceError::Bind { endpoint, source })
}

/// A running device. Dropping it stops it at once.
#[derive(Debug)]
pub struct Device {
    /// Some until [`Device::shutdown`] releases the sockets.
    shared: Option<Arc<Shared>>,
    frontend: String,
    backend: String,
    events: Option<(String, String)>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Device {
    /// Starts building a device.
    pub fn builder() -> DeviceBuilder {
        DeviceBuilder::default()
    }

    /// The frontend endpoint clients call, resolved (a `tcp://…:0` shows its real port).
    pub fn frontend(&self) -> &str {
        &self.frontend
    }

    /// The backend endpoint workers connect to, resolved.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The event forwarder's endpoints `(events_in, events_out)`, resolved, when it runs.
    pub fn events(&self) -> Option<(&str, &str)> {
        self.events.as_ref().map(|(i, o)| (i.as_str(), o.as_str()))
    }

    /// A handle on the device's figures for an exporter: Prometheus text at each
    /// [`encode`](metrics::DeviceMetrics::encode), from the same figures as
    /// [`Device::stats`].
    pub fn metrics(&self) -> metrics::DeviceMetrics {
        metrics::DeviceMetrics::new(self.shared.clone())
    }

    /// A snapshot of the device's figures.
    pub fn stats(&self) -> DeviceStats {
        self.shared
            .as_ref()
            .map(|shared| shared.lock().stats())
            .unwrap_or_default()
    }

    /// Waits until at least `count` workers offer `service` (a worker announces itself some
    /// time after it starts, and until one has, the device answers calls of the service
    /// that no worker serves them), for at most `timeout`; returns how many there are.
    ///
    /// # Errors
    /// [`WaitError::TimedOut`](zmesh_core::WaitError::TimedOut) with the number seen.
    pub async fn wait_for_workers(
        &self,
        service: &str,
        count: usize,
        timeout: std::time::Duration,
    ) -> Result<usize, zmesh_core::WaitError> {
        zmesh_core::wait::until_count(count, timeout, || {
            let workers = self
                .stats()
                .services
                .get(service)
                .map_or(0, |stats| stats.workers);
            std::future::ready(Ok(workers))
        })
        .await
        .map_err(|e| e.waiting_for(|| format!("workers for {service:?}")))
    }

    /// Messages dropped because their peer's queue was full (it had stopped reading); by
    /// kind in [`DeviceStats::dropped`].
    pub fn dropped_messages(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |shared| shared.drops.total())
    }

    /// Whether workers must prove a key on the backend (a backend key or a mesh key).
    pub fn backend_keyed(&self) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|shared| shared.back_trust.is_some())
    }

    /// Serves until `signal` completes, then stops.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Stops routing and closes every socket; when it returns the endpoints can be bound
    /// again (a restart on the same address). Open calls are not answered: their clients see
    /// the device disconnect (`PeerLost`), and workers reconnect to the next device.
    pub async fn shutdown(mut self) {
        let _ = self.stop_tx.send(true);
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            // Joining drops the receive halves the tasks own.
            let _ = task.await;
        }
        // The last send halves: dropping them closes the sockets.
        self.shared = None;
        // The `zeromq` crate stops its accept loops asynchronously; wait (bounded) until
        // the listeners are really gone.
        let mut endpoints = vec![self.frontend.clone(), self.backend.clone()];
        if let Some((events_in, events_out)) = &self.events {
            endpoints.extend([events_in.clone(), events_out.clone()]);
        }
        zmesh_core::endpoint::wait_all_released(&endpoints).await;
        tracing::info!(frontend = %self.frontend, "device shut down");
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// State shared by the device's tasks.
struct Shared {
    router: Mutex<Router>,
    config: DeviceConfig,
    front: RouterSendHalf,
    back: RouterSendHalf,
    drops: Arc<Drops>,
    /// The key (with its replay guard) clients must use, when the frontend has one.
    front_trust: Option<Arc<zmesh_core::trust::Trust>>,
    /// The key workers must use, when the backend has one: the mesh key, or a backend key.
    back_trust: Option<Arc<zmesh_core::trust::Trust>>,
    /// One key on both sockets: frames are forwarded as sealed (see `keyed`).
    passthrough: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Router> {
        // A poisoned lock means a panic elsewhere mid-update; the maps are still sound.
        self.router
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn trust(&self, side: Side) -> Option<&zmesh_core::trust::Trust> {
        match side {
            Side::Client => self.front_trust.as_deref(),
            Side::Worker => self.back_trust.as_deref(),
        }
    }

    /// Sends what the router produced, backend first (requests before the replies they
    /// free slots for). Never waits: see [`Shared::send_now`].
    fn flush(&self, out: &mut Outbox) {
        use zmesh_core::trust::Kind;
        // With a key, what goes out is sealed: to workers as a client would, to clients as
        // a node would (frames forwarded unchanged are sealed already).
        let seal = |trust: Option<&zmesh_core::trust::Trust>, kind, message| match trust {
            Some(trust) => keyed::seal_outgoing(trust, kind, self.passthrough, message),
            None => message,
        };
        for Outgoing { what, message } in out.backend.drain(..) {
            let message = seal(self.back_trust.as_deref(), Kind::Request, message);
            self.send_now(&self.back, what, message);
        }
        for Outgoing { what, message } in out.unsealed_backend.drain(..) {
            self.send_now(&self.back, what, message);
        }
        for Outgoing { what, message } in out.frontend.drain(..) {
            let message = seal(self.front_trust.as_deref(), Kind::Reply, message);
            self.send_now(&self.front, what, message);
        }
        for Outgoing { what, message } in out.unsealed_frontend.drain(..) {
            self.send_now(&self.front, what, message);
        }
    }

    /// Hands the message to its peer's queue without waiting. A full queue (the peer has
    /// stopped reading: 100,000 messages wait for it) drops the message for that peer
    /// only, counted by kind; nothing the device sends ever waits on one peer, so one that
    /// does not read cannot hold up what goes to the others, nor grow without bound.
    fn send_now(&self, socket: &RouterSendHalf, what: Sent, message: zeromq::ZmqMessage) {
        match socket.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::WouldBlock(_)) => {
                let dropped = self.drops.count(what);
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        dropped,
                        kind = what.name(),
                        "a peer is not reading; dropping messages for it"
                    );
                }
            }
            Err(TrySendError::Failed(e)) => {
                // The peer went away; its loss is handled through the monitor.
                tracing::debug!(error = %e, "message not delivered");
            }
        }
    }
}

/// Which side a message came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Worker,
}

/// Decodes one message and hands it to the router; bad input gets the answer a node would
/// give (`ERR MessageTooLarge` / `ERR ProtocolError` for a request) and is counted.
fn handle(shared: &Arc<Shared>, side: Side, frames: Vec<Bytes>, out: &mut Outbox) {
    let now = Instant::now();
    let envelope = match admission::envelope(frames, shared.config.max_message_size) {
        Ok(envelope) => envelope,
        Err((refusal, route)) => {
            refuse(shared, side, &route, &refusal, now, out);
            return;
        }
    };
    let (opened, seq) = match keyed::open_event(shared.trust(side), side, &envelope.event) {
        Ok(opened) => opened,
        Err(rejection) => {
            keyed::refuse(&mut shared.lock(), side, &envelope, &rejection, now, out);
            return;
        }
    };
    // The router gets the frame to forward and its decoding: with one key on both sockets
    // the frame as received (forwarded unchanged, still sealed), else the opened one (the
    // other side has no key or another one; `flush` seals it for that side, but a worker's
    // reply is sealed for a keyed frontend here, while its number within the call is known).
    let forwarded = match (shared.passthrough, side, shared.front_trust.as_deref()) {
        (true, _, _) => envelope.event,
        (false, Side::Worker, Some(front)) => keyed::reseal_reply(front, &opened, seq),
        (false, _, _) => opened.clone(),
    };
    match admission::decode(&opened) {
        Ok(event) => {
            let mut router = shared.lock();
            match side {
                Side::Client => router.handle_client(envelope.route, forwarded, event, now, out),
                Side::Worker => router.handle_worker(envelope.route, forwarded, event, now, out),
            }
        }
        Err(refusal) => refuse(shared, side, &envelope.route, &refusal, now, out),
    }
}

/// Counts a message admission refused and, for a client's addressable request, answers it
/// as a node would.
#[cold]
fn refuse(
    shared: &Shared,
    side: Side,
    route: &[Bytes],
    refusal: &Refusal,
    now: Instant,
    out: &mut Outbox,
) {
    let mut router = shared.lock();
    router.count_inadmissible(refusal);
    tracing::debug!(problem = %refusal, "inadmissible message");
    if side == Side::Client
        && let Some(answer) = refusal.answer()
    {
        router.refuse_request(
            route,
            answer.request,
            answer.kind,
            &answer.message,
            true,
            now,
            out,
        );
    }
}

async fn read_frontend(shared: Arc<Shared>, recv: RouterRecvHalf, stop: watch::Receiver<bool>) {
    read_loop(shared, recv, stop, Side::Client).await;
}

async fn read_backend(shared: Arc<Shared>, recv: RouterRecvHalf, stop: watch::Receiver<bool>) {
    read_loop(shared, recv, stop, Side::Worker).await;
}

async fn read_loop(
    shared: Arc<Shared>,
    mut recv: RouterRecvHalf,
    mut stop: watch::Receiver<bool>,
    side: Side,
) {
    let mut out = Outbox::default();
    let mut stopped = std::pin::pin!(stop.changed());
    // Lets the other side's writers forward what this loop has routed while it reads on.
    let mut turns = ReadTurns::default();
    loop {
        turns.handled_one().await;
        let message = tokio::select! {
            biased;
            m = std::future::poll_fn(|cx| recv.poll_recv(cx)) => m,
            _ = &mut stopped => break,
        };
        match message {
            Ok(message) => {
                handle(&shared, side, message.into_vec(), &mut out);
                shared.flush(&mut out);
            }
            Err(e) => {
                tracing::debug!(error = %e, "device recv failed");
                // Not expected in steady state; avoid a hot loop if it repeats.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Heartbeats, liveness and queued deadlines, at a quarter of the shortest period in play.
async fn timers(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut out = Outbox::default();
    loop {
        let tick = shared.lock().tick();
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        shared.lock().poll_timers(Instant::now(), &mut out);
        shared.flush(&mut out);
    }
}

/// Cancels the calls of a client connection as soon as the socket reports it gone.
async fn watch_clients(
    shared: Arc<Shared>,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
) {
    let mut out = Outbox::default();
    while let Some(event) = monitor.next().await {
        if let SocketEvent::Disconnected(peer) = event {
            let peer: Bytes = peer.into();
            shared
                .lock()
                .handle_client_gone(&peer, Instant::now(), &mut out);
            shared.flush(&mut out);
        }
    }
}

/// Declares a worker lost as soon as its connection drops (no need to wait for three
/// silent heartbeat periods).
async fn watch_workers(
    shared: Arc<Shared>,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
) {
    let mut out = Outbox::default();
    while let Some(event) = monitor.next().await {
        if let SocketEvent::Disconnected(peer) = event {
            let peer: Bytes = peer.into();
            shared
                .lock()
                .handle_worker_gone(&peer, "disconnected", Instant::now(), &mut out);
            shared.flush(&mut out);
        }
    }
}
