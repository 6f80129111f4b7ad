//! `zmesh bench`: measures call latency and throughput of each transport mode against a raw
//! `zeromq` DEALER/ROUTER baseline in the same run, with the servers in child processes
//! (this binary's hidden `bench-server` verb) so client and server never share a runtime.
//! The modes take turns in [`ROUNDS`] blocks each, so a change in the machine's state
//! during the run weighs on every mode alike. The machinery (server processes, the
//! alternating blocks, timing, percentiles, the JSON figures) is `zmesh-bench`'s, shared
//! with the criterion benches and the peer comparison; this module holds what the modes are.
//! The `device` mode puts a proxy device and an echo worker in two more child processes;
//! the `keyed` mode calls a node that requires a mesh key (fresh per run), so the key's cost
//! shows as a ratio to raw and tcp in the same run; the `spin` mode runs client and node in
//! the low-latency mode. What a run cannot use (`--count 0`, a
//! plot that is not `.svg` or cannot be written) is refused before anything starts, and a
//! debug build or a busy machine is warned about, since either makes the figures misleading.

use crate::output::outln;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh_bench::drive::{self, Measured};
use zmesh_bench::{
    Block, Figures, InOrder, Latencies, Order, Schedule, ServerChild, SpawnError, VsBaseline,
};
use zmesh_core::trust::MESH_KEY_ENV;
use zmesh_core::{Client, ClientConfig, MeshKey, Node};

use crate::CliError;
pub(crate) use zmesh_bench::Flavour;

/// Longest a bench server may take to start and announce its endpoint.
const SERVER_START_LIMIT: Duration = Duration::from_secs(10);
/// Longest one call may take before the run is declared broken.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Blocks each mode's measured calls are split into; the modes take turns block by block
/// (raw, tcp, ipc, raw, tcp, ...; see `zmesh_bench::schedule` for why).
const ROUNDS: u64 = 10;

/// The `bench` verb's arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Modes to run, taking turns in this order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "raw,tcp,ipc,device"
    )]
    modes: Vec<Mode>,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    in_flight: u64,
    /// Measured calls per mode, at least 1 (each mode also stops after --duration).
    #[arg(long, default_value_t = 20_000, value_parser = positive_count)]
    count: u64,
    /// Longest measuring time per mode, in seconds.
    #[arg(long, default_value_t = 5.0, value_parser = crate::positive_seconds)]
    duration: f64,
    /// Unmeasured warm-up calls per mode.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// Runtime flavour of client and servers.
    #[arg(long, value_enum, default_value = "current-thread")]
    pub(crate) runtime: Flavour,
    /// Idle connections opened to every mode's server (each with one call, so it is up)
    /// and held through the run: the servers' CPU over IDLE_SAMPLE seconds with no calls
    /// is reported, and every mode is measured with them open.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    idle_connections: u64,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the latency distributions to this SVG file (checked before the run).
    #[arg(long, value_name = "FILE.svg", value_parser = svg_path)]
    plot: Option<PathBuf>,
}

/// `--count`'s value: a run of no calls has no figures (they would print as NaN).
fn positive_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(count) if count > 0 => Ok(count),
        _ => Err(format!("{text:?} is not a count of calls: give 1 or more")),
    }
}

/// `--plot`'s value: the plot is SVG, so any other extension is a usage error rather than
/// SVG under a misleading name.
fn svg_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("svg") => Ok(path),
        _ => Err(format!(
            "the plot is drawn as SVG: give a file name ending in .svg, not {text:?}"
        )),
    }
}

/// The `bench` verb: checks what can be checked before the run (the plot's file), warns
/// about what would skew the figures, runs, prints the table (or JSON) and draws the plot.
pub(crate) async fn command(args: BenchArgs) -> Result<(), CliError> {
    let plot = args.plot.as_deref().map(PlotFile::create).transpose()?;
    let load = std::fs::read_to_string("/proc/loadavg").ok();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    for warning in warnings(cfg!(debug_assertions), load.as_deref(), cores) {
        eprintln!("zmesh: warning: {warning}");
    }
    let options = BenchOptions {
        modes: args.modes,
        payload: args.payload,
        in_flight: usize::try_from(args.in_flight).unwrap_or(usize::MAX),
        count: args.count,
        duration: crate::seconds(args.duration),
        warmup: args.warmup,
        runtime: args.runtime,
        idle_connections: usize::try_from(args.idle_connections).unwrap_or(usize::MAX),
    };
    let report = run(&options, !args.json).await?;
    if args.json {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Other(format!("cannot write JSON: {e}")))?;
        outln!("{text}");
    } else {
        print_table(&report)?;
    }
    if let Some(plot) = plot {
        let date = crate::mesh_key::utc_minute(SystemTime::now());
        let path = plot.write(&crate::plot::svg(&figure(&report, &options, &date)))?;
        if !args.json {
            outln!("latency plot written to {}", path.display());
        }
    }
    Ok(())
}

/// The build profile the figures come from, as the report and the plot say it.
const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// What would make this run's figures misleading: a debug build (several times slower than
/// release, and unevenly so), or a machine already busy (a 1-minute load average above one
/// per core, from `/proc/loadavg`'s text, where there is one).
fn warnings(debug_build: bool, loadavg: Option<&str>, cores: usize) -> Vec<String> {
    let mut out = Vec::new();
    if debug_build {
        out.push(
            "this is a debug build: its figures are not representative (build with --release)"
                .to_owned(),
        );
    }
    let load = loadavg
        .and_then(|text| text.split_whitespace().next())
        .and_then(|first| first.parse::<f64>().ok());
    // Core counts are small: no precision lost.
    #[allow(clippy::cast_precision_loss)]
    let per_core = load.map(|load| (load, load / cores.max(1) as f64));
    if let Some((load, per_core)) = per_core.filter(|(_, per_core)| *per_core > 1.0) {
        out.push(format!(
            "the machine is busy (load average {load:.2} over {cores} cores, {per_core:.2} per \
             core): other work skews the figures"
        ));
    }
    out
}

/// The plot's file, made sure of before the run: a temporary file in the target's directory
/// (so a directory that is missing or not writable fails at once), renamed over the target
/// once the plot is drawn (so a failed run leaves nothing behind).
struct PlotFile {
    path: PathBuf,
    file: tempfile::NamedTempFile,
}

impl PlotFile {
    fn create(path: &Path) -> Result<Self, CliError> {
        let cannot = |why: &dyn std::fmt::Display| {
            CliError::Usage(format!(
                "cannot write the plot to {}: {why}",
                path.display()
            ))
        };
        if path.is_dir() {
            return Err(cannot(&"it is a directory"));
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(cannot(&format_args!(
                "there is no directory {}",
                dir.display()
            )));
        }
        // Readable as any file this user writes (the umask applies), not 0600 as a temporary.
        let file = tempfile::Builder::new()
            .prefix(".zmesh-plot-")
            .suffix(".svg")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            // The kind alone: the error's text names the temporary file, not the plot.
            .map_err(|e| cannot(&format_args!("{} in {}", e.kind(), dir.display())))?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Writes `document` and puts it in place; returns where.
    fn write(mut self, document: &str) -> Result<PathBuf, CliError> {
        use std::io::Write as _;
        let fail = |e: &dyn std::fmt::Display| {
            CliError::Other(format!("cannot write {}: {e}", self.path.display()))
        };
        self.file
            .write_all(document.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| fail(&e))?;
        self.file.persist(&self.path).map_err(|e| fail(&e.error))?;
        Ok(self.path)
    }
}

/// What one bench run measures.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    /// Modes in the order they run; `raw` is the baseline of the ratios.
    pub(crate) modes: Vec<Mode>,
    /// Payload bytes per call (a msgpack bin for zmesh, the frame itself for raw).
    pub(crate) payload: usize,
    /// Calls in flight at once.
    pub(crate) in_flight: usize,
    /// Calls per mode; the mode also stops at `duration`.
    pub(crate) count: u64,
    /// Longest measured time per mode (the sum of its blocks).
    pub(crate) duration: Duration,
    /// Unmeasured calls per mode before measuring.
    pub(crate) warmup: u64,
    /// Runtime flavour of the client and of every server.
    pub(crate) runtime: Flavour,
    /// Idle connections held open to every mode's server (see [`IDLE_SAMPLE`]).
    pub(crate) idle_connections: usize,
}

/// How long the servers' CPU is sampled with only idle connections open.
const IDLE_SAMPLE: Duration = Duration::from_secs(2);

/// Connections of the `tcp4` mode.
const TCP4_CONNECTIONS: usize = 4;

/// A transport mode of `zmesh bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// A raw `zeromq` DEALER -> ROUTER echo over tcp: the baseline.
    Raw,
    /// A raw `zeromq` DEALER -> ROUTER echo over an ipc socket: the baseline for `ipc` (not
    /// in the default modes; ratios are still printed against `raw`).
    #[serde(rename = "raw-ipc")]
    RawIpc,
    /// A zmesh call over tcp loopback.
    Tcp,
    /// A zmesh call over an ipc socket.
    Ipc,
    /// A zmesh call over tcp through a proxy device to an echo worker (two hops).
    Device,
    /// A zmesh call over tcp loopback with a mesh key: every request and reply sealed and
    /// encrypted (not in the default modes: ask for it with --modes).
    Keyed,
    /// A zmesh call over tcp loopback in the low-latency mode: client and node spin up to
    /// [`BENCH_SPIN`] on their sockets before parking (not in the default modes).
    Spin,
    /// zmesh calls over tcp loopback spread over 4 connections (4 clients) to one node: with
    /// `--in-flight` and a `multi-thread` runtime, the scaling figure against `tcp` (not in
    /// the default modes).
    Tcp4,
}

/// The spin of the `spin` mode, on both sides: longer than a loopback round trip, so a
/// back-to-back call's reply (and the next request) arrives while the other side spins.
pub(crate) const BENCH_SPIN: Duration = Duration::from_micros(200);

/// The figures of one mode.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModeReport {
    pub(crate) mode: Mode,
    #[serde(flatten)]
    pub(crate) figures: Figures,
    /// Relative to the raw baseline (absent without a raw mode).
    #[serde(flatten)]
    pub(crate) vs_raw: VsBaseline,
    /// The mode's servers' CPU time, in milliseconds, over [`IDLE_SAMPLE`] with only
    /// `--idle-connections` open (absent without them).
    pub(crate) idle_cpu_ms: Option<f64>,
    /// (percentile, microseconds) points of the latency distribution, for plots.
    #[serde(skip)]
    pub(crate) curve: Vec<(f64, f64)>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BenchReport {
    pub(crate) payload: usize,
    pub(crate) in_flight: usize,
    pub(crate) runtime: Flavour,
    /// Idle connections held open to every mode's server.
    pub(crate) idle_connections: usize,
    /// `debug` or `release`: the build the figures come from.
    pub(crate) build: &'static str,
    pub(crate) modes: Vec<ModeReport>,
}

/// Longest the device mode waits for its worker to register with the device.
const WORKER_REGISTER_LIMIT: Duration = Duration::from_secs(10);

/// Runs every mode against its own server process (or processes), the modes taking turns
/// block by block (see [`ROUNDS`]).
pub(crate) async fn run(options: &BenchOptions, progress: bool) -> Result<BenchReport, CliError> {
    let dir = tempfile::Builder::new()
        .prefix("zmesh-bench")
        .tempdir()
        .map_err(|e| CliError::Other(format!("cannot create a directory for ipc: {e}")))?;
    // A fresh key per run: the keyed server gets it through its environment, never argv.
    let key = if options.modes.contains(&Mode::Keyed) {
        Some(crate::mesh_key::random_key_text()?)
    } else {
        None
    };
    // Every mode's servers run for the whole bench (idle while other modes take their
    // turn), each mode connected and warmed up before any is measured.
    let bar = progress_bar(progress);
    bar.set_message("starting");
    let mut runs = Vec::with_capacity(options.modes.len());
    bar.set_length(options.warmup.saturating_mul(options.modes.len() as u64));
    for &mode in &options.modes {
        let mode_key = key.as_deref().filter(|_| mode == Mode::Keyed);
        bar.set_message(format!("starting {}", mode.name()));
        let (servers, endpoint) =
            start_servers(mode, options.runtime, dir.path(), mode_key).await?;
        let mut caller = Caller::connect(mode, &endpoint, options, mode_key).await?;
        bar.set_message(format!("warm-up {}", mode.name()));
        caller.warm_up(options.warmup, || bar.inc(1)).await?;
        let idle = open_idle(mode, &endpoint, options, mode_key).await?;
        runs.push(ModeRun {
            mode,
            _servers: servers,
            _idle: idle,
            caller,
            latencies: Latencies::new(),
            idle_cpu_ms: None,
        });
    }
    if options.idle_connections > 0 {
        bar.set_message(format!(
            "{} idle connections per mode",
            options.idle_connections
        ));
        let before: Vec<Option<Duration>> = runs.iter().map(ModeRun::servers_cpu).collect();
        tokio::time::sleep(IDLE_SAMPLE).await;
        for (run, before) in runs.iter_mut().zip(before) {
            run.idle_cpu_ms = before
                .zip(run.servers_cpu())
                .map(|(a, b)| b.saturating_sub(a).as_secs_f64() * 1e3);
        }
    }
    bar.reset();
    bar.set_length(options.count.saturating_mul(options.modes.len() as u64));
    let mut schedule = Schedule::new(
        runs.len(),
        options.count,
        ROUNDS,
        options.duration,
        Order::Fixed,
    );
    while let Some(turn) = schedule.next_turn() {
        let run = &mut runs[turn.mode];
        bar.set_message(format!("measuring {}", run.mode.name()));
        let block = Block::of(&turn, options.in_flight);
        let measured = run.caller.measure(&block, &mut run.latencies, &bar).await?;
        schedule.finish(&turn, measured.calls, measured.elapsed);
    }
    bar.finish_and_clear();
    let mut reports: Vec<ModeReport> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| ModeReport {
            idle_cpu_ms: run.idle_cpu_ms,
            ..report(run.mode, &run.latencies, schedule.measured(i))
        })
        .collect();
    drop(runs);
    if let Some(raw) = reports
        .iter()
        .find(|r| r.mode == Mode::Raw)
        .map(|r| r.figures)
    {
        for r in &mut reports {
            r.vs_raw = VsBaseline::of(&r.figures, &raw);
        }
    }
    Ok(BenchReport {
        payload: options.payload,
        in_flight: options.in_flight,
        runtime: options.runtime,
        idle_connections: options.idle_connections,
        build: PROFILE,
        modes: reports,
    })
}

/// One mode during a run: its servers, its connected caller and what it measured so far.
struct ModeRun {
    mode: Mode,
    /// Kept alive (and killed on drop) for the whole run.
    _servers: Vec<ServerChild>,
    /// `--idle-connections`, held open for the whole run.
    _idle: Vec<Caller>,
    caller: Caller,
    latencies: Latencies,
    idle_cpu_ms: Option<f64>,
}

impl ModeRun {
    /// The CPU time the mode's server processes have used so far (`None` where /proc
    /// cannot tell).
    fn servers_cpu(&self) -> Option<Duration> {
        self._servers
            .iter()
            .map(|s| process_cpu(s.id()))
            .sum::<Option<Duration>>()
    }
}

/// The CPU time process `pid` has used, summed over its threads from
/// `/proc/PID/task/*/schedstat` (nanoseconds on a CPU, the first field).
fn process_cpu(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Opens `--idle-connections` callers to `endpoint`, each making one call (a raw echo, or
/// a zmesh call) so its connection is up, then left idle.
async fn open_idle(
    mode: Mode,
    endpoint: &str,
    options: &BenchOptions,
    key: Option<&str>,
) -> Result<Vec<Caller>, CliError> {
    let mut idle = Vec::with_capacity(options.idle_connections);
    for _ in 0..options.idle_connections {
        let mut caller = Caller::connect(mode, endpoint, options, key).await?;
        caller.warm_up(1, || {}).await?;
        idle.push(caller);
    }
    Ok(idle)
}

/// The client side of a mode, connected once for the whole run.
enum Caller {
    /// A raw DEALER keeping requests ahead of the replies.
    Raw {
        dealer: DealerSocket,
        payload: Bytes,
    },
    /// zmesh clients calling `echo.echo` (one client, one connection, except in `tcp4`):
    /// sequential calls take turns over them, a pipelined block gives each its own task.
    Zmesh {
        clients: Vec<Client>,
        value: Arc<rmpv::Value>,
    },
}

impl Caller {
    async fn connect(
        mode: Mode,
        endpoint: &str,
        options: &BenchOptions,
        key: Option<&str>,
    ) -> Result<Self, CliError> {
        match mode {
            Mode::Raw | Mode::RawIpc => {
                let mut dealer = DealerSocket::new();
                within("connecting the raw DEALER", dealer.connect(endpoint))
                    .await?
                    .map_err(|e| CliError::Other(format!("raw DEALER connect: {e}")))?;
                Ok(Self::Raw {
                    dealer,
                    payload: Bytes::from(vec![0x5a; options.payload]),
                })
            }
            Mode::Tcp | Mode::Tcp4 | Mode::Ipc | Mode::Device | Mode::Keyed | Mode::Spin => {
                let key = key
                    .map(MeshKey::from_secret)
                    .transpose()
                    .map_err(|e| CliError::Other(format!("bench key: {e}")))?;
                let mut config = ClientConfig::default();
                if let Some(key) = key {
                    config = config.mesh_key(key);
                }
                if mode == Mode::Spin {
                    config = config.spin(BENCH_SPIN);
                }
                let connections = if mode == Mode::Tcp4 {
                    TCP4_CONNECTIONS
                } else {
                    1
                };
                let clients = (0..connections)
                    .map(|_| Client::with_config(endpoint, config.clone()))
                    .collect();
                Ok(Self::Zmesh {
                    clients,
                    value: Arc::new(rmpv::Value::Binary(vec![0x5a; options.payload])),
                })
            }
        }
    }

    /// Unmeasured sequential calls, calling `tick` after each.
    async fn warm_up(&mut self, calls: u64, tick: impl Fn()) -> Result<(), CliError> {
        for _ in 0..calls {
            match self {
                Self::Raw { dealer, payload } => {
                    raw_send(dealer, payload).await?;
                    within("a raw reply", dealer.recv())
                        .await?
                        .map_err(raw_error)?;
                }
                Self::Zmesh { clients, value } => {
                    for client in clients.iter() {
                        zmesh_call(client, value).await?;
                    }
                }
            }
            tick();
        }
        Ok(())
    }

    /// Measures one block: `in_flight` concurrent zmesh calls, or a raw DEALER keeping
    /// `in_flight` requests ahead of the replies (the ROUTER echoes in order on one
    /// connection).
    async fn measure(
        &mut self,
        block: &Block,
        latencies: &mut Latencies,
        bar: &indicatif::ProgressBar,
    ) -> Result<Measured, CliError> {
        let tick = || bar.inc(1);
        match self {
            Self::Raw { dealer, payload } => {
                let mut connection = RawConnection { dealer, payload };
                drive::in_order(&mut connection, block, latencies, tick).await
            }
            Self::Zmesh { clients, value } if block.in_flight == 1 => {
                // Sequential: one caller, taking the connections in turn.
                let turn = std::cell::Cell::new(0usize);
                let call = || {
                    let n = turn.get();
                    turn.set(n.wrapping_add(1));
                    echo(&clients[n % clients.len()], value)
                };
                drive::concurrent_watched(call, block, latencies, tick, CALL_LIMIT, stalled).await
            }
            Self::Zmesh { clients, value } => {
                spread_over_connections(clients, value, block, latencies, bar).await
            }
        }
    }
}

/// A pipelined block of zmesh calls, one spawned task per connection, each with its share
/// of the calls and of the calls in flight: how an application that wants more than one
/// connection's throughput drives them. A single task calling over every connection would
/// keep all the callers' work on one thread whatever the runtime, and with one connection
/// the task still leaves `block_on`'s thread, so one connection and several are measured
/// the same way.
async fn spread_over_connections(
    clients: &[Client],
    value: &Arc<rmpv::Value>,
    block: &Block,
    latencies: &mut Latencies,
    bar: &indicatif::ProgressBar,
) -> Result<Measured, CliError> {
    let started = std::time::Instant::now();
    // A `JoinSet`: when one share fails, returning drops it, which stops the others.
    let mut tasks = tokio::task::JoinSet::new();
    for (client, share) in clients.iter().zip(block.split(clients.len())) {
        let (client, value, bar) = (client.clone(), value.clone(), bar.clone());
        tasks.spawn(async move {
            let mut latencies = Latencies::new();
            let call = || echo(&client, &value);
            let tick = || bar.inc(1);
            drive::concurrent_watched(call, &share, &mut latencies, tick, CALL_LIMIT, stalled)
                .await
                .map(|measured| (measured.calls, latencies))
        });
    }
    let mut calls = 0;
    while let Some(task) = tasks.join_next().await {
        let (share_calls, share_latencies) =
            task.map_err(|e| CliError::Other(format!("a bench caller task failed: {e}")))??;
        calls += share_calls;
        latencies.merge(&share_latencies);
    }
    Ok(Measured {
        calls,
        elapsed: started.elapsed(),
    })
}

/// The error of a block in which no zmesh call completed for [`CALL_LIMIT`].
fn stalled() -> CliError {
    CliError::Other(format!("no zmesh call completed in {CALL_LIMIT:?}"))
}

/// The raw DEALER of a block, as `drive::in_order` sends and receives on it.
struct RawConnection<'a> {
    dealer: &'a mut DealerSocket,
    payload: &'a Bytes,
}

impl InOrder for RawConnection<'_> {
    type Error = CliError;

    async fn send(&mut self) -> Result<(), CliError> {
        raw_send(self.dealer, self.payload).await
    }

    async fn receive(&mut self) -> Result<(), CliError> {
        let reply = within("a raw reply", self.dealer.recv())
            .await?
            .map_err(raw_error)?;
        std::hint::black_box(reply);
        Ok(())
    }
}

/// The progress bar on stderr (drawn only on a terminal): its message names the phase and
/// the mode (`starting tcp`, `warm-up tcp`, `measuring tcp`); its length is set per phase.
fn progress_bar(show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:<18} [{bar:40}] {pos}/{len} calls {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn report(mode: Mode, latencies: &Latencies, elapsed: Duration) -> ModeReport {
    let curve = crate::plot::percentiles(latencies.len())
        .into_iter()
        .map(|q| (q, zmesh_bench::micros(latencies.at_percentile(q))))
        .collect();
    ModeReport {
        mode,
        figures: Figures::new(latencies, elapsed),
        vs_raw: VsBaseline::default(),
        idle_cpu_ms: None,
        curve,
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T, CliError> {
    tokio::time::timeout(CALL_LIMIT, future)
        .await
        .map_err(|_| CliError::Other(format!("{what} took longer than {CALL_LIMIT:?}")))
}

/// One zmesh call of `echo.echo`, bounded by [`CALL_LIMIT`].
async fn zmesh_call(client: &Client, value: &rmpv::Value) -> Result<(), CliError> {
    within("a zmesh call", echo(client, value)).await?
}

/// One zmesh call of `echo.echo`, bounded only by the client's own deadline: for blocks
/// bounded by their progress instead ([`drive::concurrent_watched`]).
async fn echo(client: &Client, value: &rmpv::Value) -> Result<(), CliError> {
    let reply: rmpv::Value = client
        .call("echo.echo", (value,))
        .await
        .map_err(CliError::from)?;
    if let rmpv::Value::Binary(bytes) = &reply {
        std::hint::black_box(bytes);
    }
    Ok(())
}

fn raw_error(e: zeromq::ZmqError) -> CliError {
    CliError::Other(format!("raw DEALER: {e}"))
}

async fn raw_send(dealer: &mut DealerSocket, payload: &Bytes) -> Result<(), CliError> {
    let mut message = ZmqMessage::from(Bytes::new());
    message.push_back(payload.clone());
    within("a raw send", dealer.send(message))
        .await?
        .map_err(raw_error)
}

impl Mode {
    /// The name `--modes` takes, as the report prints it.
    fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map_or_else(
            || format!("{self:?}").to_lowercase(),
            |v| v.get_name().to_owned(),
        )
    }
}

/// Starts the server processes of `mode` and returns them with the endpoint clients call.
/// The device mode starts the device first, then a worker connecting to its backend, and
/// waits until the device reports the worker registered (before that, calls would fail
/// with `NameError`).
async fn start_servers(
    mode: Mode,
    flavour: Flavour,
    dir: &Path,
    key: Option<&str>,
) -> Result<(Vec<ServerChild>, String), CliError> {
    let bind = match mode {
        Mode::Raw | Mode::Tcp | Mode::Tcp4 | Mode::Device | Mode::Keyed | Mode::Spin => {
            "tcp://127.0.0.1:0".to_owned()
        }
        Mode::Ipc => format!("ipc://{}", dir.join("bench.sock").display()),
        Mode::RawIpc => format!("ipc://{}", dir.join("raw.sock").display()),
    };
    match mode {
        Mode::Raw | Mode::RawIpc => {
            let server = spawn_server("raw", &bind, flavour, None)?;
            let endpoint = server.endpoint().to_owned();
            Ok((vec![server], endpoint))
        }
        Mode::Tcp | Mode::Tcp4 | Mode::Ipc => {
            let server = spawn_server("zmesh", &bind, flavour, None)?;
            let endpoint = server.endpoint().to_owned();
            Ok((vec![server], endpoint))
        }
        Mode::Spin => {
            let server = spawn_server("spin", &bind, flavour, None)?;
            let endpoint = server.endpoint().to_owned();
            Ok((vec![server], endpoint))
        }
        Mode::Keyed => {
            let server = spawn_server("keyed", &bind, flavour, key)?;
            let endpoint = server.endpoint().to_owned();
            Ok((vec![server], endpoint))
        }
        Mode::Device => {
            let device = spawn_server("device", &bind, flavour, None)?;
            // The device announces `<frontend> <backend>`.
            let Some((frontend, backend)) = device
                .endpoint()
                .split_once(' ')
                .map(|(f, b)| (f.to_owned(), b.to_owned()))
            else {
                return Err(CliError::Other(format!(
                    "the device bench server announced {:?}, not two endpoints",
                    device.endpoint()
                )));
            };
            let worker = spawn_server("worker", &backend, flavour, None)?;
            wait_for_worker(&frontend).await?;
            Ok((vec![device, worker], frontend))
        }
    }
}

/// Polls the device's stats until a worker is registered: the device has no event for it
/// that a client can await, and the poll is bounded by [`WORKER_REGISTER_LIMIT`].
async fn wait_for_worker(frontend: &str) -> Result<(), CliError> {
    let client = Client::new(frontend);
    let registered = async {
        loop {
            let stats: zmesh_device::DeviceStats = within(
                "a device stats call",
                client.call(zmesh_device::STATS_METHOD, ()),
            )
            .await?
            .map_err(CliError::from)?;
            if stats.workers >= 1 {
                return Ok::<(), CliError>(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WORKER_REGISTER_LIMIT, registered)
        .await
        .map_err(|_| {
            CliError::Other(format!(
                "the echo worker did not register with the device within {WORKER_REGISTER_LIMIT:?}"
            ))
        })?
}

/// Starts `bench-server --kind KIND --bind BIND` (for a worker, BIND is the device backend
/// it connects to) and waits for its `READY` line. `key` goes to the `keyed` server in its
/// environment; the others get none.
fn spawn_server(
    kind: &str,
    bind: &str,
    flavour: Flavour,
    key: Option<&str>,
) -> Result<ServerChild, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::Other(format!("cannot find this executable: {e}")))?;
    let mut command = Command::new(exe);
    match key {
        Some(key) => command.env(MESH_KEY_ENV, key),
        None => command.env_remove(MESH_KEY_ENV),
    };
    // The servers' warnings about their own set-up (the bench device's backend takes no key,
    // on loopback by design) would break into the progress bar and the table: errors only,
    // unless the user asked for more with RUST_LOG.
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "error");
    }
    command
        .args(["bench-server", "--kind", kind, "--bind", bind])
        .args(["--runtime", flavour.arg()]);
    ServerChild::spawn(&format!("{kind} bench server"), command, SERVER_START_LIMIT).map_err(|e| {
        match &e {
            SpawnError::Start { source, .. } => CliError::Other(format!("{e}: {source}")),
            _ => CliError::Other(e.to_string()),
        }
    })
}

/// The hidden `bench-server` verb: an echo server announcing `READY <endpoint>`, running
/// until its stdin closes (its parent exited or dropped it). Kinds: `zmesh` (a node with
/// the echo service), `raw` (a ROUTER echoing frames), `device` (a proxy device binding its
/// frontend at BIND and its backend on a free tcp port; announces `READY <frontend>
/// <backend>`), `worker` (an echo node serving the device whose backend is BIND), `keyed` (as
/// `zmesh`, requiring the mesh key in `ZMESH_MESH_KEY`), `spin` (as `zmesh`, in the
/// low-latency mode).
pub(crate) async fn serve(kind: &str, bind: &str) -> Result<(), CliError> {
    let parent_gone = tokio::task::spawn_blocking(zmesh_bench::child::wait_for_parent);
    let announce = |endpoint: &str| {
        zmesh_bench::child::announce(endpoint)
            .map_err(|e| CliError::Other(format!("cannot announce the endpoint: {e}")))
    };
    match kind {
        "device" => {
            let device = zmesh_device::Device::builder()
                .frontend(bind)
                .backend("tcp://127.0.0.1:0")
                .start()
                .await
                .map_err(|e| CliError::Other(format!("cannot start the device: {e}")))?;
            announce(&format!("{} {}", device.frontend(), device.backend()))?;
            device.run_until(async { drop(parent_gone.await) }).await;
        }
        "zmesh" | "worker" | "keyed" | "spin" => {
            let mut builder = Node::builder().service(zmesh_echo::service());
            if kind == "spin" {
                builder = builder.config(zmesh_core::NodeConfig::default().spin(BENCH_SPIN));
            }
            if kind == "keyed" {
                let key = MeshKey::from_default_env()
                    .map_err(|e| CliError::Other(format!("the keyed bench server: {e}")))?;
                builder = builder.mesh_key(key);
            }
            // A worker connects out to the device's backend instead of binding.
            let worker = kind == "worker";
            let builder = if worker {
                builder.worker_of(bind)
            } else {
                builder.bind(bind)
            };
            let node = builder
                .start()
                .await
                .map_err(|e| CliError::Other(format!("cannot start the {kind} node: {e}")))?;
            announce(if worker { bind } else { node.endpoint() })?;
            let _ = parent_gone.await;
            node.shutdown(Duration::from_millis(200)).await;
        }
        _ => {
            let (endpoint, echo) = zmesh_bench::raw::echo(bind)
                .await
                .map_err(|e| CliError::Other(format!("cannot bind {bind}: {e}")))?;
            announce(&endpoint)?;
            tokio::select! {
                _ = parent_gone => {}
                () = echo => {}
            }
        }
    }
    Ok(())
}

/// The human-readable table.
pub(crate) fn print_table(report: &BenchReport) -> Result<(), crate::output::OutputError> {
    outln!(
        "zmesh bench: {} B payload, {} in flight, {} runtime, servers in separate processes",
        report.payload,
        report.in_flight,
        report.runtime.arg()
    );
    outln!(
        "{:<6} {:>9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "mode",
        "calls",
        "calls/s",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "p50/raw",
        "calls/s/raw"
    );
    for m in &report.modes {
        let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
        outln!(
            "{:<6} {:>9} {:>11.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>11}",
            m.mode.name(),
            m.figures.calls,
            m.figures.calls_per_sec,
            m.figures.p50_us,
            m.figures.p90_us,
            m.figures.p99_us,
            m.figures.p999_us,
            m.figures.max_us,
            ratio(m.vs_raw.p50_vs_raw),
            ratio(m.vs_raw.calls_per_sec_vs_raw),
        );
    }
    if report.idle_connections > 0 {
        outln!(
            "servers' CPU with {} idle connections each and no calls, over {:?}:",
            report.idle_connections,
            IDLE_SAMPLE
        );
        for m in &report.modes {
            let cpu = m.idle_cpu_ms.map_or_else(
                || "- (no /proc)".to_owned(),
                |ms| {
                    format!(
                        "{ms:.1} ms ({:.2}% of a CPU)",
                        ms / 10.0 / IDLE_SAMPLE.as_secs_f64()
                    )
                },
            );
            outln!("  {:<6} {cpu}", m.mode.name());
        }
    }
    Ok(())
}

/// The plot of a run: one series per mode (its calls and maximum in the legend, since the
/// line ends at the highest percentile its calls resolve) and a caption saying what ran.
fn figure(report: &BenchReport, options: &BenchOptions, date: &str) -> crate::plot::Figure {
    let series = report
        .modes
        .iter()
        .map(|m| crate::plot::Series {
            name: m.mode.name(),
            note: format!(
                "{} calls, max {}",
                m.figures.calls,
                readable_micros(m.figures.max_us)
            ),
            points: m.curve.clone(),
        })
        .collect();
    let calls: Vec<String> = report
        .modes
        .iter()
        .map(|m| m.figures.calls.to_string())
        .collect();
    let measured = if calls.iter().all(|c| *c == calls[0]) {
        format!("{} calls per mode", calls[0])
    } else {
        format!("{} calls", calls.join("/"))
    };
    crate::plot::Figure {
        title: "zmesh bench: call latency by percentile".to_owned(),
        series,
        caption: vec![
            format!(
                "{} B payload, {} in flight, {} runtime, servers in separate processes",
                report.payload,
                report.in_flight,
                report.runtime.arg()
            ),
            format!(
                "{measured} measured (--count {}, --duration {:?}) after {} warm-up calls, in {ROUNDS} alternating blocks",
                options.count, options.duration, options.warmup
            ),
            format!("{} build, {date}", report.build),
        ],
    }
}

/// Microseconds as a legend reads them: `850 us`, `1.25 ms`, `2.5 s`.
fn readable_micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.3} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.3} ms", us / 1e3)
    } else {
        format!("{us:.1} us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_of_a_run_shows_every_mode_once_with_a_caption_of_what_ran() {
        let options = BenchOptions {
            modes: vec![Mode::Raw, Mode::Tcp, Mode::Ipc, Mode::Device],
            payload: 64,
            in_flight: 1,
            count: 305,
            duration: Duration::from_secs(5),
            warmup: 20,
            runtime: Flavour::CurrentThread,
            idle_connections: 0,
        };
        let modes = options
            .modes
            .iter()
            .zip(1u64..)
            .map(|(&mode, k)| {
                let mut latencies = Latencies::new();
                for i in 0..options.count {
                    // A spread with a tail, slower per mode.
                    let us = 15 * k + i % 17 + if i % 101 == 0 { 900 * k } else { 0 };
                    latencies.record(Duration::from_micros(us));
                }
                report(mode, &latencies, Duration::from_millis(40))
            })
            .collect();
        let run = BenchReport {
            payload: options.payload,
            in_flight: options.in_flight,
            runtime: options.runtime,
            idle_connections: 0,
            build: PROFILE,
            modes,
        };
        let document = crate::plot::svg(&figure(&run, &options, "2026-12-02 19:40 UTC"));
        let drawn = crate::plot::tests::check(&document);
        let names: Vec<&str> = drawn.series.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["raw", "tcp", "ipc", "device"]);
        assert_eq!(drawn.x_ticks, ["p50", "p90", "p99", "p99.9", "p99.99"]);
        // Readable labels across the data (15 us to about 3.6 ms), in us and ms.
        for label in ["20 us", "100 us", "1 ms"] {
            assert!(
                drawn.y_ticks.iter().any(|t| t == label),
                "{:?}",
                drawn.y_ticks
            );
        }
        let caption = drawn.caption.join("\n");
        for field in [
            "64 B payload",
            "1 in flight",
            "current-thread runtime",
            "305 calls per mode measured",
            "20 warm-up calls",
            &format!("{PROFILE} build"),
            "2026-12-02 19:40 UTC",
        ] {
            assert!(caption.contains(field), "{field:?} in {caption}");
        }
        // The maximum is stated, not drawn.
        assert!(
            drawn
                .legend
                .iter()
                .any(|l| l.starts_with("305 calls, max ")),
            "{:?}",
            drawn.legend
        );
    }

    #[test]
    fn a_debug_build_and_a_busy_machine_are_warned_about() {
        assert!(warnings(false, Some("0.50 0.40 0.30 1/200 999"), 2).is_empty());
        assert!(warnings(false, Some("2.00 0.40 0.30 1/200 999"), 2).is_empty());
        assert!(warnings(false, None, 1).is_empty());
        assert!(warnings(false, Some("garbage"), 1).is_empty());
        let busy = warnings(false, Some("4.50 3.00 2.00 5/300 1234"), 2);
        assert_eq!(busy.len(), 1, "{busy:?}");
        assert!(
            busy[0].contains("load average 4.50 over 2 cores"),
            "{busy:?}"
        );
        let debug = warnings(true, Some("0.10 0.10 0.10 1/100 1"), 4);
        assert_eq!(debug.len(), 1, "{debug:?}");
        assert!(debug[0].contains("debug build"), "{debug:?}");
    }

    #[test]
    fn only_svg_plots_are_taken() {
        assert!(svg_path("out/latency.svg").is_ok());
        assert!(svg_path("LATENCY.SVG").is_ok());
        for bad in ["x.png", "x", "x.svg.png", "svg"] {
            assert!(svg_path(bad).is_err(), "{bad}");
        }
        assert_eq!(positive_count("1"), Ok(1));
        for bad in ["0", "-1", "x", ""] {
            assert!(positive_count(bad).is_err(), "{bad}");
        }
    }
}
