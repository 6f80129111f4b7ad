//! The brokerless mesh over loopback: discovery by beacons, seeds and gossip with presence
//! notifications; service-level calls balanced over live peers; a node killed in the middle
//! of 10,000 calls with no idempotent call failing and no request run twice; a frozen peer
//! leaving the rotation and coming back; the reply cache; hedging.

mod common;
mod mesh_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{NET_TIMEOUT, eventually, net, within};
use mesh_support::{ChildSpec, beacon_port, mesh_name, percentile, spawn_mesh_child};
use zmesh::mesh::{
    BeaconConfig, Discovery, DiscoveryConfig, HedgeConfig, MeshCallOptions, MeshClient,
    MeshClientConfig, MeshNode, Presence,
};
use zmesh::{CallOptions, Client, Node, Service};

/// Entry point for child mesh nodes; a no-op in a normal test run.
#[test]
fn mesh_child_entry() {
    mesh_support::serve_if_mesh_child();
}

async fn loopback_node(mesh: &str, name: &str, port: u16) -> MeshNode {
    net(
        "mesh node start",
        MeshNode::builder(mesh)
            .name(name)
            .bind("tcp://127.0.0.1:0")
            .service(mesh_support::billing(name, None))
            .beacon(BeaconConfig::loopback(port).interval(Duration::from_millis(100)))
            .timing(Duration::from_millis(200), Duration::from_millis(1500))
            .start(),
    )
    .await
    .expect("mesh node starts")
}

async fn loopback_discovery(mesh: &str, port: u16, expire: Duration) -> Discovery {
    let config = DiscoveryConfig::new(mesh)
        .beacon(BeaconConfig::loopback(port))
        .gossip_interval(Duration::from_millis(200))
        .expire_after(expire);
    Discovery::start(config).await.expect("discovery starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_by_beacons_seeds_and_gossip_with_presence() {
    let mesh = mesh_name("discovery");
    let port = beacon_port();
    let watcher = loopback_discovery(&mesh, port, Duration::from_millis(1500)).await;
    let mut presence = watcher.subscribe();
    let nodes = [
        loopback_node(&mesh, "a", port).await,
        loopback_node(&mesh, "b", port).await,
        loopback_node(&mesh, "c", port).await,
    ];
    // Each node and the watcher hear the others' beacons on the one shared port.
    let mut joined = Vec::new();
    while joined.len() < 3 {
        match net("joined events", presence.recv()).await {
            Ok(Presence::Joined(p)) => joined.push(p.name),
            Ok(_) => {}
            Err(e) => panic!("presence stream broke: {e}"),
        }
    }
    joined.sort();
    assert_eq!(joined, ["a", "b", "c"]);
    for node in &nodes {
        eventually(Duration::from_secs(10), "nodes hear each other", || {
            node.discovery().peers().len() == 2
        })
        .await;
    }
    let advertised = nodes[0].record().services[0].clone();
    assert_eq!(advertised.name, "billing");
    assert_eq!(advertised.idempotent, ["quote"]);

    // A node out of beacon reach (other port, no beacons) with one seed learns the rest of
    // the mesh by gossip, and the mesh learns it.
    let far = net(
        "far node start",
        MeshNode::builder(&mesh)
            .name("far")
            .bind("tcp://127.0.0.1:0")
            .service(mesh_support::billing("far", None))
            .seed(nodes[0].node().endpoint())
            .timing(Duration::from_millis(200), Duration::from_millis(1500))
            .start(),
    )
    .await
    .expect("far node starts");
    eventually(Duration::from_secs(10), "far node learns a, b, c", || {
        far.discovery().peers().len() == 3
    })
    .await;
    eventually(Duration::from_secs(10), "c learns far by gossip", || {
        nodes[2].discovery().peers().iter().any(|p| p.name == "far")
    })
    .await;
    assert!(far.discovery().stats().gossip_ok > 0);

    // Foreign beacons and garbage on the port are ignored and counted.
    let before = watcher.stats();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_broadcast(true).expect("broadcast");
    let target = ("127.255.255.255", port);
    sock.send_to(b"not a beacon", target).expect("sent");
    let foreign = MeshNode::builder("some-other-mesh")
        .name("stranger")
        .bind("tcp://127.0.0.1:0")
        .service(mesh_support::billing("stranger", None))
        .beacon(BeaconConfig::loopback(port).interval(Duration::from_millis(50)))
        .start()
        .await
        .expect("foreign node starts");
    eventually(
        Duration::from_secs(10),
        "foreign and bad beacons counted",
        || {
            let s = watcher.stats();
            s.beacons_malformed > before.beacons_malformed
                && s.beacons_foreign > before.beacons_foreign
        },
    )
    .await;
    assert!(!watcher.peers().iter().any(|p| p.name == "stranger"));
    drop(foreign);

    // A node that goes silent leaves everyone's directory, with a Left notification.
    let [a, b, c] = nodes;
    let gone = b.record().id.clone();
    drop(b);
    let left = within(Duration::from_secs(10), "left event", async {
        loop {
            if let Ok(Presence::Left(p)) = presence.recv().await {
                return p;
            }
        }
    })
    .await;
    assert_eq!(left.id, gone);
    eventually(Duration::from_secs(10), "a forgets b", || {
        !a.discovery().peers().iter().any(|p| p.id == gone)
    })
    .await;
    drop((a, c, far));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_calls_are_balanced_over_discovered_peers() {
    let mesh = mesh_name("balance");
    let port = beacon_port();
    let _nodes = [
        loopback_node(&mesh, "a", port).await,
        loopback_node(&mesh, "b", port).await,
        loopback_node(&mesh, "c", port).await,
    ];
    let discovery = loopback_discovery(&mesh, port, Duration::from_secs(5)).await;
    let client = MeshClient::new(
        discovery,
        MeshClientConfig::default().heartbeat(Duration::from_millis(500)),
    );
    // A call made before discovery has found anyone waits for a peer within its deadline.
    let (who, doubled): (String, u64) = net("first call", client.call("billing.quote", (21,)))
        .await
        .expect("first call");
    assert_eq!(doubled, 42);
    assert!(["a", "b", "c"].contains(&who.as_str()));
    eventually(Duration::from_secs(10), "three live peers", || {
        client.live_peers("billing").len() == 3
    })
    .await;
    let mut served: HashMap<String, usize> = HashMap::new();
    let calls = (0..600u64).map(|i| {
        let client = client.clone();
        async move { client.call::<(String, u64)>("billing.quote", (i,)).await }
    });
    let results = net("600 calls", futures::future::join_all(calls)).await;
    for result in results {
        let (who, _) = result.expect("quote succeeds");
        *served.entry(who).or_default() += 1;
    }
    assert_eq!(served.len(), 3, "{served:?}");
    assert!(
        served.values().all(|&n| n >= 60),
        "load is spread: {served:?}"
    );

    // Unknown services and malformed names fail clearly.
    let options = MeshCallOptions::timeout(Duration::from_millis(200));
    let err = client
        .call_with::<u64>("ledger.add", (1,), options)
        .await
        .expect_err("nobody offers ledger");
    assert!(matches!(err, zmesh::MeshCallError::NoPeer { .. }), "{err}");
    let err = client.call::<u64>("nodot", ()).await.expect_err("bad name");
    assert!(matches!(err, zmesh::MeshCallError::BadMethod(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_id_is_answered_from_the_reply_cache() {
    let runs = Arc::new(AtomicU64::new(0));
    let counted = runs.clone();
    let service = Service::new("acct").method("add", move |n: u64| {
        let total = counted.fetch_add(n, Ordering::SeqCst) + n;
        async move { Ok(total) }
    });
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(service)
        .start()
        .await
        .expect("node");
    let client = Client::new(node.endpoint());
    let with_id = |id: &str| CallOptions::timeout(Duration::from_secs(5)).request_id(id);
    let first: u64 = net(
        "first",
        client.call_with("acct.add", (5,), with_id("req-1")),
    )
    .await
    .expect("ok");
    let again: u64 = net(
        "repeat",
        client.call_with("acct.add", (5,), with_id("req-1")),
    )
    .await
    .expect("ok");
    assert_eq!((first, again), (5, 5), "the repeat gets the first reply");
    assert_eq!(runs.load(Ordering::SeqCst), 5, "the handler ran once");
    assert_eq!(node.stats().replayed, 1);
    // Another id, or no id, runs.
    let other: u64 = net(
        "other",
        client.call_with("acct.add", (1,), with_id("req-2")),
    )
    .await
    .expect("ok");
    let plain: u64 = net("plain", client.call("acct.add", (1,)))
        .await
        .expect("ok");
    assert_eq!((other, plain), (6, 7));
}

/// The headline: three nodes in child processes found by beacons; one is killed while
/// 10,000 calls run (half idempotent quotes, half non-idempotent charges).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_10k_calls() {
    const CALLS: usize = 10_000;
    const WORKERS: usize = 16;
    const KILL_AFTER: usize = 3_000;
    let heartbeat = Duration::from_millis(250);
    let mesh = mesh_name("kill");
    let port = beacon_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger");
    let mut children = Vec::new();
    for name in ["n1", "n2", "n3"] {
        children.push(
            spawn_mesh_child(ChildSpec {
                mesh: &mesh,
                name,
                bind: "tcp://127.0.0.1:0",
                beacon_port: port,
                beacon_target: "127.255.255.255",
                ledger: Some(&ledger),
                heartbeat,
                wrapper: &[],
            })
            .await,
        );
    }
    let discovery = loopback_discovery(&mesh, port, Duration::from_secs(3)).await;
    let client = MeshClient::new(discovery, MeshClientConfig::default().heartbeat(heartbeat));
    eventually(Duration::from_secs(15), "three live billing peers", || {
        client.live_peers("billing").len() == 3
    })
    .await;

    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Duration::from_secs(5);
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = client.clone();
            let next = next.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut quotes = Vec::new();
                let mut charges = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= CALLS as u64 {
                        break;
                    }
                    let options = MeshCallOptions::timeout(deadline);
                    if i.is_multiple_of(2) {
                        let started = Instant::now();
                        let r = client
                            .call_with::<(String, u64)>("billing.quote", (i,), options)
                            .await;
                        quotes.push((i, started.elapsed(), r.map_err(|e| e.to_string())));
                    } else {
                        let token = format!("w{w}-c{i}");
                        let r = client
                            .call_with::<String>("billing.charge", (token.clone(),), options)
                            .await;
                        charges.push((token, r.map_err(|e| e.to_string())));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                (quotes, charges)
            })
        })
        .collect();

    let done_probe = done.clone();
    eventually(Duration::from_secs(60), "first 3,000 calls", || {
        done_probe.load(Ordering::Relaxed) >= KILL_AFTER as u64
    })
    .await;
    let victim = children.remove(1);
    let victim_name = victim.name.clone();
    victim.kill().await;
    let killed_at = done.load(Ordering::Relaxed);

    let mut quotes = Vec::new();
    let mut charges = Vec::new();
    for worker in workers {
        let (q, c) = within(Duration::from_secs(120), "workers finish", worker)
            .await
            .expect("worker ran");
        quotes.extend(q);
        charges.extend(c);
    }
    assert_eq!(quotes.len() + charges.len(), CALLS);

    // Every idempotent call succeeded, whichever node it first went to.
    let failed: Vec<_> = quotes.iter().filter(|(_, _, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "idempotent calls failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    for (i, _, r) in &quotes {
        let (_, doubled) = r.as_ref().expect("checked above");
        assert_eq!(*doubled, i * 2);
    }
    // The victim stopped serving; the survivors served the rest.
    let late_served_by_victim = quotes
        .iter()
        .filter(|(i, _, r)| {
            *i > killed_at + 2 * WORKERS as u64 && r.as_ref().is_ok_and(|(n, _)| *n == victim_name)
        })
        .count();
    assert_eq!(late_served_by_victim, 0);

    // p99 stays bounded: within a generous multiple of the median, measured in this run.
    let mut latencies: Vec<Duration> = quotes.iter().map(|(_, d, _)| *d).collect();
    latencies.sort();
    let p50 = percentile(&latencies, 50.0);
    let p99 = percentile(&latencies, 99.0);
    let max = percentile(&latencies, 100.0);
    println!(
        "quotes: p50 {p50:?} p99 {p99:?} max {max:?}; stats {:?}",
        client.stats()
    );
    assert!(p99 <= p50 * 50, "p99 {p99:?} vs p50 {p50:?}");

    // No request ran twice: every token is in the ledger at most once, and every charge
    // that succeeded exactly once.
    let text = std::fs::read_to_string(&ledger).expect("ledger readable");
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in text.lines() {
        *runs.entry(line).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "requests ran twice: {twice:?}");
    let mut charge_failures = 0;
    for (token, r) in &charges {
        match r {
            Ok(_) => assert_eq!(runs.get(token.as_str()), Some(&1), "{token}"),
            Err(_) => charge_failures += 1,
        }
    }
    println!(
        "charges: {} ok, {charge_failures} failed (in flight on the killed node); ledger {} lines",
        charges.len() - charge_failures,
        runs.len()
    );
    assert!(
        charge_failures <= WORKERS,
        "only calls in flight at the kill may fail"
    );
    for child in children {
        child.kill().await;
    }
}

/// A frozen peer (SIGSTOP: its sockets stay open, it just stops answering) leaves the
/// rotation within two heartbeat periods and comes back after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_peer_leaves_the_rotation_and_returns() {
    let heartbeat = Duration::from_millis(500);
    let mesh = mesh_name("frozen");
    let port = beacon_port();
    let mut children = Vec::new();
    for name in ["f1", "f2"] {
        children.push(
            spawn_mesh_child(ChildSpec {
                mesh: &mesh,
                name,
                bind: "tcp://127.0.0.1:0",
                beacon_port: port,
                beacon_target: "127.255.255.255",
                ledger: None,
                heartbeat,
                wrapper: &[],
            })
            .await,
        );
    }
    // Directory expiry far beyond the heartbeat, so only health checks can act.
    let discovery = loopback_discovery(&mesh, port, Duration::from_secs(60)).await;
    let client = MeshClient::new(discovery, MeshClientConfig::default().heartbeat(heartbeat));
    eventually(Duration::from_secs(15), "two live peers", || {
        client.live_peers("billing").len() == 2
    })
    .await;
    let frozen = &children[0];
    frozen.signal("STOP");
    let stopped = Instant::now();
    eventually(
        Duration::from_secs(10),
        "frozen peer out of rotation",
        || client.live_peers("billing").len() == 1,
    )
    .await;
    let out_after = stopped.elapsed();
    println!("frozen peer out of rotation after {out_after:?} (heartbeat {heartbeat:?})");
    // Two periods, plus one period of slack for scheduling on a loaded machine.
    assert!(out_after <= heartbeat * 3, "{out_after:?}");
    // Calls keep working meanwhile, on the other peer.
    for i in 0..50u64 {
        let (who, _): (String, u64) = net("call", client.call("billing.quote", (i,)))
            .await
            .expect("served");
        assert_eq!(who, children[1].name);
    }
    frozen.signal("CONT");
    eventually(
        Duration::from_secs(10),
        "thawed peer back in rotation",
        || client.live_peers("billing").len() == 2,
    )
    .await;
    let stats = client.stats();
    assert!(stats.peers_down >= 1 && stats.peers_up >= 1, "{stats:?}");
    for child in children {
        child.kill().await;
    }
}

/// Hedging: when one peer turns slow, idempotent calls that land on it are answered by a
/// second attempt on the other peer after the method's usual latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedged_calls_route_around_a_slow_peer() {
    let mesh = mesh_name("hedge");
    let slow = Arc::new(AtomicBool::new(false));
    let stall = Duration::from_millis(800);
    let service = |name: &'static str, slow: Option<Arc<AtomicBool>>| {
        Service::new("lat")
            .method("get", move |n: u64| {
                let slow = slow.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
                async move {
                    if slow {
                        tokio::time::sleep(stall).await;
                    }
                    Ok((name, n))
                }
            })
            .idempotent()
    };
    let a = MeshNode::builder(&mesh)
        .bind("tcp://127.0.0.1:0")
        .service(service("fast", None))
        .start()
        .await
        .expect("node");
    let b = MeshNode::builder(&mesh)
        .bind("tcp://127.0.0.1:0")
        .service(service("slow", Some(slow.clone())))
        .start()
        .await
        .expect("node");
    let config = DiscoveryConfig::new(&mesh)
        .seed(a.node().endpoint())
        .seed(b.node().endpoint())
        .gossip_interval(Duration::from_millis(100));
    let discovery = Discovery::start(config).await.expect("discovery");
    let hedge = HedgeConfig::default()
        .percentile(90.0)
        .min_delay(Duration::from_millis(5))
        .min_samples(50);
    let client = MeshClient::new(discovery, MeshClientConfig::default().hedge(hedge));
    eventually(Duration::from_secs(10), "two peers", || {
        client.live_peers("lat").len() == 2
    })
    .await;
    for i in 0..200u64 {
        net("warm-up", client.call::<(String, u64)>("lat.get", (i,)))
            .await
            .expect("ok");
    }
    slow.store(true, Ordering::SeqCst);
    let mut worst = Duration::ZERO;
    for i in 0..40u64 {
        let started = Instant::now();
        let (who, n): (String, u64) = net("hedged", client.call("lat.get", (i,)))
            .await
            .expect("ok");
        assert_eq!((who.as_str(), n), ("fast", i));
        worst = worst.max(started.elapsed());
    }
    let stats = client.stats();
    println!("worst hedged call {worst:?}, stats {stats:?}");
    assert!(stats.hedges > 0, "{stats:?}");
    assert!(worst < stall, "every call beat the stalled peer: {worst:?}");
    drop((a, b));
}

/// A call marked idempotent per call is failed over even though the method is not marked
/// at registration; the per-call mark wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_call_idempotence_overrides_registration() {
    let mesh = mesh_name("percall");
    let port = beacon_port();
    let a = loopback_node(&mesh, "a", port).await;
    let b = loopback_node(&mesh, "b", port).await;
    let discovery = loopback_discovery(&mesh, port, Duration::from_secs(5)).await;
    let client = MeshClient::new(
        discovery,
        MeshClientConfig::default().heartbeat(Duration::from_millis(300)),
    );
    eventually(Duration::from_secs(10), "two peers", || {
        client.live_peers("billing").len() == 2
    })
    .await;
    let gone = a.record().name.clone();
    a.shutdown(Duration::ZERO).await;
    // Right after the shutdown the client may still pick the dead peer; the per-call mark
    // lets it retry on the other one, so every call succeeds.
    for i in 0..20 {
        let options = MeshCallOptions::timeout(Duration::from_secs(5)).idempotent(true);
        let who: String = net(
            "charge",
            client.call_with("billing.charge", (format!("t{i}"),), options),
        )
        .await
        .expect("failed over");
        assert_ne!(who, gone);
    }
    drop(b);
}

/// A peer that died before the client ever connected to it (still in the directory, since
/// its entry has not expired) costs a call one connect timeout, then the call goes to the
/// live node: a connect that failed never delivered the request, so even a non-idempotent
/// call may move. It must not wait out its whole deadline connecting to the dead address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_dead_before_the_first_connect_is_failed_over() {
    let mesh = mesh_name("vanished");
    let port = beacon_port();
    let doomed = loopback_node(&mesh, "a", port).await;
    let _survivor = loopback_node(&mesh, "b", port).await;
    // Entries outlive the test, so the dead node stays a candidate throughout.
    let discovery = loopback_discovery(&mesh, port, Duration::from_secs(60)).await;
    eventually(NET_TIMEOUT, "both nodes discovered", || {
        discovery.peers().len() == 2
    })
    .await;
    // Abrupt: no leave message, the socket just closes.
    let doomed_address = doomed
        .node()
        .endpoint()
        .strip_prefix("tcp://")
        .expect("a tcp endpoint")
        .to_owned();
    drop(doomed);
    // The `zeromq` crate closes a dropped socket's listener asynchronously, so for a moment
    // the node still accepts connections. Wait until it refuses them: this test is about a
    // peer already dead when the client first connects, not one dying under a call (a
    // non-idempotent call cut off that way may have run and rightly fails).
    net("the dead node's listener closes", async {
        while tokio::net::TcpStream::connect(&doomed_address)
            .await
            .is_ok()
        {
            // No event exists for a listener closing inside the crate.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;

    let client = MeshClient::new(
        discovery,
        MeshClientConfig::default().heartbeat(Duration::from_millis(500)),
    );
    // Each call's deadline (30 s) is far beyond NET_TIMEOUT: a call stuck connecting to the
    // dead node until its deadline fails this test. Not idempotent, so nothing but the
    // connect failure itself can move it to the other node.
    for i in 0..20u64 {
        let options = MeshCallOptions::timeout(Duration::from_secs(30)).idempotent(false);
        let call = client.call_with::<(String, u64)>("billing.quote", (i,), options);
        let (who, doubled) = net("call with a dead peer in the directory", call)
            .await
            .expect("the call moves to the live node");
        assert_eq!((who.as_str(), doubled), ("b", 2 * i));
    }
}
