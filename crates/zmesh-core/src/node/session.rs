//! Provides the node's protocol decisions as a pure session: one inbound message (its
//! frames, the kind of socket it came on and the time) in, typed [`Action`]s out; and the
//! timer pass ([`Session::poll_timers`]) and a connection's end
//! ([`Session::disconnected`]) the same way. No tokio, no sockets, no clock: the driver
//! (`dispatch`) reads the sockets, calls the session, and executes what it returns (sends,
//! spawns, counters), as the device's `Router` does for the device.
//!
//! The session writes its actions into a buffer the driver owns and reuses, so a message
//! costs no allocation for its actions. The open channels ([`Registry`]) are shared with the
//! call tasks, which close their own entries; the session only reads and updates them under
//! the registry's lock, and the refusal gate lives in [`Refusals`] for the same reason (every
//! read loop of a node decides with the one gate).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use zmesh_proto::ErrorKind;
use zmesh_proto::admission::{self, Counter, Refusal};
use zmesh_proto::error::SHUTTING_DOWN;

use super::NodeConfig;
use super::refusals::{RefusalClass, RefusalGate, RefusalPolicy, Verdict};
use super::registry::{Channel, Credit, Due, NodeLoad, OpenError, Registry};
use super::sender::{self, Keyed, Seal};
use crate::service::Method;
use crate::trust::{self, Kind, Rejection};
use crate::wire::{self, MessageId, names};

/// Refusal state of connections not refused for this long is dropped by the timer pass.
pub(super) const REFUSAL_IDLE: Duration = Duration::from_secs(30);

/// How a socket's incoming messages are read.
#[derive(Clone, Debug)]
pub(crate) enum Inbound {
    /// A node without a mesh key: plain zerorpc events.
    Plain,
    /// A keyed node's plain endpoint: plain events, and replies go back unsealed.
    PlainOfKeyed,
    /// A keyed endpoint: every event must open with the mesh key.
    Sealed(Arc<Keyed>),
}

/// The node's call slots as the session sees them: take one for a call, or learn how many
/// are free. The driver's are a semaphore whose permits the call tasks hold.
pub(crate) trait Slots {
    /// Held for the life of a call.
    type Permit;
    /// One slot, if any is free.
    fn try_take(&self) -> Option<Self::Permit>;
    /// Slots free now.
    fn free(&self) -> usize;
}

/// One of the node's counters, as the session names it; the driver adds one to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Count {
    Malformed,
    Oversized,
    Unauthenticated,
    Replayed,
    UnknownChannel,
    Cancelled,
    Expired,
    Overloaded,
    FairShareRefused,
    PeerOverloaded,
    Calls,
    RefusalsSuppressed,
    GarbageDisconnects,
    PeersLost,
}

/// An `ERR` the node answers a request with.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The routing frames it goes back on (the connection first).
    pub(crate) route: Vec<Bytes>,
    /// The request it answers (`response_to`).
    pub(crate) request: MessageId,
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
    /// [`Seal::Never`] for the refusal of a peer without the mesh key.
    pub(crate) seal: Seal,
}

/// A request admitted as a call: what the driver needs to run it.
pub(crate) struct Open<'a, P> {
    /// The connection it came from (after the plain-endpoint renaming).
    pub(crate) peer: Bytes,
    pub(crate) route: Vec<Bytes>,
    pub(crate) event: wire::Event,
    /// The request's event frame size, counted against the connection while it runs.
    pub(crate) size: usize,
    /// Borrowed from the node's method table: no reference count per call.
    pub(crate) method: &'a Method,
    pub(crate) deadline: Option<Instant>,
    /// The call's node-wide slot; `None` for a zerorpc built-in (never refused as load).
    pub(crate) permit: Option<P>,
}

/// What the driver does for the session.
// `Open` is the common action and the big one; boxing it would cost an allocation per call,
// while the buffer of actions is reused, so its size costs nothing per message.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Action<'a, P> {
    /// Add one to a counter.
    Count(Count),
    /// Send this `ERR` now or not at all (it has passed the connection's refusal gate).
    Answer(Answer),
    /// Close this connection: it kept sending bad requests.
    Disconnect(Bytes),
    /// Grant a streaming call `n` more items (`_zpc_more`).
    Grant(Arc<Credit>, u64),
    /// Abort the call of a channel the session closed (cancelled, silent, disconnected).
    Abort(Channel),
    /// Send a heartbeat on an open channel.
    Heartbeat(Due),
    /// Run this call.
    Open(Open<'a, P>),
}

impl<P> std::fmt::Debug for Action<'_, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Count(c) => f.debug_tuple("Count").field(c).finish(),
            Action::Answer(a) => f.debug_tuple("Answer").field(a).finish(),
            Action::Disconnect(p) => f.debug_tuple("Disconnect").field(p).finish(),
            Action::Grant(_, n) => f.debug_tuple("Grant").field(n).finish(),
            Action::Abort(c) => f.debug_tuple("Abort").field(&c.route).finish(),
            Action::Heartbeat(d) => f.debug_tuple("Heartbeat").field(&d.channel).finish(),
            Action::Open(o) => f.debug_tuple("Open").field(&o.event.name).finish(),
        }
    }
}

/// The per-connection refusal gate, shared by a node's read loops; see `refusals`.
pub(crate) struct Refusals {
    gate: Mutex<RefusalGate>,
    /// Whether the gate tracks any connection (so accepted calls need not lock it).
    in_use: AtomicBool,
}

impl Refusals {
    pub(crate) fn new(policy: RefusalPolicy) -> Self {
        Self {
            gate: Mutex::new(RefusalGate::new(policy)),
            in_use: AtomicBool::new(false),
        }
    }

    /// Runs `f` on the gate and notes whether it still tracks anyone.
    fn with<T>(&self, f: impl FnOnce(&mut RefusalGate) -> T) -> T {
        // Poisoning only means a panic elsewhere while updating counts; they are still valid.
        let mut gate: MutexGuard<'_, RefusalGate> =
            self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let out = f(&mut gate);
        self.in_use.store(!gate.is_empty(), Ordering::Relaxed);
        out
    }

    /// A call from `peer` was accepted: it is not (only) sending garbage. One atomic load
    /// on the hot path while no connection has been refused lately.
    fn accepted(&self, peer: &Bytes) {
        if self.in_use.load(Ordering::Relaxed) {
            self.with(|gate| gate.accepted(peer));
        }
    }
}

/// Logs bad input at `debug` always and at `warn` at most once a second, so a flood of
/// garbage cannot turn into a flood of log lines.
#[derive(Default)]
pub(crate) struct RateLimitedWarn {
    /// The first instant it was given: milliseconds are counted from there.
    base: OnceLock<Instant>,
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarn {
    pub(crate) fn bad_input(&self, peer: &Bytes, what: &dyn std::fmt::Display, now: Instant) {
        tracing::debug!(peer = %PeerId(peer), problem = %what, "bad input");
        // Offset by a second so the first warning is never held back.
        let base = *self.base.get_or_init(|| now);
        let now = now.saturating_duration_since(base).as_millis() as u64 + 1000;
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

/// Hex form of a connection identity for logs.
pub(crate) struct PeerId<'a>(pub(crate) &'a Bytes);

impl std::fmt::Display for PeerId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What the session reads of the node for its decisions: borrowed, made per message at no
/// cost.
pub(crate) struct Session<'a, S> {
    pub(crate) name: &'a str,
    pub(crate) config: &'a NodeConfig,
    pub(crate) methods: &'a HashMap<String, Arc<Method>>,
    pub(crate) registry: &'a Registry,
    pub(crate) refusals: &'a Refusals,
    pub(crate) warn: &'a RateLimitedWarn,
    /// Whether the node still takes new calls (false once shutdown began).
    pub(crate) accepting: bool,
    pub(crate) slots: &'a S,
}

type Out<'a, S> = Vec<Action<'a, <S as Slots>::Permit>>;

impl<'a, S: Slots> Session<'a, S> {
    /// Decides what one message from a ROUTER (identity first) leads to, at `now`.
    pub(crate) fn handle(
        &self,
        frames: Vec<Bytes>,
        inbound: &Inbound,
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        let mut envelope = match admission::envelope(frames, self.config.max_message_size) {
            Ok(envelope) => envelope,
            Err((refusal, mut route)) => {
                match local_peer(inbound, &mut route) {
                    Some(peer) => self.refuse_admission(&peer, route, &refusal, now, out),
                    None => out.push(Action::Count(count_of(&refusal))),
                }
                return;
            }
        };
        // Admission refuses a message without a route, so there always is a peer here.
        let Some(peer) = local_peer(inbound, &mut envelope.route) else {
            return;
        };
        match inbound {
            // A keyed client on an endpoint without a key: told so, not left to its deadline.
            Inbound::Plain if trust::envelope::is_sealed(&envelope.event) => {
                let refusal =
                    admission::sealed_without_key(trust::refused_request(&envelope.event));
                self.refuse_admission(&peer, envelope.route, &refusal, now, out);
                return;
            }
            Inbound::Plain | Inbound::PlainOfKeyed => {}
            Inbound::Sealed(keyed) => match keyed.trust.open_slot(&envelope.event, Kind::Request) {
                Ok((event, slot)) => {
                    keyed.note_key_slot(&peer, slot);
                    envelope.event = event;
                }
                Err(rejection) => {
                    self.reject(&peer, envelope, &rejection, now, out);
                    return;
                }
            },
        }
        let event = match admission::decode(&envelope.event) {
            Ok(event) => event,
            Err(refusal) => {
                self.refuse_admission(&peer, envelope.route, &refusal, now, out);
                return;
            }
        };
        match &event.header.response_to {
            Some(channel) => self.channel_event(&peer, channel, &event.name, &event.args, now, out),
            None => {
                let size = envelope.event.len();
                self.open_call(peer, envelope.route, event, size, now, out)
            }
        }
    }

    /// Counts and traces a message admission refused, and answers it when it is an
    /// addressable request.
    #[cold]
    fn refuse_admission(
        &self,
        peer: &Bytes,
        route: Vec<Bytes>,
        refusal: &Refusal,
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        out.push(Action::Count(count_of(refusal)));
        self.warn.bad_input(peer, refusal, now);
        match refusal.answer() {
            Some(answer) => {
                let why = (RefusalClass::Garbage, answer.kind, answer.message);
                self.refuse(route, answer.request, why, now, out)
            }
            None => self.unanswered_garbage(peer, now, out),
        }
    }

    /// Counts and traces a message refused by the mesh key, and answers an unsealed `ERR`
    /// when the request can be addressed: by the clear id of a sealed frame, or by the
    /// header of a plain zerorpc request (a stock client on a keyed endpoint learns why it
    /// is refused).
    #[cold]
    fn reject(
        &self,
        peer: &Bytes,
        envelope: wire::Envelope,
        rejection: &Rejection,
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        out.push(Action::Count(match rejection {
            Rejection::Replayed(_) => Count::Replayed,
            _ => Count::Unauthenticated,
        }));
        self.warn.bad_input(peer, rejection, now);
        match trust::refused_request(&envelope.event) {
            Some(request) => self.answer(
                envelope.route,
                request,
                RefusalClass::Garbage,
                rejection.kind(),
                rejection.to_string(),
                Seal::Never,
                now,
                out,
            ),
            None => self.unanswered_garbage(peer, now, out),
        }
    }

    /// A bad message from `peer` that gets no reply still counts towards closing a
    /// connection that sends nothing else.
    fn unanswered_garbage(&self, peer: &Bytes, now: Instant, out: &mut Out<'a, S>) {
        let verdict = self.refusals.with(|gate| gate.note_garbage(peer, now));
        self.apply(verdict, peer, out);
    }

    /// An `ERR` for `request` (class, kind, message) in the usual seal, after the
    /// connection's refusal gate.
    fn refuse(
        &self,
        route: Vec<Bytes>,
        request: &MessageId,
        (class, kind, message): (RefusalClass, ErrorKind, String),
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        let request = request.clone();
        self.answer(
            route,
            request,
            class,
            kind,
            message,
            Seal::AsUsual,
            now,
            out,
        );
    }

    /// An `ERR` for `request`, after the connection's refusal gate.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &self,
        route: Vec<Bytes>,
        request: MessageId,
        class: RefusalClass,
        kind: ErrorKind,
        message: String,
        seal: Seal,
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        if let Some(peer) = route.first() {
            let verdict = self.refusals.with(|gate| gate.refuse(peer, class, now));
            if !self.apply(verdict, peer, out) {
                return;
            }
        }
        out.push(Action::Answer(Answer {
            route,
            request,
            kind,
            message,
            seal,
        }));
    }

    /// The actions of the gate's verdict on `peer`; whether to send.
    fn apply(&self, verdict: Verdict, peer: &Bytes, out: &mut Out<'a, S>) -> bool {
        match verdict {
            Verdict::Send => true,
            Verdict::Suppress => {
                out.push(Action::Count(Count::RefusalsSuppressed));
                false
            }
            Verdict::Disconnect => {
                out.push(Action::Count(Count::GarbageDisconnects));
                out.push(Action::Disconnect(peer.clone()));
                false
            }
        }
    }

    /// Routes a heartbeat, credit grant or cancel to its open channel.
    fn channel_event(
        &self,
        peer: &Bytes,
        channel: &MessageId,
        name: &str,
        args: &[u8],
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        let registry = self.registry;
        if !registry.heard(peer, channel, now) {
            // zerorpc logs and drops these too: typically a heartbeat racing the final reply.
            out.push(Action::Count(Count::UnknownChannel));
            tracing::trace!(event = name, channel = %channel, "event for a channel that is not open");
            return;
        }
        match name {
            names::HEARTBEAT => {}
            names::MORE => match (wire::parse_more_args(args), registry.credit(peer, channel)) {
                (Some(n), Some(credit)) => out.push(Action::Grant(credit, n)),
                (None, _) => tracing::debug!(channel = %channel, "ignoring malformed _zpc_more"),
                (Some(_), None) => {}
            },
            names::CANCEL => {
                if let Some(closed) = registry.close(peer, channel) {
                    out.push(Action::Count(Count::Cancelled));
                    out.push(Action::Abort(closed));
                    tracing::debug!(channel = %channel, "call cancelled by the client");
                }
            }
            other => {
                tracing::debug!(event = other, channel = %channel, "ignoring unexpected event on a channel")
            }
        }
    }

    /// Admits a request as a call, or refuses it: shutting down, unknown method, deadline
    /// already passed, node or connection at a limit.
    fn open_call(
        &self,
        peer: Bytes,
        route: Vec<Bytes>,
        event: wire::Event,
        size: usize,
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        let request = &event.header.message_id;
        if !self.accepting {
            let message = SHUTTING_DOWN.to_owned();
            let (class, kind) = (RefusalClass::Load, ErrorKind::ShuttingDown);
            self.refuse(route, request, (class, kind, message), now, out);
            return;
        }
        let methods: &'a HashMap<String, Arc<Method>> = self.methods;
        let Some(method) = methods.get(event.name.as_ref()) else {
            self.warn
                .bad_input(&peer, &format_args!("unknown method {:?}", event.name), now);
            let (class, kind) = (RefusalClass::Garbage, ErrorKind::NameError);
            let message = event.name.into_owned();
            self.refuse(route, request, (class, kind, message), now, out);
            return;
        };
        let deadline = match event.header.deadline_ms {
            Some(0) => {
                // The caller has already given up; running the call would only waste work.
                out.push(Action::Count(Count::Expired));
                tracing::debug!(method = %event.name, "dropping request whose deadline has passed");
                return;
            }
            Some(ms) => Some(now + Duration::from_millis(ms)),
            None => None,
        };
        // Built-ins answer from static data and bypass the limits, so a health check or a
        // client's connection ping is never refused (or counted) as load.
        let permit = if crate::reserved::is_zerorpc_builtin(&event.name) {
            None
        } else {
            let limit = self.config.max_concurrent_calls;
            let Some(permit) = self.slots.try_take() else {
                out.push(Action::Count(Count::Overloaded));
                let message = format!(
                    "node {} is at its limit of {limit} concurrent calls",
                    self.name
                );
                let (class, kind) = (RefusalClass::Load, ErrorKind::Overloaded);
                self.refuse(route, request, (class, kind, message), now, out);
                return;
            };
            let load = NodeLoad {
                // The slot just taken included: it is this call's.
                in_flight: limit - self.slots.free(),
                limit,
            };
            let limits = self.config.peer_limits();
            if let Err(why) = self.registry.admit(&peer, request, size, limits, load) {
                let request = request.clone();
                self.refused_open(route, request, why, now, out);
                return;
            }
            Some(permit)
        };
        out.push(Action::Count(Count::Calls));
        self.refusals.accepted(&peer);
        out.push(Action::Open(Open {
            peer,
            route,
            event,
            size,
            method,
            deadline,
            permit,
        }));
    }

    /// Answers a request the registry would not open (at admission, or when another call
    /// raced in before the driver opened its channel).
    pub(crate) fn refused_open(
        &self,
        route: Vec<Bytes>,
        request: MessageId,
        why: OpenError,
        now: Instant,
        out: &mut Out<'a, S>,
    ) {
        let config = self.config;
        let (class, kind, message) = match why {
            OpenError::PeerCalls | OpenError::PeerBytes => {
                out.push(Action::Count(Count::PeerOverloaded));
                let limit = match why {
                    OpenError::PeerCalls => {
                        format!("{} concurrent calls", config.max_calls_per_peer)
                    }
                    _ => format!("{} bytes of requests in flight", config.max_bytes_per_peer),
                };
                let message = format!("this connection is at its limit of {limit}");
                (RefusalClass::Load, ErrorKind::PeerOverloaded, message)
            }
            OpenError::FairShare { holds, free } => {
                out.push(Action::Count(Count::Overloaded));
                out.push(Action::Count(Count::FairShareRefused));
                let message = format!(
                    "node {} is near its limit of {} concurrent calls and this connection holds \
                     {holds} of them, too many for the {free} still free",
                    self.name, config.max_concurrent_calls
                );
                (RefusalClass::Load, ErrorKind::Overloaded, message)
            }
            OpenError::Duplicate => {
                let message = "a call with this message_id is already running".to_owned();
                (RefusalClass::Garbage, ErrorKind::ProtocolError, message)
            }
        };
        self.refuse(route, &request, (class, kind, message), now, out);
    }

    /// The timer pass, every quarter heartbeat period: heartbeats due on open channels,
    /// channels whose client went silent closed and their calls aborted, and the refusal
    /// state of connections idle for [`REFUSAL_IDLE`] dropped.
    pub(crate) fn poll_timers(&self, now: Instant, out: &mut Out<'a, S>) {
        let (due, lost) = self.registry.sweep(now);
        for channel in lost {
            out.push(Action::Count(Count::PeersLost));
            tracing::info!(peer = %channel.route.first().map(|p| PeerId(p).to_string()).unwrap_or_default(),
                "client stopped heartbeating; aborting its call");
            out.push(Action::Abort(channel));
        }
        out.extend(due.into_iter().map(Action::Heartbeat));
        if self.refusals.in_use.load(Ordering::Relaxed) {
            self.refusals.with(|gate| gate.sweep(now, REFUSAL_IDLE));
        }
    }

    /// A client connection closed (`peer` as the socket names it): its calls are aborted
    /// and its refusal and key state forgotten.
    pub(crate) fn disconnected(&self, peer: &[u8], inbound: &Inbound, out: &mut Out<'a, S>) {
        let peer: Bytes = match inbound {
            Inbound::PlainOfKeyed => sender::plain_route_id(peer),
            Inbound::Sealed(keyed) => {
                let peer = Bytes::copy_from_slice(peer);
                keyed.forget_peer(&peer);
                peer
            }
            Inbound::Plain => Bytes::copy_from_slice(peer),
        };
        self.refusals.with(|gate| gate.forget(&peer));
        let channels = self.registry.close_peer(&peer);
        if !channels.is_empty() {
            tracing::info!(peer = %PeerId(&peer), calls = channels.len(), "client disconnected; aborting its calls");
        }
        for channel in channels {
            out.push(Action::Count(Count::PeersLost));
            out.push(Action::Abort(channel));
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

/// The one counter of a refusal's reason.
fn count_of(refusal: &Refusal) -> Count {
    match refusal.counter() {
        Counter::Malformed => Count::Malformed,
        Counter::Oversized => Count::Oversized,
        Counter::Unauthenticated => Count::Unauthenticated,
    }
}

#[cfg(test)]
mod tests {
    //! The bad-input cases that are bytes in, answer out (moved here from
    //! `tests/bad_input.rs`, with their assertions): no sockets, no silence windows.

    use std::cell::Cell;

    use rmpv::Value;

    use super::*;
    use crate::node::harness::raw::{bin, enc, event, hdr, request, s};
    use crate::service::Service;

    /// The node's default `max_message_size`.
    const LIMIT: usize = 16 * 1024 * 1024;

    /// Call slots that are a plain number.
    struct Free(Cell<usize>);

    impl Slots for Free {
        type Permit = ();
        fn try_take(&self) -> Option<()> {
            let n = self.0.get();
            (n > 0).then(|| self.0.set(n - 1))
        }
        fn free(&self) -> usize {
            self.0.get()
        }
    }

    /// What a session reads, owned.
    struct Node {
        config: NodeConfig,
        methods: HashMap<String, Arc<Method>>,
        registry: Registry,
        refusals: Refusals,
        warn: RateLimitedWarn,
        accepting: bool,
        slots: Free,
    }

    /// Every action one message led to, with the counters tallied.
    #[derive(Debug, Default)]
    struct Outcome {
        answers: Vec<Answer>,
        counts: HashMap<Count, u64>,
        opened: Vec<String>,
        other: usize,
    }

    impl Outcome {
        fn count(&self, which: Count) -> u64 {
            self.counts.get(&which).copied().unwrap_or(0)
        }
        fn add(&mut self, actions: Vec<Action<'_, ()>>) {
            for action in actions {
                match action {
                    Action::Answer(a) => self.answers.push(a),
                    Action::Count(c) => *self.counts.entry(c).or_default() += 1,
                    Action::Open(o) => self.opened.push(o.event.name.into_owned()),
                    _ => self.other += 1,
                }
            }
        }
    }

    impl Node {
        fn new(config: NodeConfig) -> Self {
            let echo = Service::new("echo")
                .method("upper", |s: String| async move { Ok(s.to_uppercase()) });
            let mut methods = super::super::prefixed_methods(&[echo.into()]).expect("methods");
            super::super::builtins::register("test", &mut methods);
            Self {
                refusals: Refusals::new(config.refusal_policy()),
                slots: Free(Cell::new(config.max_concurrent_calls)),
                config,
                methods,
                registry: Registry::default(),
                warn: RateLimitedWarn::default(),
                accepting: true,
            }
        }

        fn session(&self) -> Session<'_, Free> {
            Session {
                name: "test",
                config: &self.config,
                methods: &self.methods,
                registry: &self.registry,
                refusals: &self.refusals,
                warn: &self.warn,
                accepting: self.accepting,
                slots: &self.slots,
            }
        }

        /// Runs messages through the session at `now`, one after the other.
        fn handle_all(&self, messages: Vec<Vec<Bytes>>, now: Instant) -> Outcome {
            let mut outcome = Outcome::default();
            let mut out = Vec::new();
            for frames in messages {
                self.session()
                    .handle(frames, &Inbound::Plain, now, &mut out);
                outcome.add(std::mem::take(&mut out));
            }
            outcome
        }

        fn handle(&self, frames: Vec<Bytes>) -> Outcome {
            self.handle_all(vec![frames], Instant::now())
        }
    }

    /// A fresh message id payload, unique within the test binary.
    fn next_id() -> Vec<u8> {
        static N: AtomicU64 = AtomicU64::new(0);
        format!("session-{:020}", N.fetch_add(1, Ordering::Relaxed)).into_bytes()
    }

    /// `["peer", "", event]`, as the ROUTER delivers a DEALER's message.
    fn from_peer(event: Bytes) -> Vec<Bytes> {
        vec![Bytes::from_static(b"peer"), Bytes::new(), event]
    }

    /// True when the node cannot even read a header from `frame`, so it must not reply.
    fn header_unreadable(frame: &Bytes) -> bool {
        matches!(wire::decode_event(frame), Err(e) if e.header.is_none())
    }

    /// The one answer, addressed to `id` on the peer's route: (name, message).
    fn answered(outcome: &Outcome, id: &[u8]) -> (&'static str, String) {
        assert_eq!(outcome.answers.len(), 1, "{outcome:?}");
        let answer = &outcome.answers[0];
        assert_eq!(answer.request, MessageId::from_bin(id), "{outcome:?}");
        assert_eq!(answer.route, vec![Bytes::from_static(b"peer")]);
        (answer.kind.as_str(), answer.message.clone())
    }

    /// From `wrong_shape_without_readable_header_gets_no_reply`: counted, never answered.
    #[test]
    fn wrong_shape_without_readable_header_gets_no_reply() {
        let node = Node::new(NodeConfig::default());
        let args = || Value::Array(vec![s("x")]);
        let cases: Vec<(&str, Bytes)> = vec![
            ("not an array (str)", enc(&s("hello"))),
            ("not an array (int)", enc(&Value::from(42))),
            ("not an array (nil)", enc(&Value::Nil)),
            (
                "not an array (map)",
                enc(&Value::Map(vec![(s("message_id"), bin(b"m"))])),
            ),
            ("empty array", enc(&Value::Array(vec![]))),
            (
                "2-element array",
                enc(&Value::Array(vec![hdr(&next_id()), s("echo.upper")])),
            ),
            (
                "4-element array",
                enc(&Value::Array(vec![
                    hdr(&next_id()),
                    s("echo.upper"),
                    args(),
                    Value::Nil,
                ])),
            ),
            ("header is nil", event(Value::Nil, s("echo.upper"), args())),
            (
                "header is an array",
                event(
                    Value::Array(vec![s("message_id"), bin(b"x")]),
                    s("echo.upper"),
                    args(),
                ),
            ),
            (
                "header is a str",
                event(s("message_id"), s("echo.upper"), args()),
            ),
            (
                "header keys are bin",
                event(
                    Value::Map(vec![
                        (bin(b"message_id"), bin(&next_id())),
                        (bin(b"v"), Value::from(3)),
                    ]),
                    s("echo.upper"),
                    args(),
                ),
            ),
            (
                "message_id first, then an int key",
                event(
                    Value::Map(vec![
                        (s("message_id"), bin(&next_id())),
                        (Value::from(1), s("a")),
                    ]),
                    s("echo.upper"),
                    args(),
                ),
            ),
            (
                "message_id is an array",
                event(
                    Value::Map(vec![
                        (s("message_id"), Value::Array(vec![bin(b"x")])),
                        (s("v"), Value::from(3)),
                    ]),
                    s("echo.upper"),
                    args(),
                ),
            ),
            (
                "message_id is nil",
                event(
                    Value::Map(vec![
                        (s("message_id"), Value::Nil),
                        (s("v"), Value::from(3)),
                    ]),
                    s("echo.upper"),
                    args(),
                ),
            ),
            (
                "v is a string",
                event(
                    Value::Map(vec![(s("message_id"), bin(&next_id())), (s("v"), s("3"))]),
                    s("echo.upper"),
                    args(),
                ),
            ),
            (
                "v is negative",
                event(
                    Value::Map(vec![
                        (s("message_id"), bin(&next_id())),
                        (s("v"), Value::from(-3)),
                    ]),
                    s("echo.upper"),
                    args(),
                ),
            ),
            (
                "header claims more entries than present",
                Bytes::from_static(&[0x93, 0x8f, 0xaa]),
            ),
        ];
        let mut malformed = 0;
        for (what, ev) in &cases {
            assert!(header_unreadable(ev), "case {what:?} has a readable header");
            let outcome = node.handle(from_peer(ev.clone()));
            assert!(outcome.answers.is_empty(), "case {what:?}: {outcome:?}");
            assert!(outcome.opened.is_empty(), "case {what:?}: {outcome:?}");
            malformed += outcome.count(Count::Malformed);
        }
        assert_eq!(malformed, cases.len() as u64);
    }

    /// From `wrong_shape_with_readable_header_gets_protocol_error`: answered with
    /// `ERR ProtocolError` addressed to the request; the same on a `response_to` event is
    /// counted, never answered.
    #[test]
    fn wrong_shape_with_readable_header_gets_protocol_error() {
        let node = Node::new(NodeConfig::default());
        let args = || Value::Array(vec![s("x")]);
        let name_not_str = "malformed request: event name is not a string";
        let truncated = "malformed request: message is truncated";
        type Build = Box<dyn Fn(&[u8]) -> Bytes>;
        let cases: Vec<(&str, Build, &str)> = vec![
            (
                "name is an int",
                Box::new(move |id| event(hdr(id), Value::from(7), args())),
                name_not_str,
            ),
            (
                "name is bin",
                Box::new(move |id| event(hdr(id), bin(b"echo.upper"), args())),
                name_not_str,
            ),
            (
                "name is nil",
                Box::new(move |id| event(hdr(id), Value::Nil, args())),
                name_not_str,
            ),
            (
                "name is an array",
                Box::new(move |id| event(hdr(id), Value::Array(vec![s("echo.upper")]), args())),
                name_not_str,
            ),
            (
                "name is not UTF-8",
                Box::new(|id| {
                    let mut out = enc(&Value::Array(vec![hdr(id)])).to_vec();
                    out[0] = 0x93;
                    out.extend_from_slice(&[0xa2, 0xff, 0xfe, 0x90]);
                    Bytes::from(out)
                }),
                "malformed request: string is not valid UTF-8",
            ),
            (
                "args missing",
                Box::new(|id| {
                    let mut out = enc(&Value::Array(vec![hdr(id), s("echo.upper")])).to_vec();
                    out[0] = 0x93;
                    Bytes::from(out)
                }),
                truncated,
            ),
            (
                "args claim 2^32-1 elements",
                Box::new(|id| {
                    let mut out = enc(&Value::Array(vec![hdr(id), s("echo.upper")])).to_vec();
                    out[0] = 0x93;
                    out.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xa1, b'x']);
                    Bytes::from(out)
                }),
                truncated,
            ),
            (
                "args cut in the middle of a str",
                Box::new(|id| {
                    let full = request(id, "echo.upper", vec![s("a fairly long argument")]);
                    full.slice(..full.len() - 5)
                }),
                truncated,
            ),
            (
                "args contain the reserved marker",
                Box::new(|id| {
                    let mut out = enc(&Value::Array(vec![hdr(id), s("echo.upper")])).to_vec();
                    out[0] = 0x93;
                    out.extend_from_slice(&[0x91, 0xc1]);
                    Bytes::from(out)
                }),
                "malformed request: reserved msgpack marker 0xc1",
            ),
        ];
        let mut malformed = 0;
        for (what, build, expected) in &cases {
            let id = next_id();
            let outcome = node.handle(from_peer(build(&id)));
            let (name, message) = answered(&outcome, &id);
            assert_eq!(
                (name, message.as_str()),
                ("ProtocolError", *expected),
                "case {what:?}"
            );
            assert_eq!(outcome.answers[0].seal, Seal::AsUsual);
            malformed += outcome.count(Count::Malformed);
        }
        let mut with_response_to = hdr(&next_id());
        if let Value::Map(entries) = &mut with_response_to {
            entries.push((s("response_to"), bin(b"some channel")));
        }
        let outcome = node.handle(from_peer(event(with_response_to, Value::from(7), args())));
        assert!(outcome.answers.is_empty(), "{outcome:?}");
        malformed += outcome.count(Count::Malformed);
        assert_eq!(malformed, cases.len() as u64 + 1);
    }

    /// From `missing_message_id_gets_no_reply`: no reply, counted, no handler runs.
    #[test]
    fn missing_message_id_gets_no_reply() {
        let node = Node::new(NodeConfig::default());
        let args = Value::Array(vec![s("x")]);
        let headers = [
            Value::Map(vec![(s("v"), Value::from(3))]),
            Value::Map(vec![]),
            Value::Map(vec![(s("v"), Value::from(3)), (s("trace"), s("abc"))]),
        ];
        let messages = headers
            .iter()
            .map(|h| from_peer(event(h.clone(), s("echo.upper"), args.clone())))
            .collect();
        let outcome = node.handle_all(messages, Instant::now());
        assert!(outcome.answers.is_empty(), "{outcome:?}");
        assert_eq!(outcome.count(Count::Malformed), headers.len() as u64);
        assert!(outcome.opened.is_empty(), "{outcome:?}");
        assert_eq!(outcome.count(Count::Calls), 0);
    }

    /// From `unknown_methods_get_name_error_from_raw_peer`: `ERR NameError <method>` and no
    /// counter moves.
    #[test]
    fn unknown_methods_get_name_error() {
        let node = Node::new(NodeConfig::default());
        let long = "x".repeat(10_000);
        for method in [
            "echo.nope",
            "nope",
            "",
            "echo.",
            ".upper",
            "ECHO.UPPER",
            "echo.upper ",
            "_zerorpc_nope",
            "OK",
            "_zpc_hb",
            "évènement ✓",
            long.as_str(),
        ] {
            let id = next_id();
            let outcome = node.handle(from_peer(request(&id, method, vec![s("x")])));
            assert_eq!(answered(&outcome, &id), ("NameError", method.to_owned()));
            assert!(outcome.counts.is_empty(), "{outcome:?}");
            assert!(outcome.opened.is_empty(), "{outcome:?}");
        }
    }

    /// From `oversized_message_from_raw_peer_gets_message_too_large`: a readable request
    /// is answered `MessageTooLarge`; garbage and a `response_to` event over the limit are
    /// counted, not answered; no handler runs.
    #[test]
    fn oversized_messages_get_message_too_large_when_addressable() {
        let node = Node::new(NodeConfig::default());
        let big = "a".repeat(17 * 1024 * 1024);
        let id = next_id();
        let ev = request(&id, "echo.upper", vec![s(&big)]);
        let size = ev.len();
        assert!(size > LIMIT);
        let outcome = node.handle(from_peer(ev));
        let (name, message) = answered(&outcome, &id);
        assert_eq!(name, "MessageTooLarge");
        assert_eq!(
            message,
            format!("message of {size} bytes exceeds the limit of {LIMIT} bytes")
        );
        let mut header = hdr(&next_id());
        if let Value::Map(entries) = &mut header {
            entries.push((s("response_to"), bin(b"whatever")));
        }
        let rest = node.handle_all(
            vec![
                from_peer(Bytes::from(vec![0xc1u8; 17 * 1024 * 1024])),
                from_peer(event(header, s("_zpc_hb"), s(&big))),
            ],
            Instant::now(),
        );
        assert!(rest.answers.is_empty(), "{rest:?}");
        let oversized = outcome.count(Count::Oversized) + rest.count(Count::Oversized);
        let malformed = outcome.count(Count::Malformed) + rest.count(Count::Malformed);
        assert_eq!((oversized, malformed), (3, 0));
        assert!(outcome.opened.is_empty() && rest.opened.is_empty());
    }

    /// From `events_for_unknown_channels_are_ignored`: counted as `unknown_channel`, never
    /// answered, neither malformed nor cancelled; a heartbeat for a call that already
    /// finished (its channel never opened or closed) too.
    #[test]
    fn events_for_unknown_channels_are_ignored() {
        let node = Node::new(NodeConfig::default());
        let on_channel = |channel: &[u8], name: &str, args: Value| {
            let mut header = hdr(&next_id());
            if let Value::Map(entries) = &mut header {
                entries.push((s("response_to"), bin(channel)));
            }
            from_peer(event(header, s(name), args))
        };
        let events = vec![
            on_channel(
                b"no such channel",
                "_zpc_hb",
                Value::Array(vec![Value::from(0)]),
            ),
            on_channel(
                b"no such channel",
                "_zpc_more",
                Value::Array(vec![Value::from(100)]),
            ),
            on_channel(b"no such channel", "_zmesh_cancel", Value::Array(vec![])),
            on_channel(b"no such channel", "OK", Value::Array(vec![s("x")])),
            on_channel(b"no such channel", "echo.upper", Value::Array(vec![s("x")])),
            on_channel(b"", "_zpc_more", s("not [n]")),
        ];
        let count = events.len() as u64;
        let mut outcome = node.handle_all(events, Instant::now());
        let id = next_id();
        let call = node.handle(from_peer(request(&id, "echo.upper", vec![s("done")])));
        assert_eq!(call.opened, ["echo.upper"]);
        let late = node.handle(on_channel(
            &id,
            "_zpc_hb",
            Value::Array(vec![Value::from(0)]),
        ));
        *outcome.counts.entry(Count::UnknownChannel).or_default() +=
            late.count(Count::UnknownChannel);
        outcome.answers.extend(late.answers);
        assert!(outcome.answers.is_empty(), "{outcome:?}");
        assert_eq!(outcome.count(Count::UnknownChannel), count + 1);
        assert_eq!(
            (
                outcome.count(Count::Malformed),
                outcome.count(Count::Cancelled)
            ),
            (0, 0)
        );
    }

    /// From `refusals_past_the_rate_are_suppressed_and_counted`: the burst is answered, the
    /// rest is counted as suppressed. Time stands still here, so none is earned back.
    #[test]
    fn refusals_past_the_rate_are_suppressed_and_counted() {
        const BURST: u32 = 20;
        const N: usize = 200;
        let node = Node::new(NodeConfig::default().refusal_rate(BURST, 1));
        let messages = (0..N)
            .map(|_| from_peer(event(hdr(&next_id()), Value::from(1), Value::Nil)))
            .collect();
        let outcome = node.handle_all(messages, Instant::now());
        assert_eq!(outcome.answers.len(), BURST as usize, "{outcome:?}");
        assert!(
            outcome
                .answers
                .iter()
                .all(|a| a.kind == ErrorKind::ProtocolError)
        );
        assert_eq!(outcome.count(Count::Malformed), N as u64);
        let suppressed = outcome.count(Count::RefusalsSuppressed);
        assert!(
            suppressed >= (N as u64 - u64::from(BURST)) - 5 && suppressed <= N as u64,
            "suppressed {suppressed} of {N}: {outcome:?}"
        );
    }

    /// From `error_replies_keep_the_routing_envelope` (the refusals among its cases): an
    /// `ERR` goes back with the request's routing frames in front.
    #[test]
    fn refusals_keep_the_routing_envelope() {
        let node = Node::new(NodeConfig::default());
        let via_hop = |ev| vec![Bytes::from_static(b"hop"), Bytes::new(), ev];
        let (b, d) = (next_id(), next_id());
        for (ev, id, expected) in [
            (request(&b, "nope", vec![]), b, "NameError"),
            (
                event(hdr(&d), Value::from(1), Value::Nil),
                d,
                "ProtocolError",
            ),
        ] {
            let outcome = node.handle(via_hop(ev));
            assert_eq!(outcome.answers.len(), 1, "{outcome:?}");
            let answer = &outcome.answers[0];
            assert_eq!(answer.route, vec![Bytes::from_static(b"hop")]);
            assert_eq!(answer.request, MessageId::from_bin(&id));
            assert_eq!(answer.kind.as_str(), expected);
        }
    }

    /// A node that is shutting down refuses new calls as load (never suppressed), and one
    /// with no free call slot answers `Overloaded`; a built-in still runs.
    #[test]
    fn shutting_down_and_overloaded_are_answered_and_builtins_bypass_the_slots() {
        let mut node = Node::new(NodeConfig::default().refusal_rate(1, 1));
        node.slots = Free(Cell::new(0));
        let id = next_id();
        let outcome = node.handle(from_peer(request(&id, "echo.upper", vec![s("x")])));
        let (name, message) = answered(&outcome, &id);
        assert_eq!(name, "Overloaded");
        assert!(message.contains("concurrent calls"), "{message}");
        assert_eq!(outcome.count(Count::Overloaded), 1);
        let ping = node.handle(from_peer(request(&next_id(), "_zerorpc_ping", vec![])));
        assert_eq!(ping.opened, ["_zerorpc_ping"]);
        node.accepting = false;
        for _ in 0..3 {
            let id = next_id();
            let outcome = node.handle(from_peer(request(&id, "echo.upper", vec![s("x")])));
            assert_eq!(
                answered(&outcome, &id),
                (ErrorKind::ShuttingDown.as_str(), SHUTTING_DOWN.to_owned())
            );
        }
    }

    /// A request whose deadline has already passed is dropped, counted as expired; one with
    /// a deadline gets it counted from `now`.
    #[test]
    fn a_passed_deadline_is_dropped_and_a_deadline_counts_from_now() {
        let node = Node::new(NodeConfig::default());
        let with_deadline = |ms: u64| {
            let header = Value::Map(vec![
                (s("message_id"), bin(&next_id())),
                (s("v"), Value::from(3)),
                (s("zmesh_deadline_ms"), Value::from(ms)),
            ]);
            from_peer(event(header, s("echo.upper"), Value::Array(vec![s("x")])))
        };
        let outcome = node.handle(with_deadline(0));
        assert!(
            outcome.answers.is_empty() && outcome.opened.is_empty(),
            "{outcome:?}"
        );
        assert_eq!(outcome.count(Count::Expired), 1);
        let now = Instant::now();
        let mut out = Vec::new();
        node.session()
            .handle(with_deadline(1500), &Inbound::Plain, now, &mut out);
        let deadline = out.iter().find_map(|a| match a {
            Action::Open(open) => Some(open.deadline),
            _ => None,
        });
        assert_eq!(deadline, Some(Some(now + Duration::from_millis(1500))));
    }

    /// A sealed request on an endpoint without a key (a keyed client, a plain node) is
    /// answered `Unauthenticated` by its clear id, saying the endpoint takes no key, rather
    /// than left to wait for its deadline; counted `unauthenticated`, never run.
    #[test]
    fn a_sealed_request_on_a_plain_endpoint_is_told_the_endpoint_takes_no_key() {
        let node = Node::new(NodeConfig::default());
        let key = crate::trust::MeshKey::from_secret([7u8; 32]).expect("key");
        let trust = crate::trust::Trust::new(key);
        let id = next_id();
        let event = request(&id, "echo.upper", vec![s("x")]);
        let sealed = trust.seal(Kind::Request, &event, MessageId::from_bin(&id).encoded());
        let outcome = node.handle(from_peer(sealed));
        let (name, message) = answered(&outcome, &id);
        assert_eq!(name, "Unauthenticated");
        assert!(message.contains("takes no mesh key"), "{message}");
        assert_eq!(outcome.count(Count::Unauthenticated), 1);
        assert_eq!(outcome.count(Count::Malformed), 0);
        assert!(outcome.opened.is_empty(), "{outcome:?}");
    }

    /// On a keyed endpoint a plain request is refused `Unauthenticated`, answered unsealed
    /// (the peer has no key to open a sealed one); garbage is counted and not answered. On a
    /// keyed node's plain endpoint the answer goes back on the renamed plain route.
    #[test]
    fn keyed_endpoints_refuse_plain_requests_unsealed() {
        let node = Node::new(NodeConfig::default());
        let key = crate::trust::MeshKey::from_secret([7u8; 32]).expect("key");
        let sealed = Inbound::Sealed(Arc::new(Keyed::new(crate::trust::Trust::new(key))));
        let run = |frames, inbound: &Inbound| {
            let mut out = Vec::new();
            node.session()
                .handle(frames, inbound, Instant::now(), &mut out);
            let mut outcome = Outcome::default();
            outcome.add(out);
            outcome
        };
        let id = next_id();
        let outcome = run(from_peer(request(&id, "echo.upper", vec![s("x")])), &sealed);
        assert_eq!(answered(&outcome, &id).0, "Unauthenticated");
        assert_eq!(outcome.answers[0].seal, Seal::Never);
        assert_eq!(outcome.count(Count::Unauthenticated), 1);
        assert!(outcome.opened.is_empty(), "{outcome:?}");
        let garbage = run(from_peer(Bytes::from_static(&[0xc1, 0x00])), &sealed);
        assert!(garbage.answers.is_empty(), "{garbage:?}");
        assert_eq!(garbage.count(Count::Unauthenticated), 1);

        let id = next_id();
        let plain = run(
            from_peer(request(&id, "nope", vec![])),
            &Inbound::PlainOfKeyed,
        );
        assert_eq!(plain.answers.len(), 1, "{plain:?}");
        let answer = &plain.answers[0];
        assert_eq!(answer.route, vec![sender::plain_route_id(b"peer")]);
        assert_eq!(
            (answer.kind, answer.seal),
            (ErrorKind::NameError, Seal::AsUsual)
        );
    }
}
