//! Shared helpers for the integration tests: nodes on loopback or ipc endpoints in a temp
//! dir, bounded awaits, and a server in a child process that tests can kill and restart.

#![allow(dead_code, unreachable_pub)]

pub mod child_log;

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zmesh::{Node, NodeConfig, Service};

/// Upper bound for any single network await in a test.
pub const NET_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Awaits `fut` within [`NET_TIMEOUT`].
pub async fn net<F: Future>(what: &str, fut: F) -> F::Output {
    within(NET_TIMEOUT, what, fut).await
}

/// Polls `condition` every 10 ms until it holds (for state with no event to await, such as
/// a counter), failing after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    within(limit, what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// The transports every behaviour is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Ipc,
}

pub const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Ipc];

/// An endpoint to bind for a transport: tcp port 0 on loopback, or a socket in `dir`.
pub fn bind_endpoint(transport: Transport, dir: &TempDir, name: &str) -> String {
    match transport {
        Transport::Tcp => "tcp://127.0.0.1:0".to_owned(),
        Transport::Ipc => format!("ipc://{}/{name}.sock", dir.path().display()),
    }
}

/// A node with the echo service (exported unprefixed too) and `extra` services.
pub async fn start_node(
    transport: Transport,
    config: NodeConfig,
    extra: Vec<Service>,
) -> (Node, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut builder = Node::builder()
        .name("echo")
        .bind(bind_endpoint(transport, &dir, "node"))
        .service(zmesh_echo::service())
        .export_unprefixed("echo")
        .config(config);
    for service in extra {
        builder = builder.service(service);
    }
    let node = net("node start", builder.start())
        .await
        .expect("node starts");
    (node, dir)
}

/// Environment variables that turn a test binary into an echo server (see
/// [`serve_if_child`]).
pub const CHILD_ENDPOINT_VAR: &str = "ZMESH_TEST_CHILD_ENDPOINT";
pub const CHILD_HEARTBEAT_VAR: &str = "ZMESH_TEST_CHILD_HEARTBEAT_MS";

/// Starts the node `builder` makes on a 2-thread runtime of its own, on an OS thread of its
/// own, as another process would run it: if the node wedges, the test's own timeouts still
/// fire. Returns its endpoint; the runtime runs until the test process exits.
pub fn node_on_own_runtime(
    builder: impl FnOnce() -> zmesh::NodeBuilder + Send + 'static,
) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let node = builder().start().await.expect("node starts");
            tx.send(node.endpoint().to_owned()).expect("test waits");
            std::future::pending::<()>().await;
        });
    });
    rx.recv_timeout(NET_TIMEOUT).expect("node started")
}

/// Called from a `#[test]` named `child_server_entry`: when the binary was launched by
/// [`spawn_child_server`], serve the echo service forever and print `READY <endpoint>`;
/// otherwise return at once.
pub fn serve_if_child() {
    let Ok(endpoint) = std::env::var(CHILD_ENDPOINT_VAR) else {
        return;
    };
    let heartbeat_ms: u64 = std::env::var(CHILD_HEARTBEAT_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let node = Node::builder()
            .bind(endpoint)
            .service(zmesh_echo::service())
            .config(NodeConfig::default().heartbeat(Duration::from_millis(heartbeat_ms)))
            .start()
            .await
            .expect("child node starts");
        println!("READY {}", node.endpoint());
        // Serve until the parent kills this process.
        std::future::pending::<()>().await;
    });
}

/// An echo server in a child process (this test binary re-run with only
/// `child_server_entry`), so a test can kill it like a crashed host.
pub struct ChildServer {
    pub child: Child,
    pub endpoint: String,
    /// Its stderr, shown only if the test fails.
    _log: child_log::ChildLog,
}

impl ChildServer {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("child still running")
    }

    /// SIGKILL, then reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = net("child exit", self.child.wait()).await;
    }

    /// Sends a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }
}

pub async fn spawn_child_server(endpoint: &str, heartbeat: Duration) -> ChildServer {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "child_server_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENDPOINT_VAR, endpoint)
        .env(CHILD_HEARTBEAT_VAR, heartbeat.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child server spawns");
    let log = child_log::ChildLog::capture(&mut child, "the child server");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = net("child server READY line", async {
        while let Some(line) = lines.next_line().await.expect("child stdout readable") {
            // The test harness prints "test child_server_entry ... " on the same line.
            if let Some((_, endpoint)) = line.split_once("READY ") {
                return endpoint.to_owned();
            }
        }
        panic!("child server exited before it was ready");
    })
    .await;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    ChildServer {
        child,
        endpoint,
        _log: log,
    }
}
