//! `zmesh bench`: measures call latency and throughput of each transport mode against a raw
//! `zeromq` DEALER/ROUTER baseline in the same run, with the servers in child processes
//! (this binary's hidden `bench-server` verb) so client and server never share a runtime.
//! The modes take turns in [`ROUNDS`] blocks each, so a change in the machine's state
//! during the run weighs on every mode alike.
//! The `device` mode puts a proxy device and an echo worker in two more child processes;
//! the `keyed` mode calls a node that requires a mesh key (fresh per run), so the key's cost
//! shows as a ratio to raw and tcp in the same run.

use crate::output::outln;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use serde::Serialize;
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh_core::trust::MESH_KEY_ENV;
use zmesh_core::{Client, ClientConfig, MeshKey, Node};

use crate::CliError;

/// Longest a bench server may take to start and announce its endpoint.
const SERVER_START_LIMIT: Duration = Duration::from_secs(10);
/// Longest one call may take before the run is declared broken.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Latencies above this are clamped into the histogram's last bucket.
const MAX_RECORDED_NS: u64 = 60_000_000_000;
/// Blocks each mode's measured calls are split into. The modes take turns block by block
/// (raw, tcp, ipc, raw, tcp, ...): run one after the other, a mode measured while the
/// machine was busier or its CPUs slower carried that into the ratios (runs of the same
/// binary gave 1.00x-1.32x for tcp/raw p50 that way).
const ROUNDS: u64 = 10;

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
}

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
}

/// The tokio runtime flavour of client and servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Flavour {
    /// One `current_thread` runtime per process.
    CurrentThread,
    /// A 2-worker multi-thread runtime per process.
    MultiThread,
}

impl Flavour {
    pub(crate) fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Self::MultiThread => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build(),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Self::CurrentThread => "current-thread",
            Self::MultiThread => "multi-thread",
        }
    }
}

/// The figures of one mode.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModeReport {
    pub(crate) mode: Mode,
    pub(crate) calls: u64,
    pub(crate) seconds: f64,
    pub(crate) calls_per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    /// p50 relative to the raw baseline's p50 (absent without a raw mode).
    pub(crate) p50_vs_raw: Option<f64>,
    /// Throughput relative to the raw baseline's.
    pub(crate) calls_per_sec_vs_raw: Option<f64>,
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
    let mut runs = Vec::with_capacity(options.modes.len());
    for &mode in &options.modes {
        let mode_key = key.as_deref().filter(|_| mode == Mode::Keyed);
        let (servers, endpoint) =
            start_servers(mode, options.runtime, dir.path(), mode_key).await?;
        let mut caller = Caller::connect(mode, &endpoint, options, mode_key).await?;
        caller.warm_up(options.warmup).await?;
        runs.push(ModeRun {
            mode,
            _servers: servers,
            caller,
            histogram: new_histogram(),
            measured: Duration::ZERO,
            calls: 0,
        });
    }
    let bar = progress_bar(progress, options);
    let per_block = options.count.div_ceil(ROUNDS).max(1);
    loop {
        let mut measured_any = false;
        for run in &mut runs {
            if run.calls >= options.count || run.measured >= options.duration {
                continue;
            }
            let block = Block {
                calls: per_block.min(options.count - run.calls),
                in_flight: options.in_flight,
                time: options.duration.saturating_sub(run.measured),
            };
            let (calls, elapsed) = run.caller.measure(&block, &mut run.histogram, &bar).await?;
            run.calls += calls;
            run.measured += elapsed;
            measured_any = true;
        }
        if !measured_any {
            break;
        }
    }
    bar.finish_and_clear();
    let mut reports: Vec<ModeReport> = runs
        .iter()
        .map(|run| report(run.mode, &run.histogram, run.measured))
        .collect();
    drop(runs);
    let raw = reports
        .iter()
        .find(|r| r.mode == Mode::Raw)
        .map(|r| (r.p50_us, r.calls_per_sec));
    if let Some((raw_p50, raw_rate)) = raw {
        for r in &mut reports {
            r.p50_vs_raw = Some(r.p50_us / raw_p50);
            r.calls_per_sec_vs_raw = Some(r.calls_per_sec / raw_rate);
        }
    }
    Ok(BenchReport {
        payload: options.payload,
        in_flight: options.in_flight,
        runtime: options.runtime,
        modes: reports,
    })
}

/// One mode during a run: its servers, its connected caller and what it measured so far.
struct ModeRun {
    mode: Mode,
    /// Kept alive (and killed on drop) for the whole run.
    _servers: Vec<BenchServer>,
    caller: Caller,
    histogram: Histogram<u64>,
    /// Sum of the mode's blocks' wall time.
    measured: Duration,
    calls: u64,
}

/// One turn of a mode: up to `calls` calls with `in_flight` at once, stopping early after
/// `time`.
struct Block {
    calls: u64,
    in_flight: usize,
    time: Duration,
}

/// The client side of a mode, connected once for the whole run.
enum Caller {
    /// A raw DEALER keeping requests ahead of the replies.
    Raw {
        dealer: DealerSocket,
        payload: Bytes,
    },
    /// A zmesh client calling `echo.echo`.
    Zmesh { client: Client, value: rmpv::Value },
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
            Mode::Tcp | Mode::Ipc | Mode::Device | Mode::Keyed => {
                let key = key
                    .map(MeshKey::from_secret)
                    .transpose()
                    .map_err(|e| CliError::Other(format!("bench key: {e}")))?;
                let client = match key {
                    Some(key) => {
                        Client::with_config(endpoint, ClientConfig::default().mesh_key(key))
                    }
                    None => Client::new(endpoint),
                };
                Ok(Self::Zmesh {
                    client,
                    value: rmpv::Value::Binary(vec![0x5a; options.payload]),
                })
            }
        }
    }

    /// Unmeasured sequential calls.
    async fn warm_up(&mut self, calls: u64) -> Result<(), CliError> {
        match self {
            Self::Raw { dealer, payload } => {
                for _ in 0..calls {
                    raw_send(dealer, payload).await?;
                    within("a raw reply", dealer.recv())
                        .await?
                        .map_err(raw_error)?;
                }
            }
            Self::Zmesh { client, value } => {
                for _ in 0..calls {
                    zmesh_call(client, value).await?;
                }
            }
        }
        Ok(())
    }

    /// Measures one block; returns the calls made and the block's wall time.
    async fn measure(
        &mut self,
        block: &Block,
        histogram: &mut Histogram<u64>,
        bar: &indicatif::ProgressBar,
    ) -> Result<(u64, Duration), CliError> {
        match self {
            Self::Raw { dealer, payload } => {
                measure_raw(dealer, payload, block, histogram, bar).await
            }
            Self::Zmesh { client, value } => {
                measure_zmesh(client, value, block, histogram, bar).await
            }
        }
    }
}

fn progress_bar(show: bool, options: &BenchOptions) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let total = options.count.saturating_mul(options.modes.len() as u64);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:40}] {pos}/{len} calls {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn report(mode: Mode, histogram: &Histogram<u64>, elapsed: Duration) -> ModeReport {
    let us = |ns: u64| ns as f64 / 1e3;
    let calls = histogram.len();
    let seconds = elapsed.as_secs_f64();
    // Percentiles on a "nines" scale: dense where the tail is.
    let curve = (0..=40)
        .map(|i| 100.0 * (1.0 - 10f64.powf(-f64::from(i) / 10.0)))
        .chain([99.95, 99.99, 100.0])
        .map(|q| (q, us(histogram.value_at_percentile(q))))
        .collect();
    ModeReport {
        mode,
        calls,
        seconds,
        calls_per_sec: if seconds > 0.0 {
            calls as f64 / seconds
        } else {
            0.0
        },
        p50_us: us(histogram.value_at_quantile(0.50)),
        p90_us: us(histogram.value_at_quantile(0.90)),
        p99_us: us(histogram.value_at_quantile(0.99)),
        p999_us: us(histogram.value_at_quantile(0.999)),
        max_us: us(histogram.max()),
        p50_vs_raw: None,
        calls_per_sec_vs_raw: None,
        curve,
    }
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits from 1 ns to a minute: about 0.1% resolution everywhere.
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("constant histogram bounds are valid")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(ns.clamp(1, MAX_RECORDED_NS));
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T, CliError> {
    tokio::time::timeout(CALL_LIMIT, future)
        .await
        .map_err(|_| CliError::Other(format!("{what} took longer than {CALL_LIMIT:?}")))
}

/// One timed zmesh call of `echo.echo`.
async fn zmesh_call(client: &Client, value: &rmpv::Value) -> Result<Duration, CliError> {
    let started = Instant::now();
    let reply: rmpv::Value = within("a zmesh call", client.call("echo.echo", (value,)))
        .await?
        .map_err(CliError::from)?;
    if let rmpv::Value::Binary(bytes) = &reply {
        std::hint::black_box(bytes);
    }
    Ok(started.elapsed())
}

/// `in_flight` callers each making sequential zmesh calls until the block's count or time
/// is reached.
async fn measure_zmesh(
    client: &Client,
    value: &rmpv::Value,
    block: &Block,
    histogram: &mut Histogram<u64>,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, Duration), CliError> {
    let started = Instant::now();
    let stop_at = started + block.time;
    let mut running = FuturesUnordered::new();
    let mut issued = 0u64;
    while issued < block.calls.min(block.in_flight as u64) {
        running.push(zmesh_call(client, value));
        issued += 1;
    }
    let mut done = 0u64;
    while let Some(latency) = running.next().await {
        record(histogram, latency?);
        done += 1;
        bar.inc(1);
        if issued < block.calls && Instant::now() < stop_at {
            running.push(zmesh_call(client, value));
            issued += 1;
        }
    }
    Ok((done, started.elapsed()))
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

/// A raw DEALER keeping `in_flight` requests ahead of the replies. The ROUTER echoes in
/// order on one connection, so a FIFO of send times gives each reply's latency.
async fn measure_raw(
    dealer: &mut DealerSocket,
    payload: &Bytes,
    block: &Block,
    histogram: &mut Histogram<u64>,
    bar: &indicatif::ProgressBar,
) -> Result<(u64, Duration), CliError> {
    let mut sent_at = std::collections::VecDeque::with_capacity(block.in_flight);
    let started = Instant::now();
    let stop_at = started + block.time;
    let mut issued = 0u64;
    while issued < block.calls.min(block.in_flight as u64) {
        sent_at.push_back(Instant::now());
        raw_send(dealer, payload).await?;
        issued += 1;
    }
    let mut done = 0u64;
    while let Some(sent) = sent_at.pop_front() {
        let reply = within("a raw reply", dealer.recv())
            .await?
            .map_err(raw_error)?;
        record(histogram, sent.elapsed());
        std::hint::black_box(reply);
        done += 1;
        bar.inc(1);
        if issued < block.calls && Instant::now() < stop_at {
            sent_at.push_back(Instant::now());
            raw_send(dealer, payload).await?;
            issued += 1;
        }
    }
    Ok((done, started.elapsed()))
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
) -> Result<(Vec<BenchServer>, String), CliError> {
    let bind = match mode {
        Mode::Raw | Mode::Tcp | Mode::Device | Mode::Keyed => "tcp://127.0.0.1:0".to_owned(),
        Mode::Ipc => format!("ipc://{}", dir.join("bench.sock").display()),
        Mode::RawIpc => format!("ipc://{}", dir.join("raw.sock").display()),
    };
    match mode {
        Mode::Raw | Mode::RawIpc => {
            let server = BenchServer::spawn("raw", &bind, flavour, None)?;
            let endpoint = server.endpoint.clone();
            Ok((vec![server], endpoint))
        }
        Mode::Tcp | Mode::Ipc => {
            let server = BenchServer::spawn("zmesh", &bind, flavour, None)?;
            let endpoint = server.endpoint.clone();
            Ok((vec![server], endpoint))
        }
        Mode::Keyed => {
            let server = BenchServer::spawn("keyed", &bind, flavour, key)?;
            let endpoint = server.endpoint.clone();
            Ok((vec![server], endpoint))
        }
        Mode::Device => {
            let device = BenchServer::spawn("device", &bind, flavour, None)?;
            // The device announces `<frontend> <backend>`.
            let Some((frontend, backend)) = device
                .endpoint
                .split_once(' ')
                .map(|(f, b)| (f.to_owned(), b.to_owned()))
            else {
                return Err(CliError::Other(format!(
                    "the device bench server announced {:?}, not two endpoints",
                    device.endpoint
                )));
            };
            let worker = BenchServer::spawn("worker", &backend, flavour, None)?;
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

/// A bench server in a child process; killed and reaped on drop.
struct BenchServer {
    child: Child,
    endpoint: String,
    // Kept open: the server exits when its stdin closes (see `serve`).
    _stdout: BufReader<ChildStdout>,
}

impl BenchServer {
    /// Starts `bench-server --kind KIND --bind BIND` (for a worker, BIND is the device
    /// backend it connects to) and waits for its `READY` line. `key` goes to the `keyed`
    /// server in its environment; the others get none.
    fn spawn(
        kind: &str,
        bind: &str,
        flavour: Flavour,
        key: Option<&str>,
    ) -> Result<Self, CliError> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::Other(format!("cannot find this executable: {e}")))?;
        let mut command = Command::new(exe);
        match key {
            Some(key) => command.env(MESH_KEY_ENV, key),
            None => command.env_remove(MESH_KEY_ENV),
        };
        let mut child = command
            .args(["bench-server", "--kind", kind, "--bind", bind])
            .args(["--runtime", flavour.arg()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CliError::Other(format!("cannot start a bench server: {e}")))?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        // Read the announcement on a thread so a server that never speaks cannot hang us.
        std::thread::spawn(move || {
            let Some(stdout) = stdout else { return };
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let read = reader.read_line(&mut line);
            let _ = tx.send((read.map(|_| line), reader));
        });
        let announced = rx.recv_timeout(SERVER_START_LIMIT);
        let (line, reader) = match announced {
            Ok((Ok(line), reader)) => (line, reader),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CliError::Other(format!(
                    "the {kind} bench server did not start within {SERVER_START_LIMIT:?}"
                )));
            }
        };
        let Some(endpoint) = line.trim().strip_prefix("READY ").map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CliError::Other(format!("bench server said {line:?}")));
        };
        Ok(Self {
            child,
            endpoint,
            _stdout: reader,
        })
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hidden `bench-server` verb: an echo server announcing `READY <endpoint>`, running
/// until its stdin closes (its parent exited or dropped it). Kinds: `zmesh` (a node with
/// the echo service), `raw` (a ROUTER echoing frames), `device` (a proxy device binding its
/// frontend at BIND and its backend on a free tcp port; announces `READY <frontend>
/// <backend>`), `worker` (an echo node serving the device whose backend is BIND), `keyed` (as
/// `zmesh`, requiring the mesh key in `ZMESH_MESH_KEY`).
pub(crate) async fn serve(kind: &str, bind: &str) -> Result<(), CliError> {
    let parent_gone = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    });
    match kind {
        "device" => {
            let device = zmesh_device::Device::builder()
                .frontend(bind)
                .backend("tcp://127.0.0.1:0")
                .start()
                .await
                .map_err(|e| CliError::Other(format!("cannot start the device: {e}")))?;
            outln!("READY {} {}", device.frontend(), device.backend());
            device.run_until(async { drop(parent_gone.await) }).await;
        }
        "zmesh" | "worker" | "keyed" => {
            let mut builder = Node::builder().service(zmesh_echo::service());
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
            if worker {
                outln!("READY {bind}");
            } else {
                outln!("READY {}", node.endpoint());
            }
            let _ = parent_gone.await;
            node.shutdown(Duration::from_millis(200)).await;
        }
        _ => {
            let mut router = RouterSocket::new();
            let endpoint = router
                .bind(bind)
                .await
                .map_err(|e| CliError::Other(format!("cannot bind {bind}: {e}")))?;
            outln!("READY {endpoint}");
            let echo = async move {
                while let Ok(message) = router.recv().await {
                    if router.send(message).await.is_err() {
                        break;
                    }
                }
            };
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
            m.calls,
            m.calls_per_sec,
            m.p50_us,
            m.p90_us,
            m.p99_us,
            m.p999_us,
            m.max_us,
            ratio(m.p50_vs_raw),
            ratio(m.calls_per_sec_vs_raw),
        );
    }
    Ok(())
}

/// Draws the latency distribution of every mode (latency against percentile) as SVG.
pub(crate) fn plot(report: &BenchReport, path: &Path) -> Result<(), CliError> {
    use plotters::prelude::*;
    let fail =
        |e: &dyn std::fmt::Display| CliError::Other(format!("cannot draw {}: {e}", path.display()));
    // x: "nines" of the percentile (0 = p0, 1 = p90, 2 = p99, 3 = p99.9), y: microseconds.
    let nines = |q: f64| -(1.0 - (q / 100.0).min(0.9999)).log10();
    let latencies = || {
        report
            .modes
            .iter()
            .flat_map(|m| m.curve.iter().map(|p| p.1))
    };
    // Log scale: the tail is orders of magnitude above the median.
    let top = latencies().fold(1.0f64, f64::max) * 1.2;
    let bottom = latencies().fold(top, f64::min).max(0.1) / 1.2;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let caption = format!(
        "zmesh bench: latency by percentile ({} B, {} in flight)",
        report.payload, report.in_flight
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..4f64, (bottom..top).log_scale())
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_label_formatter(&|x| match x.round() as i64 {
            0 => "p0".into(),
            1 => "p90".into(),
            2 => "p99".into(),
            3 => "p99.9".into(),
            _ => "p99.99".into(),
        })
        .x_labels(5)
        .draw()
        .map_err(|e| fail(&e))?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (m, &color) in report.modes.iter().zip(colors.iter().cycle()) {
        let name = m.mode.name();
        let points = m.curve.iter().map(|&(q, us)| (nines(q), us));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
