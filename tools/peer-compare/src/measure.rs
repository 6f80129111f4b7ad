//! Timing of echo calls, shared by every system: a sequential pass (one call at a time) and
//! a pipelined pass (a fixed number in flight), each a `zmesh_bench` block bounded in count
//! and duration, every call's latency in its `Latencies`, and every call, send and reply
//! bounded by [`CALL_LIMIT`].

use std::future::Future;
use std::time::Duration;

use zmesh_bench::{Block, Figures, InOrder, Latencies, drive};

use crate::{Error, Plan};

/// Longest one call may take before the run is declared broken.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Awaits `future` for at most [`CALL_LIMIT`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(CALL_LIMIT, future)
        .await
        .map_err(|_| Error::Timeout(format!("{what} took longer than {CALL_LIMIT:?}")))
}

/// Runs `warmup` sequential calls, unmeasured.
async fn warm_up<F, Fut>(call: &F, warmup: u64) -> Result<(), Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    for _ in 0..warmup {
        within("a warm-up call", call()).await??;
    }
    Ok(())
}

/// The warm-up, then the sequential and the pipelined pass, of a client that multiplexes
/// concurrent calls itself.
pub(crate) async fn passes<F, Fut>(call: &F, plan: &Plan) -> Result<(Figures, Figures), Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    warm_up(call, plan.warmup).await?;
    let sequential = concurrent(call, plan.sequential).await?;
    let pipelined = concurrent(call, plan.pipelined).await?;
    Ok((sequential, pipelined))
}

/// Keeps `pass.in_flight` independent calls of `call` running until the count or the
/// duration is reached; for clients that multiplex concurrent calls themselves. Bounded by
/// progress ([`drive::concurrent_watched`]): the pass fails once no call has completed for
/// [`CALL_LIMIT`].
async fn concurrent<F, Fut>(call: &F, pass: Block) -> Result<Figures, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let mut latencies = Latencies::new();
    let stalled = || Error::Timeout(format!("no call completed in {CALL_LIMIT:?}"));
    let measured =
        drive::concurrent_watched(call, &pass, &mut latencies, || {}, CALL_LIMIT, stalled).await?;
    Ok(Figures::new(&latencies, measured.elapsed))
}

/// Keeps `pass.in_flight` requests ahead of the replies on an in-order connection.
pub(crate) async fn in_order<C>(connection: &mut C, pass: Block) -> Result<Figures, Error>
where
    C: InOrder<Error = Error>,
{
    let mut latencies = Latencies::new();
    let mut bounded = Bounded(connection);
    let measured = drive::in_order(&mut bounded, &pass, &mut latencies, || {}).await?;
    Ok(Figures::new(&latencies, measured.elapsed))
}

/// An in-order connection whose every send and reply is bounded by [`CALL_LIMIT`].
struct Bounded<'a, C>(&'a mut C);

impl<C: InOrder<Error = Error>> InOrder for Bounded<'_, C> {
    type Error = Error;

    async fn send(&mut self) -> Result<(), Error> {
        within("a send", self.0.send()).await?
    }

    async fn receive(&mut self) -> Result<(), Error> {
        within("a reply", self.0.receive()).await?
    }
}
