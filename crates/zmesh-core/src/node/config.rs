//! Provides the node's configuration with its documented defaults.

use std::time::Duration;

use crate::config::{self, ConfigError};

/// Node settings. Build with `NodeConfig::default()` and the chained setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Heartbeat period on every open channel (default 5 s, as zerorpc). A client that sends
    /// no heartbeat for more than two periods is lost and its calls are aborted.
    pub heartbeat: Duration,
    /// Calls running at once on the node; beyond it requests get `ERR Overloaded`
    /// (default 10,000).
    pub max_concurrent_calls: usize,
    /// Calls running at once for one client connection (a ROUTER peer); beyond it that
    /// client gets `ERR PeerOverloaded` while other clients are served (default 1,000).
    pub max_calls_per_peer: usize,
    /// Request bytes of the calls running at once for one client connection; beyond it that
    /// client gets `ERR PeerOverloaded` (default 64 MiB; at least `max_message_size`, so
    /// one request of the largest size fits on an idle connection).
    pub max_bytes_per_peer: usize,
    /// Largest accepted event frame in bytes; larger requests get `ERR MessageTooLarge`
    /// (default 16 MiB).
    pub max_message_size: usize,
    /// Grace period used by [`Node::run_until`](super::Node::run_until) (default 10 s).
    pub shutdown_grace: Duration,
    /// Replies remembered for requests carrying a `zmesh_request_id`, so a retried request
    /// is answered without running twice (default 10,000; 0 turns the cache off).
    pub reply_cache_size: usize,
    /// How long such a reply is remembered (default 60 s).
    pub reply_cache_ttl: Duration,
    /// Bytes of replies that may wait, in all, for clients whose send queues are full;
    /// beyond it such replies are dropped and counted (default 64 MiB; at least
    /// `max_message_size`).
    pub max_stalled_bytes: usize,
    /// Refusals of bad requests (`ERR`s for malformed requests, unknown methods, messages
    /// over the limit, unsealed or replayed messages) one connection may receive in a burst;
    /// beyond it they are suppressed and counted (default 256). Refusals for load are
    /// always sent.
    pub refusal_burst: u32,
    /// Refusals of bad requests per second one connection may receive after its burst
    /// (default 100).
    pub refusals_per_second: u32,
    /// Bad requests in a row (malformed, unknown method, over the size limit, unsealed or
    /// replayed), with no accepted call between, after which the node closes the
    /// connection (default 10,000; 0 never closes).
    pub disconnect_after_bad_requests: u32,
    /// Frames a message from a client may have (default 128; at least 4). The frame
    /// header of one more closes the connection while it is being read, as does a message
    /// over twice `max_message_size` plus 1 MiB (one up to that size is read and refused
    /// with `ERR MessageTooLarge`).
    pub max_frames: usize,
    /// How long a new connection may take to finish its ZMTP greeting and READY (default
    /// 5 s; at least 10 ms); one that has not by then is dropped.
    pub handshake_timeout: Duration,
    /// Connections each bound endpoint keeps open at once, handshakes included (default
    /// 4,096); past it a new connection is closed at once. Lowered at start, with a
    /// warning, to what the descriptor limit (`RLIMIT_NOFILE`) allows with 64 to spare.
    pub max_connections_per_endpoint: usize,
    /// Bytes of replies queued for one client connection that it has not read yet
    /// (default 16 MiB; at least 64 KiB). Past it further replies wait, and beyond
    /// `max_stalled_bytes` of waiting replies in all they are dropped and counted in
    /// [`NodeStats::replies_dropped`](super::NodeStats::replies_dropped).
    pub send_queue_bytes_per_peer: usize,
    /// The low-latency mode (default off): after each message the node keeps polling its
    /// sockets for up to this long before its thread parks, so a request arriving within
    /// it is read without a wake-up. Costs a CPU kept busy for up to this long after every
    /// message (at most 1 ms); see docs/PERFORMANCE.md.
    pub spin: Option<Duration>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            max_concurrent_calls: 10_000,
            max_calls_per_peer: 1_000,
            max_bytes_per_peer: 64 * 1024 * 1024,
            max_message_size: 16 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
            reply_cache_size: 10_000,
            reply_cache_ttl: Duration::from_secs(60),
            max_stalled_bytes: 64 * 1024 * 1024,
            refusal_burst: 256,
            refusals_per_second: 100,
            disconnect_after_bad_requests: 10_000,
            max_frames: crate::zmtp::MAX_FRAMES,
            handshake_timeout: zeromq::DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections_per_endpoint: 4096,
            send_queue_bytes_per_peer: zeromq::DEFAULT_SEND_QUEUE_BYTES,
            spin: None,
        }
    }
}

impl NodeConfig {
    /// Sets the heartbeat period.
    #[must_use]
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// Sets the per-node bound on concurrent calls.
    #[must_use]
    pub fn max_concurrent_calls(mut self, n: usize) -> Self {
        self.max_concurrent_calls = n;
        self
    }

    /// Sets the per-connection bound on concurrent calls.
    #[must_use]
    pub fn max_calls_per_peer(mut self, n: usize) -> Self {
        self.max_calls_per_peer = n;
        self
    }

    /// Sets the per-connection bound on in-flight request bytes.
    #[must_use]
    pub fn max_bytes_per_peer(mut self, bytes: usize) -> Self {
        self.max_bytes_per_peer = bytes;
        self
    }

    /// Sets the largest accepted message in bytes.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the shutdown grace period.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets the reply cache's size and time to live.
    #[must_use]
    pub fn reply_cache(mut self, size: usize, ttl: Duration) -> Self {
        self.reply_cache_size = size;
        self.reply_cache_ttl = ttl;
        self
    }

    /// Sets the bound on bytes of replies waiting for clients that do not read.
    #[must_use]
    pub fn max_stalled_bytes(mut self, bytes: usize) -> Self {
        self.max_stalled_bytes = bytes;
        self
    }

    /// Sets how many refusals one connection may receive: a burst, then a rate per second.
    #[must_use]
    pub fn refusal_rate(mut self, burst: u32, per_second: u32) -> Self {
        self.refusal_burst = burst;
        self.refusals_per_second = per_second;
        self
    }

    /// Sets after how many bad requests in a row a connection is closed (0: never).
    #[must_use]
    pub fn disconnect_after_bad_requests(mut self, n: u32) -> Self {
        self.disconnect_after_bad_requests = n;
        self
    }

    /// Sets the most frames a message may have.
    #[must_use]
    pub fn max_frames(mut self, frames: usize) -> Self {
        self.max_frames = frames;
        self
    }

    /// Sets the deadline of a new connection's ZMTP handshake.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the cap on connections open at once per bound endpoint.
    #[must_use]
    pub fn max_connections_per_endpoint(mut self, connections: usize) -> Self {
        self.max_connections_per_endpoint = connections;
        self
    }

    /// Turns the low-latency mode on: a spin of up to `spin` before parking (at most
    /// 1 ms; see [`NodeConfig::spin`](struct.NodeConfig.html#structfield.spin)).
    #[must_use]
    pub fn spin(mut self, spin: Duration) -> Self {
        self.spin = Some(spin);
        self
    }

    /// Sets the bound on reply bytes queued for one client connection.
    #[must_use]
    pub fn send_queue_bytes_per_peer(mut self, bytes: usize) -> Self {
        self.send_queue_bytes_per_peer = bytes;
        self
    }

    /// The options of the node's sockets (its ROUTERs, or a worker's DEALER).
    pub(crate) fn socket_options(&self, max_connections: usize) -> zeromq::SocketOptions {
        let mut options = crate::zmtp::options(self.max_message_size, self.max_frames);
        options
            .handshake_timeout(self.handshake_timeout)
            .max_connections(max_connections)
            .send_queue_bytes(self.send_queue_bytes_per_peer);
        options
    }

    /// Checks every setting against its range (see [`crate::config`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::at_least("heartbeat", self.heartbeat, Duration::from_millis(10))?;
        config::in_range(
            "max_concurrent_calls",
            self.max_concurrent_calls,
            1,
            u32::MAX as usize,
        )?;
        config::at_least("max_calls_per_peer", self.max_calls_per_peer, 1)?;
        config::at_least("max_message_size", self.max_message_size, 64)?;
        config::at_least_field(
            "max_bytes_per_peer",
            self.max_bytes_per_peer,
            "max_message_size",
            self.max_message_size,
        )?;
        config::at_least_field(
            "max_stalled_bytes",
            self.max_stalled_bytes,
            "max_message_size",
            self.max_message_size,
        )?;
        config::at_least("refusal_burst", self.refusal_burst, 1)?;
        config::at_least("max_frames", self.max_frames, 4)?;
        config::at_least(
            "handshake_timeout",
            self.handshake_timeout,
            Duration::from_millis(10),
        )?;
        config::at_least(
            "max_connections_per_endpoint",
            self.max_connections_per_endpoint,
            1,
        )?;
        config::at_least(
            "send_queue_bytes_per_peer",
            self.send_queue_bytes_per_peer,
            64 * 1024,
        )?;
        if let Some(spin) = self.spin {
            config::in_range("spin", spin, Duration::ZERO, crate::spin::MAX_SPIN)?;
        }
        Ok(())
    }

    pub(crate) fn refusal_policy(&self) -> super::refusals::RefusalPolicy {
        super::refusals::RefusalPolicy {
            burst: self.refusal_burst,
            per_second: self.refusals_per_second,
            disconnect_after: self.disconnect_after_bad_requests,
            ..Default::default()
        }
    }

    pub(crate) fn peer_limits(&self) -> super::registry::PeerLimits {
        super::registry::PeerLimits {
            calls: self.max_calls_per_peer,
            bytes: self.max_bytes_per_peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_validated_by_name() {
        assert!(NodeConfig::default().validate().is_ok());
        assert!(
            NodeConfig::default()
                .spin(Duration::from_micros(50))
                .validate()
                .is_ok()
        );
        for (config, problem) in [
            (NodeConfig::default().heartbeat(Duration::ZERO), "heartbeat"),
            (
                NodeConfig::default().max_concurrent_calls(0),
                "max_concurrent_calls",
            ),
            (
                NodeConfig::default().max_concurrent_calls(u32::MAX as usize + 1),
                "max_concurrent_calls",
            ),
            (
                NodeConfig::default().max_calls_per_peer(0),
                "max_calls_per_peer",
            ),
            (
                NodeConfig::default().max_message_size(63),
                "max_message_size",
            ),
            (
                NodeConfig::default().max_bytes_per_peer(1024),
                "max_bytes_per_peer",
            ),
            (
                NodeConfig::default().max_stalled_bytes(1024),
                "max_stalled_bytes",
            ),
            (NodeConfig::default().refusal_rate(0, 1), "refusal_burst"),
            (NodeConfig::default().max_frames(3), "max_frames"),
            (
                NodeConfig::default().handshake_timeout(Duration::from_millis(1)),
                "handshake_timeout",
            ),
            (
                NodeConfig::default().max_connections_per_endpoint(0),
                "max_connections_per_endpoint",
            ),
            (
                NodeConfig::default().send_queue_bytes_per_peer(1024),
                "send_queue_bytes_per_peer",
            ),
            (NodeConfig::default().spin(Duration::from_millis(2)), "spin"),
        ] {
            match config.validate() {
                Err(e) => assert_eq!(e.field, problem, "{e}"),
                other => panic!("{problem}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_sockets_get_the_wire_limit_not_the_message_limit() {
        let config = NodeConfig::default()
            .max_message_size(1 << 20)
            .max_frames(8);
        let options = format!("{:?}", config.socket_options(10));
        assert!(
            options.contains(&format!("max_message_size: {}", 3 << 20)),
            "{options}"
        );
        assert!(options.contains("max_frames: 8"), "{options}");
        assert!(options.contains("max_connections: Some(10)"), "{options}");
    }
}
