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

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use zmesh_bench::Flavour;

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
        default_value = "rabbitmq,rabbitmq-quorum,jetstream,jetstream-sync-always"
    )]
    systems: Vec<Kind>,
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
}

/// A system under comparison, as the command line names it.
///
/// The zmesh job queue joins here with one variant per durability level, its module beside
/// the others and its arm in [`connect`] (see `system.rs` for what its adapter does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Kind {
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
            Self::Rabbitmq => "RabbitMQ (classic queue)",
            Self::RabbitmqQuorum => "RabbitMQ (quorum queue)",
            Self::Jetstream => "NATS JetStream (default sync)",
            Self::JetstreamSyncAlways => "NATS JetStream (sync_interval: always)",
        }
    }

    /// The URL the command line gave for this system's server, and the variable naming it.
    fn url(self, cli: &Cli) -> (Option<&str>, &'static str) {
        match self {
            Self::Rabbitmq | Self::RabbitmqQuorum => {
                (cli.rabbitmq.as_deref(), "JOBS_COMPARE_RABBITMQ")
            }
            Self::Jetstream => (cli.nats.as_deref(), "JOBS_COMPARE_NATS"),
            Self::JetstreamSyncAlways => (
                cli.nats_sync_always.as_deref(),
                "JOBS_COMPARE_NATS_SYNC_ALWAYS",
            ),
        }
    }
}

/// Connects to `kind`'s server at `url` and sets up its queue.
async fn connect(kind: Kind, url: &str) -> Result<Arc<dyn System>, Error> {
    match kind {
        Kind::Rabbitmq => rabbitmq::connect(url, rabbitmq::QueueType::Classic).await,
        Kind::RabbitmqQuorum => rabbitmq::connect(url, rabbitmq::QueueType::Quorum).await,
        Kind::Jetstream => jetstream::connect(url, jetstream::Sync::Default).await,
        Kind::JetstreamSyncAlways => jetstream::connect(url, jetstream::Sync::Always).await,
    }
}

use zmesh_bench::args::positive_seconds;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
         {} alternating blocks per mode, after {} warm-up jobs per system; {} runtime",
        cli.payload,
        plan.submitters,
        plan.count,
        plan.time,
        plan.rounds,
        plan.warmup,
        cli.runtime.arg()
    );
    match runtime.block_on(cli.runtime.run(compare(cli, plan))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zmesh-jobs-compare: {}", chain(&e));
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
        let connected = within("connecting", STEP_LIMIT, connect(kind, url)).await;
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
