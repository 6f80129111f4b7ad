//! Integration tests of the proxy device (`zmesh::device`), over real sockets on loopback:
//! load balancing across workers, fairness toward a slow worker, a worker killed or frozen
//! mid-load (idempotent calls re-run, the others fail with `PeerLost`, none hang), a device
//! restart, the overload and unknown-method errors, streams, long calls and cancels through
//! the device, a stock Python zerorpc client calling through it, and the event forwarder.

mod common;
#[path = "common/zerorpc_venv.rs"]
mod zerorpc_venv;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};
use zmesh::device::{Device, DeviceConfig, DeviceStats, STATS_METHOD};
use zmesh::wire::{self, Header};
use zmesh::{CallError, Client, ClientConfig, Node, NodeConfig, Service};

use common::{NET_TIMEOUT, eventually, net, within};

/// Heartbeat period of devices, workers and clients in these tests (except the stock
/// client's, which keeps zerorpc's 5 s).
const HB: Duration = Duration::from_millis(100);

async fn start_device(config: DeviceConfig) -> Device {
    start_device_at("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "echo", config).await
}

async fn start_device_at(
    frontend: &str,
    backend: &str,
    name: &str,
    config: DeviceConfig,
) -> Device {
    let start = Device::builder()
        .name(name)
        .frontend(frontend)
        .backend(backend)
        .config(config)
        .start();
    net("device start", start).await.expect("device starts")
}

fn fast() -> DeviceConfig {
    DeviceConfig::default().heartbeat(HB)
}

async fn start_worker(
    backend: &str,
    name: &str,
    services: Vec<Service>,
    capacity: Option<u32>,
) -> Node {
    let mut builder = Node::builder()
        .name(name)
        .worker_of(backend)
        .config(NodeConfig::default().heartbeat(HB));
    for service in services {
        builder = builder.service(service);
    }
    if let Some(capacity) = capacity {
        builder = builder.worker_capacity(capacity);
    }
    net("worker start", builder.start())
        .await
        .expect("worker starts")
}

async fn wait_workers(device: &Device, n: usize) {
    eventually(NET_TIMEOUT, &format!("{n} workers registered"), || {
        device.stats().workers == n
    })
    .await;
}

fn client_of(device: &Device) -> Client {
    Client::with_config(device.frontend(), ClientConfig::default().heartbeat(HB))
}

/// `work.job(x)`: waits `delay`, counts the call, returns `(worker, x)`.
fn counted(worker: &'static str, delay: Duration, counter: Arc<AtomicU64>) -> Service {
    Service::new("work")
        .method("job", move |x: u64| {
            let counter = counter.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                counter.fetch_add(1, Ordering::Relaxed);
                Ok((worker.to_owned(), x))
            }
        })
        .idempotent()
        .into()
}

/// `jobs.idem(ms)` (idempotent) and `jobs.once(ms)`: sleep, then return the worker's name.
fn jobs(worker: &str) -> Service {
    let a = worker.to_owned();
    let b = worker.to_owned();
    Service::new("jobs")
        .method("idem", move |ms: u64| {
            let name = a.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(name)
            }
        })
        .idempotent()
        .method("once", move |ms: u64| {
            let name = b.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(name)
            }
        })
        .into()
}

fn remote_name(e: &CallError) -> Option<&str> {
    e.remote().map(|r| r.name.as_str())
}

// ---------------------------------------------------------------------------------------------
// A worker in a child process, so a test can kill or freeze it like a crashed host.
// ---------------------------------------------------------------------------------------------

const CHILD_BACKEND_VAR: &str = "ZMESH_TEST_DEVICE_BACKEND";

/// Entry point of the child worker (a no-op in a normal test run).
#[test]
fn child_worker_entry() {
    let Ok(backend) = std::env::var(CHILD_BACKEND_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let _worker = start_worker(&backend, "child", vec![jobs("child")], None).await;
        println!("READY");
        // Serve until the parent kills this process.
        std::future::pending::<()>().await;
    });
}

struct ChildWorker {
    child: Child,
    /// Its stderr, shown only if the test fails.
    _log: common::child_log::ChildLog,
}

impl ChildWorker {
    async fn spawn(backend: &str) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "child_worker_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_BACKEND_VAR, backend)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("child worker spawns");
        let log = common::child_log::ChildLog::capture(&mut child, "the child worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        net("child worker READY line", async {
            while let Some(line) = lines.next_line().await.expect("child stdout readable") {
                if line.contains("READY") {
                    return;
                }
            }
            panic!("child worker exited before it was ready");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, _log: log }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("child still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = net("child exit", self.child.wait()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_answer_ten_thousand_calls() {
    let device = start_device(fast()).await;
    let counters: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut workers = Vec::new();
    for (name, counter) in ["w0", "w1", "w2"].into_iter().zip(&counters) {
        let service = counted(name, Duration::ZERO, counter.clone());
        workers.push(start_worker(device.backend(), name, vec![service], None).await);
    }
    wait_workers(&device, 3).await;

    let client = client_of(&device);
    let calls = futures::stream::iter(0..10_000u64)
        .map(|i| {
            let client = client.clone();
            async move { (i, client.call::<(String, u64)>("work.job", (i,)).await) }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>();
    let results = within(Duration::from_secs(120), "10,000 calls", calls).await;
    assert_eq!(results.len(), 10_000);
    for (i, result) in results {
        let (_, x) = result.unwrap_or_else(|e| panic!("call {i} failed: {e}"));
        assert_eq!(x, i);
    }
    let per_worker: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 10_000);
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "every worker takes part: {per_worker:?}"
    );

    // The introspection method, through the frontend like any call.
    let stats: DeviceStats = net("stats", client.call(STATS_METHOD, ()))
        .await
        .expect("stats");
    let work = &stats.services["work"];
    assert_eq!(
        (
            work.workers,
            work.dispatched,
            work.completed,
            work.failed,
            work.queued
        ),
        (3, 10_000, 10_000, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.open_calls, 0);
    assert_eq!(device.stats(), stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_four_times_slower_worker_gets_at_most_a_third_of_a_fast_ones_share() {
    let device = start_device(fast()).await;
    let fast_delay = Duration::from_millis(40);
    let specs = [
        ("fast0", fast_delay),
        ("fast1", fast_delay),
        ("slow", fast_delay * 4),
    ];
    let counters: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut workers = Vec::new();
    for ((name, delay), counter) in specs.into_iter().zip(&counters) {
        let service = counted(name, delay, counter.clone());
        workers.push(start_worker(device.backend(), name, vec![service], Some(2)).await);
    }
    wait_workers(&device, 3).await;

    // More calls than worker slots: a freed slot is refilled from the device's queue at
    // once, so what each worker gets depends on its speed and the balancing alone.
    let client = client_of(&device);
    let calls = futures::stream::iter(0..300u64)
        .map(|i| {
            let client = client.clone();
            async move { client.call::<(String, u64)>("work.job", (i,)).await }
        })
        .buffer_unordered(24)
        .collect::<Vec<_>>();
    for result in within(Duration::from_secs(60), "300 calls", calls).await {
        result.expect("call succeeds");
    }
    let [fast0, fast1, slow] = [0, 1, 2].map(|i| counters[i].load(Ordering::Relaxed));
    println!("calls per worker: fast0 {fast0}, fast1 {fast1}, slow {slow}");
    assert_eq!(fast0 + fast1 + slow, 300);
    assert!(
        3 * slow <= fast0 && 3 * slow <= fast1,
        "slow worker got {slow}, fast ones {fast0} and {fast1}"
    );
}

// ---------------------------------------------------------------------------------------------
// Worker loss
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_idempotent_calls_rerun_others_fail_none_hang() {
    let device = start_device(fast()).await;
    let _survivor = start_worker(device.backend(), "parent", vec![jobs("parent")], None).await;
    let child = ChildWorker::spawn(device.backend()).await;
    wait_workers(&device, 2).await;

    let client = client_of(&device);
    let mut calls = Vec::new();
    for i in 0..40u64 {
        // Pairs of each kind (idem, idem, once, once, ...): the device alternates between
        // its two idle workers, so pairs give each worker both kinds whichever it starts
        // with; strict alternation could send every idempotent call to the same worker.
        let method = if i % 4 < 2 { "jobs.idem" } else { "jobs.once" };
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let result = client.call::<String>(method, (600u64,)).await;
            (method, result)
        }));
    }
    // Kill the child while both workers run part of the load.
    eventually(NET_TIMEOUT, "40 calls running", || {
        device
            .stats()
            .services
            .get("jobs")
            .is_some_and(|s| s.in_flight == 40)
    })
    .await;
    child.kill().await;

    let mut idem_ok = 0;
    let mut once_ok = 0;
    let mut once_lost = 0;
    for call in calls {
        // None hang: every call ends well within the bound.
        let (method, result) = within(Duration::from_secs(10), "a call after the kill", call)
            .await
            .expect("call task");
        match (method, result) {
            ("jobs.idem", Ok(worker)) => {
                assert_eq!(
                    worker, "parent",
                    "an idempotent call finishes on the survivor"
                );
                idem_ok += 1;
            }
            ("jobs.once", Ok(_)) => once_ok += 1,
            ("jobs.once", Err(e)) if e.is_peer_lost() => {
                assert!(e.to_string().contains("lost"), "{e}");
                once_lost += 1;
            }
            (method, Err(e)) => panic!("{method} failed unexpectedly: {e}"),
            (method, Ok(_)) => panic!("unexpected method {method}"),
        }
    }
    println!("idempotent ok {idem_ok}; others ok {once_ok}, PeerLost {once_lost}");
    assert_eq!(idem_ok, 20, "every idempotent call succeeds");
    assert_eq!(once_ok + once_lost, 20);
    assert!(once_lost > 0, "calls running on the killed worker fail");
    let stats = device.stats();
    let jobs = &stats.services["jobs"];
    assert_eq!(jobs.failed, once_lost as u64, "{stats:?}");
    assert!(jobs.redispatched > 0, "{stats:?}");
    assert_eq!((jobs.workers, stats.workers_lost), (1, 1), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_is_declared_dead_by_heartbeats_and_comes_back() {
    let device = start_device(fast()).await;
    let child = ChildWorker::spawn(device.backend()).await;
    wait_workers(&device, 1).await;
    let client = client_of(&device);

    let once = tokio::spawn({
        let client = client.clone();
        async move { client.call::<String>("jobs.once", (3_000u64,)).await }
    });
    let idem = tokio::spawn({
        let client = client.clone();
        async move { client.call::<String>("jobs.idem", (300u64,)).await }
    });
    eventually(NET_TIMEOUT, "2 calls running", || {
        device.stats().open_calls == 2
    })
    .await;

    // A stopped process keeps its TCP connection: only heartbeats reveal it.
    child.signal("STOP");
    let frozen = Instant::now();
    let lost = within(
        Duration::from_secs(5),
        "the frozen worker's call to fail",
        once,
    )
    .await
    .expect("call task");
    println!(
        "frozen worker detected after {:?} (worker heartbeat {HB:?})",
        frozen.elapsed()
    );
    assert!(matches!(&lost, Err(e) if e.is_peer_lost()), "{lost:?}");

    // The idempotent call waits in the queue for a worker and runs on the next one.
    let _rescuer = start_worker(device.backend(), "rescuer", vec![jobs("rescuer")], None).await;
    let rerun = within(Duration::from_secs(5), "the idempotent call", idem)
        .await
        .expect("call task");
    assert_eq!(rerun.expect("re-run succeeds"), "rescuer");

    // Thawed, the old worker is told to start over and announces itself again.
    child.signal("CONT");
    wait_workers(&device, 2).await;
    child.kill().await;
}

// ---------------------------------------------------------------------------------------------
// Device restart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reregister_and_clients_recover_after_a_device_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let frontend = format!("ipc://{}/front.sock", dir.path().display());
    let backend = format!("ipc://{}/back.sock", dir.path().display());
    let device = start_device_at(&frontend, &backend, "d1", fast()).await;
    let _worker = start_worker(&backend, "w", vec![zmesh_echo::service()], None).await;
    wait_workers(&device, 1).await;
    let client = client_of(&device);
    let reply: String = net("call before restart", client.call("echo.upper", ("a",)))
        .await
        .expect("call succeeds");
    assert_eq!(reply, "A");

    net("device shutdown", device.shutdown()).await;
    let device = start_device_at(&frontend, &backend, "d2", fast()).await;
    wait_workers(&device, 1).await;

    // The client notices the old connection died and reconnects on its next calls.
    let recovered = within(NET_TIMEOUT, "a call after restart", async {
        loop {
            match client.call::<String>("echo.upper", ("b",)).await {
                Ok(reply) => return reply,
                Err(e) => {
                    assert!(
                        e.is_peer_lost() || matches!(e, CallError::Connect { .. }),
                        "only connection errors while the device restarts: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
    .await;
    assert_eq!(recovered, "B");
    let name: String = net("name", client.call("_zerorpc_name", ()))
        .await
        .expect("name");
    assert_eq!(name, "d2", "the client talks to the new device");
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_overloaded_at_once_and_unknown_methods_are_name_errors() {
    let device = start_device(fast().max_queue(2)).await;
    let _worker = start_worker(device.backend(), "w", vec![zmesh_echo::service()], Some(1)).await;
    wait_workers(&device, 1).await;
    let client = client_of(&device);

    // One running, two queued: the service is full.
    let mut sleepers = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        sleepers.push(tokio::spawn(async move {
            client.call::<u64>("echo.sleep", (1_000u64,)).await
        }));
    }
    eventually(NET_TIMEOUT, "1 running and 2 queued", || {
        device
            .stats()
            .services
            .get("echo")
            .is_some_and(|s| s.in_flight == 1 && s.queued == 2)
    })
    .await;
    let refused = net(
        "overloaded call",
        client.call::<String>("echo.upper", ("x",)),
    )
    .await;
    let e = refused.expect_err("the queue is full");
    assert_eq!(remote_name(&e), Some("Overloaded"), "{e}");
    assert!(
        sleepers.iter().all(|s| !s.is_finished()),
        "refused while the queue was still full, not after waiting"
    );

    let unknown = net(
        "unknown service",
        client.call::<String>("nosuch.method", ()),
    )
    .await;
    let e = unknown.expect_err("nobody serves it");
    assert_eq!(remote_name(&e), Some("NameError"), "{e}");

    for sleeper in sleepers {
        let ms = within(Duration::from_secs(10), "queued calls", sleeper)
            .await
            .expect("task")
            .expect("queued calls run in turn");
        assert_eq!(ms, 1_000);
    }
    let stats = device.stats();
    assert_eq!(stats.services["echo"].overloaded, 1);
    assert_eq!(stats.unknown_method, 1);
}

// ---------------------------------------------------------------------------------------------
// Streams, long calls and cancels
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_long_calls_and_cancels_pass_through_the_device() {
    let device = start_device(fast()).await;
    let worker = start_worker(device.backend(), "w", vec![zmesh_echo::service()], None).await;
    wait_workers(&device, 1).await;
    let client = Client::with_config(
        device.frontend(),
        ClientConfig::default().heartbeat(HB).stream_window(8),
    );

    // 2,000 items under an 8-item credit window: `_zpc_more` must reach the worker.
    let mut stream = net(
        "stream start",
        client.call_stream::<u64>("echo.count", (2_000u64,)),
    )
    .await
    .expect("stream starts");
    let mut expected = 0u64;
    while let Some(item) = net("stream item", stream.next()).await {
        assert_eq!(item.expect("item"), expected);
        expected += 1;
    }
    assert_eq!(expected, 2_000);

    // 20 heartbeat periods: both legs are kept alive by heartbeats.
    let slept: u64 = within(
        Duration::from_secs(20),
        "a long call",
        client.call("echo.sleep", (2_000u64,)),
    )
    .await
    .expect("a long call survives through the device");
    assert_eq!(slept, 2_000);

    // A stream dropped early is cancelled at the worker.
    let mut stream = net(
        "stream start",
        client.call_stream::<u64>("echo.count", (1_000_000u64,)),
    )
    .await
    .expect("stream starts");
    net("first item", stream.next())
        .await
        .expect("item")
        .expect("ok");
    drop(stream);
    eventually(
        NET_TIMEOUT,
        "the cancelled stream to end everywhere",
        || device.stats().open_calls == 0 && worker.stats().in_flight == 0,
    )
    .await;
    assert!(worker.stats().cancelled >= 1);
}

// ---------------------------------------------------------------------------------------------
// Stock Python zerorpc client
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_zerorpc_client_calls_through_the_device() {
    // zerorpc's default 5 s heartbeats everywhere, as a Python deployment would have.
    let device = start_device(DeviceConfig::default()).await;
    let worker = Node::builder()
        .name("echo")
        .worker_of(device.backend())
        .service(zmesh_echo::service())
        .export_unprefixed("echo")
        .start();
    let _worker = net("worker start", worker).await.expect("worker starts");
    wait_workers(&device, 1).await;

    let limit = Duration::from_secs(60);
    let endpoint = device.frontend();
    let line = zerorpc_venv::py_check(endpoint, "upper", limit).await;
    assert!(line.contains(r#""echo.upper": "HI""#), "{line}");
    zerorpc_venv::py_check(endpoint, "echo", limit).await;
    zerorpc_venv::py_check(endpoint, "fail", limit).await;
    zerorpc_venv::py_check(endpoint, "unknown_via_device", limit).await;
    // 1,000 items to a slow consumer: credit flows from the stock client to the worker.
    let line = zerorpc_venv::py_check(endpoint, "stream_slow", limit).await;
    assert!(line.contains(r#""items": 1000"#), "{line}");
    zerorpc_venv::py_check(endpoint, "list", limit).await;
    zerorpc_venv::py_check(endpoint, "introspection", limit).await;
    // 20 s: the stock client drops a server silent for ~15 s, so the device must heartbeat.
    let line = zerorpc_venv::py_check(endpoint, "long_call", Duration::from_secs(90)).await;
    assert!(line.contains(r#""sleep": 20000"#), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Event forwarder
// ---------------------------------------------------------------------------------------------

fn event(name: &str, n: u64) -> Bytes {
    let args = rmp_serde::to_vec(&(n,)).expect("encodes");
    wire::encode_event(&Header::zmesh(None), name, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarder_passes_events_from_every_publisher_to_subscribers() {
    let device = net(
        "device start",
        Device::builder()
            .frontend("tcp://127.0.0.1:0")
            .backend("tcp://127.0.0.1:0")
            .events("tcp://127.0.0.1:0", "tcp://127.0.0.1:0")
            .start(),
    )
    .await
    .expect("device starts");
    let (events_in, events_out) = device.events().expect("forwarder runs");

    let mut subscriber = SubSocket::new();
    net("sub connect", subscriber.connect(events_out))
        .await
        .expect("connects");
    subscriber.subscribe("").await.expect("subscribes");
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let mut publisher = PubSocket::new();
        net("pub connect", publisher.connect(events_in))
            .await
            .expect("connects");
        publishers.push(publisher);
    }

    // Subscriptions travel subscriber -> device -> publishers; publish until one arrives.
    for (p, publisher) in publishers.iter_mut().enumerate() {
        let name = format!("ready{p}");
        within(
            NET_TIMEOUT,
            "the subscription to reach a publisher",
            async {
                loop {
                    publisher
                        .send(ZmqMessage::from(event(&name, 0)))
                        .await
                        .expect("publishes");
                    let got =
                        tokio::time::timeout(Duration::from_millis(50), subscriber.recv()).await;
                    if let Ok(Ok(message)) = got {
                        let frame = message.into_vec().pop().expect("one frame");
                        if wire::decode_event(&frame).expect("decodes").name == name {
                            return;
                        }
                    }
                }
            },
        )
        .await;
    }

    // Numbered events from both publishers arrive unchanged and in order per publisher.
    let mut sent = Vec::new();
    for n in 0..100u64 {
        for (p, publisher) in publishers.iter_mut().enumerate() {
            let frame = event(&format!("tick{p}"), n);
            publisher
                .send(ZmqMessage::from(frame.clone()))
                .await
                .expect("publishes");
            sent.push(frame);
        }
    }
    let mut received = [Vec::new(), Vec::new()];
    within(NET_TIMEOUT, "200 forwarded events", async {
        while received[0].len() + received[1].len() < 200 {
            let frame = subscriber
                .recv()
                .await
                .expect("receives")
                .into_vec()
                .pop()
                .expect("one frame");
            let decoded = wire::decode_event(&frame).expect("a zerorpc event");
            match decoded.name.as_ref() {
                "tick0" => received[0].push(frame),
                "tick1" => received[1].push(frame),
                _ => {} // a late "ready" probe
            }
        }
    })
    .await;
    for (p, got) in received.iter().enumerate() {
        let expected: Vec<&Bytes> = sent.iter().skip(p).step_by(2).collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), expected, "publisher {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_can_wait_until_a_worker_serves_its_service() {
    let device = start_device(fast()).await;
    let err = device
        .wait_for_workers("work", 1, Duration::from_millis(50))
        .await
        .expect_err("no worker yet");
    assert_eq!(
        err,
        zmesh::WaitError::TimedOut {
            waited_for: "workers for \"work\"".into(),
            wanted: 1,
            seen: 0
        }
    );
    let counter = Arc::new(AtomicU64::new(0));
    let _worker = start_worker(
        device.backend(),
        "w1",
        vec![counted("w1", Duration::ZERO, counter.clone())],
        None,
    )
    .await;
    let seen = net(
        "worker registers",
        device.wait_for_workers("work", 1, Duration::from_secs(10)),
    )
    .await
    .expect("the worker registers");
    assert_eq!(seen, 1);
    // The call right after the wait reaches the worker, rather than NameError.
    let (worker, x): (String, u64) = net("call", client_of(&device).call("work.job", (7,)))
        .await
        .expect("the worker answers");
    assert_eq!((worker.as_str(), x), ("w1", 7));
    assert_eq!(counter.load(Ordering::Relaxed), 1);
}

/// Deployed `zmesh stats` and tooling call the device's former stats name: it still answers,
/// with the same figures as `_zmesh.device_stats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_device_stats_name_still_answers() {
    let device = start_device(fast()).await;
    let _worker = start_worker(device.backend(), "w", vec![jobs("w")], None).await;
    wait_workers(&device, 1).await;
    let client = client_of(&device);
    let new: DeviceStats = net("stats", client.call(zmesh::reserved::DEVICE_STATS, ()))
        .await
        .expect("_zmesh.device_stats answers");
    let legacy: DeviceStats = net(
        "legacy stats",
        client.call(zmesh::reserved::LEGACY_DEVICE_STATS, ()),
    )
    .await
    .expect("_zmesh_device_stats answers");
    assert_eq!(new.workers, 1);
    assert_eq!(legacy.workers, new.workers);
    let names = |stats: &DeviceStats| {
        let mut names: Vec<String> = stats.services.keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(names(&legacy), names(&new));
    assert_eq!(STATS_METHOD, zmesh::reserved::DEVICE_STATS);
}

/// A worker with events hosts `_zmesh.snapshot`, one of zmesh's reserved names: it does not
/// announce it (the device would refuse the whole announcement), so it registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_events_registers_without_announcing_zmesh_methods() {
    let device = start_device(fast()).await;
    let publisher = net("publisher", zmesh::Publisher::bind("tcp://127.0.0.1:0"))
        .await
        .expect("binds");
    let worker = net(
        "worker start",
        Node::builder()
            .name("w")
            .worker_of(device.backend())
            .service(jobs("w"))
            .publisher(publisher)
            .config(NodeConfig::default().heartbeat(HB))
            .start(),
    )
    .await
    .expect("worker starts");
    wait_workers(&device, 1).await;
    assert_eq!(
        device.stats().methods,
        2,
        "jobs.idem and jobs.once: {:?}",
        device.stats()
    );
    drop(worker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_refuses_an_invalid_endpoint_before_binding() {
    let err = net(
        "start",
        Device::builder()
            .frontend("tcp://127.0.0.1:0")
            .backend("127.0.0.1:4243")
            .start(),
    )
    .await
    .expect_err("no scheme");
    assert!(
        matches!(
            &err,
            zmesh::device::DeviceError::InvalidEndpoint {
                endpoint,
                source: zmesh::EndpointError::NoScheme,
            } if endpoint == "127.0.0.1:4243"
        ),
        "{err:?}"
    );
}
