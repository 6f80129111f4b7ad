//! On-path attacks on keyed (mesh key) traffic, each reproduced over real sockets on loopback
//! by something that sits between client and node without the key, or by a key holder with a
//! bad clock, with the outcome the key must guarantee:
//!
//! - an injected unsealed `ERR Overloaded` is dropped and the real, sealed reply taken (it
//!   used to fail the call as "refused", which a mesh client retries elsewhere: a
//!   non-idempotent call run twice);
//! - a relay that drops, reorders, duplicates or truncates sealed stream items fails the
//!   stream with [`CallError::Integrity`] (it used to print `0 2 3 4 5` and succeed);
//! - a request captured and replayed after the node restarts is refused;
//! - a frame stamped far in the future is refused and leaves later calls unharmed (it used
//!   to make every call `Replayed` once the cache filled);
//! - a peer of the plain endpoint reusing a keyed client's ZMTP identity receives nothing of
//!   that client's (it used to receive its replies unsealed);
//! - recorded beacons of a killed node replayed do not keep it in a directory past its
//!   normal expiry (they kept it for the key's whole 30 s window).

mod common;
mod mesh_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use zeromq::util::PeerIdentity;
use zeromq::{
    DealerSocket, RouterSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage,
};
use zmesh::mesh::{BeaconConfig, Discovery, DiscoveryConfig, MeshNode};
use zmesh::wire::{self, Header, MessageId};
use zmesh::{CallError, CallOptions, Client, ClientConfig, MeshKey, Node, Service};
use zmesh_proto::seal::envelope::{self, Kind, SealKey, SealParams};

use common::{eventually, net};
use mesh_support::{beacon_port, mesh_name};

const SECRET: &str = "integrity mesh key, 32 bytes!!!!";

fn key() -> MeshKey {
    MeshKey::from_secret(SECRET).expect("long enough")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after the epoch")
        .as_millis() as u64
}

/// The echo service and `ledger.put(n)`, which counts its runs in `runs` (not idempotent).
fn services(runs: Arc<AtomicU64>) -> [Service; 2] {
    let ledger = Service::new("ledger").method("put", move |n: u64| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(n)
        }
    });
    [zmesh_echo::service(), ledger.into()]
}

async fn keyed_node(key: MeshKey, runs: Arc<AtomicU64>) -> Node {
    let [echo, ledger] = services(runs);
    net(
        "keyed node start",
        Node::builder()
            .name("integrity")
            .bind("tcp://127.0.0.1:0")
            .service(echo)
            .service(ledger)
            .mesh_key(key)
            .start(),
    )
    .await
    .expect("node starts")
}

fn keyed_client(endpoint: &str) -> Client {
    Client::with_config(endpoint, ClientConfig::default().mesh_key(key()))
}

/// Which way a frame crosses the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toward {
    Node,
    Client,
}

/// What the relay does with one event frame crossing it: the frames to send in its place,
/// each in a direction.
type Tamper = Box<dyn FnMut(Toward, Bytes) -> Vec<(Toward, Bytes)> + Send>;

/// An on-path relay without the key: a ROUTER for one client in front of a DEALER to
/// `target`, passing every event frame through `tamper`. Returns the relay's endpoint.
async fn relay(target: &str, mut tamper: Tamper) -> String {
    let mut front = RouterSocket::new();
    let endpoint = net("relay bind", front.bind("tcp://127.0.0.1:0"))
        .await
        .expect("relay binds")
        .to_string();
    let mut back = DealerSocket::new();
    net("relay connect", back.connect(target))
        .await
        .expect("relay connects");
    tokio::spawn(async move {
        let mut client: Option<Bytes> = None;
        loop {
            let (from, frame) = tokio::select! {
                m = front.recv() => {
                    let Ok(m) = m else { return };
                    let mut frames = m.into_vec();
                    client = frames.first().cloned();
                    (Toward::Node, frames.pop())
                }
                m = back.recv() => {
                    let Ok(m) = m else { return };
                    (Toward::Client, m.into_vec().pop())
                }
            };
            let Some(frame) = frame else { continue };
            for (toward, out) in tamper(from, frame) {
                let sent = match (toward, &client) {
                    (Toward::Node, _) => {
                        let message = ZmqMessage::try_from(vec![Bytes::new(), out]);
                        back.send(message.expect("frames")).await
                    }
                    (Toward::Client, Some(id)) => {
                        let message = ZmqMessage::try_from(vec![id.clone(), Bytes::new(), out]);
                        front.send(message.expect("frames")).await
                    }
                    (Toward::Client, None) => Ok(()),
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    });
    endpoint
}

/// An unsealed `ERR name` addressed to the sealed request `frame` (by its clear id).
fn unsealed_err_for(frame: &Bytes, name: &str) -> Option<Bytes> {
    let parsed = envelope::parse(frame).ok()?;
    if parsed.kind != Kind::Request || parsed.clear_id.is_empty() {
        return None;
    }
    let id = MessageId::from_encoded(Bytes::copy_from_slice(parsed.clear_id)).ok()?;
    let args = wire::err_args(name, "injected by the relay", None);
    Some(wire::encode_event(&Header::zmesh(Some(id)), "ERR", &args))
}

/// A relay that answers every request first with an unsealed `ERR name` of its own, then
/// passes the request on.
async fn injecting_relay(target: &str, name: &'static str) -> (String, Arc<AtomicU64>) {
    let injected = Arc::new(AtomicU64::new(0));
    let count = injected.clone();
    let endpoint = relay(
        target,
        Box::new(move |toward, frame| match toward {
            Toward::Node => {
                let mut out = Vec::new();
                if let Some(err) = unsealed_err_for(&frame, name) {
                    count.fetch_add(1, Ordering::SeqCst);
                    out.push((Toward::Client, err));
                }
                out.push((Toward::Node, frame));
                out
            }
            Toward::Client => vec![(Toward::Client, frame)],
        }),
    )
    .await;
    (endpoint, injected)
}

#[tokio::test]
async fn an_injected_unsealed_overloaded_is_dropped_and_the_sealed_reply_taken() {
    let runs = Arc::new(AtomicU64::new(0));
    let node = keyed_node(key(), runs.clone()).await;
    let (endpoint, injected) = injecting_relay(node.endpoint(), "Overloaded").await;
    let client = keyed_client(&endpoint);
    for n in 0..5u64 {
        let stored: u64 = net("put through the relay", client.call("ledger.put", (n,)))
            .await
            .expect("the real, sealed reply is taken, not the injected refusal");
        assert_eq!(stored, n);
    }
    assert!(injected.load(Ordering::SeqCst) >= 5, "the relay injected");
    assert!(client.rejected_replies() >= 5, "injections counted");
    assert_eq!(runs.load(Ordering::SeqCst), 5, "each put ran once");
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_unsealed_refusal_fails_the_call_but_never_as_not_run() {
    // `Unauthenticated` is how a node refuses a peer it cannot seal for, so a keyed client
    // takes it unsealed; anyone on the path can send it, so it is a final error (a mesh
    // client does not retry it elsewhere), and the node may well have run the call.
    let runs = Arc::new(AtomicU64::new(0));
    let node = keyed_node(key(), runs.clone()).await;
    let (endpoint, _) = injecting_relay(node.endpoint(), "Unauthenticated").await;
    let client = keyed_client(&endpoint);
    let err = net("put", client.call::<u64>("ledger.put", (1,)))
        .await
        .expect_err("the forged refusal is taken as a refusal");
    assert_eq!(
        err.remote().map(|r| r.name.as_str()),
        Some("Unauthenticated"),
        "{err}"
    );
    eventually(Duration::from_secs(5), "the node ran it anyway", || {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    node.shutdown(Duration::from_secs(1)).await;
}

/// A relay that rewrites the sealed replies of the node by their (clear) reply number with
/// `edit`, given the numbered frames as they come; unnumbered frames pass.
async fn stream_relay(
    target: &str,
    mut edit: impl FnMut(u32, Bytes) -> Vec<Bytes> + Send + 'static,
) -> String {
    relay(
        target,
        Box::new(move |toward, frame| {
            let seq = envelope::parse(&frame).ok().and_then(|p| p.reply_seq());
            match (toward, seq) {
                // Number 0 is also the reply to the client's connection ping: leave it.
                (Toward::Client, Some(seq)) if seq > 0 => edit(seq, frame)
                    .into_iter()
                    .map(|f| (Toward::Client, f))
                    .collect(),
                _ => vec![(toward, frame)],
            }
        }),
    )
    .await
}

/// Calls `echo.count(6)` through `endpoint` and returns the items received, and how the
/// stream ended.
async fn count_six(endpoint: &str) -> (Vec<u64>, Option<CallError>) {
    let client = keyed_client(endpoint);
    let options = CallOptions::timeout(Duration::from_secs(5));
    let mut stream = net(
        "count call",
        client.call_stream_with::<u64>("echo.count", (6,), options),
    )
    .await
    .expect("the stream opens");
    let mut items = Vec::new();
    while let Some(item) = net("next item", stream.next()).await {
        match item {
            Ok(n) => items.push(n),
            Err(e) => {
                if matches!(e, CallError::Integrity(_)) {
                    assert_eq!(client.integrity_failures(), 1, "counted");
                }
                return (items, Some(e));
            }
        }
    }
    (items, None)
}

fn assert_integrity(what: &str, (items, end): (Vec<u64>, Option<CallError>)) {
    assert!(
        matches!(end, Some(CallError::Integrity(_))),
        "{what}: items {items:?}, end {end:?}"
    );
}

#[tokio::test]
async fn a_relay_tampering_with_a_sealed_stream_fails_it_with_an_integrity_error() {
    let node = keyed_node(key(), Arc::default()).await;
    let target = node.endpoint().to_owned();

    // Untouched through the same relay: the whole stream.
    let endpoint = stream_relay(&target, |_, frame| vec![frame]).await;
    let (items, end) = count_six(&endpoint).await;
    assert_eq!(
        (items, end.map(|e| e.to_string())),
        ((0..6).collect(), None)
    );

    // Dropped: item 1 never arrives (was `0 2 3 4 5`, exit 0).
    let endpoint = stream_relay(
        &target,
        |seq, frame| {
            if seq == 1 { vec![] } else { vec![frame] }
        },
    )
    .await;
    let dropped = count_six(&endpoint).await;
    assert_eq!(dropped.0, vec![0], "nothing after the gap is taken");
    assert_integrity("dropped", dropped);

    // Reordered: items 2 and 3 swapped.
    let mut held = None;
    let endpoint = stream_relay(&target, move |seq, frame| match seq {
        2 => {
            held = Some(frame);
            vec![]
        }
        3 => [Some(frame), held.take()].into_iter().flatten().collect(),
        _ => vec![frame],
    })
    .await;
    assert_integrity("reordered", count_six(&endpoint).await);

    // Duplicated: item 2 twice.
    let endpoint = stream_relay(&target, |seq, frame| {
        if seq == 2 {
            vec![frame.clone(), frame]
        } else {
            vec![frame]
        }
    })
    .await;
    assert_integrity("duplicated", count_six(&endpoint).await);

    // Truncated: the last two items dropped, STREAM_DONE (number 6, the count) let through.
    let endpoint = stream_relay(&target, |seq, frame| {
        if seq == 4 || seq == 5 {
            vec![]
        } else {
            vec![frame]
        }
    })
    .await;
    let truncated = count_six(&endpoint).await;
    assert_eq!(truncated.0, vec![0, 1, 2, 3]);
    assert_integrity("truncated", truncated);
    node.shutdown(Duration::from_secs(1)).await;
}

/// A raw DEALER connected to `endpoint`, with `identity` when given.
async fn raw_dealer(endpoint: &str, identity: Option<&[u8]>) -> DealerSocket {
    let mut options = SocketOptions::default();
    if let Some(identity) = identity {
        options.peer_identity(PeerIdentity::try_from(identity).expect("identity"));
    }
    let mut dealer = DealerSocket::with_options(options);
    net("raw connect", dealer.connect(endpoint))
        .await
        .expect("connects");
    dealer
}

async fn send_frame(dealer: &mut DealerSocket, frame: Bytes) {
    let message = ZmqMessage::try_from(vec![Bytes::new(), frame]).expect("frames");
    net("raw send", dealer.send(message)).await.expect("sent");
}

async fn recv_frame(dealer: &mut DealerSocket) -> Bytes {
    let reply = net("raw reply", dealer.recv()).await.expect("reply");
    reply.into_vec().pop().expect("event frame")
}

/// A request for `method` with `args`, sealed with the mesh key at `timestamp_ms`.
fn sealed_request(method: &str, args: &[u8], timestamp_ms: u64, nonce: [u8; 12]) -> Bytes {
    let id = MessageId::generate();
    let event = wire::encode_event(&Header::zmesh_with_id(id.clone(), None), method, args);
    let params = SealParams {
        kind: Kind::Request,
        encrypt: true,
        timestamp_ms,
        nonce,
        clear_id: id.encoded(),
    };
    envelope::seal(&SealKey::derive(SECRET.as_bytes()), &params, &event)
}

/// The event of a reply frame: opened with the key when sealed.
fn reply_event(frame: &Bytes) -> wire::Event {
    let plain = if envelope::is_sealed(frame) {
        let parsed = envelope::parse(frame).expect("parses");
        let key = SealKey::derive(SECRET.as_bytes());
        envelope::open(&key, frame, &parsed).expect("opens with the mesh key")
    } else {
        frame.clone()
    };
    wire::decode_event(&plain).expect("decodes")
}

fn err_of(event: &wire::Event) -> (String, String) {
    assert_eq!(event.name.as_ref(), "ERR", "expected an ERR");
    let (name, message, _) = wire::parse_err_args(&event.args);
    (name, message)
}

#[tokio::test]
async fn a_request_replayed_after_a_restart_is_refused() {
    let skew = Duration::from_millis(100);
    let node_key = || key().clock_skew(skew);
    let runs = Arc::new(AtomicU64::new(0));
    let captured = sealed_request("ledger.put", b"\x91\x07", now_ms(), *b"restart-cap1");
    let node = keyed_node(node_key(), runs.clone()).await;
    let mut dealer = raw_dealer(node.endpoint(), None).await;
    send_frame(&mut dealer, captured.clone()).await;
    assert_eq!(
        reply_event(&recv_frame(&mut dealer).await).name.as_ref(),
        "OK"
    );
    node.shutdown(Duration::from_secs(1)).await;
    // The node restarts (an empty nonce cache) more than the clock skew after the capture.
    tokio::time::sleep(skew * 2).await;
    let node = keyed_node(node_key(), runs.clone()).await;
    let mut dealer = raw_dealer(node.endpoint(), None).await;
    send_frame(&mut dealer, captured).await;
    let (name, message) = err_of(&reply_event(&recv_frame(&mut dealer).await));
    assert_eq!(name, "Replayed");
    assert!(
        message.contains("before this receiver started"),
        "{message}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "ran before the restart only"
    );
    assert_eq!(node.stats().replay_rejected, 1);
    // Fresh requests are served as usual.
    let client = keyed_client(node.endpoint());
    let n: u64 = net("fresh call", client.call("ledger.put", (8,)))
        .await
        .expect("served");
    assert_eq!(n, 8);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_future_stamped_frame_is_refused_and_leaves_later_calls_unharmed() {
    // A small nonce cache, so that it fills quickly: before the fix, the future-stamped
    // entry was the first evicted and raised the cache's floor 25 s ahead, refusing every
    // correctly clocked call as `Replayed` for 25 s.
    let node = keyed_node(key().replay_cache(16), Arc::default()).await;
    let mut dealer = raw_dealer(node.endpoint(), None).await;
    let ahead = sealed_request(
        "echo.upper",
        b"\x91\xa2hi",
        now_ms() + 25_000,
        *b"future-stamp",
    );
    send_frame(&mut dealer, ahead).await;
    let (name, message) = err_of(&reply_event(&recv_frame(&mut dealer).await));
    assert_eq!(name, "Replayed");
    assert!(message.contains("ahead of this clock"), "{message}");
    let client = keyed_client(node.endpoint());
    for i in 0..100u32 {
        let up: String = net(
            "call after the future frame",
            client.call("echo.upper", ("x",)),
        )
        .await
        .unwrap_or_else(|e| panic!("call {i} refused: {e}"));
        assert_eq!(up, "X");
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_plain_peer_reusing_a_keyed_identity_receives_nothing_of_it() {
    let node = net(
        "node start",
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .bind_plain("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .mesh_key(key())
            .start(),
    )
    .await
    .expect("node starts");
    let (keyed_ep, plain_ep) = (node.endpoints()[0].clone(), node.endpoints()[1].clone());
    let identity = b"keyed-client-identity";
    let mut victim = raw_dealer(&keyed_ep, Some(identity)).await;
    let mut attacker = raw_dealer(&plain_ep, Some(identity)).await;
    // The attacker makes itself known on the plain endpoint under the victim's identity.
    let ping = wire::encode_event(
        &Header::zmesh_with_id(MessageId::generate(), None),
        "_zerorpc_ping",
        b"\x90",
    );
    send_frame(&mut attacker, ping).await;
    assert_eq!(
        reply_event(&recv_frame(&mut attacker).await).name.as_ref(),
        "OK"
    );
    // The victim's sealed call is answered to the victim, sealed.
    send_frame(
        &mut victim,
        sealed_request("echo.upper", b"\x91\xa6secret", now_ms(), *b"identity-vic"),
    )
    .await;
    let reply = recv_frame(&mut victim).await;
    assert!(envelope::is_sealed(&reply), "the victim's reply is sealed");
    assert_eq!(reply_event(&reply).args.as_ref(), b"\x91\xa6SECRET");
    // And nothing reaches the attacker (it used to receive the reply, unsealed).
    let leaked = tokio::time::timeout(Duration::from_millis(300), attacker.recv()).await;
    assert!(leaked.is_err(), "the plain peer received {leaked:?}");
    node.shutdown(Duration::from_secs(1)).await;
}

/// A UDP socket on the beacon port beside the mesh's, hearing every beacon (as an attacker
/// on the network does).
fn beacon_recorder(port: u16) -> tokio::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    let address: std::net::SocketAddr = ([0, 0, 0, 0], port).into();
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("udp");
    socket.set_reuse_address(true).expect("reuse address");
    socket.set_reuse_port(true).expect("reuse port");
    socket.set_broadcast(true).expect("broadcast");
    socket.set_nonblocking(true).expect("nonblocking");
    socket.bind(&address.into()).expect("binds the beacon port");
    tokio::net::UdpSocket::from_std(socket.into()).expect("tokio socket")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_beacons_of_a_killed_node_do_not_keep_it_in_a_directory() {
    let mesh = mesh_name("beacon-replay");
    let port = beacon_port();
    let expiry = Duration::from_millis(1_000);
    let recorder = beacon_recorder(port);
    let beacons = BeaconConfig::loopback(port).interval(Duration::from_millis(100));
    let observer = Discovery::start(
        DiscoveryConfig::new(mesh.clone())
            .beacon(beacons.clone())
            .gossip_interval(Duration::from_millis(200))
            .expire_after(expiry)
            .mesh_key(key()),
    )
    .await
    .expect("observer starts");
    let victim = net(
        "mesh node start",
        MeshNode::builder(&mesh)
            .name("victim")
            .bind("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .beacon(beacons)
            .timing(Duration::from_millis(200), expiry)
            .mesh_key(key())
            .start(),
    )
    .await
    .expect("victim starts");
    let knows_victim = |d: &Discovery| d.peers().iter().any(|p| p.name == "victim");
    eventually(
        Duration::from_secs(10),
        "the observer hears the victim",
        || knows_victim(&observer),
    )
    .await;
    // Record the victim's sealed beacons off the wire.
    let mut recorded = Vec::new();
    let mut buf = vec![0u8; 9000];
    while recorded.len() < 5 {
        let (n, _) = net("a beacon", recorder.recv_from(&mut buf))
            .await
            .expect("recv");
        recorded.push(buf[..n].to_vec());
    }
    // Kill the victim, and replay what was recorded, over and over (bounded: 15 s).
    drop(victim);
    let replayer = tokio::spawn(async move {
        let target: std::net::SocketAddr = ([127, 255, 255, 255], port).into();
        for _ in 0..150 {
            for datagram in &recorded {
                let _ = recorder.send_to(datagram, target).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Gone within a few expiry periods, while the replays go on (they kept it for the key's
    // 30 s window).
    eventually(
        Duration::from_secs(10),
        "the killed node leaves the directory",
        || !knows_victim(&observer),
    )
    .await;
    assert!(
        !replayer.is_finished(),
        "left while the replays were still going on"
    );
    eventually(Duration::from_secs(5), "replays counted as stale", || {
        observer.stats().beacons_stale > 0
    })
    .await;
    replayer.abort();
}
