//! Makes a socket's read loop give its thread back every few messages, so the replies it
//! has produced go out while it reads on.
//!
//! Why: the `zeromq` crate sends through a writer task per peer. A read loop that finds a
//! burst of pipelined messages already buffered would otherwise handle the whole burst (up to
//! the caller's window, 128 in the benches) before that writer runs; on a `current_thread`
//! runtime, the usual one per node, nothing goes out meanwhile, and the peer sits idle
//! until the whole burst comes back at once. Both ends then take turns instead of working
//! at the same time. Yielding every [`MESSAGES_PER_TURN`] messages lets the writer (and on a
//! client, the callers whose replies arrived) run in between, so the two ends overlap:
//! pipelined throughput against a raw `zeromq` echo rose from 0.37-0.38x to 0.57-0.61x on
//! two cores (2026-11-29; the measurement history is in git, see docs/PERFORMANCE.md). The
//! price is more, smaller socket writes (more kernel time per call). A loop handling single messages, as in sequential calls, yields once per
//! 16 of them, which costs nothing measurable.

/// Messages a read loop handles between two yields. 8 to 32 measured alike within noise;
/// fewer means more, smaller socket writes, more means longer turns.
pub const MESSAGES_PER_TURN: u32 = 16;

/// Counts the messages a read loop has handled and yields to the runtime every
/// [`MESSAGES_PER_TURN`] of them.
#[derive(Debug, Default)]
pub struct ReadTurns {
    handled: u32,
}

impl ReadTurns {
    /// Records one handled message; every [`MESSAGES_PER_TURN`]-th call yields to the
    /// runtime once before returning.
    pub async fn handled_one(&mut self) {
        self.handled += 1;
        if self.handled >= MESSAGES_PER_TURN {
            self.handled = 0;
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

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
