//! Provides a socket-free harness around the node's handling of whole multipart messages,
//! so fuzzers and tests can drive exactly the code the ROUTER reader runs, without sockets.
//! Not a stable API: it exists for `fuzz/` and for tests.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use zeromq::ZmqMessage;

use super::dispatch::{self, Control, RateLimitedWarn};
use super::sender::Sender;
use super::{Counters, NodeConfig, NodeError, NodeStats, Shared, builtins};
use crate::service::Service;

/// A node's message handling with its output captured instead of sent.
///
/// Each [`Harness::handle`] runs one message through the node's reader entry point on a
/// current-thread runtime, lets spawned work run a few turns, and returns every message the
/// node sent meanwhile (replies, errors, heartbeats).
pub struct Harness {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    control: Control,
    warn: RateLimitedWarn,
    out: mpsc::UnboundedReceiver<ZmqMessage>,
    _stop: watch::Sender<bool>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness").finish_non_exhaustive()
    }
}

/// Turns spawned tasks get after each message (the control writer, fast calls' sends).
const SETTLE_TURNS: usize = 8;

impl Harness {
    /// A harness serving `services` (every method as `service.method`, plus the built-ins)
    /// with `config`.
    ///
    /// # Errors
    /// [`NodeError`] when the configuration or the method table is invalid.
    pub fn new(services: &[Service], config: NodeConfig) -> Result<Self, NodeError> {
        let mut runtime = tokio::runtime::Builder::new_current_thread();
        Self::on(runtime.enable_time(), services, config)
    }

    /// A harness whose clock stands still until [`Harness::advance`] moves it: timer tests
    /// (heartbeats, silent channels, deadlines) run in no real time.
    #[cfg(test)]
    fn paused(services: &[Service], config: NodeConfig) -> Result<Self, NodeError> {
        let mut runtime = tokio::runtime::Builder::new_current_thread();
        Self::on(runtime.enable_time().start_paused(true), services, config)
    }

    fn on(
        runtime: &mut tokio::runtime::Builder,
        services: &[Service],
        config: NodeConfig,
    ) -> Result<Self, NodeError> {
        config.validate()?;
        let runtime = runtime.build().map_err(NodeError::Runtime)?;
        let name = "harness".to_owned();
        let mut methods = super::prefixed_methods(services)?;
        builtins::register(&name, &mut methods);
        let counters = Arc::new(Counters::default());
        builtins::register_stats(&name, &mut methods, counters.clone());
        let (tx, out) = mpsc::unbounded_channel();
        let shared = Shared::new(name, methods, config, counters, Sender::Capture(tx));
        let (stop, stop_rx) = watch::channel(false);
        let control = runtime.block_on(async { dispatch::spawn_support(&shared, stop_rx).0 });
        Ok(Self {
            runtime,
            shared,
            control,
            warn: RateLimitedWarn::default(),
            out,
            _stop: stop,
        })
    }

    /// Hands one multipart message (as the ROUTER delivers it: identity first) to the node
    /// and returns what the node sent in response.
    pub fn handle(&mut self, frames: Vec<Bytes>) -> Vec<ZmqMessage> {
        let (shared, control, warn) = (&self.shared, &self.control, &self.warn);
        self.runtime.block_on(async {
            let door = dispatch::Door {
                inbound: dispatch::Inbound::Plain,
                endpoint: None,
                peers: dispatch::PeerAddresses::Unknown,
            };
            let mut actions = dispatch::Actions::new();
            dispatch::handle_message(shared, control, warn, frames, &door, &mut actions);
            for _ in 0..SETTLE_TURNS {
                tokio::task::yield_now().await;
            }
        });
        std::iter::from_fn(|| self.out.try_recv().ok()).collect()
    }

    /// Moves the paused clock on by `by`, in steps of `step`, letting the node's tasks run
    /// after each; returns what the node sent meanwhile.
    #[cfg(test)]
    fn advance(&mut self, by: std::time::Duration, step: std::time::Duration) -> Vec<ZmqMessage> {
        self.runtime.block_on(async {
            let mut left = by;
            while !left.is_zero() {
                let d = step.min(left);
                tokio::time::advance(d).await;
                for _ in 0..SETTLE_TURNS {
                    tokio::task::yield_now().await;
                }
                left -= d;
            }
        });
        std::iter::from_fn(|| self.out.try_recv().ok()).collect()
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        super::stats_of(&self.shared)
    }
}

/// Hand-built zerorpc events (with `rmpv`), for tests that break the protocol on purpose:
/// the session's unit tests and the socket tests of bad input build the same bytes.
pub mod raw {
    use bytes::Bytes;
    use rmpv::Value;

    /// `v` encoded.
    pub fn enc(v: &Value) -> Bytes {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).expect("encodes");
        Bytes::from(out)
    }

    /// A str value.
    pub fn s(text: &str) -> Value {
        Value::from(text)
    }

    /// A bin value.
    pub fn bin(bytes: &[u8]) -> Value {
        Value::Binary(bytes.to_vec())
    }

    /// `{"message_id": <bin id>, "v": 3}`, as a stock zerorpc client sends it.
    pub fn hdr(id: &[u8]) -> Value {
        Value::Map(vec![(s("message_id"), bin(id)), (s("v"), Value::from(3))])
    }

    /// `[header, name, args]` encoded.
    pub fn event(header: Value, name: Value, args: Value) -> Bytes {
        enc(&Value::Array(vec![header, name, args]))
    }

    /// A well-formed request.
    pub fn request(id: &[u8], method: &str, args: Vec<Value>) -> Bytes {
        event(hdr(id), s(method), Value::Array(args))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::context::CallContext;
    use crate::wire::{self, Header, names};

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn upper() -> Service {
        Service::new("t")
            .method("upper", |s: String| async move { Ok(s.to_uppercase()) })
            .into()
    }

    fn request(name: &str, args: &[u8]) -> Vec<Bytes> {
        let event = wire::encode_event(&Header::zmesh(None), name, args);
        vec![Bytes::from_static(b"peer"), Bytes::new(), event]
    }

    fn reply_of(messages: &[ZmqMessage]) -> wire::Event {
        assert_eq!(messages.len(), 1, "{messages:?}");
        let frames = messages[0].clone().into_vec();
        assert_eq!(frames[0], Bytes::from_static(b"peer"), "routed back");
        let last = frames.last().expect("event frame").clone();
        wire::decode_event(&last).expect("the node sends valid events")
    }

    /// A method that never finishes (its call stays open until something ends it),
    /// keeping each call's context in `kept` for the test to look at.
    fn hang_keeping(kept: Arc<std::sync::Mutex<Vec<CallContext>>>) -> Service {
        Service::new("t")
            .method("hang", move |ctx: CallContext, s: String| {
                kept.lock().expect("not poisoned").push(ctx);
                async move {
                    std::future::pending::<()>().await;
                    Ok(s)
                }
            })
            .into()
    }

    fn the_one(kept: &std::sync::Mutex<Vec<CallContext>>) -> CallContext {
        let kept = kept.lock().expect("not poisoned");
        assert_eq!(kept.len(), 1, "one call ran");
        kept[0].clone()
    }

    fn names_of(messages: &[ZmqMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| {
                let last = m.clone().into_vec().pop().expect("event frame");
                let event = wire::decode_event(&last).expect("the node sends valid events");
                event.name.into_owned()
            })
            .collect()
    }

    /// The node heartbeats a running call's client every period, and when the client stays
    /// silent for more than two periods its channel is lost and the call aborted: all in
    /// paused time.
    #[test]
    fn a_silent_channel_is_heartbeated_then_lost() {
        let period = Duration::from_secs(1);
        let config = NodeConfig::default().heartbeat(period);
        let kept = Arc::default();
        let mut h = Harness::paused(&[hang_keeping(Arc::clone(&kept))], config).expect("harness");
        let args = rmp_serde::to_vec(&("x",)).expect("encodes");
        assert!(h.handle(request("t.hang", &args)).is_empty());
        assert_eq!(h.stats().in_flight, 1);
        let ctx = the_one(&kept);
        assert_eq!(ctx.method(), "t.hang");
        assert_eq!(ctx.peer().identity(), b"peer");
        let step = period / 8;
        // Within two periods: heartbeats go out, the channel stays open.
        let sent = h.advance(period + period / 2, step);
        let names = names_of(&sent);
        assert!(!names.is_empty(), "no heartbeat in a period and a half");
        assert!(names.iter().all(|n| n == names::HEARTBEAT), "{names:?}");
        assert_eq!((h.stats().in_flight, h.stats().peers_lost), (1, 0));
        assert!(!ctx.is_cancelled());
        // Past the silence limit (two periods, checked every quarter period): lost, and
        // the handler's context says so.
        h.advance(2 * period, step);
        let stats = h.stats();
        assert_eq!((stats.in_flight, stats.peers_lost), (0, 1), "{stats:?}");
        assert!(ctx.is_cancelled(), "a lost peer cancels the context");
    }

    /// A call that outlives its deadline is answered `DeadlineExceeded` once its deadline
    /// passes, not before; in paused time.
    #[test]
    fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        let config = NodeConfig::default().heartbeat(Duration::from_secs(60));
        let kept = Arc::default();
        let mut h = Harness::paused(&[hang_keeping(Arc::clone(&kept))], config).expect("harness");
        let args = rmp_serde::to_vec(&("x",)).expect("encodes");
        let mut header = Header::zmesh(None);
        header.deadline_ms = Some(500);
        header.traceparent = Some(TRACEPARENT.into());
        let event = wire::encode_event(&header, "t.hang", &args);
        let frames = vec![Bytes::from_static(b"peer"), Bytes::new(), event];
        assert!(h.handle(frames).is_empty());
        let ctx = the_one(&kept);
        // The header's deadline and trace context reach the handler, no longer dropped.
        // On the harness's paused clock.
        let remaining = |h: &Harness| {
            let _clock = h.runtime.enter();
            ctx.remaining()
        };
        assert_eq!(remaining(&h), Some(Duration::from_millis(500)));
        assert_eq!(
            ctx.traceparent().map(ToString::to_string).as_deref(),
            Some(TRACEPARENT)
        );
        let step = Duration::from_millis(50);
        assert!(h.advance(Duration::from_millis(400), step).is_empty());
        assert_eq!(h.stats().expired, 0);
        assert!(!ctx.is_cancelled());
        assert_eq!(remaining(&h), Some(Duration::from_millis(100)));
        let sent = h.advance(Duration::from_millis(200), step);
        let reply = reply_of(&sent);
        assert_eq!(reply.name, names::ERR);
        let (name, message, _) = wire::parse_err_args(&reply.args);
        assert_eq!(name, "DeadlineExceeded");
        assert_eq!(message, "t.hang did not finish within its deadline");
        assert_eq!(reply.header.response_to, Some(header.message_id));
        let stats = h.stats();
        assert_eq!((stats.expired, stats.in_flight), (1, 0), "{stats:?}");
        assert!(ctx.is_cancelled(), "the deadline cancels the context");
        assert_eq!(remaining(&h), Some(Duration::ZERO));
    }

    /// A `_zmesh_cancel` from the caller ends the call and cancels its context; a call
    /// that finishes leaves its context uncancelled.
    #[test]
    fn a_cancel_cancels_the_context_and_a_finished_call_does_not() {
        let config = NodeConfig::default().heartbeat(Duration::from_secs(60));
        let kept = Arc::default();
        let mut h = Harness::paused(&[hang_keeping(Arc::clone(&kept))], config).expect("harness");
        let args = rmp_serde::to_vec(&("x",)).expect("encodes");
        let header = Header::zmesh(None);
        let event = wire::encode_event(&header, "t.hang", &args);
        assert!(
            h.handle(vec![Bytes::from_static(b"peer"), Bytes::new(), event])
                .is_empty()
        );
        let ctx = the_one(&kept);
        assert!(!ctx.is_cancelled());
        let cancel = wire::encode_event(
            &Header::zmesh(Some(header.message_id)),
            names::CANCEL,
            wire::EMPTY_ARRAY_ARGS,
        );
        h.handle(vec![Bytes::from_static(b"peer"), Bytes::new(), cancel]);
        assert_eq!(h.stats().in_flight, 0);
        assert!(
            ctx.is_cancelled(),
            "the caller's cancel cancels the context"
        );

        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = Service::new("t").method("done", {
            let kept = Arc::clone(&kept);
            move |ctx: CallContext| {
                kept.lock().expect("not poisoned").push(ctx);
                async { Ok(()) }
            }
        });
        let mut h = Harness::paused(&[done.into()], NodeConfig::default()).expect("harness");
        let reply = reply_of(&h.handle(request("t.done", &[0x90])));
        assert_eq!(reply.name, names::OK);
        assert!(!the_one(&kept).is_cancelled());
    }

    #[test]
    fn a_request_is_answered_and_garbage_is_counted() {
        let mut h = Harness::new(&[upper()], NodeConfig::default()).expect("harness");
        let args = rmp_serde::to_vec(&("hi",)).expect("encodes");
        let reply = reply_of(&h.handle(request("t.upper", &args)));
        assert_eq!(reply.name, names::OK);
        let args = rmp_serde::to_vec(&("x",)).expect("encodes");
        let reply = reply_of(&h.handle(request("t.nope", &args)));
        assert_eq!(reply.name, names::ERR);
        assert_eq!(wire::parse_err_args(&reply.args).0, "NameError");
        let garbage = vec![
            Bytes::from_static(b"peer"),
            Bytes::from_static(&[0xc1, 0x00]),
        ];
        assert!(h.handle(garbage).is_empty());
        let stats = h.stats();
        assert_eq!((stats.calls, stats.malformed), (1, 1), "{stats:?}");
    }
}
