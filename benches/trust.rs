//! The cost of the mesh key: sealing and opening one frame (`envelope_*` groups), and per-call latency of a sequential `echo.echo` call with no key,
//! with an authenticating key (`encrypt(false)`) and with an encrypting key, over TCP
//! loopback, for 64 B and 4 KiB payloads.
//!
//! Each node runs on its own OS thread with a `current_thread` runtime (pinned to CPU 1 in
//! benchmark mode), the client on criterion's `current_thread` runtime (CPU 0), as in
//! `benches/rpc.rs`. After criterion, an interleaved check alternates blocks of calls of the
//! three kinds on the same connections for [`PAIRED_ROUNDS`] rounds, timing every call, and
//! prints p50/p99 per kind and the keyed/unkeyed p50 ratios: ratios measured in one run on
//! shared machine state are what to compare, not absolute times.
//!
//! ```text
//! cargo bench --bench trust
//! ```

use zmesh_bench::affinity::pin_current_thread;
use zmesh_bench::{Order, drive, micros};

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use zmesh::{Client, ClientConfig, MeshKey, Node};
use zmesh_proto::seal::envelope;

/// Payload sizes: (label, bytes).
const PAYLOADS: [(&str, usize); 2] = [("64B", 64), ("4KiB", 4096)];
/// Rounds of the interleaved check.
const PAIRED_ROUNDS: u64 = 40;
/// Calls per kind per round of the interleaved check.
const PAIRED_BLOCK: u64 = 250;
/// Upper bound on one call; a peer that stops answering fails the bench instead of hanging.
const CALL_DEADLINE: Duration = Duration::from_secs(10);
const SECRET: &str = "a benchmark mesh key of 32 bytes";

/// The three configurations compared.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Unkeyed,
    Authenticated,
    Encrypted,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Unkeyed, Kind::Authenticated, Kind::Encrypted];

    fn label(self) -> &'static str {
        match self {
            Kind::Unkeyed => "unkeyed",
            Kind::Authenticated => "keyed_auth",
            Kind::Encrypted => "keyed_encrypted",
        }
    }

    fn key(self) -> Option<MeshKey> {
        let key = MeshKey::from_secret(SECRET).expect("long enough");
        match self {
            Kind::Unkeyed => None,
            Kind::Authenticated => Some(key.encrypt(false)),
            Kind::Encrypted => Some(key),
        }
    }
}

/// A node on its own thread and runtime; stopped when dropped.
struct Server {
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(kind: Kind, pin: bool) -> Self {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            if pin {
                pin_current_thread(1);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let mut builder = Node::builder()
                    .bind("tcp://127.0.0.1:0")
                    .service(zmesh_echo::service());
                if let Some(key) = kind.key() {
                    builder = builder.mesh_key(key);
                }
                let node = builder.start().await.expect("node starts");
                let _ = ready_tx.send(node.endpoint().to_owned());
                let _ = stop_rx.await;
                node.shutdown(Duration::from_secs(1)).await;
            });
        });
        let endpoint = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        Self {
            endpoint,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn client_for(kind: Kind, endpoint: &str) -> Client {
    let mut config = ClientConfig::default();
    config.mesh_key = kind.key();
    Client::with_config(endpoint, config)
}

async fn call(client: &Client, payload: &Bytes) {
    let reply = tokio::time::timeout(
        CALL_DEADLINE,
        client
            .call::<serde_bytes_like::Raw>("echo.echo", (serde_bytes_like::Raw(payload.to_vec()),)),
    )
    .await
    .expect("call within its deadline")
    .expect("call succeeds");
    black_box(reply);
}

/// A payload sent as msgpack bin.
mod serde_bytes_like {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Debug)]
    pub(crate) struct Raw(pub(crate) Vec<u8>);

    impl Serialize for Raw {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Raw {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = rmpv::Value::deserialize(d)?;
            Ok(Raw(v.as_slice().map(<[u8]>::to_vec).unwrap_or_default()))
        }
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    if bench_mode {
        pin_current_thread(0);
    }
    let rt: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let mut criterion = Criterion::default()
        // No HTML plots (criterion is built without plotters): its terminal report stays.
        .without_plots()
        .configure_from_args();
    let servers: Vec<(Kind, Server)> = Kind::ALL
        .iter()
        .map(|&k| (k, Server::start(k, bench_mode)))
        .collect();
    let clients: Vec<(Kind, Client)> = servers
        .iter()
        .map(|(k, s)| (*k, client_for(*k, &s.endpoint)))
        .collect();
    // The envelope codec alone: what sealing and opening one frame costs, without sockets.
    let seal_key = envelope::SealKey::derive(SECRET.as_bytes());
    for (label, size) in PAYLOADS {
        let event = vec![0x5a; size];
        let mut group = criterion.benchmark_group(format!("envelope_{label}"));
        for encrypt in [false, true] {
            let params = envelope::SealParams {
                kind: envelope::Kind::Request,
                encrypt,
                timestamp_ms: 1,
                nonce: [1; 12],
                clear_id: &[0xc4, 2, b'i', b'd'],
            };
            let mode = if encrypt { "encrypted" } else { "auth" };
            group.bench_function(format!("seal_{mode}"), |b| {
                b.iter(|| black_box(envelope::seal(&seal_key, &params, black_box(&event))));
            });
            let frame = envelope::seal(&seal_key, &params, &event);
            group.bench_function(format!("open_{mode}"), |b| {
                b.iter(|| {
                    let parsed = envelope::parse(black_box(&frame)).expect("parses");
                    black_box(envelope::open(&seal_key, &frame, &parsed).expect("opens"))
                });
            });
        }
        group.finish();
    }
    for (label, size) in PAYLOADS {
        let payload = Bytes::from(vec![0x5a; size]);
        let mut group = criterion.benchmark_group(format!("mesh_key_tcp_{label}"));
        for (kind, client) in &clients {
            group.bench_function(kind.label(), |b| {
                b.to_async(&rt).iter(|| call(client, &payload));
            });
        }
        group.finish();
        if !bench_mode {
            continue;
        }
        // Interleaved check on the same connections.
        let times = rt.block_on(async {
            for (_, client) in &clients {
                for _ in 0..200 {
                    call(client, &payload).await;
                }
            }
            drive::interleaved(
                clients.len(),
                PAIRED_ROUNDS,
                PAIRED_BLOCK,
                Order::Fixed,
                async |i| call(&clients[i].1, &payload).await,
            )
            .await
        });
        let p50s: Vec<Duration> = times.iter().map(|t| t.p50()).collect();
        println!(
            "\ninterleaved check, {label}, {PAIRED_ROUNDS} rounds x {PAIRED_BLOCK} calls per kind:"
        );
        for (i, (kind, _)) in clients.iter().enumerate() {
            println!(
                "  {:<16} p50 {:>7.1} us  p99 {:>7.1} us  p50 vs unkeyed {:.3}x",
                kind.label(),
                micros(p50s[i]),
                micros(times[i].p99()),
                p50s[i].as_secs_f64() / p50s[0].as_secs_f64()
            );
        }
    }
    drop(clients);
    drop(servers);
    criterion.final_summary();
}
