//! The mesh across hosts: three Linux network namespaces ("hosts") joined by veth pairs to
//! a bridge that lives in a fourth namespace, all created by this test and deleted however
//! it ends. Nodes find each other by UDP beacons across the bridge; calls flow; one host's
//! link is cut (`ip link set ... down`) and calls fail over within their deadline; the link
//! comes back and the peer rejoins. Only the namespaces' own addresses (10.231.0.0/24) are
//! used; the host's own interfaces are never touched.
//!
//! Needs root and `ip` (iproute2); elsewhere the test prints why it skips and passes.

mod common;
mod mesh_support;

use std::process::Stdio;
use std::time::Duration;

use mesh_support::{ChildSpec, MeshChild, spawn_mesh_child};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Entry point for child mesh nodes; a no-op in a normal test run.
#[test]
fn mesh_child_entry() {
    mesh_support::serve_if_mesh_child();
}

/// Entry point for the caller process; a no-op in a normal test run.
#[test]
fn caller_child_entry() {
    caller::serve_if_caller();
}

const SUBNET: &str = "10.231.0";
const BEACON_PORT: u16 = 47_474;
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Deadline of every call the caller makes.
const CALL_DEADLINE: Duration = Duration::from_secs(2);

/// Runs `ip` with `args`; `Err` with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces of one test run; deleted on drop (also when the test fails), which also
/// deletes every interface in them.
struct Lab {
    switch: String,
    hosts: Vec<String>,
}

impl Lab {
    /// Creates the switch namespace with a bridge and `n` host namespaces, each with an
    /// `eth0` veth whose other end is a bridge port `p<i>` in the switch namespace.
    fn create(n: usize) -> Result<Self, String> {
        let tag = format!("{:x}{:x}", std::process::id(), mesh_support::beacon_port());
        let mut lab = Self {
            switch: format!("zmsw-{tag}"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lab.switch])?;
        let sw = lab.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let host = format!("zmh{i}-{tag}");
            ip(&["netns", "add", &host])?;
            lab.hosts.push(host.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &sw,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            let address = format!("{SUBNET}.{}/24", 10 + i);
            ip(&["-n", &host, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Cuts or restores host `i`'s link at the bridge port.
    fn link(&self, i: usize, up: bool) {
        let port = format!("p{i}");
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.switch, "link", "set", &port, state]).expect("link state changes");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Why this machine cannot run the test, if it cannot.
fn skip_reason() -> Option<String> {
    let uid = std::process::Command::new("id").arg("-u").output();
    match uid {
        Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == "0" => {}
        Ok(_) => return Some("not running as root".into()),
        Err(e) => return Some(format!("cannot run id: {e}")),
    }
    match std::process::Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("iproute2's ip command is not installed".into()),
    }
    let probe = format!("zmprobe-{:x}", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(e) => Some(format!("network namespaces unavailable: {e}")),
    }
}

/// The caller process, driven line by line over stdin/stdout.
struct Caller {
    child: Child,
    /// Its stderr, shown only if the test fails.
    _log: common::child_log::ChildLog,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Caller {
    async fn spawn(netns: &str, mesh: &str) -> Self {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(exe)
            .args([
                "--exact",
                "caller_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(caller::CALLER_VAR, mesh)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("caller spawns");
        let log = common::child_log::ChildLog::capture(&mut child, "the caller");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Self {
            child,
            _log: log,
            stdin,
            lines,
        }
    }

    /// Sends a command and returns the caller's answer (the text after `ANSWER `).
    async fn ask(&mut self, command: &str, limit: Duration) -> String {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("caller stdin");
        self.stdin.flush().await.expect("caller stdin flush");
        common::within(limit, command, async {
            while let Some(line) = self.lines.next_line().await.expect("caller stdout") {
                if let Some((_, answer)) = line.split_once("ANSWER ") {
                    return answer.to_owned();
                }
            }
            panic!("caller exited while answering {command}");
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_find_each_other_and_fail_over_when_a_link_is_cut() {
    if let Some(reason) = skip_reason() {
        println!("SKIPPED three_hosts_find_each_other_and_fail_over_when_a_link_is_cut: {reason}");
        return;
    }
    let lab = Lab::create(3).expect("namespaces, veths and bridge are created");
    let mesh = mesh_support::mesh_name("netns");
    let broadcast = format!("{SUBNET}.255");
    let mut nodes: Vec<MeshChild> = Vec::new();
    for (i, host) in lab.hosts.iter().enumerate() {
        let name = format!("h{}", i + 1);
        let bind = format!("tcp://{SUBNET}.{}:0", 11 + i);
        let wrapper = ["ip", "netns", "exec", host.as_str()];
        nodes.push(
            spawn_mesh_child(ChildSpec {
                mesh: &mesh,
                name: &name,
                bind: &bind,
                beacon_port: BEACON_PORT,
                beacon_target: &broadcast,
                ledger: None,
                heartbeat: HEARTBEAT,
                wrapper: &wrapper,
            })
            .await,
        );
    }
    for node in &nodes {
        assert!(
            node.endpoint.starts_with(&format!("tcp://{SUBNET}.")),
            "{}",
            node.endpoint
        );
    }
    // The caller lives on host 1; host 3's link is the one cut.
    let mut caller = Caller::spawn(&lab.hosts[0], &mesh).await;
    let limit = Duration::from_secs(30);
    assert_eq!(
        caller.ask("PEERS 3", limit).await,
        "PEERS 3",
        "beacons crossed the bridge"
    );
    assert_eq!(caller.ask("SERVED h3", limit).await, "SERVED h3");
    assert_eq!(caller.ask("LOAD", limit).await, "LOAD");
    assert_eq!(
        caller.ask("CALLS 200", limit).await,
        "CALLS 200",
        "calls flow"
    );

    lab.link(3, false);
    assert_eq!(
        caller.ask("PEERS 2", limit).await,
        "PEERS 2",
        "h3 left the rotation"
    );
    assert_eq!(
        caller.ask("CALLS 500", limit).await,
        "CALLS 500",
        "calls go on"
    );
    let result = caller.ask("STOP", limit).await;
    println!("during the cut: {result}");
    let field = |name: &str| -> u64 {
        result
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {result}"))
    };
    assert_eq!(
        field("failed"),
        0,
        "every call succeeded within its deadline: {result}"
    );
    assert!(field("ok") >= 700, "{result}");
    assert!(
        field("max_ms") < CALL_DEADLINE.as_millis() as u64,
        "{result}"
    );

    // Keep the link down until h3 has expired from the caller's directory (it left the
    // mesh, not only the rotation), so rejoining goes through discovery again.
    assert_eq!(
        caller.ask("KNOWN 2", limit).await,
        "KNOWN 2",
        "h3 left the directory"
    );
    lab.link(3, true);
    assert_eq!(
        caller.ask("KNOWN 3", limit).await,
        "KNOWN 3",
        "h3 heard again"
    );
    assert_eq!(caller.ask("PEERS 3", limit).await, "PEERS 3", "h3 rejoined");
    assert_eq!(
        caller.ask("SERVED h3", limit).await,
        "SERVED h3",
        "h3 serves again"
    );

    let _ = caller.child.start_kill();
    let _ = caller.child.wait().await;
    for node in nodes {
        node.kill().await;
    }
    drop(lab);
}

/// The caller's side: a mesh client on its host, answering commands from the test.
mod caller {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncBufReadExt, BufReader};
    use zmesh::mesh::{
        BeaconConfig, Discovery, DiscoveryConfig, MeshCallOptions, MeshClient, MeshClientConfig,
    };

    use super::{BEACON_PORT, CALL_DEADLINE, HEARTBEAT, SUBNET};

    pub(super) const CALLER_VAR: &str = "ZMESH_TEST_CALLER_MESH";

    #[derive(Default)]
    struct Load {
        ok: AtomicU64,
        failed: AtomicU64,
        max_us: AtomicU64,
        stop: AtomicBool,
        served: std::sync::Mutex<HashMap<String, u64>>,
    }

    pub(super) fn serve_if_caller() {
        let Ok(mesh) = std::env::var(CALLER_VAR) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(run(mesh));
    }

    async fn run(mesh: String) {
        let broadcast: std::net::IpAddr = format!("{SUBNET}.255").parse().expect("address");
        let config = DiscoveryConfig::new(mesh)
            .beacon(BeaconConfig::new(BEACON_PORT).targets([broadcast]))
            .gossip_interval(Duration::from_millis(500))
            .expire_after(Duration::from_secs(3));
        let discovery = Discovery::start(config).await.expect("discovery");
        let client = MeshClient::new(discovery, MeshClientConfig::default().heartbeat(HEARTBEAT));
        let load = Arc::new(Load::default());
        let mut workers = Vec::new();
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            let mut words = line.split_whitespace();
            let answer = match (words.next(), words.next()) {
                (Some("PEERS"), Some(n)) => {
                    let n: usize = n.parse().expect("count");
                    poll(|| client.live_peers("billing").len() == n).await;
                    format!("PEERS {n}")
                }
                (Some("KNOWN"), Some(n)) => {
                    let n: usize = n.parse().expect("count");
                    let discovery = client.discovery().clone();
                    poll(|| {
                        discovery
                            .peers()
                            .iter()
                            .filter(|p| p.offers("billing"))
                            .count()
                            == n
                    })
                    .await;
                    format!("KNOWN {n}")
                }
                (Some("SERVED"), Some(name)) => {
                    poll_async(|| async {
                        let options = MeshCallOptions::timeout(CALL_DEADLINE);
                        matches!(
                            client.call_with::<(String, u64)>("billing.quote", (1,), options).await,
                            Ok((who, _)) if who == name
                        )
                    })
                    .await;
                    format!("SERVED {name}")
                }
                (Some("LOAD"), _) => {
                    for _ in 0..4 {
                        workers.push(tokio::spawn(call_loop(client.clone(), load.clone())));
                    }
                    "LOAD".to_owned()
                }
                (Some("CALLS"), Some(n)) => {
                    let n: u64 = n.parse().expect("count");
                    let target =
                        load.ok.load(Ordering::Relaxed) + load.failed.load(Ordering::Relaxed) + n;
                    poll(|| {
                        load.ok.load(Ordering::Relaxed) + load.failed.load(Ordering::Relaxed)
                            >= target
                    })
                    .await;
                    format!("CALLS {n}")
                }
                (Some("STOP"), _) => {
                    load.stop.store(true, Ordering::Relaxed);
                    for w in workers.drain(..) {
                        let _ = w.await;
                    }
                    let served = load
                        .served
                        .lock()
                        .map(|s| format!("{s:?}"))
                        .unwrap_or_default();
                    format!(
                        "ok={} failed={} max_ms={} served={served}",
                        load.ok.load(Ordering::Relaxed),
                        load.failed.load(Ordering::Relaxed),
                        load.max_us.load(Ordering::Relaxed) / 1000,
                    )
                }
                _ => format!("unknown command {line:?}"),
            };
            println!("ANSWER {answer}");
        }
    }

    /// Polls a condition for up to 25 s (the parent's own timeout is 30 s).
    async fn poll(mut condition: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(25);
        while !condition() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn poll_async<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) {
        let until = Instant::now() + Duration::from_secs(25);
        while !condition().await && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn call_loop(client: MeshClient, load: Arc<Load>) {
        let mut i = 0u64;
        while !load.stop.load(Ordering::Relaxed) {
            i += 1;
            let started = Instant::now();
            let options = MeshCallOptions::timeout(CALL_DEADLINE);
            let result = client
                .call_with::<(String, u64)>("billing.quote", (i,), options)
                .await;
            let us = started.elapsed().as_micros() as u64;
            load.max_us.fetch_max(us, Ordering::Relaxed);
            match result {
                Ok((who, doubled)) if doubled == i * 2 => {
                    load.ok.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut served) = load.served.lock() {
                        *served.entry(who).or_default() += 1;
                    }
                }
                other => {
                    eprintln!("caller: call failed: {other:?}");
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
