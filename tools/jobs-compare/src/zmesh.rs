//! zmesh's own job queue as a system under comparison: the queue a node of its own in a child
//! process (this binary run again with the hidden `--queue-child` options, its store in a
//! directory of its own at one durability level), each job one `jobs.submit` answered once
//! the queue committed it at that level, and the consumer a node in this process serving the
//! method the jobs name. The queue's record of the worker's reply is the acknowledgement:
//! [`System::settle`] waits until the queue has committed every reply, and
//! [`System::held`] is the queue's depth over every state that is not finished.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use zmesh_bench::{Flavour, ServerChild};
use zmesh_core::{CallOptions, Client, HandlerError, Node, Service, State, Submit};
use zmesh_jobs::{JobsClient, JobsConfig, JobsExtension, Level};

use crate::system::{Error, Processed, System};

const NAME: &str = "zmesh jobs";

/// The method every job names; the consumer serves it.
const METHOD: &str = "compare.job";

/// How long the queue child may take to open its store and bind.
const CHILD_START_LIMIT: Duration = Duration::from_secs(20);

/// How often [`System::settle`] asks the queue whether every reply is committed (the
/// queue has no event to await from outside; a block lasts about a second, so this costs
/// it well under 1%).
const SETTLE_POLL: Duration = Duration::from_millis(1);

/// The queue's settings for the comparison: a result is kept for 1 s only, so a run of
/// hundreds of thousands of jobs stays within `max_jobs` (the others delete a job when it
/// is acknowledged); everything else is the default, concurrency (64 jobs running at once)
/// included.
fn config(queue: Queue) -> JobsConfig {
    JobsConfig {
        durability: queue.level,
        result_ttl: Duration::from_secs(1),
        max_jobs: 1_000_000,
        writer_spin: queue.writer_spin.then_some(WRITER_SPIN),
        ..JobsConfig::default()
    }
}

/// How a queue child is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queue {
    /// The queue's durability level.
    pub(crate) level: Level,
    /// Whether the queue's writer spins ([`WRITER_SPIN`]).
    pub(crate) writer_spin: bool,
    /// The child's runtime flavour. `zmesh serve jobs` runs on a `current_thread` runtime;
    /// on a multi-thread one, every hand-off between the node's tasks, the dispatcher and
    /// the writer thread crosses threads (measured in docs/PERFORMANCE.md).
    pub(crate) runtime: Flavour,
}

/// The writer spin of the `-spin` systems: about half a loopback round trip on this kind of
/// machine, so a lone submitter's next job arrives while the writer still spins.
const WRITER_SPIN: Duration = Duration::from_micros(50);

/// The level's name on the command line and in `jobs.submit`'s answers.
pub(crate) fn level_name(level: Level) -> &'static str {
    match level {
        Level::Fsync => "fsync",
        Level::Os => "os",
    }
}

/// A queue child and the clients that drive it.
struct Zmesh {
    queue_setup: Queue,
    /// The queue's node, killed and reaped on drop.
    _queue: ServerChild,
    /// The queue's store, removed on drop (after the child is gone: fields drop in order).
    _data: tempfile::TempDir,
    /// Submits, through a connection to the queue's node.
    jobs: JobsClient<Client>,
    /// `jobs.stats`, on the same connection.
    queue: Client,
    /// The consumer node, serving [`METHOD`] from the start; its handler counts once
    /// [`System::start_consumer`] gave it the counter.
    _worker: Node,
    consumer: Arc<OnceLock<Processed>>,
}

/// The consumer's handler: checks the job's payload and counts it, once the measurement
/// gave it its counter (the queue dispatches nothing before: nothing is submitted before).
fn consumer_service(consumer: Arc<OnceLock<Processed>>) -> Service {
    Service::new("compare")
        .with_shared_state(consumer)
        .method(
            "job",
            |consumer: State<OnceLock<Processed>>, payload: serde_bytes::ByteBuf| async move {
                let Some(processed) = consumer.get() else {
                    return Err(HandlerError::new(
                        "NotReady",
                        "the consumer has not started",
                    ));
                };
                if let Err(e) = processed.check(&payload) {
                    processed.fail(&e);
                    return Err(HandlerError::permanent(e.to_string()));
                }
                // Counted as the reply leaves: the queue records it as the ack, and
                // `settle` waits until it has.
                processed.acked();
                Ok(())
            },
        )
        .into_service()
}

/// Starts the consumer node and a queue child set up as `queue` dispatching to it (its store
/// in a fresh directory under `data_root`), and connects to the queue.
pub(crate) async fn connect(queue: Queue, data_root: &Path) -> Result<Arc<dyn System>, Error> {
    let data = tempfile::Builder::new()
        .prefix("zmesh-jobs-compare.")
        .tempdir_in(data_root)
        .map_err(Error::broker(NAME, "creating the queue's data directory"))?;
    let consumer = Arc::new(OnceLock::new());
    let worker = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(consumer_service(Arc::clone(&consumer)))
        .start()
        .await
        .map_err(Error::broker(NAME, "starting the consumer node"))?;
    let worker_endpoint = worker.endpoint().to_owned();
    let exe = std::env::current_exe().map_err(Error::broker(NAME, "finding this executable"))?;
    let mut command = Command::new(exe);
    command
        .arg("--queue-child")
        .arg(level_name(queue.level))
        .arg("--queue-data")
        .arg(data.path())
        .arg("--queue-workers")
        .arg(&worker_endpoint);
    if queue.writer_spin {
        command.arg("--queue-writer-spin");
    }
    command.arg("--queue-runtime").arg(queue.runtime.arg());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "error");
    }
    let data_path = data.path().to_owned();
    let child = tokio::task::spawn_blocking(move || {
        ServerChild::spawn("zmesh job queue", command, CHILD_START_LIMIT)
    })
    .await
    .map_err(Error::broker(NAME, "starting the queue child"))?
    .map_err(|source| Error::Connect {
        system: NAME,
        url: data_path.display().to_string(),
        source: source.into(),
    })?;
    let client = Client::new(child.endpoint());
    Ok(Arc::new(Zmesh {
        queue_setup: queue,
        _queue: child,
        _data: data,
        jobs: JobsClient::new(client.clone()),
        queue: client,
        _worker: worker,
        consumer,
    }))
}

/// The part of `jobs.stats` the comparison reads.
#[derive(Debug, Deserialize)]
struct Stats {
    depth: std::collections::BTreeMap<String, u64>,
}

impl Zmesh {
    /// Jobs in a state that is not finished (queued, scheduled, running, retrying).
    async fn unfinished(&self) -> Result<u64, Error> {
        let stats: Stats = self
            .queue
            .call_with("jobs.stats", (), CallOptions::default())
            .await
            .map_err(Error::broker(NAME, "reading jobs.stats"))?;
        Ok(stats
            .depth
            .iter()
            .filter(|(state, _)| !matches!(state.as_str(), "succeeded" | "dead" | "cancelled"))
            .map(|(_, count)| count)
            .sum())
    }
}

impl System for Zmesh {
    fn name(&self) -> String {
        let spin = if self.queue_setup.writer_spin {
            format!(", writer spin {} us", WRITER_SPIN.as_micros())
        } else {
            String::new()
        };
        format!(
            "{NAME} {}, {}{spin}",
            env!("CARGO_PKG_VERSION"),
            level_name(self.queue_setup.level)
        )
    }

    fn durability(&self) -> String {
        match self.queue_setup.level {
            Level::Fsync => "level fsync: the submission's group is written to the queue's \
                             log and fdatasync'ed before the job id is sent (survives power \
                             loss)"
                .to_owned(),
            Level::Os => "level os: the submission's group is written to the queue's \
                          log with one pwrite(2), no fsync, before the job id is sent \
                          (survives kill -9, not power loss)"
                .to_owned(),
        }
    }

    fn submit(&self, payload: bytes::Bytes) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let ticket = self
                .jobs
                .submit(METHOD, (serde_bytes::ByteBuf::from(payload.to_vec()),))
                .await
                .map_err(Error::broker(NAME, "submitting a job"))?;
            if ticket.durability == level_name(self.queue_setup.level) {
                Ok(())
            } else {
                Err(Error::Refused {
                    system: NAME,
                    reason: format!(
                        "acknowledged at level {}, not {}",
                        ticket.durability,
                        level_name(self.queue_setup.level)
                    ),
                })
            }
        })
    }

    fn start_consumer(&self, processed: Processed) -> BoxFuture<'_, Result<(), Error>> {
        let started = self.consumer.set(processed).is_ok();
        Box::pin(async move {
            if started {
                Ok(())
            } else {
                Err(Error::Consumer("started twice".to_owned()))
            }
        })
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            while self.unfinished().await? > 0 {
                tokio::time::sleep(SETTLE_POLL).await;
            }
            Ok(())
        })
    }

    fn held(&self) -> BoxFuture<'_, Result<u64, Error>> {
        Box::pin(self.unfinished())
    }
}

/// The hidden child mode's options.
#[derive(Debug, Clone)]
pub(crate) struct QueueChild {
    /// How the queue is set up.
    pub(crate) queue: Queue,
    /// Its store's directory.
    pub(crate) data: PathBuf,
    /// The consumer's endpoint, where jobs are dispatched.
    pub(crate) workers: String,
}

/// The child: a node on a free loopback port hosting the queue, announcing `READY
/// <endpoint>` and serving until its stdin closes.
pub(crate) async fn serve_queue(child: QueueChild) -> Result<(), Box<dyn std::error::Error>> {
    let parent_gone = tokio::task::spawn_blocking(zmesh_bench::child::wait_for_parent);
    let workers = Client::new(child.workers.as_str());
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .extension(JobsExtension::new(child.data, config(child.queue), workers))
        .start()
        .await?;
    zmesh_bench::child::announce(node.endpoint())?;
    let _ = parent_gone.await;
    node.shutdown(Duration::from_millis(200)).await;
    Ok(())
}
