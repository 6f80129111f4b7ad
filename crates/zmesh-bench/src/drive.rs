//! Timing the calls of one block: [`concurrent`] keeps a number of independent calls in
//! flight (for clients that multiplex calls themselves), [`in_order`] keeps requests ahead of
//! the replies on a connection that answers in order (a DEALER talking to one echo ROUTER);
//! and [`interleaved`], sequential calls of several modes in alternating blocks of a
//! [`Schedule`]. Every call's latency goes into the mode's [`Latencies`]; timeouts and what
//! a call is are the caller's.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::latency::Latencies;
use crate::schedule::{Order, Schedule, Turn};

/// One block of calls: up to `calls`, `in_flight` at once, stopping early after `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// Calls to make at most.
    pub calls: u64,
    /// Calls in flight at once (1: sequential round trips).
    pub in_flight: usize,
    /// No call starts after this much time.
    pub time: Duration,
}

impl Block {
    /// The block of a scheduled turn.
    pub fn of(turn: &Turn, in_flight: usize) -> Self {
        Self {
            calls: turn.calls,
            in_flight,
            time: turn.time,
        }
    }

    /// The block divided among up to `drivers` tasks that each drive their own connection:
    /// the calls and the calls in flight split as evenly as they go, the time shared. Never
    /// more shares than calls in flight (one sequential caller stays one), never an empty
    /// share.
    pub fn split(&self, drivers: usize) -> Vec<Self> {
        let shares = drivers.min(self.in_flight).max(1);
        let part = |total: u64, i: usize| {
            let (n, i) = (shares as u64, i as u64);
            total / n + u64::from(i < total % n)
        };
        (0..shares)
            .map(|i| Self {
                calls: part(self.calls, i),
                in_flight: usize::try_from(part(self.in_flight as u64, i)).unwrap_or(1),
                time: self.time,
            })
            .filter(|share| share.calls > 0)
            .collect()
    }
}

/// What a block did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// Calls made (and recorded).
    pub calls: u64,
    /// The block's wall time.
    pub elapsed: Duration,
}

/// Keeps `block.in_flight` independent `call()`s running until the block's count or time is
/// reached, timing each; `tick` runs after every call (a progress bar).
pub async fn concurrent<F, Fut, E>(
    call: F,
    block: &Block,
    latencies: &mut Latencies,
    mut tick: impl FnMut(),
) -> Result<Measured, E>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let timed = || async {
        let started = Instant::now();
        call().await?;
        Ok::<Duration, E>(started.elapsed())
    };
    let started = Instant::now();
    let stop_at = started + block.time;
    let mut running = FuturesUnordered::new();
    let mut issued = 0u64;
    while issued < block.calls.min(block.in_flight as u64) {
        running.push(timed());
        issued += 1;
    }
    let mut calls = 0u64;
    while let Some(latency) = running.next().await {
        latencies.record(latency?);
        calls += 1;
        tick();
        if issued < block.calls && Instant::now() < stop_at {
            running.push(timed());
            issued += 1;
        }
    }
    Ok(Measured {
        calls,
        elapsed: started.elapsed(),
    })
}

/// [`concurrent`], failed with `stalled()` once no call has completed for `limit`: bounds the
/// block by its progress, so a stuck call fails it within twice `limit`. Not a timer per call:
/// arming and clearing one on every call that waits for its reply cost the measured client
/// about a sixth of its pipelined throughput (2026-12-03), and only the concurrent rows,
/// since an in-order connection's replies are mostly buffered when awaited.
///
/// # Errors
/// A call's error, or `stalled()`.
pub async fn concurrent_watched<F, Fut, E>(
    call: F,
    block: &Block,
    latencies: &mut Latencies,
    mut tick: impl FnMut(),
    limit: Duration,
    stalled: impl FnOnce() -> E,
) -> Result<Measured, E>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    // Atomic only so that the block's future stays `Send`; one thread touches it.
    let completed = AtomicU64::new(0);
    let run = concurrent(call, block, latencies, || {
        completed.fetch_add(1, Ordering::Relaxed);
        tick();
    });
    let watchdog = async {
        let mut seen = completed.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(limit).await;
            let now = completed.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    };
    match futures::future::select(std::pin::pin!(run), std::pin::pin!(watchdog)).await {
        futures::future::Either::Left((measured, _)) => measured,
        futures::future::Either::Right(((), _)) => Err(stalled()),
    }
}

/// A connection that answers requests in order.
pub trait InOrder {
    /// Why a send or receive failed.
    type Error;
    /// Sends one request.
    fn send(&mut self) -> impl Future<Output = Result<(), Self::Error>>;
    /// Receives the oldest outstanding reply.
    fn receive(&mut self) -> impl Future<Output = Result<(), Self::Error>>;
}

/// Keeps `block.in_flight` requests ahead of the replies on `connection`; a FIFO of send
/// times gives each reply's latency. `tick` runs after every reply.
pub async fn in_order<C: InOrder>(
    connection: &mut C,
    block: &Block,
    latencies: &mut Latencies,
    mut tick: impl FnMut(),
) -> Result<Measured, C::Error> {
    let mut sent_at = VecDeque::with_capacity(block.in_flight);
    let started = Instant::now();
    let stop_at = started + block.time;
    let mut issued = 0u64;
    while issued < block.calls.min(block.in_flight as u64) {
        sent_at.push_back(Instant::now());
        connection.send().await?;
        issued += 1;
    }
    let mut calls = 0u64;
    while let Some(sent) = sent_at.pop_front() {
        connection.receive().await?;
        latencies.record(sent.elapsed());
        calls += 1;
        tick();
        if issued < block.calls && Instant::now() < stop_at {
            sent_at.push_back(Instant::now());
            connection.send().await?;
            issued += 1;
        }
    }
    Ok(Measured {
        calls,
        elapsed: started.elapsed(),
    })
}

/// Sequential calls of `modes` modes, `rounds` blocks of `block` calls each, the modes
/// taking turns block by block in `order`; `call(mode)` makes one call of that mode. Returns
/// each mode's latencies, in mode order.
pub async fn interleaved(
    modes: usize,
    rounds: u64,
    block: u64,
    order: Order,
    mut call: impl AsyncFnMut(usize),
) -> Vec<Latencies> {
    let mut schedule = Schedule::new(modes, rounds * block, rounds, Duration::MAX, order);
    let mut latencies = vec![Latencies::new(); modes];
    while let Some(turn) = schedule.next_turn() {
        let started = Instant::now();
        for _ in 0..turn.calls {
            let call_started = Instant::now();
            call(turn.mode).await;
            latencies[turn.mode].record(call_started.elapsed());
        }
        schedule.finish(&turn, turn.calls, started.elapsed());
    }
    latencies
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const BLOCK: Block = Block {
        calls: 10,
        in_flight: 3,
        time: Duration::from_secs(60),
    };

    #[test]
    fn a_split_block_keeps_its_calls_and_calls_in_flight() {
        let shares = BLOCK.split(2);
        assert_eq!(shares.len(), 2);
        assert_eq!(shares.iter().map(|s| s.calls).sum::<u64>(), BLOCK.calls);
        assert_eq!(
            shares.iter().map(|s| s.in_flight).sum::<usize>(),
            BLOCK.in_flight
        );
        assert!(shares.iter().all(|s| s.time == BLOCK.time));
        // More drivers than calls in flight: one share per call in flight.
        assert_eq!(BLOCK.split(8).len(), BLOCK.in_flight);
        let sequential = Block {
            in_flight: 1,
            ..BLOCK
        };
        assert_eq!(sequential.split(4), vec![sequential]);
        // Fewer calls than shares: no empty share.
        let few = Block { calls: 2, ..BLOCK };
        let shares = few.split(3);
        assert_eq!(shares.len(), 2);
        assert!(shares.iter().all(|s| s.calls == 1));
    }

    #[test]
    fn merged_latencies_hold_both_shares() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        a.record(Duration::from_micros(10));
        b.record(Duration::from_micros(30));
        b.record(Duration::from_micros(30));
        a.merge(&b);
        assert_eq!(a.len(), 3);
        assert!(a.p50() >= Duration::from_micros(29), "{:?}", a.p50());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_makes_the_blocks_calls_and_records_each() {
        let running = Cell::new(0usize);
        let most = Cell::new(0usize);
        let call = || async {
            running.set(running.get() + 1);
            most.set(most.get().max(running.get()));
            tokio::task::yield_now().await;
            running.set(running.get() - 1);
            Ok::<(), ()>(())
        };
        let mut latencies = Latencies::new();
        let mut ticks = 0;
        let measured = concurrent(call, &BLOCK, &mut latencies, || ticks += 1)
            .await
            .expect("no call fails");
        assert_eq!(measured.calls, 10);
        assert_eq!(latencies.len(), 10);
        assert_eq!(ticks, 10);
        assert_eq!(most.get(), 3, "in_flight calls at once");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_call_ends_the_block_with_its_error() {
        let n = Cell::new(0);
        let call = || async {
            n.set(n.get() + 1);
            if n.get() == 4 { Err("broken") } else { Ok(()) }
        };
        let result = concurrent(call, &BLOCK, &mut Latencies::new(), || {}).await;
        assert_eq!(result, Err("broken"));
    }

    /// Calls that keep completing are never cut short, however long the block takes; one
    /// that never completes fails the block once nothing else completes either.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_watched_block_fails_only_when_it_stops_progressing() {
        let limit = Duration::from_secs(10);
        let slow = || async {
            tokio::time::sleep(limit / 2).await;
            Ok::<(), &str>(())
        };
        let long = Block {
            calls: 30,
            in_flight: 1,
            time: Duration::from_secs(3600),
        };
        let measured = concurrent_watched(
            slow,
            &long,
            &mut Latencies::new(),
            || {},
            limit,
            || "stalled",
        )
        .await;
        assert_eq!(
            measured.map(|m| m.calls),
            Ok(30),
            "15 limits long, never stalled"
        );

        let n = Cell::new(0);
        let one_stuck = || async {
            n.set(n.get() + 1);
            if n.get() == 5 {
                std::future::pending::<()>().await;
            }
            Ok::<(), &str>(())
        };
        let started = tokio::time::Instant::now();
        let result = concurrent_watched(
            one_stuck,
            &BLOCK,
            &mut Latencies::new(),
            || {},
            limit,
            || "stalled",
        )
        .await;
        assert_eq!(result, Err("stalled"));
        assert!(
            started.elapsed() <= limit * 2,
            "failed within twice the limit"
        );
    }

    /// An in-order echo: replies come back in the order of the requests.
    #[derive(Default)]
    struct Echo {
        outstanding: usize,
        most: usize,
        sent: u64,
    }

    impl InOrder for Echo {
        type Error = &'static str;
        async fn send(&mut self) -> Result<(), Self::Error> {
            self.outstanding += 1;
            self.most = self.most.max(self.outstanding);
            self.sent += 1;
            Ok(())
        }
        async fn receive(&mut self) -> Result<(), Self::Error> {
            self.outstanding = self.outstanding.checked_sub(1).ok_or("nothing sent")?;
            Ok(())
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn interleaved_blocks_take_turns_and_every_call_is_recorded() {
        let mut calls = Vec::new();
        let latencies = interleaved(2, 3, 2, Order::Rotate, async |mode| calls.push(mode)).await;
        assert_eq!(calls, [0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1]);
        assert_eq!(
            latencies.iter().map(Latencies::len).collect::<Vec<_>>(),
            [6, 6]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn in_order_keeps_the_window_ahead_of_the_replies() {
        let mut echo = Echo::default();
        let mut latencies = Latencies::new();
        let measured = in_order(&mut echo, &BLOCK, &mut latencies, || {})
            .await
            .expect("no reply fails");
        assert_eq!((measured.calls, echo.sent, echo.most), (10, 10, 3));
        assert_eq!(latencies.len(), 10);
        assert_eq!(echo.outstanding, 0);
    }
}
