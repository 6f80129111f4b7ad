//! Drives `zmesh serve` with its events, worker and mesh options, and `zmesh demo`, as real
//! processes over loopback. Every child is killed when its test ends, and the demo's own
//! children are checked to be gone after it exits.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Lines, Server, run, stderr, stdout, zmesh};
use tokio::time::timeout;
use zmesh_core::mesh::{BeaconConfig, Discovery, DiscoveryConfig, MeshClient, MeshClientConfig};
use zmesh_core::{Client, Delivery, Subscriber};

const LIMIT: Duration = Duration::from_secs(20);

/// A UDP port free a moment ago, for a test mesh's beacons.
fn beacon_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free udp port")
}

/// Calls `method` through `client` until it succeeds (a worker or peer announces itself
/// asynchronously and nothing tells the caller when), bounded.
async fn until_routed(client: &Client, method: &str, arg: &str) -> String {
    for _ in 0..500 {
        if let Ok(answer) = client.call::<String>(method, (arg,)).await {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{method} was never routed");
}

/// Whether a process with this id exists.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn serve_kv_with_events_publishes_its_changes() {
    let mut command = zmesh();
    command.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--events",
        "tcp://127.0.0.1:0",
        "--name",
        "kv-test",
        "kv",
    ]);
    let mut server = Server::start(command, "zmesh serve kv").await;
    let line = server.lines.next("the events line").await;
    let events = line.strip_prefix("events ").expect("events ENDPOINT");
    assert!(
        events.starts_with("tcp://127.0.0.1:") && !events.ends_with(":0"),
        "{line}"
    );

    let client = Client::new(server.endpoint.clone());
    let mut subscriber = Subscriber::builder()
        .connect(events)
        .subscribe("kv.changed.")
        .start::<zmesh_kv::Change>()
        .await
        .expect("subscriber connects");
    timeout(LIMIT, subscriber.snapshot(&client, "kv.changed."))
        .await
        .expect("in time")
        .expect("the node serves _zmesh.snapshot for its publisher");

    let out = run(&[
        "call",
        &server.endpoint,
        "kv.put",
        "greeting",
        r#"{"text":"hi"}"#,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1\n");
    let out = run(&["call", &server.endpoint, "kv.get", "greeting"]).await;
    assert_eq!(stdout(&out), "{\"text\":\"hi\"}\n", "{}", stderr(&out));
    let out = run(&["call", &server.endpoint, "kv.put", "", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("InvalidKey: key must not be empty"),
        "{}",
        stderr(&out)
    );

    match timeout(LIMIT, subscriber.recv())
        .await
        .expect("an event in time")
    {
        Some(Delivery::Event(event)) => {
            assert_eq!(event.topic, "kv.changed.greeting");
            assert_eq!(event.payload.op, "put");
            assert_eq!(event.payload.revision, 1);
        }
        other => panic!("expected the put's event, got {other:?}"),
    }

    common::terminate(&server.child);
    let status = common::exit_status(&mut server.child, "serve after SIGTERM").await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn serve_worker_of_a_proxy_takes_calls_through_it() {
    let mut proxy = zmesh()
        .args(["proxy", "--frontend", "tcp://127.0.0.1:0"])
        .args(["--backend", "tcp://127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh proxy starts");
    // Its expected warnings (the backend has no key) only when the test fails.
    let _log = common::ChildLog::capture(&mut proxy, "zmesh proxy");
    let mut lines = Lines::new(proxy.stdout.take().expect("piped"));
    let frontend = lines.next("frontend").await;
    let frontend = frontend
        .strip_prefix("frontend ")
        .expect("frontend EP")
        .to_owned();
    let backend = lines.next("backend").await;
    let backend = backend
        .strip_prefix("backend ")
        .expect("backend EP")
        .to_owned();

    let mut command = zmesh();
    command.args([
        "serve",
        "--worker-of",
        &backend,
        "--name",
        "w1",
        "echo",
        "kv",
    ]);
    let mut worker = Server::start(command, "zmesh serve --worker-of").await;
    assert_eq!(worker.endpoint, backend, "announces whose worker it is");

    let client = Client::new(frontend.clone());
    assert_eq!(until_routed(&client, "echo.upper", "hi").await, "HI");
    let out = run(&["call", &frontend, "kv.put", "k", "7"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["call", &frontend, "kv.get", "k"]).await;
    assert_eq!(stdout(&out), "7\n", "{}", stderr(&out));

    common::terminate(&worker.child);
    let status = common::exit_status(&mut worker.child, "worker after SIGTERM").await;
    assert!(status.success(), "{status:?}");
    common::terminate(&proxy);
    let status = common::exit_status(&mut proxy, "proxy after SIGTERM").await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn serve_in_a_mesh_is_found_by_service_name() {
    let mesh = format!("cli-serve-{}", std::process::id());
    let port = beacon_port().to_string();
    let mut nodes = Vec::new();
    for name in ["m1", "m2"] {
        let mut command = zmesh();
        command.args(["serve", "--bind", "tcp://127.0.0.1:0", "--name", name]);
        command.args([
            "--mesh",
            &mesh,
            "--beacon-port",
            &port,
            "--beacon-interval",
            "0.1",
        ]);
        command.arg("echo");
        let mut node = Server::start(command, "zmesh serve --mesh").await;
        let line = node.lines.next("the mesh line").await;
        assert!(
            line.starts_with(&format!("mesh {mesh} peer {name}-")),
            "{line}"
        );
        nodes.push(node);
    }

    let port: u16 = port.parse().expect("port");
    let discovery = Discovery::start(
        DiscoveryConfig::new(mesh.clone())
            .beacon(BeaconConfig::loopback(port).interval(Duration::from_millis(100))),
    )
    .await
    .expect("discovery starts");
    let client = MeshClient::new(discovery, MeshClientConfig::default());
    let mut found = false;
    for _ in 0..1000 {
        if client.live_peers("echo").len() == 2 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(found, "both nodes found: {:?}", client.live_peers("echo"));
    let answer: String = timeout(LIMIT, client.call("echo.upper", ("mesh",)))
        .await
        .expect("in time")
        .expect("called by name");
    assert_eq!(answer, "MESH");

    for mut node in nodes {
        common::terminate(&node.child);
        let status = common::exit_status(&mut node.child, "mesh node after SIGTERM").await;
        assert!(status.success(), "{status:?}");
    }
}

#[tokio::test]
async fn serve_refuses_bad_combinations_with_usage_errors() {
    for (args, says) in [
        (
            &[
                "serve",
                "--worker-of",
                "tcp://127.0.0.1:1",
                "--bind",
                "tcp://127.0.0.1:0",
                "echo",
            ][..],
            "cannot be used with",
        ),
        (&["serve", "--beacon-port", "47000", "echo"][..], "--mesh"),
        (&["serve", "--last-value-cache", "kv"][..], "--events"),
        (
            &["serve", "--bind", "tcp://127.0.0.1:0", "nosuch"][..],
            "invalid value",
        ),
    ] {
        let out = run(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // An invalid events endpoint is a usage error, found before anything starts.
    let out = run(&[
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--events",
        "inproc://x",
        "kv",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid value 'inproc://x' for '--events <ENDPOINT>'"),
        "{}",
        stderr(&out)
    );
    // One that parses but cannot be bound stays a runtime error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = format!("tcp://{}", taken.local_addr().expect("addr"));
    let out = run(&[
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--events",
        &taken,
        "kv",
    ])
    .await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("cannot start the events publisher"),
        "{}",
        stderr(&out)
    );
}

/// The pids the demo printed for its processes (`NAME pid N ...` lines).
fn demo_pids(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.next()?;
            (words.next()? == "pid").then_some(())?;
            words.next()?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn demo_runs_fails_over_and_leaves_nothing_running() {
    let child = zmesh()
        .args(["demo", "--calls", "60", "--puts", "5", "--concurrency", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh demo starts");
    let out = timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the demo finishes within 120 s")
        .expect("ran");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));

    let pids = demo_pids(&text);
    assert_eq!(
        pids.len(),
        6,
        "two echo nodes, kv, proxy, two workers: {text}"
    );
    for pid in &pids {
        assert!(!alive(*pid), "process {pid} is still running:\n{text}");
    }
    assert!(
        text.contains("events: 6 of 6 kv.changed.* received, 0 gaps"),
        "{text}"
    );
    assert!(
        text.contains("refused as expected: ValueTooLarge"),
        "{text}"
    );
    assert!(text.contains("killed node-b (pid "), "{text}");

    // The summary table: one row per path, none with errors.
    let header = text
        .lines()
        .position(|l| l.starts_with("path ") && l.contains("p50 us") && l.contains("p99 us"))
        .unwrap_or_else(|| panic!("no summary table:\n{text}"));
    let rows: Vec<&str> = text.lines().skip(header + 1).take(4).collect();
    for (row, path) in rows.iter().zip(["direct", "by name", "device", "failover"]) {
        assert!(row.starts_with(path), "{row}");
        let figures: Vec<&str> = row.split_whitespace().rev().take(4).collect();
        // Reversed: p99, p50, errors, calls.
        assert_eq!(figures[3], "60", "calls of {row}");
        assert_eq!(figures[2], "0", "errors of {row}");
    }
    assert!(
        text.contains("0 idempotent calls failed"),
        "failover lost calls:\n{text}"
    );
    assert!(
        text.contains("cleanup: 5 processes stopped gracefully, 0 killed"),
        "{text}"
    );
}

/// SIGTERM ends the demo as a failure (3), Ctrl-C as an interruption (130); either way it
/// stops every process it started.
#[tokio::test]
async fn demo_stops_its_processes_when_terminated() {
    demo_stops_its_processes_on("TERM", 3).await;
}

#[tokio::test]
async fn demo_stops_its_processes_on_ctrl_c_and_exits_130() {
    demo_stops_its_processes_on("INT", 130).await;
}

async fn demo_stops_its_processes_on(signal: &str, code: i32) {
    let mut child = zmesh()
        .args(["demo", "--calls", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh demo starts");
    let mut lines = Lines::new(child.stdout.take().expect("piped"));
    let mut seen = String::new();
    // Interrupt once the mesh is up and the first calls run.
    loop {
        let line = lines.next("the demo's progress").await;
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("1. direct") {
            break;
        }
    }
    common::send_signal(&child, signal);
    let status = common::exit_status(&mut child, &format!("demo after SIG{signal}")).await;
    while let Some(line) = lines.next_within(Duration::from_secs(5)).await {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(status.code(), Some(code), "{seen}");
    assert!(seen.contains("cleanup: "), "{seen}");
    let pids = demo_pids(&seen);
    assert_eq!(pids.len(), 6, "{seen}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} is still running:\n{seen}");
    }
}
