//! `zmesh-peer-compare`: the same echo measurement (payload, counts, durations) with the
//! TCP floor (blocking `std::net` ping-pong), a raw `zeromq` DEALER/ROUTER baseline on
//! zmesh's fork and on unmodified upstream zeromq 0.7.0, zmesh, tarpc, tonic and NATS
//! request-reply (when a `nats-server` is given), in one run and one process layout,
//! printed as a table with ratios to raw, to upstream and to the floor.
//!
//! Layout: each system's server runs in a child process (this binary's hidden `serve`
//! verb), started just before that system is measured and killed right after, so client
//! and server never share a runtime and only one server is alive at a time. Both
//! processes use the same tokio runtime flavour (`--runtime`). With `--pin split` (the
//! default on 2+ CPUs) the client process is pinned to CPU 0 and each server to CPU 1, as
//! `benches/rpc.rs` does with threads.
//!
//! ```text
//! cargo run --release -p zmesh-peer-compare
//! ```

mod floor;
mod grpc;
mod measure;
mod nats;
mod node;
mod raw;
mod server;
mod tarpc_echo;
mod upstream;
mod zmesh;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use zmesh_bench::{Block, Figures, Flavour, affinity, ratio};

/// Echo round trips of zmesh beside the TCP floor, raw zeromq, tarpc, tonic and NATS, in
/// one run.
#[derive(Debug, Parser)]
#[command(name = "zmesh-peer-compare", version, about)]
struct Cli {
    #[command(subcommand)]
    serve: Option<Serve>,
    /// Systems to measure, in order (comma-separated); `raw` is the ratios' baseline.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "floor,raw,upstream,zmesh,node,tarpc,tonic,nats"
    )]
    systems: Vec<System>,
    /// The nats-server for the `nats` row (`nats://127.0.0.1:PORT`; `tools/peer-compare/
    /// nats.sh start` prints it); without one that row is skipped with a message.
    #[arg(long, env = "PEER_COMPARE_NATS")]
    nats: Option<String>,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Unmeasured sequential calls per system before measuring.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Measured sequential round trips per system.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Measured calls of the pipelined pass per system.
    #[arg(long, default_value_t = 100_000)]
    pipelined_count: u64,
    /// Calls in flight in the pipelined pass.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    in_flight: u64,
    /// Longest time of each pass, in seconds (a pass stops at its count or at this).
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    duration: f64,
    /// Runtime flavour of client and servers.
    #[arg(long, value_enum, default_value = "current-thread")]
    runtime: Flavour,
    /// CPU placement: `split` (client on CPU 0, server on CPU 1), `same` (both on CPU 0),
    /// `off`.
    #[arg(long, value_enum, default_value = "split")]
    pin: Pin,
}

/// The hidden verb a server child runs.
#[derive(Debug, Subcommand)]
enum Serve {
    /// Internal: serve SYSTEM's echo on a free loopback port, print `READY <address>`, and
    /// run until stdin closes.
    #[command(hide = true)]
    Serve {
        #[arg(value_enum)]
        system: System,
        #[arg(long)]
        cpu: Option<usize>,
    },
}

/// A system under comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum System {
    /// Blocking `std::net` TCP ping-pong: the floor.
    Floor,
    /// Raw `zeromq` DEALER -> ROUTER echo of one frame (zmesh's fork): the baseline.
    Raw,
    /// The same echo on unmodified upstream zeromq 0.7.0.
    Upstream,
    /// zmesh Client -> Node, `echo.echo` of a msgpack bin.
    Zmesh,
    /// The `raw` row's DEALER sending stock zerorpc requests to the `zmesh` row's node: the
    /// node's own cost against the raw ROUTER echo.
    Node,
    /// tarpc over TCP with bincode.
    Tarpc,
    /// tonic unary gRPC over HTTP/2.
    Tonic,
    /// NATS request-reply through a nats-server (async-nats).
    Nats,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            Self::Floor => "TCP floor (blocking)",
            Self::Raw => "raw zeromq (fork)",
            Self::Upstream => "raw zeromq 0.7.0 (upstream)",
            Self::Zmesh => "zmesh",
            Self::Node => "zmesh node, raw DEALER client",
            Self::Tarpc => "tarpc (bincode)",
            Self::Tonic => "tonic (gRPC)",
            Self::Nats => "NATS request-reply",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Self::Floor => "floor",
            Self::Raw => "raw",
            Self::Upstream => "upstream",
            Self::Zmesh => "zmesh",
            Self::Node => "node",
            Self::Tarpc => "tarpc",
            Self::Tonic => "tonic",
            Self::Nats => "nats",
        }
    }
}

/// Where client and servers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pin {
    /// Client on CPU 0, servers on CPU 1.
    Split,
    /// Client and servers on CPU 0.
    Same,
    /// No pinning.
    Off,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("server: {0}")]
    Server(String),
    #[error("call: {0}")]
    Call(String),
    #[error("timeout: {0}")]
    Timeout(String),
}

/// What every system is asked to do.
#[derive(Debug, Clone)]
struct Plan {
    payload: usize,
    warmup: u64,
    sequential: Block,
    pipelined: Block,
}

/// One system's figures.
#[derive(Debug, Clone)]
struct Row {
    system: System,
    sequential: Figures,
    pipelined: Figures,
}

use zmesh_bench::args::positive_seconds;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Read before any pin, so the first reading is the unpinned CPU list.
    let _ = affinity::process_cpus();
    if let Some(Serve::Serve { system, cpu }) = cli.serve {
        if let Some(cpu) = cpu {
            affinity::pin_current_thread(cpu);
        }
        return match cli.runtime.runtime() {
            Ok(runtime) => match runtime.block_on(server::serve(system, cli.nats.as_deref())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("zmesh-peer-compare serve: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("zmesh-peer-compare serve: cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let two_cpus = std::thread::available_parallelism().map_or(1, usize::from) >= 2;
    let (client_cpu, server_cpu) = match cli.pin {
        Pin::Split if two_cpus => (Some(0), Some(1)),
        Pin::Same => (Some(0), Some(0)),
        _ => (None, None),
    };
    // Pinned before the runtime exists, so its threads inherit the placement.
    if let Some(cpu) = client_cpu {
        affinity::pin_current_thread(cpu);
    }
    let runtime = match cli.runtime.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("zmesh-peer-compare: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let duration = Duration::from_secs_f64(cli.duration);
    let plan = Plan {
        payload: cli.payload,
        warmup: cli.warmup,
        sequential: Block {
            calls: cli.count,
            in_flight: 1,
            time: duration,
        },
        pipelined: Block {
            calls: cli.pipelined_count,
            in_flight: usize::try_from(cli.in_flight).unwrap_or(usize::MAX),
            time: duration,
        },
    };
    println!(
        "zmesh-peer-compare: {} B echo; sequential {} calls after {} warm-up; pipelined {} calls \
         with {} in flight; each pass at most {:?}; {} runtime in client and server processes; \
         placement: {}",
        plan.payload,
        plan.sequential.calls,
        plan.warmup,
        plan.pipelined.calls,
        plan.pipelined.in_flight,
        duration,
        cli.runtime.arg(),
        match (client_cpu, server_cpu) {
            (Some(0), Some(1)) => "client CPU 0, server CPU 1",
            (Some(_), Some(_)) => "client and server on CPU 0",
            _ => "not pinned",
        }
    );
    let mut rows = Vec::with_capacity(cli.systems.len());
    for &system in &cli.systems {
        if system == System::Nats {
            let reachable = match &cli.nats {
                None => Err("no server given (--nats or PEER_COMPARE_NATS; \
                             tools/peer-compare/nats.sh start prints it)"
                    .to_owned()),
                Some(url) => runtime
                    .block_on(nats::connect(url))
                    .map(drop)
                    .map_err(|e| format!("{e} (is it running? tools/peer-compare/nats.sh start)")),
            };
            if let Err(why) = reachable {
                println!("skipped {}: {why}", system.name());
                continue;
            }
        }
        eprintln!("measuring {} ...", system.name());
        let measured = runtime.block_on(async {
            let child = server::spawn(system, cli.runtime, server_cpu, cli.nats.as_deref())?;
            let endpoint = child.endpoint();
            let result = match system {
                System::Floor => floor::measure(endpoint, &plan).await,
                System::Raw => raw::measure(endpoint, &plan).await,
                System::Upstream => upstream::measure(endpoint, &plan).await,
                System::Zmesh => zmesh::measure(endpoint, &plan).await,
                System::Node => node::measure(endpoint, &plan).await,
                System::Tarpc => tarpc_echo::measure(endpoint, &plan).await,
                System::Tonic => grpc::measure(endpoint, &plan).await,
                System::Nats => nats::measure(endpoint, &plan).await,
            };
            drop(child);
            result
        });
        match measured {
            Ok((sequential, pipelined)) => rows.push(Row {
                system,
                sequential,
                pipelined,
            }),
            Err(e) => {
                eprintln!("zmesh-peer-compare: {}: {e}", system.name());
                return ExitCode::FAILURE;
            }
        }
    }
    print_table(&rows);
    ExitCode::SUCCESS
}

/// A Markdown table (pastes into docs/COMPARISON.md as it is): ratios to the raw row (the
/// fork), to upstream zeromq 0.7.0 and, for p50, to the TCP floor.
fn print_table(rows: &[Row]) {
    let base = |system: System| rows.iter().find(|r| r.system == system);
    let (raw, upstream, floor) = (
        base(System::Raw),
        base(System::Upstream),
        base(System::Floor),
    );
    let vs = |value: f64, base: Option<f64>| {
        base.and_then(|base| ratio(value, base))
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
    };
    println!();
    println!(
        "| system | p50 us | p99 us | sequential calls/s | pipelined calls/s | p50 vs raw | \
         p50 vs upstream | p50 vs floor | pipelined vs raw | pipelined vs upstream |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let p50 = |r: Option<&Row>| r.map(|r| r.sequential.p50_us);
        let pipelined = |r: Option<&Row>| r.map(|r| r.pipelined.calls_per_sec);
        println!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            row.system.name(),
            row.sequential.p50_us,
            row.sequential.p99_us,
            row.sequential.calls_per_sec,
            row.pipelined.calls_per_sec,
            vs(row.sequential.p50_us, p50(raw)),
            vs(row.sequential.p50_us, p50(upstream)),
            vs(row.sequential.p50_us, p50(floor)),
            vs(row.pipelined.calls_per_sec, pipelined(raw)),
            vs(row.pipelined.calls_per_sec, pipelined(upstream)),
        );
    }
    let calls: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {}+{}",
                r.system.arg(),
                r.sequential.calls,
                r.pipelined.calls
            )
        })
        .collect();
    println!();
    println!(
        "measured calls (sequential+pipelined): {}",
        calls.join(", ")
    );
}
