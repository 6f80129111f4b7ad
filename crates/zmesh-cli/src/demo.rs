//! Runs `zmesh demo`: starts a small mesh on loopback as child processes of this binary
//! (two echo nodes and a kv node that find each other by beacons, a proxy device with two
//! echo workers), drives calls directly, by service name and through the device, shows kv
//! change events arriving, kills one node mid-load to show failover, prints a summary table
//! and stops every process it started (also on Ctrl-C, an error or a panic).

use crate::output::outln;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmpv::Value;
use tokio::sync::Notify;
use zmesh_core::mesh::{
    BeaconConfig, Discovery, DiscoveryConfig, MeshCallOptions, MeshClient, MeshClientConfig,
};
use zmesh_core::{CallError, Client, Delivery, Subscriber, reserved};

use crate::children::Fleet;
use crate::{CliError, map_get, text};

/// Longest a child may take to announce itself.
const ANNOUNCE: Duration = Duration::from_secs(15);
/// Longest the mesh and the device may take to see every member.
const CONVERGE: Duration = Duration::from_secs(15);
/// Deadline of every call the demo makes.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Time each child gets to shut down gracefully at the end.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The options of `zmesh demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Everything runs on 127.0.0.1 with ports picked by the system; nothing is left running
afterwards. The last lines are a summary table: calls, errors, p50 and p99 per path.")]
pub(crate) struct DemoArgs {
    /// Calls per path (direct, by service name, through the device, during failover).
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    calls: u64,
    /// kv puts on the direct path (each publishes a `kv.changed.<key>` event); the rest of
    /// its calls are gets.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    puts: u64,
    /// Concurrent callers during the failover phase.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    concurrency: u64,
    /// Give up (and clean up) after this many seconds.
    #[arg(long, default_value_t = 120.0, value_parser = crate::positive_seconds)]
    timeout: f64,
}

/// Runs the demo until done, `signal` (Ctrl-C or SIGTERM) or its timeout; in every case
/// stops every child process before returning.
pub(crate) async fn run(args: DemoArgs, signal: impl Future<Output = ()>) -> Result<(), CliError> {
    let mut fleet = Fleet::default();
    let limit = Duration::from_secs_f64(args.timeout);
    let outcome = tokio::select! {
        result = tokio::time::timeout(limit, demo(&mut fleet, &args)) => match result {
            Ok(result) => result,
            Err(_) => Err(CliError::Other(format!("the demo did not finish within {limit:?}"))),
        },
        () = signal => Err(CliError::Other("interrupted".into())),
    };
    if outcome.is_err() {
        outln!();
        outln!("stopping the mesh after an error or interruption");
    }
    let (graceful, killed, gone) = fleet.shutdown(STOP_GRACE).await;
    outln!(
        "cleanup: {graceful} processes stopped gracefully, {killed} killed after {STOP_GRACE:?}, \
         {gone} already gone; none left running"
    );
    outcome
}

/// Latencies and errors of one path.
#[derive(Debug, Default)]
struct PathFigures {
    latencies: Vec<Duration>,
    errors: u64,
}

impl PathFigures {
    fn record<T, E>(&mut self, started: Instant, result: &Result<T, E>) {
        match result {
            Ok(_) => self.latencies.push(started.elapsed()),
            Err(_) => self.errors += 1,
        }
    }

    fn calls(&self) -> u64 {
        self.latencies.len() as u64 + self.errors
    }

    /// The `p`th percentile (nearest rank) of the successful calls, in microseconds.
    fn percentile_us(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        self.latencies.sort_unstable();
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies.len()) - 1;
        self.latencies[index].as_secs_f64() * 1e6
    }
}

/// Endpoints of the processes the demo started.
struct Mesh {
    name: String,
    seed: String,
    beacon_port: u16,
    node_a: String,
    node_b: String,
    node_b_index: usize,
    kv: String,
    kv_events: String,
    frontend: String,
}

async fn demo(fleet: &mut Fleet, args: &DemoArgs) -> Result<(), CliError> {
    let started = Instant::now();
    outln!("zmesh demo: a small mesh on 127.0.0.1, every node a process of its own");
    outln!();
    let mesh = start_mesh(fleet).await?;
    outln!();

    // The caller's view of the mesh: beacons on the shared port, plus one seed so gossip
    // fills in whatever a lost beacon missed.
    let discovery = Discovery::start(
        DiscoveryConfig::new(mesh.name.clone())
            .beacon(BeaconConfig::loopback(mesh.beacon_port).interval(Duration::from_millis(200)))
            .seed(mesh.seed.clone())
            .gossip_interval(Duration::from_millis(300))
            .expire_after(Duration::from_secs(3)),
    )
    .await
    .map_err(|e| CliError::Other(format!("cannot start discovery: {e}")))?;
    let mesh_client = MeshClient::new(
        discovery,
        MeshClientConfig::default()
            .heartbeat(Duration::from_secs(1))
            .default_timeout(CALL_TIMEOUT),
    );
    let waited = Instant::now();
    converge(&mesh_client, &mesh.frontend).await?;
    outln!(
        "discovery: echo on 2 peers, kv on 1 peer (found by beacons in {:.0} ms); \
         proxy has 2 echo workers",
        waited.elapsed().as_secs_f64() * 1e3
    );
    outln!();

    let mut direct = PathFigures::default();
    let events = direct_calls(&mesh, args, &mut direct).await?;
    outln!();
    let mut by_name = PathFigures::default();
    mesh_calls(&mesh, &mesh_client, args, &mut by_name).await?;
    outln!();
    let mut device = PathFigures::default();
    device_calls(&mesh, args, &mut device).await?;
    outln!();
    let mut failover = PathFigures::default();
    let failed_over = failover_calls(fleet, &mesh, &mesh_client, args, &mut failover).await?;
    outln!();

    outln!(
        "{:<38} {:>7} {:>7} {:>10} {:>10}",
        "path",
        "calls",
        "errors",
        "p50 us",
        "p99 us"
    );
    for (label, figures) in [
        ("direct     Client -> kv-1 (kv)", &mut direct),
        ("by name    MeshClient -> echo", &mut by_name),
        ("device     Client -> proxy -> echo", &mut device),
        ("failover   MeshClient, node-b killed", &mut failover),
    ] {
        let (p50, p99) = (figures.percentile_us(50.0), figures.percentile_us(99.0));
        outln!(
            "{label:<38} {:>7} {:>7} {p50:>10.1} {p99:>10.1}",
            figures.calls(),
            figures.errors,
        );
    }
    outln!(
        "events     kv.changed.*: {} published, {} received, {} gaps",
        events.published,
        events.received,
        events.gaps
    );
    outln!(
        "failover: {} calls retried on the surviving node, {} idempotent calls failed",
        failed_over.retries,
        failover.errors
    );
    outln!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
    outln!();
    Ok(())
}

/// Starts the processes and reads their endpoints; prints one line per process.
async fn start_mesh(fleet: &mut Fleet) -> Result<Mesh, CliError> {
    let beacon_port = free_udp_port()?;
    let name = format!("demo-{}", std::process::id());
    let port = beacon_port.to_string();
    let any = "tcp://127.0.0.1:0".to_owned();
    let serve = |node: &str, extra: &[&str], services: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = ["serve", "--bind", &any, "--name", node]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        argv.extend(
            [
                "--mesh",
                &name,
                "--beacon-port",
                &port,
                "--beacon-interval",
                "0.2",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        argv.extend(services.iter().map(|s| (*s).to_owned()));
        argv
    };
    outln!("starting (mesh {name:?}, beacons on udp port {beacon_port}):");
    let mut mesh_nodes = Vec::new();
    for node in ["node-a", "node-b"] {
        let index = fleet.spawn(node, &serve(node, &[], &["echo"]))?;
        mesh_nodes.push(index);
    }
    let kv_index = fleet.spawn("kv-1", &serve("kv-1", &["--events", &any], &["kv"]))?;
    let proxy_index = fleet.spawn(
        "proxy",
        &[
            "proxy".into(),
            "--frontend".into(),
            any.clone(),
            "--backend".into(),
            any.clone(),
            "--name".into(),
            "demo-proxy".into(),
        ],
    )?;

    let mut endpoints = Vec::new();
    for &index in &mesh_nodes {
        let child = fleet.get(index);
        let endpoint = served_endpoint(&child.expect("serving", ANNOUNCE).await?);
        child.expect("mesh", ANNOUNCE).await?;
        outln!(
            "  {:<9} pid {:<7} echo service, mesh member          {endpoint}",
            child.name,
            child.pid
        );
        endpoints.push(endpoint);
    }
    let child = fleet.get(kv_index);
    let kv = served_endpoint(&child.expect("serving", ANNOUNCE).await?);
    let kv_events = child.expect("events", ANNOUNCE).await?;
    child.expect("mesh", ANNOUNCE).await?;
    outln!(
        "  {:<9} pid {:<7} kv service, mesh member, publisher {kv} (events {kv_events})",
        child.name,
        child.pid
    );
    let child = fleet.get(proxy_index);
    let frontend = child.expect("frontend", ANNOUNCE).await?;
    let backend = child.expect("backend", ANNOUNCE).await?;
    outln!(
        "  {:<9} pid {:<7} proxy device                       {frontend} (workers connect to {backend})",
        child.name,
        child.pid
    );
    for worker in ["worker-1", "worker-2"] {
        let argv: Vec<String> = ["serve", "--worker-of", &backend, "--name", worker, "echo"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let index = fleet.spawn(worker, &argv)?;
        let child = fleet.get(index);
        child.expect("serving", ANNOUNCE).await?;
        outln!(
            "  {:<9} pid {:<7} echo service, worker of the proxy",
            child.name,
            child.pid
        );
    }
    let node_b = endpoints.pop().unwrap_or_default();
    let node_a = endpoints.pop().unwrap_or_default();
    Ok(Mesh {
        name,
        seed: node_a.clone(),
        beacon_port,
        node_a,
        node_b,
        node_b_index: mesh_nodes[1],
        kv,
        kv_events,
        frontend,
    })
}

/// The first endpoint of a `serving SERVICES on ENDPOINT...` announcement.
fn served_endpoint(rest: &str) -> String {
    rest.split_once(" on ")
        .and_then(|(_, eps)| eps.split_whitespace().next())
        .unwrap_or_default()
        .to_owned()
}

/// A UDP port free a moment ago, for the mesh's beacons (the mesh name, unique per run,
/// keeps any other mesh on the same port apart anyway).
fn free_udp_port() -> Result<u16, CliError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::Other(format!("cannot pick a beacon port: {e}")))
}

/// Waits until the mesh client sees both echo nodes and the kv node, and the device has
/// both workers. Both are state in other processes that announce nothing to us, so this
/// polls, bounded by [`CONVERGE`].
async fn converge(client: &MeshClient, frontend: &str) -> Result<(), CliError> {
    let deadline = Instant::now() + CONVERGE;
    let device = Client::new(frontend);
    loop {
        let peers = client.live_peers("echo").len() >= 2 && !client.live_peers("kv").is_empty();
        let workers = device_workers(&device).await;
        if peers && workers >= 2 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CliError::Other(format!(
                "the mesh did not come together within {CONVERGE:?}: echo peers {:?}, kv peers \
                 {:?}, proxy workers {workers}",
                client.live_peers("echo"),
                client.live_peers("kv")
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Echo workers the device has now (0 when it cannot say).
async fn device_workers(device: &Client) -> u64 {
    figure(
        device,
        reserved::DEVICE_STATS,
        ["services", "echo", "workers"],
    )
    .await
}

/// One number from a node's or device's built-in stats method, by its path in the answer
/// (0 when it cannot say).
async fn figure(client: &Client, method: &str, path: [&str; 3]) -> u64 {
    let Ok(stats) = client
        .call_with::<Value>(method, (), zmesh_core::CallOptions::timeout(CALL_TIMEOUT))
        .await
    else {
        return 0;
    };
    path.iter()
        .try_fold(&stats, |value, key| map_get(value, key))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// What the event subscriber saw.
struct EventFigures {
    published: u64,
    received: u64,
    gaps: u64,
}

/// Direct calls to the kv node: puts (each publishes an event), gets, a scan, a delete and
/// one refused put; a subscriber on the node's publisher shows the events.
async fn direct_calls(
    mesh: &Mesh,
    args: &DemoArgs,
    figures: &mut PathFigures,
) -> Result<EventFigures, CliError> {
    outln!("1. direct: a Client calls kv-1 at {}", mesh.kv);
    let client = Client::new(mesh.kv.clone());
    let mut events = Subscriber::builder()
        .connect(mesh.kv_events.clone())
        .subscribe(zmesh_kv::TOPIC_PREFIX)
        .start::<zmesh_kv::Change>()
        .await
        .map_err(|e| CliError::Other(format!("cannot subscribe to kv-1's events: {e}")))?;
    // The snapshot's marker proves the subscription reached the publisher, so no event of
    // the puts below is lost to ZeroMQ's slow-joiner window.
    events
        .snapshot(&client, zmesh_kv::TOPIC_PREFIX)
        .await
        .map_err(|e| CliError::Other(format!("cannot sync with kv-1's events: {e}")))?;

    let puts = args.puts.min(args.calls);
    for i in 0..puts {
        let value = Value::Map(vec![
            (Value::from("name"), Value::from(format!("user {i}"))),
            (Value::from("visits"), Value::from(i)),
        ]);
        let t = Instant::now();
        let result = client
            .call::<u64>("kv.put", (format!("user:{i:03}"), value))
            .await;
        figures.record(t, &result);
    }
    for i in puts..args.calls {
        let t = Instant::now();
        let result = client
            .call::<Value>("kv.get", (format!("user:{:03}", i % puts),))
            .await;
        figures.record(t, &result);
    }
    outln!(
        "   {puts} kv.put and {} kv.get calls, {} errors",
        args.calls - puts,
        figures.errors
    );
    let first: Vec<(String, Value)> = client
        .call("kv.scan", ("user:", 3))
        .await
        .map_err(CliError::from)?;
    let keys: Vec<&str> = first.iter().map(|(k, _)| k.as_str()).collect();
    outln!("   kv.scan(\"user:\", 3)      -> {keys:?}");
    let removed: bool = client
        .call("kv.delete", ("user:000",))
        .await
        .map_err(CliError::from)?;
    outln!("   kv.delete(\"user:000\")    -> {removed}");
    match client
        .call::<u64>("kv.put", ("big", "x".repeat(100_000)))
        .await
    {
        Err(CallError::Remote(e)) => {
            outln!(
                "   kv.put(\"big\", 100 kB)    -> refused as expected: {}: {}",
                e.name,
                e.message
            );
        }
        other => {
            return Err(CliError::Other(format!(
                "kv.put of 100 kB should be refused, got {other:?}"
            )));
        }
    }

    let published = puts + u64::from(removed);
    let mut received = 0u64;
    let mut shown = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while received < published {
        let Ok(Some(item)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            break;
        };
        match item {
            Delivery::Event(event) => {
                received += 1;
                if shown < 3 || event.payload.op == "delete" {
                    shown += 1;
                    outln!(
                        "   event {} #{} {} rev {}: {}",
                        event.topic,
                        event.seq.unwrap_or_default(),
                        event.payload.op,
                        event.payload.revision,
                        crate::json::to_json(&event.payload.value)
                    );
                } else if shown == 3 {
                    shown += 1;
                    outln!("   ...");
                }
            }
            Delivery::Gap(gap) => outln!("   gap: {gap:?}"),
        }
    }
    let gaps = events.stats().gaps;
    outln!("   events: {received} of {published} kv.changed.* received, {gaps} gaps");
    Ok(EventFigures {
        published,
        received,
        gaps,
    })
}

/// Calls by service name: the mesh client spreads them over node-a and node-b.
async fn mesh_calls(
    mesh: &Mesh,
    client: &MeshClient,
    args: &DemoArgs,
    figures: &mut PathFigures,
) -> Result<(), CliError> {
    outln!(
        "2. by name: a MeshClient calls \"echo.upper\"; no endpoint given, discovery finds them"
    );
    let before = (
        upper_calls(&mesh.node_a).await,
        upper_calls(&mesh.node_b).await,
    );
    for i in 0..args.calls {
        let t = Instant::now();
        let result = client
            .call::<String>("echo.upper", (format!("hello {i}"),))
            .await;
        figures.record(t, &result);
    }
    let a = upper_calls(&mesh.node_a).await.saturating_sub(before.0);
    let b = upper_calls(&mesh.node_b).await.saturating_sub(before.1);
    outln!(
        "   {} calls, {} errors; served by node-a {a}, node-b {b} (from each node's _zmesh.stats)",
        figures.calls(),
        figures.errors
    );
    Ok(())
}

/// How many `echo.upper` calls a node has served, from its built-in stats method.
async fn upper_calls(endpoint: &str) -> u64 {
    figure(
        &Client::new(endpoint),
        reserved::STATS,
        ["methods", "echo.upper", "calls"],
    )
    .await
}

/// Calls through the proxy device, which spreads them over its two workers.
async fn device_calls(
    mesh: &Mesh,
    args: &DemoArgs,
    figures: &mut PathFigures,
) -> Result<(), CliError> {
    outln!(
        "3. device: a Client calls the proxy at {}; it routes to its workers",
        mesh.frontend
    );
    let client = Client::new(mesh.frontend.clone());
    for i in 0..args.calls {
        let t = Instant::now();
        let result = client
            .call::<String>("echo.upper", (format!("hello {i}"),))
            .await;
        figures.record(t, &result);
    }
    let stats: Value = client
        .call(reserved::DEVICE_STATS, ())
        .await
        .map_err(CliError::from)?;
    let echo = map_get(&stats, "services").and_then(|s| map_get(s, "echo"));
    let field = |name: &str| {
        echo.and_then(|e| map_get(e, name))
            .map(text)
            .unwrap_or_default()
    };
    outln!(
        "   {} calls, {} errors; device: {} workers, {} dispatched, {} completed",
        figures.calls(),
        figures.errors,
        field("workers"),
        field("dispatched"),
        field("completed")
    );
    Ok(())
}

/// What the failover phase saw.
struct Failover {
    retries: u64,
}

/// Calls by name from several callers at once; a third of the way in, node-b is killed
/// (SIGKILL, as a crash). `echo.echo` is idempotent, so the mesh client retries the calls
/// it loses on node-a.
async fn failover_calls(
    fleet: &mut Fleet,
    mesh: &Mesh,
    client: &MeshClient,
    args: &DemoArgs,
    figures: &mut PathFigures,
) -> Result<Failover, CliError> {
    outln!(
        "4. failover: {} callers make {} \"echo.echo\" calls by name; node-b is killed a \
         third of the way in",
        args.concurrency,
        args.calls
    );
    let stats_before = client.stats();
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let third = Arc::new(Notify::new());
    let kill_after = args.calls / 3;
    let callers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (client, next, done, third) =
                (client.clone(), next.clone(), done.clone(), third.clone());
            let calls = args.calls;
            tokio::spawn(async move {
                let mut figures = PathFigures::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= calls {
                        break;
                    }
                    let t = Instant::now();
                    let result = client
                        .call_with::<u64>("echo.echo", (i,), MeshCallOptions::timeout(CALL_TIMEOUT))
                        .await;
                    // A wrong answer counts as an error too.
                    let result = result.map_err(|e| e.to_string()).and_then(|v| {
                        if v == i {
                            Ok(v)
                        } else {
                            Err(format!("echo.echo({i}) answered {v}"))
                        }
                    });
                    if let Err(e) = &result {
                        tracing::warn!(error = %e, "failover call failed");
                    }
                    figures.record(t, &result);
                    if done.fetch_add(1, Ordering::Relaxed) + 1 == kill_after {
                        third.notify_one();
                    }
                }
                figures
            })
        })
        .collect();
    // notify_one keeps the permit if nobody waits yet, so this cannot miss the moment.
    third.notified().await;
    let victim = fleet.get(mesh.node_b_index);
    let killed_at = done.load(Ordering::Relaxed);
    victim.kill().await;
    outln!(
        "   killed node-b (pid {}, SIGKILL) after {killed_at} calls",
        victim.pid
    );
    for caller in callers {
        let part = caller
            .await
            .map_err(|e| CliError::Other(format!("a caller task failed: {e}")))?;
        figures.latencies.extend(part.latencies);
        figures.errors += part.errors;
    }
    let stats = client.stats();
    let retries = stats.retries - stats_before.retries;
    outln!(
        "   {} calls, {} errors; {retries} retried on node-a, node-b taken out of rotation \
         ({} peer down); echo peers now {}",
        figures.calls(),
        figures.errors,
        stats.peers_down - stats_before.peers_down,
        client.live_peers("echo").len()
    );
    Ok(Failover { retries })
}
