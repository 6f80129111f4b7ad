//! The `zmesh` command: call a method on any zerorpc/zmesh endpoint from the shell, list and
//! ping nodes, and serve the reference services. Every verb has `--help`.

mod bench;
mod children;
mod config_file;
mod demo;
mod events_cmd;
mod http;
mod jobs_cmd;
mod json;
mod mesh_key;
mod otlp;
mod output;
mod plot;
mod proxy_cmd;
mod serve_cmd;

use crate::output::outln;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use zmesh_core::{
    CallError, CallOptions, Client, ClientConfig, Endpoint, ErrorKind, Response, reserved,
};

/// Exit status when the remote side answered `ERR` (also `stats` of a peer that is not a zmesh
/// node: it answered `NameError` to both stats methods).
const EXIT_REMOTE_ERROR: u8 = 1;
/// Exit status for local failures: unreachable endpoint, deadline, undecodable reply.
const EXIT_FAILURE: u8 = 3;
/// Exit status for usage errors (as clap's): also a mesh key that cannot be loaded. An
/// invalid endpoint is one too: every endpoint argument is parsed as an [`Endpoint`] with the
/// other arguments, before the verb starts.
const EXIT_USAGE: u8 = 2;
/// Exit status after Ctrl-C (SIGINT), as shells report a process the signal ended (128 + 2),
/// also when the verb then shut down gracefully.
const EXIT_INTERRUPTED: u8 = 130;

/// Set when [`shutdown_signal`] saw SIGINT, so `main` exits with [`EXIT_INTERRUPTED`].
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// zmesh: a peer-to-peer RPC mesh speaking the zerorpc v3 protocol.
#[derive(Debug, Parser)]
#[command(name = "zmesh", version, about, propagate_version = true)]
struct Cli {
    /// How diagnostics on stderr are written: `text` (coloured only on a terminal, and not
    /// with NO_COLOR set) or `json`, one object per line for a log collector. Which ones are
    /// written: RUST_LOG (default `warn`).
    #[arg(long, global = true, env = "ZMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The format of the diagnostics on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Diagnostics go to stderr, off unless RUST_LOG asks: stdout carries only results. Colour
/// codes only reach a terminal: a file or a log collector gets plain text. With
/// `--otlp-endpoint` (`otlp`: the verb and the URL), spans are exported too; the guard
/// returned keeps the export going until `main` ends.
fn init_logging(format: LogFormat, otlp: Option<(&str, &str)>) -> Option<otlp::Guard> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().with_filter(filter).boxed(),
        LogFormat::Text => fmt
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .with_filter(filter)
            .boxed(),
    };
    otlp::init(fmt, otlp).unwrap_or_else(|e| {
        eprintln!("zmesh: --otlp-endpoint: {e}");
        std::process::exit(EXIT_USAGE.into());
    })
}

/// The command line, with the defaults of a `--config` file for the verbs that take one;
/// exits as clap does on a usage error, and with [`EXIT_USAGE`] on a bad config file.
fn parse_command_line() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let bad_file = |e: config_file::ConfigFileError| -> ! {
        eprintln!("zmesh: {e}");
        std::process::exit(EXIT_USAGE.into());
    };
    let applied = config_file::apply(Cli::command(), &args).unwrap_or_else(|e| bad_file(e));
    let matches = match applied.command.clone().try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(e) => match applied.blame(&e) {
            Some(file_error) => bad_file(file_error),
            None => e.exit(),
        },
    };
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Call METHOD on ENDPOINT and print the result as JSON (a stream prints one JSON value
    /// per line). Each ARG is parsed as JSON; a word that is not JSON is taken as a string.
    #[command(after_help = mesh_key::KEY_HELP)]
    Call {
        /// The node's endpoint, such as tcp://127.0.0.1:4242 or ipc:///tmp/node.sock.
        endpoint: Endpoint,
        /// The method, such as echo.upper (or upper on a node exporting echo unprefixed).
        method: String,
        /// Positional arguments: JSON values, or plain words taken as strings; bytes from
        /// `@FILE`, `-` (stdin) or `base64:DATA`. A string starting with `@` or `base64:` is
        /// given as JSON ('"@home"').
        args: Vec<String>,
        /// Give up after this many seconds (the remaining time travels to zmesh servers).
        #[arg(long, default_value_t = 30.0, value_parser = positive_seconds)]
        timeout: f64,
        /// Print the result's bytes as they are, not as JSON (a bytes or string result; a
        /// stream's items one after another), e.g. `> out.bin`. Without it, bytes that are not
        /// UTF-8 print as {"base64": "..."}.
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        key: mesh_key::KeyArgs,
        #[command(flatten)]
        otlp: otlp::OtlpArgs,
    },
    /// List the methods a node offers, with their arguments and docs (from introspection).
    #[command(after_help = mesh_key::KEY_HELP)]
    List {
        /// The node's endpoint.
        endpoint: Endpoint,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        timeout: f64,
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        key: mesh_key::KeyArgs,
    },
    /// Ping a node: prints its name and the round-trip time.
    #[command(after_help = mesh_key::KEY_HELP)]
    Ping {
        /// The node's endpoint.
        endpoint: Endpoint,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        timeout: f64,
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        key: mesh_key::KeyArgs,
    },
    /// Talk to a durable job queue (a node serving `jobs`: `zmesh serve jobs --data DIR
    /// --jobs-workers ENDPOINT`): submit, status, result, cancel, list, dead, replay, purge,
    /// stats. Answers print as JSON; refusals (QueueFull, UnknownJob, ...) exit 1.
    #[command(after_help = mesh_key::KEY_HELP)]
    Jobs(jobs_cmd::JobsArgs),
    /// Show a node's per-method calls, errors and latency percentiles, and its counters
    /// (from the `_zmesh.stats` method every zmesh node answers); for a proxy device, its
    /// per-service figures and what it refused and dropped, by reason (`_zmesh.device_stats`).
    #[command(after_help = mesh_key::KEY_HELP)]
    Stats {
        /// The node's endpoint.
        endpoint: Endpoint,
        /// Also list methods that have not been called.
        #[arg(long)]
        all: bool,
        /// Print the node's answer as JSON.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
        timeout: f64,
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        key: mesh_key::KeyArgs,
    },
    /// Serve reference services (echo, kv) on a node until Ctrl-C or SIGTERM, then shut
    /// down gracefully: on bound endpoints, as a worker of a proxy device, or in a mesh.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Measure call latency and throughput per mode beside a raw zeromq DEALER/ROUTER echo,
    /// in one run, with each server in its own process; the modes take turns in 10 blocks
    /// each. Prints p50/p90/p99/p99.9/max and calls/s per mode with ratios to the raw
    /// baseline.
    Bench(bench::BenchArgs),
    /// Print a publisher's events as JSON lines (with gap reports) until Ctrl-C or SIGTERM,
    /// --count events or --timeout.
    Sub(events_cmd::SubArgs),
    /// Publish one event (a JSON payload) through a proxy's events-in, once a subscriber of
    /// its topic is there.
    Pub(events_cmd::PubArgs),
    /// Run the proxy device until Ctrl-C or SIGTERM: one stable address (frontend) in front
    /// of a pool of worker nodes (backend), optionally forwarding events.
    Proxy(Box<proxy_cmd::ProxyArgs>),
    /// The tour: start a small mesh on loopback (echo and kv nodes found by discovery, a
    /// proxy device with workers, a publisher), call it directly, by service name and
    /// through the device, show events, kill a node to show failover, print a summary,
    /// and stop every process it started.
    Demo(demo::DemoArgs),
    /// Write a fresh random mesh key to a file (mode 0600) or stdout, for --mesh-key-file.
    Keygen(mesh_key::KeygenArgs),
    /// Internal: a bench server (started by `zmesh bench`).
    #[command(hide = true)]
    BenchServer {
        #[arg(long, value_parser = ["zmesh", "raw", "device", "worker", "keyed", "spin"])]
        kind: String,
        /// Where to bind (for `worker`: the device backend to connect to).
        #[arg(long)]
        bind: Endpoint,
        #[arg(long, value_enum, default_value = "current-thread")]
        runtime: bench::Flavour,
    },
}

/// Default of `--connect-timeout`, in seconds: short, because a connection on a working
/// network takes milliseconds, and what is unreachable should be said soon.
pub(crate) const DEFAULT_CONNECT_TIMEOUT_S: f64 = 5.0;

/// The connect timeout of the verbs that connect to an endpoint.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnectArgs {
    /// Give up connecting after this many seconds (apart from --timeout, which bounds the
    /// whole call). Nothing listening at ENDPOINT is reported as refused after about a second.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_CONNECT_TIMEOUT_S, value_parser = positive_seconds)]
    pub(crate) connect_timeout: f64,
}

impl ConnectArgs {
    pub(crate) fn timeout(&self) -> Duration {
        seconds(self.connect_timeout)
    }
}

/// Why a verb failed, and so the exit status.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{name}: {message}{}", traceback.as_deref().map(|t| format!("\n{t}")).unwrap_or_default())]
    Remote {
        name: String,
        message: String,
        traceback: Option<String>,
    },
    #[error("{0}")]
    Call(CallError),
    #[error("{0}")]
    Other(String),
    /// Bad input found after argument parsing (such as an unreadable mesh key file): exit 2,
    /// as clap's usage errors.
    #[error("{0}")]
    Usage(String),
    /// The peer answered, but is not what the verb needs (`zmesh stats` of a stock zerorpc
    /// server): exit 1, as for an answer that is an error.
    #[error("{0}")]
    NotZmesh(String),
    /// A result could not be written (or nobody reads them any more).
    #[error(transparent)]
    Output(#[from] output::OutputError),
}

impl From<CallError> for CliError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Remote(remote) => Self::Remote {
                name: remote.name,
                message: remote.message,
                traceback: remote.traceback,
            },
            // Said as what it is (a server that never answered, zerorpc-node's way with an
            // unknown method), not as a lost peer.
            other if other.is_unanswered() => {
                let said = std::error::Error::source(&other)
                    .map_or_else(|| other.to_string(), ToString::to_string);
                Self::Other(said)
            }
            other => Self::Call(other),
        }
    }
}

use zmesh_bench::args::positive_seconds;

/// mimalloc rather than glibc's malloc: a job queue's writer thread frees what the runtime's
/// threads allocated, and glibc serialises such frees on its arenas' locks; mimalloc took
/// a queue at 64 submitters from about 36,000 to 46,000 jobs/s here (docs/PERFORMANCE.md).
/// Libraries leave the choice to their binary; this is the `zmesh` binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    children::die_with_parent_if_asked();
    let cli = parse_command_line();
    let otlp = match &cli.command {
        Command::Call { otlp, .. } => otlp.endpoint().map(|url| ("call", url)),
        Command::Serve(args) => args.otlp.endpoint().map(|url| ("serve", url)),
        Command::Proxy(args) => args.otlp.endpoint().map(|url| ("proxy", url)),
        _ => None,
    };
    // Dropped when `main` returns, after the runtime: the last spans are sent then.
    let _exporting = init_logging(cli.log_format, otlp);
    let flavour = match &cli.command {
        Command::Bench(bench::BenchArgs { runtime, .. }) | Command::BenchServer { runtime, .. } => {
            *runtime
        }
        _ => bench::Flavour::CurrentThread,
    };
    let runtime = match flavour.runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("zmesh: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(run(cli.command));
    if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        // Whatever the verb made of it (a graceful stop, or "interrupted"), the user asked.
        return ExitCode::from(EXIT_INTERRUPTED);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Like standard tools: whoever read the output has what they wanted.
        Err(CliError::Output(output::OutputError::Closed)) => ExitCode::SUCCESS,
        Err(error @ CliError::Remote { .. }) => {
            eprintln!("{error}");
            ExitCode::from(EXIT_REMOTE_ERROR)
        }
        Err(error @ CliError::NotZmesh(_)) => {
            eprintln!("zmesh: {error}");
            ExitCode::from(EXIT_REMOTE_ERROR)
        }
        Err(error @ CliError::Usage(_)) => {
            eprintln!("zmesh: {error}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(error) => {
            eprintln!("zmesh: {error}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Call {
            endpoint,
            method,
            args,
            timeout,
            raw,
            connect,
            key,
            otlp: _,
        } => {
            call(
                &client(&endpoint, seconds(timeout), &connect, &key)?,
                &method,
                &args,
                seconds(timeout),
                raw,
            )
            .await
        }
        Command::List {
            endpoint,
            timeout,
            connect,
            key,
        } => list(&client(&endpoint, seconds(timeout), &connect, &key)?).await,
        Command::Ping {
            endpoint,
            timeout,
            connect,
            key,
        } => ping(&client(&endpoint, seconds(timeout), &connect, &key)?).await,
        Command::Stats {
            endpoint,
            all,
            json,
            timeout,
            connect,
            key,
        } => {
            let client = client(&endpoint, seconds(timeout), &connect, &key)?;
            stats(&client, all, json).await
        }
        Command::Jobs(args) => {
            let (endpoint, method, call_args, extra) = args.verb.call();
            let timeout = seconds(args.timeout + extra);
            call(
                &client(endpoint, timeout, &args.connect, &args.key)?,
                method,
                &call_args,
                timeout,
                false,
            )
            .await
        }
        Command::Serve(args) => {
            raise_descriptor_limit();
            serve_cmd::run(*args, shutdown_signal()).await
        }
        Command::Bench(args) => bench::command(args).await,
        Command::BenchServer { kind, bind, .. } => bench::serve(&kind, &bind.to_string()).await,
        Command::Sub(args) => events_cmd::sub(args, shutdown_signal()).await,
        Command::Pub(args) => events_cmd::publish(args).await,
        Command::Proxy(args) => {
            raise_descriptor_limit();
            proxy_cmd::run(*args, shutdown_signal()).await
        }
        Command::Demo(args) => demo::run(args, shutdown_signal()).await,
        Command::Keygen(args) => mesh_key::keygen(&args),
    }
}

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn client(
    endpoint: &Endpoint,
    timeout: Duration,
    connect: &ConnectArgs,
    key: &mesh_key::KeyArgs,
) -> Result<Client, CliError> {
    // The call's deadline still bounds connecting when it is the shorter of the two.
    let mut config = ClientConfig::default()
        .default_timeout(timeout)
        .connect_timeout(connect.timeout());
    if let Some(key) = key.load()? {
        config = config.mesh_key(key);
    }
    Ok(Client::with_config(endpoint, config))
}

async fn call(
    client: &Client,
    method: &str,
    args: &[String],
    timeout: Duration,
    raw: bool,
) -> Result<(), CliError> {
    let args = json::read_args(
        args,
        |path| std::fs::read(path),
        || {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::io::stdin().lock().read_to_end(&mut bytes)?;
            Ok(bytes)
        },
    )
    .map_err(CliError::Usage)?;
    let print = |value: &rmpv::Value| -> Result<(), CliError> {
        if raw {
            let bytes = json::raw_bytes(value).map_err(CliError::Other)?;
            output::write_bytes(bytes)?;
        } else {
            outln!("{}", json::to_json(value));
        }
        Ok(())
    };
    let encoded = rmp_serde::to_vec(&args)
        .map_err(|e| CliError::Other(format!("cannot encode the arguments: {e}")))?;
    match client
        .request(method, encoded.into(), CallOptions::timeout(timeout))
        .await?
    {
        Response::Value(bytes) => {
            let value = rmpv::decode::read_value(&mut &bytes[..])
                .map_err(|e| CliError::Other(format!("undecodable result: {e}")))?;
            print(&value)?;
        }
        Response::Stream(mut items) => {
            while let Some(item) = items.next().await {
                print(&item?)?;
            }
        }
    }
    Ok(())
}

async fn list(client: &Client) -> Result<(), CliError> {
    let mut lines = match client
        .call::<rmpv::Value>(reserved::ZERORPC_INSPECT, ())
        .await
    {
        Ok(inspect) => inspect_lines(&inspect)?,
        // Stock zerorpc 0.6.3 on Python 3.11+ fails its own _zerorpc_inspect (it calls the
        // removed inspect.getargspec); _zerorpc_list and _zerorpc_help still work. A node
        // that refused us (mesh key) would refuse those too.
        Err(CallError::Remote(remote))
            if !matches!(
                remote.name.parse(),
                Ok(ErrorKind::Unauthenticated | ErrorKind::Replayed)
            ) =>
        {
            tracing::debug!(error = %remote, "_zerorpc_inspect failed; using _zerorpc_list");
            list_and_help_lines(client).await?
        }
        Err(e) => return Err(e.into()),
    };
    lines.sort();
    for line in lines {
        outln!("{line}");
    }
    Ok(())
}

/// One line per method from an `_zerorpc_inspect` answer: `name(args)  first doc line`.
fn inspect_lines(inspect: &rmpv::Value) -> Result<Vec<String>, CliError> {
    let methods = map_get(inspect, "methods")
        .and_then(rmpv::Value::as_map)
        .ok_or_else(|| CliError::Other("_zerorpc_inspect answered without methods".into()))?;
    Ok(methods
        .iter()
        .map(|(name, info)| {
            let args = map_get(info, "args")
                .and_then(rmpv::Value::as_array)
                .map(|args| {
                    args.iter()
                        .filter_map(|a| map_get(a, "name").and_then(rmpv::Value::as_str))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_else(|| "...".to_owned());
            let doc = map_get(info, "doc").and_then(rmpv::Value::as_str);
            method_line(&text(name), &args, doc)
        })
        .collect())
}

/// The listing from `_zerorpc_list` and one `_zerorpc_help` per method (no argument names).
async fn list_and_help_lines(client: &Client) -> Result<Vec<String>, CliError> {
    let names: Vec<rmpv::Value> = client.call(reserved::ZERORPC_LIST, ()).await?;
    let mut lines = Vec::with_capacity(names.len());
    for name in names.iter().map(text) {
        let doc: Option<String> = client.call(reserved::ZERORPC_HELP, (&name,)).await?;
        lines.push(method_line(&name, "...", doc.as_deref()));
    }
    Ok(lines)
}

fn method_line(name: &str, args: &str, doc: Option<&str>) -> String {
    let doc = doc
        .and_then(|d| d.lines().map(str::trim).find(|l| !l.is_empty()))
        .map(|d| format!("  {d}"))
        .unwrap_or_default();
    format!("{name}({args}){doc}")
}

/// A name as text: strings and UTF-8 bin as they are, anything else as JSON.
fn text(value: &rmpv::Value) -> String {
    let json = json::to_json(value);
    json.as_str()
        .map_or_else(|| json.to_string(), str::to_owned)
}

/// The figures of one stats row, in `columns` order (0 where the report has none).
fn columns_of(figures: &rmpv::Value, columns: &[&str]) -> Vec<u64> {
    columns
        .iter()
        .map(|c| {
            map_get(figures, c)
                .and_then(rmpv::Value::as_u64)
                .unwrap_or(0)
        })
        .collect()
}

fn map_get<'a>(value: &'a rmpv::Value, key: &str) -> Option<&'a rmpv::Value> {
    value
        .as_map()?
        .iter()
        .find(|(k, _)| match k {
            rmpv::Value::String(s) => s.as_str() == Some(key),
            rmpv::Value::Binary(b) => b == key.as_bytes(),
            _ => false,
        })
        .map(|(_, v)| v)
}

async fn ping(client: &Client) -> Result<(), CliError> {
    // The first call pays for the connection; the second is the round trip.
    let _: rmpv::Value = client.call(reserved::ZERORPC_PING, ()).await?;
    let started = Instant::now();
    let answer: rmpv::Value = client.call(reserved::ZERORPC_PING, ()).await?;
    let rtt = started.elapsed();
    // zerorpc answers ["pong", name].
    let name = answer
        .as_array()
        .and_then(|a| a.get(1))
        .map(json::to_json)
        .unwrap_or(serde_json::Value::Null);
    outln!(
        "pong from {} in {:.1} us",
        name.as_str()
            .map_or_else(|| name.to_string(), str::to_owned),
        rtt.as_secs_f64() * 1e6
    );
    Ok(())
}

async fn stats(client: &Client, all: bool, as_json: bool) -> Result<(), CliError> {
    let no_such_method =
        |e: &CallError| e.remote().and_then(|r| r.kind()) == Some(ErrorKind::NameError);
    let report: rmpv::Value = match client.call(reserved::STATS, ()).await {
        Ok(report) => report,
        // A proxy device answers its own figures instead.
        Err(e) if no_such_method(&e) => {
            return match client.call::<rmpv::Value>(reserved::DEVICE_STATS, ()).await {
                Ok(mut report) => {
                    let jobs = match map_get(&report, "services") {
                        Some(services) if map_get(services, zmesh_jobs::SERVICE).is_some() => {
                            with_queue(client, &mut report).await?
                        }
                        _ => None,
                    };
                    device_stats(&report, all, as_json)?;
                    print_queue(jobs.as_ref(), as_json)
                }
                // Neither: a stock zerorpc server (or another implementation) answered.
                Err(e) if no_such_method(&e) => Err(CliError::NotZmesh(format!(
                    "{} is not a zmesh node or device: it answers neither {} nor {} \
                     (a stock zerorpc server?); `zmesh list` and `zmesh ping` work with any \
                     zerorpc server",
                    client.endpoint(),
                    reserved::STATS,
                    reserved::DEVICE_STATS
                ))),
                Err(e) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let mut report = report;
    let jobs = match map_get(&report, "methods") {
        Some(methods) if map_get(methods, JOBS_STATS).is_some() => {
            with_queue(client, &mut report).await?
        }
        _ => None,
    };
    if as_json {
        outln!("{}", json::to_json(&report));
        return Ok(());
    }
    node_stats(&report, all)?;
    print_queue(jobs.as_ref(), as_json)
}

/// The queue's figures method, which a node or device serving `jobs` answers.
const JOBS_STATS: &str = "jobs.stats";

/// Asks the queue for its figures (`jobs.stats`, their one source) and adds them to
/// `report` under `jobs`; answers them too.
async fn with_queue(
    client: &Client,
    report: &mut rmpv::Value,
) -> Result<Option<rmpv::Value>, CliError> {
    let figures: rmpv::Value = client.call(JOBS_STATS, ()).await?;
    if let rmpv::Value::Map(entries) = report {
        entries.push((zmesh_jobs::SERVICE.into(), figures.clone()));
    }
    Ok(Some(figures))
}

/// Prints a queue's figures (in JSON mode they went out inside the report).
fn print_queue(figures: Option<&rmpv::Value>, as_json: bool) -> Result<(), CliError> {
    let Some(figures) = figures.filter(|_| !as_json) else {
        return Ok(());
    };
    for line in queue_lines(figures) {
        outln!("{line}");
    }
    Ok(())
}

/// A queue's figures as text: its totals and durability, jobs per state, attempts, and
/// what it refused by reason (only the reasons it has met).
fn queue_lines(figures: &rmpv::Value) -> Vec<String> {
    let number = |key: &str| {
        map_get(figures, key)
            .and_then(rmpv::Value::as_u64)
            .unwrap_or(0)
    };
    let pairs = |key: &str, nonzero: bool| -> Vec<String> {
        map_get(figures, key)
            .and_then(rmpv::Value::as_map)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|(_, v)| !nonzero || v.as_u64().is_some_and(|n| n > 0))
                    .map(|(k, v)| format!("{} {}", text(k), text(v)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let durability = map_get(figures, "durability").map(text).unwrap_or_default();
    let mut lines = vec![
        format!(
            "jobs: {} held ({} bytes), durability {durability}; {} attempts started, {} dead \
             since the queue opened",
            number("jobs"),
            number("bytes"),
            number("attempts_started"),
            number("dead_total"),
        ),
        format!("jobs by state: {}", pairs("depth", false).join(", ")),
    ];
    let refused = pairs("refused", true);
    if !refused.is_empty() {
        lines.push(format!("jobs refused: {}", refused.join(", ")));
    }
    lines
}

/// `zmesh stats` for a node: its counters and one line per method.
fn node_stats(report: &rmpv::Value, all: bool) -> Result<(), CliError> {
    let node = map_get(report, "node").map(text).unwrap_or_default();
    let uptime = map_get(report, "uptime_s")
        .and_then(rmpv::Value::as_f64)
        .unwrap_or_default();
    let counters: Vec<String> = map_get(report, "counters")
        .and_then(rmpv::Value::as_map)
        .map(|entries| {
            entries
                .iter()
                .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
                .map(|(k, v)| format!("{} {}", text(k), text(v)))
                .collect()
        })
        .unwrap_or_default();
    outln!(
        "node {node}, up {uptime:.1} s; {}",
        if counters.is_empty() {
            "no calls yet".to_owned()
        } else {
            counters.join(", ")
        }
    );
    let columns = [
        "calls", "errors", "aborted", "p50_us", "p90_us", "p99_us", "p999_us", "max_us",
    ];
    outln!(
        "{:<28} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "method",
        "calls",
        "errors",
        "aborted",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us"
    );
    let methods = map_get(report, "methods")
        .and_then(rmpv::Value::as_map)
        .ok_or_else(|| CliError::Other(format!("{} answered without methods", reserved::STATS)))?;
    for (name, figures) in methods {
        let values = columns_of(figures, &columns);
        if !all && values[..3].iter().all(|&n| n == 0) {
            continue;
        }
        outln!(
            "{:<28} {:>9} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            text(name),
            values[0],
            values[1],
            values[2],
            values[3],
            values[4],
            values[5],
            values[6],
            values[7]
        );
    }
    Ok(())
}

/// Raises the soft descriptor limit to the hard one and says what it is: a server started
/// by systemd gets a soft limit of 1,024, which a node's connections (and an attacker's idle
/// ones) use up fast. The node's per-endpoint connection cap is fitted to the result.
fn raise_descriptor_limit() {
    match zmesh_core::zmtp::raise_nofile_limit() {
        Ok(limit) => eprintln!("zmesh: descriptor limit (RLIMIT_NOFILE) {limit}"),
        Err(e) => eprintln!("zmesh: cannot raise the descriptor limit: {e}"),
    }
}

/// `zmesh stats` for a proxy device: its totals and non-zero counters, what it refused and
/// dropped by reason, and one line per service.
fn device_stats(report: &rmpv::Value, all: bool, as_json: bool) -> Result<(), CliError> {
    if as_json {
        outln!("{}", json::to_json(report));
        return Ok(());
    }
    let number = |key: &str| {
        map_get(report, key)
            .and_then(rmpv::Value::as_u64)
            .unwrap_or(0)
    };
    outln!(
        "device: {} workers, {} open calls, {} methods routed, {} request bytes held",
        number("workers"),
        number("open_calls"),
        number("methods"),
        number("request_bytes")
    );
    let nonzero = |value: Option<&rmpv::Value>| -> Vec<String> {
        value
            .and_then(rmpv::Value::as_map)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|(_, v)| v.as_u64().is_some_and(|n| n > 0))
                    .map(|(k, v)| format!("{} {}", text(k), text(v)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let counters: Vec<String> = report
        .as_map()
        .map(|entries| {
            entries
                .iter()
                .filter(|(k, v)| {
                    let key = text(k);
                    !matches!(
                        key.as_str(),
                        "workers" | "open_calls" | "methods" | "request_bytes"
                    ) && v.as_u64().is_some_and(|n| n > 0)
                })
                .map(|(k, v)| format!("{} {}", text(k), text(v)))
                .collect()
        })
        .unwrap_or_default();
    for (label, items) in [
        ("counters", counters),
        ("refused", nonzero(map_get(report, "refused"))),
        ("dropped", nonzero(map_get(report, "dropped"))),
    ] {
        if !items.is_empty() {
            outln!("{label}: {}", items.join(", "));
        }
    }
    let columns = [
        "workers",
        "queued",
        "in_flight",
        "dispatched",
        "completed",
        "failed",
        "overloaded",
        "redispatched",
    ];
    outln!(
        "{:<28} {:>7} {:>7} {:>9} {:>10} {:>10} {:>7} {:>10} {:>12}",
        "service",
        "workers",
        "queued",
        "in flight",
        "dispatched",
        "completed",
        "failed",
        "overloaded",
        "redispatched"
    );
    let services = map_get(report, "services")
        .and_then(rmpv::Value::as_map)
        .ok_or_else(|| {
            CliError::Other(format!(
                "{} answered without services",
                reserved::DEVICE_STATS
            ))
        })?;
    for (name, figures) in services {
        let v = columns_of(figures, &columns);
        if !all && v.iter().all(|&n| n == 0) {
            continue;
        }
        outln!(
            "{:<28} {:>7} {:>7} {:>9} {:>10} {:>10} {:>7} {:>10} {:>12}",
            text(name),
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            v[6],
            v[7]
        );
    }
    Ok(())
}

/// Completes on Ctrl-C (noting it for the exit status) or SIGTERM. The handlers are installed by this call, not when the
/// future is first polled: a signal sent right after a verb announced itself (a parent
/// reading the endpoint, then stopping the child) must not find the default action, which
/// kills the process without a graceful shutdown.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        // A handler that could not be installed leaves that signal's default action.
        let received = |handler: std::io::Result<tokio::signal::unix::Signal>| async move {
            match handler {
                Ok(mut handler) => {
                    handler.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(interrupt) => {
                INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            () = received(terminate) => {}
        }
    }
}
