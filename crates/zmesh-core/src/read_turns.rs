//! Makes a socket's read loop give its thread back every few messages, so the replies it
//! has produced go out while it reads on.
//!
//! Why: the `zeromq` crate sends through a writer task per peer. A read loop that finds a
//! burst of pipelined messages already buffered would otherwise handle the whole burst (up to
//! the caller's window, 128 in the benches) before that writer runs; on a `current_thread`
//! runtime, the usual one per node, nothing goes out meanwhile, and the peer sits idle
//! until the whole burst comes back at once. Both ends then take turns instead of working
//! at the same time. Yielding every [`MESSAGES_PER_TURN`] messages lets the writer run in
//! between, so the two ends overlap: pipelined throughput against a raw `zeromq` echo rose
//! from 0.37-0.38x to 0.57-0.61x on two cores (2026-11-29; the measurement history is in
//! git, see docs/PERFORMANCE.md). The price is more, smaller socket writes (more kernel time
//! per call). A client's reader produces no writes of its own (its callers' next requests
//! wait for a yield either way), so there the smaller writes cost more than the overlap
//! buys: its reader task takes [`CLIENT_MESSAGES_PER_TURN`] on a `current_thread` runtime.
//! A loop handling single messages, as in sequential calls, yields once per turn of them,
//! which costs nothing measurable.

/// Messages a server's read loop (node, worker, device) handles between two yields. 8 to
/// 64 measured alike within noise; fewer means more, smaller socket writes, more means
/// longer turns: at 128 its replies leave in bursts that idle the caller (a node's
/// pipelined calls/s fell by a third, 2026-12-03).
pub const MESSAGES_PER_TURN: u32 = 16;

/// Messages a client connection's reader task handles between two yields on a
/// `current_thread` runtime (on a multi-thread one it takes a server's turn, which measured
/// 5-8% better for a job queue dispatching to its workers at 64 submitters). Larger than a
/// server's: a client's replies produce no writes of their own, only wake its callers,
/// whose next requests then leave in one write per burst instead of one per 16 replies.
/// Measured 2026-12-03 (pipelined, 128 in flight, `current_thread`, 64 B): at 16 a client
/// wrote once per 16 calls and yielded (an `epoll_wait`) as often; at 256, once per 44
/// calls, and 11% more calls per second (345k to 383k, alternating runs). Still bounded,
/// so a server flooding the connection with unsolicited events cannot keep the thread.
pub const CLIENT_MESSAGES_PER_TURN: u32 = 256;

/// Counts the messages a read loop has handled and yields to the runtime once per turn.
#[derive(Debug)]
pub struct ReadTurns {
    handled: u32,
    per_turn: u32,
}

impl Default for ReadTurns {
    /// A server's turns: [`MESSAGES_PER_TURN`].
    fn default() -> Self {
        Self::new(MESSAGES_PER_TURN)
    }
}

impl ReadTurns {
    /// Turns of `per_turn` messages (at least one).
    pub fn new(per_turn: u32) -> Self {
        Self {
            handled: 0,
            per_turn: per_turn.max(1),
        }
    }

    /// A client connection's reader task: [`CLIENT_MESSAGES_PER_TURN`] on the current
    /// `current_thread` runtime, a server's [`MESSAGES_PER_TURN`] on a multi-thread one,
    /// where the callers it wakes may run on another worker meanwhile.
    pub fn client() -> Self {
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => Self::new(CLIENT_MESSAGES_PER_TURN),
            _ => Self::default(),
        }
    }

    /// Records one handled message; every turn's last call yields to the runtime once
    /// before returning.
    pub async fn handled_one(&mut self) {
        self.handled += 1;
        if self.handled >= self.per_turn {
            self.handled = 0;
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    /// A client's turn depends on the runtime it reads on.
    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_client_takes_the_long_turn() {
        assert_eq!(ReadTurns::client().per_turn, CLIENT_MESSAGES_PER_TURN);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_thread_client_takes_a_servers_turn() {
        assert_eq!(ReadTurns::client().per_turn, MESSAGES_PER_TURN);
    }

    /// The loop is suspended exactly once per turn, so the runtime can run other tasks.
    #[tokio::test]
    async fn yields_once_every_turn() {
        let mut turns = ReadTurns::default();
        let mut pending = 0;
        for _ in 0..MESSAGES_PER_TURN * 3 {
            let mut step = std::pin::pin!(turns.handled_one());
            let first = futures::poll!(step.as_mut());
            if first.is_pending() {
                pending += 1;
                step.await;
            } else {
                assert_eq!(first, Poll::Ready(()));
            }
        }
        assert_eq!(pending, 3);
    }
}
