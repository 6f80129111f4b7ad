//! `zmesh bench`: measures call latency and throughput of each transport mode against a raw
//! `zeromq` DEALER/ROUTER baseline in the same run, with the servers in child processes
//! (this binary's hidden `bench-server` verb) so client and server never share a runtime.
//! The modes take turns in [`ROUNDS`] blocks each, so a change in the machine's state
//! during the run weighs on every mode alike. The machinery (server processes, the
//! alternating blocks, timing, percentiles, the JSON figures) is `zmesh-bench`'s, shared
//! with the criterion benches and the peer comparison; this module holds what the modes are.
//! The `device` mode puts a proxy device and an echo worker in two more child processes;
//! the `keyed` mode calls a node that requires a mesh key (fresh per run), so the key's cost
//! shows as a ratio to raw and tcp in the same run.

use crate::output::outln;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

/// The figures of one mode.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModeReport {
    pub(crate) mode: Mode,
    #[serde(flatten)]
    pub(crate) figures: Figures,
    /// Relative to the raw baseline (absent without a raw mode).
    #[serde(flatten)]
    pub(crate) vs_raw: VsBaseline,
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
            latencies: Latencies::new(),
        });
    }
    let bar = progress_bar(progress, options);
    let mut schedule = Schedule::new(
        runs.len(),
        options.count,
        ROUNDS,
        options.duration,
        Order::Fixed,
    );
    while let Some(turn) = schedule.next_turn() {
        let run = &mut runs[turn.mode];
        let block = Block::of(&turn, options.in_flight);
        let measured = run.caller.measure(&block, &mut run.latencies, &bar).await?;
        schedule.finish(&turn, measured.calls, measured.elapsed);
    }
    bar.finish_and_clear();
    let mut reports: Vec<ModeReport> = runs
        .iter()
        .enumerate()
        .map(|(i, run)| report(run.mode, &run.latencies, schedule.measured(i)))
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
        modes: reports,
    })
}

/// One mode during a run: its servers, its connected caller and what it measured so far.
struct ModeRun {
    mode: Mode,
    /// Kept alive (and killed on drop) for the whole run.
    _servers: Vec<ServerChild>,
    caller: Caller,
    latencies: Latencies,
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
            Self::Zmesh { client, value } => {
                let call = || zmesh_call(client, value);
                drive::concurrent(call, block, latencies, tick).await
            }
        }
    }
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

fn report(mode: Mode, latencies: &Latencies, elapsed: Duration) -> ModeReport {
    // Percentiles on a "nines" scale: dense where the tail is.
    let curve = (0..=40)
        .map(|i| 100.0 * (1.0 - 10f64.powf(-f64::from(i) / 10.0)))
        .chain([99.95, 99.99, 100.0])
        .map(|q| (q, zmesh_bench::micros(latencies.at_percentile(q))))
        .collect();
    ModeReport {
        mode,
        figures: Figures::new(latencies, elapsed),
        vs_raw: VsBaseline::default(),
        curve,
    }
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T, CliError> {
    tokio::time::timeout(CALL_LIMIT, future)
        .await
        .map_err(|_| CliError::Other(format!("{what} took longer than {CALL_LIMIT:?}")))
}

/// One zmesh call of `echo.echo`.
async fn zmesh_call(client: &Client, value: &rmpv::Value) -> Result<(), CliError> {
    let reply: rmpv::Value = within("a zmesh call", client.call("echo.echo", (value,)))
        .await?
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
        Mode::Raw | Mode::Tcp | Mode::Device | Mode::Keyed => "tcp://127.0.0.1:0".to_owned(),
        Mode::Ipc => format!("ipc://{}", dir.join("bench.sock").display()),
        Mode::RawIpc => format!("ipc://{}", dir.join("raw.sock").display()),
    };
    match mode {
        Mode::Raw | Mode::RawIpc => {
            let server = spawn_server("raw", &bind, flavour, None)?;
            let endpoint = server.endpoint().to_owned();
            Ok((vec![server], endpoint))
        }
        Mode::Tcp | Mode::Ipc => {
            let server = spawn_server("zmesh", &bind, flavour, None)?;
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
/// `zmesh`, requiring the mesh key in `ZMESH_MESH_KEY`).
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
