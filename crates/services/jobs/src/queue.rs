//! Provides the job queue's state machine: every job's record and state, admission with its
//! bounds, dispatch order, what an attempt's end does, retries with backoff, the dead state,
//! cancel, replay, purge and the timers. Pure: no tokio, no store, no clock; every operation
//! takes `now` and returns an [`Effects`], the records to persist and the state changes (for
//! events). The store and the driver around it persist what it says and make the calls.
//!
//! Times are wall-clock (`SystemTime`, kept as milliseconds since the Unix epoch), not
//! `Instant`: a run-at, a retry's time and an expiry are stored and must mean the same after
//! the queue process restarts.
//!
//! Delivery is at least once: a job is `Running` from its dispatch until its attempt ends,
//! and the live call is the lease, so there is no visibility timeout here; a worker lost
//! ([`Outcome::WorkerLost`]) makes the job eligible again at once, its attempt counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A job's id, unique in its queue for the life of its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Milliseconds since the Unix epoch: how times are kept in records (a time before the
/// epoch counts as the epoch).
fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `Duration` to whole milliseconds, saturating.
fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Retry delays: exponential from `base`, never above `cap`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    /// The first retry's delay (before jitter), in milliseconds.
    pub base_ms: u64,
    /// The longest delay, in milliseconds.
    pub cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            cap_ms: 300_000,
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 for the first), given the previous delay
    /// and a random draw. Equal jitter (half fixed, half drawn) spreads retries so failed
    /// jobs do not come back in a storm; the previous delay is a floor, so delays never
    /// shrink (jitter alone could make a capped delay shorter than the one before).
    fn delay_ms(&self, failures: u32, previous_ms: u64, draw: u64) -> u64 {
        let shift = failures.saturating_sub(1).min(63);
        let exp = self.base_ms.saturating_mul(1u64 << shift).min(self.cap_ms);
        let half = exp / 2;
        let jittered = half + draw % (exp - half + 1);
        jittered.max(previous_ms).min(self.cap_ms)
    }
}

/// What a submission asks of its job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// A second submission with the same key answers the first job's id.
    pub idempotency_key: Option<String>,
    /// Attempts before the job is dead; finite, at least 1.
    pub max_attempts: u32,
    /// Retry delays.
    pub backoff: Backoff,
    /// Not to run before this time (ms since the epoch); `None` is at once.
    pub run_at_ms: Option<u64>,
    /// Each attempt's deadline, in milliseconds; `None` leaves the call's own.
    pub timeout_ms: Option<u64>,
    /// The job is dead (expired) if it has not started its last attempt this long after
    /// submission, in milliseconds.
    pub ttl_ms: Option<u64>,
    /// The submitter's W3C trace context, its call's `traceparent`: every attempt is sent
    /// with it, so the attempts join the submitter's trace. Taken from the submission's
    /// call, not a submitter's option; absent from records stored before it existed.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// The default number of attempts: finite, so a poison job ends dead, not in a loop.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            idempotency_key: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
            run_at_ms: None,
            timeout_ms: None,
            ttl_ms: None,
            traceparent: None,
        }
    }
}

impl JobOptions {
    /// Runs no earlier than `delay` after `now`.
    #[must_use]
    pub fn with_delay(mut self, now: SystemTime, delay: Duration) -> Self {
        self.run_at_ms = Some(ms(now).saturating_add(dur_ms(delay)));
        self
    }
}

/// Why a job is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadReason {
    /// Every attempt failed.
    AttemptsExhausted,
    /// The handler marked its error permanent.
    NotRetryable,
    /// Its ttl passed before it could run.
    Expired,
}

impl DeadReason {
    /// The reason's wire name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::AttemptsExhausted => "attempts_exhausted",
            Self::NotRetryable => "not_retryable",
            Self::Expired => "expired",
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting for a dispatch slot.
    Queued,
    /// Waiting for its run-at time.
    Scheduled {
        /// When it becomes queued (ms since the epoch).
        run_at_ms: u64,
    },
    /// Its attempt is a live call.
    Running {
        /// The attempt, from 1.
        attempt: u32,
        /// Who runs it, as the driver named it.
        worker: String,
        /// Matches the attempt's end to this attempt: a stale end is ignored.
        lease: u64,
    },
    /// Done; its result kept until the result TTL.
    Succeeded {
        /// The handler's result, MessagePack.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
        /// When it finished (ms since the epoch).
        finished_ms: u64,
    },
    /// Failed; another attempt comes at `next_run_ms`.
    Retrying {
        /// When it becomes queued again (ms since the epoch).
        next_run_ms: u64,
        /// The failed attempt's error.
        last_error: String,
    },
    /// No more attempts.
    Dead {
        /// Why.
        reason: DeadReason,
        /// When (ms since the epoch).
        finished_ms: u64,
    },
    /// Cancelled by a caller.
    Cancelled {
        /// When (ms since the epoch).
        finished_ms: u64,
    },
}

/// A state's name, without its data: what `list` and events select by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StateName {
    /// [`JobState::Queued`].
    Queued,
    /// [`JobState::Scheduled`].
    Scheduled,
    /// [`JobState::Running`].
    Running,
    /// [`JobState::Succeeded`].
    Succeeded,
    /// [`JobState::Retrying`].
    Retrying,
    /// [`JobState::Dead`].
    Dead,
    /// [`JobState::Cancelled`].
    Cancelled,
}

impl StateName {
    /// Every state, in the order of a job's life.
    pub const ALL: [StateName; 7] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Succeeded,
        Self::Retrying,
        Self::Dead,
        Self::Cancelled,
    ];

    /// The state's wire name (`queued`, ..., the event `jobs.<name>`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `name`, if there is one.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether a job in this state is finished (it only waits for its result TTL).
    #[must_use]
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
    }
}

impl JobState {
    /// The state's name.
    #[must_use]
    pub fn name(&self) -> StateName {
        match self {
            Self::Queued => StateName::Queued,
            Self::Scheduled { .. } => StateName::Scheduled,
            Self::Running { .. } => StateName::Running,
            Self::Succeeded { .. } => StateName::Succeeded,
            Self::Retrying { .. } => StateName::Retrying,
            Self::Dead { .. } => StateName::Dead,
            Self::Cancelled { .. } => StateName::Cancelled,
        }
    }

    fn finished_ms(&self) -> Option<u64> {
        match self {
            Self::Succeeded { finished_ms, .. }
            | Self::Dead { finished_ms, .. }
            | Self::Cancelled { finished_ms } => Some(*finished_ms),
            _ => None,
        }
    }
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptError {
    /// The attempt, from 1.
    pub attempt: u32,
    /// When it ended (ms since the epoch).
    pub at_ms: u64,
    /// The error, as the worker or the call reported it.
    pub error: String,
}

/// A job: what to call, how, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The method to call.
    pub method: String,
    /// The call's arguments, MessagePack (an array of positional arguments).
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// What the submission asked.
    pub options: JobOptions,
    /// When it was submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// Where it is.
    pub state: JobState,
    /// Attempts started.
    pub attempts: u32,
    /// The last failed attempts' errors, oldest first, at most the queue's `keep_errors`.
    pub errors: VecDeque<AttemptError>,
    /// Failed attempts in all, including those no longer in `errors`.
    pub errors_total: u32,
    /// The last retry delay, the floor of the next (delays never shrink).
    pub last_backoff_ms: u64,
}

impl Job {
    /// Bytes the job holds against the queue's `max_bytes`.
    #[must_use]
    pub fn size(&self) -> u64 {
        let result = match &self.state {
            JobState::Succeeded { result, .. } => result.len(),
            _ => 0,
        };
        (self.method.len() + self.args.len() + result) as u64
    }

    fn expires_ms(&self) -> Option<u64> {
        self.options
            .ttl_ms
            .map(|ttl| self.submitted_ms.saturating_add(ttl))
    }
}

/// The queue's bounds and timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLimits {
    /// Jobs held, finished ones included until their result TTL.
    pub max_jobs: usize,
    /// Bytes held (method names, arguments, results).
    pub max_bytes: u64,
    /// Jobs running at once.
    pub concurrency: usize,
    /// How long a finished job (its result, its errors) is kept.
    pub result_ttl: Duration,
    /// Attempt errors kept per job (the count goes on).
    pub keep_errors: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            max_jobs: 100_000,
            max_bytes: 256 * 1024 * 1024,
            concurrency: 64,
            result_ttl: Duration::from_secs(24 * 3600),
            keep_errors: 20,
        }
    }
}

/// A bound a submission would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `max_jobs`.
    Jobs,
    /// `max_bytes`.
    Bytes,
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The queue is at a bound.
    #[error("QueueFull: the queue holds its maximum of {limit} {}", match .bound { Bound::Jobs => "jobs", Bound::Bytes => "bytes" })]
    QueueFull {
        /// Which bound.
        bound: Bound,
        /// Its value.
        limit: u64,
    },
    /// No job has this id (never submitted, or purged, or expired).
    #[error("no job {0}")]
    Unknown(JobId),
    /// The operation does not apply to a job in this state.
    #[error("job {id} is {}, not {expected}", .state.name())]
    WrongState {
        /// The job.
        id: JobId,
        /// Its state.
        state: StateName,
        /// What the operation needs.
        expected: &'static str,
    },
    /// A submission's options are out of range.
    #[error("invalid job: {0}")]
    Invalid(&'static str),
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's result (MessagePack).
    Ok(Vec<u8>),
    /// An error another attempt may not have (a timeout, a handler's ordinary error).
    Retryable(String),
    /// An error the handler marked permanent: no more attempts.
    Permanent(String),
    /// The worker was lost mid-call (its node died, the link broke): eligible again at once.
    WorkerLost(String),
}

/// What to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// Write this record.
    Put(Box<Job>),
    /// Remove this job's record.
    Delete(JobId),
}

/// A job's state change, for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The job.
    pub id: JobId,
    /// Its former state; `None` for a new job.
    pub from: Option<StateName>,
    /// Its new state; `None` when it is removed.
    pub to: Option<StateName>,
}

/// What an operation asks of its driver.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Records to write, in order, in one commit.
    pub persist: Vec<Persist>,
    /// State changes, in order.
    pub changes: Vec<Change>,
    /// Leases whose calls to cancel (a running job was cancelled).
    pub abort: Vec<u64>,
}

impl Effects {
    fn put(&mut self, job: &Job, from: Option<StateName>) {
        self.persist.push(Persist::Put(Box::new(job.clone())));
        let to = Some(job.state.name());
        if from != to {
            self.changes.push(Change {
                id: job.id,
                from,
                to,
            });
        }
    }

    fn delete(&mut self, id: JobId, from: StateName) {
        self.persist.push(Persist::Delete(id));
        self.changes.push(Change {
            id,
            from: Some(from),
            to: None,
        });
    }

    /// Whether there is nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.persist.is_empty() && self.changes.is_empty() && self.abort.is_empty()
    }
}

/// An attempt to start: the call to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The job.
    pub id: JobId,
    /// The attempt, from 1 (travels in the call's header with the id).
    pub attempt: u32,
    /// To hand back to [`Queue::finish`].
    pub lease: u64,
    /// The method.
    pub method: String,
    /// Its arguments, MessagePack.
    pub args: Vec<u8>,
    /// The attempt's deadline.
    pub timeout: Option<Duration>,
    /// The submitter's trace context, to send with the attempt.
    pub traceparent: Option<String>,
}

/// What `purge` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every job in this state.
    State(StateName),
    /// These jobs.
    Ids(Vec<JobId>),
}

/// A small deterministic generator (SplitMix64) for the jitter: seeded by the caller, so a
/// test sees the same delays every run and the queue reads no randomness of its own.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The queue: every job it holds, what is ready, what waits for a time.
#[derive(Debug)]
pub struct Queue {
    limits: QueueLimits,
    jobs: BTreeMap<JobId, Job>,
    by_key: HashMap<String, JobId>,
    /// Ready jobs per method, in order; a method is in `rotation` while it has some.
    ready: BTreeMap<String, VecDeque<JobId>>,
    /// Methods with ready jobs, the next to serve first: round-robin between methods, so
    /// a burst of one method does not starve the others.
    rotation: VecDeque<String>,
    /// Each job's next time of interest (run-at, retry, ttl, result expiry).
    timers: BTreeSet<(u64, JobId)>,
    timer_of: HashMap<JobId, u64>,
    running: usize,
    bytes: u64,
    next_id: u64,
    next_lease: u64,
    jitter: Jitter,
}

impl Queue {
    /// An empty queue; `seed` drives the backoff jitter.
    #[must_use]
    pub fn new(limits: QueueLimits, seed: u64) -> Self {
        Self {
            limits,
            jobs: BTreeMap::new(),
            by_key: HashMap::new(),
            ready: BTreeMap::new(),
            rotation: VecDeque::new(),
            timers: BTreeSet::new(),
            timer_of: HashMap::new(),
            running: 0,
            bytes: 0,
            next_id: 1,
            next_lease: 1,
            jitter: Jitter(seed),
        }
    }

    /// A queue holding what a store kept: jobs that were running when the previous process
    /// stopped are queued again (their attempt counted; dead if it was the last), scheduled
    /// and retrying ones wait for their time. `next_id` is the first id not yet used.
    #[must_use]
    pub fn restore(
        limits: QueueLimits,
        seed: u64,
        jobs: impl IntoIterator<Item = Job>,
        next_id: u64,
        now: SystemTime,
    ) -> (Self, Effects) {
        let mut q = Self::new(limits, seed);
        let now_ms = ms(now);
        let mut fx = Effects::default();
        let mut ids = Vec::new();
        for job in jobs {
            q.next_id = q.next_id.max(job.id.0 + 1);
            q.bytes += job.size();
            if let Some(key) = &job.options.idempotency_key {
                q.by_key.insert(key.clone(), job.id);
            }
            ids.push(job.id);
            q.jobs.insert(job.id, job);
        }
        q.next_id = q.next_id.max(next_id);
        for id in ids {
            let Some(job) = q.jobs.get_mut(&id) else {
                continue;
            };
            if let JobState::Running { attempt, .. } = job.state {
                let error = "the queue restarted during the attempt".to_owned();
                let from = job.state.name();
                q.failed(id, attempt, now_ms, error, Failure::Lost, &mut fx, from);
            } else if job.state == JobState::Queued {
                q.push_ready(id, false);
            }
            q.arm(id);
        }
        (q, fx)
    }

    /// The bounds.
    #[must_use]
    pub fn limits(&self) -> &QueueLimits {
        &self.limits
    }

    /// The job `id`.
    #[must_use]
    pub fn get(&self, id: JobId) -> Option<&Job> {
        self.jobs.get(&id)
    }

    /// Jobs held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the queue holds no job.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Bytes held.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The first id not yet used (what the store keeps so ids are never reused).
    #[must_use]
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Jobs per state.
    #[must_use]
    pub fn depth(&self) -> BTreeMap<StateName, usize> {
        let mut depth: BTreeMap<StateName, usize> =
            StateName::ALL.into_iter().map(|s| (s, 0)).collect();
        for job in self.jobs.values() {
            *depth.entry(job.state.name()).or_default() += 1;
        }
        depth
    }

    /// Up to `limit` jobs in `state` (all states when `None`), by id.
    #[must_use]
    pub fn list(&self, state: Option<StateName>, limit: usize) -> Vec<&Job> {
        self.jobs
            .values()
            .filter(|j| state.is_none_or(|s| j.state.name() == s))
            .take(limit)
            .collect()
    }

    /// Stores a new job, or answers the id of the job submitted before with the same
    /// idempotency key (then nothing changes).
    ///
    /// # Errors
    /// [`QueueError::QueueFull`] at `max_jobs` or `max_bytes`; [`QueueError::Invalid`] for an
    /// empty method or zero attempts.
    pub fn submit(
        &mut self,
        now: SystemTime,
        method: String,
        args: Vec<u8>,
        options: JobOptions,
    ) -> Result<(JobId, Effects), QueueError> {
        if let Some(id) = options
            .idempotency_key
            .as_ref()
            .and_then(|k| self.by_key.get(k))
        {
            return Ok((*id, Effects::default()));
        }
        if method.is_empty() {
            return Err(QueueError::Invalid("the method is empty"));
        }
        if options.max_attempts == 0 {
            return Err(QueueError::Invalid("max_attempts must be at least 1"));
        }
        if options.backoff.cap_ms < options.backoff.base_ms {
            return Err(QueueError::Invalid(
                "the backoff cap must be at least its base",
            ));
        }
        if self.jobs.len() >= self.limits.max_jobs {
            return Err(QueueError::QueueFull {
                bound: Bound::Jobs,
                limit: self.limits.max_jobs as u64,
            });
        }
        let now_ms = ms(now);
        let state = match options.run_at_ms {
            Some(run_at_ms) if run_at_ms > now_ms => JobState::Scheduled { run_at_ms },
            _ => JobState::Queued,
        };
        let job = Job {
            id: JobId(self.next_id),
            method,
            args,
            options,
            submitted_ms: now_ms,
            state,
            attempts: 0,
            errors: VecDeque::new(),
            errors_total: 0,
            last_backoff_ms: 0,
        };
        if self.bytes.saturating_add(job.size()) > self.limits.max_bytes {
            return Err(QueueError::QueueFull {
                bound: Bound::Bytes,
                limit: self.limits.max_bytes,
            });
        }
        self.next_id += 1;
        let id = job.id;
        self.bytes += job.size();
        if let Some(key) = &job.options.idempotency_key {
            self.by_key.insert(key.clone(), id);
        }
        let mut fx = Effects::default();
        fx.put(&job, None);
        let queued = job.state == JobState::Queued;
        self.jobs.insert(id, job);
        if queued {
            self.push_ready(id, false);
        }
        self.arm(id);
        Ok((id, fx))
    }

    /// The next attempt to start, if a slot is free and a job is ready: round-robin between
    /// methods, in order within one. `worker` names who will run it (for `status`).
    pub fn next_dispatch(&mut self, worker: &str) -> Option<(Dispatch, Effects)> {
        if self.running >= self.limits.concurrency {
            return None;
        }
        let id = self.pop_ready()?;
        let job = self.jobs.get_mut(&id)?;
        let from = job.state.name();
        job.attempts += 1;
        let lease = self.next_lease;
        self.next_lease += 1;
        job.state = JobState::Running {
            attempt: job.attempts,
            worker: worker.to_owned(),
            lease,
        };
        self.running += 1;
        let dispatch = Dispatch {
            id,
            attempt: job.attempts,
            lease,
            method: job.method.clone(),
            args: job.args.clone(),
            timeout: job.options.timeout_ms.map(Duration::from_millis),
            traceparent: job.options.traceparent.clone(),
        };
        let mut fx = Effects::default();
        fx.put(job, Some(from));
        self.arm(id);
        Some((dispatch, fx))
    }

    /// Records how the attempt under `lease` ended.
    ///
    /// # Errors
    /// [`QueueError::Unknown`], or [`QueueError::WrongState`] when the job is no longer
    /// running under this lease (cancelled, or a stale attempt): the driver drops the end.
    pub fn finish(
        &mut self,
        now: SystemTime,
        id: JobId,
        lease: u64,
        outcome: Outcome,
    ) -> Result<Effects, QueueError> {
        let job = self.jobs.get_mut(&id).ok_or(QueueError::Unknown(id))?;
        let attempt = match &job.state {
            JobState::Running {
                lease: l, attempt, ..
            } if *l == lease => *attempt,
            other => {
                return Err(QueueError::WrongState {
                    id,
                    state: other.name(),
                    expected: "running under this lease",
                });
            }
        };
        self.running -= 1;
        let now_ms = ms(now);
        let mut fx = Effects::default();
        match outcome {
            Outcome::Ok(result) => {
                self.bytes += result.len() as u64;
                job.state = JobState::Succeeded {
                    result,
                    finished_ms: now_ms,
                };
                fx.put(job, Some(StateName::Running));
                self.arm(id);
            }
            Outcome::Retryable(e) => {
                self.failed(
                    id,
                    attempt,
                    now_ms,
                    e,
                    Failure::Retry,
                    &mut fx,
                    StateName::Running,
                );
            }
            Outcome::Permanent(e) => {
                self.failed(
                    id,
                    attempt,
                    now_ms,
                    e,
                    Failure::Permanent,
                    &mut fx,
                    StateName::Running,
                );
            }
            Outcome::WorkerLost(e) => {
                self.failed(
                    id,
                    attempt,
                    now_ms,
                    e,
                    Failure::Lost,
                    &mut fx,
                    StateName::Running,
                );
            }
        }
        self.arm(id);
        Ok(fx)
    }

    /// Cancels a job that has not finished; a running one's call is aborted
    /// ([`Effects::abort`]) and its end, when it comes, is dropped.
    ///
    /// # Errors
    /// [`QueueError::Unknown`]; [`QueueError::WrongState`] for a finished job.
    pub fn cancel(&mut self, now: SystemTime, id: JobId) -> Result<Effects, QueueError> {
        let job = self.jobs.get_mut(&id).ok_or(QueueError::Unknown(id))?;
        let from = job.state.name();
        if from.is_finished() {
            return Err(QueueError::WrongState {
                id,
                state: from,
                expected: "unfinished",
            });
        }
        let mut fx = Effects::default();
        if let JobState::Running { lease, .. } = job.state {
            fx.abort.push(lease);
            self.running -= 1;
        }
        job.state = JobState::Cancelled {
            finished_ms: ms(now),
        };
        fx.put(job, Some(from));
        self.unready(id, from);
        self.arm(id);
        Ok(fx)
    }

    /// Puts a dead job back in the queue with a fresh count of attempts (its past errors
    /// kept).
    ///
    /// # Errors
    /// [`QueueError::Unknown`]; [`QueueError::WrongState`] unless the job is dead.
    pub fn replay(&mut self, id: JobId) -> Result<Effects, QueueError> {
        let job = self.jobs.get_mut(&id).ok_or(QueueError::Unknown(id))?;
        if job.state.name() != StateName::Dead {
            return Err(QueueError::WrongState {
                id,
                state: job.state.name(),
                expected: "dead",
            });
        }
        job.attempts = 0;
        job.last_backoff_ms = 0;
        // A replayed job starts a new life: its ttl counts from now, or it would die again
        // at the first timer pass.
        job.options.ttl_ms = None;
        job.state = JobState::Queued;
        let mut fx = Effects::default();
        fx.put(job, Some(StateName::Dead));
        self.push_ready(id, false);
        self.arm(id);
        Ok(fx)
    }

    /// Removes the selected jobs that are not running (a running job's attempt must end
    /// first); answers how many went.
    pub fn purge(&mut self, selector: &Selector) -> (usize, Effects) {
        let ids: Vec<JobId> = match selector {
            Selector::State(s) => self
                .jobs
                .values()
                .filter(|j| j.state.name() == *s)
                .map(|j| j.id)
                .collect(),
            Selector::Ids(ids) => ids.clone(),
        };
        let mut fx = Effects::default();
        let mut n = 0;
        for id in ids {
            if self
                .jobs
                .get(&id)
                .is_some_and(|j| j.state.name() != StateName::Running)
            {
                self.remove(id, &mut fx);
                n += 1;
            }
        }
        (n, fx)
    }

    /// Applies every time that has come: scheduled and retrying jobs due become queued,
    /// waiting jobs past their ttl die (expired), finished jobs past the result TTL are
    /// removed. Answers the next time of interest, for the driver's timer.
    pub fn poll_timers(&mut self, now: SystemTime) -> (Effects, Option<SystemTime>) {
        let now_ms = ms(now);
        let mut fx = Effects::default();
        while let Some(&(due, id)) = self.timers.first() {
            if due > now_ms {
                break;
            }
            self.timers.pop_first();
            self.timer_of.remove(&id);
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            let from = job.state.name();
            if let Some(done) = job.state.finished_ms() {
                if now_ms >= done.saturating_add(dur_ms(self.limits.result_ttl)) {
                    self.remove(id, &mut fx);
                    continue;
                }
            } else if from != StateName::Running && job.expires_ms().is_some_and(|e| now_ms >= e) {
                job.state = JobState::Dead {
                    reason: DeadReason::Expired,
                    finished_ms: now_ms,
                };
                fx.put(job, Some(from));
                self.unready(id, from);
            } else {
                match job.state {
                    JobState::Scheduled { run_at_ms } if run_at_ms <= now_ms => {
                        job.state = JobState::Queued;
                        fx.put(job, Some(from));
                        self.push_ready(id, false);
                    }
                    JobState::Retrying { next_run_ms, .. } if next_run_ms <= now_ms => {
                        job.state = JobState::Queued;
                        fx.put(job, Some(from));
                        self.push_ready(id, false);
                    }
                    _ => {}
                }
            }
            self.arm(id);
        }
        let next = self
            .timers
            .first()
            .map(|&(due, _)| UNIX_EPOCH + Duration::from_millis(due));
        (fx, next)
    }

    /// A failed attempt: the error kept, then dead, retrying or (lost worker) queued at once.
    #[allow(clippy::too_many_arguments)]
    fn failed(
        &mut self,
        id: JobId,
        attempt: u32,
        now_ms: u64,
        error: String,
        failure: Failure,
        fx: &mut Effects,
        from: StateName,
    ) {
        let keep = self.limits.keep_errors;
        let draw = self.jitter.next();
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.errors_total += 1;
        job.errors.push_back(AttemptError {
            attempt,
            at_ms: now_ms,
            error: error.clone(),
        });
        while job.errors.len() > keep {
            job.errors.pop_front();
        }
        let exhausted = job.attempts >= job.options.max_attempts;
        let mut ready = false;
        job.state = match failure {
            Failure::Permanent => JobState::Dead {
                reason: DeadReason::NotRetryable,
                finished_ms: now_ms,
            },
            _ if exhausted => JobState::Dead {
                reason: DeadReason::AttemptsExhausted,
                finished_ms: now_ms,
            },
            Failure::Lost => {
                ready = true;
                JobState::Queued
            }
            Failure::Retry => {
                let delay =
                    job.options
                        .backoff
                        .delay_ms(job.errors_total, job.last_backoff_ms, draw);
                job.last_backoff_ms = delay;
                JobState::Retrying {
                    next_run_ms: now_ms.saturating_add(delay),
                    last_error: error,
                }
            }
        };
        fx.put(job, Some(from));
        if ready {
            // Eligible at once, ahead of jobs that have not run yet: it has waited already.
            self.push_ready(id, true);
        }
    }

    fn remove(&mut self, id: JobId, fx: &mut Effects) {
        if let Some(was) = self.jobs.get(&id).map(|j| j.state.name()) {
            self.unready(id, was);
        }
        self.disarm(id);
        if let Some(job) = self.jobs.remove(&id) {
            self.bytes -= job.size();
            if let Some(key) = &job.options.idempotency_key
                && self.by_key.get(key) == Some(&id)
            {
                self.by_key.remove(key);
            }
            fx.delete(id, job.state.name());
        }
    }

    fn push_ready(&mut self, id: JobId, front: bool) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let queue = self.ready.entry(job.method.clone()).or_default();
        if queue.is_empty() {
            self.rotation.push_back(job.method.clone());
        }
        if front {
            queue.push_front(id);
        } else {
            queue.push_back(id);
        }
    }

    fn pop_ready(&mut self) -> Option<JobId> {
        let method = self.rotation.pop_front()?;
        let queue = self.ready.get_mut(&method)?;
        let id = queue.pop_front();
        if queue.is_empty() {
            self.ready.remove(&method);
        } else {
            self.rotation.push_back(method);
        }
        id
    }

    /// Takes a job that `was` queued out of its method's ready queue (it was cancelled,
    /// purged or expired). Only queued jobs are in a ready queue, and the search is linear,
    /// so a finished job's removal (every job's, once its result expires) must not pay it.
    fn unready(&mut self, id: JobId, was: StateName) {
        if was != StateName::Queued {
            return;
        }
        let Some(method) = self.jobs.get(&id).map(|j| j.method.clone()) else {
            return;
        };
        if let Some(queue) = self.ready.get_mut(&method) {
            queue.retain(|&j| j != id);
            if queue.is_empty() {
                self.ready.remove(&method);
                self.rotation.retain(|m| *m != method);
            }
        }
    }

    /// Sets the job's timer to its next time of interest, given its state.
    fn arm(&mut self, id: JobId) {
        self.disarm(id);
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let wake = match &job.state {
            JobState::Scheduled { run_at_ms } => Some(*run_at_ms),
            JobState::Retrying { next_run_ms, .. } => Some(*next_run_ms),
            _ => None,
        };
        let due = match &job.state {
            JobState::Running { .. } => None,
            s if s.name().is_finished() => s
                .finished_ms()
                .map(|f| f.saturating_add(dur_ms(self.limits.result_ttl))),
            _ => match (wake, job.expires_ms()) {
                (Some(w), Some(e)) => Some(w.min(e)),
                (w, e) => w.or(e),
            },
        };
        if let Some(due) = due {
            self.timers.insert((due, id));
            self.timer_of.insert(id, due);
        }
    }

    fn disarm(&mut self, id: JobId) {
        if let Some(due) = self.timer_of.remove(&id) {
            self.timers.remove(&(due, id));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Retry,
    Permanent,
    Lost,
}

#[cfg(test)]
mod tests;
