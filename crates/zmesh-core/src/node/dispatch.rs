//! Provides the node's one adapter between the ROUTER socket and the handlers: a reader task
//! that decodes every message and either routes it to an open channel or opens a call, the
//! per-call tasks that run handlers and send replies, a heartbeat sweeper, a writer for
//! replies the reader itself produces, and a watcher for client disconnects.
//!
//! The reader never awaits a send: replies go out from the call's own task (so a slow
//! client only delays its own calls) or through the bounded control writer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, field};
use zeromq::{RouterRecvHalf, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use super::Shared;
use super::registry::{Channel, Credit, OpenError};
use crate::service::{HandlerError, Method, Reply};
use crate::wire::{
    self, EventDecodeError, HEARTBEAT_ARGS, Header, MessageId, NIL_ARGS, err_args, names,
};

/// Replies queued by the reader and heartbeats queued by the sweeper; beyond this they are
/// dropped (and counted) rather than buffered without bound during a flood.
const CONTROL_QUEUE: usize = 8192;
/// How long the control writer waits on one client's full send queue before dropping.
const CONTROL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn spawn_tasks(
    shared: Arc<Shared>,
    recv: RouterRecvHalf,
    monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let control = Control {
        tx: control_tx,
        dropped: Arc::new(AtomicU64::new(0)),
    };
    vec![
        tokio::spawn(read_loop(
            shared.clone(),
            recv,
            control.clone(),
            stop.clone(),
        )),
        tokio::spawn(write_control(shared.clone(), control_rx)),
        tokio::spawn(sweep_loop(shared.clone(), control, stop)),
        tokio::spawn(watch_disconnects(shared, monitor)),
    ]
}

/// The queue to the control writer.
#[derive(Clone)]
struct Control {
    tx: mpsc::Sender<ZmqMessage>,
    dropped: Arc<AtomicU64>,
}

impl Control {
    fn send(&self, message: ZmqMessage) {
        if self.tx.try_send(message).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "node control queue full; dropping replies");
            }
        }
    }

    fn send_err(&self, route: &[Bytes], request: &Header, name: &str, message: &str) {
        let header = Header::zmesh(Some(request.message_id.clone()));
        let event = wire::encode_event(&header, names::ERR, &err_args(name, message, None));
        self.send(wire::join_frames(route, event));
    }
}

async fn write_control(shared: Arc<Shared>, mut rx: mpsc::Receiver<ZmqMessage>) {
    let mut sender = shared.sender.clone();
    while let Some(message) = rx.recv().await {
        match tokio::time::timeout(CONTROL_SEND_TIMEOUT, sender.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "control reply not delivered"),
            Err(_) => tracing::debug!("control reply dropped: client send queue full"),
        }
    }
}

async fn read_loop(
    shared: Arc<Shared>,
    mut recv: RouterRecvHalf,
    control: Control,
    mut stop: watch::Receiver<bool>,
) {
    let warn = RateLimitedWarn::default();
    loop {
        let message = tokio::select! {
            biased;
            _ = stop.changed() => break,
            m = recv.recv() => m,
        };
        match message {
            Ok(message) => handle_message(&shared, &control, &warn, message.into_vec()),
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
struct RateLimitedWarn {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarn {
    fn bad_input(&self, peer: &Bytes, what: &dyn std::fmt::Display) {
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

fn handle_message(
    shared: &Arc<Shared>,
    control: &Control,
    warn: &RateLimitedWarn,
    frames: Vec<Bytes>,
) {
    let Some(envelope) = wire::split_frames(frames) else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // The ROUTER always puts the connection identity first.
    let Some(peer) = envelope.route.first().cloned() else {
        shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let limit = shared.config.max_message_size;
    if envelope.event.len() > limit {
        shared.counters.oversized.fetch_add(1, Ordering::Relaxed);
        let problem = format!(
            "message of {} bytes exceeds the limit of {limit} bytes",
            envelope.event.len()
        );
        warn.bad_input(&peer, &problem);
        if let Ok(header) = wire::decode_header(&envelope.event) {
            if header.response_to.is_none() {
                control.send_err(&envelope.route, &header, "MessageTooLarge", &problem);
            }
        }
        return;
    }
    let event = match wire::decode_event(&envelope.event) {
        Ok(event) => event,
        Err(EventDecodeError { error, header }) => {
            shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
            warn.bad_input(&peer, &error);
            if let Some(header) = header.filter(|h| h.response_to.is_none()) {
                let message = format!("malformed request: {error}");
                control.send_err(&envelope.route, &header, "ProtocolError", &message);
            }
            return;
        }
    };
    match &event.header.response_to {
        Some(channel) => handle_channel_event(shared, &peer, channel, &event.name, &event.args),
        None => open_call(shared, control, warn, peer, envelope.route, event),
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
) {
    let header = event.header;
    if !shared.accepting.load(Ordering::Relaxed) {
        control.send_err(&route, &header, "Unavailable", "node is shutting down");
        return;
    }
    let Some(method) = shared.methods.get(&event.name) else {
        warn.bad_input(&peer, &format_args!("unknown method {:?}", event.name));
        control.send_err(&route, &header, "NameError", &event.name);
        return;
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
    if event.name.starts_with("_zerorpc_") {
        // Built-ins answer at once from static data. They bypass the call limits so a
        // health check or a client's connection ping is never refused (or counted) as load.
        let call = Call {
            shared: shared.clone(),
            peer,
            route,
            request_id: header.message_id,
            method_name: event.name,
            method: method.clone(),
            args: event.args,
            deadline: None,
            credit: None,
            _permit: None,
        };
        shared.counters.calls.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(call.run());
        return;
    }
    let Ok(permit) = shared.concurrency.clone().try_acquire_owned() else {
        shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "node {} is at its limit of {} concurrent calls",
            shared.name, shared.config.max_concurrent_calls
        );
        control.send_err(&route, &header, "Overloaded", &message);
        return;
    };
    let credit = method.streaming.then(|| Arc::new(Credit::new()));
    let channel = Channel {
        route: route.clone(),
        abort: None,
        credit: credit.clone(),
        opened: now,
        last_heard: now,
        last_hb_sent: now,
        heard_any: false,
    };
    let call = Call {
        shared: shared.clone(),
        peer: peer.clone(),
        route,
        request_id: header.message_id.clone(),
        method_name: event.name,
        method: method.clone(),
        args: event.args,
        deadline,
        credit,
        _permit: Some(permit),
    };
    let opened = shared.registry.open(
        &peer,
        header.message_id.clone(),
        channel,
        shared.config.max_calls_per_peer,
        || tokio::spawn(call.run()).abort_handle(),
    );
    match opened {
        Ok(()) => {
            shared.counters.calls.fetch_add(1, Ordering::Relaxed);
        }
        Err((OpenError::PeerLimit, refused)) => {
            shared.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            let message = format!(
                "this connection is at its limit of {} concurrent calls",
                shared.config.max_calls_per_peer
            );
            control.send_err(&refused.route, &header, "Overloaded", &message);
        }
        Err((OpenError::Duplicate, refused)) => {
            let message = "a call with this message_id is already running";
            control.send_err(&refused.route, &header, "ProtocolError", message);
        }
    }
}

/// One accepted call, owned by its task.
struct Call {
    shared: Arc<Shared>,
    peer: Bytes,
    route: Vec<Bytes>,
    request_id: MessageId,
    method_name: String,
    method: Arc<Method>,
    args: Bytes,
    deadline: Option<Instant>,
    credit: Option<Arc<Credit>>,
    /// Held for the life of the call: the node-wide concurrency slot (built-ins take none).
    _permit: Option<OwnedSemaphorePermit>,
}

/// Closes the call's channel however the task ends (reply sent, panic, or abort).
struct CloseOnDrop {
    shared: Arc<Shared>,
    peer: Bytes,
    id: MessageId,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.shared.registry.close(&self.peer, &self.id);
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

impl Call {
    async fn run(self) {
        let _close = CloseOnDrop {
            shared: self.shared.clone(),
            peer: self.peer.clone(),
            id: self.request_id.clone(),
        };
        let span = tracing::info_span!(
            "zmesh.call",
            method = %self.method_name,
            id = %self.request_id,
            peer = %PeerId(&self.peer),
            outcome = field::Empty,
            duration_us = field::Empty,
        );
        let started = Instant::now();
        let record = span.clone();
        let outcome = self.serve().instrument(span).await;
        record.record("outcome", field::debug(outcome));
        record.record("duration_us", started.elapsed().as_micros() as u64);
    }

    async fn serve(&self) -> Outcome {
        let handler = self.method.handler.clone();
        let args = self.args.clone();
        // Build the future inside the catch so a panic while decoding args is caught too.
        let call = AssertUnwindSafe(async move { handler(args).await }).catch_unwind();
        let result = match self.deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline.into(), call).await {
                Ok(result) => result,
                Err(_) => {
                    self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                    let message =
                        format!("{} did not finish within its deadline", self.method_name);
                    self.send_err("DeadlineExceeded", &message).await;
                    return Outcome::DeadlineExceeded;
                }
            },
            None => call.await,
        };
        match result {
            Ok(Ok(Reply::Value(value))) => {
                self.send(names::OK, |out| {
                    out.push(0x91);
                    out.extend_from_slice(&value);
                })
                .await;
                Outcome::Ok
            }
            Ok(Ok(Reply::Stream(stream))) => self.stream(stream).await,
            Ok(Err(e)) => {
                self.send_handler_err(&e).await;
                Outcome::Error
            }
            Err(panic) => {
                self.send_panic(panic).await;
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
                    self.send(names::STREAM, |out| out.extend_from_slice(&item))
                        .await
                }
                Ok(Some(Err(e))) => {
                    self.send_handler_err(&e).await;
                    return Outcome::Error;
                }
                Ok(None) => {
                    self.send(names::STREAM_DONE, |out| out.extend_from_slice(NIL_ARGS))
                        .await;
                    return Outcome::StreamDone;
                }
                Err(panic) => {
                    self.send_panic(panic).await;
                    return Outcome::Panic;
                }
            }
        }
    }

    async fn send_handler_err(&self, e: &HandlerError) {
        let args = err_args(e.name(), e.message(), e.traceback());
        self.send(names::ERR, |out| out.extend_from_slice(&args))
            .await;
    }

    async fn send_panic(&self, panic: Box<dyn std::any::Any + Send>) {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "handler panicked".to_owned());
        tracing::error!(method = %self.method_name, panic = %detail, "handler panicked");
        let message = format!("{} panicked: {detail}", self.method_name);
        self.send_err("HandlerPanic", &message).await;
    }

    async fn send_err(&self, name: &str, message: &str) {
        let args = err_args(name, message, None);
        self.send(names::ERR, |out| out.extend_from_slice(&args))
            .await;
    }

    async fn send(&self, name: &str, write_args: impl FnOnce(&mut Vec<u8>)) {
        let header = Header::zmesh(Some(self.request_id.clone()));
        let mut out = Vec::with_capacity(128);
        wire::encode_event_into(&mut out, &header, name, write_args);
        let message = wire::join_frames(&self.route, Bytes::from(out));
        let mut sender = self.shared.sender.clone();
        if let Err(e) = sender.send(message).await {
            // The client went away; there is nobody left to tell.
            tracing::debug!(peer = %PeerId(&self.peer), error = %e, "reply not delivered");
        }
    }
}

/// Sends heartbeats on open channels and closes channels whose client went silent.
async fn sweep_loop(shared: Arc<Shared>, control: Control, mut stop: watch::Receiver<bool>) {
    let period = shared.config.heartbeat;
    // Quarter-period ticks keep heartbeats and loss detection within a quarter period of due.
    let mut ticker = tokio::time::interval(period / 4);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick() => {}
        }
        let (due, lost) = shared.registry.sweep(Instant::now(), period);
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
    }
}

/// Aborts the calls of a client connection as soon as the socket reports it gone.
async fn watch_disconnects(
    shared: Arc<Shared>,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
) {
    while let Some(event) = monitor.next().await {
        if let SocketEvent::Disconnected(peer_id) = event {
            let peer: Bytes = peer_id.into();
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
        let event =
            wire::encode_event(&header, names::ERR, &err_args("Unavailable", message, None));
        let _ = tokio::time::timeout(
            CONTROL_SEND_TIMEOUT,
            sender.send(wire::join_frames(&channel.route, event)),
        )
        .await;
    }
    count
}
