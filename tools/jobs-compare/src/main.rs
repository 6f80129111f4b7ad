//! `zmesh-jobs-compare`: durable job queues side by side in one run on one machine:
//! submit->ack latency (p50, p99) and end-to-end jobs/s (submit -> processed by a consumer
//! -> acknowledged) at each submitter count, the same payload for every system, and what
//! each system's acknowledgement promises about the disk.
//!
//! The servers are started beforehand by `tools/jobs-compare/servers.sh`, which prints the
//! `JOBS_COMPARE_*` variables this binary reads; a system whose server is not configured or
//! not reachable is skipped with a message. See `tools/jobs-compare/README.md`.
//!
//! ```text
//! eval "$(tools/jobs-compare/servers.sh start)"
//! cargo run --release -p zmesh-jobs-compare
//! tools/jobs-compare/servers.sh stop
//! ```

mod jetstream;
mod measure;
mod rabbitmq;
mod system;
mod zmesh;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use zmesh_bench::Flavour;
use zmesh_jobs::Level;

use crate::measure::{Plan, Row, STEP_LIMIT, within};
use crate::system::{Error, System, chain};

/// Durable job queues side by side: submit->ack latency and end-to-end jobs/s.
#[derive(Debug, Parser)]
#[command(name = "zmesh-jobs-compare", version, about)]
struct Cli {
    /// Systems to measure, in order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "zmesh-fsync,zmesh-os,zmesh-fsync-spin,zmesh-os-spin,rabbitmq,rabbitmq-quorum,jetstream,jetstream-sync-always"
    )]
    systems: Vec<Kind>,
    /// Where zmesh's queues keep their stores (a fresh directory each, removed at the end).
    /// It should be on a disk: on tmpfs an fsync does nothing [default: the temp dir].
    #[arg(long, value_name = "DIR", env = "JOBS_COMPARE_ZMESH_DATA")]
    zmesh_data: Option<std::path::PathBuf>,
    /// The RabbitMQ server (`amqp://127.0.0.1:PORT/%2f`).
    #[arg(long, env = "JOBS_COMPARE_RABBITMQ")]
    rabbitmq: Option<String>,
    /// The nats-server with JetStream at its default sync (`nats://127.0.0.1:PORT`).
    #[arg(long, env = "JOBS_COMPARE_NATS")]
    nats: Option<String>,
    /// The nats-server with JetStream at `sync_interval: always`.
    #[arg(long, env = "JOBS_COMPARE_NATS_SYNC_ALWAYS")]
    nats_sync_always: Option<String>,
    /// Payload bytes per job.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Submitters (jobs in flight) of each mode (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,64",
          value_parser = clap::value_parser!(u16).range(1..=4096))]
    submitters: Vec<u16>,
    /// Unmeasured jobs per system before measuring.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    /// Measured jobs per mode at most (with the defaults, `--duration` ends most modes first).
    #[arg(long, default_value_t = 500_000)]
    count: u64,
    /// Blocks each mode's jobs and time are split into (the modes take turns block by block).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    rounds: u64,
    /// Measured seconds per mode at most (a mode stops at its count or at this).
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    duration: f64,
    /// Runtime flavour of this process (submitters and consumers).
    #[arg(long, value_enum, default_value = "multi-thread")]
    runtime: Flavour,
    /// Runtime flavour of zmesh's queue child. The default is the one `zmesh serve jobs` and
    /// `zmesh proxy --jobs` run their queue on; `multi-thread` measures a queue embedded in a
    /// multi-thread application (2 workers).
    #[arg(long, value_enum, default_value = "current-thread")]
    queue_runtime: Flavour,
    /// The child mode hosting a zmesh queue at this level (started by the run itself).
    #[arg(long, hide = true, requires_all = ["queue_data", "queue_workers"])]
    queue_child: Option<ZmeshLevel>,
    #[arg(long, hide = true)]
    queue_data: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    queue_workers: Option<String>,
    /// The child's queue runs its writer in the low-latency mode.
    #[arg(long, hide = true)]
    queue_writer_spin: bool,
}

/// A zmesh queue's durability level on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ZmeshLevel {
    Fsync,
    Os,
}

impl From<ZmeshLevel> for zmesh_jobs::Level {
    fn from(level: ZmeshLevel) -> Self {
        match level {
            ZmeshLevel::Fsync => Self::Fsync,
            ZmeshLevel::Os => Self::Os,
        }
    }
}

/// A system under comparison, as the command line names it.
///
/// A system joins here with a variant, its module beside the others and its arm in
/// [`connect`] (see `system.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
    /// zmesh's job queue at the `fsync` level (a child process of this run).
    ZmeshFsync,
    /// zmesh's job queue at the `os` level.
    ZmeshOs,
    /// zmesh's job queue at the `fsync` level, its writer in the opt-in low-latency mode
    /// (`JobsConfig::writer_spin` of 50 us).
    ZmeshFsyncSpin,
    /// zmesh's job queue at the `os` level, its writer in the low-latency mode.
    ZmeshOsSpin,
    /// RabbitMQ, a durable classic queue.
    Rabbitmq,
    /// RabbitMQ, a quorum queue.
    RabbitmqQuorum,
    /// NATS JetStream at the server's default sync.
    Jetstream,
    /// NATS JetStream at `sync_interval: always`.
    JetstreamSyncAlways,
}

impl Kind {
    /// The name in messages, before a server said its version.
    fn name(self) -> &'static str {
        match self {
            Self::ZmeshFsync => "zmesh jobs (fsync)",
            Self::ZmeshOs => "zmesh jobs (os)",
            Self::ZmeshFsyncSpin => "zmesh jobs (fsync, writer spin)",
            Self::ZmeshOsSpin => "zmesh jobs (os, writer spin)",
            Self::Rabbitmq => "RabbitMQ (classic queue)",
            Self::RabbitmqQuorum => "RabbitMQ (quorum queue)",
            Self::Jetstream => "NATS JetStream (default sync)",
            Self::JetstreamSyncAlways => "NATS JetStream (sync_interval: always)",
        }
    }

    /// The URL the command line gave for this system's server, and the variable naming it;
    /// zmesh's queues are started by the run (their data directory is the "URL").
    fn url(self, cli: &Cli) -> (Option<String>, &'static str) {
        let given = |url: &Option<String>| url.clone();
        match self {
            Self::ZmeshFsync | Self::ZmeshOs | Self::ZmeshFsyncSpin | Self::ZmeshOsSpin => (
                Some(
                    cli.zmesh_data
                        .clone()
                        .unwrap_or_else(std::env::temp_dir)
                        .display()
                        .to_string(),
                ),
                "JOBS_COMPARE_ZMESH_DATA",
            ),
            Self::Rabbitmq | Self::RabbitmqQuorum => {
                (given(&cli.rabbitmq), "JOBS_COMPARE_RABBITMQ")
            }
            Self::Jetstream => (given(&cli.nats), "JOBS_COMPARE_NATS"),
            Self::JetstreamSyncAlways => (
                given(&cli.nats_sync_always),
                "JOBS_COMPARE_NATS_SYNC_ALWAYS",
            ),
        }
    }
}

/// Connects to `kind`'s server at `url` and sets up its queue (zmesh's on a
/// `queue_runtime` runtime).
async fn connect(kind: Kind, url: &str, queue_runtime: Flavour) -> Result<Arc<dyn System>, Error> {
    let zmesh = |level, writer_spin| zmesh::Queue {
        level,
        writer_spin,
        runtime: queue_runtime,
    };
    match kind {
        Kind::ZmeshFsync => zmesh::connect(zmesh(Level::Fsync, false), Path::new(url)).await,
        Kind::ZmeshOs => zmesh::connect(zmesh(Level::Os, false), Path::new(url)).await,
        Kind::ZmeshFsyncSpin => zmesh::connect(zmesh(Level::Fsync, true), Path::new(url)).await,
        Kind::ZmeshOsSpin => zmesh::connect(zmesh(Level::Os, true), Path::new(url)).await,
        Kind::Rabbitmq => rabbitmq::connect(url, rabbitmq::QueueType::Classic).await,
        Kind::RabbitmqQuorum => rabbitmq::connect(url, rabbitmq::QueueType::Quorum).await,
        Kind::Jetstream => jetstream::connect(url, jetstream::Sync::Default).await,
        Kind::JetstreamSyncAlways => jetstream::connect(url, jetstream::Sync::Always).await,
    }
}

use zmesh_bench::args::positive_seconds;

/// The allocator `zmesh serve jobs` runs with, so zmesh's queue here (this binary run again
/// as the queue child) is the one users run. The other systems' clients in this process use it
/// too; their servers are their own processes.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let (Some(level), Some(data), Some(workers)) = (
        cli.queue_child,
        cli.queue_data.clone(),
        cli.queue_workers.clone(),
    ) {
        return queue_child(zmesh::QueueChild {
            queue: zmesh::Queue {
                level: level.into(),
                writer_spin: cli.queue_writer_spin,
                runtime: cli.queue_runtime,
            },
            data,
            workers,
        });
    }
    let runtime = match cli.runtime.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("zmesh-jobs-compare: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = Plan {
        payload: bytes::Bytes::from(vec![0x5a; cli.payload]),
        warmup: cli.warmup,
        count: cli.count,
        rounds: cli.rounds,
        time: Duration::from_secs_f64(cli.duration),
        submitters: cli.submitters.iter().map(|&n| usize::from(n)).collect(),
    };
    println!(
        "zmesh-jobs-compare: {} B jobs; submitters {:?}; per mode at most {} jobs or {:?}, in \
         {} alternating blocks per mode, after {} warm-up jobs per system; {} runtime, \
         zmesh's queue child on a {} runtime",
        cli.payload,
        plan.submitters,
        plan.count,
        plan.time,
        plan.rounds,
        plan.warmup,
        cli.runtime.arg(),
        cli.queue_runtime.arg()
    );
    match runtime.block_on(cli.runtime.run(compare(cli, plan))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zmesh-jobs-compare: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The hidden child mode: hosts one zmesh queue until the parent goes away.
fn queue_child(child: zmesh::QueueChild) -> ExitCode {
    let served = child
        .queue
        .runtime
        .runtime()
        .map_err(|e| e.into())
        .and_then(|runtime| runtime.block_on(zmesh::serve_queue(child)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zmesh-jobs-compare: the queue child: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Connects and prepares every configured system (skipping the absent ones), measures them
/// together, checks the counts and prints the table.
async fn compare(cli: Cli, plan: Plan) -> Result<(), Error> {
    let mut ready = Vec::new();
    for &kind in &cli.systems {
        let (url, variable) = kind.url(&cli);
        let Some(url) = url else {
            println!(
                "skipped {}: no server configured ({variable} or its flag; \
                 tools/jobs-compare/servers.sh start prints it)",
                kind.name()
            );
            continue;
        };
        let connected = within(
            "connecting",
            STEP_LIMIT,
            connect(kind, &url, cli.queue_runtime),
        )
        .await;
        let system = match connected.and_then(|connected| connected) {
            Ok(system) => system,
            Err(e @ (Error::Connect { .. } | Error::Timeout { .. })) => {
                println!(
                    "skipped {}: {} (is its server running? tools/jobs-compare/servers.sh \
                     start)",
                    kind.name(),
                    chain(&e)
                );
                continue;
            }
            Err(e) => return Err(e),
        };
        eprintln!("warming up {} ...", system.name());
        ready.push(measure::prepare(system, &plan).await?);
    }
    if ready.is_empty() {
        println!("no system to measure");
        return Ok(());
    }
    eprintln!(
        "measuring {} systems in alternating blocks ...",
        ready.len()
    );
    let rows = measure::run(&mut ready, &plan).await?;
    for system in &mut ready {
        measure::check(system).await?;
    }
    print_table(&rows);
    println!();
    println!("what an acknowledgement promises:");
    for system in &ready {
        println!(
            "- {}: {}",
            system.system().name(),
            system.system().durability()
        );
    }
    Ok(())
}

/// A Markdown table (pastes into docs/PERFORMANCE.md as it is).
fn print_table(rows: &[Row]) {
    println!();
    println!("| system | submitters | jobs | submit->ack p50 us | p99 us | end-to-end jobs/s |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.0} |",
            row.system,
            row.submitters,
            row.figures.calls,
            row.figures.p50_us,
            row.figures.p99_us,
            row.figures.calls_per_sec
        );
    }
}
