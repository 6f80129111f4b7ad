//! The mesh key over real sockets on loopback: the right key is served; a wrong key, a
//! tampered frame and a replayed frame never reach a handler and get a clear `ERR`; a
//! previous key is accepted within its grace period only; a capture of encrypted traffic
//! holds none of the plaintext; and a plain endpoint of a keyed node still serves unkeyed
//! zmesh clients and stock zerorpc.

mod common;
#[path = "common/zerorpc_venv.rs"]
mod zerorpc_venv;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::mesh::{MeshClientConfig, MeshNode};
use zmesh::wire::{self, Header, MessageId};
use zmesh::{
    CallError, CallOptions, Client, ClientConfig, Delivery, MeshKey, Node, NodeConfig, Publisher,
    Subscriber, SubscriberConfig,
};
use zmesh_proto::seal::envelope::{self, SealKey};

const ALPHA: &str = "alpha mesh key, 32 bytes long!!!";
const BRAVO: &str = "bravo mesh key, 32 bytes long!!!";

fn key(secret: &str) -> MeshKey {
    MeshKey::from_secret(secret).expect("long enough")
}

async fn keyed_node(key: MeshKey) -> Node {
    net(
        "keyed node start",
        Node::builder()
            .name("echo")
            .bind("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .export_unprefixed("echo")
            .mesh_key(key)
            .start(),
    )
    .await
    .expect("node starts")
}

fn keyed_client(endpoint: &str, key: MeshKey) -> Client {
    Client::with_config(endpoint, ClientConfig::default().mesh_key(key))
}

fn remote_name(err: &CallError) -> Option<&str> {
    err.remote().map(|r| r.name.as_str())
}

#[tokio::test]
async fn right_key_is_served_over_tcp_and_ipc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ipc = format!("ipc://{}/keyed.sock", dir.path().display());
    for (endpoint, encrypt) in [("tcp://127.0.0.1:0".to_owned(), true), (ipc, false)] {
        let k = key(ALPHA).encrypt(encrypt);
        let node = net(
            "node start",
            Node::builder()
                .bind(endpoint)
                .service(zmesh_echo::service())
                .mesh_key(k.clone())
                .start(),
        )
        .await
        .expect("node starts");
        let client = keyed_client(node.endpoint(), k);
        let up: String = net("call", client.call("echo.upper", ("hi",)))
            .await
            .expect("served");
        assert_eq!(up, "HI");
        // Streams, heartbeats and credit are sealed too.
        let items: Vec<u64> = {
            use futures::StreamExt;
            let stream = net("stream", client.call_stream::<u64>("echo.count", (5,)))
                .await
                .expect("stream opens");
            net("stream items", stream.collect::<Vec<_>>())
                .await
                .into_iter()
                .map(|r| r.expect("item"))
                .collect()
        };
        assert_eq!(items, vec![0, 1, 2, 3, 4]);
        let stats = node.stats();
        assert_eq!((stats.unauthenticated, stats.replay_rejected), (0, 0));
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn wrong_key_and_no_key_get_unauthenticated() {
    let node = keyed_node(key(ALPHA)).await;
    let wrong = keyed_client(node.endpoint(), key(BRAVO));
    let err = net(
        "wrong key call",
        wrong.call::<String>("echo.upper", ("hi",)),
    )
    .await
    .expect_err("refused");
    assert_eq!(remote_name(&err), Some("Unauthenticated"), "{err}");
    let unkeyed = Client::new(node.endpoint());
    let err = net(
        "unkeyed call",
        unkeyed.call_with::<String>(
            "echo.upper",
            ("hi",),
            CallOptions::timeout(Duration::from_secs(5)),
        ),
    )
    .await
    .expect_err("refused");
    assert_eq!(remote_name(&err), Some("Unauthenticated"), "{err}");
    let stats = node.stats();
    assert_eq!(stats.calls, 0, "no refused request reached a handler");
    assert!(stats.unauthenticated >= 2, "{stats:?}");
    // The counters are in `_zmesh.stats` too.
    let right = keyed_client(node.endpoint(), key(ALPHA));
    let report: rmpv::Value = net("stats", right.call(zmesh::reserved::STATS, ()))
        .await
        .expect("stats");
    let text = report.to_string();
    assert!(text.contains("\"unauthenticated\""), "{text}");
    node.shutdown(Duration::from_secs(1)).await;
}

/// A raw DEALER connected to `endpoint`.
async fn raw_dealer(endpoint: &str) -> DealerSocket {
    let mut dealer = DealerSocket::new();
    net("raw connect", dealer.connect(endpoint))
        .await
        .expect("connects");
    dealer
}

/// Sends `[ "", frame ]` and returns the event frame of the reply.
async fn exchange(dealer: &mut DealerSocket, frame: Bytes) -> Bytes {
    let message = ZmqMessage::try_from(vec![Bytes::new(), frame]).expect("frames");
    net("raw send", dealer.send(message)).await.expect("sent");
    let reply = net("raw reply", dealer.recv()).await.expect("reply");
    reply.into_vec().pop().expect("event frame")
}

/// Decodes a reply frame: opened with `key` when sealed, as is when plain.
fn reply_event(frame: &Bytes, key: &SealKey) -> wire::Event {
    let plain = if envelope::is_sealed(frame) {
        let parsed = envelope::parse(frame).expect("parses");
        envelope::open(key, frame, &parsed).expect("reply opens with the mesh key")
    } else {
        frame.clone()
    };
    wire::decode_event(&plain).expect("decodes")
}

fn err_name(event: &wire::Event) -> String {
    assert_eq!(
        event.name.as_ref(),
        "ERR",
        "expected an ERR, got {}",
        event.name
    );
    wire::parse_err_args(&event.args).0
}

#[tokio::test]
async fn tampered_request_is_refused_with_err() {
    let node = keyed_node(key(ALPHA)).await;
    let seal_key = SealKey::derive(ALPHA.as_bytes());
    let id = MessageId::generate();
    let event = wire::encode_event(
        &Header::zmesh_with_id(id.clone(), None),
        "echo.upper",
        b"\x91\xa2hi",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let params = envelope::SealParams {
        kind: envelope::Kind::Request,
        encrypt: true,
        timestamp_ms: now,
        nonce: *b"tamper-test1",
        clear_id: id.encoded(),
    };
    let sealed = envelope::seal(&seal_key, &params, &event);
    let mut tampered = sealed.to_vec();
    let last_body_byte = tampered.len() - 17;
    tampered[last_body_byte] ^= 0x01;
    let mut dealer = raw_dealer(node.endpoint()).await;
    let reply = exchange(&mut dealer, Bytes::from(tampered)).await;
    let event = reply_event(&reply, &seal_key);
    assert_eq!(err_name(&event), "Unauthenticated");
    assert_eq!(
        event.header.response_to.as_ref(),
        Some(&id),
        "the ERR answers the request"
    );
    // The untouched frame is served (the nonce was never learned from the forgery).
    let reply = exchange(&mut dealer, sealed).await;
    assert_eq!(reply_event(&reply, &seal_key).name.as_ref(), "OK");
    let stats = node.stats();
    assert_eq!((stats.calls, stats.unauthenticated), (1, 1), "{stats:?}");
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn captured_request_replayed_is_refused() {
    let k = key(ALPHA);
    let seal_key = SealKey::derive(ALPHA.as_bytes());
    // Capture: a keyed client calls a raw ROUTER that records what it receives.
    let mut trap = RouterSocket::new();
    let trap_endpoint = net("trap bind", trap.bind("tcp://127.0.0.1:0"))
        .await
        .expect("binds")
        .to_string();
    let client = keyed_client(&trap_endpoint, k.clone());
    let call = tokio::spawn(async move {
        let _ = client
            .call_with::<String>(
                "echo.upper",
                ("captured",),
                CallOptions::timeout(Duration::from_secs(5)),
            )
            .await;
    });
    let captured = loop {
        let message = net("capture", trap.recv()).await.expect("captured");
        let frame = message.into_vec().pop().expect("event frame");
        let parsed = envelope::parse(&frame).expect("the client seals what it sends");
        let event = envelope::open(&seal_key, &frame, &parsed).expect("opens");
        let event = wire::decode_event(&event).expect("decodes");
        // A request carries its own message id in the clear, so a node that cannot open it
        // can still address an ERR; a channel event (a heartbeat) carries none.
        let expected_clear_id = match event.header.response_to {
            None => event.header.message_id.encoded(),
            Some(_) => &[][..],
        };
        assert_eq!(parsed.clear_id, expected_clear_id, "{:?}", event.name);
        // Skip the client's `_zerorpc_ping` probe.
        if event.name.as_ref() == "echo.upper" {
            break frame;
        }
    };
    call.abort();
    let node = keyed_node(k).await;
    let mut dealer = raw_dealer(node.endpoint()).await;
    let first = exchange(&mut dealer, captured.clone()).await;
    assert_eq!(reply_event(&first, &seal_key).name.as_ref(), "OK");
    let again = exchange(&mut dealer, captured).await;
    assert_eq!(err_name(&reply_event(&again, &seal_key)), "Replayed");
    let stats = node.stats();
    assert_eq!((stats.calls, stats.replay_rejected), (1, 1), "{stats:?}");
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn previous_key_is_accepted_within_grace_and_refused_after() {
    let rotated = key(BRAVO).with_previous(&key(ALPHA), Duration::from_secs(60));
    let node = keyed_node(rotated).await;
    for secret in [ALPHA, BRAVO] {
        let client = keyed_client(node.endpoint(), key(secret));
        let up: String = net("call", client.call("echo.upper", ("hi",)))
            .await
            .expect("within grace");
        assert_eq!(up, "HI");
    }
    node.shutdown(Duration::from_secs(1)).await;

    let grace = Duration::from_millis(100);
    let node = keyed_node(key(BRAVO).with_previous(&key(ALPHA), grace)).await;
    // The grace period is a span of time: waiting it out is the point of this check.
    tokio::time::sleep(grace * 2).await;
    let old = keyed_client(node.endpoint(), key(ALPHA));
    let err = net("old key call", old.call::<String>("echo.upper", ("hi",)))
        .await
        .expect_err("grace is over");
    assert_eq!(remote_name(&err), Some("Unauthenticated"), "{err}");
    assert!(err.to_string().contains("grace"), "{err}");
    let new = keyed_client(node.endpoint(), key(BRAVO));
    let up: String = net("new key call", new.call("echo.upper", ("hi",)))
        .await
        .expect("new key served");
    assert_eq!(up, "HI");
    node.shutdown(Duration::from_secs(1)).await;
}

/// A TCP relay on loopback in front of `target` that records every byte in both directions.
async fn recording_relay(target: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
    let address = listener.local_addr().expect("address");
    let record = Arc::new(Mutex::new(Vec::new()));
    let rec = record.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(&target).await else {
                return;
            };
            let (mut in_read, mut in_write) = inbound.into_split();
            let (mut out_read, mut out_write) = outbound.into_split();
            let (r1, r2) = (rec.clone(), rec.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = in_read.read(&mut buf).await {
                    r1.lock().expect("record").extend_from_slice(&buf[..n]);
                    if out_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n @ 1..) = out_read.read(&mut buf).await {
                    r2.lock().expect("record").extend_from_slice(&buf[..n]);
                    if in_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (format!("tcp://{address}"), record)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn captured_encrypted_traffic_holds_no_plaintext() {
    const SECRET: &str = "plaintext-marker-7f3a91";
    for encrypt in [true, false] {
        let k = key(ALPHA).encrypt(encrypt);
        let node = keyed_node(k.clone()).await;
        let target = node.endpoint().trim_start_matches("tcp://").to_owned();
        let (relay, record) = recording_relay(target).await;
        let client = keyed_client(&relay, k);
        let back: String = net("echo through relay", client.call("echo.echo", (SECRET,)))
            .await
            .expect("served");
        assert_eq!(back, SECRET);
        let up: String = net("upper through relay", client.call("echo.upper", (SECRET,)))
            .await
            .expect("served");
        assert_eq!(up, SECRET.to_uppercase());
        drop(client);
        let bytes = record.lock().expect("record").clone();
        assert!(
            contains(&bytes, &envelope::MAGIC),
            "the relay saw sealed frames"
        );
        let leaked = [
            SECRET.as_bytes(),
            SECRET.to_uppercase().as_bytes(),
            b"echo.upper",
        ]
        .iter()
        .any(|p| contains(&bytes, p));
        // Authenticated-only frames carry the event in the clear: that proves the capture
        // sees the payload bytes, so its absence in the encrypted run means something.
        assert_eq!(
            leaked, !encrypt,
            "encrypt={encrypt}: plaintext visible = {leaked}"
        );
        node.shutdown(Duration::from_secs(1)).await;
    }
}

async fn node_with_plain_endpoint() -> Node {
    net(
        "node start",
        Node::builder()
            .name("echo")
            .bind("tcp://127.0.0.1:0")
            .bind_plain("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .export_unprefixed("echo")
            .mesh_key(key(ALPHA))
            .config(NodeConfig::default())
            .start(),
    )
    .await
    .expect("node starts")
}

#[tokio::test]
async fn plain_endpoint_of_a_keyed_node_serves_unkeyed_clients() {
    let node = node_with_plain_endpoint().await;
    let (keyed_ep, plain_ep) = (node.endpoints()[0].clone(), node.endpoints()[1].clone());
    let plain = Client::new(&plain_ep);
    let keyed = keyed_client(&keyed_ep, key(ALPHA));
    for _ in 0..3 {
        let a: String = net("plain call", plain.call("echo.upper", ("a",)))
            .await
            .expect("plain served");
        let b: String = net("keyed call", keyed.call("echo.upper", ("b",)))
            .await
            .expect("keyed served");
        assert_eq!((a.as_str(), b.as_str()), ("A", "B"));
    }
    // The keyed endpoint still refuses the unkeyed client.
    let refused = Client::new(&keyed_ep);
    let err = net(
        "unkeyed on keyed",
        refused.call::<String>("echo.upper", ("c",)),
    )
    .await
    .expect_err("refused");
    assert_eq!(remote_name(&err), Some("Unauthenticated"));
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_zerorpc_is_served_on_the_plain_endpoint_only() {
    let node = node_with_plain_endpoint().await;
    let limit = Duration::from_secs(60);
    let line = zerorpc_venv::py_check(&node.endpoints()[1], "upper", limit).await;
    assert!(line.contains(r#""upper": "HI""#), "{line}");
    let line = zerorpc_venv::py_check(&node.endpoints()[0], "unauthenticated", limit).await;
    assert!(line.contains("Unauthenticated"), "{line}");
    assert_eq!(node.stats().unauthenticated, 1);
    node.shutdown(Duration::from_secs(1)).await;
}

fn keyed_sub_config(secret: &str) -> SubscriberConfig {
    SubscriberConfig::default().mesh_key(key(secret))
}

/// Publishes `payload` on `topic` every 20 ms until `done` holds (a fresh subscription takes
/// a moment to reach the publisher, and PUB drops what no subscriber asked for yet).
async fn publish_until(
    publisher: &Publisher,
    topic: &str,
    payload: &str,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    common::within(Duration::from_secs(10), what, async {
        while !done() {
            publisher.publish(topic, payload).await.expect("published");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

async fn start_publisher(k: Option<MeshKey>) -> Publisher {
    let mut b = Publisher::builder().bind("tcp://127.0.0.1:0");
    if let Some(k) = k {
        b = b.mesh_key(k);
    }
    net("publisher start", b.start()).await.expect("publisher")
}

async fn keyed_subscriber(endpoint: &str, secret: &str) -> Subscriber<String> {
    net(
        "subscriber start",
        Subscriber::builder()
            .connect(endpoint)
            .subscribe("t")
            .config(keyed_sub_config(secret))
            .start::<String>(),
    )
    .await
    .expect("subscriber")
}

#[tokio::test]
async fn events_need_the_key_and_refused_ones_are_counted() {
    // The right key gets through.
    let keyed = start_publisher(Some(key(ALPHA))).await;
    let mut sub = keyed_subscriber(keyed.endpoint(), ALPHA).await;
    let first = common::within(Duration::from_secs(10), "keyed delivery", async {
        loop {
            keyed.publish("t", "hello").await.expect("published");
            if let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_millis(50), sub.recv()).await
            {
                return delivery;
            }
        }
    })
    .await;
    assert!(matches!(first, Delivery::Event(e) if e.payload == "hello"));
    assert_eq!(sub.stats().unauthenticated, 0);

    // A wrong key and no key at all are refused and counted; nothing is delivered. (A
    // refused event is counted where it would have been queued, so once the count moved,
    // any delivery would already be in the queue.)
    for forger in [
        start_publisher(Some(key(BRAVO))).await,
        start_publisher(None).await,
    ] {
        let sub = keyed_subscriber(forger.endpoint(), ALPHA).await;
        publish_until(&forger, "t", "forged", "refused event counted", || {
            sub.stats().unauthenticated >= 1
        })
        .await;
        let stats = sub.stats();
        assert_eq!((stats.received, stats.undecodable), (0, 0), "{stats:?}");
    }
}

#[tokio::test]
async fn replayed_event_is_dropped_and_counted() {
    let k = key(ALPHA);
    let publisher = net(
        "publisher start",
        Publisher::builder()
            .bind("tcp://127.0.0.1:0")
            .mesh_key(k.clone())
            .start(),
    )
    .await
    .expect("publisher");
    // Capture one sealed event with a raw SUB.
    let mut tap = zeromq::SubSocket::new();
    net("tap connect", tap.connect(publisher.endpoint()))
        .await
        .expect("connects");
    tap.subscribe("t").await.expect("subscribes");
    let captured = Arc::new(Mutex::new(None::<ZmqMessage>));
    let slot = captured.clone();
    let tap_task = tokio::spawn(async move {
        if let Ok(message) = tap.recv().await {
            *slot.lock().expect("slot") = Some(message);
        }
    });
    publish_until(&publisher, "t", "once", "capture", || {
        captured.lock().expect("slot").is_some()
    })
    .await;
    tap_task.abort();
    let captured = captured.lock().expect("slot").take().expect("captured");
    let frames = captured.clone().into_vec();
    assert!(envelope::is_sealed(&frames[1]), "the event frame is sealed");
    assert!(!contains(&frames[1], b"once"), "and encrypted");

    // Replay it from a raw PUB to a keyed subscriber.
    let mut raw = zeromq::PubSocket::new();
    let raw_endpoint = net("raw pub bind", raw.bind("tcp://127.0.0.1:0"))
        .await
        .expect("binds")
        .to_string();
    let mut sub = net(
        "subscriber start",
        Subscriber::builder()
            .connect(raw_endpoint)
            .subscribe("t")
            .config(keyed_sub_config(ALPHA))
            .start::<String>(),
    )
    .await
    .expect("subscriber");
    let first = common::within(Duration::from_secs(10), "first delivery", async {
        loop {
            raw.send(captured.clone()).await.expect("sent");
            if let Ok(Some(delivery)) =
                tokio::time::timeout(Duration::from_millis(50), sub.recv()).await
            {
                return delivery;
            }
        }
    })
    .await;
    let Delivery::Event(event) = first else {
        panic!("expected the event first");
    };
    assert_eq!(event.payload, "once");
    raw.send(captured.clone()).await.expect("sent");
    common::eventually(Duration::from_secs(10), "replay counted", || {
        sub.stats().replay_rejected >= 1
    })
    .await;
    assert_eq!(sub.stats().received, 1, "{:?}", sub.stats());
}

async fn keyed_mesh_node(
    mesh: &str,
    name: &str,
    k: Option<MeshKey>,
    seed: Option<&str>,
) -> MeshNode {
    let mut builder = MeshNode::builder(mesh)
        .name(name)
        .bind("tcp://127.0.0.1:0")
        .service(zmesh_echo::service())
        .timing(Duration::from_millis(100), Duration::from_secs(2));
    if let Some(k) = k {
        builder = builder.mesh_key(k);
    }
    if let Some(seed) = seed {
        builder = builder.seed(seed);
    }
    net("mesh node start", builder.start())
        .await
        .expect("mesh node starts")
}

#[tokio::test]
async fn keyed_mesh_gossips_and_serves_and_shuts_out_unkeyed_members() {
    let mesh = format!("trust-{}", std::process::id());
    let a = keyed_mesh_node(&mesh, "a", Some(key(ALPHA)), None).await;
    let b = keyed_mesh_node(&mesh, "b", Some(key(ALPHA)), Some(a.node().endpoint())).await;
    common::eventually(Duration::from_secs(10), "a and b know each other", || {
        a.discovery().peers().len() == 1 && b.discovery().peers().len() == 1
    })
    .await;
    // MeshNode::client seals with the node's key.
    let client = b.client(MeshClientConfig::default().heartbeat(Duration::from_millis(200)));
    common::eventually(Duration::from_secs(10), "a live echo peer", || {
        !client.live_peers("echo").is_empty()
    })
    .await;
    for i in 0..20 {
        let up: String = net("mesh call", client.call("echo.upper", (format!("x{i}"),)))
            .await
            .expect("served");
        assert_eq!(up, format!("X{i}"));
    }
    // A member without the key cannot gossip with the keyed ones.
    let outsider = keyed_mesh_node(&mesh, "outsider", None, Some(a.node().endpoint())).await;
    common::eventually(Duration::from_secs(10), "outsider's gossip refused", || {
        outsider.discovery().stats().gossip_failed >= 2
    })
    .await;
    assert_eq!(outsider.discovery().stats().gossip_ok, 0);
    assert!(a.node().stats().unauthenticated >= 1);
}

#[tokio::test]
async fn keyed_client_drops_unsealed_results() {
    // A raw ROUTER that reads the sealed requests (it has the key) but answers every one with
    // a plain `OK`, as an impostor or a misconfigured node would.
    let seal_key = SealKey::derive(ALPHA.as_bytes());
    let mut impostor = RouterSocket::new();
    let endpoint = net("impostor bind", impostor.bind("tcp://127.0.0.1:0"))
        .await
        .expect("binds")
        .to_string();
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = answered.clone();
    let serve = tokio::spawn(async move {
        while let Ok(message) = impostor.recv().await {
            let mut frames = message.into_vec();
            let Some(frame) = frames.pop() else { continue };
            let Ok(parsed) = envelope::parse(&frame) else {
                continue;
            };
            let Ok(event) = envelope::open(&seal_key, &frame, &parsed) else {
                continue;
            };
            let Ok(request) = wire::decode_event(&event) else {
                continue;
            };
            let header = Header::zmesh(Some(request.header.message_id));
            frames.truncate(1);
            frames.push(Bytes::new());
            frames.push(wire::encode_event(&header, "OK", b"\x91\xa2HI"));
            let reply = ZmqMessage::try_from(frames).expect("frames");
            if impostor.send(reply).await.is_ok() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let client = keyed_client(&endpoint, key(ALPHA));
    let err = net(
        "call to impostor",
        client.call_with::<String>(
            "echo.upper",
            ("hi",),
            CallOptions::timeout(Duration::from_millis(500)),
        ),
    )
    .await
    .expect_err("an unsealed result is never accepted");
    assert!(matches!(err, CallError::DeadlineExceeded(_)), "{err}");
    assert!(answered.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(client.rejected_replies() >= 1);
    serve.abort();
}
