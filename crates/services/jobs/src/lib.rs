//! Durable jobs for zmesh: a queue any node can host as the `jobs` service. A caller submits
//! a call and gets an id back once the job is stored; the queue runs it at least once as an
//! ordinary zmesh call, retries it with backoff, and keeps what fails for good in a dead
//! state. `queue` holds the rules (pure), `store` keeps the records in redb, `service`
//! answers the `jobs` methods and `driver` runs the jobs and plugs the queue into a node.
//! Method shapes and the worker's side: docs/JOBS.md.

mod client;
pub mod config;
mod driver;
mod metrics;
pub mod queue;
mod service;
pub mod store;

pub use client::{JobsClient, Ticket};
pub use config::JobsConfig;
pub use driver::{JobsAttachment, JobsExtension, Running};
pub use service::{JobQueue, JobsError, SERVICE};
pub use store::Level;

pub use queue::{
    Backoff, Bound, Change, DeadReason, Dispatch, Effects, Job, JobId, JobOptions, JobState,
    Outcome, Persist, Queue, QueueError, QueueLimits, Selector, StateName,
};
