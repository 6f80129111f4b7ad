//! The cost of the mesh key through the proxy device: p50 of a sequential 64 B `echo.echo`
//! call client -> device -> worker over TCP loopback, without a key and with an encrypting
//! key, measured interleaved (blocks of calls of each kind alternate on the same
//! connections) so both see the same machine state; only the ratio is meant to be compared.
//!
//! ```text
//! cargo bench --bench trust_device
//! ```

use std::time::{Duration, Instant};

use zmesh::device::Device;
use zmesh::{Client, ClientConfig, MeshKey, Node, NodeConfig};
use zmesh_bench::{Order, drive, micros};

/// Rounds of the interleaved measurement.
const ROUNDS: u64 = 20;
/// Calls per kind per round.
const BLOCK: u64 = 200;
/// Upper bound on one call or start; a peer that stops answering fails the bench.
const DEADLINE: Duration = Duration::from_secs(10);
const SECRET: &str = "a benchmark mesh key of 32 bytes";

/// A device with one worker, and a client of it, all with `key` or all without.
struct Setup {
    device: Device,
    worker: Node,
    client: Client,
}

async fn setup(key: Option<MeshKey>) -> Setup {
    let mut device = Device::builder()
        .frontend("tcp://127.0.0.1:0")
        .backend("tcp://127.0.0.1:0");
    let mut worker = Node::builder()
        .service(zmesh_echo::service())
        .config(NodeConfig::default());
    let mut config = ClientConfig::default();
    if let Some(key) = &key {
        device = device.mesh_key(key.clone());
        worker = worker.mesh_key(key.clone());
        config = config.mesh_key(key.clone());
    }
    let device = tokio::time::timeout(DEADLINE, device.start())
        .await
        .expect("device start in time")
        .expect("device starts");
    let worker = tokio::time::timeout(DEADLINE, worker.worker_of(device.backend()).start())
        .await
        .expect("worker start in time")
        .expect("worker starts");
    let started = Instant::now();
    while device.stats().workers == 0 {
        assert!(started.elapsed() < DEADLINE, "worker did not register");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = Client::with_config(device.frontend(), config);
    Setup {
        device,
        worker,
        client,
    }
}

async fn call(client: &Client, payload: &str) {
    let reply: String = tokio::time::timeout(DEADLINE, client.call("echo.echo", (payload,)))
        .await
        .expect("call in time")
        .expect("call succeeds");
    assert_eq!(reply.len(), payload.len());
}

fn main() {
    // `cargo test --all-targets` runs benches once without `--bench`: keep that cheap.
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let (rounds, block) = if bench_mode { (ROUNDS, BLOCK) } else { (1, 5) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let key = MeshKey::from_secret(SECRET).expect("long enough");
        let setups = [setup(None).await, setup(Some(key)).await];
        let payload = "x".repeat(64);
        for s in &setups {
            for _ in 0..block {
                call(&s.client, &payload).await;
            }
        }
        let times = drive::interleaved(2, rounds, block, Order::Fixed, async |i| {
            call(&setups[i].client, &payload).await;
        })
        .await;
        let (unkeyed, keyed) = (times[0].p50(), times[1].p50());
        println!(
            "device, 64 B echo, {rounds} rounds x {block} calls: p50 unkeyed {:.1} us, keyed (encrypted) {:.1} us, ratio {:.2}x",
            micros(unkeyed),
            micros(keyed),
            keyed.as_secs_f64() / unkeyed.as_secs_f64()
        );
        for s in setups {
            s.worker.shutdown(Duration::from_secs(1)).await;
            s.device.shutdown().await;
        }
    });
}
