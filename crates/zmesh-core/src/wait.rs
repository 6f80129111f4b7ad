//! Waits for a count to reach a number, for the readiness waits of the API
//! ([`Publisher::wait_for_subscribers`](crate::Publisher::wait_for_subscribers), the proxy
//! device's `wait_for_workers`): subscriptions and worker announcements arrive on their own
//! connections some time after a program started them, and what is sent before they arrive
//! is not delivered to them (a PUB drops it; a device answers that no worker serves the
//! method).

use std::future::Future;
use std::time::Duration;

/// Why a readiness wait returned without what it waited for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// Fewer than wanted had arrived when the time was up.
    #[error("{seen} of {wanted} {waited_for} within the timeout")]
    TimedOut {
        /// What was waited for, such as `subscribers to "orders.created"`.
        waited_for: String,
        /// How many were wanted.
        wanted: usize,
        /// How many there were at the end.
        seen: usize,
    },
    /// What was waited on was closed or shut down.
    #[error("closed while waiting")]
    Closed,
}

impl WaitError {
    /// Names what was waited for in a [`WaitError::TimedOut`].
    #[doc(hidden)]
    pub fn waiting_for(self, what: impl FnOnce() -> String) -> Self {
        match self {
            Self::TimedOut { wanted, seen, .. } => Self::TimedOut {
                waited_for: what(),
                wanted,
                seen,
            },
            closed => closed,
        }
    }
}

/// Polls `count` until it reaches `wanted`, for at most `timeout`; returns the last count.
/// The error's `waited_for` is empty: the caller names it with [`WaitError::waiting_for`].
///
/// Neither a PUB socket nor the device's routing table has a notification for an arrival,
/// so this polls: often at first (a local peer is there within a millisecond or two), then
/// every 20 ms at most.
#[doc(hidden)]
pub async fn until_count<F, Fut>(
    wanted: usize,
    timeout: Duration,
    mut count: F,
) -> Result<usize, WaitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, WaitError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let seen = count().await?;
        if seen >= wanted {
            return Ok(seen);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(WaitError::TimedOut {
                waited_for: String::new(),
                wanted,
                seen,
            });
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn returns_once_the_count_is_reached() {
        let polls = Cell::new(0);
        let seen = until_count(3, Duration::from_secs(1), || {
            polls.set(polls.get() + 1);
            let n = polls.get();
            async move { Ok(n) }
        })
        .await;
        assert_eq!(seen, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn times_out_with_the_last_count_and_stops_on_close() {
        let start = tokio::time::Instant::now();
        let err = until_count(2, Duration::from_millis(500), || async { Ok(1) })
            .await
            .expect_err("never reaches 2")
            .waiting_for(|| "workers for \"jobs\"".into());
        assert_eq!(
            err,
            WaitError::TimedOut {
                waited_for: "workers for \"jobs\"".into(),
                wanted: 2,
                seen: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "1 of 2 workers for \"jobs\" within the timeout"
        );
        // It waited the whole timeout, not past it (paused time is exact).
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        let closed = until_count(1, Duration::from_secs(1), || async {
            Err(WaitError::Closed)
        });
        assert_eq!(closed.await, Err(WaitError::Closed));
    }
}
