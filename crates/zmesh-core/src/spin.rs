//! The opt-in low-latency wait (`NodeConfig::spin`, `ClientConfig::spin`): a task waiting
//! for its socket keeps polling it for a bounded time before it parks, so a message that
//! arrives within that time is read without the thread falling asleep in `epoll_wait` and
//! being woken (the wake-up is most of what a round trip costs above the wire on an idle
//! machine). Off by default: while it spins the thread burns its CPU, up to the budget
//! after every message, so a node that receives a call every few microseconds keeps a CPU
//! busy.
//!
//! A spin turn is a `tokio::task::yield_now`: tokio runs the other ready tasks, polls its
//! I/O driver without blocking (so the socket's readiness is fresh), and polls the waiting
//! task again. The clock is read every [`CLOCK_EVERY`] turns, not every one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Spin turns between two readings of the clock.
const CLOCK_EVERY: u32 = 16;

/// Longest spin a config accepts: beyond a millisecond a spin is a busy loop, not a wait.
/// The one bound for every spin (node, client, and a job queue's writer), re-exported as
/// `zmesh_core::config::MAX_SPIN`.
pub const MAX_SPIN: Duration = Duration::from_millis(1);

/// A waiting future's spin: what is left of its budget. [`SpinBudget::turn`] after each
/// pending poll asks tokio to poll it again soon (after its driver and the other tasks)
/// until the budget is spent; then the future waits for its own waker.
#[derive(Debug)]
pub(crate) struct SpinBudget {
    budget: Option<Duration>,
    started: Option<Instant>,
    turns: u32,
}

impl SpinBudget {
    /// A spin of up to `budget` (none: no spin).
    pub(crate) fn new(budget: Option<Duration>) -> Self {
        Self {
            budget,
            started: None,
            turns: 0,
        }
    }

    /// After a pending poll: whether this task was scheduled to be polled again (a spin
    /// turn), or is left to its waker (no spin, or the budget spent).
    pub(crate) fn turn(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(budget) = self.budget else {
            return false;
        };
        let started = *self.started.get_or_insert_with(Instant::now);
        self.turns = self.turns.wrapping_add(1);
        if self.turns.is_multiple_of(CLOCK_EVERY) && started.elapsed() >= budget {
            self.budget = None;
            return false;
        }
        // A yield: it wakes this task once tokio has polled its driver.
        let mut yielded = std::pin::pin!(tokio::task::yield_now());
        let _ = yielded.as_mut().poll(cx);
        true
    }
}

/// A future that spins (see [`SpinBudget`]) while it is pending.
#[derive(Debug)]
pub(crate) struct Spinning<F> {
    inner: F,
    spin: SpinBudget,
}

impl<F> Spinning<F> {
    /// `inner`, spinning for up to `budget` (none: `inner` as it is).
    pub(crate) fn new(inner: F, budget: Option<Duration>) -> Self {
        Self {
            inner,
            spin: SpinBudget::new(budget),
        }
    }
}

impl<F: Future + Unpin> Future for Spinning<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Ready(value) => Poll::Ready(value),
            Poll::Pending => {
                this.spin.turn(cx);
                Poll::Pending
            }
        }
    }
}

/// Waits for `poll` to be ready, spinning for up to `spin` first.
pub(crate) async fn poll_spinning<T>(
    spin: Option<Duration>,
    poll: impl FnMut(&mut Context<'_>) -> Poll<T> + Unpin,
) -> T {
    Spinning::new(std::future::poll_fn(poll), spin).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A poll that becomes ready after `after` polls, registering no waker: only a spin
    /// (or nothing) polls it again.
    fn ready_after(
        after: u32,
        polls: &Arc<AtomicU32>,
    ) -> impl FnMut(&mut Context<'_>) -> Poll<u32> {
        let polls = Arc::clone(polls);
        move |_| {
            let n = polls.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= after {
                Poll::Ready(n)
            } else {
                Poll::Pending
            }
        }
    }

    /// `future`, or `None` after `limit`; unlike `timeout`, the expiry does not poll the
    /// future once more, so the tests can count its polls exactly.
    async fn give_up_after<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            () = tokio::time::sleep(limit) => None,
            value = future => Some(value),
        }
    }

    #[tokio::test]
    async fn a_spin_polls_again_until_ready_within_its_budget() {
        let polls = Arc::new(AtomicU32::new(0));
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            poll_spinning(Some(MAX_SPIN * 1000), ready_after(5, &polls)),
        )
        .await
        .expect("ready by spinning alone");
        assert_eq!(got, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_spin_a_pending_poll_waits_for_its_waker() {
        let polls = Arc::new(AtomicU32::new(0));
        let waited = give_up_after(
            Duration::from_secs(1),
            poll_spinning(None, ready_after(5, &polls)),
        )
        .await;
        assert!(waited.is_none(), "nothing woke it");
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, then parked");
    }

    /// A spent budget ends the spin at the next reading of the clock: with a zero budget,
    /// exactly [`CLOCK_EVERY`] polls (each with the task's waker, so the last one leaves
    /// it registered), then it parks.
    #[tokio::test(start_paused = true)]
    async fn a_spent_spin_parks() {
        let polls = Arc::new(AtomicU32::new(0));
        let waited = give_up_after(
            Duration::from_secs(1),
            poll_spinning(Some(Duration::ZERO), ready_after(u32::MAX, &polls)),
        )
        .await;
        assert!(waited.is_none(), "nothing woke it once parked");
        assert_eq!(polls.load(Ordering::Relaxed), CLOCK_EVERY);
    }

    #[tokio::test]
    async fn a_spinning_future_completes_once_its_inner_future_does() {
        let polls = Arc::new(AtomicU32::new(0));
        let mut poll = ready_after(3, &polls);
        let inner = std::future::poll_fn(move |cx| poll(cx));
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            Spinning::new(inner, Some(MAX_SPIN * 1000)),
        )
        .await
        .expect("ready by spinning alone");
        assert_eq!(got, 3);
    }
}
