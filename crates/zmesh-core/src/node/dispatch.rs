//! Provides the node's driver: the tokio side of the pure `session`. A reader task per
//! socket hands every message to the session and executes the actions it returns (sends,
//! counters, credit grants, aborts, calls to run); the tasks of calls that do not finish at
//! once; a timer task for the session's heartbeat pass; and a watcher for client
//! disconnects.
//!
//! A new call's handler is polled once by the reader. If it is done, its reply is handed to
//! the client's send queue right there (no task, no channel entry, no timer: the common fast
//! path); otherwise the call moves to its own task with a channel entry for heartbeats,
//! credit and cancel, and a deadline timer. The reader never waits on a send: a send that
//! cannot complete at once finishes in a task, so a slow client only delays its own calls.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::Either;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, field};
use zeromq::util::PeerIdentity;
use zeromq::{RouterRecvHalf, RouterSendHalf, SocketEvent, TrySendError, ZmqMessage};
use zmesh_proto::ErrorKind;
use zmesh_proto::TraceParent;
use zmesh_proto::liveness::Liveness;

use super::registry::{Channel, Credit};
use super::sender::{self, Keyed, Seal, Sender};
use super::session::{Action, Count, Open, PeerId, Session, Slots};
pub(super) use super::session::{Inbound, RateLimitedWarn};
use super::{Counters, Shared};
use crate::context::{self, CallContext};
use crate::read_turns::ReadTurns;
use crate::service::{HandlerError, Reply};
use crate::stats::{self, MethodStats};
use crate::telemetry;
use crate::wire::{self, HEARTBEAT_ARGS, Header, MessageId, NIL_ARGS, err_args, names};

/// Replies that may wait at once for a client's full send queue (see [`send_now`]).
const MAX_STALLED_SENDS: usize = 10_000;
/// How long shutdown waits on one client's full send queue to tell it its call was aborted.
const ABORT_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// The session's actions as the driver holds them: a call's slot is a semaphore permit.
pub(super) type Actions<'a> = Vec<Action<'a, OwnedSemaphorePermit>>;

/// The node's call slots: permits of its semaphore, held by the call tasks.
impl Slots for Arc<Semaphore> {
    type Permit = OwnedSemaphorePermit;

    fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.clone().try_acquire_owned().ok()
    }

    fn free(&self) -> usize {
        self.available_permits()
    }
}

/// One bound ROUTER's receive side and how its messages are to be read.
pub(super) struct Inlet {
    pub(super) recv: RouterRecvHalf,
    pub(super) monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    pub(super) inbound: Inbound,
    /// The endpoint it listens on, when it listens on one (see [`Door`]).
    pub(super) endpoint: Option<Arc<str>>,
    /// Where its callers' network addresses are asked for (see [`Door`]).
    pub(super) peers: PeerAddresses,
}

/// Where a socket's messages come in: how they are opened, and the endpoint each call's
/// [`CallContext`] reports (`None` for a socket bound to several: ZeroMQ does not say
/// which one a message used).
pub(crate) struct Door {
    pub(crate) inbound: Inbound,
    pub(crate) endpoint: Option<Arc<str>>,
    /// The network address of each call's immediate peer, for its span
    /// (`network.peer.address`/`port`).
    pub(crate) peers: PeerAddresses,
}

/// Where the network address of a call's peer comes from: the other end of the connection
/// the call came in on, as the OpenTelemetry conventions have it (through a device, the
/// device). Asked only for a span some subscriber records, so a call costs nothing more
/// otherwise.
pub(crate) enum PeerAddresses {
    /// The socket keeps each connection's remote address (kept at its accept, so asking is
    /// one read of the socket's peer map): a bound node's ROUTER. `None` for `ipc://`.
    Router(RouterSendHalf),
    /// Every call comes over one connection whose remote address is this: a worker's
    /// link to its device.
    Fixed(SocketAddr),
    /// No address: a Unix socket's connecting end has none, the harness has no socket.
    Unknown,
}

impl PeerAddresses {
    /// The address of the connection whose routing identity is `identity` (the first
    /// routing frame as the ROUTER gave it).
    fn of(&self, identity: &Bytes) -> Option<SocketAddr> {
        match self {
            Self::Router(socket) => {
                let identity = PeerIdentity::try_from(identity.clone()).ok()?;
                socket.peer_address(&identity)
            }
            Self::Fixed(address) => Some(*address),
            Self::Unknown => None,
        }
    }
}

pub(super) fn spawn_tasks(
    shared: Arc<Shared>,
    inlets: Vec<Inlet>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let (control, mut tasks) = spawn_support(&shared, stop.clone());
    for inlet in inlets {
        let door = Door {
            inbound: inlet.inbound.clone(),
            endpoint: inlet.endpoint,
            peers: inlet.peers,
        };
        tasks.push(tokio::spawn(read_loop(
            shared.clone(),
            inlet.recv,
            control.clone(),
            door,
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

/// Starts the task every node runs whatever socket it serves from (the session's timer
/// pass) and returns the node's [`Control`].
pub(super) fn spawn_support(
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> (Control, Vec<JoinHandle<()>>) {
    let control = Control {
        shared: shared.clone(),
    };
    let tasks = vec![tokio::spawn(sweep_loop(control.clone(), stop))];
    (control, tasks)
}

/// The driver's clock, the one the session is given: tokio's, so that tests with paused
/// time drive the session's timers and the calls' deadlines alike (in a build without
/// tokio's `test-util` it is the system's monotonic clock).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The session over the node's shared state, as it is now.
fn session<'a>(shared: &'a Shared, warn: &'a RateLimitedWarn) -> Session<'a, Arc<Semaphore>> {
    Session {
        name: &shared.name,
        config: &shared.config,
        methods: &shared.methods,
        registry: &shared.registry,
        refusals: &shared.refusals,
        warn,
        accepting: shared.accepting.load(Ordering::Relaxed),
        slots: &shared.concurrency,
    }
}

/// How the node sends what it originates itself: refusals (`ERR`s for bad or unroutable
/// requests), heartbeats and a worker's messages to its device.
///
/// None of these ever waits. Each goes straight to its peer's send queue with `try_send`,
/// from whichever task produced it; when that peer's queue is full the message is dropped
/// for that peer alone and counted (`control_dropped_full`). There is no shared queue, so a
/// client that stops reading cannot delay another client's heartbeats or errors, and error
/// traffic cannot starve heartbeats. Refusals have passed the session's per-connection
/// refusal gate.
#[derive(Clone)]
pub(super) struct Control {
    shared: Arc<Shared>,
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

    /// Executes the session's actions, in order, emptying `actions` for the next message.
    /// Only a message's actions (`door`: the socket it came in on) open calls.
    fn execute(&self, actions: &mut Actions<'_>) {
        self.execute_from(actions, None);
    }

    fn execute_from(&self, actions: &mut Actions<'_>, door: Option<&Door>) {
        let shared = &self.shared;
        for action in actions.drain(..) {
            match action {
                Action::Count(which) => {
                    counter(&shared.counters, which).fetch_add(1, Ordering::Relaxed);
                }
                Action::Answer(answer) => {
                    let header = Header::zmesh(Some(answer.request));
                    let args = err_args(answer.kind.as_str(), &answer.message, None);
                    let event = wire::encode_event(&header, names::ERR, &args);
                    self.try_send(wire::join_frames(&answer.route, event), answer.seal);
                }
                Action::Disconnect(peer) => {
                    let closed = shared.sender.disconnect(&peer);
                    tracing::warn!(peer = %PeerId(&peer), closed, "closing a connection that keeps sending bad requests");
                }
                Action::Grant(credit, n) => credit.grant(n),
                Action::Abort(channel) => {
                    if let Some(abort) = channel.abort {
                        abort.abort();
                    }
                }
                Action::Heartbeat(due) => {
                    let header = Header::zmesh(Some(due.channel));
                    let event = wire::encode_event(&header, names::HEARTBEAT, HEARTBEAT_ARGS);
                    self.send(wire::join_frames(&due.route, event));
                }
                Action::Open(open) => match door {
                    Some(door) => run_call(self, open, door),
                    None => unreachable!("the session opens calls only for a message"),
                },
            }
        }
    }
}

/// The node's counter a session [`Count`] names.
fn counter(counters: &Counters, which: Count) -> &AtomicU64 {
    match which {
        Count::Malformed => &counters.malformed,
        Count::Oversized => &counters.oversized,
        Count::Unauthenticated => &counters.unauthenticated,
        Count::Replayed => &counters.replayed_messages,
        Count::UnknownChannel => &counters.unknown_channel,
        Count::Cancelled => &counters.cancelled,
        Count::Expired => &counters.expired,
        Count::Overloaded => &counters.overloaded,
        Count::FairShareRefused => &counters.fair_share_refused,
        Count::PeerOverloaded => &counters.peer_overloaded,
        Count::Calls => &counters.calls,
        Count::RefusalsSuppressed => &counters.refusals_suppressed,
        Count::GarbageDisconnects => &counters.garbage_disconnects,
        Count::PeersLost => &counters.peers_lost,
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut recv: RouterRecvHalf,
    control: Control,
    door: Door,
    mut stop: watch::Receiver<bool>,
) {
    let warn = RateLimitedWarn::default();
    // Made once, not per message: the read loop is the node's hot path.
    let mut stopped = std::pin::pin!(stop.changed());
    let mut turns = ReadTurns::default();
    let mut actions = Actions::new();
    let spin = shared.config.spin;
    loop {
        turns.handled_one().await;
        let message = tokio::select! {
            biased;
            m = crate::spin::poll_spinning(spin, |cx| recv.poll_recv(cx)) => m,
            _ = &mut stopped => break,
        };
        match message {
            Ok(message) => handle_message(
                &shared,
                &control,
                &warn,
                message.into_vec(),
                &door,
                &mut actions,
            ),
            Err(e) => {
                tracing::debug!(error = %e, "router recv failed");
                // Not expected in steady state; avoid a hot loop if it repeats.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Hands one message to the session and executes what it decided. `actions` is the
/// caller's reusable buffer (empty on return).
pub(super) fn handle_message<'a>(
    shared: &'a Shared,
    control: &Control,
    warn: &'a RateLimitedWarn,
    frames: Vec<Bytes>,
    door: &Door,
    actions: &mut Actions<'a>,
) {
    session(shared, warn).handle(frames, &door.inbound, now(), actions);
    control.execute_from(actions, Some(door));
}

/// Runs a call the session admitted: polls its handler once and answers at once when it is
/// done, otherwise opens its channel and moves it to its own task.
fn run_call(control: &Control, open: Open<'_, OwnedSemaphorePermit>, door: &Door) {
    let shared = &control.shared;
    let Open {
        peer,
        route,
        event,
        size,
        method,
        deadline,
        permit,
    } = open;
    let header = event.header;
    let job = wire::JobTag::from_header(&header);
    // A repeat of a request that already ran here is answered from the reply cache.
    let request_key = if method.streaming {
        None
    } else {
        shared.replies.key(&header, &event.name)
    };
    let reply_to = ReplyTo {
        sealer: shared.sender.sealer_for(&route),
        next_seq: AtomicU32::new(0),
        route,
        request_id: header.message_id,
    };
    // The caller's trace context, dropped by the wire layer's header until here: parsed
    // once, for the span, the handler and the calls it makes.
    let traceparent = header.traceparent.as_deref().and_then(TraceParent::parse);
    let identity = sender::plain_identity(&peer).unwrap_or_else(|| peer.clone());
    let span = call_span(&event.name, &reply_to.request_id, &peer, door, job);
    if !span.is_disabled()
        && let Some(address) = door.peers.of(&identity)
    {
        telemetry::record_network_peer(&span, address);
    }
    #[cfg(feature = "otel")]
    if let Some(caller) = &traceparent
        && !span.is_disabled()
    {
        crate::telemetry::set_remote_parent(&span, caller);
    }
    let started = now();
    let keyed = matches!(door.inbound, Inbound::Sealed(_));
    let ctx = CallContext::new(
        event.name.into_owned(),
        deadline,
        traceparent,
        context::CallPeer::new(identity, door.endpoint.clone(), keyed),
        job,
    );

    // Fast path: most handlers finish on their first poll, so poll once right here and
    // answer at once, with no task, no channel entry and no timer. The no-op waker is fine:
    // a handler that is not ready is moved into its own task, whose first poll registers
    // the real waker.
    let first_poll = span.in_scope(|| {
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut future = shared
                .replies
                .run(request_key, || (method.handler)(ctx.clone(), event.args));
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(result) => Ok(result),
                Poll::Pending => Err(future),
            }
        }))
    });
    let future = match first_poll {
        Ok(Ok(Ok(Reply::Value(value)))) => {
            send_now(shared, reply_to.ok(shared, ctx.method(), &value));
            record(&span, &method.stats, Outcome::Ok, started);
            return;
        }
        Ok(Ok(Err(e))) => {
            send_now(shared, reply_to.handler_err(&e));
            handler_failed(&span, &method.stats, &e);
            record(&span, &method.stats, Outcome::Error, started);
            return;
        }
        Err(panic) => {
            send_now(shared, reply_to.panic(ctx.method(), panic));
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
        liveness: Liveness::channel(shared.config.heartbeat, started),
        size,
    };
    let request_id = reply_to.request_id.clone();
    let mut call = Call {
        registered: false,
        shared: shared.clone(),
        peer: peer.clone(),
        reply_to,
        ctx,
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
    if let Err((why, refused)) = opened {
        // Another call raced in between the session's admission and here: the session
        // decides the answer; cold, so a buffer of its own.
        let warn = RateLimitedWarn::default();
        let mut actions = Actions::new();
        session(shared, &warn).refused_open(refused.route, request_id, why, now(), &mut actions);
        control.execute(&mut actions);
    }
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

/// The server span of one call (`zmesh.call`), named by its method as the OpenTelemetry
/// RPC conventions ask (`otel.name`), with their attributes and zmesh's own. The values are
/// borrowed: a disabled span formats and allocates nothing.
fn call_span(
    method: &str,
    id: &MessageId,
    peer: &Bytes,
    door: &Door,
    job: Option<wire::JobTag>,
) -> tracing::Span {
    let endpoint = door.endpoint.as_deref();
    // Field values are evaluated only for a span that some subscriber wants.
    tracing::info_span!(
        "zmesh.call",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = field::Empty,
        rpc.system.name = telemetry::RPC_SYSTEM,
        rpc.method = method,
        server.address = endpoint.map(|e| telemetry::server_address(e).0),
        server.port = endpoint.and_then(|e| telemetry::server_address(e).1).map(i64::from),
        network.peer.address = field::Empty,
        network.peer.port = field::Empty,
        error.type = field::Empty,
        zmesh.job.id = job.map(|job| job.id as i64),
        zmesh.job.attempt = job.map(|job| i64::from(job.attempt)),
        method,
        id = %id,
        peer = %PeerId(peer),
        outcome = field::Empty,
        duration_us = field::Empty,
    )
}

/// Records how a call ended on its span and in its method's statistics.
fn record(span: &tracing::Span, stats: &MethodStats, outcome: Outcome, started: Instant) {
    let elapsed = started.elapsed();
    stats.record(elapsed, outcome.for_stats());
    if let Some(kind) = outcome.error_kind() {
        stats.count_error(kind.as_str());
    }
    if !span.is_disabled() {
        span.record("outcome", field::debug(outcome));
        span.record("duration_us", elapsed.as_micros() as u64);
        if let Some(kind) = outcome.error_kind() {
            telemetry::record_error(span, kind.as_str());
        }
    }
}

/// Records on a call's span and in its method's figures that its handler failed with `e`
/// (`error.type` is the error's name on the wire).
fn handler_failed(span: &tracing::Span, stats: &MethodStats, e: &HandlerError) {
    failed(span, stats, e.name());
}

/// Records on a call's span and in its method's figures that it failed with the error
/// named `name`.
fn failed(span: &tracing::Span, stats: &MethodStats, name: &str) {
    stats.count_error(name);
    if !span.is_disabled() {
        telemetry::record_error(span, name);
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
    /// The handler's context, cancelled when the call ends unfinished.
    ctx: CallContext,
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
        if !self.finished {
            // Aborted (a cancel, a lost client, shutdown) or refused: whatever the handler
            // left running learns it through its context.
            self.ctx.cancel();
        }
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
    /// The error the call answered with, when zmesh itself named it (a handler's own
    /// error is recorded where it is known, `handler_failed`).
    fn error_kind(self) -> Option<ErrorKind> {
        match self {
            Self::Panic => Some(ErrorKind::HandlerPanic),
            Self::DeadlineExceeded => Some(ErrorKind::DeadlineExceeded),
            Self::Ok | Self::Error | Self::StreamDone => None,
        }
    }

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
                        self.ctx.cancel();
                        self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                        let message =
                            format!("{} did not finish within its deadline", self.ctx.method());
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
                let reply = self.reply_to.ok(&self.shared, self.ctx.method(), &value);
                self.send(reply).await;
                Outcome::Ok
            }
            // Boxed: streams are the rare case, and inline they would make every slow call's
            // task several hundred bytes larger.
            Ok(Ok(Reply::Stream(stream))) => Box::pin(self.stream(stream)).await,
            Ok(Err(e)) => {
                self.send(self.reply_to.handler_err(&e)).await;
                handler_failed(&tracing::Span::current(), &self.stats, &e);
                Outcome::Error
            }
            Err(panic) => {
                self.send(self.reply_to.panic(self.ctx.method(), panic))
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
                            .too_large(&self.shared, self.ctx.method(), item.len())
                    {
                        self.send(too_large).await;
                        failed(
                            &tracing::Span::current(),
                            &self.stats,
                            ErrorKind::MessageTooLarge.as_str(),
                        );
                        return Outcome::Error;
                    }
                    let message = self.reply_to.message(names::STREAM, item.len(), |out| {
                        out.extend_from_slice(&item)
                    });
                    self.send(message).await;
                }
                Ok(Some(Err(e))) => {
                    self.send(self.reply_to.handler_err(&e)).await;
                    handler_failed(&tracing::Span::current(), &self.stats, &e);
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
                    self.send(self.reply_to.panic(self.ctx.method(), panic))
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

/// Runs the session's timer pass every quarter heartbeat period: heartbeats on open
/// channels, channels whose client went silent closed.
///
/// Heartbeats go out with [`Control::send`]: never waiting, so one client that stops
/// reading cannot delay the heartbeats of the others.
async fn sweep_loop(control: Control, mut stop: watch::Receiver<bool>) {
    let shared = control.shared.clone();
    let period = shared.config.heartbeat;
    // Quarter-period ticks keep heartbeats and loss detection within a quarter period of due.
    let mut ticker = tokio::time::interval(period / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let warn = RateLimitedWarn::default();
    let mut actions = Actions::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        session(&shared, &warn).poll_timers(now(), &mut actions);
        control.execute(&mut actions);
    }
}

/// Tells the session of a client connection the socket reports gone, so its calls are
/// aborted at once.
async fn watch_disconnects(
    control: Control,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    inbound: Inbound,
) {
    let warn = RateLimitedWarn::default();
    let mut actions = Actions::new();
    while let Some(event) = monitor.next().await {
        if let SocketEvent::Disconnected(peer_id) = event {
            session(&control.shared, &warn).disconnected(&peer_id, &inbound, &mut actions);
            control.execute(&mut actions);
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
