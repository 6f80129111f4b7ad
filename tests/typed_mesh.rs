//! `#[zmesh::service]` over the mesh: a trait served by two `MeshNode`s and called through
//! its generated client over a `MeshClient` (a value, a stream, a remote error as
//! `CallError::Remote`, `NoPeer` for a service nobody offers, `BadMethod` for an unprefixed
//! trait); a stream whose peer dies before its first item fails over to the other node (if
//! idempotent; if not, it fails), and one whose peer dies after its first item ends with that
//! error instead of restarting.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, net};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use zmesh::mesh::{Discovery, DiscoveryConfig, MeshClient, MeshClientConfig, MeshNode};
use zmesh::{CallError, CallOptions, HandlerError, ItemStream, NodeConfig};

/// Heartbeat period of nodes and client alike (a client expects its server's period): a
/// peer that dies without closing its connection is noticed within two periods.
const HEARTBEAT: Duration = Duration::from_millis(500);

/// A service whose every answer says which node gave it.
#[zmesh::service]
trait Relay {
    /// The serving node's name, and `n`.
    #[zmesh(idempotent)]
    async fn whoami(&self, n: u64) -> Result<(String, u64), HandlerError>;
    /// The serving node's name, `times` times.
    #[zmesh(stream, idempotent)]
    async fn names(&self, times: u32) -> Result<ItemStream<String>, HandlerError>;
    /// Reports that it started, waits for its node's gate to open, then streams the node's
    /// name `times` times.
    #[zmesh(stream, idempotent)]
    async fn gated(&self, times: u32) -> Result<ItemStream<String>, HandlerError>;
    /// As `gated`, but not idempotent: it may not run twice.
    #[zmesh(stream)]
    async fn gated_once(&self, times: u32) -> Result<ItemStream<String>, HandlerError>;
    /// Reports that it started, streams the node's name once, then never ends. Idempotent,
    /// so only the first-item rule keeps it from moving to another node.
    #[zmesh(stream, idempotent)]
    async fn stalls(&self) -> Result<ItemStream<String>, HandlerError>;
    /// Always fails with `Refused`.
    async fn refuse(&self, why: String) -> Result<u64, HandlerError>;
}

/// A service no node offers.
#[zmesh::service]
trait Absent {
    /// Never answered.
    async fn anyone(&self) -> Result<u64, HandlerError>;
    /// Never answered either.
    #[zmesh(stream)]
    async fn listening(&self) -> Result<ItemStream<u64>, HandlerError>;
}

/// A stock zerorpc server's methods, unprefixed: no service name to look up in a mesh.
#[zmesh::service(name = "")]
trait Bare {
    /// Never answered over the mesh.
    async fn ping(&self) -> Result<String, HandlerError>;
}

/// One node's implementation: its name, the gate its `gated` calls wait on, and where it
/// reports the handlers that started.
struct Station {
    name: String,
    gate: watch::Receiver<bool>,
    started: mpsc::UnboundedSender<(String, &'static str)>,
}

impl Station {
    fn started(&self, method: &'static str) {
        // The test may have stopped listening; the handler goes on regardless.
        let _ = self.started.send((self.name.clone(), method));
    }

    async fn through_gate(&self, times: u32) -> Result<ItemStream<String>, HandlerError> {
        let mut gate = self.gate.clone();
        gate.wait_for(|open| *open)
            .await
            .map_err(|_| HandlerError::new("GateGone", "the test dropped the gate"))?;
        Ok(self.repeated(times))
    }

    fn repeated(&self, times: u32) -> ItemStream<String> {
        let name = self.name.clone();
        futures::stream::iter((0..times).map(move |_| Ok(name.clone()))).boxed()
    }
}

impl Relay for Station {
    async fn whoami(&self, n: u64) -> Result<(String, u64), HandlerError> {
        Ok((self.name.clone(), n))
    }

    async fn names(&self, times: u32) -> Result<ItemStream<String>, HandlerError> {
        Ok(self.repeated(times))
    }

    async fn gated(&self, times: u32) -> Result<ItemStream<String>, HandlerError> {
        self.started("gated");
        self.through_gate(times).await
    }

    async fn gated_once(&self, times: u32) -> Result<ItemStream<String>, HandlerError> {
        self.started("gated_once");
        self.through_gate(times).await
    }

    async fn stalls(&self) -> Result<ItemStream<String>, HandlerError> {
        self.started("stalls");
        Ok(self.repeated(1).chain(futures::stream::pending()).boxed())
    }

    async fn refuse(&self, why: String) -> Result<u64, HandlerError> {
        Err(HandlerError::new(
            "Refused",
            format!("{} refuses: {why}", self.name),
        ))
    }
}

/// Two mesh nodes serving `relay` and a mesh client that sees both.
struct Pair {
    nodes: Vec<Option<MeshNode>>,
    gates: Vec<watch::Sender<bool>>,
    started: mpsc::UnboundedReceiver<(String, &'static str)>,
    client: MeshClient,
}

impl Pair {
    async fn start(mesh: &str) -> Self {
        let (report, started) = mpsc::unbounded_channel();
        let mut nodes = Vec::new();
        let mut gates = Vec::new();
        for name in ["a", "b"] {
            let (gate, closed) = watch::channel(false);
            let station = Station {
                name: name.to_owned(),
                gate: closed,
                started: report.clone(),
            };
            let node = net(
                "mesh node start",
                MeshNode::builder(mesh)
                    .name(name)
                    .bind("tcp://127.0.0.1:0")
                    .node_config(NodeConfig::default().heartbeat(HEARTBEAT))
                    .service(RelayServer::new(station))
                    .start(),
            )
            .await
            .expect("mesh node starts");
            nodes.push(Some(node));
            gates.push(gate);
        }
        let mut config = DiscoveryConfig::new(mesh).gossip_interval(Duration::from_millis(100));
        for node in nodes.iter().flatten() {
            config = config.seed(node.node().endpoint());
        }
        let discovery = net("discovery start", Discovery::start(config))
            .await
            .expect("discovery starts");
        let client = MeshClient::new(discovery, MeshClientConfig::default().heartbeat(HEARTBEAT));
        eventually(common::NET_TIMEOUT, "both nodes in rotation", || {
            client.live_peers("relay").len() == 2
        })
        .await;
        Self {
            nodes,
            gates,
            started,
            client,
        }
    }

    /// The next handler a node reports started: (node, method).
    async fn next_started(&mut self) -> (String, &'static str) {
        net("a handler starts", self.started.recv())
            .await
            .expect("the nodes hold the report channel")
    }

    fn index(name: &str) -> usize {
        usize::from(name != "a")
    }

    /// Drops the node abruptly: no shutdown, its tasks and sockets just go.
    fn kill(&mut self, name: &str) {
        drop(self.nodes[Self::index(name)].take());
    }

    fn open_gate(&self, name: &str) {
        self.gates[Self::index(name)].send_replace(true);
    }
}

/// A mesh name no other test run uses (the seeds keep each test's nodes to itself anyway).
fn mesh_name(test: &str) -> String {
    format!("typed-{test}-{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_client_calls_over_the_mesh() {
    let pair = Pair::start(&mesh_name("calls")).await;
    let relay = RelayClient::new(pair.client.clone());

    // Values: both nodes serve; balancing spreads sequential calls over them.
    let mut answered = HashSet::new();
    for n in 0..200 {
        let (who, echoed) = net("whoami", relay.whoami(n)).await.expect("whoami");
        assert_eq!(echoed, n);
        answered.insert(who);
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(answered, HashSet::from(["a".to_owned(), "b".to_owned()]));

    // A stream: every item from the one node it opened on.
    let names: Vec<String> = net("names", async {
        relay
            .names(3)
            .await
            .expect("the stream opens")
            .map(|item| item.expect("an item"))
            .collect()
            .await
    })
    .await;
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| *n == names[0]), "{names:?}");
    assert!(["a", "b"].contains(&names[0].as_str()), "{names:?}");

    // A handler's error arrives as it would over a direct client.
    match net("refuse", relay.refuse("no".into())).await {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.name, "Refused");
            assert!(e.message.ends_with(" refuses: no"), "{}", e.message);
        }
        other => panic!("refuse should fail remotely, got {other:?}"),
    }

    // Options reach the mesh client: the deadline bounds the wait for a peer.
    let deadline = Duration::from_millis(200);
    let absent = AbsentClient::new(&pair.client).with_options(CallOptions::timeout(deadline));
    match net("a service nobody offers", absent.anyone()).await {
        Err(CallError::NoPeer { service, waited }) => {
            assert_eq!(service, "absent");
            assert!(waited >= deadline, "gave up after {waited:?}");
        }
        other => panic!("expected NoPeer, got {other:?}"),
    }
    match net("a stream nobody offers", absent.listening()).await {
        Err(CallError::NoPeer { service, .. }) => assert_eq!(service, "absent"),
        other => panic!("expected NoPeer, got {:?}", other.map(|_| "a stream")),
    }

    // An unprefixed method names no service to resolve.
    match net(
        "unprefixed",
        BareClient::new(Arc::new(pair.client.clone())).ping(),
    )
    .await
    {
        Err(CallError::BadMethod(method)) => assert_eq!(method, "ping"),
        other => panic!("expected BadMethod, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_peer_dies_before_its_first_item_fails_over() {
    let mut pair = Pair::start(&mesh_name("before")).await;
    let relay = RelayClient::new(pair.client.clone());
    // The call and the test's steps run side by side in this task (a generated client's
    // call future cannot be spawned: its `Send` proof trips rust-lang/rust#100013).
    let call = async {
        let items: Vec<Result<String, CallError>> = relay.gated(3).await?.collect().await;
        items
            .into_iter()
            .collect::<Result<Vec<String>, CallError>>()
    };
    let steps = async {
        let (first, method) = pair.next_started().await;
        assert_eq!(method, "gated");
        // Its gate stays shut: the stream has no item yet when its node dies.
        pair.kill(&first);
        let (second, method) = pair.next_started().await;
        assert_eq!(method, "gated");
        assert_ne!(second, first, "the stream moved to the other node");
        pair.open_gate(&second);
        second
    };
    let (items, second) = net("the failed-over stream", futures::future::join(call, steps)).await;
    assert_eq!(items.expect("every item arrives"), vec![second; 3]);
    assert_eq!(pair.client.stats().retries, 1);
}

/// A stream that is not idempotent is never repeated, even before its first item: its
/// handler may have run, and the node's reply cache does not remember streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_stream_whose_peer_dies_is_not_repeated() {
    let mut pair = Pair::start(&mesh_name("once")).await;
    let relay = RelayClient::new(pair.client.clone());
    let call = async { relay.gated_once(3).await.map(|_| "a stream") };
    let steps = async {
        let (first, method) = pair.next_started().await;
        assert_eq!(method, "gated_once");
        pair.kill(&first);
    };
    let (result, ()) = net("the stream's failure", futures::future::join(call, steps)).await;
    match result {
        Err(CallError::PeerLost(_)) => {}
        other => panic!("the stream should fail with PeerLost, got {other:?}"),
    }
    assert!(pair.started.try_recv().is_err(), "no other handler started");
    assert_eq!(pair.client.stats().retries, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_peer_dies_after_its_first_item_ends_with_its_error() {
    let mut pair = Pair::start(&mesh_name("after")).await;
    let relay = RelayClient::new(pair.client.clone());
    let mut stream = net("the stream opens", relay.stalls())
        .await
        .expect("the stream opens");
    let first = net("the first item", stream.next())
        .await
        .expect("an item")
        .expect("the first item is a value");
    assert_eq!(pair.next_started().await, (first.clone(), "stalls"));
    pair.kill(&first);
    match net("the item after the peer died", stream.next()).await {
        Some(Err(CallError::PeerLost(_))) => {}
        other => panic!("the stream should end with PeerLost, got {other:?}"),
    }
    assert!(
        net("the end of the stream", stream.next()).await.is_none(),
        "nothing follows the error"
    );
    // Never restarted elsewhere: the other node ran no handler, and no call was retried.
    assert!(pair.started.try_recv().is_err(), "no other handler started");
    assert_eq!(pair.client.stats().retries, 0);
}
