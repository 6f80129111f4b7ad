//! One hostile or careless peer must cost the others nothing.
//!
//! The attacks of the hardening round, each reproduced over real sockets against a node on
//! a runtime (and OS thread) of its own, as another process would be, while a well-behaved
//! client calls the same node:
//!
//! - **A client that stops reading.** It sends a burst of requests for an unknown method
//!   without reading a single reply, then a trickle of two a second. Every request earns an
//!   `ERR NameError`; once the client's send queue is full those cannot be delivered. They
//!   used to share one queue and one writer with every other client's errors and heartbeats,
//!   and that writer waited up to a second on each: other clients' long calls were lost for
//!   want of heartbeats and their errors never arrived. Now the node never waits to send what
//!   it originates: messages to a full queue are dropped for that peer alone, refusals to
//!   one connection are rate-limited, and a connection that sends nothing but bad requests
//!   (10,000 in a row by default) is closed.

mod common;

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeromq::{DealerSocket, Socket, SocketSend, ZmqMessage};
use zmesh::wire::{self, Header, MessageId};
use zmesh::{CallError, CallOptions, Client, ClientConfig, MeshKey, Node, NodeConfig};

const T: Duration = Duration::from_secs(10);
/// Heartbeat period of the node and the good client: short, so that "the call outlived many
/// periods" is quick to show.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Requests the non-reader sends before it slows to a trickle: far more `ERR`s than the
/// node can queue for it (the `zeromq` per-peer queue and the socket buffers).
const BURST: usize = 300_000;
const SECRET: &str = "hostile peers test key, 32 bytes";

fn key() -> MeshKey {
    MeshKey::from_secret(SECRET).expect("long enough")
}

/// Starts an echo node on a runtime of its own; returns its endpoint.
fn node_on_own_runtime(config: NodeConfig, key: Option<MeshKey>) -> String {
    common::node_on_own_runtime(move || {
        let builder = Node::builder()
            .bind("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .config(config);
        match key {
            Some(key) => builder.mesh_key(key),
            None => builder,
        }
    })
}

/// A plain zerorpc request for a method the node does not have: each one earns an `ERR`.
fn unknown_method_request() -> ZmqMessage {
    let header = Header::zmesh_with_id(MessageId::generate(), None);
    let event = wire::encode_event(&header, "no.such_method", &[0x90]);
    ZmqMessage::try_from(vec![Bytes::new(), event]).expect("two frames")
}

/// Connects a DEALER that never reads, sends [`BURST`] requests, then two a second until
/// the task is aborted. The socket is never polled for input, so its replies back up into
/// the node. Closed by the node (it sends nothing but bad requests), it connects again and
/// goes on, as a persistent attacker would.
async fn non_reader(endpoint: String, burst_sent: tokio::sync::oneshot::Sender<()>) {
    async fn connect(endpoint: &str) -> DealerSocket {
        let mut sock = DealerSocket::new();
        common::net("the non-reader connects", sock.connect(endpoint))
            .await
            .expect("connects");
        sock
    }
    async fn send(sock: &mut DealerSocket, endpoint: &str, request: &ZmqMessage) {
        let sent = common::net("a request is sent", sock.send(request.clone())).await;
        if sent.is_err() {
            *sock = connect(endpoint).await;
        }
    }
    let mut sock = connect(&endpoint).await;
    let request = unknown_method_request();
    for _ in 0..BURST {
        send(&mut sock, &endpoint, &request).await;
    }
    let _ = burst_sent.send(());
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        send(&mut sock, &endpoint, &request).await;
    }
}

/// Which of the node's defences the attack meets.
#[derive(Debug, Clone, Copy)]
enum Defence {
    /// The defaults: the connection's refusals are rate-limited, so most `ERR`s are never
    /// written at all, and after 10,000 bad requests in a row it is closed.
    Defaults,
    /// No effective rate limit and no disconnect, so the `ERR`s fill the non-reader's queue
    /// and the node must drop them there without waiting.
    DropWhenFull,
}

impl Defence {
    fn config(self) -> NodeConfig {
        let config = NodeConfig::default().heartbeat(HEARTBEAT);
        match self {
            Defence::Defaults => config,
            Defence::DropWhenFull => config
                .refusal_rate(u32::MAX / 2, u32::MAX / 2)
                .disconnect_after_bad_requests(0),
        }
    }

    /// The counters that show this defence at work.
    fn counters(self) -> &'static [&'static str] {
        match self {
            Defence::Defaults => &["refusals_suppressed", "garbage_disconnects"],
            Defence::DropWhenFull => &["control_dropped_full"],
        }
    }
}

async fn counter(client: &Client, name: &str) -> u64 {
    let stats: rmpv::Value = common::net("stats", client.call(zmesh::reserved::STATS, ()))
        .await
        .expect("stats");
    let counters = stats
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("counters")))
        .and_then(|(_, v)| v.as_map())
        .expect("a counters map");
    counters
        .iter()
        .find(|(k, _)| k.as_str() == Some(name))
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// While a non-reader runs its burst-then-trickle attack, another client's call that lasts
/// many heartbeat periods succeeds and its `NameError` arrives.
async fn non_reader_costs_others_nothing(defence: Defence, key: Option<MeshKey>) {
    let endpoint = node_on_own_runtime(defence.config(), key.clone());
    let mut client_config = ClientConfig::default().heartbeat(HEARTBEAT);
    if let Some(key) = key {
        client_config = client_config.mesh_key(key);
    }
    let good = Client::with_config(&endpoint, client_config);
    let up: String = common::net("a first call", good.call("echo.upper", ("up",)))
        .await
        .expect("served before the attack");
    assert_eq!(up, "UP");

    let (burst_sent, burst_done) = tokio::sync::oneshot::channel();
    let attack = tokio::spawn(non_reader(endpoint.clone(), burst_sent));
    common::within(Duration::from_secs(120), "the burst", burst_done)
        .await
        .expect("the non-reader sent its burst");
    // The node has met the attack with the defence under test.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for &counter_name in defence.counters() {
        while counter(&good, counter_name).await == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{counter_name} stayed at 0 through the attack"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A call of 15 heartbeat periods, kept alive by heartbeats that must get through.
    let long_ms = (HEARTBEAT * 15).as_millis() as u64;
    let slept: u64 = common::within(
        Duration::from_secs(30),
        "the long call",
        good.call_with("echo.sleep", (long_ms,), CallOptions::timeout(T * 2)),
    )
    .await
    .expect("the long call succeeds while the non-reader trickles");
    assert_eq!(slept, long_ms);
    // Its errors arrive too.
    let err = common::within(
        T,
        "an unknown method's error",
        good.call::<rmpv::Value>("echo.no_such_method", ()),
    )
    .await
    .expect_err("no such method");
    match err {
        CallError::Remote(remote) => assert_eq!(remote.name, "NameError"),
        other => panic!("expected NameError, got {other}"),
    }
    let mut figures = Vec::new();
    for &name in defence.counters() {
        figures.push(format!("{name} {}", counter(&good, name).await));
    }
    eprintln!(
        "figure non-reader ({defence:?}): {long_ms} ms call ok, NameError arrived; {}",
        figures.join(", ")
    );
    assert!(!attack.is_finished(), "the attacker is still trickling");
    attack.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_other_clients_nothing() {
    non_reader_costs_others_nothing(Defence::Defaults, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_other_clients_nothing_keyed() {
    non_reader_costs_others_nothing(Defence::Defaults, Some(key())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_to_a_full_queue_are_dropped_for_that_peer_alone() {
    non_reader_costs_others_nothing(Defence::DropWhenFull, None).await;
}

/// Many connections that each hold many long calls fill the node-wide bound; a client with
/// no call in flight must still be served. Near the bound, the connections holding the most
/// calls are refused first (`ERR Overloaded`), so there is always room below a fair share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_holding_the_most_calls_are_refused_first() {
    const LIMIT: usize = 400;
    const HOGS: usize = 11;
    const CALLS_PER_HOG: usize = 100;
    let config = NodeConfig::default()
        .max_concurrent_calls(LIMIT)
        .max_calls_per_peer(CALLS_PER_HOG);
    let node = common::net(
        "node starts",
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .config(config)
            .start(),
    )
    .await
    .expect("node starts");
    let endpoint = node.endpoint().to_owned();
    // Each hog is its own connection and asks for far more long calls than a fair share.
    let hogs: Vec<Client> = (0..HOGS).map(|_| Client::new(&endpoint)).collect();
    let mut calls = Vec::new();
    for hog in &hogs {
        for _ in 0..CALLS_PER_HOG {
            let hog = hog.clone();
            calls.push(tokio::spawn(async move {
                hog.call_with::<u64>("echo.sleep", (60_000u64,), CallOptions::timeout(T * 9))
                    .await
            }));
        }
    }
    // Every hog call is either running or refused.
    common::eventually(T, "the hogs' calls settle", || {
        let stats = node.stats();
        stats.in_flight as u64 + stats.overloaded >= (HOGS * CALLS_PER_HOG) as u64
    })
    .await;
    let stats = node.stats();
    assert!(stats.fair_share_refused > 0, "{stats:?}");
    assert!(stats.in_flight < LIMIT, "room is left: {stats:?}");

    // A client with nothing in flight is served, fast calls and slow.
    let good = Client::new(&endpoint);
    let up: String = common::net("a fast call", good.call("echo.upper", ("ok",)))
        .await
        .expect("a well-behaved client is served");
    assert_eq!(up, "OK");
    let slept: u64 = common::net("a slow call", good.call("echo.sleep", (100u64,)))
        .await
        .expect("a well-behaved client's slow call is served");
    assert_eq!(slept, 100);

    eprintln!(
        "figure fair admission: {} hog calls running of {}, {} refused for their share; the good client served",
        stats.in_flight,
        HOGS * CALLS_PER_HOG,
        stats.fair_share_refused
    );
    // The refused hog calls got a clear answer; the rest are still running.
    let mut refused = 0;
    for call in calls {
        if call.is_finished() {
            let result = common::net("a finished hog call", call)
                .await
                .expect("the task did not panic");
            match result {
                Err(CallError::Remote(remote)) => assert_eq!(remote.name, "Overloaded"),
                other => panic!("a hog call ended other than refused: {other:?}"),
            }
            refused += 1;
        } else {
            call.abort();
        }
    }
    assert!(refused > 0);
    drop(hogs);
}

/// A result over the node's message size limit is answered `ERR MessageTooLarge` naming
/// the method and the size, instead of being queued (and refused by the caller anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_result_is_a_clear_error() {
    const LIMIT: usize = 64 * 1024;
    let node = common::net(
        "node starts",
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .config(NodeConfig::default().max_message_size(LIMIT))
            .start(),
    )
    .await
    .expect("node starts");
    let client = Client::new(node.endpoint());
    // The request fits, but echo.echo of a string just under the limit, plus the reply's
    // header, does not.
    let big = "x".repeat(LIMIT - 100);
    let err = common::net(
        "the oversized echo",
        client.call::<String>("echo.echo", (&big,)),
    )
    .await
    .expect_err("the result is over the limit");
    let remote = err.remote().expect("a remote error");
    assert_eq!(remote.name, "MessageTooLarge");
    assert!(
        remote.message.contains("echo.echo") && remote.message.contains(&LIMIT.to_string()),
        "{}",
        remote.message
    );
    assert_eq!(node.stats().oversized_replies, 1);
    // A result that fits is still served.
    let small: String = common::net("a small echo", client.call("echo.echo", ("ok",)))
        .await
        .expect("served");
    assert_eq!(small, "ok");
}

/// A connection that sends nothing but bad requests is closed after
/// `disconnect_after_bad_requests` of them in a row (counted), and the node goes on serving
/// everyone else; a connection whose bad requests are broken by good calls is not.
async fn garbage_in_a_row_is_disconnected(key: Option<MeshKey>) {
    const AFTER: u32 = 50;
    let mut builder = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(zmesh_echo::service())
        .config(NodeConfig::default().disconnect_after_bad_requests(AFTER));
    let mut client_config = ClientConfig::default();
    if let Some(key) = key {
        builder = builder.mesh_key(key.clone());
        client_config = client_config.mesh_key(key);
    }
    let node = common::net("node starts", builder.start())
        .await
        .expect("node starts");
    let good = Client::with_config(node.endpoint(), client_config);
    // A client that makes mistakes between good calls keeps its connection.
    for _ in 0..3 {
        for _ in 0..AFTER / 2 {
            let err = common::net("a mistaken call", good.call::<()>("no.such_method", ()))
                .await
                .expect_err("unknown method");
            assert_eq!(err.remote().map(|r| r.name.as_str()), Some("NameError"));
        }
        let up: String = common::net("a good call", good.call("echo.upper", ("a",)))
            .await
            .expect("served");
        assert_eq!(up, "A");
    }
    assert_eq!(node.stats().garbage_disconnects, 0);

    // A raw ZMTP DEALER over TCP, so that the node's close is seen as the end of the stream.
    let address = node.endpoint().trim_start_matches("tcp://").to_owned();
    let mut raw = common::net("the garbage sender connects", TcpStream::connect(address))
        .await
        .expect("connects");
    let mut greeting = vec![0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F, 3, 0];
    greeting.extend_from_slice(b"NULL");
    greeting.resize(64, 0);
    let mut ready = vec![0x04, 0, 0x05];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&6u32.to_be_bytes());
    ready.extend_from_slice(b"DEALER");
    ready[1] = u8::try_from(ready.len() - 2).expect("short");
    // Unknown methods on a plain node; on a keyed one, unsealed requests (Unauthenticated).
    let event = unknown_method_request().get(1).expect("event").clone();
    let mut bad = vec![0x01, 0];
    bad.push(0x02);
    bad.extend_from_slice(&u64::try_from(event.len()).expect("len").to_be_bytes());
    bad.extend_from_slice(&event);
    let mut wire_bytes = greeting;
    wire_bytes.extend_from_slice(&ready);
    for _ in 0..AFTER * 2 {
        wire_bytes.extend_from_slice(&bad);
    }
    common::net("the bad requests are sent", raw.write_all(&wire_bytes))
        .await
        .expect("sent");
    common::net("the node closes the connection", async {
        let mut sink = vec![0u8; 64 * 1024];
        loop {
            match raw.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    })
    .await;
    // The socket counts the close just after it ends the connection.
    common::eventually(T, "the socket counts the close", || {
        node.stats().peers_disconnected == 1
    })
    .await;
    assert_eq!(node.stats().garbage_disconnects, 1);
    // Everyone else is still served, on the same connection as before.
    let up: String = common::net("after the disconnect", good.call("echo.upper", ("b",)))
        .await
        .expect("served");
    assert_eq!(up, "B");
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_sending_garbage_is_closed() {
    garbage_in_a_row_is_disconnected(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_sending_garbage_is_closed_keyed() {
    garbage_in_a_row_is_disconnected(Some(key())).await;
}
