//! Provides the `jobs` service: a [`JobQueue`] opened on a directory, whose methods
//! (`submit`, `status`, `result`, `cancel`, `list`, `dead`, `replay`, `purge`) are plain
//! zerorpc methods, so any zerorpc client can hand work to it. Every operation runs the
//! queue's rule under its lock, sends what it says to the store's writer before letting go
//! of the lock (so commits keep the queue's order), and answers only once the writer has
//! committed them, stating the durability level; with a publisher, the committed state
//! changes are published as `jobs.<state>` events in the same order. The calls that run
//! the jobs are the driver's (`driver.rs`).
//!
//! Argument shapes (positional, as zerorpc sends them; the method docs repeat them):
//! - `submit(method, args, options)`: `method` a str (`service.method`), `args` an array
//!   of the call's positional arguments, `options` nil or a map with any of
//!   `idempotency_key` (str), `max_attempts`, `backoff_base_ms`, `backoff_cap_ms`,
//!   `delay_ms`, `run_at_ms` (ms since the Unix epoch), `timeout_ms`, `ttl_ms` (uints).
//!   Answers `{id, durability}`.
//! - `status(id)`: the job's view (below), or the error `UnknownJob`.
//! - `result(id, wait_ms)`: waits up to `wait_ms` for the job to finish; answers
//!   `{status: "succeeded", result}`, `{status: "failed", job}` (dead or cancelled),
//!   `{status: "pending", job}` or `{status: "unknown"}`.
//! - `cancel(id)`, `replay(id)`: `{id, state, durability}`.
//! - `list(state, limit)`: `state` a state name or nil for all; `dead(limit)`: dead jobs
//!   with their errors. Both answer an array of views.
//! - `purge(selector)`: a state name, or an array of ids; answers `{purged, durability}`.
//! - `stats()`: `{durability, jobs, bytes, depth: {state: count}, attempts,
//!   attempts_started, dead_total, refused: {reason: count}}` (the last three since the
//!   queue opened; `metrics.rs`).
//!
//! A view is a map: `id`, `method`, `state`, `attempts`, `errors_total`, `errors` (each
//! `{attempt, at_ms, error}`), `submitted_ms`, and per state `run_at_ms`, `worker`,
//! `next_run_ms`, `last_error`, `reason`, `finished_ms`.
//!
//! Refusals are `ERR`s with their own names: `QueueFull`, `UnknownJob`, `JobStateError`
//! (the operation does not apply to the job's state), `TypeError` (bad argument shapes),
//! `StoreError` (the store failed; the queue stops accepting work).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use zmesh_core::{CallContext, ConfigError, ErrorKind, HandlerError, Publisher, Service, State};

use crate::config::JobsConfig;
use crate::metrics::{Counters, CountersSnapshot, Refusal};
use crate::queue::{
    Backoff, Change, Effects, Job, JobId, JobOptions, JobState, Persist, Queue, QueueError,
    Selector, StateName,
};
use crate::store::{Flush, Level, Store, StoreError, Writer};

/// The service's name.
pub const SERVICE: &str = "jobs";

/// Why a queue could not open.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// A setting is out of range.
    #[error("invalid jobs configuration: {0}")]
    Config(#[from] ConfigError),
    /// The store could not open or commit.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A job queue: its rules, its store and the waiters on its changes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobQueue {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) queue: Mutex<Queue>,
    pub(crate) writer: Writer,
    pub(crate) config: JobsConfig,
    /// Woken when jobs may have become ready or a slot freed: the dispatcher re-looks.
    pub(crate) work: Notify,
    /// Woken when any job finished: `result` waiters re-look.
    pub(crate) finished: Notify,
    /// The running attempts' abort handles, by lease: a cancelled job's call is dropped.
    pub(crate) attempts: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    /// Where state changes go to be published as `jobs.<state>` events, once committed.
    pub(crate) events: OnceLock<mpsc::UnboundedSender<(Committed, Vec<Change>)>>,
    /// What the queue counts as it goes, for `stats` and `/metrics`.
    pub(crate) counters: Counters,
}

/// A commit several parties await: the caller's ack and the events' publisher.
pub(crate) type Committed = Shared<BoxFuture<'static, Result<Level, StoreError>>>;

/// A state change as its event's payload.
#[derive(Debug, Serialize)]
struct ChangeEvent {
    id: u64,
    from: Option<&'static str>,
    state: &'static str,
}

/// An event's topic: `jobs.<state>`, or `jobs.removed` for a job purged or expired.
fn topic(change: &Change) -> String {
    format!("{SERVICE}.{}", change.to.map_or("removed", StateName::name))
}

/// Milliseconds since the Unix epoch, as the queue keeps times.
fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl JobQueue {
    /// Opens the queue stored in `dir` (creating it), resuming what it holds: jobs that
    /// were running when the previous process stopped are queued again, their attempt
    /// counted; scheduled and retrying ones wait for their time.
    ///
    /// # Errors
    /// [`JobsError`]: a setting out of range, or the store (another format, a corrupt
    /// file, I/O).
    pub async fn open(dir: &Path, config: JobsConfig) -> Result<Self, JobsError> {
        config.validate()?;
        // Reading the whole store (and replaying its log) is blocking file I/O.
        let (owned, level) = (dir.to_owned(), config.durability);
        let (store, loaded) = tokio::task::spawn_blocking(move || Store::open(&owned, level))
            .await
            .map_err(|e| StoreError::Io {
                path: dir.to_owned(),
                source: Arc::new(std::io::Error::other(e)),
            })??;
        let seed = config.seed.unwrap_or_else(|| epoch_ms(SystemTime::now()));
        let (queue, fx) = Queue::restore(
            config.limits(),
            seed,
            loaded.jobs,
            loaded.next_id,
            SystemTime::now(),
        );
        let writer = Writer::start(store, config.writer_spin)?;
        writer
            .commit(queue.next_id(), fx.persist, Flush::Now)
            .await?;
        tracing::info!(dir = %dir.display(), jobs = queue.len(), durability = config.durability.name(), "job queue open");
        Ok(Self {
            inner: Arc::new(Inner {
                queue: Mutex::new(queue),
                writer,
                config,
                work: Notify::new(),
                finished: Notify::new(),
                attempts: Mutex::new(HashMap::new()),
                events: OnceLock::new(),
                counters: Counters::default(),
            }),
        })
    }

    /// Publishes every committed state change through `publisher` from now on, as the
    /// event `jobs.<state>` (`jobs.removed` when a job is purged or its result expires) with
    /// the payload `{id, from, state}`, in the order the queue made them. A second call
    /// changes nothing.
    pub fn publish_to(&self, publisher: Publisher) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Committed, Vec<Change>)>();
        if self.inner.events.set(tx).is_err() {
            return;
        }
        tokio::spawn(async move {
            while let Some((committed, changes)) = rx.recv().await {
                // Only what is stored is announced.
                if committed.await.is_err() {
                    continue;
                }
                for change in &changes {
                    let event = ChangeEvent {
                        id: change.id.0,
                        from: change.from.map(StateName::name),
                        state: change.to.map_or("removed", StateName::name),
                    };
                    if let Err(e) = publisher.publish(&topic(change), &event).await {
                        tracing::warn!(error = %e, "a jobs event could not be published");
                    }
                }
            }
        });
    }

    /// The durability level every ack states.
    #[must_use]
    pub fn durability(&self) -> Level {
        self.inner.writer.level()
    }

    /// Jobs per state.
    #[must_use]
    pub fn depth(&self) -> Vec<(StateName, usize)> {
        self.inner.lock().depth().into_iter().collect()
    }

    /// The job `id` as it is now.
    #[must_use]
    pub fn job(&self, id: JobId) -> Option<Job> {
        self.inner.lock().get(id).cloned()
    }

    /// Runs `op` on the queue and commits what it says; answers once committed.
    ///
    /// # Errors
    /// The rule's refusal, or the store's failure.
    pub(crate) async fn apply<T>(
        &self,
        op: impl FnOnce(&mut Queue, SystemTime) -> Result<(T, Effects), QueueError>,
    ) -> Result<(T, Level), HandlerError> {
        let (value, aborts, commit) = {
            let mut q = self.inner.lock();
            let (value, fx) = op(&mut q, SystemTime::now()).map_err(refusal)?;
            // Always through the writer, even with nothing to write: an idempotent repeat
            // is answered after the first submission's commit, never before.
            let commit = self
                .inner
                .commit(q.next_id(), fx.persist, fx.changes, Flush::Now);
            (value, fx.abort, commit)
        };
        self.inner.abort(&aborts);
        let level = commit.await.map_err(store_failure)?;
        self.inner.work.notify_one();
        self.inner.finished.notify_waiters();
        Ok((value, level))
    }

    /// The `jobs` service over this queue.
    #[must_use]
    pub fn service(&self) -> Service {
        Service::new(SERVICE)
            .with_state(self.clone())
            .method("submit", submit)
            .doc("Stores a job that calls `method` with `args` (an array), at least once; answers {id, durability} once it is stored. options: nil or a map of idempotency_key, max_attempts, backoff_base_ms, backoff_cap_ms, delay_ms, run_at_ms, timeout_ms, ttl_ms.")
            .arg_names(["method", "args", "options"])
            .method("status", status)
            .doc("The job's state, attempts and errors; ERR UnknownJob if there is none.")
            .arg_names(["id"])
            .method("result", result)
            .doc("Waits up to wait_ms for the job to finish: {status: succeeded, result}, {status: failed, job}, {status: pending, job} or {status: unknown}.")
            .arg_names(["id", "wait_ms"])
            .method("cancel", cancel)
            .doc("Cancels a job that has not finished (a running one's call is dropped).")
            .arg_names(["id"])
            .method("list", list)
            .doc("Up to limit jobs in state (a state name, or nil for all), by id.")
            .arg_names(["state", "limit"])
            .method("dead", dead)
            .doc("Up to limit dead jobs, with each attempt's error.")
            .arg_names(["limit"])
            .method("replay", replay)
            .doc("Puts a dead job back in the queue with a fresh count of attempts.")
            .arg_names(["id"])
            .method("purge", purge)
            .doc("Removes the jobs in a state (a state name) or the given ids (an array), except running ones; answers {purged, durability}.")
            .arg_names(["selector"])
            .method("stats", stats)
            .doc("The queue's figures: {durability, jobs, bytes, depth: {state: count}, attempts (started, all jobs held), attempts_started, dead_total, refused: {reason: count} (since the queue opened)}.")
            .into_service()
    }
}

impl Inner {
    /// Sends `ops` to the writer (at once, so in the caller's order) and `changes` to the
    /// events' publisher, if there is one; answers the commit.
    pub(crate) fn commit(
        &self,
        next_id: u64,
        ops: Vec<Persist>,
        changes: Vec<Change>,
        flush: Flush,
    ) -> Committed {
        let committed = self.writer.commit(next_id, ops, flush).boxed().shared();
        self.counters.count_changes(&changes);
        if let Some(events) = self.events.get()
            && !changes.is_empty()
        {
            // A publisher gone (its task ended) only loses events, never jobs.
            let _ = events.send((committed.clone(), changes));
        }
        committed
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue as the rule left it: each rule
        // finishes its change before anything can panic, so the state is still whole.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn abort(&self, leases: &[u64]) {
        if leases.is_empty() {
            return;
        }
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for lease in leases {
            if let Some(handle) = attempts.remove(lease) {
                handle.abort();
            }
        }
    }
}

fn refusal(e: QueueError) -> HandlerError {
    let name = match &e {
        QueueError::QueueFull { .. } => "QueueFull",
        QueueError::Unknown(_) => "UnknownJob",
        QueueError::WrongState { .. } => "JobStateError",
        QueueError::Invalid(_) => ErrorKind::TypeError.as_str(),
    };
    HandlerError::new(name, e.to_string())
}

fn store_failure(e: StoreError) -> HandlerError {
    tracing::error!(error = %e, "job store failed");
    HandlerError::new("StoreError", e.to_string())
}

fn type_error(message: impl Into<String>) -> HandlerError {
    HandlerError::from_kind(ErrorKind::TypeError, message)
}

/// Reads `submit`'s options map.
fn parse_options(options: &rmpv::Value, now: SystemTime) -> Result<JobOptions, HandlerError> {
    let mut out = JobOptions::default();
    let entries = match options {
        rmpv::Value::Nil => return Ok(out),
        rmpv::Value::Map(entries) => entries,
        _ => return Err(type_error("options must be a map or nil")),
    };
    let mut backoff = Backoff::default();
    for (key, value) in entries {
        let key = key
            .as_str()
            .ok_or_else(|| type_error("option names must be strings"))?;
        let uint = || {
            value
                .as_u64()
                .ok_or_else(|| type_error(format!("option {key} must be an unsigned integer")))
        };
        match key {
            "idempotency_key" => {
                let k = value
                    .as_str()
                    .ok_or_else(|| type_error("option idempotency_key must be a string"))?;
                out.idempotency_key = Some(k.to_owned());
            }
            "max_attempts" => {
                out.max_attempts = u32::try_from(uint()?)
                    .map_err(|_| type_error("option max_attempts is too large"))?;
            }
            "backoff_base_ms" => backoff.base_ms = uint()?,
            "backoff_cap_ms" => backoff.cap_ms = uint()?,
            "delay_ms" => out = out.with_delay(now, Duration::from_millis(uint()?)),
            "run_at_ms" => out.run_at_ms = Some(uint()?),
            "timeout_ms" => out.timeout_ms = Some(uint()?),
            "ttl_ms" => out.ttl_ms = Some(uint()?),
            other => return Err(type_error(format!("unknown option {other:?}"))),
        }
    }
    out.backoff = backoff;
    Ok(out)
}

/// A job as the service shows it.
#[derive(Debug, Serialize)]
pub(crate) struct View {
    id: u64,
    method: String,
    state: &'static str,
    attempts: u32,
    errors_total: u32,
    errors: Vec<ErrorView>,
    submitted_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    worker: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_run_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ErrorView {
    attempt: u32,
    at_ms: u64,
    error: String,
}

impl From<&Job> for View {
    fn from(job: &Job) -> Self {
        let mut view = View {
            id: job.id.0,
            method: job.method.clone(),
            state: job.state.name().name(),
            attempts: job.attempts,
            errors_total: job.errors_total,
            errors: job
                .errors
                .iter()
                .map(|e| ErrorView {
                    attempt: e.attempt,
                    at_ms: e.at_ms,
                    error: e.error.clone(),
                })
                .collect(),
            submitted_ms: job.submitted_ms,
            run_at_ms: None,
            worker: None,
            next_run_ms: None,
            last_error: None,
            reason: None,
            finished_ms: None,
        };
        match &job.state {
            JobState::Queued => {}
            JobState::Scheduled { run_at_ms } => view.run_at_ms = Some(*run_at_ms),
            JobState::Running { worker, .. } => view.worker = Some(worker.clone()),
            JobState::Succeeded { finished_ms, .. } | JobState::Cancelled { finished_ms } => {
                view.finished_ms = Some(*finished_ms);
            }
            JobState::Retrying {
                next_run_ms,
                last_error,
            } => {
                view.next_run_ms = Some(*next_run_ms);
                view.last_error = Some(last_error.clone());
            }
            JobState::Dead {
                reason,
                finished_ms,
            } => {
                view.reason = Some(reason.name());
                view.finished_ms = Some(*finished_ms);
            }
        }
        view
    }
}

#[derive(Debug, Serialize)]
struct Ack {
    id: u64,
    durability: &'static str,
}

#[derive(Debug, Serialize)]
struct StateAck {
    id: u64,
    state: &'static str,
    durability: &'static str,
}

/// `result`'s answer: one of four distinct shapes, told apart by `status`.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Outcome {
    Succeeded { result: rmpv::Value },
    Failed { job: View },
    Pending { job: View },
    Unknown {},
}

async fn submit(
    State(q): State<JobQueue>,
    ctx: CallContext,
    method: String,
    args: rmpv::Value,
    options: rmpv::Value,
) -> Result<Ack, HandlerError> {
    let counters = &q.inner.counters;
    let invalid = |e: HandlerError| {
        counters.count_refusal(Refusal::Invalid);
        e
    };
    if !args.is_array() {
        return Err(invalid(type_error(
            "args must be an array of the call's positional arguments",
        )));
    }
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, &args)
        .map_err(|e| invalid(type_error(format!("args do not encode: {e}"))))?;
    let mut options = parse_options(&options, SystemTime::now()).map_err(invalid)?;
    options.traceparent = ctx.traceparent().map(ToString::to_string);
    let mut refused = false;
    let (id, level) = q
        .apply(|queue, now| {
            queue.submit(now, method, bytes, options).inspect_err(|e| {
                refused = true;
                counters.count_refusal(Refusal::of(e));
            })
        })
        .await
        .inspect_err(|_| {
            // Not refused by the rule, so the store failed.
            if !refused {
                counters.count_refusal(Refusal::Store);
            }
        })?;
    Ok(Ack {
        id: id.0,
        durability: level.name(),
    })
}

async fn status(State(q): State<JobQueue>, id: u64) -> Result<View, HandlerError> {
    q.inner
        .lock()
        .get(JobId(id))
        .map(View::from)
        .ok_or_else(|| refusal(QueueError::Unknown(JobId(id))))
}

async fn result(State(q): State<JobQueue>, id: u64, wait_ms: u64) -> Result<Outcome, HandlerError> {
    let wait = Duration::from_millis(wait_ms).min(q.inner.config.max_result_wait);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a finish between the look and the wait wakes it.
        let finished = q.inner.finished.notified();
        let mut finished = std::pin::pin!(finished);
        finished.as_mut().enable();
        let outcome = {
            let queue = q.inner.lock();
            match queue.get(JobId(id)) {
                None => Outcome::Unknown {},
                Some(job) => match &job.state {
                    JobState::Succeeded { result, .. } => Outcome::Succeeded {
                        result: rmpv::decode::read_value(&mut &result[..])
                            .unwrap_or(rmpv::Value::Nil),
                    },
                    JobState::Dead { .. } | JobState::Cancelled { .. } => {
                        Outcome::Failed { job: job.into() }
                    }
                    _ => Outcome::Pending { job: job.into() },
                },
            }
        };
        if !matches!(outcome, Outcome::Pending { .. })
            || tokio::time::timeout_at(deadline, finished).await.is_err()
        {
            return Ok(outcome);
        }
    }
}

async fn cancel(State(q): State<JobQueue>, id: u64) -> Result<StateAck, HandlerError> {
    let ((), level) = q
        .apply(|queue, now| Ok(((), queue.cancel(now, JobId(id))?)))
        .await?;
    Ok(StateAck {
        id,
        state: StateName::Cancelled.name(),
        durability: level.name(),
    })
}

async fn replay(State(q): State<JobQueue>, id: u64) -> Result<StateAck, HandlerError> {
    let ((), level) = q
        .apply(|queue, _| Ok(((), queue.replay(JobId(id))?)))
        .await?;
    Ok(StateAck {
        id,
        state: StateName::Queued.name(),
        durability: level.name(),
    })
}

async fn list(
    State(q): State<JobQueue>,
    state: Option<String>,
    limit: usize,
) -> Result<Vec<View>, HandlerError> {
    let state = state
        .map(|s| StateName::parse(&s).ok_or_else(|| type_error(format!("no state {s:?}"))))
        .transpose()?;
    Ok(q.inner
        .lock()
        .list(state, limit)
        .into_iter()
        .map(View::from)
        .collect())
}

async fn dead(State(q): State<JobQueue>, limit: usize) -> Result<Vec<View>, HandlerError> {
    list(State(q), Some(StateName::Dead.name().into()), limit).await
}

/// `stats`' answer, for `zmesh stats` and monitoring.
#[derive(Debug, Serialize)]
struct Stats {
    durability: &'static str,
    jobs: usize,
    bytes: u64,
    depth: std::collections::BTreeMap<&'static str, usize>,
    attempts: u64,
    /// `attempts_started`, `dead_total`, `refused` (by reason), since the queue opened.
    #[serde(flatten)]
    counters: CountersSnapshot,
}

async fn stats(State(q): State<JobQueue>) -> Result<Stats, HandlerError> {
    let queue = q.inner.lock();
    Ok(Stats {
        durability: q.durability().name(),
        jobs: queue.len(),
        bytes: queue.bytes(),
        depth: queue
            .depth()
            .into_iter()
            .map(|(s, n)| (s.name(), n))
            .collect(),
        attempts: queue
            .list(None, usize::MAX)
            .iter()
            .map(|j| u64::from(j.attempts))
            .sum(),
        counters: q.inner.counters.snapshot(),
    })
}

#[derive(Debug, Serialize)]
struct Purged {
    purged: usize,
    durability: &'static str,
}

async fn purge(State(q): State<JobQueue>, selector: rmpv::Value) -> Result<Purged, HandlerError> {
    let selector = match &selector {
        rmpv::Value::String(s) => {
            let name = s.as_str().unwrap_or_default();
            Selector::State(
                StateName::parse(name).ok_or_else(|| type_error(format!("no state {name:?}")))?,
            )
        }
        rmpv::Value::Array(ids) => Selector::Ids(
            ids.iter()
                .map(|v| v.as_u64().map(JobId))
                .collect::<Option<_>>()
                .ok_or_else(|| type_error("ids must be unsigned integers"))?,
        ),
        _ => {
            return Err(type_error(
                "selector must be a state name or an array of ids",
            ));
        }
    };
    let (purged, level) = q.apply(|queue, _| Ok(queue.purge(&selector))).await?;
    Ok(Purged {
        purged,
        durability: level.name(),
    })
}
