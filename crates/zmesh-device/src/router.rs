//! Provides the device's routing state machine: which calls are open, which worker runs
//! each, the per-service queues, and worker and client liveness. Pure: every input carries
//! `now`, every output is a message pushed to an [`Outbox`]; no sockets, no clock reads.
//!
//! Routing follows the ZeroMQ Guide's Majordomo pattern (per-service queues, workers
//! announce what they serve) with least-loaded selection (in-flight calls relative to the
//! announced capacity, least recently used first on a tie), and liveness follows Paranoid
//! Pirate (heartbeats both ways, a worker silent for three of its periods is dead), timed
//! with the same `zmesh_proto::liveness` rules as a node's and a client's channels.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use zeromq::ZmqMessage;
use zmesh_core::ErrorKind;
use zmesh_core::reserved;
use zmesh_core::wire::worker::{self as proto, Ready};
use zmesh_core::wire::{self, HEARTBEAT_ARGS, Header, MessageId, names};
use zmesh_proto::admission::{Counter, Refusal};
use zmesh_proto::liveness::{Liveness, Pacer};

use crate::config::DeviceConfig;
use crate::stats::{DeviceStats, ServiceStats};

/// The introspection method the device answers itself, `_zmesh.device_stats`
/// ([`reserved::DEVICE_STATS`]); it answers its former name `_zmesh_device_stats`
/// ([`reserved::LEGACY_DEVICE_STATS`]) too.
pub const STATS_METHOD: &str = reserved::DEVICE_STATS;
/// Silent heartbeat periods after which a worker is dead.
pub(crate) const WORKER_LIVENESS: u32 = 3;
/// The pseudo-service of forwarded `_zerorpc_*` built-ins (any worker answers them).
const BUILTINS: &str = reserved::ZERORPC_SERVICE;

/// What a message the device sends is, for the drop counters (see [`Drops`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// A heartbeat the device makes, on a call's leg or to a worker.
    Heartbeat,
    /// An `ERR` the device makes for a request it will not route.
    Refusal,
    /// A built-in's `OK` the device answers itself.
    Answer,
    /// A worker protocol event (`RESET`, `REFUSED`).
    Control,
    /// A worker's reply, stream item or event, forwarded to its client.
    Reply,
    /// A client's request or event, forwarded to a worker.
    Request,
    /// A cancel for a worker (the client's, or one the device makes).
    Cancel,
}

impl Sent {
    const ALL: [Sent; 7] = [
        Sent::Heartbeat,
        Sent::Refusal,
        Sent::Answer,
        Sent::Control,
        Sent::Reply,
        Sent::Request,
        Sent::Cancel,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Sent::Heartbeat => "heartbeat",
            Sent::Refusal => "refusal",
            Sent::Answer => "answer",
            Sent::Control => "control",
            Sent::Reply => "reply",
            Sent::Request => "request",
            Sent::Cancel => "cancel",
        }
    }
}

/// Messages dropped because their peer's queue was full, by [`Sent`]; shared by the
/// sending code (which never waits) and the router's figures.
#[derive(Debug, Default)]
pub(crate) struct Drops([AtomicU64; 7]);

impl Drops {
    /// Counts one drop; returns the drops of that kind so far.
    pub(crate) fn count(&self, what: Sent) -> u64 {
        self.0[what as usize].fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    fn figures(&self) -> BTreeMap<String, u64> {
        Sent::ALL
            .iter()
            .map(|s| {
                (
                    s.name().to_owned(),
                    self.0[*s as usize].load(Ordering::Relaxed),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// One message to send, and what it is.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) what: Sent,
    pub(crate) message: ZmqMessage,
}

/// Messages the state machine wants sent, per socket.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) frontend: Vec<Outgoing>,
    pub(crate) backend: Vec<Outgoing>,
    /// Refusals for peers without the mesh key: sent as they are, never sealed (the peer
    /// could not open them), on the frontend (`ERR`) or backend (`REFUSED`).
    pub(crate) unsealed_frontend: Vec<Outgoing>,
    pub(crate) unsealed_backend: Vec<Outgoing>,
}

impl Outbox {
    fn front(&mut self, what: Sent, message: ZmqMessage) {
        self.frontend.push(Outgoing { what, message });
    }

    fn back(&mut self, what: Sent, message: ZmqMessage) {
        self.backend.push(Outgoing { what, message });
    }
}

/// A call: the client connection and the request's `message_id`.
type Key = (Bytes, MessageId);

struct MethodRoute {
    service: Arc<str>,
    idempotent: bool,
    /// Live workers announcing it; the route goes with the last of them.
    workers: u32,
}

#[derive(Default)]
struct ServiceState {
    queue: VecDeque<Key>,
    workers: Vec<Bytes>,
    /// Open calls (queued or running) of the service; it is forgotten once it has neither
    /// workers nor open calls.
    open: usize,
    dispatched: u64,
    completed: u64,
    failed: u64,
    overloaded: u64,
    redispatched: u64,
}

struct Worker {
    name: String,
    services: Vec<Arc<str>>,
    /// The method names it announced (it holds one reference on each route).
    methods: Vec<String>,
    capacity: u32,
    channels: HashSet<Key>,
    /// Its heartbeats (at the period it announced) and ours to it.
    liveness: Liveness,
    last_used: u64,
    /// It said it is shutting down (`BYE`, or a call refused as not run because it is):
    /// no new calls go to it, and its disconnect is a departure, not a loss.
    draining: bool,
}

impl Worker {
    fn in_flight(&self) -> u32 {
        u32::try_from(self.channels.len()).unwrap_or(u32::MAX)
    }

    fn has_room(&self) -> bool {
        !self.draining && self.in_flight() < self.capacity
    }
}

struct Channel {
    /// The client's envelope (its connection identity first).
    route: Vec<Bytes>,
    /// The request event as received, kept to re-dispatch it.
    request: Bytes,
    service: Arc<str>,
    idempotent: bool,
    worker: Option<Bytes>,
    /// Whether anything but heartbeats went back to the client (a started stream cannot be
    /// re-run transparently).
    replied: bool,
    deadline: Option<Instant>,
    /// The client's heartbeats and ours to it on this call.
    client: Liveness,
    /// Our heartbeats to the worker on this call, at the worker's period (it heartbeats
    /// the device on its link, so the call's leg needs no liveness of its own).
    worker_heartbeats: Pacer,
}

/// How a worker went, for its log line and its counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Departure {
    /// It said it was shutting down, then closed its connection: logged at INFO, counted
    /// in `workers_left`.
    Left,
    /// Its connection dropped without a word, or it went silent: logged at WARN, counted
    /// in `workers_lost`.
    Lost,
}

/// Device-wide counters.
#[derive(Debug, Default)]
struct Counters {
    malformed: u64,
    oversized: u64,
    oversized_events: u64,
    unknown_method: u64,
    unknown_channel: u64,
    stale_replies: u64,
    expired: u64,
    clients_lost: u64,
    workers_lost: u64,
    workers_left: u64,
    unauthenticated: u64,
    replay_rejected: u64,
    /// By reason; see [`DeviceStats::refused`].
    refused: BTreeMap<&'static str, u64>,
}

/// A client connection's refusal budget (a token bucket).
struct Bucket {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

/// The routing state. One per device, behind a lock shared by its socket tasks.
pub(crate) struct Router {
    name: String,
    config: DeviceConfig,
    methods: HashMap<String, MethodRoute>,
    services: HashMap<Arc<str>, ServiceState>,
    workers: HashMap<Bytes, Worker>,
    channels: HashMap<Key, Channel>,
    /// Bytes of the request frames of every open call.
    request_bytes: usize,
    buckets: HashMap<Bytes, Bucket>,
    /// When the refusal budgets are next pruned: every device heartbeat period.
    prune: Pacer,
    seq: u64,
    counters: Counters,
    drops: Arc<Drops>,
}

/// Why a worker's `READY` was refused: the counter's name and the message for the log and
/// the worker.
type ReadyRefusal = (&'static str, String);

/// `[route.., "", event]`.
fn to_route(route: &[Bytes], event: Bytes) -> ZmqMessage {
    wire::join_frames(route, event)
}

/// `[worker, client route.., "", event]`.
fn to_worker(worker: &Bytes, route: &[Bytes], event: Bytes) -> ZmqMessage {
    let mut frames = Vec::with_capacity(route.len() + 3);
    frames.push(worker.clone());
    frames.extend_from_slice(route);
    frames.push(Bytes::new());
    frames.push(event);
    // A Vec with at least three frames always converts.
    ZmqMessage::try_from(frames).unwrap_or_else(|_| ZmqMessage::from(Bytes::new()))
}

fn err_event(request: &MessageId, kind: ErrorKind, message: &str) -> Bytes {
    let header = Header::zmesh(Some(request.clone()));
    wire::encode_event(
        &header,
        names::ERR,
        &wire::err_args(kind.as_str(), message, None),
    )
}

fn ok_event(request: &MessageId, value: &[u8]) -> Bytes {
    let header = Header::zmesh(Some(request.clone()));
    let mut out = Vec::with_capacity(64 + value.len());
    wire::encode_event_into(&mut out, &header, names::OK, |out| {
        out.push(0x91);
        out.extend_from_slice(value);
    });
    Bytes::from(out)
}

/// A worker's name for the logs: at most 64 characters of what it announced.
fn short_name(name: &str) -> String {
    name.chars().take(64).collect()
}

fn control_event(name: &str, args: &[u8]) -> Bytes {
    wire::encode_event(&Header::zmesh(None), name, args)
}

/// The least loaded worker with a free slot (in-flight relative to capacity), least
/// recently used first on a tie.
fn pick(workers: &HashMap<Bytes, Worker>, candidates: &[Bytes]) -> Option<Bytes> {
    let mut best: Option<(&Bytes, &Worker)> = None;
    for id in candidates {
        let Some(w) = workers.get(id).filter(|w| w.has_room()) else {
            continue;
        };
        best = match best {
            None => Some((id, w)),
            Some((bid, b)) => {
                // in_flight / capacity compared without division.
                let load = u64::from(w.in_flight()) * u64::from(b.capacity);
                let best_load = u64::from(b.in_flight()) * u64::from(w.capacity);
                if load < best_load || (load == best_load && w.last_used < b.last_used) {
                    Some((id, w))
                } else {
                    Some((bid, b))
                }
            }
        };
    }
    best.map(|(id, _)| id.clone())
}

impl Router {
    pub(crate) fn new(name: String, config: DeviceConfig) -> Self {
        Self {
            name,
            config,
            methods: HashMap::new(),
            services: HashMap::new(),
            workers: HashMap::new(),
            channels: HashMap::new(),
            request_bytes: 0,
            buckets: HashMap::new(),
            prune: Pacer::new(Instant::now()),
            seq: 0,
            counters: Counters::default(),
            drops: Arc::new(Drops::default()),
        }
    }

    /// The drop counters, shared with the code that sends.
    pub(crate) fn drops(&self) -> Arc<Drops> {
        self.drops.clone()
    }

    fn count_refusal(&mut self, reason: &'static str) -> u64 {
        let n = self.counters.refused.entry(reason).or_default();
        *n += 1;
        *n
    }

    /// Whether one more refusal may be sent to client connection `peer` now (its token
    /// bucket, see [`DeviceConfig::refusals`]); counts a suppressed one.
    fn may_refuse(&mut self, peer: &Bytes, now: Instant) -> bool {
        let (burst, rate) = self.config.refusals;
        let bucket = self.buckets.entry(peer.clone()).or_insert(Bucket {
            tokens: f64::from(burst),
            at: now,
            suppressed: 0,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        bucket.suppressed += 1;
        let suppressed = bucket.suppressed;
        self.count_refusal("suppressed");
        if suppressed.is_power_of_two() && suppressed >= 64 {
            // The vendored ROUTER has no way to drop one connection, so a peer that keeps
            // sending garbage is only silenced, never disconnected.
            tracing::warn!(
                suppressed,
                "a client connection keeps sending requests the device refuses; no longer answering them"
            );
        }
        false
    }

    /// Answers a request the device will not route with `ERR name message`, within the
    /// connection's refusal rate (`sealed`: sealed when the device has a key; refusals for
    /// the mesh key go out unsealed).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn refuse_request(
        &mut self,
        route: &[Bytes],
        request: &MessageId,
        kind: ErrorKind,
        message: &str,
        sealed: bool,
        now: Instant,
        out: &mut Outbox,
    ) {
        let Some(peer) = route.first() else {
            return;
        };
        if !self.may_refuse(peer, now) {
            return;
        }
        let outgoing = Outgoing {
            what: Sent::Refusal,
            message: to_route(route, err_event(request, kind, message)),
        };
        if sealed {
            out.frontend.push(outgoing);
        } else {
            out.unsealed_frontend.push(outgoing);
        }
    }

    /// Counts a message admission refused, in the one counter of its reason.
    pub(crate) fn count_inadmissible(&mut self, refusal: &Refusal) {
        match refusal.counter() {
            Counter::Malformed => self.counters.malformed += 1,
            Counter::Oversized => self.counters.oversized += 1,
            Counter::Unauthenticated => self.counters.unauthenticated += 1,
        }
    }

    /// Counts a message refused by the mesh key; returns the refusals so far (for the
    /// caller's rate-limited warning).
    pub(crate) fn count_refused(&mut self, replayed: bool) -> u64 {
        if replayed {
            self.counters.replay_rejected += 1;
        } else {
            self.counters.unauthenticated += 1;
        }
        self.counters.replay_rejected + self.counters.unauthenticated
    }

    pub(crate) fn count_oversized_event(&mut self) {
        self.counters.oversized_events += 1;
    }

    /// How often [`Router::poll_timers`] should run: a quarter of the shortest heartbeat
    /// period in play, so every heartbeat and every loss is acted on within a quarter period.
    pub(crate) fn tick(&self) -> Duration {
        let shortest = self
            .workers
            .values()
            .map(|w| w.liveness.period())
            .fold(self.config.heartbeat, Duration::min);
        (shortest / 4).max(Duration::from_millis(2))
    }

    // -----------------------------------------------------------------------------------
    // Clients
    // -----------------------------------------------------------------------------------

    /// An event from a client. `route` is non-empty (the ROUTER puts the connection first);
    /// `frame` is the event as received and `event` its decoding.
    pub(crate) fn handle_client(
        &mut self,
        route: Vec<Bytes>,
        frame: Bytes,
        event: wire::Event,
        now: Instant,
        out: &mut Outbox,
    ) {
        let Some(peer) = route.first().cloned() else {
            self.counters.malformed += 1;
            return;
        };
        match event.header.response_to {
            Some(channel) => {
                self.client_channel_event(peer, channel, &event.name, frame, now, out);
            }
            None => self.open(route, frame, event, now, out),
        }
    }

    fn open(
        &mut self,
        route: Vec<Bytes>,
        frame: Bytes,
        event: wire::Event,
        now: Instant,
        out: &mut Outbox,
    ) {
        let id = event.header.message_id;
        let name = event.name.as_ref();
        if let Some(value) = self.answer_builtin(name) {
            out.front(Sent::Answer, to_route(&route, ok_event(&id, &value)));
            return;
        }
        let deadline = match event.header.deadline_ms {
            Some(0) => {
                // The caller has already given up, as a node would treat it.
                self.counters.expired += 1;
                return;
            }
            Some(ms) => Some(now + Duration::from_millis(ms)),
            None => None,
        };
        let (service, idempotent) = match self.methods.get(name) {
            Some(m) => (m.service.clone(), m.idempotent),
            None if reserved::is_zerorpc_builtin(name) => (Arc::from(BUILTINS), true),
            None => {
                self.counters.unknown_method += 1;
                tracing::debug!(method = name, "no worker serves this method");
                // The name stays NameError (what a node answers for a method it does not
                // have, and what zerorpc clients expect); the message says why.
                let message = format!("no worker connected to the device serves {name}");
                self.refuse_request(&route, &id, ErrorKind::NameError, &message, true, now, out);
                return;
            }
        };
        let key = (route[0].clone(), id.clone());
        if self.channels.contains_key(&key) {
            let message = "a call with this message_id is already running";
            self.refuse_request(
                &route,
                &id,
                ErrorKind::ProtocolError,
                message,
                true,
                now,
                out,
            );
            return;
        }
        let size = frame.len();
        if self.request_bytes.saturating_add(size) > self.config.max_request_bytes {
            let n = self.count_refusal("request_bytes");
            if let Some(svc) = self.services.get_mut(&service) {
                svc.overloaded += 1;
            }
            let message = format!(
                "the device holds {} bytes of requests and this one has {size}; its limit is {} bytes",
                self.request_bytes, self.config.max_request_bytes
            );
            if n.is_power_of_two() {
                tracing::warn!(refused = n, "{message}; refusing requests (Overloaded)");
            }
            out.front(
                Sent::Refusal,
                to_route(&route, err_event(&id, ErrorKind::Overloaded, &message)),
            );
            return;
        }
        let worker = if &*service == BUILTINS {
            // Built-ins are answered by any worker, outside the capacity accounting's
            // queueing: they are cheap and must not wait behind real work.
            let all: Vec<Bytes> = self.workers.keys().cloned().collect();
            match pick_any(&self.workers, &all) {
                Some(w) => Some(w),
                None => {
                    let message = "no worker is connected to the device";
                    out.front(
                        Sent::Refusal,
                        to_route(&route, err_event(&id, ErrorKind::Unavailable, message)),
                    );
                    return;
                }
            }
        } else {
            let Some(svc) = self.services.get_mut(&service) else {
                return;
            };
            match pick(&self.workers, &svc.workers) {
                Some(w) => Some(w),
                None if svc.queue.len() < self.config.max_queue => None,
                None => {
                    svc.overloaded += 1;
                    let message = format!(
                        "service {service} has no free worker and {} calls queued",
                        svc.queue.len()
                    );
                    out.front(
                        Sent::Refusal,
                        to_route(&route, err_event(&id, ErrorKind::Overloaded, &message)),
                    );
                    return;
                }
            }
        };
        self.insert_channel(
            key.clone(),
            Channel {
                route,
                request: frame,
                service: service.clone(),
                idempotent,
                worker: None,
                replied: false,
                deadline,
                client: Liveness::channel(self.config.heartbeat, now),
                worker_heartbeats: Pacer::new(now),
            },
        );
        match worker {
            Some(w) => self.assign(key, &w, now, out),
            None => {
                if let Some(svc) = self.services.get_mut(&service) {
                    svc.queue.push_back(key);
                }
            }
        }
    }

    /// Opens a call: counts its request's bytes and its service's open calls.
    fn insert_channel(&mut self, key: Key, channel: Channel) {
        self.request_bytes += channel.request.len();
        if let Some(svc) = self.services.get_mut(&channel.service) {
            svc.open += 1;
        }
        self.channels.insert(key, channel);
    }

    /// Closes a call (its bytes and its service's count go with it; a service left with
    /// neither workers nor calls is forgotten). Its worker slot is the caller's business.
    fn remove_channel(&mut self, key: &Key) -> Option<Channel> {
        let c = self.channels.remove(key)?;
        self.request_bytes = self.request_bytes.saturating_sub(c.request.len());
        if let Some(svc) = self.services.get_mut(&c.service) {
            svc.open = svc.open.saturating_sub(1);
            if c.worker.is_none() {
                svc.queue.retain(|k| k != key);
            }
        }
        self.forget_if_unused(&c.service);
        Some(c)
    }

    /// Forgets a service with no worker and no open call.
    fn forget_if_unused(&mut self, service: &Arc<str>) {
        if self
            .services
            .get(service)
            .is_some_and(|svc| svc.workers.is_empty() && svc.open == 0)
        {
            self.services.remove(service);
        }
    }

    /// The value of a built-in the device answers itself.
    fn answer_builtin(&self, name: &str) -> Option<Vec<u8>> {
        let encoded = match name {
            reserved::ZERORPC_PING => rmp_serde::to_vec(&("pong", &self.name)),
            reserved::ZERORPC_NAME => rmp_serde::to_vec(&self.name),
            reserved::ZERORPC_LIST => {
                let mut list: Vec<&str> = self
                    .methods
                    .keys()
                    .map(String::as_str)
                    .filter(|m| !m.starts_with('_'))
                    .collect();
                list.sort_unstable();
                rmp_serde::to_vec(&list)
            }
            reserved::DEVICE_STATS | reserved::LEGACY_DEVICE_STATS => {
                rmp_serde::to_vec_named(&self.stats())
            }
            _ => return None,
        };
        encoded.ok()
    }

    fn client_channel_event(
        &mut self,
        peer: Bytes,
        channel: MessageId,
        name: &str,
        frame: Bytes,
        now: Instant,
        out: &mut Outbox,
    ) {
        let key = (peer, channel);
        let Some(c) = self.channels.get_mut(&key) else {
            // A heartbeat racing the final reply, as with any zerorpc server.
            self.counters.unknown_channel += 1;
            return;
        };
        c.client.heard(now);
        match name {
            // The device heartbeats each leg itself.
            names::HEARTBEAT => {}
            names::CANCEL => self.drop_channel(&key, Some(frame), now, out),
            // Credit and anything else for the call go to its worker; before dispatch the
            // client has seen no stream item, so it has no credit to grant yet.
            _ => {
                if let Some(w) = &c.worker {
                    out.back(Sent::Request, to_worker(w, &c.route, frame));
                }
            }
        }
    }

    /// A client connection is gone: its calls are cancelled.
    pub(crate) fn handle_client_gone(&mut self, peer: &Bytes, now: Instant, out: &mut Outbox) {
        let keys: Vec<Key> = self
            .channels
            .keys()
            .filter(|(p, _)| p == peer)
            .cloned()
            .collect();
        if !keys.is_empty() {
            tracing::info!(
                calls = keys.len(),
                "client disconnected; cancelling its calls"
            );
        }
        for key in keys {
            self.counters.clients_lost += 1;
            self.drop_channel(&key, None, now, out);
        }
        self.buckets.remove(peer);
    }

    /// Ends a call the client abandoned; its worker (if any) gets a cancel (`cancel` is the
    /// client's own cancel event, else one is made).
    fn drop_channel(&mut self, key: &Key, cancel: Option<Bytes>, now: Instant, out: &mut Outbox) {
        let Some(c) = self.remove_channel(key) else {
            return;
        };
        if let Some(w) = &c.worker {
            let cancel = cancel.unwrap_or_else(|| {
                let header = Header::zmesh(Some(key.1.clone()));
                wire::encode_event(&header, names::CANCEL, wire::EMPTY_ARRAY_ARGS)
            });
            out.back(Sent::Cancel, to_worker(w, &c.route, cancel));
            self.release(key, w, now, out);
        }
    }

    // -----------------------------------------------------------------------------------
    // Workers
    // -----------------------------------------------------------------------------------

    /// A message from a worker: `route` is `[worker_id, client route..]`, non-empty.
    pub(crate) fn handle_worker(
        &mut self,
        route: Vec<Bytes>,
        frame: Bytes,
        event: wire::Event,
        now: Instant,
        out: &mut Outbox,
    ) {
        let Some((worker, client_route)) = route.split_first() else {
            self.counters.malformed += 1;
            return;
        };
        if client_route.is_empty() {
            self.worker_control(worker, &event, now, out);
            return;
        }
        let Some(w) = self.workers.get_mut(worker) else {
            // Declared dead, or from before a device restart: make it start over.
            out.back(
                Sent::Control,
                to_route(
                    std::slice::from_ref(worker),
                    control_event(proto::RESET, wire::EMPTY_ARRAY_ARGS),
                ),
            );
            return;
        };
        w.liveness.heard(now);
        let Some(channel) = event.header.response_to else {
            self.counters.malformed += 1;
            return;
        };
        let key = (client_route[0].clone(), channel);
        let Some(c) = self.channels.get_mut(&key) else {
            self.counters.unknown_channel += 1;
            return;
        };
        if c.worker.as_ref() != Some(worker) {
            // A late reply from a worker whose call was already re-dispatched or failed.
            self.counters.stale_replies += 1;
            return;
        }
        match event.name.as_ref() {
            names::HEARTBEAT => {}
            names::OK | names::ERR | names::STREAM_DONE => {
                if event.name == names::ERR && !c.replied && refused_unrun(&event.args) {
                    // The worker is shutting down and did not run the call: safe to run it
                    // elsewhere whatever the method.
                    if let Some(w) = self.workers.get_mut(worker) {
                        w.draining = true;
                    }
                    self.requeue(&key, worker, now, out);
                    return;
                }
                out.front(Sent::Reply, to_route(client_route, frame));
                if let Some(svc) = self.services.get_mut(&c.service) {
                    svc.completed += 1;
                }
                self.remove_channel(&key);
                self.release(&key, worker, now, out);
            }
            _ => {
                if event.name == names::STREAM {
                    c.replied = true;
                }
                out.front(Sent::Reply, to_route(client_route, frame));
            }
        }
    }

    fn worker_control(
        &mut self,
        worker: &Bytes,
        event: &wire::Event,
        now: Instant,
        out: &mut Outbox,
    ) {
        match event.name.as_ref() {
            proto::READY => match Ready::decode_args(&event.args) {
                Ok(ready) => self.register(worker.clone(), ready, now, out),
                Err(e) => {
                    self.counters.malformed += 1;
                    tracing::warn!(error = %e, "refusing a worker announcement");
                }
            },
            proto::WORKER_HEARTBEAT => match self.workers.get_mut(worker) {
                Some(w) => w.liveness.heard(now),
                None => out.back(
                    Sent::Control,
                    to_route(
                        std::slice::from_ref(worker),
                        control_event(proto::RESET, wire::EMPTY_ARRAY_ARGS),
                    ),
                ),
            },
            proto::BYE => {
                if let Some(w) = self.workers.get_mut(worker) {
                    tracing::info!(worker = %w.name, "worker is leaving; routing no new calls to it");
                    w.liveness.heard(now);
                    w.draining = true;
                }
            }
            other => {
                self.counters.malformed += 1;
                tracing::debug!(event = other, "unexpected control event from a worker");
            }
        }
    }

    /// A worker's announcement. Checked against the bounds and the routes of the other
    /// live workers first: a refused one is logged, counted, answered `REFUSED`, and (when
    /// the connection was registered) ends the worker as if it had left.
    pub(crate) fn register(&mut self, id: Bytes, mut ready: Ready, now: Instant, out: &mut Outbox) {
        // Announced again on the same connection: the new announcement replaces the old one
        // (its calls are kept), so the old one's routes are withdrawn before checking.
        let old = self.workers.remove(&id);
        if let Some(old) = &old {
            self.withdraw(&id, old);
        }
        if let Err((reason, message)) = self.check_ready(&ready) {
            let refused = self.count_refusal(reason);
            // Rate-limited: a warning at 1, 2, 4, 8, ... refusals of this reason.
            if refused.is_power_of_two() {
                tracing::warn!(worker = %short_name(&ready.name), reason, refused, "refusing a worker announcement: {message}");
            } else {
                tracing::debug!(worker = %short_name(&ready.name), reason, "refusing a worker announcement: {message}");
            }
            let args = rmp_serde::to_vec(&(format!("{reason}: {message}"),)).unwrap_or_default();
            out.unsealed_backend.push(Outgoing {
                what: Sent::Control,
                message: to_route(
                    std::slice::from_ref(&id),
                    control_event(proto::REFUSED, &args),
                ),
            });
            if let Some(old) = old {
                let reason = format!("its new announcement was refused ({reason})");
                self.lose_worker(&id, old, &reason, Departure::Lost, now, out);
            }
            return;
        }
        if ready.capacity > self.config.max_worker_capacity {
            self.count_refusal("capacity_capped");
            tracing::info!(
                worker = %short_name(&ready.name),
                announced = ready.capacity,
                capacity = self.config.max_worker_capacity,
                "worker announced more capacity than the device gives one worker; lowered"
            );
            ready.capacity = self.config.max_worker_capacity;
        }
        // A name announced twice (for one service, checked) is routed once.
        let mut seen = HashSet::with_capacity(ready.methods.len());
        ready.methods.retain(|m| seen.insert(m.name.clone()));
        drop(seen);
        let mut services: Vec<Arc<str>> = Vec::new();
        let mut methods: Vec<String> = Vec::with_capacity(ready.methods.len());
        for m in ready.methods {
            let service = match self.services.get_key_value(m.service.as_str()) {
                Some((name, _)) => name.clone(),
                None => {
                    let name: Arc<str> = Arc::from(m.service.as_str());
                    self.services.insert(name.clone(), ServiceState::default());
                    name
                }
            };
            if services.last() != Some(&service) && !services.contains(&service) {
                services.push(service.clone());
            }
            match self.methods.get_mut(&m.name) {
                // Same service (checked): the first announcer's idempotent flag stands.
                Some(route) => route.workers += 1,
                None => {
                    self.methods.insert(
                        m.name.clone(),
                        MethodRoute {
                            service,
                            idempotent: m.idempotent,
                            workers: 1,
                        },
                    );
                }
            }
            methods.push(m.name);
        }
        let channels = old.map(|old| old.channels).unwrap_or_default();
        for service in &services {
            if let Some(svc) = self.services.get_mut(service) {
                svc.workers.push(id.clone());
            }
        }
        let name = short_name(&ready.name);
        tracing::info!(worker = %name, services = ?services, capacity = ready.capacity, "worker ready");
        self.workers.insert(
            id,
            Worker {
                name,
                services: services.clone(),
                methods,
                capacity: ready.capacity,
                channels,
                liveness: Liveness::link(
                    Duration::from_millis(ready.heartbeat_ms),
                    WORKER_LIVENESS,
                    now,
                ),
                last_used: 0,
                draining: false,
            },
        );
        for service in &services {
            self.pump(service, now, out);
        }
    }

    /// Why `ready` cannot be accepted, if it cannot (the announcing worker's own previous
    /// routes are already withdrawn).
    fn check_ready(&self, ready: &Ready) -> Result<(), ReadyRefusal> {
        let config = &self.config;
        let heartbeat = Duration::from_millis(ready.heartbeat_ms);
        let (shortest, longest) = config.worker_heartbeat;
        if heartbeat < shortest || heartbeat > longest {
            return Err((
                "ready_heartbeat",
                format!(
                    "heartbeat period {heartbeat:?} is outside the {shortest:?} to {longest:?} this device accepts"
                ),
            ));
        }
        if ready.methods.len() > config.max_methods_per_worker {
            return Err((
                "ready_worker_bounds",
                format!(
                    "{} methods announced; one worker may announce {}",
                    ready.methods.len(),
                    config.max_methods_per_worker
                ),
            ));
        }
        let mut announced: HashMap<&str, &str> = HashMap::with_capacity(ready.methods.len());
        let mut services: HashSet<&str> = HashSet::new();
        for m in &ready.methods {
            let (name, service) = (m.name.as_str(), m.service.as_str());
            if name.is_empty() || service.is_empty() {
                return Err(("ready_name", "an empty method or service name".to_owned()));
            }
            if name.len() > config.max_name_len || service.len() > config.max_name_len {
                return Err((
                    "ready_name",
                    format!(
                        "a method or service name over {} bytes",
                        config.max_name_len
                    ),
                ));
            }
            // Method names a worker may not announce: the device answers or forwards them
            // itself, and workers do not announce zmesh's own.
            if reserved::is_reserved_method(name) {
                return Err((
                    "ready_name",
                    format!("{name} is reserved for the device and its built-ins"),
                ));
            }
            if let Some(previous) = announced.insert(name, service)
                && previous != service
            {
                return Err((
                    "ready_remap",
                    format!("{name} announced for two services, {previous} and {service}"),
                ));
            }
            if let Some(route) = self.methods.get(name)
                && &*route.service != service
            {
                return Err((
                    "ready_remap",
                    format!(
                        "{name} is served by service {} ({} live workers); a worker may not move it to {service}",
                        route.service, route.workers
                    ),
                ));
            }
            services.insert(service);
        }
        if services.len() > config.max_services_per_worker {
            return Err((
                "ready_worker_bounds",
                format!(
                    "{} services announced; one worker may announce {}",
                    services.len(),
                    config.max_services_per_worker
                ),
            ));
        }
        let new_methods = announced
            .keys()
            .filter(|m| !self.methods.contains_key(**m))
            .count();
        if self.methods.len() + new_methods > config.max_methods {
            return Err((
                "ready_table_full",
                format!(
                    "{new_methods} new methods would pass the device's bound of {} ({} routed)",
                    config.max_methods,
                    self.methods.len()
                ),
            ));
        }
        let new_services = services
            .iter()
            .filter(|s| !self.services.contains_key(**s))
            .count();
        if self.services.len() + new_services > config.max_services {
            return Err((
                "ready_table_full",
                format!(
                    "{new_services} new services would pass the device's bound of {} ({} routed)",
                    config.max_services,
                    self.services.len()
                ),
            ));
        }
        Ok(())
    }

    /// Takes a worker's announcement back: its references on its methods (a method with no
    /// worker left is no longer routed) and its place in its services' lists (a service
    /// with no worker and no open call is forgotten).
    fn withdraw(&mut self, id: &Bytes, w: &Worker) {
        for name in &w.methods {
            if let Some(route) = self.methods.get_mut(name) {
                route.workers = route.workers.saturating_sub(1);
                if route.workers == 0 {
                    self.methods.remove(name);
                }
            }
        }
        for service in &w.services {
            if let Some(svc) = self.services.get_mut(service) {
                svc.workers.retain(|x| x != id);
            }
            self.forget_if_unused(service);
        }
    }

    /// A worker's connection is gone: re-dispatch its idempotent calls that have sent
    /// nothing yet, fail the others with `PeerLost`. A worker that said it was shutting
    /// down has [`Departure::Left`]; any other has [`Departure::Lost`]. `None` for a
    /// connection that was no (longer a) worker.
    pub(crate) fn handle_worker_gone(
        &mut self,
        id: &Bytes,
        reason: &str,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<Departure> {
        self.worker_gone(id, reason, false, now, out)
    }

    /// [`Self::handle_worker_gone`], and for a worker declared dead by its silence
    /// (`silent`): lost, whatever it said before, as it did not close its connection.
    fn worker_gone(
        &mut self,
        id: &Bytes,
        reason: &str,
        silent: bool,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<Departure> {
        let w = self.workers.remove(id)?;
        self.withdraw(id, &w);
        let departure = if w.draining && !silent {
            Departure::Left
        } else {
            Departure::Lost
        };
        self.lose_worker(id, w, reason, departure, now, out);
        Some(departure)
    }

    /// The calls of a worker that is gone (removed and withdrawn already).
    fn lose_worker(
        &mut self,
        _id: &Bytes,
        w: Worker,
        reason: &str,
        departure: Departure,
        now: Instant,
        out: &mut Outbox,
    ) {
        match departure {
            Departure::Left => self.counters.workers_left += 1,
            Departure::Lost => self.counters.workers_lost += 1,
        }
        let mut requeued = 0usize;
        let mut failed = 0usize;
        for key in &w.channels {
            let Some(c) = self.channels.get_mut(key) else {
                continue;
            };
            c.worker = None;
            if c.idempotent && !c.replied {
                requeued += 1;
                if &*c.service == BUILTINS {
                    // A forwarded built-in: any other worker will do.
                    self.retry_builtin(key, now, out);
                } else if let Some(svc) = self.services.get_mut(&c.service) {
                    svc.redispatched += 1;
                    svc.queue.push_front(key.clone());
                }
            } else if let Some(c) = self.remove_channel(key) {
                failed += 1;
                if let Some(svc) = self.services.get_mut(&c.service) {
                    svc.failed += 1;
                }
                let message = format!("worker {} was lost during the call: {reason}", w.name);
                out.front(
                    Sent::Refusal,
                    to_route(&c.route, err_event(&key.1, ErrorKind::PeerLost, &message)),
                );
            }
        }
        match departure {
            // An ordinary event in a pool's life (a deploy, a scale-down): not a warning.
            Departure::Left => {
                tracing::info!(worker = %w.name, reason, requeued, failed, "worker left");
            }
            Departure::Lost => {
                tracing::warn!(worker = %w.name, reason, requeued, failed, "worker lost");
            }
        }
        for service in &w.services {
            self.pump(service, now, out);
        }
    }

    fn retry_builtin(&mut self, key: &Key, now: Instant, out: &mut Outbox) {
        let all: Vec<Bytes> = self.workers.keys().cloned().collect();
        match pick_any(&self.workers, &all) {
            Some(w) => self.assign(key.clone(), &w, now, out),
            None => {
                if let Some(c) = self.remove_channel(key) {
                    let message = "no worker is connected to the device";
                    out.front(
                        Sent::Refusal,
                        to_route(&c.route, err_event(&key.1, ErrorKind::Unavailable, message)),
                    );
                }
            }
        }
    }

    /// Puts a call its worker refused back at the head of its service's queue.
    fn requeue(&mut self, key: &Key, worker: &Bytes, now: Instant, out: &mut Outbox) {
        if let Some(w) = self.workers.get_mut(worker) {
            w.channels.remove(key);
        }
        let Some(c) = self.channels.get_mut(key) else {
            return;
        };
        c.worker = None;
        let service = c.service.clone();
        if &*service == BUILTINS {
            self.retry_builtin(key, now, out);
        } else if let Some(svc) = self.services.get_mut(&service) {
            svc.redispatched += 1;
            svc.queue.push_front(key.clone());
            self.pump(&service, now, out);
        }
    }

    fn assign(&mut self, key: Key, worker: &Bytes, now: Instant, out: &mut Outbox) {
        let Some(c) = self.channels.get_mut(&key) else {
            return;
        };
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        c.worker = Some(worker.clone());
        c.worker_heartbeats = Pacer::new(now);
        self.seq += 1;
        w.last_used = self.seq;
        out.back(
            Sent::Request,
            to_worker(worker, &c.route, c.request.clone()),
        );
        if let Some(svc) = self.services.get_mut(&c.service) {
            svc.dispatched += 1;
        }
        w.channels.insert(key);
    }

    /// A worker finished (or dropped) a call: its slot goes to the queued calls of its
    /// services.
    fn release(&mut self, key: &Key, worker: &Bytes, now: Instant, out: &mut Outbox) {
        let Some(w) = self.workers.get_mut(worker) else {
            return;
        };
        w.channels.remove(key);
        if w.services.len() == 1 {
            let service = w.services[0].clone();
            self.pump(&service, now, out);
        } else {
            for service in w.services.clone() {
                self.pump(&service, now, out);
            }
        }
    }

    /// Dispatches queued calls of a service while one of its workers has room.
    fn pump(&mut self, service: &Arc<str>, now: Instant, out: &mut Outbox) {
        loop {
            let Some(svc) = self.services.get_mut(service) else {
                return;
            };
            if svc.queue.is_empty() {
                return;
            }
            let Some(worker) = pick(&self.workers, &svc.workers) else {
                return;
            };
            let Some(key) = svc.queue.pop_front() else {
                return;
            };
            self.assign(key, &worker, now, out);
        }
    }

    // -----------------------------------------------------------------------------------
    // Timers
    // -----------------------------------------------------------------------------------

    /// One timer pass: heartbeats due on every leg, dead workers, silent clients, and
    /// queued calls whose deadline passed.
    pub(crate) fn poll_timers(&mut self, now: Instant, out: &mut Outbox) {
        let dead: Vec<(Bytes, Duration)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.liveness.is_lost(now))
            .map(|(id, w)| (id.clone(), w.liveness.silence_limit()))
            .collect();
        for (id, silence) in dead {
            let reason = format!("no heartbeat for {silence:?}");
            self.worker_gone(&id, &reason, true, now, out);
        }
        for (id, w) in &mut self.workers {
            if w.liveness.heartbeat_due(now) {
                out.back(
                    Sent::Heartbeat,
                    to_route(
                        std::slice::from_ref(id),
                        control_event(proto::DEVICE_HEARTBEAT, HEARTBEAT_ARGS),
                    ),
                );
            }
        }

        if self.prune.due(now, self.config.heartbeat) {
            // Forget the refusal budgets that have refilled: nothing to remember there.
            let (burst, rate) = self.config.refusals;
            let full = Duration::from_secs_f64(f64::from(burst) / f64::from(rate.max(1)));
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at) < full);
        }
        let mut silent = Vec::new();
        let mut expired = Vec::new();
        for (key, c) in &mut self.channels {
            if c.client.is_lost(now) {
                silent.push(key.clone());
                continue;
            }
            if c.worker.is_none() && c.deadline.is_some_and(|d| now >= d) {
                expired.push(key.clone());
                continue;
            }
            if c.client.heartbeat_due(now) {
                let header = Header::zmesh(Some(key.1.clone()));
                let hb = wire::encode_event(&header, names::HEARTBEAT, HEARTBEAT_ARGS);
                out.front(Sent::Heartbeat, to_route(&c.route, hb));
            }
            if let Some(w) = c
                .worker
                .as_ref()
                .and_then(|id| self.workers.get(id).map(|w| (id, w)))
                && c.worker_heartbeats.due(now, w.1.liveness.period())
            {
                let header = Header::zmesh(Some(key.1.clone()));
                let hb = wire::encode_event(&header, names::HEARTBEAT, HEARTBEAT_ARGS);
                out.back(Sent::Heartbeat, to_worker(w.0, &c.route, hb));
            }
        }
        for key in silent {
            self.counters.clients_lost += 1;
            tracing::info!(call = %key.1, "client stopped heartbeating; cancelling its call");
            self.drop_channel(&key, None, now, out);
        }
        for key in expired {
            // The caller has given up by now; nobody is waiting for an answer.
            self.counters.expired += 1;
            self.drop_channel(&key, None, now, out);
        }
    }

    // -----------------------------------------------------------------------------------
    // Figures
    // -----------------------------------------------------------------------------------

    pub(crate) fn stats(&self) -> DeviceStats {
        let services: BTreeMap<String, ServiceStats> = self
            .services
            .iter()
            .map(|(name, s)| {
                let in_flight = s
                    .workers
                    .iter()
                    .filter_map(|w| self.workers.get(w))
                    .map(|w| {
                        w.channels
                            .iter()
                            .filter(|k| self.channels.get(*k).is_some_and(|c| &c.service == name))
                            .count()
                    })
                    .sum();
                let stats = ServiceStats {
                    queued: s.queue.len(),
                    workers: s.workers.len(),
                    in_flight,
                    dispatched: s.dispatched,
                    completed: s.completed,
                    failed: s.failed,
                    overloaded: s.overloaded,
                    redispatched: s.redispatched,
                };
                (name.to_string(), stats)
            })
            .collect();
        DeviceStats {
            services,
            workers: self.workers.len(),
            open_calls: self.channels.len(),
            malformed: self.counters.malformed,
            oversized: self.counters.oversized,
            oversized_events: self.counters.oversized_events,
            unknown_method: self.counters.unknown_method,
            unknown_channel: self.counters.unknown_channel,
            stale_replies: self.counters.stale_replies,
            expired: self.counters.expired,
            clients_lost: self.counters.clients_lost,
            workers_lost: self.counters.workers_lost,
            workers_left: self.counters.workers_left,
            unauthenticated: self.counters.unauthenticated,
            replay_rejected: self.counters.replay_rejected,
            methods: self.methods.len(),
            request_bytes: self.request_bytes as u64,
            refused: self
                .counters
                .refused
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            dropped: self.drops.figures(),
        }
    }
}

/// Any connected worker that is not leaving, least loaded first (for built-ins).
fn pick_any(workers: &HashMap<Bytes, Worker>, candidates: &[Bytes]) -> Option<Bytes> {
    candidates
        .iter()
        .filter_map(|id| workers.get(id).filter(|w| !w.draining).map(|w| (id, w)))
        .min_by_key(|(_, w)| (w.in_flight(), w.last_used))
        .map(|(id, _)| id.clone())
}

/// True for the `ERR Unavailable` a node answers while shutting down, before running the
/// call (not the one it sends for a call it aborted at the end of its grace period).
fn refused_unrun(args: &[u8]) -> bool {
    let (name, message, _) = wire::parse_err_args(args);
    zmesh_core::ErrorKind::of_err(&name, &message) == Some(zmesh_core::ErrorKind::ShuttingDown)
}

#[cfg(test)]
mod tests {
    use zmesh_core::wire::worker::AnnouncedMethod;

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn ready(capacity: u32, idempotent: bool) -> Ready {
        let args = rmp_serde::to_vec_named(&((
            "w",
            capacity,
            100u64,
            vec![AnnouncedMethod::new("svc.m", "svc", idempotent)],
        ),))
        .expect("encodes");
        // Built through the public decoder, as a worker's READY would arrive.
        Ready::decode_args(&args).expect("valid READY")
    }

    /// The decoded event of a request `svc.m` from `client`.
    fn request(router: &mut Router, client: &str, now: Instant, out: &mut Outbox) -> MessageId {
        let id = MessageId::generate();
        let frame = wire::encode_event(&Header::zmesh_with_id(id.clone(), None), "svc.m", &[0x90]);
        let event = wire::decode_event(&frame).expect("decodes");
        router.handle_client(vec![b(client)], frame, event, now, out);
        id
    }

    /// Which worker each backend message goes to, and the event names sent to clients.
    fn drain(out: &mut Outbox) -> (Vec<Bytes>, Vec<String>) {
        let workers = out
            .backend
            .drain(..)
            .map(|m| m.message.into_vec().remove(0))
            .collect();
        let replies = out
            .frontend
            .drain(..)
            .map(|m| {
                let frame = m.message.into_vec().pop().expect("event frame");
                let event = wire::decode_event(&frame).expect("decodes");
                match event.name.as_ref() {
                    names::ERR => wire::parse_err_args(&event.args).0,
                    other => other.to_owned(),
                }
            })
            .collect();
        (workers, replies)
    }

    fn router_with(workers: &[(&str, u32, bool)], max_queue: usize) -> (Router, Instant) {
        let now = Instant::now();
        let mut router = Router::new("d".into(), DeviceConfig::default().max_queue(max_queue));
        let mut out = Outbox::default();
        for (id, capacity, idempotent) in workers {
            router.register(b(id), ready(*capacity, *idempotent), now, &mut out);
        }
        (router, now)
    }

    #[test]
    fn least_loaded_then_queue_then_overloaded() {
        let (mut router, now) = router_with(&[("a", 1, false), ("b", 2, false)], 1);
        let mut out = Outbox::default();
        for _ in 0..3 {
            request(&mut router, "c", now, &mut out);
        }
        let (sent, _) = drain(&mut out);
        // a (0/1) and b (0/2) tie on load: LRU order; then only b has room.
        assert_eq!(sent.len(), 3);
        assert_eq!(sent.iter().filter(|w| *w == &b("b")).count(), 2);
        request(&mut router, "c", now, &mut out);
        assert_eq!(drain(&mut out), (vec![], vec![]), "queued");
        request(&mut router, "c", now, &mut out);
        assert_eq!(drain(&mut out).1, vec!["Overloaded".to_owned()]);
        let stats = router.stats();
        assert_eq!(
            (
                stats.services["svc"].queued,
                stats.services["svc"].overloaded
            ),
            (1, 1)
        );
    }

    /// A worker's `BYE`, as it arrives on the backend.
    fn bye(router: &mut Router, worker: &str, now: Instant, out: &mut Outbox) {
        let frame = wire::encode_event(&Header::zmesh(None), proto::BYE, wire::EMPTY_ARRAY_ARGS);
        let event = wire::decode_event(&frame).expect("decodes");
        router.handle_worker(vec![b(worker)], frame, event, now, out);
    }

    #[test]
    fn a_worker_that_says_bye_then_disconnects_has_left_not_been_lost() {
        let (mut router, now) = router_with(&[("a", 4, true), ("b", 4, true)], 10);
        let mut out = Outbox::default();
        bye(&mut router, "a", now, &mut out);
        assert_eq!(
            router.handle_worker_gone(&b("a"), "disconnected", now, &mut out),
            Some(Departure::Left)
        );
        // Without a BYE, a disconnect is a loss (a crash closes the connection too).
        assert_eq!(
            router.handle_worker_gone(&b("b"), "disconnected", now, &mut out),
            Some(Departure::Lost)
        );
        assert_eq!(
            router.handle_worker_gone(&b("b"), "again", now, &mut out),
            None
        );
        let stats = router.stats();
        assert_eq!(
            (stats.workers_left, stats.workers_lost),
            (1, 1),
            "{stats:?}"
        );
    }

    #[test]
    fn a_worker_that_says_bye_then_goes_silent_is_lost() {
        let (mut router, now) = router_with(&[("a", 4, true)], 10);
        let mut out = Outbox::default();
        bye(&mut router, "a", now, &mut out);
        // Far past three of its 100 ms periods, with no heartbeat.
        router.poll_timers(now + Duration::from_secs(10), &mut out);
        let stats = router.stats();
        assert_eq!(stats.workers, 0, "declared dead");
        assert_eq!(
            (stats.workers_left, stats.workers_lost),
            (0, 1),
            "{stats:?}"
        );
    }

    #[test]
    fn lost_worker_requeues_idempotent_and_fails_the_rest() {
        for idempotent in [true, false] {
            let (mut router, now) = router_with(&[("a", 4, idempotent), ("b", 4, idempotent)], 10);
            let mut out = Outbox::default();
            for _ in 0..4 {
                request(&mut router, "c", now, &mut out);
            }
            let (sent, _) = drain(&mut out);
            let on_a = sent.iter().filter(|w| *w == &b("a")).count();
            assert_eq!(on_a, 2, "spread evenly");
            router.handle_worker_gone(&b("a"), "test", now, &mut out);
            let (sent, replies) = drain(&mut out);
            if idempotent {
                assert_eq!(sent, vec![b("b"), b("b")], "re-run on the survivor");
                assert!(replies.is_empty());
                assert_eq!(router.stats().services["svc"].redispatched, 2);
            } else {
                assert!(sent.is_empty());
                assert_eq!(replies, vec!["PeerLost".to_owned(), "PeerLost".to_owned()]);
                assert_eq!(router.stats().services["svc"].failed, 2);
            }
        }
    }

    #[test]
    fn silent_worker_is_dead_after_three_periods() {
        let (mut router, now) = router_with(&[("a", 4, false)], 10);
        let mut out = Outbox::default();
        router.poll_timers(now + Duration::from_millis(300), &mut out);
        assert_eq!(
            router.stats().workers,
            1,
            "three periods exactly: still alive"
        );
        router.poll_timers(now + Duration::from_millis(301), &mut out);
        assert_eq!(router.stats().workers, 0);
    }

    // ---------------------------------------------------------------------------------
    // Hostile workers and clients
    // ---------------------------------------------------------------------------------

    /// A READY from `name` with `capacity`, heartbeat `hb_ms` and `(method, service)`s.
    fn announce(name: &str, capacity: u32, hb_ms: u64, methods: &[(&str, &str)]) -> Ready {
        let methods: Vec<AnnouncedMethod> = methods
            .iter()
            .map(|(m, s)| AnnouncedMethod::new(*m, *s, false))
            .collect();
        let args = rmp_serde::to_vec_named(&((name, capacity, hb_ms, methods),)).expect("encodes");
        Ready::decode_args(&args).expect("valid READY")
    }

    /// A request for `method` from `client` (its frame padded to `size` bytes of args).
    fn call(
        router: &mut Router,
        client: &str,
        method: &str,
        size: usize,
        now: Instant,
        out: &mut Outbox,
    ) -> MessageId {
        let id = MessageId::generate();
        let mut args = vec![0x91, 0xc6];
        args.extend_from_slice(&u32::try_from(size).expect("small").to_be_bytes());
        args.resize(args.len() + size, 0);
        let frame = wire::encode_event(&Header::zmesh_with_id(id.clone(), None), method, &args);
        let event = wire::decode_event(&frame).expect("decodes");
        router.handle_client(vec![b(client)], frame, event, now, out);
        id
    }

    /// The `(name, message)` of every ERR sent to clients, and the other events' names.
    fn client_errors(out: &mut Outbox) -> Vec<(String, String)> {
        out.frontend
            .drain(..)
            .chain(out.unsealed_frontend.drain(..))
            .map(|m| {
                let frame = m.message.into_vec().pop().expect("event frame");
                let event = wire::decode_event(&frame).expect("decodes");
                if event.name == names::ERR {
                    let (name, message, _) = wire::parse_err_args(&event.args);
                    (name, message)
                } else {
                    (event.name.to_string(), String::new())
                }
            })
            .collect()
    }

    /// Names of the worker-protocol events sent unsealed to workers (`REFUSED`).
    fn refusals_to_workers(out: &mut Outbox) -> Vec<Bytes> {
        out.unsealed_backend
            .drain(..)
            .map(|m| m.message.into_vec().remove(0))
            .collect()
    }

    fn refused(router: &Router, reason: &str) -> u64 {
        router.stats().refused.get(reason).copied().unwrap_or(0)
    }

    #[test]
    fn announced_capacity_is_capped_so_a_rogue_gets_at_most_its_capped_slots() {
        let now = Instant::now();
        let config = DeviceConfig::default().max_worker_capacity(64);
        let mut router = Router::new("d".into(), config);
        let mut out = Outbox::default();
        router.register(
            b("real"),
            announce("real", 32, 100, &[("svc.m", "svc")]),
            now,
            &mut out,
        );
        router.register(
            b("rogue"),
            announce("rogue", u32::MAX, 100, &[("svc.m", "svc")]),
            now,
            &mut out,
        );
        assert_eq!(
            refused(&router, "capacity_capped"),
            1,
            "only the rogue's was lowered"
        );
        // 400 pipelined calls, none answered yet: the rogue holds at most its 64 slots.
        for _ in 0..400 {
            request(&mut router, "c", now, &mut out);
        }
        let (sent, _) = drain(&mut out);
        let to_rogue = sent.iter().filter(|w| *w == &b("rogue")).count();
        let to_real = sent.iter().filter(|w| *w == &b("real")).count();
        assert_eq!((to_rogue, to_real), (64, 32), "slots by capped capacity");
        assert_eq!(router.stats().services["svc"].queued, 400 - 96);
    }

    #[test]
    fn heartbeat_outside_the_accepted_range_is_refused() {
        let now = Instant::now();
        let config = DeviceConfig::default()
            .worker_heartbeat(Duration::from_millis(20), Duration::from_secs(60));
        let mut router = Router::new("d".into(), config);
        let mut out = Outbox::default();
        router.register(
            b("w1"),
            announce("w1", 4, 10, &[("svc.m", "svc")]),
            now,
            &mut out,
        );
        router.register(
            b("w2"),
            announce("w2", 4, 3_600_000, &[("svc.m", "svc")]),
            now,
            &mut out,
        );
        assert_eq!(
            refusals_to_workers(&mut out),
            vec![b("w1"), b("w2")],
            "REFUSED to both"
        );
        assert_eq!(refused(&router, "ready_heartbeat"), 2);
        assert_eq!(router.stats().workers, 0);
        assert_eq!(router.stats().methods, 0, "nothing routed");
        router.register(
            b("w3"),
            announce("w3", 4, 20, &[("svc.m", "svc")]),
            now,
            &mut out,
        );
        assert_eq!(
            router.stats().workers,
            1,
            "the shortest accepted period is accepted"
        );
    }

    #[test]
    fn a_method_is_never_moved_to_another_service_while_its_worker_lives() {
        let (mut router, now) = router_with(&[("real", 4, false)], 10);
        let mut out = Outbox::default();
        router.register(
            b("rogue"),
            announce("rogue", 1, 100, &[("svc.m", "evil")]),
            now,
            &mut out,
        );
        assert_eq!(refusals_to_workers(&mut out), vec![b("rogue")]);
        assert_eq!(refused(&router, "ready_remap"), 1);
        assert!(
            !router.stats().services.contains_key("evil"),
            "no service made for it"
        );
        // svc.m still goes to the real worker.
        request(&mut router, "c", now, &mut out);
        assert_eq!(drain(&mut out).0, vec![b("real")]);
        // A READY that contradicts itself is refused too.
        let torn = announce("w", 1, 100, &[("x.m", "x"), ("x.m", "y")]);
        router.register(b("w"), torn, now, &mut out);
        assert_eq!(refused(&router, "ready_remap"), 2);
        // Once the real worker is gone the name is free again.
        router.handle_worker_gone(&b("real"), "test", now, &mut out);
        router.register(
            b("new"),
            announce("new", 1, 100, &[("svc.m", "other")]),
            now,
            &mut out,
        );
        assert_eq!(router.stats().workers, 1);
        assert!(router.stats().services.contains_key("other"));
    }

    #[test]
    fn a_refused_reannouncement_unregisters_the_worker() {
        let (mut router, now) = router_with(&[("a", 4, false), ("b", 4, false)], 10);
        let mut out = Outbox::default();
        request(&mut router, "c", now, &mut out);
        let (sent, _) = drain(&mut out);
        let busy = sent[0].clone();
        // The busy worker now claims svc.m for another service: refused (b still serves
        // svc.m as svc), and the worker is dropped; its non-idempotent call fails.
        router.register(
            busy.clone(),
            announce("x", 4, 100, &[("svc.m", "evil")]),
            now,
            &mut out,
        );
        assert_eq!(router.stats().workers, 1);
        assert_eq!(client_errors(&mut out)[0].0, "PeerLost");
    }

    #[test]
    fn methods_and_services_go_with_their_last_worker() {
        let now = Instant::now();
        let mut router = Router::new("d".into(), DeviceConfig::default());
        let mut out = Outbox::default();
        let both = [("svc.m", "svc"), ("svc.n", "svc")];
        router.register(b("a"), announce("a", 1, 100, &both), now, &mut out);
        router.register(
            b("b"),
            announce("b", 1, 100, &[("svc.m", "svc")]),
            now,
            &mut out,
        );
        assert_eq!(router.stats().methods, 2);
        router.handle_worker_gone(&b("a"), "test", now, &mut out);
        assert_eq!(router.stats().methods, 1, "svc.n had only a");
        call(&mut router, "c", "svc.n", 0, now, &mut out);
        let errors = client_errors(&mut out);
        assert_eq!(errors[0].0, "NameError", "name kept for clients");
        assert_eq!(
            errors[0].1,
            "no worker connected to the device serves svc.n"
        );
        // A call queued when the last worker goes keeps its service until it ends.
        call(&mut router, "c", "svc.m", 0, now, &mut out);
        call(&mut router, "c", "svc.m", 0, now, &mut out);
        drain(&mut out);
        router.handle_worker_gone(&b("b"), "test", now, &mut out);
        // The running call failed (not idempotent); the queued one waits for a worker, so
        // its service is kept (with no worker) while the method is no longer routed.
        let stats = router.stats();
        assert_eq!((stats.methods, stats.open_calls), (0, 1));
        assert_eq!(stats.services["svc"].workers, 0);
        // The client goes: its queued call ends and nothing is left.
        router.handle_client_gone(&b("c"), now, &mut out);
        let stats = router.stats();
        assert_eq!((stats.open_calls, stats.request_bytes), (0, 0));
        assert!(router.services.is_empty() && router.methods.is_empty());
    }

    #[test]
    fn announcements_past_the_table_bounds_are_refused_and_reannouncing_does_not_grow() {
        let now = Instant::now();
        let config = DeviceConfig::default()
            .max_methods(6)
            .max_methods_per_worker(4)
            .max_services(100, 3);
        let mut router = Router::new("d".into(), config);
        let mut out = Outbox::default();
        let names: Vec<(String, String)> = (0..5)
            .map(|i| (format!("s{i}.m"), format!("s{i}")))
            .collect();
        let refs = |r: std::ops::Range<usize>| -> Vec<(&str, &str)> {
            names[r]
                .iter()
                .map(|(m, s)| (m.as_str(), s.as_str()))
                .collect()
        };
        router.register(b("a"), announce("a", 1, 100, &refs(0..5)), now, &mut out);
        assert_eq!(
            refused(&router, "ready_worker_bounds"),
            1,
            "5 methods > 4 per worker"
        );
        let four: Vec<(&str, &str)> = vec![
            ("s0.m", "s0"),
            ("s0.n", "s0"),
            ("s1.m", "s1"),
            ("s1.n", "s1"),
        ];
        router.register(b("a"), announce("a", 1, 100, &four), now, &mut out);
        assert_eq!(router.stats().methods, 4);
        // Announcing again on the same connection replaces: the table does not grow.
        for _ in 0..10 {
            router.register(b("a"), announce("a", 1, 100, &four), now, &mut out);
        }
        assert_eq!(router.stats().methods, 4);
        let other: Vec<(&str, &str)> = vec![("t.a", "t"), ("t.b", "t"), ("t.c", "t")];
        router.register(b("b"), announce("b", 1, 100, &other), now, &mut out);
        assert_eq!(refused(&router, "ready_table_full"), 1, "4 + 3 > 6");
        router.register(b("b"), announce("b", 1, 100, &other[..2]), now, &mut out);
        assert_eq!(router.stats().methods, 6);
        let services = refs(0..4);
        router.register(b("c"), announce("c", 1, 100, &services), now, &mut out);
        assert_eq!(
            refused(&router, "ready_worker_bounds"),
            2,
            "4 services > 3 per worker"
        );
        let long = "x".repeat(300);
        router.register(
            b("d"),
            announce("d", 1, 100, &[(long.as_str(), "x")]),
            now,
            &mut out,
        );
        router.register(
            b("e"),
            announce("e", 1, 100, &[("_zerorpc_inspect", "x")]),
            now,
            &mut out,
        );
        assert_eq!(refused(&router, "ready_name"), 2);
        // zmesh's own names, new and legacy, are reserved alike.
        for (worker, name) in [
            ("f", reserved::DEVICE_STATS),
            ("g", reserved::LEGACY_DEVICE_STATS),
            ("h", reserved::SNAPSHOT),
        ] {
            router.register(
                b(worker),
                announce(worker, 1, 100, &[(name, "x")]),
                now,
                &mut out,
            );
        }
        assert_eq!(refused(&router, "ready_name"), 5);
        // Leaving frees the table.
        router.handle_worker_gone(&b("a"), "test", now, &mut out);
        router.handle_worker_gone(&b("b"), "test", now, &mut out);
        assert_eq!(router.stats().methods, 0);
        assert!(router.services.is_empty());
    }

    #[test]
    fn held_request_bytes_are_bounded_and_freed_when_calls_end() {
        let now = Instant::now();
        let config = DeviceConfig::default()
            .max_message_size(1 << 20)
            .max_request_bytes(3 << 20);
        let mut router = Router::new("d".into(), config);
        let mut out = Outbox::default();
        router.register(
            b("w"),
            announce("w", 1, 100, &[("svc.m", "svc")]),
            now,
            &mut out,
        );
        // One running, two queued, the fourth passes 3 MiB.
        for _ in 0..4 {
            call(&mut router, "c", "svc.m", 1_000_000, now, &mut out);
        }
        let errors = client_errors(&mut out);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "Overloaded");
        assert!(
            errors[0].1.contains("limit is 3145728 bytes"),
            "{}",
            errors[0].1
        );
        assert_eq!(refused(&router, "request_bytes"), 1);
        let held = router.stats().request_bytes;
        assert!((3_000_000..3 << 20).contains(&held), "{held}");
        router.handle_client_gone(&b("c"), now, &mut out);
        assert_eq!(router.stats().request_bytes, 0);
    }

    #[test]
    fn refusals_to_one_connection_are_rate_limited() {
        let now = Instant::now();
        let config = DeviceConfig::default().refusals(10, 2);
        let mut router = Router::new("d".into(), config);
        let mut out = Outbox::default();
        for _ in 0..100 {
            call(&mut router, "flood", "nope", 0, now, &mut out);
        }
        assert_eq!(client_errors(&mut out).len(), 10, "the burst");
        assert_eq!(refused(&router, "suppressed"), 90);
        // Another connection has its own budget.
        call(&mut router, "other", "nope", 0, now, &mut out);
        assert_eq!(client_errors(&mut out)[0].0, "NameError");
        // Two a second come back after the burst.
        let later = now + Duration::from_secs(1);
        for _ in 0..5 {
            call(&mut router, "flood", "nope", 0, later, &mut out);
        }
        assert_eq!(client_errors(&mut out).len(), 2);
        // Full budgets are forgotten in a timer pass.
        router.poll_timers(now + Duration::from_secs(60), &mut out);
        assert!(router.buckets.is_empty());
    }
}
