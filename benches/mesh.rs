//! A call through the service-level [`MeshClient`] against a direct [`Client`] call and a raw
//! `zeromq` DEALER -> ROUTER echo, measured in one run so the ratios mean something.
//!
//! Group `mesh_tcp_64B`, all sequential round trips of a 64-byte payload over TCP loopback:
//! - `raw`: the `zeromq` crate alone, `["", payload]` echoed by a ROUTER;
//! - `direct`: `Client::call("echo.echo", ..)` to the node's endpoint;
//! - `mesh_idempotent`: `MeshClient::call("echo.echo", ..)`, resolved through discovery,
//!   the method advertised as idempotent (the plain path: pick a peer, call);
//! - `mesh_non_idempotent`: the same call marked not idempotent, so it carries a
//!   `zmesh_request_id` and the node keeps its reply in the reply cache.
//!
//! The node and the raw ROUTER each run on their own OS thread with a `current_thread`
//! runtime; the client side runs on criterion's `current_thread` runtime. In benchmark mode
//! the client thread is pinned to CPU 0 and the servers to CPU 1 (as `benches/rpc.rs`;
//! `ZMESH_BENCH_PIN=off` disables it). After criterion, an interleaved check alternates
//! blocks of direct and mesh calls on the same connections ([`ROUNDS`] rounds of [`BLOCK`]
//! calls), times every call and prints p50/p99 ratios, which are robust to the run-to-run
//! swings of a small VM.
//!
//! ```text
//! cargo bench --bench mesh
//! ```

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use rmpv::Value;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::mesh::{DiscoveryConfig, MeshCallOptions, MeshClient, MeshClientConfig, MeshNode};
use zmesh::{Client, Discovery};
use zmesh_bench::affinity::set_thread_affinity;
use zmesh_bench::{Flavour, Order, ServerThread, drive, micros, raw};

/// Payload bytes.
const PAYLOAD: usize = 64;
/// Rounds of the interleaved check.
const ROUNDS: u64 = 30;
/// Calls per side and round of the interleaved check.
const BLOCK: u64 = 300;
/// Upper bound on setup steps and single calls; a stuck peer fails the bench.
const DEADLINE: Duration = Duration::from_secs(10);

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let pin = bench_mode && std::env::var("ZMESH_BENCH_PIN").as_deref() != Ok("off");
    let mut criterion = Criterion::default()
        // No HTML plots (criterion is built without plotters): its terminal report stays.
        .without_plots()
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50)
        .configure_from_args();
    if pin {
        set_thread_affinity("0");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    let server_cpu = pin.then_some(1);
    let node = ServerThread::spawn(
        "zmesh-bench-mesh-node",
        Flavour::CurrentThread,
        server_cpu,
        DEADLINE,
        |ready, stop| async move {
            let mut service = zmesh_echo::service();
            service
                .mark_idempotent(["echo"])
                .expect("the echo service has echo");
            let node = MeshNode::builder("bench")
                .bind("tcp://127.0.0.1:0")
                .service(service)
                .start()
                .await
                .expect("mesh node starts");
            let _ = ready.send(node.node().endpoint().to_owned());
            let _ = stop.await;
        },
    )
    .expect("the mesh node starts");
    let raw = ServerThread::spawn(
        "zmesh-bench-raw-router",
        Flavour::CurrentThread,
        server_cpu,
        DEADLINE,
        |ready, stop| async move {
            let (endpoint, echo) = raw::echo("tcp://127.0.0.1:0").await.expect("raw bind");
            let _ = ready.send(endpoint);
            tokio::select! {
                () = echo => {}
                _ = stop => {}
            }
        },
    )
    .expect("the raw echo starts");

    let payload = Value::Binary(vec![7u8; PAYLOAD]);
    let raw_payload = Bytes::from(vec![7u8; PAYLOAD]);
    let (direct, mesh, mut dealer) = rt.block_on(async {
        let direct = Client::new(node.endpoint().to_owned());
        let discovery = Discovery::start(
            DiscoveryConfig::new("bench")
                .seed(node.endpoint().to_owned())
                .gossip_interval(Duration::from_millis(100)),
        )
        .await
        .expect("discovery");
        let mesh = MeshClient::new(discovery, MeshClientConfig::default());
        bounded(async {
            while mesh.live_peers("echo").is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let mut dealer = DealerSocket::new();
        bounded(dealer.connect(raw.endpoint()))
            .await
            .expect("raw connect");
        // Warm every path once, and check they answer what they should.
        assert_eq!(direct_call(&direct, &payload).await, payload);
        assert_eq!(mesh_call(&mesh, &payload, true).await, payload);
        assert_eq!(mesh_call(&mesh, &payload, false).await, payload);
        assert_eq!(raw_call(&mut dealer, &raw_payload).await.len(), 2);
        (direct, mesh, dealer)
    });

    {
        let mut group = criterion.benchmark_group("mesh_tcp_64B");
        group.bench_function("raw", |b| {
            b.iter(|| rt.block_on(raw_call(&mut dealer, &raw_payload)));
        });
        group.bench_function("direct", |b| {
            b.to_async(&rt).iter(|| direct_call(&direct, &payload));
        });
        group.bench_function("mesh_idempotent", |b| {
            b.to_async(&rt).iter(|| mesh_call(&mesh, &payload, true));
        });
        group.bench_function("mesh_non_idempotent", |b| {
            b.to_async(&rt).iter(|| mesh_call(&mesh, &payload, false));
        });
        group.finish();
    }
    criterion.final_summary();

    // Interleaved check; short under `cargo test --benches`.
    let (rounds, block) = if bench_mode { (ROUNDS, BLOCK) } else { (2, 20) };
    // The order rotates each round so no side always follows the same one.
    let times = rt.block_on(drive::interleaved(
        4,
        rounds,
        block,
        Order::Rotate,
        async |side| match side {
            0 => {
                black_box(raw_call(&mut dealer, &raw_payload).await);
            }
            1 => {
                black_box(direct_call(&direct, &payload).await);
            }
            2 => {
                black_box(mesh_call(&mesh, &payload, true).await);
            }
            _ => {
                black_box(mesh_call(&mesh, &payload, false).await);
            }
        },
    ));
    let p = |side: usize, q: f64| times[side].at_quantile(q);
    let us = micros;
    println!(
        "\nbench mesh: interleaved check, {rounds} rounds x {block} calls per side ({}):",
        if pin {
            "client CPU 0, servers CPU 1"
        } else {
            "unpinned"
        }
    );
    println!("| case | p50 us | p99 us | p50 / direct | p99 / direct | p50 / raw |");
    println!("|---|---|---|---|---|---|");
    for (side, name) in [
        (0, "raw zeromq"),
        (1, "direct Client"),
        (2, "MeshClient, idempotent"),
        (3, "MeshClient, non-idempotent (request id + reply cache)"),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.2}x | {:.2}x | {:.2}x |",
            us(p(side, 0.5)),
            us(p(side, 0.99)),
            us(p(side, 0.5)) / us(p(1, 0.5)),
            us(p(side, 0.99)) / us(p(1, 0.99)),
            us(p(side, 0.5)) / us(p(0, 0.5)),
        );
    }
    let ratio = us(p(2, 0.5)) / us(p(1, 0.5));
    println!(
        "mesh/direct p50 {ratio:.2}x (target <= 1.10x): {}",
        if ratio <= 1.10 { "met" } else { "NOT met" }
    );
    drop((mesh, direct, dealer));
    drop(rt);
    drop((node, raw));
}

async fn direct_call(client: &Client, value: &Value) -> Value {
    bounded(client.call("echo.echo", (value,)))
        .await
        .expect("direct call")
}

async fn mesh_call(client: &MeshClient, value: &Value, idempotent: bool) -> Value {
    let options = MeshCallOptions::timeout(DEADLINE).idempotent(idempotent);
    bounded(client.call_with("echo.echo", (value,), options))
        .await
        .expect("mesh call")
}

async fn raw_call(dealer: &mut DealerSocket, payload: &Bytes) -> ZmqMessage {
    let mut request = ZmqMessage::from(Bytes::new());
    request.push_back(payload.clone());
    bounded(dealer.send(request)).await.expect("raw send");
    bounded(dealer.recv()).await.expect("raw recv")
}

async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .expect("bench step exceeded its deadline")
}
