//! Durable jobs for zmesh: a queue any node can host as the `jobs` service. A caller submits
//! a call and gets an id back once the job is stored; the queue runs it at least once as an
//! ordinary zmesh call, retries it with backoff, and keeps what fails for good in a dead
//! state. `queue` holds the rules (pure), `store` keeps the records in redb.

pub mod queue;
pub mod store;

pub use queue::{
    Backoff, Bound, Change, DeadReason, Dispatch, Effects, Job, JobId, JobOptions, JobState,
    Outcome, Persist, Queue, QueueError, QueueLimits, Selector, StateName,
};
