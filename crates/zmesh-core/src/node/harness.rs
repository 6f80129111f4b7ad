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
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(NodeError::Runtime)?;
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
            dispatch::handle_message(shared, control, warn, frames, &dispatch::Inbound::Plain);
            for _ in 0..SETTLE_TURNS {
                tokio::task::yield_now().await;
            }
        });
        std::iter::from_fn(|| self.out.try_recv().ok()).collect()
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        super::stats_of(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::HandlerError;
    use crate::wire::{self, Header, names};

    fn upper() -> Service {
        Service::new("t").method("upper", |s: String| async move {
            Ok::<_, HandlerError>(s.to_uppercase())
        })
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
