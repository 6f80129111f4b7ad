//! Shared helpers of the mesh tests: the `billing` test service, and a mesh node in a child
//! process (this test binary re-run with only `mesh_child_entry`) that a test can kill,
//! freeze or run inside a network namespace.

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zmesh::mesh::{BeaconConfig, MeshNode};
use zmesh::{HandlerError, NodeConfig, Service};

/// Settings a child mesh node reads from its environment.
pub const MESH_VAR: &str = "ZMESH_TEST_MESH";
pub const NAME_VAR: &str = "ZMESH_TEST_NODE_NAME";
pub const BIND_VAR: &str = "ZMESH_TEST_BIND";
pub const BEACON_PORT_VAR: &str = "ZMESH_TEST_BEACON_PORT";
pub const BEACON_TARGET_VAR: &str = "ZMESH_TEST_BEACON_TARGET";
pub const LEDGER_VAR: &str = "ZMESH_TEST_LEDGER";
pub const HEARTBEAT_VAR: &str = "ZMESH_TEST_HEARTBEAT_MS";

/// A random port in the dynamic range for a test's beacons; tests also use a unique mesh
/// name, so two tests that draw the same port only see each other's beacons as foreign.
pub fn beacon_port() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mixed = (nanos ^ std::process::id().rotate_left(16)).wrapping_mul(2_654_435_761);
    40_000 + (mixed % 20_000) as u16
}

/// A mesh name no other test run uses.
pub fn mesh_name(test: &str) -> String {
    format!("{test}-{}-{}", std::process::id(), beacon_port())
}

/// The `billing` service every test node hosts:
/// - `billing.quote(n)` (idempotent) returns `[node_name, n * 2]`;
/// - `billing.charge(token)` (not idempotent) appends `token` to the ledger file and returns
///   the node name; the ledger is shared by all nodes of a test, so it shows whether any
///   request ran twice, even on a node that was killed afterwards.
pub fn billing(name: &str, ledger: Option<std::fs::File>) -> Service {
    let quote_name = name.to_owned();
    let charge_name = name.to_owned();
    let ledger = Arc::new(Mutex::new(ledger));
    Service::new("billing")
        .method("quote", move |n: u64| {
            let name = quote_name.clone();
            async move { Ok((name, n * 2)) }
        })
        .idempotent()
        .method("charge", move |token: String| {
            let name = charge_name.clone();
            let ledger = ledger.clone();
            async move {
                let mut ledger = ledger
                    .lock()
                    .map_err(|_| HandlerError::new("Ledger", "poisoned"))?;
                if let Some(file) = ledger.as_mut() {
                    // One write per line on an O_APPEND file: lines of concurrent writers in
                    // other processes never interleave.
                    file.write_all(format!("{token}\n").as_bytes())
                        .map_err(|e| HandlerError::new("Ledger", e.to_string()))?;
                }
                Ok(name)
            }
        })
        .into()
}

/// Opens a ledger file for appending.
pub fn open_ledger(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("ledger opens")
}

/// Called from the `mesh_child_entry` test: when launched by [`spawn_mesh_child`], run a
/// mesh node with the billing service until killed, printing `READY <endpoint>`.
pub fn serve_if_mesh_child() {
    let Ok(mesh) = std::env::var(MESH_VAR) else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} set by the parent"));
    let name = var(NAME_VAR);
    let bind = var(BIND_VAR);
    let port: u16 = var(BEACON_PORT_VAR).parse().expect("port");
    let target: std::net::IpAddr = var(BEACON_TARGET_VAR).parse().expect("beacon target");
    let heartbeat = Duration::from_millis(var(HEARTBEAT_VAR).parse().expect("heartbeat"));
    let ledger = std::env::var(LEDGER_VAR)
        .ok()
        .map(|p| open_ledger(std::path::Path::new(&p)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let node = MeshNode::builder(mesh)
            .name(name.clone())
            .bind(bind)
            .service(billing(&name, ledger))
            .node_config(NodeConfig::default().heartbeat(heartbeat))
            .beacon(
                BeaconConfig::new(port)
                    .targets([target])
                    .interval(Duration::from_millis(200)),
            )
            .timing(Duration::from_millis(500), Duration::from_secs(3))
            .start()
            .await
            .expect("child mesh node starts");
        println!("READY {}", node.node().endpoint());
        std::future::pending::<()>().await;
    });
}

/// A mesh node in a child process.
pub struct MeshChild {
    pub child: Child,
    pub endpoint: String,
    pub name: String,
    /// Its stderr, shown only if the test fails.
    _log: crate::common::child_log::ChildLog,
}

/// What a child mesh node is told.
pub struct ChildSpec<'a> {
    pub mesh: &'a str,
    pub name: &'a str,
    pub bind: &'a str,
    pub beacon_port: u16,
    pub beacon_target: &'a str,
    pub ledger: Option<&'a std::path::Path>,
    pub heartbeat: Duration,
    /// Run through this command prefix (such as `ip netns exec NS`).
    pub wrapper: &'a [&'a str],
}

pub async fn spawn_mesh_child(spec: ChildSpec<'_>) -> MeshChild {
    let exe = std::env::current_exe().expect("test binary path");
    let exe = exe.to_str().expect("utf-8 path").to_owned();
    let test_args = [
        exe.as_str(),
        "--exact",
        "mesh_child_entry",
        "--nocapture",
        "--test-threads=1",
    ];
    let argv: Vec<&str> = spec.wrapper.iter().copied().chain(test_args).collect();
    let mut command = Command::new(argv[0]);
    command
        .args(&argv[1..])
        .env(MESH_VAR, spec.mesh)
        .env(NAME_VAR, spec.name)
        .env(BIND_VAR, spec.bind)
        .env(BEACON_PORT_VAR, spec.beacon_port.to_string())
        .env(BEACON_TARGET_VAR, spec.beacon_target)
        .env(HEARTBEAT_VAR, spec.heartbeat.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ledger) = spec.ledger {
        command.env(LEDGER_VAR, ledger);
    }
    let mut child = command.spawn().expect("child mesh node spawns");
    let log = crate::common::child_log::ChildLog::capture(
        &mut child,
        &format!("the child mesh node {}", spec.name),
    );
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let endpoint = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("child stdout readable") {
            if let Some((_, endpoint)) = line.split_once("READY ") {
                return endpoint.to_owned();
            }
        }
        panic!("child mesh node exited before it was ready");
    })
    .await
    .expect("child mesh node ready in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    MeshChild {
        child,
        endpoint,
        name: spec.name.to_owned(),
        _log: log,
    }
}

impl MeshChild {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("child still running")
    }

    /// Sends a signal by name (`KILL`, `STOP`, `CONT`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL, then reap.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
