//! Provides the device's routing state machine: which calls are open, which worker runs
//! each, the per-service queues, and worker and client liveness. Pure: every input carries
//! `now`, every output is a message pushed to an [`Outbox`]; no sockets, no clock reads.
//!
//! Routing follows the ZeroMQ Guide's Majordomo pattern (per-service queues, workers
//! announce what they serve) with least-loaded selection (in-flight calls relative to the
//! announced capacity, least recently used first on a tie), and liveness follows Paranoid
//! Pirate (heartbeats both ways, a worker silent for three of its periods is dead).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use zeromq::ZmqMessage;
use zmesh_core::wire::worker::{self as proto, Ready};
use zmesh_core::wire::{self, HEARTBEAT_ARGS, Header, MessageId, names};

use crate::config::DeviceConfig;
use crate::stats::{DeviceStats, ServiceStats};

/// The introspection method the device answers itself.
pub const STATS_METHOD: &str = "_zmesh_device_stats";
/// Silent heartbeat periods after which a worker is dead.
pub(crate) const WORKER_LIVENESS: u32 = 3;
/// The pseudo-service of forwarded `_zerorpc_*` built-ins (any worker answers them).
const BUILTINS: &str = "_zerorpc";

/// Messages the state machine wants sent, per socket.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) frontend: Vec<ZmqMessage>,
    pub(crate) backend: Vec<ZmqMessage>,
    /// Refusals for peers without the mesh key: sent as they are, never sealed (the peer
    /// could not open them), on the frontend (`ERR`) or backend (`REFUSED`).
    pub(crate) unsealed_frontend: Vec<ZmqMessage>,
    pub(crate) unsealed_backend: Vec<ZmqMessage>,
}

/// A call: the client connection and the request's `message_id`.
type Key = (Bytes, MessageId);

struct MethodRoute {
    service: Arc<str>,
    idempotent: bool,
}

#[derive(Default)]
struct ServiceState {
    queue: VecDeque<Key>,
    workers: Vec<Bytes>,
    dispatched: u64,
    completed: u64,
    failed: u64,
    overloaded: u64,
    redispatched: u64,
}

struct Worker {
    name: String,
    services: Vec<Arc<str>>,
    capacity: u32,
    channels: HashSet<Key>,
    heartbeat: Duration,
    last_heard: Instant,
    last_hb_sent: Instant,
    last_used: u64,
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
    opened: Instant,
    last_heard: Instant,
    heard_any: bool,
    last_hb_client: Instant,
    last_hb_worker: Instant,
}

/// Device-wide counters.
#[derive(Debug, Default)]
struct Counters {
    malformed: u64,
    oversized_events: u64,
    unknown_method: u64,
    unknown_channel: u64,
    stale_replies: u64,
    expired: u64,
    clients_lost: u64,
    workers_lost: u64,
    unauthenticated: u64,
    replay_rejected: u64,
}

/// The routing state. One per device, behind a lock shared by its socket tasks.
pub(crate) struct Router {
    name: String,
    config: DeviceConfig,
    methods: HashMap<String, MethodRoute>,
    services: HashMap<Arc<str>, ServiceState>,
    workers: HashMap<Bytes, Worker>,
    channels: HashMap<Key, Channel>,
    seq: u64,
    counters: Counters,
}

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

fn err_event(request: &MessageId, name: &str, message: &str) -> Bytes {
    let header = Header::zmesh(Some(request.clone()));
    wire::encode_event(&header, names::ERR, &wire::err_args(name, message, None))
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
            seq: 0,
            counters: Counters::default(),
        }
    }

    pub(crate) fn count_malformed(&mut self) {
        self.counters.malformed += 1;
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
            .map(|w| w.heartbeat)
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
            out.frontend.push(to_route(&route, ok_event(&id, &value)));
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
            None if name.starts_with("_zerorpc_") => (Arc::from(BUILTINS), true),
            None => {
                self.counters.unknown_method += 1;
                tracing::debug!(method = name, "unknown method");
                out.frontend
                    .push(to_route(&route, err_event(&id, "NameError", name)));
                return;
            }
        };
        let key = (route[0].clone(), id.clone());
        if self.channels.contains_key(&key) {
            let message = "a call with this message_id is already running";
            out.frontend
                .push(to_route(&route, err_event(&id, "ProtocolError", message)));
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
                    out.frontend
                        .push(to_route(&route, err_event(&id, "Unavailable", message)));
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
                    out.frontend
                        .push(to_route(&route, err_event(&id, "Overloaded", &message)));
                    return;
                }
            }
        };
        self.channels.insert(
            key.clone(),
            Channel {
                route,
                request: frame,
                service: service.clone(),
                idempotent,
                worker: None,
                replied: false,
                deadline,
                opened: now,
                last_heard: now,
                heard_any: false,
                last_hb_client: now,
                last_hb_worker: now,
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

    /// The value of a built-in the device answers itself.
    fn answer_builtin(&self, name: &str) -> Option<Vec<u8>> {
        let encoded = match name {
            "_zerorpc_ping" => rmp_serde::to_vec(&("pong", &self.name)),
            "_zerorpc_name" => rmp_serde::to_vec(&self.name),
            "_zerorpc_list" => {
                let mut list: Vec<&str> = self
                    .methods
                    .keys()
                    .map(String::as_str)
                    .filter(|m| !m.starts_with('_'))
                    .collect();
                list.sort_unstable();
                rmp_serde::to_vec(&list)
            }
            STATS_METHOD => rmp_serde::to_vec_named(&self.stats()),
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
        c.last_heard = now;
        c.heard_any = true;
        match name {
            // The device heartbeats each leg itself.
            names::HEARTBEAT => {}
            names::CANCEL => self.drop_channel(&key, Some(frame), now, out),
            // Credit and anything else for the call go to its worker; before dispatch the
            // client has seen no stream item, so it has no credit to grant yet.
            _ => {
                if let Some(w) = &c.worker {
                    out.backend.push(to_worker(w, &c.route, frame));
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
    }

    /// Ends a call the client abandoned; its worker (if any) gets a cancel (`cancel` is the
    /// client's own cancel event, else one is made).
    fn drop_channel(&mut self, key: &Key, cancel: Option<Bytes>, now: Instant, out: &mut Outbox) {
        let Some(c) = self.channels.remove(key) else {
            return;
        };
        match &c.worker {
            Some(w) => {
                let cancel = cancel.unwrap_or_else(|| {
                    let header = Header::zmesh(Some(key.1.clone()));
                    wire::encode_event(&header, names::CANCEL, wire::EMPTY_ARRAY_ARGS)
                });
                out.backend.push(to_worker(w, &c.route, cancel));
                self.release(key, w, now, out);
            }
            None => {
                if let Some(svc) = self.services.get_mut(&c.service) {
                    svc.queue.retain(|k| k != key);
                }
            }
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
            out.backend.push(to_route(
                std::slice::from_ref(worker),
                control_event(proto::RESET, wire::EMPTY_ARRAY_ARGS),
            ));
            return;
        };
        w.last_heard = now;
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
                out.frontend.push(to_route(client_route, frame));
                if let Some(svc) = self.services.get_mut(&c.service) {
                    svc.completed += 1;
                }
                self.channels.remove(&key);
                self.release(&key, worker, now, out);
            }
            _ => {
                if event.name == names::STREAM {
                    c.replied = true;
                }
                out.frontend.push(to_route(client_route, frame));
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
                Some(w) => w.last_heard = now,
                None => out.backend.push(to_route(
                    std::slice::from_ref(worker),
                    control_event(proto::RESET, wire::EMPTY_ARRAY_ARGS),
                )),
            },
            proto::BYE => {
                if let Some(w) = self.workers.get_mut(worker) {
                    tracing::info!(worker = %w.name, "worker is leaving; routing no new calls to it");
                    w.last_heard = now;
                    w.draining = true;
                }
            }
            other => {
                self.counters.malformed += 1;
                tracing::debug!(event = other, "unexpected control event from a worker");
            }
        }
    }

    fn register(&mut self, id: Bytes, ready: Ready, now: Instant, out: &mut Outbox) {
        let mut services: Vec<Arc<str>> = Vec::new();
        for m in &ready.methods {
            let service = match self.services.get_key_value(m.service.as_str()) {
                Some((name, _)) => name.clone(),
                None => {
                    let name: Arc<str> = Arc::from(m.service.as_str());
                    self.services.insert(name.clone(), ServiceState::default());
                    name
                }
            };
            if !services.contains(&service) {
                services.push(service.clone());
            }
            if self.methods.len() >= self.config.max_methods && !self.methods.contains_key(&m.name)
            {
                tracing::warn!(method = %m.name, "method table full; not routing this method");
                continue;
            }
            self.methods.insert(
                m.name.clone(),
                MethodRoute {
                    service,
                    idempotent: m.idempotent,
                },
            );
        }
        let channels = match self.workers.remove(&id) {
            // Announced again on the same connection: keep its calls.
            Some(old) => {
                self.unlist(&id, &old.services);
                old.channels
            }
            None => HashSet::new(),
        };
        for service in &services {
            if let Some(svc) = self.services.get_mut(service) {
                svc.workers.push(id.clone());
            }
        }
        tracing::info!(worker = %ready.name, services = ?services, capacity = ready.capacity, "worker ready");
        self.workers.insert(
            id,
            Worker {
                name: ready.name,
                services: services.clone(),
                capacity: ready.capacity,
                channels,
                heartbeat: Duration::from_millis(ready.heartbeat_ms),
                last_heard: now,
                last_hb_sent: now,
                last_used: 0,
                draining: false,
            },
        );
        for service in &services {
            self.pump(service, now, out);
        }
    }

    fn unlist(&mut self, id: &Bytes, services: &[Arc<str>]) {
        for service in services {
            if let Some(svc) = self.services.get_mut(service) {
                svc.workers.retain(|w| w != id);
            }
        }
    }

    /// A worker is gone (disconnected or silent): re-dispatch its idempotent calls that
    /// have sent nothing yet, fail the others with `PeerLost`.
    pub(crate) fn handle_worker_gone(
        &mut self,
        id: &Bytes,
        reason: &str,
        now: Instant,
        out: &mut Outbox,
    ) {
        let Some(w) = self.workers.remove(id) else {
            return;
        };
        self.counters.workers_lost += 1;
        self.unlist(id, &w.services);
        let mut requeued = 0usize;
        let mut failed = 0usize;
        for key in &w.channels {
            let Some(c) = self.channels.get_mut(key) else {
                continue;
            };
            c.worker = None;
            if c.idempotent && !c.replied {
                requeued += 1;
                if let Some(svc) = self.services.get_mut(&c.service) {
                    svc.redispatched += 1;
                    svc.queue.push_front(key.clone());
                } else {
                    // A forwarded built-in: any other worker will do.
                    self.retry_builtin(key, now, out);
                }
            } else if let Some(c) = self.channels.remove(key) {
                failed += 1;
                if let Some(svc) = self.services.get_mut(&c.service) {
                    svc.failed += 1;
                }
                let message = format!("worker {} was lost during the call: {reason}", w.name);
                out.frontend
                    .push(to_route(&c.route, err_event(&key.1, "PeerLost", &message)));
            }
        }
        tracing::warn!(worker = %w.name, reason, requeued, failed, "worker lost");
        for service in &w.services {
            self.pump(service, now, out);
        }
    }

    fn retry_builtin(&mut self, key: &Key, now: Instant, out: &mut Outbox) {
        let all: Vec<Bytes> = self.workers.keys().cloned().collect();
        match pick_any(&self.workers, &all) {
            Some(w) => self.assign(key.clone(), &w, now, out),
            None => {
                if let Some(c) = self.channels.remove(key) {
                    let message = "no worker is connected to the device";
                    out.frontend.push(to_route(
                        &c.route,
                        err_event(&key.1, "Unavailable", message),
                    ));
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
        match self.services.get_mut(&service) {
            Some(svc) => {
                svc.redispatched += 1;
                svc.queue.push_front(key.clone());
                self.pump(&service, now, out);
            }
            None => self.retry_builtin(key, now, out),
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
        c.last_hb_worker = now;
        self.seq += 1;
        w.last_used = self.seq;
        out.backend
            .push(to_worker(worker, &c.route, c.request.clone()));
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
            .filter(|(_, w)| {
                now.saturating_duration_since(w.last_heard) > w.heartbeat * WORKER_LIVENESS
            })
            .map(|(id, w)| (id.clone(), w.heartbeat * WORKER_LIVENESS))
            .collect();
        for (id, silence) in dead {
            let reason = format!("no heartbeat for {silence:?}");
            self.handle_worker_gone(&id, &reason, now, out);
        }
        for (id, w) in &mut self.workers {
            if now.saturating_duration_since(w.last_hb_sent) >= w.heartbeat {
                w.last_hb_sent = now;
                out.backend.push(to_route(
                    std::slice::from_ref(id),
                    control_event(proto::DEVICE_HEARTBEAT, HEARTBEAT_ARGS),
                ));
            }
        }

        let period = self.config.heartbeat;
        let mut silent = Vec::new();
        let mut expired = Vec::new();
        for (key, c) in &mut self.channels {
            let last = if c.heard_any {
                c.last_heard
            } else {
                c.opened + period
            };
            if now.saturating_duration_since(last) > 2 * period {
                silent.push(key.clone());
                continue;
            }
            if c.worker.is_none() && c.deadline.is_some_and(|d| now >= d) {
                expired.push(key.clone());
                continue;
            }
            if now.saturating_duration_since(c.last_hb_client) >= period {
                c.last_hb_client = now;
                let header = Header::zmesh(Some(key.1.clone()));
                let hb = wire::encode_event(&header, names::HEARTBEAT, HEARTBEAT_ARGS);
                out.frontend.push(to_route(&c.route, hb));
            }
            if let Some(w) = c
                .worker
                .as_ref()
                .and_then(|id| self.workers.get(id).map(|w| (id, w)))
            {
                if now.saturating_duration_since(c.last_hb_worker) >= w.1.heartbeat {
                    c.last_hb_worker = now;
                    let header = Header::zmesh(Some(key.1.clone()));
                    let hb = wire::encode_event(&header, names::HEARTBEAT, HEARTBEAT_ARGS);
                    out.backend.push(to_worker(w.0, &c.route, hb));
                }
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
            oversized_events: self.counters.oversized_events,
            unknown_method: self.counters.unknown_method,
            unknown_channel: self.counters.unknown_channel,
            stale_replies: self.counters.stale_replies,
            expired: self.counters.expired,
            clients_lost: self.counters.clients_lost,
            workers_lost: self.counters.workers_lost,
            unauthenticated: self.counters.unauthenticated,
            replay_rejected: self.counters.replay_rejected,
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
    name == "Unavailable" && message == proto::SHUTTING_DOWN
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
            .map(|m| m.into_vec().remove(0))
            .collect();
        let replies = out
            .frontend
            .drain(..)
            .map(|m| {
                let frame = m.into_vec().pop().expect("event frame");
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
}
