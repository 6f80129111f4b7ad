//! The measurement: every (system, submitters) pair is a mode of one `zmesh_bench`
//! alternating-blocks [`Schedule`], so a change in the machine's load weighs on every system
//! alike. A turn submits its block of jobs with that many submitters in flight (each
//! submit->ack latency into the mode's [`Latencies`]), then waits until the consumer has
//! processed and acknowledged every one of them and the server has those acks; the turn's
//! time is all of that, so jobs / time is the end-to-end rate. Every wait is bounded.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use zmesh_bench::{Block, Figures, Latencies, Order, Schedule, drive};

use crate::system::{self, Error, Processed, Progress, System};

/// Longest one submit, settle or count may take before the run is declared broken.
pub(crate) const STEP_LIMIT: Duration = Duration::from_secs(10);

/// Longest the consumer may take to catch up with a block after its last submit.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Awaits `future` for at most `limit`.
pub(crate) async fn within<T>(
    what: &str,
    limit: Duration,
    future: impl Future<Output = T>,
) -> Result<T, Error> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| Error::Timeout {
            what: what.to_owned(),
            limit,
        })
}

/// What every system is asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Every job's payload.
    pub(crate) payload: bytes::Bytes,
    /// Unmeasured jobs per system before measuring, at the largest submitter count.
    pub(crate) warmup: u64,
    /// Measured jobs per mode at most.
    pub(crate) count: u64,
    /// Blocks each mode's count is split into.
    pub(crate) rounds: u64,
    /// Measured time per mode at most.
    pub(crate) time: Duration,
    /// Submitter counts, one mode each per system.
    pub(crate) submitters: Vec<usize>,
}

/// A system ready to measure: connected, its consumer running.
pub(crate) struct Ready {
    system: Arc<dyn System>,
    progress: watch::Receiver<Progress>,
    /// Jobs acknowledged on submit so far (warm-up included).
    submitted: u64,
}

impl Ready {
    /// The system this is.
    pub(crate) fn system(&self) -> &Arc<dyn System> {
        &self.system
    }
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("system", &self.system.name())
            .field("submitted", &self.submitted)
            .finish_non_exhaustive()
    }
}

/// One mode's result.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// The system's name.
    pub(crate) system: String,
    /// Jobs in flight from the submitters.
    pub(crate) submitters: usize,
    /// Submit->ack latencies; `calls_per_sec` is the end-to-end jobs/s.
    pub(crate) figures: Figures,
}

/// Starts `system`'s consumer and runs the warm-up through it.
pub(crate) async fn prepare(system: Arc<dyn System>, plan: &Plan) -> Result<Ready, Error> {
    let (processed, progress) = Processed::new(plan.payload.len());
    within(
        "starting the consumer",
        STEP_LIMIT,
        system.start_consumer(processed),
    )
    .await??;
    let mut ready = Ready {
        system,
        progress,
        submitted: 0,
    };
    let in_flight = plan.submitters.iter().copied().max().unwrap_or(1);
    let warmup = Block {
        calls: plan.warmup,
        in_flight,
        time: DRAIN_LIMIT,
    };
    block(&mut ready, &plan.payload, &warmup, &mut Latencies::new()).await?;
    Ok(ready)
}

/// Measures every (system, submitters) mode in alternating blocks; rows in system order,
/// then submitter order.
pub(crate) async fn run(systems: &mut [Ready], plan: &Plan) -> Result<Vec<Row>, Error> {
    let per_system = plan.submitters.len();
    let modes = systems.len() * per_system;
    let mut schedule = Schedule::new(modes, plan.count, plan.rounds, plan.time, Order::Rotate);
    let mut latencies = vec![Latencies::new(); modes];
    let mut elapsed = vec![Duration::ZERO; modes];
    while let Some(turn) = schedule.next_turn() {
        let ready = &mut systems[turn.mode / per_system];
        let submitters = plan.submitters[turn.mode % per_system];
        // A block ends at its share of the count or of the time, whichever comes first: a
        // slow mode (one submitter waiting on fsyncs) would otherwise spend all its time in
        // its first block and not alternate with the others.
        let block_time = plan.time / u32::try_from(plan.rounds).unwrap_or(u32::MAX);
        let turn_block = Block {
            time: turn.time.min(block_time),
            ..Block::of(&turn, submitters)
        };
        let started = Instant::now();
        let measured = block(ready, &plan.payload, &turn_block, &mut latencies[turn.mode]).await?;
        let took = started.elapsed();
        elapsed[turn.mode] += took;
        schedule.finish(&turn, measured, took);
    }
    Ok((0..modes)
        .map(|mode| Row {
            system: systems[mode / per_system].system.name(),
            submitters: plan.submitters[mode % per_system],
            figures: Figures::new(&latencies[mode], elapsed[mode]),
        })
        .collect())
}

/// One block: its jobs submitted `block.in_flight` at a time (each latency recorded), then
/// processed, acknowledged and settled. Returns the jobs submitted.
async fn block(
    ready: &mut Ready,
    payload: &bytes::Bytes,
    block: &Block,
    latencies: &mut Latencies,
) -> Result<u64, Error> {
    let system = &ready.system;
    // Bounded by progress, as every concurrent block of the comparisons is.
    let submit = || system.submit(payload.clone());
    let stalled = || Error::Timeout {
        what: "any submit's acknowledgement".to_owned(),
        limit: STEP_LIMIT,
    };
    let measured =
        drive::concurrent_watched(submit, block, latencies, || {}, STEP_LIMIT, stalled).await?;
    ready.submitted += measured.calls;
    system::processed(&mut ready.progress, ready.submitted, DRAIN_LIMIT).await?;
    within("settling the acks", STEP_LIMIT, ready.system.settle()).await??;
    Ok(measured.calls)
}

/// The end-of-run check: every job acknowledged on submit was processed exactly once and
/// the server holds none. Acks are applied by the server after it read them, so the count
/// is read again (bounded) until it is zero.
pub(crate) async fn check(ready: &mut Ready) -> Result<(), Error> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let held = within("reading the queue's depth", STEP_LIMIT, ready.system.held()).await??;
        let processed = ready.progress.borrow().processed;
        if held == 0 && processed == ready.submitted {
            return Ok(());
        }
        if processed > ready.submitted || Instant::now() >= deadline {
            return Err(Error::Unbalanced {
                system: ready.system.name(),
                submitted: ready.submitted,
                processed,
                held,
            });
        }
        // The server applies acks after reading them; its counter has no event to await.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
