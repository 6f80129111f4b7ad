//! Provides the node's one adapter between the ROUTER socket and the handlers: a reader task
//! that decodes every message and either routes it to an open channel or opens a call, the
//! tasks of calls that do not finish at once, a heartbeat sweeper, a writer for replies the
//! reader itself produces, and a watcher for client disconnects.
//!
//! A new call's handler is polled once by the reader. If it is done, its reply is handed to
//! the client's send queue right there (no task, no channel entry, no timer: the common fast
//! path); otherwise the call moves to its own task with a channel entry for heartbeats,
//! credit and cancel, and a deadline timer. The reader never waits on a send: a send that
//! cannot complete at once finishes in a task, so a slow client only delays its own calls.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::Either;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, field};
use zeromq::{RouterRecvHalf, SocketEvent, TrySendError, ZmqMessage};
use zmesh_proto::ErrorKind;
use zmesh_proto::admission::{self, Counter, Refusal};
use zmesh_proto::error::SHUTTING_DOWN;
use zmesh_proto::liveness::Liveness;

use super::Shared;
use super::refusals::{RefusalClass, RefusalGate, Verdict};
use super::registry::{Channel, Credit, NodeLoad, OpenError};
use super::sender::{self, Keyed, Seal, Sender};
use crate::read_turns::ReadTurns;
use crate::service::{HandlerError, Reply};
use crate::stats::{self, MethodStats};
use crate::trust::{self, Kind, Rejection};
use crate::wire::{self, HEARTBEAT_ARGS, Header, MessageId, NIL_ARGS, err_args, names};

/// Replies that may wait at once for a client's full send queue (see [`send_now`]).
const MAX_STALLED_SENDS: usize = 10_000;
/// How long shutdown waits on one client's full send queue to tell it its call was aborted.
const ABORT_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Refusal state of connections not refused for this long is dropped by the sweeper.
const REFUSAL_IDLE: Duration = Duration::from_secs(30);

/// One bound ROUTER's receive side and how its messages are to be read.
pub(super) struct Inlet {
    pub(super) recv: RouterRecvHalf,
    pub(super) monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    pub(super) inbound: Inbound,
}

/// How a socket's incoming messages are read.
#[derive(Clone, Debug)]
pub(super) enum Inbound {
    /// A node without a mesh key: plain zerorpc events.
    Plain,
    /// A keyed node's plain endpoint: plain events, and replies go back unsealed.
    PlainOfKeyed,
    /// A keyed endpoint: every event must open with the mesh key.
    Sealed(Arc<Keyed>),
}

pub(super) fn spawn_tasks(
    shared: Arc<Shared>,
    inlets: Vec<Inlet>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let (control, mut tasks) = spawn_support(&shared, stop.clone());
    for inlet in inlets {
        tasks.push(tokio::spawn(read_loop(
            shared.clone(),
            inlet.recv,
            control.clone(),
            inlet.inbound.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(watch_disconnects(
            control.clone(),
            inlet.monitor,
            inlet.inbound,
        )));
    }
    tasks
}

/// Starts the task every node runs whatever socket it serves from (the heartbeat sweeper)
/// and returns the node's [`Control`].
pub(super) fn spawn_support(
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> (Control, Vec<JoinHandle<()>>) {
    let control = Control {
        shared: shared.clone(),
        gate: Arc::new(std::sync::Mutex::new(RefusalGate::new(
            shared.config.refusal_policy(),
        ))),
        gate_in_use: Arc::new(AtomicBool::new(false)),
    };
    let tasks = vec![tokio::spawn(sweep_loop(control.clone(), stop))];
    (control, tasks)
}

/// How the node sends what it originates itself: refusals (`ERR`s for bad or unroutable
/// requests), heartbeats and a worker's messages to its device.
///
/// None of these ever waits. Each goes straight to its peer's send queue with `try_send`,
/// from whichever task produced it; when that peer's queue is full the message is dropped
/// for that peer alone and counted (`control_dropped_full`). There is no shared queue, so a
/// client that stops reading cannot delay another client's heartbeats or errors, and error
/// traffic cannot starve heartbeats. Refusals also pass a per-connection [`RefusalGate`].
#[derive(Clone)]
pub(super) struct Control {
    shared: Arc<Shared>,
    gate: Arc<std::sync::Mutex<RefusalGate>>,
    /// Whether the gate tracks any connection (so accepted calls need not lock it).
    gate_in_use: Arc<AtomicBool>,
}

impl Control {
    /// Sends a node-originated message (a heartbeat, a message to the device) now or not
    /// at all.
    pub(super) fn send(&self, message: ZmqMessage) {
        self.try_send(message, Seal::AsUsual);
    }

    fn try_send(&self, message: ZmqMessage, seal: Seal) {
        let counters = &self.shared.counters;
        match self.shared.sender.try_send(message, seal) {
            Ok(()) => {}
            Err(TrySendError::WouldBlock(_)) => {
                let n = counters
                    .control_dropped_full
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n,
                        "a peer is not reading; dropping the node's messages to it"
                    );
                }
            }
            Err(TrySendError::Failed(e)) => {
                counters
                    .control_dropped_gone
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "control message not delivered");
            }
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, RefusalGate> {
        // Poisoning only means a panic elsewhere while updating counts; they are still valid.
        self.gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a bad message from `peer` that gets no reply; closes the connection when it
    /// has sent garbage for too long.
    fn unanswered_garbage(&self, peer: &Bytes) {
        self.judge(peer, |gate, now| gate.note_garbage(peer, now));
    }

    /// Whether a refusal to `route`'s connection goes out, after the gate's verdict; closes
    /// the connection when it has sent garbage for too long.
    fn admit_refusal(&self, route: &[Bytes], class: RefusalClass) -> bool {
        match route.first() {
            Some(peer) => self.judge(peer, |gate, now| gate.refuse(peer, class, now)),
            None => true,
        }
    }

    /// Applies the gate's verdict on `peer`: whether to send.
    fn judge(
        &self,
        peer: &Bytes,
        decide: impl FnOnce(&mut RefusalGate, Instant) -> Verdict,
    ) -> bool {
        let verdict = {
            let mut gate = self.gate();
            let verdict = decide(&mut gate, Instant::now());
            self.gate_in_use.store(!gate.is_empty(), Ordering::Relaxed);
            verdict
        };
        let counters = &self.shared.counters;
        match verdict {
            Verdict::Send => true,
            Verdict::Suppress => {
                counters.refusals_suppressed.fetch_add(1, Ordering::Relaxed);
                false
            }
            Verdict::Disconnect => {
                counters.garbage_disconnects.fetch_add(1, Ordering::Relaxed);
                let closed = self.shared.sender.disconnect(peer);
                tracing::warn!(peer = %PeerId(peer), closed, "closing a connection that keeps sending bad requests");
                false
            }
        }
    }

    /// A call from `peer` was accepted: it is not (only) sending garbage. One atomic load
    /// on the hot path while no connection has been refused lately.
    fn accepted(&self, peer: &Bytes) {
        if self.gate_in_use.load(Ordering::Relaxed) {
            let mut gate = self.gate();
            gate.accepted(peer);
            self.gate_in_use.store(!gate.is_empty(), Ordering::Relaxed);
        }
    }

    /// The connection closed: forget its refusal state.
    pub(super) fn forget(&self, peer: &Bytes) {
        self.gate().forget(peer);
    }

    fn send_err(
        &self,
        route: &[Bytes],
        request: &MessageId,
        class: RefusalClass,
        kind: ErrorKind,
        message: &str,
    ) {
        self.refuse(route, request, class, kind, message, Seal::AsUsual);
    }

    /// An `ERR` that goes out unsealed, to a peer refused for not holding the mesh key.
    fn send_unsealed_err(
        &self,
        route: &[Bytes],
        request: &MessageId,
        kind: ErrorKind,
        message: &str,
    ) {
        self.refuse(
            route,
            request,
            RefusalClass::Garbage,
            kind,
            message,
            Seal::Never,
        );
    }

    fn refuse(
        &self,
        route: &[Bytes],
        request: &MessageId,
        class: RefusalClass,
        kind: ErrorKind,
        message: &str,
        seal: Seal,
    ) {
        if !self.admit_refusal(route, class) {
            return;
        }
        let header = Header::zmesh(Some(request.clone()));
        let event =
            wire::encode_event(&header, names::ERR, &err_args(kind.as_str(), message, None));
        self.try_send(wire::join_frames(route, event), seal);
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut recv: RouterRecvHalf,
    control: Control,
    inbound: Inbound,
    mut stop: watch::Receiver<bool>,
) {
    let warn = RateLimitedWarn::default();
    // Made once, not per message: the read loop is the node's hot path.
    let mut stopped = std::pin::pin!(stop.changed());
    let mut turns = ReadTurns::default();
    loop {
        turns.handled_one().await;
        let message = tokio::select! {
            biased;
            m = std::future::poll_fn(|cx| recv.poll_recv(cx)) => m,
            _ = &mut stopped => break,
        };
        match message {
            Ok(message) => handle_message(&shared, &control, &warn, message.into_vec(), &inbound),
            Err(e) => {
                tracing::debug!(error = %e, "router recv failed");
                // Not expected in steady state; avoid a hot loop if it repeats.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Logs bad input at `debug` always and at `warn` at most once a second, so a flood of
/// garbage cannot turn into a flood of log lines.
#[derive(Default)]
pub(super) struct RateLimitedWarn {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarn {
    pub(super) fn bad_input(&self, peer: &Bytes, what: &dyn std::fmt::Display) {
        tracing::debug!(peer = %PeerId(peer), problem = %what, "bad input");
        let now = process_millis();
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(peer = %PeerId(peer), problem = %what, suppressed, "bad input from peer");
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn process_millis() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Hex form of a connection identity for logs.
struct PeerId<'a>(&'a Bytes);

impl std::fmt::Display for PeerId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

pub(super) fn handle_message(
    shared: &Arc<Shared>,
    control: &Control,
    warn: &RateLimitedWarn,
    frames: Vec<Bytes>,
    inbound: &Inbound,
) {
    let mut envelope = match admission::envelope(frames, shared.config.max_message_size) {
        Ok(envelope) => envelope,
        Err((refusal, mut route)) => {
            if let Some(peer) = local_peer(inbound, &mut route) {
                refuse_admission(shared, control, warn, &peer, &route, &refusal);
            } else {
                count(shared, &refusal);
            }
            return;
        }
    };
    // Admission refuses a message without a route, so there always is a peer here.
    let Some(peer) = local_peer(inbound, &mut envelope.route) else {
        return;
    };
    match inbound {
        Inbound::Plain if trust::envelope::is_sealed(&envelope.event) => {
            let refusal = admission::sealed_without_key(trust::refused_request(&envelope.event));
            refuse_admission(shared, control, warn, &peer, &envelope.route, &refusal);
            return;
        }
        Inbound::Plain => {}
        Inbound::PlainOfKeyed => {}
        Inbound::Sealed(keyed) => match keyed.trust.open_slot(&envelope.event, Kind::Request) {
            Ok((event, slot)) => {
                keyed.note_key_slot(&peer, slot);
                envelope.event = event;
            }
            Err(rejection) => {
                reject(shared, control, warn, &peer, &envelope, &rejection);
                return;
            }
        },
    }
    let event = match admission::decode(&envelope.event) {
        Ok(event) => event,
        Err(refusal) => {
            refuse_admission(shared, control, warn, &peer, &envelope.route, &refusal);
            return;
        }
    };
    match &event.header.response_to {
        Some(channel) => handle_channel_event(shared, &peer, channel, &event.name, &event.args),
        None => {
            let size = envelope.event.len();
            open_call(shared, control, warn, peer, envelope.route, event, size)
        }
    }
}

/// The connection a message came from, the first routing frame (the ROUTER puts the
/// connection's identity there). A connection to a plain endpoint is plain from its first
/// message on, whatever that message is: its route names the plain socket, so replies to it
/// (an `ERR` for an oversized first message included) go out there, and it never shares an
/// identity with a keyed connection (see `sender::plain_route_id`).
fn local_peer(inbound: &Inbound, route: &mut [Bytes]) -> Option<Bytes> {
    let first = route.first_mut()?;
    if let Inbound::PlainOfKeyed = inbound {
        *first = sender::plain_route_id(first);
    }
    Some(first.clone())
}

/// Counts a message admission refused in the one counter of its reason.
fn count(shared: &Shared, refusal: &Refusal) {
    let counter = match refusal.counter() {
        Counter::Malformed => &shared.counters.malformed,
        Counter::Oversized => &shared.counters.oversized,
        Counter::Unauthenticated => &shared.counters.unauthenticated,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Counts and traces a message admission refused, and answers it when it is an
/// addressable request.
#[cold]
fn refuse_admission(
    shared: &Shared,
    control: &Control,
    warn: &RateLimitedWarn,
    peer: &Bytes,
    route: &[Bytes],
    refusal: &Refusal,
) {
    count(shared, refusal);
    warn.bad_input(peer, refusal);
    match refusal.answer() {
        Some(answer) => control.send_err(
            route,
            answer.request,
            RefusalClass::Garbage,
            answer.kind,
            &answer.message,
        ),
        None => control.unanswered_garbage(peer),
    }
}

/// Counts and traces a message refused by the mesh key, and answers an unsealed `ERR` when
/// the request can be addressed: by the clear id of a sealed frame, or by the header of a
/// plain zerorpc request (a stock client on a keyed endpoint learns why it is refused).
#[cold]
fn reject(
    shared: &Shared,
    control: &Control,
    warn: &RateLimitedWarn,
    peer: &Bytes,
    envelope: &wire::Envelope,
    rejection: &Rejection,
) {
    let counter = match rejection {
        Rejection::Replayed(_) => &shared.counters.replayed_messages,
        _ => &shared.counters.unauthenticated,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    warn.bad_input(peer, rejection);
    match trust::refused_request(&envelope.event) {
        Some(request) => control.send_unsealed_err(
            &envelope.route,
            &request,
            rejection.kind(),
            &rejection.to_string(),
        ),
        None => control.unanswered_garbage(peer),
    }
}

/// Routes a heartbeat, credit grant or cancel to its open channel.
fn handle_channel_event(
    shared: &Shared,
    peer: &Bytes,
    channel: &MessageId,
    name: &str,
    args: &[u8],
) {
    let registry = &shared.registry;
    if !registry.heard(peer, channel, Instant::now()) {
        // zerorpc logs and drops these too: typically a heartbeat racing the final reply.
        shared
            .counters
            .unknown_channel
            .fetch_add(1, Ordering::Relaxed);
        tracing::trace!(event = name, channel = %channel, "event for a channel that is not open");
        return;
    }
    match name {
        names::HEARTBEAT => {}
        names::MORE => match (wire::parse_more_args(args), registry.credit(peer, channel)) {
            (Some(n), Some(credit)) => credit.grant(n),
            (None, _) => tracing::debug!(channel = %channel, "ignoring malformed _zpc_more"),
            (Some(_), None) => {}
        },
        names::CANCEL => {
            if let Some(closed) = registry.close(peer, channel) {
                shared.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                if let Some(abort) = closed.abort {
                    abort.abort();
                }
                tracing::debug!(channel = %channel, "call cancelled by the client");
            }
        }
        other => {
            tracing::debug!(event = other, channel = %channel, "ignoring unexpected event on a channel")
        }
    }
}

fn open_call(
    shared: &Arc<Shared>,
    control: &Control,
    warn: &RateLimitedWarn,
    peer: Bytes,
    route: Vec<Bytes>,
    event: wire::Event,
    size: usize,
) {
    let header = event.header;
    if !shared.accepting.load(Ordering::Relaxed) {
        control.send_err(
            &route,
            &header.message_id,
            RefusalClass::Load,
            ErrorKind::ShuttingDown,
            SHUTTING_DOWN,
        );
        return;
    }
    let Some(method) = shared.methods.get(event.name.as_ref()) else {
        warn.bad_input(&peer, &format_args!("unknown method {:?}", event.name));
        control.send_err(
            &route,
            &header.message_id,
            RefusalClass::Garbage,
            ErrorKind::NameError,
            &event.name,
        );
        return;
    };
    // A repeat of a request that already ran here is answered from the reply cache.
    let request_key = if method.streaming {
        None
    } else {
        shared.replies.key(&header, &event.name)
    };
    let now = Instant::now();
    let deadline = match header.deadline_ms {
        Some(0) => {
            // The caller has already given up; running the call would only waste work.
            shared.counters.expired.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(method = %event.name, "dropping request whose deadline has passed");
            return;
        }
        Some(ms) => Some(now + Duration::from_millis(ms)),
        None => None,
    };
    // Built-ins answer from static data and bypass the limits, so a health check or a
    // client's connection ping is never refused (or counted) as load.
    let builtin = crate::reserved::is_zerorpc_builtin(&event.name);
    let permit = if builtin {
        None
    } else {
        let Ok(permit) = shared.concurrency.clone().try_acquire_owned() else {
            shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "node {} is at its limit of {} concurrent calls",
                shared.name, shared.config.max_concurrent_calls
            );
            control.send_err(
                &route,
                &header.message_id,
                RefusalClass::Load,
                ErrorKind::Overloaded,
                &message,
            );
            return;
        };
        let load = NodeLoad {
            // The permit just taken included: it is this call's.
            in_flight: shared.config.max_concurrent_calls - shared.concurrency.available_permits(),
            limit: shared.config.max_concurrent_calls,
        };
        let admitted = shared.registry.admit(
            &peer,
            &header.message_id,
            size,
            shared.config.peer_limits(),
            load,
        );
        if let Err(refusal) = admitted {
            refuse(shared, control, &route, &header.message_id, refusal);
            return;
        }
        Some(permit)
    };
    shared.counters.calls.fetch_add(1, Ordering::Relaxed);
    control.accepted(&peer);

    let reply_to = ReplyTo {
        sealer: shared.sender.sealer_for(&route),
        next_seq: AtomicU32::new(0),
        route,
        request_id: header.message_id,
    };
    let span = tracing::info_span!(
        "zmesh.call",
        method = %event.name,
        id = %reply_to.request_id,
        peer = %PeerId(&peer),
        outcome = field::Empty,
        duration_us = field::Empty,
    );
    let started = Instant::now();

    // Fast path: most handlers finish on their first poll, so poll once right here and
    // answer at once, with no task, no channel entry and no timer. The no-op waker is fine:
    // a handler that is not ready is moved into its own task, whose first poll registers
    // the real waker.
    let first_poll = span.in_scope(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut future = shared
                .replies
                .run(request_key, || (method.handler)(event.args));
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(result) => Ok(result),
                Poll::Pending => Err(future),
            }
        }))
    });
    let future = match first_poll {
        Ok(Ok(Ok(Reply::Value(value)))) => {
            send_now(shared, reply_to.ok(shared, &event.name, &value));
            record(&span, &method.stats, Outcome::Ok, started);
            return;
        }
        Ok(Ok(Err(e))) => {
            send_now(shared, reply_to.handler_err(&e));
            record(&span, &method.stats, Outcome::Error, started);
            return;
        }
        Err(panic) => {
            send_now(shared, reply_to.panic(&event.name, panic));
            record(&span, &method.stats, Outcome::Panic, started);
            return;
        }
        Ok(Ok(Ok(Reply::Stream(stream)))) => {
            futures::future::ready(Ok(Reply::Stream(stream))).boxed()
        }
        Ok(Err(pending)) => pending,
    };

    // Slow path: the call gets a task, a channel entry (heartbeats, credit, cancel) and a
    // deadline timer.
    let credit = method.streaming.then(|| Arc::new(Credit::new()));
    let channel = Channel {
        route: reply_to.route.clone(),
        abort: None,
        credit: credit.clone(),
        liveness: Liveness::channel(shared.config.heartbeat, now),
        size,
    };
    let request_id = reply_to.request_id.clone();
    let mut call = Call {
        registered: false,
        shared: shared.clone(),
        peer: peer.clone(),
        reply_to,
        method_name: event.name.into_owned(),
        stats: method.stats.clone(),
        finished: false,
        deadline,
        credit,
        started,
        _permit: permit,
    };
    let opened = shared.registry.open(
        &peer,
        request_id.clone(),
        channel,
        shared.config.peer_limits(),
        || {
            call.registered = true;
            tokio::spawn(call.run(future).instrument(span)).abort_handle()
        },
    );
    if let Err((refusal, refused)) = opened {
        // Another call raced in between `admit` and here.
        refuse(shared, control, &refused.route, &request_id, refusal);
    }
}

/// Answers a request the registry would not open.
fn refuse(
    shared: &Shared,
    control: &Control,
    route: &[Bytes],
    request: &MessageId,
    why: OpenError,
) {
    let limit = match why {
        OpenError::PeerCalls => format!("{} concurrent calls", shared.config.max_calls_per_peer),
        OpenError::PeerBytes => format!(
            "{} bytes of requests in flight",
            shared.config.max_bytes_per_peer
        ),
        OpenError::FairShare { holds, free } => {
            shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            shared
                .counters
                .fair_share_refused
                .fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "node {} is near its limit of {} concurrent calls and this connection holds \
                 {holds} of them, too many for the {free} still free",
                shared.name, shared.config.max_concurrent_calls
            );
            control.send_err(
                route,
                request,
                RefusalClass::Load,
                ErrorKind::Overloaded,
                &message,
            );
            return;
        }
        OpenError::Duplicate => {
            let message = "a call with this message_id is already running";
            control.send_err(
                route,
                request,
                RefusalClass::Garbage,
                ErrorKind::ProtocolError,
                message,
            );
            return;
        }
    };
    shared
        .counters
        .peer_overloaded
        .fetch_add(1, Ordering::Relaxed);
    let message = format!("this connection is at its limit of {limit}");
    control.send_err(
        route,
        request,
        RefusalClass::Load,
        ErrorKind::PeerOverloaded,
        &message,
    );
}

/// Where and to which request a reply goes, and how each kind of reply is built.
struct ReplyTo {
    route: Vec<Bytes>,
    request_id: MessageId,
    /// With a mesh key: every reply is sealed here, numbered in the order it is built (the
    /// call's replies are built one after the other), so the client notices a reply lost,
    /// reordered or repeated on the way.
    sealer: Option<Arc<Keyed>>,
    next_seq: AtomicU32,
}

impl ReplyTo {
    /// The reply event `name` whose args, `args_len` bytes, `write_args` appends.
    fn message(
        &self,
        name: &str,
        args_len: usize,
        write_args: impl FnOnce(&mut Vec<u8>),
    ) -> ZmqMessage {
        let header = Header::zmesh(Some(self.request_id.clone()));
        // The exact size: no reallocation while encoding, and no extra allocation when the
        // buffer becomes `Bytes`.
        let mut out = Vec::with_capacity(wire::encoded_len(&header, name, args_len));
        wire::encode_event_into(&mut out, &header, name, write_args);
        let event = match &self.sealer {
            None => Bytes::from(out),
            Some(keyed) => {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                keyed.seal(self.route.first(), &out, Some(seq))
            }
        };
        wire::join_frames(&self.route, event)
    }

    /// The `OK` carrying `value`, or an `ERR MessageTooLarge` when the reply would be over
    /// the node's message size limit (the caller could not take it either, and queueing it
    /// would cost the node that much memory per unread reply).
    fn ok(&self, shared: &Shared, method: &str, value: &[u8]) -> ZmqMessage {
        if let Some(too_large) = self.too_large(shared, method, 1 + value.len()) {
            return too_large;
        }
        self.message(names::OK, 1 + value.len(), |out| {
            out.push(0x91);
            out.extend_from_slice(value);
        })
    }

    /// The `ERR MessageTooLarge` that replaces a result or stream item whose args take
    /// `args_len` bytes, if that is over the node's limit (counted).
    fn too_large(&self, shared: &Shared, method: &str, args_len: usize) -> Option<ZmqMessage> {
        let limit = shared.config.max_message_size;
        // The hot path: a reply header and event name take far less than this.
        if args_len < limit.saturating_sub(1024) {
            return None;
        }
        let header = Header::zmesh(Some(self.request_id.clone()));
        let size = wire::encoded_len(&header, names::OK, args_len);
        if size <= limit {
            return None;
        }
        shared
            .counters
            .oversized_replies
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(method, size, limit, "result over the message size limit");
        Some(self.err(
            ErrorKind::MessageTooLarge,
            &format!(
                "the result of {method} is {size} bytes, over the node's limit of {limit} bytes"
            ),
        ))
    }

    fn err(&self, kind: ErrorKind, message: &str) -> ZmqMessage {
        let args = err_args(kind.as_str(), message, None);
        self.message(names::ERR, args.len(), |out| out.extend_from_slice(&args))
    }

    fn handler_err(&self, e: &HandlerError) -> ZmqMessage {
        let args = err_args(e.name(), e.message(), e.traceback());
        self.message(names::ERR, args.len(), |out| out.extend_from_slice(&args))
    }

    fn panic(&self, method: &str, panic: Box<dyn std::any::Any + Send>) -> ZmqMessage {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "handler panicked".to_owned());
        tracing::error!(method, panic = %detail, "handler panicked");
        self.err(
            ErrorKind::HandlerPanic,
            &format!("{method} panicked: {detail}"),
        )
    }
}

/// Sends a reply from the reader without ever waiting on it: `try_send` normally hands the
/// message to the client's send queue (no future, no allocation); otherwise one poll of the
/// async send, and if that queue is full, a task finishes the send so the reply is not lost
/// and the reader moves on.
///
/// A send only stalls when that client has left its `zeromq` send queue full (bounded in
/// messages and bytes); at most [`MAX_STALLED_SENDS`] such sends, holding at most
/// `max_stalled_bytes` in all, wait at once. Beyond that the reply is dropped and counted,
/// so clients that never read cannot grow the node's memory.
fn send_now(shared: &Arc<Shared>, message: ZmqMessage) {
    let message = shared.sender.seal(message, Seal::AsUsual);
    let message = match shared.sender.try_send_sealed(message) {
        Ok(()) => return,
        Err(TrySendError::Failed(e)) => {
            tracing::debug!(error = %e, "reply not delivered");
            return;
        }
        Err(TrySendError::WouldBlock(message)) => message,
    };
    let size = wire::message_len(&message);
    let mut send = send_sealed_owned(shared.sender.clone(), message).boxed();
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    if send.as_mut().poll(&mut cx).is_ready() {
        return;
    }
    let counters = &shared.counters;
    let max_bytes = shared.config.max_stalled_bytes;
    let count = counters.stalled_sends.fetch_add(1, Ordering::AcqRel);
    let bytes = counters.stalled_bytes.fetch_add(size, Ordering::AcqRel);
    if count >= MAX_STALLED_SENDS || bytes + size > max_bytes {
        counters.stalled_sends.fetch_sub(1, Ordering::AcqRel);
        counters.stalled_bytes.fetch_sub(size, Ordering::AcqRel);
        let dropped = counters.replies_dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::warn!(
                dropped,
                "clients are not reading their replies; dropping replies"
            );
        }
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        send.await;
        shared.counters.stalled_sends.fetch_sub(1, Ordering::AcqRel);
        shared
            .counters
            .stalled_bytes
            .fetch_sub(size, Ordering::AcqRel);
    });
}

async fn send_owned(mut sender: Sender, message: ZmqMessage) {
    if let Err(e) = sender.send(message).await {
        // The client went away; there is nobody left to tell.
        tracing::debug!(error = %e, "reply not delivered");
    }
}

async fn send_sealed_owned(mut sender: Sender, message: ZmqMessage) {
    if let Err(e) = sender.send_sealed(message).await {
        tracing::debug!(error = %e, "reply not delivered");
    }
}

/// Records how a call ended on its span and in its method's statistics.
fn record(span: &tracing::Span, stats: &MethodStats, outcome: Outcome, started: Instant) {
    let elapsed = started.elapsed();
    stats.record(elapsed, outcome.for_stats());
    if !span.is_disabled() {
        span.record("outcome", field::debug(outcome));
        span.record("duration_us", elapsed.as_micros() as u64);
    }
}

/// A call that did not finish on its first poll, owned by its task.
struct Call {
    /// Whether this call's channel entry was opened (a refused call must not close the
    /// entry of the running call it collided with).
    registered: bool,
    shared: Arc<Shared>,
    peer: Bytes,
    reply_to: ReplyTo,
    method_name: String,
    /// The method's statistics on this node.
    stats: Arc<MethodStats>,
    /// Set once the call's outcome is recorded; a call dropped before (aborted by cancel,
    /// a lost client or shutdown) is recorded as aborted.
    finished: bool,
    deadline: Option<Instant>,
    credit: Option<Arc<Credit>>,
    started: Instant,
    /// Held for the life of the call: the node-wide concurrency slot.
    _permit: Option<OwnedSemaphorePermit>,
}

/// Closes the call's channel however its task ends (reply sent, panic, or abort).
impl Drop for Call {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        if !self.finished {
            self.stats
                .record(self.started.elapsed(), stats::Outcome::Aborted);
        }
        self.shared
            .registry
            .close(&self.peer, &self.reply_to.request_id);
    }
}

/// How a call ended, for its span.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    Error,
    Panic,
    DeadlineExceeded,
    StreamDone,
}

impl Outcome {
    fn for_stats(self) -> stats::Outcome {
        match self {
            Self::Ok | Self::StreamDone => stats::Outcome::Ok,
            Self::Error | Self::Panic => stats::Outcome::Error,
            Self::DeadlineExceeded => stats::Outcome::Aborted,
        }
    }
}

impl Call {
    async fn run(mut self, future: crate::service::HandlerFuture) {
        let outcome = self.serve(future).await;
        self.finished = true;
        record(
            &tracing::Span::current(),
            &self.stats,
            outcome,
            self.started,
        );
    }

    async fn serve(&self, future: crate::service::HandlerFuture) -> Outcome {
        let call = AssertUnwindSafe(future).catch_unwind();
        let result = match self.deadline {
            Some(deadline) => {
                let expiry = Box::pin(tokio::time::sleep_until(deadline.into()));
                match futures::future::select(call, expiry).await {
                    Either::Left((result, _)) => result,
                    Either::Right(_) => {
                        self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                        let message =
                            format!("{} did not finish within its deadline", self.method_name);
                        self.send(self.reply_to.err(ErrorKind::DeadlineExceeded, &message))
                            .await;
                        return Outcome::DeadlineExceeded;
                    }
                }
            }
            None => call.await,
        };
        match result {
            Ok(Ok(Reply::Value(value))) => {
                let reply = self.reply_to.ok(&self.shared, &self.method_name, &value);
                self.send(reply).await;
                Outcome::Ok
            }
            // Boxed: streams are the rare case, and inline they would make every slow call's
            // task several hundred bytes larger.
            Ok(Ok(Reply::Stream(stream))) => Box::pin(self.stream(stream)).await,
            Ok(Err(e)) => {
                self.send(self.reply_to.handler_err(&e)).await;
                Outcome::Error
            }
            Err(panic) => {
                self.send(self.reply_to.panic(&self.method_name, panic))
                    .await;
                Outcome::Panic
            }
        }
    }

    /// Sends items under the client's credit: each STREAM, and the final STREAM_DONE or
    /// ERR, costs one unit; the first unit is implicit.
    async fn stream(
        &self,
        mut stream: futures::stream::BoxStream<'static, Result<Vec<u8>, HandlerError>>,
    ) -> Outcome {
        let credit = self
            .credit
            .clone()
            .unwrap_or_else(|| Arc::new(Credit::new()));
        loop {
            credit.take().await;
            match AssertUnwindSafe(stream.next()).catch_unwind().await {
                Ok(Some(Ok(item))) => {
                    if let Some(too_large) =
                        self.reply_to
                            .too_large(&self.shared, &self.method_name, item.len())
                    {
                        self.send(too_large).await;
                        return Outcome::Error;
                    }
                    let message = self.reply_to.message(names::STREAM, item.len(), |out| {
                        out.extend_from_slice(&item)
                    });
                    self.send(message).await;
                }
                Ok(Some(Err(e))) => {
                    self.send(self.reply_to.handler_err(&e)).await;
                    return Outcome::Error;
                }
                Ok(None) => {
                    let message =
                        self.reply_to
                            .message(names::STREAM_DONE, NIL_ARGS.len(), |out| {
                                out.extend_from_slice(NIL_ARGS)
                            });
                    self.send(message).await;
                    return Outcome::StreamDone;
                }
                Err(panic) => {
                    self.send(self.reply_to.panic(&self.method_name, panic))
                        .await;
                    return Outcome::Panic;
                }
            }
        }
    }

    /// Sends from the call's own task: a client whose queue is full delays only its calls.
    async fn send(&self, message: ZmqMessage) {
        send_owned(self.shared.sender.clone(), message).await;
    }
}

/// Sends heartbeats on open channels and closes channels whose client went silent.
///
/// Heartbeats go out with [`Control::send`]: never waiting, so one client that stops
/// reading cannot delay the heartbeats of the others.
async fn sweep_loop(control: Control, mut stop: watch::Receiver<bool>) {
    let shared = control.shared.clone();
    let period = shared.config.heartbeat;
    // Quarter-period ticks keep heartbeats and loss detection within a quarter period of due.
    let mut ticker = tokio::time::interval(period / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let (due, lost) = shared.registry.sweep(now);
        for channel in lost {
            shared.counters.peers_lost.fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %channel.route.first().map(|p| PeerId(p).to_string()).unwrap_or_default(),
                "client stopped heartbeating; aborting its call");
            if let Some(abort) = channel.abort {
                abort.abort();
            }
        }
        for d in due {
            let header = Header::zmesh(Some(d.channel));
            let event = wire::encode_event(&header, names::HEARTBEAT, HEARTBEAT_ARGS);
            control.send(wire::join_frames(&d.route, event));
        }
        if control.gate_in_use.load(Ordering::Relaxed) {
            let mut gate = control.gate();
            gate.sweep(now, REFUSAL_IDLE);
            control
                .gate_in_use
                .store(!gate.is_empty(), Ordering::Relaxed);
        }
    }
}

/// Aborts the calls of a client connection as soon as the socket reports it gone.
async fn watch_disconnects(
    control: Control,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    inbound: Inbound,
) {
    let shared = &control.shared;
    while let Some(event) = monitor.next().await {
        if let SocketEvent::Disconnected(peer_id) = event {
            let peer: Bytes = match &inbound {
                Inbound::PlainOfKeyed => sender::plain_route_id(&peer_id),
                Inbound::Sealed(keyed) => {
                    let peer = peer_id.into();
                    keyed.forget_peer(&peer);
                    peer
                }
                Inbound::Plain => peer_id.into(),
            };
            control.forget(&peer);
            let channels = shared.registry.close_peer(&peer);
            if !channels.is_empty() {
                shared
                    .counters
                    .peers_lost
                    .fetch_add(channels.len() as u64, Ordering::Relaxed);
                tracing::info!(peer = %PeerId(&peer), calls = channels.len(), "client disconnected; aborting its calls");
            }
            for channel in channels {
                if let Some(abort) = channel.abort {
                    abort.abort();
                }
            }
        }
    }
}

/// Shutdown after the grace period: abort what still runs and tell each caller.
pub(super) async fn abort_all(shared: &Shared, message: &str) -> usize {
    let channels = shared.registry.close_all();
    let count = channels.len();
    let mut sender = shared.sender.clone();
    for (id, channel) in channels {
        if let Some(abort) = channel.abort {
            abort.abort();
        }
        let header = Header::zmesh(Some(id));
        let event = wire::encode_event(
            &header,
            names::ERR,
            &err_args(ErrorKind::Unavailable.as_str(), message, None),
        );
        let _ = tokio::time::timeout(
            ABORT_SEND_TIMEOUT,
            sender.send(wire::join_frames(&channel.route, event)),
        )
        .await;
    }
    count
}
