//! zmesh against the raw `zeromq` crate, measured in one run so the ratios mean something.
//!
//! - `latency_<transport>_<payload>` groups (`tcp`/`ipc` x 64 B/4 KiB), each with two benches:
//!   `zmesh` (a sequential `echo.echo` call) and `raw` (a DEALER -> ROUTER echo of the same
//!   payload bytes, sent as `["", payload]`).
//! - `pipelined_tcp_64B`: batches of [`PIPELINE_BATCH`] calls with [`PIPELINE_WINDOW`] in flight,
//!   `zmesh` (concurrent `client.call`s over one connection) against `raw` (a DEALER keeping
//!   the same window of requests ahead of its replies), plus `codec_floor`: the same raw
//!   DEALER/ROUTER pair doing only the per-call work the zerorpc wire format itself requires
//!   (encode the request event with a fresh id and serialized args, decode it and its args,
//!   encode the `OK` reply with `response_to`, decode it and the result) and nothing a
//!   framework adds (no correlation map, deadline, tasks or heartbeats). It measures how much
//!   of zmesh's cost is the protocol's encoding rather than zmesh.
//! - `latency_tcp_64B_mt`: the `latency_tcp_64B` benches with client and servers each on a
//!   tokio multi-thread runtime of [`MULTI_THREAD_WORKERS`] workers (the runtime flavour comparison).
//!
//! Runtimes: the client side runs on one tokio `current_thread` runtime (criterion's
//! `to_async`); every server runs on its own OS thread with its own `current_thread` runtime,
//! so client and server never share a thread. Raw and zmesh use the same arrangement. In
//! benchmark mode the client thread is pinned to CPU 0 and the server threads to CPU 1
//! (`ZMESH_BENCH_PIN=split`, the default; `same` puts all on CPU 0, `off` disables it):
//! unpinned, thread placement on a small VM swings results by up to 4x (see [`Placement`]).
//! `ZMESH_BENCH_PIN=process` runs every server in a child process (this binary started
//! again) with nothing pinned: the layout the reference figures are measured in, and the
//! one `zmesh bench` uses (docs/PERFORMANCE.md, "Pinning and process layout").
//!
//! The multi-thread group is the exception: the client and each server get their own
//! multi-thread runtime, the timed loops run in a task spawned on a worker (not in the
//! `block_on` future), and every thread of those runtimes is unpinned (reset to the CPUs the
//! process started with), as an application on `#[tokio::main]` would run. Its
//! multi_thread/current_thread ratio therefore compares the default deployment of each
//! flavour (pinned current_thread vs unpinned multi_thread); `ZMESH_BENCH_PIN=off` compares
//! the flavours with nothing pinned.
//!
//! After each group, if criterion measured it in this run, an interleaved check runs on the
//! same connections: [`PAIRED_ROUNDS`] rounds alternating a block of zmesh calls and a block
//! of raw round trips (pipelined: one batch each), timing every call, so both sides share
//! the machine state; it reports true per-call p50/p99 and is robust to the large
//! run-to-run swings of a small VM (scheduler placement of the two threads).
//!
//! After criterion finishes, a ratio table is printed from criterion's own output files
//! (`<criterion dir>/<group>/<bench>/new/estimates.json`, median point estimate). It is skipped
//! when those files are missing or older than this run (for example under
//! `cargo test --benches`, where every bench runs once and nothing is written).
//!
//! ```text
//! cargo bench --bench rpc
//! cargo bench --bench rpc -- latency_tcp      # a subset (the table shows what ran)
//! ```

use zmesh_bench::affinity::{pin_current_thread, process_cpus, unpin_current_thread};
use zmesh_bench::thread::{Ready, Stop};
use zmesh_bench::{
    Flavour, Latencies, MULTI_THREAD_WORKERS, Order, Schedule, ServerChild, ServerThread, drive,
    micros, raw,
};

use std::future::Future;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use futures::StreamExt;
use rmpv::Value;
use tokio::runtime::Runtime;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::{Client, Node, wire};

/// Payload sizes of the latency groups: (label, bytes).
const PAYLOADS: [(&str, usize); 2] = [("64B", 64), ("4KiB", 4096)];
/// Calls in flight in the pipelined group.
const PIPELINE_WINDOW: usize = 128;
/// Calls per iteration of the pipelined group.
const PIPELINE_BATCH: usize = 1024;
/// Payload of the pipelined group.
const PIPELINE_PAYLOAD: usize = 64;
/// Upper bound on one timed batch (criterion's batches last well under a second); a peer
/// that stops answering fails the bench instead of hanging it.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound on starting a server or connecting to it.
const SETUP_DEADLINE: Duration = Duration::from_secs(10);
/// The zmesh method under test.
const ECHO: &str = "echo.echo";

/// Rounds of the interleaved check; each round runs one block of zmesh and one of raw, in
/// alternating order, so both sides see the same machine state.
const PAIRED_ROUNDS: u64 = 30;
/// Sequential calls per side and round in the interleaved latency check.
const PAIRED_BLOCK: u64 = 300;
/// Upper bound on one whole interleaved check (seconds at most when the servers answer).
const CHECK_DEADLINE: Duration = Duration::from_secs(300);

/// Transport and payload of the flavour group: the `latency_tcp_64B` case.
const MT_CASE: (&str, &str, usize) = ("tcp", "64B", 64);

/// The median latency a zmesh call may cost, relative to a raw round trip.
const LATENCY_TARGET: f64 = 1.25;
/// The pipelined throughput zmesh must reach, relative to raw.
const THROUGHPUT_TARGET: f64 = 0.7;

fn main() {
    // `ZMESH_BENCH_PIN=process`: this binary, started again by the bench, as one server.
    if let Ok(kind) = std::env::var(SERVE_ENV) {
        serve_as_child(&kind);
        return;
    }
    // Read before anything is pinned: the CPUs the multi-thread group's threads return to.
    process_cpus();
    let placement = Placement::get();
    let started = SystemTime::now();
    let wall = Instant::now();
    let mut criterion = Criterion::default()
        // No HTML plots (criterion is built without plotters): its terminal report stays.
        .without_plots()
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50)
        .configure_from_args();

    placement.pin_client();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build the client runtime");
    let ipc_dir = tempfile::Builder::new()
        .prefix("zmesh-bench")
        .tempdir()
        .expect("cannot create a temporary directory for ipc sockets");

    let mut cases = Vec::new();
    let mut paired = Vec::new();
    for transport in ["tcp", "ipc"] {
        for (label, size) in PAYLOADS {
            let (zmesh_bind, raw_bind) = bind_endpoints(transport, ipc_dir.path(), label);
            let group = format!("latency_{transport}_{label}");
            let label = format!("{transport}/{label}");
            let endpoints = (zmesh_bind.as_str(), raw_bind.as_str());
            paired.extend(bench_latency(
                &mut criterion,
                &client_rt,
                Flavour::CurrentThread,
                (&group, &label),
                size,
                endpoints,
                started,
            ));
            cases.push(Case::Latency { label, group });
        }
    }
    let group = format!("pipelined_tcp_{PIPELINE_PAYLOAD}B");
    let label = format!("tcp/{PIPELINE_PAYLOAD}B x{PIPELINE_WINDOW} in flight");
    paired.extend(bench_pipelined(
        &mut criterion,
        &client_rt,
        (&group, &label),
        started,
    ));
    cases.push(Case::Pipelined { label, group });

    // Runtime flavour: the tcp/64B latency case again, everything on multi-thread runtimes.
    let (transport, payload, size) = MT_CASE;
    let mt_rt = multi_thread_runtime("zmesh-bench-client");
    let (zmesh_bind, raw_bind) = bind_endpoints(transport, ipc_dir.path(), payload);
    let current = format!("latency_{transport}_{payload}");
    let group = format!("{current}_mt");
    let base = format!("{transport}/{payload}");
    let label = format!("{base} multi_thread({MULTI_THREAD_WORKERS})");
    paired.extend(bench_latency(
        &mut criterion,
        &mt_rt,
        Flavour::MultiThread,
        (&group, &label),
        size,
        (&zmesh_bind, &raw_bind),
        started,
    ));
    cases.push(Case::Latency {
        label,
        group: group.clone(),
    });
    cases.push(Case::Flavour {
        label: base,
        multi: group,
        current,
    });

    criterion.final_summary();
    drop(mt_rt);
    drop(client_rt);
    drop(ipc_dir);
    print_ratios(&cases, started);
    print_paired(&paired);
    println!(
        "bench rpc: {}{} (ZMESH_BENCH_PIN=split|same|off|process); total wall time {:.1} s",
        placement.describe(),
        if matches!(placement, Placement::Off | Placement::Process) {
            ""
        } else {
            " (multi_thread group unpinned)"
        },
        wall.elapsed().as_secs_f64()
    );
}

/// Endpoints for the zmesh node and the raw ROUTER of one latency group.
fn bind_endpoints(transport: &str, ipc_dir: &Path, label: &str) -> (String, String) {
    match transport {
        "ipc" => {
            let path = |who: &str| format!("ipc://{}/{who}-{label}.sock", ipc_dir.display());
            (path("zmesh"), path("raw"))
        }
        _ => (
            "tcp://127.0.0.1:0".to_owned(),
            "tcp://127.0.0.1:0".to_owned(),
        ),
    }
}

/// One latency group: a sequential zmesh call against a raw DEALER/ROUTER round trip; then,
/// if criterion measured both benches in this run, the interleaved check.
///
/// `flavour` is that of `rt` and of the two servers it starts.
fn bench_latency(
    criterion: &mut Criterion,
    rt: &Runtime,
    flavour: Flavour,
    (group_name, label): (&str, &str),
    size: usize,
    (zmesh_bind, raw_bind): (&str, &str),
    since: SystemTime,
) -> Option<Paired> {
    let zmesh_server = Server::zmesh(zmesh_bind, flavour);
    let raw_server = Server::raw(raw_bind, flavour);
    let value = Value::Binary(vec![0u8; size]);
    let bytes = Bytes::from(vec![0u8; size]);
    let client = rt.block_on(connect_zmesh(zmesh_server.endpoint(), &value));
    let dealer = Arc::new(tokio::sync::Mutex::new(
        rt.block_on(connect_raw(raw_server.endpoint(), &bytes)),
    ));

    let mut group = criterion.benchmark_group(group_name);
    group.throughput(Throughput::Bytes(size as u64));
    group.bench_function("zmesh", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let client = client.clone();
            let value = value.clone();
            flavour.run(bounded(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(zmesh_echo(&client, &value).await);
                }
                start.elapsed()
            }))
        });
    });
    group.bench_function("raw", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let dealer = dealer.clone();
            let bytes = bytes.clone();
            flavour.run(bounded(async move {
                // Locked once per batch, outside the timed region.
                let mut dealer = dealer.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(raw_echo(&mut dealer, &bytes).await);
                }
                start.elapsed()
            }))
        });
    });
    group.finish();

    let paired =
        measured_in_this_run(group_name, since).then(|| match flavour {
            Flavour::CurrentThread => {
                rt.block_on(paired_latency(label, &client, &dealer, &value, &bytes))
            }
            Flavour::MultiThread => {
                let (label, client, dealer) = (label.to_owned(), client.clone(), dealer.clone());
                let (value, bytes) = (value.clone(), bytes.clone());
                rt.block_on(flavour.run(async move {
                    paired_latency(&label, &client, &dealer, &value, &bytes).await
                }))
            }
        });
    close_clients(rt, client, dealer);
    drop(zmesh_server);
    drop(raw_server);
    paired
}

/// The pipelined group: [`PIPELINE_WINDOW`] calls in flight over tcp; then, if criterion
/// measured both benches in this run, the interleaved check.
fn bench_pipelined(
    criterion: &mut Criterion,
    rt: &Runtime,
    (group_name, label): (&str, &str),
    since: SystemTime,
) -> Option<Paired> {
    let zmesh_server = Server::zmesh("tcp://127.0.0.1:0", Flavour::CurrentThread);
    let raw_server = Server::raw("tcp://127.0.0.1:0", Flavour::CurrentThread);
    let floor_server = Server::codec_floor("tcp://127.0.0.1:0");
    let value = Value::Binary(vec![0u8; PIPELINE_PAYLOAD]);
    let bytes = Bytes::from(vec![0u8; PIPELINE_PAYLOAD]);
    let client = rt.block_on(connect_zmesh(zmesh_server.endpoint(), &value));
    let dealer = Arc::new(tokio::sync::Mutex::new(
        rt.block_on(connect_raw(raw_server.endpoint(), &bytes)),
    ));
    let floor_dealer = Arc::new(tokio::sync::Mutex::new(
        rt.block_on(connect_codec_floor(floor_server.endpoint(), &value)),
    ));

    let mut group: BenchmarkGroup<'_, WallTime> = criterion.benchmark_group(group_name);
    // One iteration is a whole batch (milliseconds); flat sampling keeps the run bounded.
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(PIPELINE_BATCH as u64));
    group.bench_function("zmesh", |b| {
        b.to_async(rt).iter_custom(|iters| {
            let client = client.clone();
            let value = value.clone();
            bounded(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    zmesh_pipelined_batch(&client, &value).await;
                }
                start.elapsed()
            })
        });
    });
    let raw_load = DealerLoad::Raw(bytes);
    bench_dealer_batches(&mut group, rt, "raw", &dealer, &raw_load);
    let floor_load = DealerLoad::CodecFloor(value.clone());
    bench_dealer_batches(&mut group, rt, "codec_floor", &floor_dealer, &floor_load);
    group.finish();

    let paired = measured_in_this_run(group_name, since)
        .then(|| rt.block_on(paired_pipelined(label, &client, &dealer, &value, &raw_load)));
    close_clients(rt, client, dealer);
    drop(zmesh_server);
    drop(raw_server);
    rt.block_on(async move { drop(floor_dealer) });
    drop(floor_server);
    paired
}

/// The interleaved check of one case: per-call (latency) or per-batch (pipelined) times of
/// both sides, measured in alternating blocks.
struct Paired {
    label: String,
    pipelined: bool,
    zmesh: Latencies,
    raw: Latencies,
}

/// The mode number of zmesh in an interleaved check (raw is the other, 1).
const ZMESH_SIDE: usize = 0;

/// True when criterion wrote both estimates of `group` during this run (benchmark mode and
/// not filtered out), which is when the interleaved check is worth its time.
fn measured_in_this_run(group: &str, since: SystemTime) -> bool {
    criterion_dir().is_some_and(|dir| {
        median_ns(&dir, group, "zmesh", since).is_some()
            && median_ns(&dir, group, "raw", since).is_some()
    })
}

/// Runs an interleaved check of the two sides under [`CHECK_DEADLINE`].
async fn within_check(check: impl Future<Output = Vec<Latencies>>) -> [Latencies; 2] {
    tokio::time::timeout(CHECK_DEADLINE, check)
        .await
        .expect(
            "an interleaved check did not finish within CHECK_DEADLINE: a server stopped answering",
        )
        .try_into()
        .expect("one set of latencies per side")
}

/// Times every call of [`PAIRED_ROUNDS`] alternating blocks of [`PAIRED_BLOCK`] sequential
/// zmesh calls and raw round trips.
async fn paired_latency(
    label: &str,
    client: &Client,
    dealer: &tokio::sync::Mutex<DealerSocket>,
    value: &Value,
    bytes: &Bytes,
) -> Paired {
    let mut dealer = dealer.lock().await;
    // The schedule by hand rather than `drive::interleaved`: this future is spawned on the
    // multi-thread runtime, and an async closure's future is not provably `Send`.
    let mut schedule = Schedule::new(
        2,
        PAIRED_ROUNDS * PAIRED_BLOCK,
        PAIRED_ROUNDS,
        Duration::MAX,
        Order::Rotate,
    );
    let mut sides = [Latencies::new(), Latencies::new()];
    let check = async {
        while let Some(turn) = schedule.next_turn() {
            let started = Instant::now();
            for _ in 0..turn.calls {
                let call = Instant::now();
                if turn.mode == ZMESH_SIDE {
                    black_box(zmesh_echo(client, value).await);
                } else {
                    black_box(raw_echo(&mut dealer, bytes).await);
                }
                sides[turn.mode].record(call.elapsed());
            }
            schedule.finish(&turn, turn.calls, started.elapsed());
        }
    };
    tokio::time::timeout(CHECK_DEADLINE, check).await.expect(
        "an interleaved check did not finish within CHECK_DEADLINE: a server stopped answering",
    );
    let [zmesh, raw] = sides;
    Paired {
        label: label.to_owned(),
        pipelined: false,
        zmesh,
        raw,
    }
}

/// Times [`PAIRED_ROUNDS`] alternating pipelined batches of each side.
async fn paired_pipelined(
    label: &str,
    client: &Client,
    dealer: &tokio::sync::Mutex<DealerSocket>,
    value: &Value,
    raw_load: &DealerLoad,
) -> Paired {
    let mut dealer = dealer.lock().await;
    // One "call" per block: a whole batch, timed as one.
    let check = drive::interleaved(2, PAIRED_ROUNDS, 1, Order::Rotate, async |side| {
        if side == ZMESH_SIDE {
            zmesh_pipelined_batch(client, value).await;
        } else {
            dealer_pipelined_batch(&mut dealer, raw_load).await;
        }
    });
    let [zmesh, raw] = within_check(check).await;
    Paired {
        label: label.to_owned(),
        pipelined: true,
        zmesh,
        raw,
    }
}

/// One zmesh `echo.echo` call; the payload is serialized by reference, as a caller would.
async fn zmesh_echo(client: &Client, value: &Value) -> Value {
    client
        .call::<Value>(ECHO, (value,))
        .await
        .expect("zmesh echo.echo call failed")
}

/// One raw round trip: send `["", payload]`, await the echo.
async fn raw_echo(dealer: &mut DealerSocket, payload: &Bytes) -> ZmqMessage {
    dealer
        .send(raw_request(payload))
        .await
        .expect("raw DEALER send failed");
    dealer.recv().await.expect("raw DEALER recv failed")
}

/// [`PIPELINE_BATCH`] zmesh calls, [`PIPELINE_WINDOW`] of them in flight at any time.
async fn zmesh_pipelined_batch(client: &Client, value: &Value) {
    let done = futures::stream::iter(0..PIPELINE_BATCH)
        .map(|_| zmesh_echo(client, value))
        .buffer_unordered(PIPELINE_WINDOW)
        .fold(0usize, |n, reply| {
            black_box(reply);
            async move { n + 1 }
        })
        .await;
    assert_eq!(done, PIPELINE_BATCH, "every call of the batch answers");
}

/// What a raw DEALER of the pipelined group sends and checks per call.
enum DealerLoad {
    /// The raw baseline: `["", payload]`, echoed unchanged.
    Raw(Bytes),
    /// The codec floor: a zerorpc `echo.echo(value)` request and its decoded `OK` reply.
    CodecFloor(Value),
}

impl DealerLoad {
    fn request(&self) -> ZmqMessage {
        match self {
            Self::Raw(payload) => raw_request(payload),
            Self::CodecFloor(value) => codec_floor_request(value),
        }
    }

    fn take_reply(&self, reply: ZmqMessage) {
        match self {
            Self::Raw(_) => drop(black_box(reply)),
            Self::CodecFloor(_) => drop(black_box(codec_floor_result(reply))),
        }
    }
}

/// One criterion bench of the pipelined group driven by a raw DEALER.
fn bench_dealer_batches(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    dealer: &Arc<tokio::sync::Mutex<DealerSocket>>,
    load: &DealerLoad,
) {
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| async move {
            bounded(async move {
                let mut dealer = dealer.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    dealer_pipelined_batch(&mut dealer, load).await;
                }
                start.elapsed()
            })
            .await
        });
    });
}

/// [`PIPELINE_BATCH`] requests of `load`, keeping [`PIPELINE_WINDOW`] of them ahead of the
/// replies.
async fn dealer_pipelined_batch(dealer: &mut DealerSocket, load: &DealerLoad) {
    let mut sent = 0;
    while sent < PIPELINE_WINDOW.min(PIPELINE_BATCH) {
        dealer
            .send(load.request())
            .await
            .expect("raw DEALER send failed");
        sent += 1;
    }
    for _ in 0..PIPELINE_BATCH {
        load.take_reply(dealer.recv().await.expect("raw DEALER recv failed"));
        if sent < PIPELINE_BATCH {
            dealer
                .send(load.request())
                .await
                .expect("raw DEALER send failed");
            sent += 1;
        }
    }
}

fn raw_request(payload: &Bytes) -> ZmqMessage {
    let mut message = ZmqMessage::from(Bytes::new());
    message.push_back(payload.clone());
    message
}

/// The codec floor server's work for one request: `None` if it does not decode.
fn codec_floor_reply(request: ZmqMessage) -> Option<ZmqMessage> {
    let envelope = wire::split_frames(request.into_vec())?;
    let event = wire::decode_event(&envelope.event).ok()?;
    let (value,): (Value,) = rmp_serde::from_slice(&event.args).ok()?;
    let mut result = Vec::with_capacity(128);
    rmp_serde::encode::write_named(&mut result, &(value,)).ok()?;
    let header = wire::Header::zmesh_with_id(
        wire::MessageId::generate(),
        Some(event.header.message_id.clone()),
    );
    let reply = wire::encode_event(&header, wire::names::OK, &result);
    Some(wire::join_frames(&envelope.route, reply))
}

/// A zerorpc request for `echo.echo(value)`, encoded the way any zerorpc client must: a
/// header with a fresh id, the method name, and the args serialized to msgpack.
fn codec_floor_request(value: &Value) -> ZmqMessage {
    let mut args = Vec::with_capacity(128);
    rmp_serde::encode::write_named(&mut args, &(value,)).expect("args encode");
    let header = wire::Header::zmesh_with_id(wire::MessageId::generate(), None);
    let mut message = ZmqMessage::from(Bytes::new());
    message.push_back(wire::encode_event(&header, ECHO, &args));
    message
}

/// Decodes a zerorpc `OK [result]` reply and its result, as any zerorpc client must.
fn codec_floor_result(reply: ZmqMessage) -> Value {
    let frames = reply.into_vec();
    let event = frames
        .last()
        .map(wire::decode_event)
        .expect("a reply has frames")
        .expect("the codec floor server sends valid events");
    assert_eq!(event.name, "OK", "codec floor server answers OK");
    let (result,): (Value,) = rmp_serde::from_slice(&event.args).expect("reply args decode");
    result
}

/// A connected codec floor DEALER, checked with one round trip.
async fn connect_codec_floor(endpoint: &str, value: &Value) -> DealerSocket {
    let mut dealer = DealerSocket::new();
    tokio::time::timeout(SETUP_DEADLINE, dealer.connect(endpoint))
        .await
        .expect("codec floor DEALER connect did not finish within SETUP_DEADLINE")
        .expect("codec floor DEALER connect failed");
    let round_trip = async {
        dealer
            .send(codec_floor_request(value))
            .await
            .expect("codec floor DEALER send failed");
        dealer.recv().await.expect("codec floor DEALER recv failed")
    };
    let reply = tokio::time::timeout(SETUP_DEADLINE, round_trip)
        .await
        .expect("the first codec floor round trip did not finish within SETUP_DEADLINE");
    assert_eq!(
        &codec_floor_result(reply),
        value,
        "the floor echoes its argument"
    );
    dealer
}

/// Runs one timed batch under [`BATCH_DEADLINE`].
async fn bounded(batch: impl Future<Output = Duration>) -> Duration {
    tokio::time::timeout(BATCH_DEADLINE, batch)
        .await
        .expect("a timed batch did not finish within BATCH_DEADLINE: the server stopped answering")
}

/// A multi-thread runtime of [`MULTI_THREAD_WORKERS`] workers whose threads are all unpinned
/// (threads inherit the affinity of the thread that spawns them, here a pinned one).
fn multi_thread_runtime(name: &str) -> Runtime {
    Flavour::multi_thread_builder()
        .thread_name(name)
        .on_thread_start(unpin_current_thread)
        .build()
        .expect("cannot build a multi-thread runtime")
}

/// A connected zmesh client, checked with one call.
async fn connect_zmesh(endpoint: &str, value: &Value) -> Client {
    let client = Client::new(endpoint);
    let reply = tokio::time::timeout(SETUP_DEADLINE, zmesh_echo(&client, value))
        .await
        .expect("the first zmesh call did not finish within SETUP_DEADLINE");
    assert_eq!(&reply, value, "echo.echo returns its argument");
    client
}

/// A connected raw DEALER, checked with one round trip.
async fn connect_raw(endpoint: &str, payload: &Bytes) -> DealerSocket {
    let mut dealer = DealerSocket::new();
    tokio::time::timeout(SETUP_DEADLINE, dealer.connect(endpoint))
        .await
        .expect("raw DEALER connect did not finish within SETUP_DEADLINE")
        .expect("raw DEALER connect failed");
    let reply = tokio::time::timeout(SETUP_DEADLINE, raw_echo(&mut dealer, payload))
        .await
        .expect("the first raw round trip did not finish within SETUP_DEADLINE");
    let frames = reply.into_vec();
    assert_eq!(frames.len(), 2, "the echo is [\"\", payload]");
    assert_eq!(&frames[1], payload, "the echo returns the payload");
    dealer
}

/// Drops the clients on their runtime and lets it reap their aborted tasks.
fn close_clients(rt: &Runtime, client: Client, dealer: Arc<tokio::sync::Mutex<DealerSocket>>) {
    rt.block_on(async move {
        drop(client);
        drop(dealer);
        tokio::task::yield_now().await;
    });
}

/// A server on its own OS thread with its own runtime (`current_thread`, or multi-thread
/// with the server in a spawned task); dropping it stops the server and joins the thread.
enum Server {
    /// On a thread of this process (placed by `ZMESH_BENCH_PIN`).
    Thread(ServerThread),
    /// With `ZMESH_BENCH_PIN=process`, in a child process.
    Child(ServerChild),
}

impl Server {
    /// A zmesh node hosting the echo service.
    fn zmesh(bind: &str, flavour: Flavour) -> Self {
        if Placement::get() == Placement::Process {
            return Self::child("zmesh", bind, flavour);
        }
        let bind = bind.to_owned();
        Self::spawn("zmesh-node", flavour, move |ready, stop| async move {
            let node = Node::builder()
                .bind(bind)
                .service(zmesh_echo::service())
                .start()
                .await
                .expect("cannot start the zmesh node");
            let _ = ready.send(node.endpoint().to_owned());
            let _ = stop.await;
            node.shutdown(Duration::from_secs(1)).await;
        })
    }

    /// A raw ROUTER that sends every message back unchanged (`[identity, "", payload]`).
    fn raw(bind: &str, flavour: Flavour) -> Self {
        if Placement::get() == Placement::Process {
            return Self::child("raw", bind, flavour);
        }
        Self::router("raw-router", bind, flavour, Some)
    }

    /// A raw ROUTER doing only what the zerorpc wire format requires of a server per call:
    /// decode the request event and its args, encode the result and the `OK` event with
    /// `response_to` (the `codec_floor` bench; see the module docs).
    fn codec_floor(bind: &str) -> Self {
        if Placement::get() == Placement::Process {
            return Self::child("codec_floor", bind, Flavour::CurrentThread);
        }
        Self::router(
            "codec-floor",
            bind,
            Flavour::CurrentThread,
            codec_floor_reply,
        )
    }

    /// A raw ROUTER sending `answer(message)` back for every message (nothing when `None`).
    fn router(
        name: &'static str,
        bind: &str,
        flavour: Flavour,
        answer: fn(ZmqMessage) -> Option<ZmqMessage>,
    ) -> Self {
        let bind = bind.to_owned();
        Self::spawn(name, flavour, move |ready, stop| async move {
            let (endpoint, serve) = raw::router(&bind, name, answer)
                .await
                .unwrap_or_else(|e| panic!("{name}: cannot bind: {e}"));
            let _ = ready.send(endpoint);
            // Ends when the bench drops the server (or the socket fails).
            tokio::select! {
                () = serve => {}
                _ = stop => {}
            }
        })
    }

    fn spawn<F, Fut>(name: &str, flavour: Flavour, serve: F) -> Self
    where
        F: FnOnce(Ready, Stop) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cpu = Placement::get().server_cpu();
        Self::Thread(
            ServerThread::spawn(name, flavour, cpu, SETUP_DEADLINE, serve)
                .unwrap_or_else(|e| panic!("{e} (see its panic above)")),
        )
    }

    /// The server `kind` in a child process: this bench binary started again with
    /// [`SERVE_ENV`] set (see [`serve_as_child`]), the layout of the reference figures
    /// (client and server in separate processes, nothing pinned; docs/PERFORMANCE.md). The child prints its
    /// endpoint on stdout and stops when its stdin closes, which dropping this does.
    fn child(kind: &str, bind: &str, flavour: Flavour) -> Self {
        let exe = std::env::current_exe().expect("cannot find the bench binary");
        let flavour = match flavour {
            Flavour::CurrentThread => "current_thread",
            Flavour::MultiThread => "multi_thread",
        };
        let mut command = std::process::Command::new(exe);
        command
            .env(SERVE_ENV, kind)
            .env(SERVE_BIND_ENV, bind)
            .env(SERVE_FLAVOUR_ENV, flavour);
        let child = ServerChild::spawn(&format!("{kind} server process"), command, SETUP_DEADLINE)
            .unwrap_or_else(|e| panic!("{e}"));
        Self::Child(child)
    }

    fn endpoint(&self) -> &str {
        match self {
            Self::Thread(thread) => thread.endpoint(),
            Self::Child(child) => child.endpoint(),
        }
    }
}

/// Set (to `zmesh`, `raw` or `codec_floor`) when this binary runs as a child server.
const SERVE_ENV: &str = "ZMESH_BENCH_SERVE";
/// The child server's bind endpoint.
const SERVE_BIND_ENV: &str = "ZMESH_BENCH_SERVE_BIND";
/// The child server's runtime flavour (`current_thread` or `multi_thread`).
const SERVE_FLAVOUR_ENV: &str = "ZMESH_BENCH_SERVE_FLAVOUR";

/// The child side of [`Server::child`]: runs the server on a thread of this process,
/// announces its endpoint, and stops it when stdin closes (the bench dropped it, or exited).
fn serve_as_child(kind: &str) {
    let bind = std::env::var(SERVE_BIND_ENV).unwrap_or_else(|_| "tcp://127.0.0.1:0".into());
    let flavour = match std::env::var(SERVE_FLAVOUR_ENV).as_deref() {
        Ok("multi_thread") => Flavour::MultiThread,
        _ => Flavour::CurrentThread,
    };
    let server = match kind {
        "zmesh" => Server::zmesh(&bind, flavour),
        "raw" => Server::raw(&bind, flavour),
        "codec_floor" => Server::codec_floor(&bind),
        other => panic!("unknown server kind {other:?}"),
    };
    zmesh_bench::child::announce(server.endpoint()).expect("cannot report the endpoint");
    zmesh_bench::child::wait_for_parent();
    drop(server);
}

/// What the ratio table reports.
enum Case {
    /// zmesh/raw median latency of one `latency_*` group.
    Latency { label: String, group: String },
    /// zmesh/raw throughput of the pipelined group.
    Pipelined { label: String, group: String },
    /// multi_thread/current_thread median latency of each side: `multi` is the multi-thread
    /// group, `current` the `current_thread` group of the same case.
    Flavour {
        label: String,
        multi: String,
        current: String,
    },
}

/// Prints zmesh/raw ratios from criterion's estimates of this run, if there are any.
fn print_ratios(cases: &[Case], since: SystemTime) {
    let Some(dir) = criterion_dir() else {
        println!("ratio table skipped: criterion output directory not found");
        return;
    };
    let medians = |group: &str| {
        Some((
            median_ns(&dir, group, "zmesh", since)?,
            median_ns(&dir, group, "raw", since)?,
        ))
    };
    let mut lines = Vec::new();
    let mut misses = Vec::new();
    for case in cases {
        match case {
            Case::Latency { label, group } => {
                let Some((zmesh, raw)) = medians(group) else {
                    continue;
                };
                let ratio = zmesh / raw;
                let verdict = verdict(ratio <= LATENCY_TARGET);
                if ratio > LATENCY_TARGET {
                    misses.push(label.clone());
                }
                lines.push(format!(
                    "ratio {label} zmesh/raw p50: {ratio:.2}x (target <= {LATENCY_TARGET:.2}x) {verdict}   \
                     [zmesh {:.1} us, raw {:.1} us]",
                    zmesh / 1e3,
                    raw / 1e3,
                ));
            }
            Case::Pipelined { label, group } => {
                let Some((zmesh, raw)) = medians(group) else {
                    continue;
                };
                // Both sides move the same batch per iteration, so throughput is inverse time.
                let ratio = raw / zmesh;
                let per_sec = |ns: f64| PIPELINE_BATCH as f64 / (ns / 1e9);
                let verdict = verdict(ratio >= THROUGHPUT_TARGET);
                if ratio < THROUGHPUT_TARGET {
                    misses.push(format!("pipelined {label}"));
                }
                lines.push(format!(
                    "ratio pipelined {label} zmesh/raw throughput: {ratio:.2}x (target >= {THROUGHPUT_TARGET:.2}x) {verdict}   \
                     [zmesh {:.0} calls/s, raw {:.0} calls/s]",
                    per_sec(zmesh),
                    per_sec(raw),
                ));
                if let Some(floor) = median_ns(&dir, group, "codec_floor", since) {
                    lines.push(format!(
                        "  codec floor (raw + zerorpc encoding only) {:.0} calls/s: floor/raw {:.2}x, zmesh/floor {:.2}x",
                        per_sec(floor),
                        raw / floor,
                        floor / zmesh,
                    ));
                }
            }
            Case::Flavour {
                label,
                multi,
                current,
            } => {
                let (Some((zmesh_mt, raw_mt)), Some((zmesh_ct, raw_ct))) =
                    (medians(multi), medians(current))
                else {
                    continue;
                };
                lines.push(format!(
                    "runtime flavour {label}: multi_thread({MULTI_THREAD_WORKERS}) vs current_thread p50: \
                     zmesh {:.2}x, raw {:.2}x   \
                     [zmesh {:.1} vs {:.1} us, raw {:.1} vs {:.1} us]",
                    zmesh_mt / zmesh_ct,
                    raw_mt / raw_ct,
                    zmesh_mt / 1e3,
                    zmesh_ct / 1e3,
                    raw_mt / 1e3,
                    raw_ct / 1e3,
                ));
            }
        }
    }
    if lines.is_empty() {
        println!(
            "ratio table skipped: no estimates from this run under {} (test mode or filtered out)",
            dir.display()
        );
        return;
    }
    println!();
    println!("== zmesh vs raw zeromq, criterion medians of this run ==");
    for line in &lines {
        println!("{line}");
    }
    if misses.is_empty() {
        println!("all measured cases meet their targets");
    } else {
        println!("cases missing their target: {}", misses.join(", "));
    }
}

/// Prints the interleaved check: per-call percentiles, or per-batch throughput.
fn print_paired(paired: &[Paired]) {
    if paired.is_empty() {
        return;
    }
    println!();
    println!(
        "== interleaved check: {PAIRED_ROUNDS} rounds alternating zmesh and raw blocks (same machine state) =="
    );
    for p in paired {
        let (zmesh, raw) = (&p.zmesh, &p.raw);
        let us = micros;
        if p.pipelined {
            let per_sec = |d: Duration| PIPELINE_BATCH as f64 / d.as_secs_f64();
            let (z, r) = (zmesh.p50(), raw.p50());
            let ratio = per_sec(z) / per_sec(r);
            println!(
                "paired pipelined {} zmesh/raw throughput: {ratio:.2}x (target >= {THROUGHPUT_TARGET:.2}x) {}   \
                 [median batch: zmesh {:.0} calls/s, raw {:.0} calls/s]",
                p.label,
                verdict(ratio >= THROUGHPUT_TARGET),
                per_sec(z),
                per_sec(r),
            );
        } else {
            let (z50, r50) = (zmesh.p50(), raw.p50());
            let (z99, r99) = (zmesh.p99(), raw.p99());
            let ratio = us(z50) / us(r50);
            println!(
                "paired {} zmesh/raw p50: {ratio:.2}x (target <= {LATENCY_TARGET:.2}x) {}, p99: {:.2}x   \
                 [zmesh p50 {:.1} us p99 {:.1} us, raw p50 {:.1} us p99 {:.1} us, {} calls each]",
                p.label,
                verdict(ratio <= LATENCY_TARGET),
                us(z99) / us(r99),
                us(z50),
                us(z99),
                us(r50),
                us(r99),
                zmesh.len(),
            );
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "OK" } else { "MISS" }
}

/// Where criterion writes its estimates: `$CRITERION_HOME`, `$CARGO_TARGET_DIR/criterion`,
/// else the `criterion` directory next to the build directories holding this executable.
fn criterion_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .map(|dir| dir.join("criterion"))
        .find(|dir| dir.is_dir())
        .or_else(|| Some(PathBuf::from("target/criterion")))
}

/// The median point estimate (ns per iteration) of one bench, if written during this run.
fn median_ns(dir: &Path, group: &str, bench: &str, since: SystemTime) -> Option<f64> {
    let path = dir
        .join(group)
        .join(bench)
        .join("new")
        .join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    parse_median(&text)
}

/// Reads `median.point_estimate` from criterion's `estimates.json`
/// (`{"mean":{..},"median":{"confidence_interval":{..},"point_estimate":N,..},..}`) without
/// pulling in a JSON parser.
fn parse_median(json: &str) -> Option<f64> {
    let median = &json[json.find("\"median\"")?..];
    let key = "\"point_estimate\"";
    let after_key = &median[median.find(key)? + key.len()..];
    let value = after_key.trim_start().strip_prefix(':')?.trim_start();
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(value.len());
    value[..end].parse().ok().filter(|v: &f64| *v > 0.0)
}

/// Where the client and server threads run. Unpinned on a 2-vCPU VM, a connection's round
/// trip settled in either a fast mode (~20 us) or a ~4x slower one depending on where the
/// scheduler put the threads, and kept that mode for its whole life, so zmesh/raw ratios
/// swung from 0.3x to 4.6x between runs; pinned, they repeat within a few percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Client on CPU 0, every server on CPU 1 (two processes on two cores).
    Split,
    /// Client and servers all on CPU 0.
    Same,
    /// No pinning.
    Off,
    /// Every server in its own child process, nothing pinned: the layout of the reference
    /// figures (docs/PERFORMANCE.md) and of `zmesh bench`.
    Process,
}

impl Placement {
    /// The placement of this run, decided once (in `main`, before any thread is pinned):
    /// asked later from a pinned thread, the CPU count would follow that thread's affinity
    /// and wrongly report a single CPU.
    fn get() -> Self {
        static PLACEMENT: std::sync::OnceLock<Placement> = std::sync::OnceLock::new();
        *PLACEMENT.get_or_init(Self::from_env)
    }

    /// `ZMESH_BENCH_PIN=split|same|off|process` (default `split`); always `off` outside benchmark
    /// mode (`cargo test --benches` runs each bench once; pinning would only cost time) and
    /// on a single CPU.
    fn from_env() -> Self {
        let mut args = std::env::args().skip(1);
        let benchmarking = args.any(|a| a == "--bench")
            && !std::env::args().any(|a| a == "--test" || a == "--list");
        match std::env::var("ZMESH_BENCH_PIN").as_deref() {
            _ if !benchmarking => Self::Off,
            Ok("same") => Self::Same,
            Ok("off") => Self::Off,
            Ok("process") => Self::Process,
            _ if std::thread::available_parallelism().map_or(1, usize::from) < 2 => Self::Off,
            _ => Self::Split,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Split => "client thread on CPU 0, server threads on CPU 1",
            Self::Same => "client and server threads all on CPU 0",
            Self::Off => "threads not pinned",
            Self::Process => "each server in its own process, nothing pinned",
        }
    }

    fn pin_client(self) {
        if matches!(self, Self::Split | Self::Same) {
            pin_current_thread(0);
        }
    }

    /// The CPU a server thread is pinned to (multi-thread servers are never pinned).
    fn server_cpu(self) -> Option<usize> {
        match self {
            Self::Split => Some(1),
            Self::Same => Some(0),
            Self::Off | Self::Process => None,
        }
    }
}
