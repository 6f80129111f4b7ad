//! The proxy device against a direct call, with raw `zeromq` beside both, in one run.
//!
//! - `device_latency_tcp_64B`: a sequential `echo.echo` call of a 64-byte bin, `direct` (client
//!   -> node) and `device` (client -> device -> worker node and back: two hops), beside
//!   `raw_direct` (DEALER -> echo ROUTER) and `raw_proxy` (DEALER -> ROUTER/DEALER
//!   `zeromq::proxy` -> echo ROUTER), the floor of any two-hop path.
//! - `device_pipelined_tcp_64B`: batches of [`PIPELINE_BATCH`] calls with [`PIPELINE_WINDOW`]
//!   in flight over one client connection, `direct` and `device`.
//!
//! After criterion, an interleaved check alternates blocks of direct and device calls on the
//! same connections ([`PAIRED_ROUNDS`] rounds), timing every call, and prints p50/p99 and the
//! device/direct ratios against the targets (p50 at most [`LATENCY_TARGET`]x direct), plus the
//! same for the raw pair and the pipelined throughput. Interleaving makes the ratios robust to
//! the run-to-run swings of a small VM.
//!
//! Every server (node, device, worker, raw echo, raw proxy) runs on its own OS thread with a
//! `current_thread` runtime; the client runs on criterion's `current_thread` runtime. In
//! benchmark mode the client thread is pinned to CPU 0 and the server threads to CPU 1
//! (`ZMESH_BENCH_PIN=split`, the default), or everything to CPU 0 (`same`: shows the CPU cost
//! of each path without cross-CPU wake-ups), or nothing (`off`), as in `benches/rpc.rs`.
//!
//! ```text
//! cargo bench --bench device
//! ```

use zmesh_bench::affinity::pin_current_thread;
use zmesh_bench::thread::{Ready, Stop};
use zmesh_bench::{Latencies, ServerThread, micros, raw};

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use rmpv::Value;
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::device::{Device, DeviceStats, STATS_METHOD};
use zmesh::{Client, Node};

/// Calls in flight in the pipelined group.
const PIPELINE_WINDOW: usize = 128;
/// Calls per iteration of the pipelined group.
const PIPELINE_BATCH: usize = 1024;
/// Payload size in bytes.
const PAYLOAD: usize = 64;
/// Upper bound on one timed batch; a peer that stops answering fails the bench.
const BATCH_DEADLINE: Duration = Duration::from_secs(60);
/// Upper bound on starting a server or connecting to it.
const SETUP_DEADLINE: Duration = Duration::from_secs(10);
/// The method under test.
const ECHO: &str = "echo.echo";
/// Rounds of the interleaved check.
const PAIRED_ROUNDS: usize = 30;
/// Sequential calls per side and round in the interleaved latency check.
const PAIRED_BLOCK: usize = 300;
/// The device's median round trip may cost at most this many direct ones (two hops):
/// issue 21's target 4 (issue 17's was 2.2x).
const LATENCY_TARGET: f64 = 2.0;

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench")
        && !std::env::args().any(|a| a == "--test" || a == "--list");
    let placement = std::env::var("ZMESH_BENCH_PIN").unwrap_or_default();
    let pin = if !benchmarking
        || placement == "off"
        || std::thread::available_parallelism().map_or(1, usize::from) < 2
    {
        None
    } else if placement == "same" {
        Some(0)
    } else {
        Some(1)
    };
    println!(
        "placement: {}",
        match pin {
            None => "threads not pinned",
            Some(0) => "client and server threads all on CPU 0",
            Some(_) => "client thread on CPU 0, server threads on CPU 1",
        }
    );
    let mut criterion = Criterion::default()
        // No HTML plots (criterion is built without plotters): its terminal report stays.
        .without_plots()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
        .configure_from_args();
    if pin.is_some() {
        pin_current_thread(0);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build the client runtime");

    let servers = Servers::start(pin);
    let value = Value::Binary(vec![7u8; PAYLOAD]);
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let (direct, device, raw_direct, raw_proxy) = rt.block_on(async {
        let direct = connect_zmesh(servers.node.endpoint(), &value).await;
        wait_for_worker(servers.frontend()).await;
        let device = connect_zmesh(servers.frontend(), &value).await;
        let raw_direct = connect_raw(servers.raw_echo.endpoint(), &payload).await;
        let raw_proxy = connect_raw(servers.raw_proxy.endpoint(), &payload).await;
        (direct, device, raw_direct, raw_proxy)
    });
    let raw_direct = tokio::sync::Mutex::new(raw_direct);
    let raw_proxy = tokio::sync::Mutex::new(raw_proxy);

    {
        let mut group = criterion.benchmark_group("device_latency_tcp_64B");
        group.throughput(Throughput::Elements(1));
        for (name, client) in [("direct", &direct), ("device", &device)] {
            group.bench_function(name, |b| {
                b.to_async(&rt)
                    .iter(|| async { black_box(echo(client, &value).await) });
            });
        }
        for (name, dealer) in [("raw_direct", &raw_direct), ("raw_proxy", &raw_proxy)] {
            group.bench_function(name, |b| {
                b.to_async(&rt).iter(|| async {
                    let mut dealer = dealer.lock().await;
                    black_box(raw_echo(&mut dealer, &payload).await)
                });
            });
        }
        group.finish();
    }
    {
        let mut group = criterion.benchmark_group("device_pipelined_tcp_64B");
        group.throughput(Throughput::Elements(PIPELINE_BATCH as u64));
        for (name, client) in [("direct", &direct), ("device", &device)] {
            group.bench_function(name, |b| {
                b.to_async(&rt)
                    .iter(|| async { bounded(pipelined(client, &value)).await });
            });
        }
        group.finish();
    }

    let (rounds, block) = if benchmarking {
        (PAIRED_ROUNDS, PAIRED_BLOCK)
    } else {
        (2, 20)
    };
    rt.block_on(async {
        let mut raw_direct = raw_direct.lock().await;
        let mut raw_proxy = raw_proxy.lock().await;
        paired_report(
            rounds,
            block,
            &direct,
            &device,
            &mut raw_direct,
            &mut raw_proxy,
            &value,
            &payload,
        )
        .await;
        let stats: DeviceStats = device.call(STATS_METHOD, ()).await.expect("device stats");
        let echo = &stats.services["echo"];
        assert_eq!(echo.failed, 0, "no call failed through the device");
        println!(
            "device figures: dispatched {}, completed {}, queued now {}",
            echo.dispatched, echo.completed, echo.queued
        );
    });
    rt.block_on(async move {
        drop((direct, device));
        tokio::task::yield_now().await;
    });
    drop(servers);
    criterion.final_summary();
}

/// Interleaves blocks of each pair and prints p50/p99 and ratios.
#[allow(clippy::too_many_arguments)]
async fn paired_report(
    rounds: usize,
    block: usize,
    direct: &Client,
    device: &Client,
    raw_direct: &mut DealerSocket,
    raw_proxy: &mut DealerSocket,
    value: &Value,
    payload: &Bytes,
) {
    let mut times: [Latencies; 4] = Default::default();
    let mut pipelined: [Duration; 2] = [Duration::ZERO; 2];
    for round in 0..rounds {
        // Alternate which side goes first, so neither always runs on a warmer machine.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let client = [direct, device][side];
            for _ in 0..block {
                let started = Instant::now();
                black_box(echo(client, value).await);
                times[side].record(started.elapsed());
            }
        }
        for side in order {
            for _ in 0..block {
                let dealer: &mut DealerSocket = if side == 0 {
                    &mut *raw_direct
                } else {
                    &mut *raw_proxy
                };
                let started = Instant::now();
                black_box(raw_echo(dealer, payload).await);
                times[2 + side].record(started.elapsed());
            }
        }
        for side in order {
            let client = [direct, device][side];
            pipelined[side] += bounded(pipelined_batch_timed(client, value)).await;
        }
    }
    let p = |t: &Latencies, q: f64| micros(t.at_quantile(q));
    println!(
        "\ninterleaved check: {rounds} rounds x {block} sequential calls per side, \
         plus {rounds} pipelined batches of {PIPELINE_BATCH} ({PIPELINE_WINDOW} in flight)"
    );
    println!(
        "{:<22} {:>10} {:>10}",
        "round trip, 64 B", "p50 us", "p99 us"
    );
    for (name, t) in [
        "zmesh direct",
        "zmesh via device",
        "raw direct",
        "raw via proxy",
    ]
    .iter()
    .zip(&times)
    {
        println!("{name:<22} {:>10.1} {:>10.1}", p(t, 0.5), p(t, 0.99));
    }
    let ratio = p(&times[1], 0.5) / p(&times[0], 0.5);
    let raw_ratio = p(&times[3], 0.5) / p(&times[2], 0.5);
    println!(
        "device/direct p50 {ratio:.2}x (target <= {LATENCY_TARGET}x: {}); \
         raw proxy/raw direct p50 {raw_ratio:.2}x (the two-hop floor)",
        if ratio <= LATENCY_TARGET {
            "met"
        } else {
            "NOT met"
        }
    );
    let rate = |d: Duration| (rounds * PIPELINE_BATCH) as f64 / d.as_secs_f64();
    let (direct_rate, device_rate) = (rate(pipelined[0]), rate(pipelined[1]));
    println!(
        "pipelined, {PIPELINE_WINDOW} in flight: direct {direct_rate:.0} calls/s, device \
         {device_rate:.0} calls/s (device/direct {:.2}x)",
        device_rate / direct_rate
    );
}

async fn echo(client: &Client, value: &Value) -> Value {
    client
        .call::<Value>(ECHO, (value,))
        .await
        .expect("echo.echo call failed")
}

async fn raw_echo(dealer: &mut DealerSocket, payload: &Bytes) -> ZmqMessage {
    let mut message = ZmqMessage::from(Bytes::new());
    message.push_back(payload.clone());
    dealer.send(message).await.expect("raw DEALER send failed");
    dealer.recv().await.expect("raw DEALER recv failed")
}

async fn pipelined(client: &Client, value: &Value) {
    let done = futures::stream::iter(0..PIPELINE_BATCH)
        .map(|_| echo(client, value))
        .buffer_unordered(PIPELINE_WINDOW)
        .fold(0usize, |n, reply| {
            black_box(reply);
            async move { n + 1 }
        })
        .await;
    assert_eq!(done, PIPELINE_BATCH, "every call of the batch answers");
}

async fn pipelined_batch_timed(client: &Client, value: &Value) -> Duration {
    let started = Instant::now();
    pipelined(client, value).await;
    started.elapsed()
}

async fn bounded<T>(batch: impl Future<Output = T>) -> T {
    tokio::time::timeout(BATCH_DEADLINE, batch)
        .await
        .expect("a timed batch did not finish within BATCH_DEADLINE")
}

async fn connect_zmesh(endpoint: &str, value: &Value) -> Client {
    let client = Client::new(endpoint);
    let reply = tokio::time::timeout(SETUP_DEADLINE, echo(&client, value))
        .await
        .expect("the first call did not finish within SETUP_DEADLINE");
    assert_eq!(&reply, value, "echo.echo returns its argument");
    client
}

/// Waits until the worker has announced itself to the device.
async fn wait_for_worker(frontend: &str) {
    let client = Client::new(frontend);
    let registered = async {
        loop {
            let stats: DeviceStats = client.call(STATS_METHOD, ()).await.expect("device stats");
            if stats.workers >= 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(SETUP_DEADLINE, registered)
        .await
        .expect("the worker did not register within SETUP_DEADLINE");
}

async fn connect_raw(endpoint: &str, payload: &Bytes) -> DealerSocket {
    let mut dealer = DealerSocket::new();
    tokio::time::timeout(SETUP_DEADLINE, dealer.connect(endpoint))
        .await
        .expect("raw DEALER connect timed out")
        .expect("raw DEALER connect failed");
    let reply = tokio::time::timeout(SETUP_DEADLINE, raw_echo(&mut dealer, payload))
        .await
        .expect("the first raw round trip timed out");
    assert_eq!(
        reply.into_vec().last(),
        Some(payload),
        "the echo returns the payload"
    );
    dealer
}

/// Every server of the bench, each on its own thread.
struct Servers {
    node: ServerThread,
    device: ServerThread,
    _worker: ServerThread,
    raw_echo: ServerThread,
    _raw_echo_behind_proxy: ServerThread,
    raw_proxy: ServerThread,
}

impl Servers {
    fn start(pin: Option<usize>) -> Self {
        let node = spawn("zmesh-node", pin, |ready, stop| async move {
            let node = Node::builder()
                .bind("tcp://127.0.0.1:0")
                .service(zmesh_echo::service())
                .start()
                .await
                .expect("cannot start the node");
            let _ = ready.send(node.endpoint().to_owned());
            let _ = stop.await;
        });
        let device = spawn("zmesh-device", pin, |ready, stop| async move {
            let device = Device::builder()
                .frontend("tcp://127.0.0.1:0")
                .backend("tcp://127.0.0.1:0")
                .start()
                .await
                .expect("cannot start the device");
            let _ = ready.send(format!("{} {}", device.frontend(), device.backend()));
            let _ = stop.await;
        });
        let backend = device
            .endpoint()
            .split_once(' ')
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        let worker = spawn("zmesh-worker", pin, move |ready, stop| async move {
            let _worker = Node::builder()
                .worker_of(backend)
                .service(zmesh_echo::service())
                .start()
                .await
                .expect("cannot start the worker");
            let _ = ready.send(String::new());
            let _ = stop.await;
        });
        let raw_echo = raw_echo_server(pin);
        let behind = raw_echo_server(pin);
        let target = behind.endpoint().to_owned();
        let raw_proxy = spawn("raw-proxy", pin, move |ready, stop| async move {
            let mut frontend = RouterSocket::new();
            let endpoint = frontend
                .bind("tcp://127.0.0.1:0")
                .await
                .expect("cannot bind the raw proxy");
            let mut backend = DealerSocket::new();
            backend
                .connect(&target)
                .await
                .expect("raw proxy cannot reach its echo");
            let _ = ready.send(endpoint.to_string());
            tokio::select! {
                _ = stop => {}
                r = zeromq::proxy(frontend, backend, None) => {
                    if let Err(e) = r {
                        eprintln!("raw proxy stopped: {e}");
                    }
                }
            }
        });
        Self {
            node,
            device,
            _worker: worker,
            raw_echo,
            _raw_echo_behind_proxy: behind,
            raw_proxy,
        }
    }

    fn frontend(&self) -> &str {
        self.device
            .endpoint()
            .split_once(' ')
            .map_or("", |(front, _)| front)
    }
}

/// A server on its own thread with a `current_thread` runtime, pinned to `pin` when given.
fn spawn<F, Fut>(name: &str, pin: Option<usize>, serve: F) -> ServerThread
where
    F: FnOnce(Ready, Stop) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    ServerThread::spawn_current_thread(name, pin, SETUP_DEADLINE, serve)
        .unwrap_or_else(|e| panic!("{e} (see its panic above)"))
}

/// The raw `zeromq` ROUTER echo, the baseline of a direct call.
fn raw_echo_server(pin: Option<usize>) -> ServerThread {
    spawn("raw-echo", pin, |ready, stop| async move {
        let (endpoint, echo) = raw::echo("tcp://127.0.0.1:0")
            .await
            .expect("cannot bind the raw echo");
        let _ = ready.send(endpoint);
        tokio::select! {
            () = echo => {}
            _ = stop => {}
        }
    })
}
