//! Interop tests against stock Python zerorpc 0.6.3 (PyPI), in both directions:
//!
//! - a stock `zerorpc.Client` (tests/interop/py_client.py, one named check per process)
//!   against a zmesh [`Node`] serving the echo service in this process;
//! - a zmesh [`Client`] against a stock `zerorpc.Server` (tests/interop/py_server.py) run as a
//!   child process.
//!
//! The Python side runs in a virtual environment at `<repo>/.venv-zerorpc` (override with
//! `ZMESH_ZERORPC_VENV`). When its `bin/python` cannot import zerorpc, the venv is built once
//! per test binary with tests/interop/zerorpc-venv.sh (needs `python3` and PyPI); if that
//! fails, every test fails with the build output. Nothing is skipped silently.
//!
//! Everything runs on 127.0.0.1 with default heartbeats (5 s, as zerorpc); the two 20-second
//! calls prove that heartbeats interoperate, since a stock peer drops a silent one after ~15 s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout};
use tokio::time::timeout;
use zmesh::{CallError, CallOptions, Client, ClientConfig, Node, NodeConfig, RemoteError};

#[path = "common/zerorpc_venv.rs"]
mod zerorpc_venv;
use zerorpc_venv::{py_check, python_script};

/// Longest wait for a short Python check process (interpreter and gevent start-up included).
const CHECK_LIMIT: Duration = Duration::from_secs(60);
/// Longest wait for a 20-second call, end to end.
const LONG_CALL_LIMIT: Duration = Duration::from_secs(90);
/// Longest wait for one network operation of the Rust client or node.
const NET_LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Stock Python client -> zmesh node
// ---------------------------------------------------------------------------------------------

/// A node named `echo` serving the echo service, also unprefixed, with the default config.
async fn start_echo_node() -> Node {
    let start = Node::builder()
        .name("echo")
        .bind("tcp://127.0.0.1:0")
        .service(zmesh_echo::service())
        .export_unprefixed("echo")
        .config(NodeConfig::default())
        .start();
    timeout(NET_LIMIT, start)
        .await
        .expect("node start timed out")
        .expect("node failed to start")
}

async fn stop_node(node: Node) {
    timeout(NET_LIMIT, node.shutdown(Duration::from_secs(2)))
        .await
        .expect("node shutdown timed out");
}

/// Runs one check against a fresh echo node and returns the result line.
async fn py_check_against_node(check: &str, limit: Duration) -> String {
    let node = start_echo_node().await;
    let line = py_check(node.endpoint(), check, limit).await;
    stop_node(node).await;
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_plain_call_prefixed_and_unprefixed() {
    let line = py_check_against_node("upper", CHECK_LIMIT).await;
    assert!(line.contains(r#""upper": "HI""#), "{line}");
    assert!(line.contains(r#""echo.upper": "HI""#), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_values_round_trip() {
    // str, bin, ints, float, nil, bool, nested array and map survive the trip unchanged.
    let line = py_check_against_node("echo", CHECK_LIMIT).await;
    assert!(line.contains(r#""size": 1000"#), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_remote_error() {
    let line = py_check_against_node("fail", CHECK_LIMIT).await;
    assert!(
        line.contains(r#""name": "EchoError""#) && line.contains(r#""msg": "x""#),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_unknown_method_is_name_error() {
    let line = py_check_against_node("unknown", CHECK_LIMIT).await;
    assert!(line.contains(r#""name": "NameError""#), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_slow_consumer_stream_respects_credit() {
    // 1,000 items to a consumer that sleeps 2 ms per item: a node that ignored `_zpc_more`
    // credit would overflow the stock client's 100-slot queue and break the stream.
    let line = py_check_against_node("stream_slow", CHECK_LIMIT).await;
    assert!(line.contains(r#""items": 1000"#), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_20s_call_with_default_heartbeats() {
    // The stock client (heartbeat 5 s) declares a silent server lost after ~15 s.
    let line = py_check_against_node("long_call", LONG_CALL_LIMIT).await;
    assert!(line.contains(r#""sleep": 20000"#), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_zerorpc_list() {
    let line = py_check_against_node("list", CHECK_LIMIT).await;
    for name in ["upper", "echo.upper", "count", "echo.count", "sleep"] {
        assert!(line.contains(&format!("\"{name}\"")), "{name}: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_client_introspection_builtins() {
    let line = py_check_against_node("introspection", CHECK_LIMIT).await;
    assert!(line.contains(r#""ping": ["pong", "echo"]"#), "{line}");
    assert!(line.contains(r#""name": "echo""#), "{line}");
}

// ---------------------------------------------------------------------------------------------
// zmesh client -> stock Python server
// ---------------------------------------------------------------------------------------------

/// A stock zerorpc server in a child process, killed when dropped (also on test failure).
struct PyServer {
    endpoint: String,
    stderr: Arc<Mutex<String>>,
    _stdout: BufReader<ChildStdout>,
    _child: Child,
}

impl PyServer {
    async fn start() -> Self {
        let mut child = python_script("py_server.py")
            .await
            .spawn()
            .expect("cannot start py_server.py");
        let stderr = Arc::new(Mutex::new(String::new()));
        // Drain stderr so zerorpc's log lines never fill the pipe; keep them for diagnostics.
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut text = sink.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        let read = timeout(CHECK_LIMIT, stdout.read_line(&mut line)).await;
        let endpoint = match read {
            Ok(Ok(n)) if n > 0 => line.trim().strip_prefix("READY ").map(str::to_owned),
            _ => None,
        };
        let Some(endpoint) = endpoint else {
            // Give the stderr drain a moment to collect the reason the server died.
            let _ = timeout(Duration::from_secs(2), child.wait()).await;
            panic!(
                "py_server.py did not announce its endpoint (read {read:?}, line {line:?})\n\
                 --- stderr ---\n{}",
                stderr.lock().unwrap_or_else(|p| p.into_inner())
            );
        };
        assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
        Self {
            endpoint,
            stderr,
            _stdout: stdout,
            _child: child,
        }
    }

    fn client(&self, config: ClientConfig) -> Client {
        Client::with_config(self.endpoint.clone(), config)
    }

    /// What the server logged so far, for failure messages.
    fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_plain_call() {
    let server = PyServer::start().await;
    let client = server.client(ClientConfig::default());
    let greeting: String = timeout(NET_LIMIT, client.call("hello", ("zmesh",)))
        .await
        .expect("call timed out")
        .unwrap_or_else(|e| panic!("hello failed: {e}\n{}", server.log()));
    assert_eq!(greeting, "Hello, zmesh");

    let methods: Vec<String> = timeout(NET_LIMIT, client.call("_zerorpc_list", ()))
        .await
        .expect("call timed out")
        .unwrap_or_else(|e| panic!("_zerorpc_list failed: {e}\n{}", server.log()));
    assert_eq!(methods, ["boom", "count", "hello", "slow"]);

    let name: String = timeout(NET_LIMIT, client.call("_zerorpc_name", ()))
        .await
        .expect("call timed out")
        .unwrap_or_else(|e| panic!("_zerorpc_name failed: {e}\n{}", server.log()));
    assert_eq!(name, "interop");
}

/// tests/interop/py_server.py's methods as a `#[zmesh::service]` trait: `name = ""` keeps
/// them unprefixed, as a stock zerorpc server's are, so the generated client calls it typed.
#[zmesh::service(name = "")]
trait StockInterop {
    async fn hello(&self, name: String) -> Result<String, zmesh::HandlerError>;
    async fn boom(&self, msg: String) -> Result<(), zmesh::HandlerError>;
    #[zmesh(stream)]
    async fn count(&self, n: u64) -> Result<zmesh::ItemStream<u64>, zmesh::HandlerError>;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_client_of_a_stock_zerorpc_server() {
    let server = PyServer::start().await;
    let stock = StockInteropClient::new(server.client(ClientConfig::default()));
    let greeting = timeout(NET_LIMIT, stock.hello("typed".into()))
        .await
        .expect("call timed out")
        .unwrap_or_else(|e| panic!("hello failed: {e}\n{}", server.log()));
    assert_eq!(greeting, "Hello, typed");
    let counted: Vec<u64> = timeout(NET_LIMIT, async {
        stock
            .count(4)
            .await
            .unwrap_or_else(|e| panic!("count failed: {e}\n{}", server.log()))
            .map(|item| item.expect("an item"))
            .collect()
            .await
    })
    .await
    .expect("stream timed out");
    assert_eq!(counted, [0, 1, 2, 3]);
    match timeout(NET_LIMIT, stock.boom("typed boom".into()))
        .await
        .expect("call timed out")
    {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.name, "ValueError");
            assert_eq!(e.message, "typed boom");
        }
        other => panic!("boom should raise ValueError, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_remote_errors() {
    let server = PyServer::start().await;
    let client = server.client(ClientConfig::default());

    let result = timeout(NET_LIMIT, client.call::<String>("boom", ("bad things",)))
        .await
        .expect("call timed out");
    match result {
        Err(CallError::Remote(RemoteError {
            name,
            message,
            traceback,
        })) => {
            assert_eq!(name, "ValueError");
            assert_eq!(message, "bad things");
            let traceback = traceback.expect("stock zerorpc sends a traceback");
            assert!(traceback.contains("ValueError"), "{traceback}");
        }
        other => panic!("expected ERR ValueError, got {other:?}\n{}", server.log()),
    }

    let result = timeout(NET_LIMIT, client.call::<String>("no_such_method", ()))
        .await
        .expect("call timed out");
    match result {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.name, "NameError");
            assert_eq!(e.message, "no_such_method");
        }
        other => panic!("expected ERR NameError, got {other:?}\n{}", server.log()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_stream_under_credit() {
    let server = PyServer::start().await;
    // A window of 4 makes the stock server stop every few items until we grant more, so
    // this stream needs well over 100 `_zpc_more` grants to complete.
    let client = server.client(ClientConfig::default().stream_window(4));
    let n = 500u64;
    let mut stream = timeout(NET_LIMIT, client.call_stream::<u64>("count", (n,)))
        .await
        .expect("call timed out")
        .unwrap_or_else(|e| panic!("count failed: {e}\n{}", server.log()));
    let mut items = Vec::new();
    while let Some(item) = timeout(NET_LIMIT, stream.next()).await.unwrap_or_else(|_| {
        panic!(
            "stream stalled after {} items (credit not granted?)\n{}",
            items.len(),
            server.log()
        )
    }) {
        items.push(item.unwrap_or_else(|e| panic!("stream item failed: {e}\n{}", server.log())));
    }
    assert_eq!(items, (0..n).collect::<Vec<_>>());

    // The default window, and an empty stream (just STREAM_DONE).
    let client = server.client(ClientConfig::default());
    let stream = timeout(NET_LIMIT, client.call_stream::<u64>("count", (250,)))
        .await
        .expect("call timed out")
        .expect("count(250) failed");
    let items: Vec<u64> = timeout(NET_LIMIT, stream.map(|r| r.expect("item")).collect())
        .await
        .expect("stream stalled");
    assert_eq!(items, (0..250).collect::<Vec<_>>());
    let stream = timeout(NET_LIMIT, client.call_stream::<u64>("count", (0,)))
        .await
        .expect("call timed out")
        .expect("count(0) failed");
    let items: Vec<u64> = timeout(NET_LIMIT, stream.map(|r| r.expect("item")).collect())
        .await
        .expect("stream stalled");
    assert!(items.is_empty(), "{items:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_20s_call_with_default_heartbeats() {
    // The stock server (heartbeat 5 s) kills a call whose client sends no `_zpc_hb` after
    // ~15 s, and then sends nothing at all.
    let server = PyServer::start().await;
    let client = server.client(ClientConfig::default());
    let call =
        client.call_with::<u64>("slow", (20,), CallOptions::timeout(Duration::from_secs(40)));
    let slept = timeout(LONG_CALL_LIMIT, call)
        .await
        .expect("call did not finish")
        .unwrap_or_else(|e| panic!("slow(20) failed: {e}\n{}", server.log()));
    assert_eq!(slept, 20);
}
