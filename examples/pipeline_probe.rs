//! Runs a fixed number of pipelined calls (128 in flight unless a third argument says how
//! many; 1 makes back-to-back round trips, as the latency bench does; 64-byte payload, one
//! tcp loopback connection, or an ipc socket when a fourth argument says `ipc`) through zmesh or through a raw `zeromq` DEALER/ROUTER echo,
//! server and client each on its own thread with a `current_thread` runtime, for counting
//! instructions per call with callgrind (repeatable on a busy machine, unlike wall time):
//!
//! ```text
//! cargo build --release --example pipeline_probe
//! for n in 5000 25000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.zmesh.$n \
//!     target/release/examples/pipeline_probe zmesh $n
//! done
//! # instructions per call = (total(25000) - total(5000)) / 20000: set-up cancels out
//! ```
//!
//! It also prints the wall-clock rate, which under valgrind means nothing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rmpv::Value;
use tokio::sync::oneshot;
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::{Client, Node};

/// Calls in flight by default.
const WINDOW: usize = 128;
/// Payload bytes.
const PAYLOAD: usize = 64;
/// Upper bound on the whole run; a server that stops answering fails it.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "zmesh".into());
    let calls: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let window: usize = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(WINDOW)
        .max(1);
    // A fourth argument `ipc` binds an ipc socket in a temporary directory instead of tcp.
    let ipc_dir = match args.next().as_deref() {
        Some("ipc") => Some(tempfile::tempdir().expect("cannot create a temporary directory")),
        _ => None,
    };
    let bind = match &ipc_dir {
        Some(dir) => format!("ipc://{}/probe.sock", dir.path().display()),
        None => "tcp://127.0.0.1:0".to_owned(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server_kind = kind.clone();
    let server = std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async move {
            match server_kind.as_str() {
                "raw" => raw_server(&bind, ready_tx, stop_rx).await,
                _ => {
                    let node = Node::builder()
                        .bind(bind)
                        .service(zmesh_echo::service())
                        .start()
                        .await
                        .expect("cannot start the node");
                    let _ = ready_tx.send(node.endpoint().to_owned());
                    let _ = stop_rx.await;
                    node.shutdown(Duration::from_secs(1)).await;
                }
            }
        });
    });
    let endpoint = ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the server did not start");
    let rt = runtime();
    let started = Instant::now();
    rt.block_on(async {
        let run = async {
            match kind.as_str() {
                "raw" => raw_client(&endpoint, calls, window).await,
                _ => zmesh_client(&endpoint, calls, window).await,
            }
        };
        tokio::time::timeout(RUN_DEADLINE, run)
            .await
            .expect("the run did not finish in time");
    });
    let elapsed = started.elapsed();
    let _ = stop_tx.send(());
    server.join().expect("the server thread panicked");
    println!(
        "{kind}: {calls} calls in {elapsed:?} ({:.0} calls/s)",
        calls as f64 / elapsed.as_secs_f64()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a runtime")
}

async fn zmesh_client(endpoint: &str, calls: usize, window: usize) {
    let client = Client::new(endpoint);
    let value = Value::Binary(vec![7u8; PAYLOAD]);
    if window == 1 {
        // Back-to-back, as the latency bench calls (no stream combinator in between).
        for _ in 0..calls {
            let reply: Value = client
                .call("echo.echo", (&value,))
                .await
                .expect("a call failed");
            assert_eq!(reply, value);
        }
        return;
    }
    let done = futures::stream::iter(0..calls)
        .map(|_| {
            let client = &client;
            let value = &value;
            async move {
                let reply: Value = client
                    .call("echo.echo", (value,))
                    .await
                    .expect("a call failed");
                assert_eq!(&reply, value);
            }
        })
        .buffer_unordered(window)
        .count()
        .await;
    assert_eq!(done, calls);
}

async fn raw_server(
    bind: &str,
    ready: std::sync::mpsc::Sender<String>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut router = RouterSocket::new();
    let endpoint = router.bind(bind).await.expect("cannot bind");
    let _ = ready.send(endpoint.to_string());
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut stop => return,
            message = router.recv() => message,
        };
        match message {
            Ok(message) => {
                if router.send(message).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

async fn raw_client(endpoint: &str, calls: usize, window: usize) {
    let mut dealer = DealerSocket::new();
    dealer.connect(endpoint).await.expect("cannot connect");
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let request = || {
        let mut message = ZmqMessage::from(Bytes::new());
        message.push_back(payload.clone());
        message
    };
    let mut sent = 0;
    let mut received = 0;
    while sent < window.min(calls) {
        dealer.send(request()).await.expect("send failed");
        sent += 1;
    }
    while received < calls {
        let reply = dealer.recv().await.expect("recv failed");
        assert_eq!(reply.get(1), Some(&payload));
        received += 1;
        if sent < calls {
            dealer.send(request()).await.expect("send failed");
            sent += 1;
        }
    }
}
