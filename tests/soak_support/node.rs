//! Provides the soak's nodes: an echo node in a child process (this test binary re-run with
//! only `soak_node_entry`), so the soak can SIGKILL and restart it like a crashed host and
//! read its memory from `/proc`, and a scan of its stderr for panics.
//!
//! Every node has a mesh key and two endpoints: the keyed one (well-behaved clients hold
//! the key, the wrong-key class does not) and a plain one that allows unkeyed zerorpc, where
//! the hostile peers that speak plain zerorpc send their traffic.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zmesh::{MeshKey, Node, NodeConfig, Publisher};

/// Environment of a child node: the endpoints to bind and the node's name.
const BIND_VAR: &str = "ZMESH_SOAK_NODE_BIND";
const PLAIN_VAR: &str = "ZMESH_SOAK_NODE_PLAIN";
const NAME_VAR: &str = "ZMESH_SOAK_NODE_NAME";
const EVENTS_VAR: &str = "ZMESH_SOAK_NODE_EVENTS";

/// The node's publisher sends one event of this many bytes every [`TICK_EVERY`], so a
/// subscriber that never reads has a steady stream backing up into the publisher.
pub const TICK_BYTES: usize = 1024;
const TICK_EVERY: Duration = Duration::from_millis(1);

/// The soak mesh's key, and one that is not it.
pub const MESH_SECRET: &str = "zmesh soak mesh key, 32 bytes!!!";
pub const WRONG_SECRET: &str = "not the soak key, also 32 bytes!";

/// A mesh key from a secret of the right length.
pub fn key(secret: &str) -> MeshKey {
    MeshKey::from_secret(secret).expect("soak secrets are long enough")
}

/// The nodes' message size limit: small, so oversized messages are cheap to send.
pub const NODE_LIMIT: usize = 256 * 1024;
/// Heartbeat period of nodes and well-behaved clients.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Bound on starting a child node (it prints `READY` once bound).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The node's settings, shared by every incarnation.
fn node_config() -> NodeConfig {
    NodeConfig::default()
        .heartbeat(HEARTBEAT)
        .max_message_size(NODE_LIMIT)
}

/// Called from the `soak_node_entry` test: when launched by [`SoakNode::spawn`], serve the
/// echo service until killed, printing `READY <endpoint>`; otherwise return at once.
pub fn serve_if_child() {
    let Ok(bind) = std::env::var(BIND_VAR) else {
        return;
    };
    let plain = std::env::var(PLAIN_VAR).expect("plain endpoint set by the parent");
    let name = std::env::var(NAME_VAR).unwrap_or_else(|_| "soak".to_owned());
    let events = std::env::var(EVENTS_VAR).expect("events endpoint set by the parent");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let publisher = Publisher::builder()
            .bind(events)
            .mesh_key(key(MESH_SECRET))
            .start()
            .await
            .expect("soak publisher binds");
        let ticks = publisher.clone();
        tokio::spawn(async move {
            let payload = rmpv::Value::Binary(vec![7u8; TICK_BYTES]);
            let mut every = tokio::time::interval(TICK_EVERY);
            loop {
                every.tick().await;
                let _ = ticks.publish("soak.tick", &payload).await;
            }
        });
        let node = Node::builder()
            .name(name)
            .bind(bind)
            .bind_plain(plain)
            .mesh_key(key(MESH_SECRET))
            .service(zmesh_echo::service())
            .config(node_config())
            .start()
            .await
            .expect("soak node starts");
        println!(
            "READY {} {}",
            node.endpoints().join(" "),
            publisher.endpoint()
        );
        // Serve until the parent kills this process.
        std::future::pending::<()>().await;
    });
}

/// Peak and current resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmHWM`: the peak resident set so far, in KiB.
    pub hwm_kib: u64,
    /// `VmRSS`: the resident set now, in KiB.
    pub rss_kib: u64,
}

impl Memory {
    /// Reads the figures of `pid`; `None` when the process is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Self {
            hwm_kib: field("VmHWM:")?,
            rss_kib: field("VmRSS:")?,
        })
    }
}

/// An echo node in a child process.
pub struct SoakNode {
    child: Child,
    pid: u32,
    /// The keyed endpoint it serves (a fixed TCP port, kept across restarts).
    pub endpoint: String,
    /// Its plain endpoint (likewise).
    pub plain_endpoint: String,
    /// Its publisher's endpoint (likewise).
    pub events_endpoint: String,
    /// Lines of its stderr that report a panic.
    pub panics: Arc<AtomicU64>,
}

impl SoakNode {
    /// Starts a node bound to `bind` and `plain` (`tcp://127.0.0.1:0` the first time, then
    /// the ports it got, so clients find a restarted node where they left it).
    pub async fn spawn(name: &str, bind: &str, plain: &str, events: &str) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "soak_node_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(BIND_VAR, bind)
            .env(PLAIN_VAR, plain)
            .env(NAME_VAR, name)
            .env(EVENTS_VAR, events)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A failing soak unwinds and drops its nodes: they must not outlive it.
            .kill_on_drop(true)
            .spawn()
            .expect("soak node spawns");
        let pid = child.id().expect("child just started");
        let panics = Arc::new(AtomicU64::new(0));
        let stderr = child.stderr.take().expect("piped stderr");
        let counter = panics.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // A node prints nothing in normal operation (no tracing subscriber), so
                // every line is shown; panics and aborts are counted.
                eprintln!("soak node {pid}: {line}");
                if line.contains("panicked") || line.contains("overflow") || line.contains("fatal")
                {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (endpoint, plain_endpoint, events_endpoint) =
            tokio::time::timeout(START_TIMEOUT, async {
                while let Some(line) = lines.next_line().await.expect("child stdout readable") {
                    // The harness prints "test soak_node_entry ... " on the same line.
                    if let Some((_, endpoints)) = line.split_once("READY ") {
                        let mut endpoints = endpoints.split_whitespace().map(str::to_owned);
                        let keyed = endpoints.next().expect("a keyed endpoint");
                        let plain = endpoints.next().expect("a plain endpoint");
                        let events = endpoints.next().expect("an events endpoint");
                        return (keyed, plain, events);
                    }
                }
                panic!("soak node {name} exited before it was ready");
            })
            .await
            .unwrap_or_else(|_| panic!("soak node {name} not ready within {START_TIMEOUT:?}"));
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            pid,
            endpoint,
            plain_endpoint,
            events_endpoint,
            panics,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its memory now (`None` if it has exited).
    pub fn memory(&self) -> Option<Memory> {
        Memory::of(self.pid)
    }

    /// `None` while the process runs, else how it ended.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(status.to_string()),
            Err(e) => Some(format!("unknown: {e}")),
        }
    }

    /// SIGKILL, then reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(START_TIMEOUT, self.child.wait()).await;
    }
}
