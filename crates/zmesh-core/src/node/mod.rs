//! Provides the node: a ROUTER socket bound to one or more endpoints, serving the methods
//! of its services to zmesh and stock zerorpc clients, with limits, heartbeats and graceful
//! shutdown.
//!
//! Layout: `config` holds the knobs, `registry` the open channels, `session` the pure
//! protocol decisions (message in, actions out), `dispatch` the tokio driver that reads the
//! sockets, executes the session's actions and runs the call tasks, `builtins` the `_zerorpc_*`
//! methods, `sender` the send side over either socket, `worker` the link of a node that
//! serves behind a proxy device ([`NodeBuilder::worker_of`]), `extension` the hook other
//! components (events) plug into a node through.

mod builtins;
mod config;
mod dispatch;
mod extension;
#[doc(hidden)]
pub mod harness;
mod refusals;
mod registry;
mod reply_cache;
mod sender;
mod session;
mod worker;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use zeromq::{RouterSocket, Socket};

pub use config::NodeConfig;
pub use extension::{Attached, Attachment, Extension, ExtensionError, NodeContext};

use crate::service::{Method, Service};
use crate::wire::worker::{AnnouncedMethod, Ready};
use registry::Registry;
use sender::{Sender, WorkerOutlet};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The node was given no endpoint to bind.
    #[error("a node needs at least one endpoint to bind, or a device to work for")]
    NoEndpoint,
    /// An endpoint could not be bound.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint as given.
        endpoint: String,
        /// The socket error.
        #[source]
        source: zeromq::ZmqError,
    },
    /// An endpoint (to bind, or the device's backend) is not a valid `tcp://host:port` or
    /// `ipc://path` (`inproc://`, a missing scheme or port, a wildcard `ipc://` path...).
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        #[source]
        source: crate::EndpointError,
    },
    /// A service has a method under a name zmesh reserves (`_zerorpc_*`, `_zmesh.*`,
    /// `_zmesh_*`: see [`reserved`](crate::reserved)).
    #[error("method {0} has a reserved name (_zerorpc_*, _zmesh.* and _zmesh_* are zmesh's)")]
    ReservedMethod(String),
    /// Two services expose the same method name.
    #[error("method {0} is registered twice")]
    DuplicateMethod(String),
    /// `export_unprefixed` names a service the node does not host.
    #[error("export_unprefixed names unknown service {0}")]
    UnknownService(String),
    /// A setting is out of range.
    #[error("invalid node configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The socket-free harness could not build its runtime.
    #[error("cannot build a runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// A component plugged into the node (an [`Extension`], such as its events) could not
    /// start.
    #[error("{name}: {source}")]
    Extension {
        /// The extension's [`Extension::name`].
        name: &'static str,
        /// Why.
        #[source]
        source: ExtensionError,
    },
}

/// Counters a node keeps about what it refused or lost; read with [`Node::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) malformed: AtomicU64,
    pub(crate) oversized: AtomicU64,
    pub(crate) overloaded: AtomicU64,
    pub(crate) peer_overloaded: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) unknown_channel: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) peers_lost: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) replies_dropped: AtomicU64,
    pub(crate) unauthenticated: AtomicU64,
    pub(crate) replayed_messages: AtomicU64,
    pub(crate) stalled_sends: std::sync::atomic::AtomicUsize,
    /// Bytes held by the stalled sends.
    pub(crate) stalled_bytes: std::sync::atomic::AtomicUsize,
    /// Node-originated messages (refusals, heartbeats) dropped: their peer's queue was full.
    pub(crate) control_dropped_full: AtomicU64,
    /// Node-originated messages dropped: their peer had gone.
    pub(crate) control_dropped_gone: AtomicU64,
    /// Refusals not sent: their connection was over its refusal rate.
    pub(crate) refusals_suppressed: AtomicU64,
    /// Connections closed for sending bad requests without pause.
    pub(crate) garbage_disconnects: AtomicU64,
    /// Requests refused because the node was near its limit and their connection held its
    /// fair share (also counted in `overloaded`).
    pub(crate) fair_share_refused: AtomicU64,
    /// Results and stream items over the message size limit, answered `MessageTooLarge`.
    pub(crate) oversized_replies: AtomicU64,
    /// The limit counters of the node's sockets (see [`crate::zmtp`]).
    pub(crate) zmtp: std::sync::Mutex<Vec<Arc<zeromq::SocketStats>>>,
}

impl Counters {
    /// The node's sockets' limit counters, summed.
    pub(crate) fn zmtp(&self) -> zeromq::SocketStatsSnapshot {
        let sockets = self
            .zmtp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::zmtp::sum(&sockets)
    }

    fn watch_socket(&self, stats: Arc<zeromq::SocketStats>) {
        self.zmtp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(stats);
    }
}

/// A snapshot of a node's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStats {
    /// Requests accepted and dispatched to a handler.
    pub calls: u64,
    /// Messages that were not valid zerorpc events.
    pub malformed: u64,
    /// Messages over the size limit.
    pub oversized: u64,
    /// Results and stream items over the size limit, answered with
    /// `ERR MessageTooLarge` instead.
    pub oversized_replies: u64,
    /// Requests refused with `ERR Overloaded` (the node-wide bound on calls, including
    /// `fair_share_refused`).
    pub overloaded: u64,
    /// Requests refused with `ERR Overloaded` because the node was near its bound on calls
    /// and their connection held at least its fair share of them.
    pub fair_share_refused: u64,
    /// Requests refused with `ERR PeerOverloaded` (their connection's bound on in-flight
    /// calls or bytes).
    pub peer_overloaded: u64,
    /// Client connections with calls in flight now (the size of the per-peer table).
    pub peers_in_flight: usize,
    /// Requests dropped because their deadline had passed on arrival, or aborted at it.
    pub expired: u64,
    /// Control events for channels that are not open.
    pub unknown_channel: u64,
    /// Calls aborted by a zmesh cancel.
    pub cancelled: u64,
    /// Channels closed because the client stopped heartbeating or disconnected.
    pub peers_lost: u64,
    /// Replies dropped because their clients had stopped reading (see `send_now`).
    pub replies_dropped: u64,
    /// Calls running now.
    pub in_flight: usize,
    /// Repeats of a request (same `zmesh_request_id`) answered from the reply cache or by
    /// waiting for the first run, instead of running the handler again.
    pub replayed: u64,
    /// Messages refused on a keyed endpoint: not sealed, wrong or retired key, or tampered;
    /// and sealed messages received by a node without a key. None of them reached a
    /// handler.
    pub unauthenticated: u64,
    /// Sealed messages refused as replays: seen before, or outside the time window.
    pub replay_rejected: u64,
    /// Messages the node originated (refusals, heartbeats) and dropped because their
    /// peer's send queue was full: never waited for.
    pub control_dropped_full: u64,
    /// Messages the node originated and dropped because their peer had gone.
    pub control_dropped_gone: u64,
    /// Refusals (`ERR`s for bad or unservable requests) not sent because their connection
    /// was over its refusal rate.
    pub refusals_suppressed: u64,
    /// Connections the node closed for sending bad requests without pause.
    pub garbage_disconnects: u64,
    /// Connections closed while a message was being read because it would have exceeded
    /// the wire limit (twice `max_message_size` plus 1 MiB): cut before it was buffered.
    pub conn_oversized: u64,
    /// Connections closed because a message had more than `max_frames` frames.
    pub conn_too_many_frames: u64,
    /// Connections dropped because their ZMTP handshake did not finish within
    /// `handshake_timeout`.
    pub handshake_timeouts: u64,
    /// Connections closed at once because their endpoint was at
    /// `max_connections_per_endpoint`.
    pub connections_refused: u64,
    /// Failed `accept` calls (out of descriptors, among others), each followed by a pause.
    pub accept_errors: u64,
    /// Replies that found their client's queue at `send_queue_bytes_per_peer` (they waited,
    /// and were dropped past `max_stalled_bytes`; see `replies_dropped`).
    pub send_queue_full: u64,
    /// Connections the node closed itself (`disconnect_peer`).
    pub peers_disconnected: u64,
}

/// State shared by the node's tasks.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) methods: HashMap<String, Arc<Method>>,
    pub(crate) config: NodeConfig,
    pub(crate) registry: Registry,
    pub(crate) concurrency: Arc<Semaphore>,
    pub(crate) accepting: AtomicBool,
    pub(crate) counters: Arc<Counters>,
    pub(crate) sender: Sender,
    pub(crate) replies: reply_cache::ReplyCache,
    /// The per-connection refusal gate the session decides with.
    pub(crate) refusals: session::Refusals,
}

impl Shared {
    fn new(
        name: String,
        methods: HashMap<String, Arc<Method>>,
        config: NodeConfig,
        counters: Arc<Counters>,
        sender: Sender,
    ) -> Arc<Self> {
        Arc::new(Self {
            replies: reply_cache::ReplyCache::new(config.reply_cache_size, config.reply_cache_ttl),
            refusals: session::Refusals::new(config.refusal_policy()),
            name,
            methods,
            concurrency: Arc::new(Semaphore::new(config.max_concurrent_calls)),
            config,
            registry: Registry::default(),
            accepting: AtomicBool::new(true),
            counters,
            sender,
        })
    }
}

/// Builds and starts a [`Node`].
#[derive(Debug, Default)]
#[must_use]
pub struct NodeBuilder {
    name: Option<String>,
    endpoints: Vec<String>,
    services: Vec<Service>,
    unprefixed: Option<String>,
    config: NodeConfig,
    /// At most one of each type, in the order first asked for.
    extensions: Vec<Box<dyn Extension>>,
    device: Option<String>,
    worker_capacity: Option<u32>,
    mesh_key: Option<crate::trust::MeshKey>,
    plain_endpoints: Vec<String>,
    /// zmesh's own services (the mesh's gossip), exempt from the reserved-name check.
    zmesh_services: Vec<Service>,
}

impl NodeBuilder {
    /// The node's name, answered by `_zerorpc_name` (default: the first service's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds an endpoint to bind: `tcp://127.0.0.1:0` (port 0 picks a free port) or
    /// `ipc:///path/to/socket`.
    pub fn bind(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Hosts a service (a [`Service`], or the `{Trait}Server` of a `#[zmesh::service]`
    /// trait); its methods are called as `service.method`, or unprefixed when its name is
    /// empty.
    pub fn service(mut self, service: impl Into<Service>) -> Self {
        self.services.push(service.into());
        self
    }

    /// Hosts one of zmesh's own services, whose methods have reserved names (`_zmesh.*`).
    pub(crate) fn zmesh_service(mut self, service: Service) -> Self {
        self.zmesh_services.push(service);
        self
    }

    /// Also exports one hosted service's methods without the prefix, so a stock zerorpc
    /// client can call `client.upper("hi")`.
    pub fn export_unprefixed(mut self, service: impl Into<String>) -> Self {
        self.unprefixed = Some(service.into());
        self
    }

    /// Serves behind a proxy device instead of binding: connects to the device's backend
    /// endpoint, announces the hosted methods, and keeps the link alive (heartbeats both
    /// ways, reconnect and re-announce after the device is lost). Clients call the device's
    /// frontend. A worker node binds nothing, so it cannot be combined with [`bind`](Self::bind).
    pub fn worker_of(mut self, device_backend: impl Into<String>) -> Self {
        self.device = Some(device_backend.into());
        self
    }

    /// Calls a device may have open on this worker at once (default 128, at most
    /// `max_concurrent_calls`); the device queues the rest.
    pub fn worker_capacity(mut self, capacity: u32) -> Self {
        self.worker_capacity = Some(capacity);
        self
    }

    /// Requires the mesh key on every endpoint bound with [`bind`](Self::bind) (or, for a
    /// [`worker_of`](Self::worker_of) node, on the link to the device, which must hold the
    /// same key): messages must be sealed with it, replies are sealed with it, and anything
    /// else is refused
    /// (counted in [`NodeStats::unauthenticated`] and [`NodeStats::replay_rejected`], with an
    /// `ERR Unauthenticated` or `ERR Replayed` where the request can be addressed).
    pub fn mesh_key(mut self, key: crate::trust::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Adds an endpoint that allows plain zerorpc even when the node has a mesh key, so stock
    /// zerorpc clients (and unkeyed zmesh clients) can call it there. On a node without a key
    /// this is the same as [`bind`](Self::bind).
    pub fn bind_plain(mut self, endpoint: impl Into<String>) -> Self {
        self.plain_endpoints.push(endpoint.into());
        self
    }

    /// Replaces the configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds `extension`, replacing one of the same type set before; the node starts it with
    /// itself (see [`Extension`]). For extensions made with their settings, such as a job
    /// queue on its directory.
    pub fn extension<E: Extension>(self, extension: E) -> Self {
        self.extension_boxed(Box::new(extension))
    }

    /// [`NodeBuilder::extension`] of one already boxed (the mesh builder keeps its own).
    pub(crate) fn extension_boxed(mut self, extension: Box<dyn Extension>) -> Self {
        // The type of the extension inside the box, not of the box.
        let kind = (&*extension as &dyn Any).type_id();
        self.extensions
            .retain(|e| (&**e as &dyn Any).type_id() != kind);
        self.extensions.push(extension);
        self
    }

    /// The builder's extension of type `E`, made with its default the first time it is
    /// asked for; the node starts it with itself (see [`Extension`]).
    pub fn extension_mut<E: Extension + Default>(&mut self) -> &mut E {
        let is_e = |e: &dyn Extension| (e as &dyn Any).is::<E>();
        if !self.extensions.iter().any(|e| is_e(&**e)) {
            self.extensions.push(Box::new(E::default()));
        }
        self.extensions
            .iter_mut()
            .find_map(|e| {
                let e: &mut dyn Extension = &mut **e;
                (e as &mut dyn Any).downcast_mut()
            })
            .expect("an extension of this type was just ensured")
    }

    /// Binds every endpoint and starts serving.
    ///
    /// # Errors
    /// [`NodeError`] when an endpoint cannot be bound or the method table is inconsistent.
    pub async fn start(mut self) -> Result<Node, NodeError> {
        self.config.validate()?;
        if self.mesh_key.is_none() {
            // Without a key every endpoint is plain.
            let plain = std::mem::take(&mut self.plain_endpoints);
            self.endpoints.extend(plain);
        }
        if self.endpoints.is_empty() && self.plain_endpoints.is_empty() && self.device.is_none() {
            return Err(NodeError::NoEndpoint);
        }
        if !self.endpoints.is_empty() && self.device.is_some() {
            return Err(NodeError::Config(crate::config::ConfigError::new(
                "worker_of",
                "cannot be combined with endpoints to bind: a node either binds endpoints or \
                 works for a device, not both",
            )));
        }
        if let Some(capacity) = self.worker_capacity {
            crate::config::at_least("worker_capacity", capacity, 1)?;
        }
        // Every endpoint is checked before anything is bound or started, and the user's
        // services before zmesh's own (which use reserved names) join them.
        let endpoints = parse_endpoints(&self.endpoints)?;
        let plain_endpoints = parse_endpoints(&self.plain_endpoints)?;
        if let Some(device) = &self.device {
            parse_endpoint(device)?;
        }
        check_reserved(&self.services, self.unprefixed.as_deref())?;
        let mut attachments = Vec::with_capacity(self.extensions.len());
        for extension in std::mem::take(&mut self.extensions) {
            let name = extension.name();
            let context = NodeContext {
                max_concurrent_calls: self.config.max_concurrent_calls,
                mesh_key: self.mesh_key.as_ref(),
            };
            let attached = extension
                .start(context)
                .await
                .map_err(|source| NodeError::Extension { name, source })?;
            self.services.extend(attached.services);
            attachments.push(attached.running);
        }
        // The user's and the extensions' services, before zmesh's own join them.
        let hosted: Vec<HostedService> = self
            .services
            .iter()
            .filter(|s| s.name() != crate::reserved::ZMESH_SERVICE)
            .map(|s| HostedService {
                name: s.name().to_owned(),
                idempotent: s.idempotent_methods().map(str::to_owned).collect(),
            })
            .collect();
        self.services
            .extend(std::mem::take(&mut self.zmesh_services));
        let name = self
            .name
            .or_else(|| self.services.first().map(|s| s.name().to_owned()))
            .unwrap_or_else(|| "zmesh".to_owned());

        let mut methods = prefixed_methods(&self.services)?;
        if let Some(exported) = &self.unprefixed {
            let service = self
                .services
                .iter()
                .find(|s| s.name() == exported)
                .ok_or_else(|| NodeError::UnknownService(exported.clone()))?;
            for method in service.methods.keys() {
                let entry = methods[&format!("{exported}.{method}")].clone();
                if methods.insert(method.clone(), entry).is_some() {
                    return Err(NodeError::DuplicateMethod(method.clone()));
                }
            }
        }
        let announced = announced_methods(&self.services, self.unprefixed.as_deref());
        builtins::register(&name, &mut methods);
        let counters = Arc::new(Counters::default());
        builtins::register_stats(&name, &mut methods, counters.clone());

        if let Some(device) = self.device {
            let capacity = self
                .worker_capacity
                .unwrap_or(DEFAULT_WORKER_CAPACITY)
                .min(u32::try_from(self.config.max_concurrent_calls).unwrap_or(u32::MAX));
            let ready = Ready::new(
                name.clone(),
                capacity,
                u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(u64::MAX),
                announced,
            );
            return Ok(Self::start_worker(
                WorkerParts {
                    name,
                    methods,
                    config: self.config,
                    counters,
                    attachments,
                    hosted,
                    mesh_key: self.mesh_key,
                },
                device,
                ready,
            ));
        }

        let mut bound = Vec::with_capacity(self.endpoints.len() + self.plain_endpoints.len());
        // Every bound endpoint may fill its cap: together they must fit the descriptors.
        let cap = crate::zmtp::connection_cap(
            self.config.max_connections_per_endpoint,
            self.endpoints.len() + self.plain_endpoints.len(),
        );
        let main = bind_router(&endpoints, &mut bound, &self.config, cap, &counters).await?;
        let plain = if plain_endpoints.is_empty() {
            None
        } else {
            Some(bind_router(&plain_endpoints, &mut bound, &self.config, cap, &counters).await?)
        };
        let (sender, inlets) = match (main, self.mesh_key) {
            (Some((send, recv, monitor, endpoint)), None) => {
                let inlet = dispatch::Inlet {
                    peers: dispatch::PeerAddresses::Router(send.clone()),
                    recv,
                    monitor,
                    inbound: dispatch::Inbound::Plain,
                    endpoint,
                };
                (Sender::Router(send), vec![inlet])
            }
            (main, Some(key)) => {
                let keyed = Arc::new(sender::Keyed::new(crate::trust::Trust::new(key)));
                let mut inlets = Vec::with_capacity(2);
                let sealed = main.map(|(send, recv, monitor, endpoint)| {
                    inlets.push(dispatch::Inlet {
                        peers: dispatch::PeerAddresses::Router(send.clone()),
                        recv,
                        monitor,
                        inbound: dispatch::Inbound::Sealed(keyed.clone()),
                        endpoint,
                    });
                    send
                });
                let plain = plain.flatten().map(|(send, recv, monitor, endpoint)| {
                    inlets.push(dispatch::Inlet {
                        peers: dispatch::PeerAddresses::Router(send.clone()),
                        recv,
                        monitor,
                        inbound: dispatch::Inbound::PlainOfKeyed,
                        endpoint,
                    });
                    send
                });
                let sender = match (sealed, plain) {
                    (Some(sealed), plain) => Sender::Keyed {
                        sealed,
                        plain,
                        keyed,
                    },
                    // Only plain endpoints: nothing to seal, and one identity namespace.
                    (None, Some(plain)) => {
                        for inlet in &mut inlets {
                            inlet.inbound = dispatch::Inbound::Plain;
                        }
                        Sender::Router(plain)
                    }
                    (None, None) => return Err(NodeError::NoEndpoint),
                };
                (sender, inlets)
            }
            (None, None) => return Err(NodeError::NoEndpoint),
        };

        let shared = Shared::new(name, methods, self.config, counters, sender);
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = dispatch::spawn_tasks(shared.clone(), inlets, stop_rx);
        tracing::info!(node = %shared.name, endpoints = ?bound, "node started");
        Ok(Node {
            shared,
            endpoints: bound,
            stop_tx,
            tasks,
            attachments,
            hosted,
        })
    }
}

impl NodeBuilder {
    fn start_worker(parts: WorkerParts, device: String, ready: Ready) -> Node {
        let WorkerParts {
            name,
            methods,
            config,
            counters,
            attachments,
            hosted,
            mesh_key,
        } = parts;
        // With a key, everything to the device is sealed and everything from it opened
        // (see `worker`): the device holds the key too, since it reads requests to route them.
        let keyed = mesh_key.map(|key| Arc::new(sender::Keyed::new(crate::trust::Trust::new(key))));
        let outlet = Arc::new(WorkerOutlet::new(keyed.clone()));
        // Workers keep a reply cache too (`Shared::new`): a request id retried through the
        // device must not run twice on the same worker.
        let shared = Shared::new(
            name,
            methods,
            config,
            counters,
            Sender::Worker(outlet.clone()),
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let (control, mut tasks) = dispatch::spawn_support(&shared, stop_rx.clone());
        let link = worker::WorkerLink {
            endpoint: device.clone(),
            ready,
            outlet,
            keyed,
        };
        tasks.push(worker::spawn(shared.clone(), link, control, stop_rx));
        tracing::info!(node = %shared.name, device = %device, "worker node started");
        Node {
            shared,
            endpoints: Vec::new(),
            stop_tx,
            tasks,
            attachments,
            hosted,
        }
    }
}

/// What a worker node is started with, besides its device link.
struct WorkerParts {
    name: String,
    methods: HashMap<String, Arc<Method>>,
    config: NodeConfig,
    counters: Arc<Counters>,
    attachments: Vec<Box<dyn Attachment>>,
    hosted: Vec<HostedService>,
    mesh_key: Option<crate::trust::MeshKey>,
}

/// A service a node hosts, as a mesh announces it.
#[derive(Debug, Clone)]
pub(crate) struct HostedService {
    pub(crate) name: String,
    /// Its methods marked idempotent (short names).
    pub(crate) idempotent: Vec<String>,
}

/// The method table of `services`, every method under `service.method`.
fn prefixed_methods(services: &[Service]) -> Result<HashMap<String, Arc<Method>>, NodeError> {
    let mut methods = HashMap::new();
    for service in services {
        for (method, entry) in &service.methods {
            let full = service.full_name(method);
            if methods
                .insert(full.clone(), Arc::new(entry.for_node()))
                .is_some()
            {
                return Err(NodeError::DuplicateMethod(full));
            }
        }
    }
    Ok(methods)
}

/// A snapshot of a node's counters (a running node's or the harness's).
pub(crate) fn stats_of(shared: &Shared) -> NodeStats {
    let c = &shared.counters;
    let zmtp = c.zmtp();
    NodeStats {
        calls: c.calls.load(Ordering::Relaxed),
        malformed: c.malformed.load(Ordering::Relaxed),
        oversized: c.oversized.load(Ordering::Relaxed),
        oversized_replies: c.oversized_replies.load(Ordering::Relaxed),
        overloaded: c.overloaded.load(Ordering::Relaxed),
        fair_share_refused: c.fair_share_refused.load(Ordering::Relaxed),
        peer_overloaded: c.peer_overloaded.load(Ordering::Relaxed),
        peers_in_flight: shared.registry.peers(),
        expired: c.expired.load(Ordering::Relaxed),
        unknown_channel: c.unknown_channel.load(Ordering::Relaxed),
        cancelled: c.cancelled.load(Ordering::Relaxed),
        peers_lost: c.peers_lost.load(Ordering::Relaxed),
        replies_dropped: c.replies_dropped.load(Ordering::Relaxed),
        in_flight: shared.registry.open_channels(),
        replayed: shared.replies.replayed(),
        unauthenticated: c.unauthenticated.load(Ordering::Relaxed),
        replay_rejected: c.replayed_messages.load(Ordering::Relaxed),
        control_dropped_full: c.control_dropped_full.load(Ordering::Relaxed),
        control_dropped_gone: c.control_dropped_gone.load(Ordering::Relaxed),
        refusals_suppressed: c.refusals_suppressed.load(Ordering::Relaxed),
        garbage_disconnects: c.garbage_disconnects.load(Ordering::Relaxed),
        conn_oversized: zmtp.oversized,
        conn_too_many_frames: zmtp.too_many_frames,
        handshake_timeouts: zmtp.handshake_timeouts,
        connections_refused: zmtp.connections_refused,
        accept_errors: zmtp.accept_errors,
        send_queue_full: zmtp.send_queue_full,
        peers_disconnected: zmtp.disconnected,
    }
}

/// Default of [`NodeBuilder::worker_capacity`].
const DEFAULT_WORKER_CAPACITY: u32 = 128;

/// The methods a worker announces to its device: every hosted method under its full name,
/// and the unprefixed exports. Not zmesh's own (built-ins, and `_zmesh.snapshot` of a
/// worker with events): the device refuses a worker announcing a reserved name, and
/// answers or forwards those itself.
fn announced_methods(services: &[Service], unprefixed: Option<&str>) -> Vec<AnnouncedMethod> {
    let mut announced = Vec::new();
    for service in services {
        for (method, entry) in &service.methods {
            let full = service.full_name(method);
            if crate::reserved::is_reserved_method(&full) {
                continue;
            }
            announced.push(AnnouncedMethod::new(full, service.name(), entry.idempotent));
            if unprefixed == Some(service.name()) && !service.name().is_empty() {
                announced.push(AnnouncedMethod::new(
                    method.clone(),
                    service.name(),
                    entry.idempotent,
                ));
            }
        }
    }
    announced
}

/// The halves of a bound ROUTER, and its endpoint when it listens on one.
type BoundRouter = (
    zeromq::RouterSendHalf,
    zeromq::RouterRecvHalf,
    futures::channel::mpsc::Receiver<zeromq::SocketEvent>,
    Option<Arc<str>>,
);

/// Binds one ROUTER on every endpoint given (none when the list is empty), recording the
/// resolved endpoints in `bound`.
async fn bind_router(
    endpoints: &[crate::Endpoint],
    bound: &mut Vec<String>,
    config: &NodeConfig,
    max_connections: usize,
    counters: &Counters,
) -> Result<Option<BoundRouter>, NodeError> {
    if endpoints.is_empty() {
        return Ok(None);
    }
    let mut socket = RouterSocket::with_options(config.socket_options(max_connections));
    counters.watch_socket(socket.stats());
    let first = bound.len();
    for endpoint in endpoints {
        crate::endpoint::remove_stale_ipc_socket(endpoint);
        let endpoint = endpoint.to_string();
        let resolved = socket
            .bind(&endpoint)
            .await
            .map_err(|source| NodeError::Bind { endpoint, source })?;
        bound.push(resolved.to_string());
    }
    let monitor = socket.monitor();
    let (send, recv) = socket.split();
    let single = match &bound[first..] {
        [only] => Some(Arc::from(only.as_str())),
        _ => None,
    };
    Ok(Some((send, recv, monitor, single)))
}

/// Parses an endpoint the node was given.
fn parse_endpoint(endpoint: &str) -> Result<crate::Endpoint, NodeError> {
    endpoint
        .parse()
        .map_err(|source| NodeError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })
}

/// Parses every endpoint, failing on the first invalid one.
fn parse_endpoints(endpoints: &[String]) -> Result<Vec<crate::Endpoint>, NodeError> {
    endpoints.iter().map(|e| parse_endpoint(e)).collect()
}

/// Refuses a service method (under its full name, or unprefixed when exported so) that
/// takes one of zmesh's reserved names.
fn check_reserved(services: &[Service], unprefixed: Option<&str>) -> Result<(), NodeError> {
    for service in services {
        for method in service.methods.keys() {
            let full = service.full_name(method);
            if crate::reserved::is_reserved_method(&full) {
                return Err(NodeError::ReservedMethod(full));
            }
            if unprefixed == Some(service.name()) && crate::reserved::is_reserved_method(method) {
                return Err(NodeError::ReservedMethod(method.clone()));
            }
        }
    }
    Ok(())
}

/// A running node. Dropping it stops serving at once; [`Node::shutdown`] drains first.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    endpoints: Vec<String>,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// What the builder's extensions left running, shut down first.
    attachments: Vec<Box<dyn Attachment>>,
    /// The services it hosts besides zmesh's own, its extensions' included.
    hosted: Vec<HostedService>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts building a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    /// The bound endpoints, resolved (a `tcp://…:0` endpoint shows its real port); empty for
    /// a [worker](NodeBuilder::worker_of).
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The first bound endpoint.
    pub fn endpoint(&self) -> &str {
        // A node always binds at least one endpoint (checked in `start`).
        self.endpoints
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// What the builder's extension of type `A`'s start left running, if any.
    pub fn attachment<A: Attachment>(&self) -> Option<&A> {
        self.attachments.iter().find_map(|a| {
            let a: &dyn Attachment = &**a;
            (a as &dyn Any).downcast_ref()
        })
    }

    /// The services it hosts besides zmesh's own (what a mesh member announces).
    pub(crate) fn hosted(&self) -> &[HostedService] {
        &self.hosted
    }

    /// A snapshot of the node's counters.
    pub fn stats(&self) -> NodeStats {
        stats_of(&self.shared)
    }

    /// A handle on the node's figures for an exporter: Prometheus text at each
    /// [`encode`](crate::metrics::NodeMetrics::encode), read from the same counters as
    /// [`Node::stats`] and `_zmesh.stats`, then its extensions' figures
    /// ([`Attachment::metrics`]: its events', a job queue's).
    pub fn metrics(&self) -> crate::metrics::NodeMetrics {
        let extensions = self
            .attachments
            .iter()
            .filter_map(|a| a.metrics())
            .collect();
        crate::metrics::NodeMetrics::new(Arc::clone(&self.shared), extensions)
    }

    /// Serves until `signal` completes, then shuts down gracefully with the configured
    /// grace period. Returns the number of calls that had to be aborted.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> usize {
        signal.await;
        let grace = self.shared.config.shutdown_grace;
        self.shutdown(grace).await
    }

    /// Graceful shutdown: refuse new calls (they get `ERR Unavailable`), let in-flight calls
    /// finish for up to `grace`, answer the rest with `ERR Unavailable`, then close the
    /// socket. When it returns, the endpoints are free to bind again (a restart in the same
    /// process). Returns the number of calls that had to be aborted.
    pub async fn shutdown(mut self, grace: Duration) -> usize {
        self.shared.accepting.store(false, Ordering::SeqCst);
        for attachment in &mut self.attachments {
            attachment.shutdown().await;
        }
        worker::say_bye(&self.shared).await;
        let all = u32::try_from(self.shared.config.max_concurrent_calls).unwrap_or(u32::MAX);
        // Every call holds one permit; owning all of them means nothing is in flight.
        let drained = tokio::time::timeout(
            grace,
            self.shared.concurrency.clone().acquire_many_owned(all),
        )
        .await;
        let aborted = match drained {
            Ok(_) => 0,
            Err(_) => {
                dispatch::abort_all(&self.shared, "node shut down before the call finished").await
            }
        };
        let _ = self.stop_tx.send(true);
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            // Joining makes sure the socket halves are released before we return.
            let _ = task.await;
        }
        let name = self.shared.name.clone();
        let endpoints = std::mem::take(&mut self.endpoints);
        // The listeners close when the socket's last half is dropped, and `shared` holds the
        // send half: waiting for them while still holding it only ever ended by timing out
        // (every shutdown took `RELEASE_WAIT`, 2 s).
        drop(self);
        crate::endpoint::wait_all_released(&endpoints).await;
        tracing::info!(node = %name, aborted, "node shut down");
        aborted
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
