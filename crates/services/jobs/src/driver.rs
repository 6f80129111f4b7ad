//! Runs a queue's jobs: the dispatcher task starts every attempt the queue's rule allows as
//! an ordinary zmesh call through any `zmesh_core::Call` (a `Client` of an endpoint or a
//! device, a `MeshClient`), applies the timers, and records how each attempt ended. Also
//! the [`JobsExtension`] that plugs a queue into a node.
//!
//! The live call is the lease: a running attempt stays leased for as long as its call is
//! open, kept alive by the call's heartbeats, so a long job is never redelivered by a
//! visibility timeout. A lost worker (`PeerLost`, from the client's heartbeats or a device)
//! makes the job eligible again at once. Each call carries the job's id and attempt in its
//! header (`CallOptions::job`), which the worker reads as `CallContext::job`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use zmesh_core::node::{Attached, Attachment, Extension, ExtensionError, NodeContext};
use zmesh_core::wire::JobTag;
use zmesh_core::{Call, CallError, CallOptions, ErrorKind, Publisher, is_permanent_error};

use crate::config::JobsConfig;
use crate::queue::{Dispatch, Outcome};
use crate::service::{Inner, JobQueue};
use crate::store::Flush;

/// How an attempt's call ended, for the queue's rule: a permanent error (by its name) goes
/// to dead at once, a lost worker is eligible again at once, anything else is retried.
pub(crate) fn outcome_of(result: Result<rmpv::Value, CallError>) -> Outcome {
    match result {
        Ok(value) => {
            let mut bytes = Vec::new();
            match rmpv::encode::write_value(&mut bytes, &value) {
                Ok(()) => Outcome::Ok(bytes),
                Err(e) => Outcome::Retryable(format!("the result does not encode: {e}")),
            }
        }
        Err(CallError::Remote(remote)) if is_permanent_error(&remote.name) => {
            Outcome::Permanent(format!("{}: {}", remote.name, remote.message))
        }
        // The worker went away mid-call: a device lost it, or its node shut down.
        Err(CallError::Remote(remote))
            if matches!(
                remote.kind(),
                Some(ErrorKind::PeerLost | ErrorKind::Unavailable | ErrorKind::ShuttingDown)
            ) =>
        {
            Outcome::WorkerLost(format!("{}: {}", remote.name, remote.message))
        }
        Err(e @ CallError::PeerLost(_)) => Outcome::WorkerLost(e.to_string()),
        Err(CallError::Remote(remote)) => {
            Outcome::Retryable(format!("{}: {}", remote.name, remote.message))
        }
        Err(e) => Outcome::Retryable(e.to_string()),
    }
}

impl JobQueue {
    /// Starts running this queue's jobs through `workers`, named `worker` in each running
    /// job's status. The task runs until the returned handle is dropped or aborted.
    pub fn run<C>(&self, workers: C, worker: impl Into<String>) -> Running
    where
        C: Call + Clone + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let task = tokio::spawn(dispatch_loop(inner, workers, worker.into()));
        Running {
            queue: self.clone(),
            task: Some(task),
        }
    }
}

/// The dispatcher of a queue, stopped (with every attempt it started) when dropped.
#[derive(Debug)]
pub struct Running {
    queue: JobQueue,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The queue.
    #[must_use]
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// Stops dispatching and drops the running attempts' calls; their jobs stay running in
    /// the store and are queued again when the queue reopens.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut attempts = self
            .queue
            .inner
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (_, handle) in attempts.drain() {
            handle.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn dispatch_loop<C: Call + Clone + 'static>(inner: Arc<Inner>, workers: C, worker: String) {
    loop {
        // Registered before looking, so work that arrives meanwhile is not missed.
        let work = inner.work.notified();
        let mut work = std::pin::pin!(work);
        work.as_mut().enable();
        let next_timer = {
            let mut q = inner.lock();
            let (fx, next) = q.poll_timers(SystemTime::now());
            if !fx.is_empty() {
                // Not awaited: the writer keeps order, and a failure stops it for all.
                drop(inner.commit(q.next_id(), fx.persist, fx.changes, Flush::Soon));
                inner.finished.notify_waiters();
            }
            while let Some((dispatch, fx)) = q.next_dispatch(&worker) {
                drop(inner.commit(q.next_id(), fx.persist, fx.changes, Flush::Soon));
                start(&inner, &workers, dispatch);
            }
            next
        };
        let sleep = next_timer.map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        match sleep {
            Some(d) => {
                let _ = tokio::time::timeout(d, work).await;
            }
            None => work.await,
        }
    }
}

/// Starts one attempt's call in a task of its own, registered for cancellation.
fn start<C: Call + Clone + 'static>(inner: &Arc<Inner>, workers: &C, d: Dispatch) {
    let timeout = d.timeout.unwrap_or(inner.config.attempt_timeout);
    let mut options = CallOptions::timeout(timeout).job(JobTag {
        id: d.id.0,
        attempt: d.attempt,
    });
    // The attempt joins the submitter's trace (its client span's child, with `otel`).
    options.traceparent = d.traceparent.clone();
    let (inner2, workers) = (Arc::clone(inner), workers.clone());
    let mut attempts = inner
        .attempts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let lease = d.lease;
    let task = tokio::spawn(async move {
        let outcome = match rmpv::decode::read_value(&mut &d.args[..]) {
            Ok(args) => outcome_of(
                workers
                    .call_with::<rmpv::Value>(&d.method, args, options)
                    .await,
            ),
            // Checked at submission; a record that no longer decodes will never run.
            Err(e) => Outcome::Permanent(format!("the stored args do not decode: {e}")),
        };
        finish(&inner2, d, outcome);
    });
    attempts.insert(lease, task.abort_handle());
}

fn finish(inner: &Inner, d: Dispatch, outcome: Outcome) {
    let lease = d.lease;
    {
        let mut q = inner.lock();
        match q.finish(SystemTime::now(), d.id, lease, outcome) {
            Ok(fx) => drop(inner.commit(q.next_id(), fx.persist, fx.changes, Flush::Soon)),
            // Cancelled meanwhile: its end is not the job's any more.
            Err(e) => tracing::debug!(job = %d.id, error = %e, "attempt end dropped"),
        }
    }
    inner
        .attempts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&lease);
    inner.work.notify_one();
    inner.finished.notify_waiters();
}

/// Hosts a job queue on a node: `Node::builder().extension(JobsExtension::new(dir, config,
/// workers))` opens the queue when the node starts, serves its `jobs` service, and runs its
/// jobs through `workers` until the node shuts down.
pub struct JobsExtension<C> {
    dir: PathBuf,
    config: JobsConfig,
    workers: C,
    worker: String,
    publisher: Option<Publisher>,
}

impl<C> std::fmt::Debug for JobsExtension<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsExtension")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl<C> JobsExtension<C> {
    /// A queue stored in `dir`, running its jobs through `workers`.
    pub fn new(dir: impl Into<PathBuf>, config: JobsConfig, workers: C) -> Self {
        Self {
            dir: dir.into(),
            config,
            workers,
            worker: "workers".into(),
            publisher: None,
        }
    }

    /// Publishes the queue's state changes as `jobs.<state>` events through `publisher`
    /// (for example the one given to `NodeBuilder::publisher`; see
    /// [`JobQueue::publish_to`]).
    #[must_use]
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// How running jobs name their worker in `status` (default `workers`).
    #[must_use]
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.worker = name.into();
        self
    }
}

impl<C: Call + Clone + 'static> Extension for JobsExtension<C> {
    fn name(&self) -> &'static str {
        "jobs"
    }

    fn start<'a>(
        self: Box<Self>,
        _node: NodeContext<'a>,
    ) -> BoxFuture<'a, Result<Attached, ExtensionError>> {
        Box::pin(async move {
            let queue = JobQueue::open(&self.dir, self.config).await?;
            if let Some(publisher) = self.publisher {
                queue.publish_to(publisher);
            }
            let service = queue.service();
            let running = queue.run(self.workers, self.worker);
            Ok(Attached {
                running: Box::new(JobsAttachment { running }),
                services: vec![service],
            })
        })
    }
}

/// A node's running queue ([`zmesh_core::Node::attachment`]).
#[derive(Debug)]
pub struct JobsAttachment {
    running: Running,
}

impl JobsAttachment {
    /// The queue.
    #[must_use]
    pub fn queue(&self) -> &JobQueue {
        self.running.queue()
    }
}

impl Attachment for JobsAttachment {
    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        self.running.stop();
        Box::pin(async {})
    }

    fn metrics(&self) -> Option<Arc<dyn zmesh_core::metrics::Collector>> {
        Some(Arc::new(crate::metrics::QueueMetrics(self.queue().clone())))
    }
}
