//! The mesh key through the proxy device and on discovery beacons, over real sockets on
//! loopback: keyed client -> keyed device -> keyed worker serves calls and streams; clients
//! without the key (or with another) get `ERR Unauthenticated` from the device; a captured
//! request frame sent again gets `ERR Replayed`; a worker without the right key cannot
//! register and receives no request (and a keyed worker refuses an unkeyed device); a keyed
//! mesh ignores unsealed beacons and beacons sealed with another key, counted, while its
//! members still find each other by beacons.

mod common;
mod mesh_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::device::{Device, DeviceConfig};
use zmesh::mesh::{BeaconConfig, MeshNode};
use zmesh::trust::{Kind, Trust};
use zmesh::wire::{self, Header, MessageId, names};
use zmesh::{CallError, CallOptions, Client, ClientConfig, MeshKey, Node, Service};

use common::{NET_TIMEOUT, eventually, net};
use mesh_support::{beacon_port, mesh_name};

const ALPHA: &str = "alpha mesh key, 32 bytes long!!!";
const BRAVO: &str = "bravo mesh key, 32 bytes long!!!";
/// Heartbeat period of devices, workers and clients here.
const HB: Duration = Duration::from_millis(100);

fn key(secret: &str) -> MeshKey {
    MeshKey::from_secret(secret).expect("long enough")
}

async fn device(key: Option<MeshKey>) -> Device {
    let mut builder = Device::builder()
        .frontend("tcp://127.0.0.1:0")
        .backend("tcp://127.0.0.1:0")
        .config(DeviceConfig::default().heartbeat(HB));
    if let Some(key) = key {
        builder = builder.mesh_key(key);
    }
    net("device start", builder.start())
        .await
        .expect("device starts")
}

async fn worker(backend: &str, name: &str, service: Service, key: Option<MeshKey>) -> Node {
    let mut builder = Node::builder()
        .name(name)
        .worker_of(backend)
        .service(service)
        .config(zmesh::NodeConfig::default().heartbeat(HB));
    if let Some(key) = key {
        builder = builder.mesh_key(key);
    }
    net("worker start", builder.start())
        .await
        .expect("worker starts")
}

fn client(endpoint: &str, key: Option<MeshKey>) -> Client {
    let mut config = ClientConfig::default().heartbeat(HB);
    if let Some(key) = key {
        config = config.mesh_key(key);
    }
    Client::with_config(endpoint, config)
}

/// `work.job(x)`: counts the call and returns `x`.
fn counted(counter: Arc<AtomicU64>) -> Service {
    Service::new("work")
        .method("job", move |x: u64| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(x)
            }
        })
        .into()
}

/// A device and one worker `w1` serving `service`, both with key ALPHA, once the device
/// has the worker registered.
async fn keyed_device_and_worker(service: Service) -> (Device, Node) {
    let device = device(Some(key(ALPHA))).await;
    let node = worker(device.backend(), "w1", service, Some(key(ALPHA))).await;
    eventually(NET_TIMEOUT, "keyed worker registered", || {
        device.stats().workers == 1
    })
    .await;
    (device, node)
}

fn remote_name(err: &CallError) -> Option<&str> {
    err.remote().map(|r| r.name.as_str())
}

fn short() -> CallOptions {
    CallOptions::timeout(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_client_device_and_worker_serve_calls_and_streams() {
    let (device, node) = keyed_device_and_worker(zmesh_echo::service()).await;
    let client = client(device.frontend(), Some(key(ALPHA)));
    for _ in 0..20 {
        let up: String = net("call", client.call("echo.upper", ("hi",)))
            .await
            .expect("served through the device");
        assert_eq!(up, "HI");
    }
    let stream = net("stream", client.call_stream::<u64>("echo.count", (50,)))
        .await
        .expect("stream opens");
    let items: Vec<u64> = net("stream items", stream.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|r| r.expect("item"))
        .collect();
    assert_eq!(items, (0..50).collect::<Vec<_>>());
    // Answered by the device itself, sealed by it.
    let name: String = net("device built-in", client.call("_zerorpc_name", ()))
        .await
        .expect("device answers");
    assert_eq!(name, "zmesh-device");
    // A call lasting several heartbeat periods: the device's heartbeats to both legs are
    // sealed and accepted.
    let slept: u64 = net("long call", client.call("echo.sleep", (500u64,)))
        .await
        .expect("served");
    assert_eq!(slept, 500);

    let stats = device.stats();
    assert_eq!((stats.unauthenticated, stats.replay_rejected), (0, 0));
    let node_stats = node.stats();
    assert_eq!(
        (node_stats.unauthenticated, node_stats.replay_rejected),
        (0, 0)
    );
    assert_eq!(stats.services["echo"].completed, 22);
    node.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_key_on_each_socket_re_seals_replies_with_their_numbers() {
    // Clients prove ALPHA, workers BRAVO: the device opens each reply and seals it afresh
    // for the frontend, keeping its number within the call, so a keyed client's integrity
    // check on stream items still holds.
    let device = net(
        "device start",
        Device::builder()
            .frontend("tcp://127.0.0.1:0")
            .backend("tcp://127.0.0.1:0")
            .mesh_key(key(ALPHA))
            .backend_key(key(BRAVO))
            .config(DeviceConfig::default().heartbeat(HB))
            .start(),
    )
    .await
    .expect("device starts");
    let node = worker(
        device.backend(),
        "w1",
        zmesh_echo::service(),
        Some(key(BRAVO)),
    )
    .await;
    eventually(
        NET_TIMEOUT,
        "worker with the backend key registered",
        || device.stats().workers == 1,
    )
    .await;
    let client = client(device.frontend(), Some(key(ALPHA)));
    let up: String = net("call", client.call("echo.upper", ("hi",)))
        .await
        .expect("served through the device");
    assert_eq!(up, "HI");
    let stream = net("stream", client.call_stream::<u64>("echo.count", (30,)))
        .await
        .expect("stream opens");
    let items: Vec<u64> = net("stream items", stream.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|r| r.expect("item"))
        .collect();
    assert_eq!(items, (0..30).collect::<Vec<_>>());
    assert_eq!(client.integrity_failures(), 0);
    let stats = device.stats();
    assert_eq!((stats.unauthenticated, stats.replay_rejected), (0, 0));
    node.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_key_get_unauthenticated_from_the_device() {
    let calls = Arc::new(AtomicU64::new(0));
    let (device, node) = keyed_device_and_worker(counted(calls.clone())).await;

    let unkeyed = client(device.frontend(), None);
    let err = net(
        "unkeyed call",
        unkeyed.call_with::<u64>("work.job", (1,), short()),
    )
    .await
    .expect_err("refused");
    assert_eq!(remote_name(&err), Some("Unauthenticated"), "{err}");

    let wrong = client(device.frontend(), Some(key(BRAVO)));
    let err = net(
        "wrong key call",
        wrong.call_with::<u64>("work.job", (2,), short()),
    )
    .await
    .expect_err("refused");
    assert_eq!(remote_name(&err), Some("Unauthenticated"), "{err}");

    let stats = device.stats();
    // The two requests, and any heartbeat or cancel their clients sent meanwhile.
    assert!(stats.unauthenticated >= 2, "{stats:?}");
    assert_eq!(calls.load(Ordering::Relaxed), 0, "no refused call ran");
    // The right key still works on the same device.
    let right = client(device.frontend(), Some(key(ALPHA)));
    let x: u64 = net("keyed call", right.call("work.job", (3,)))
        .await
        .expect("served");
    assert_eq!((x, calls.load(Ordering::Relaxed)), (3, 1));
    node.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
}

/// Receives events on a raw DEALER until one answers `id` (`OK` or `ERR`), skipping
/// heartbeats; returns whether it was sealed, and the event (opened).
async fn answer_to(
    dealer: &mut DealerSocket,
    trust: &Trust,
    id: &MessageId,
) -> (bool, wire::Event) {
    loop {
        let message = net("device answer", dealer.recv()).await.expect("recv");
        let frame = message.into_vec().pop().expect("event frame");
        let sealed = zmesh::trust::envelope::is_sealed(&frame);
        let opened = if sealed {
            trust.open(&frame, Kind::Reply).expect("device reply opens")
        } else {
            frame
        };
        let event = wire::decode_event(&opened).expect("decodes");
        if event.header.response_to.as_ref() == Some(id) && event.name != names::HEARTBEAT {
            return (sealed, event);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_frame_gets_replayed() {
    let calls = Arc::new(AtomicU64::new(0));
    let (device, node) = keyed_device_and_worker(counted(calls.clone())).await;

    // A keyed request sealed by hand, as a client would, and captured.
    let trust = Trust::new(key(ALPHA));
    let id = MessageId::generate();
    let args = rmp_serde::to_vec(&(7u64,)).expect("encodes");
    let event = wire::encode_event(&Header::zmesh_with_id(id.clone(), None), "work.job", &args);
    let captured = trust.seal(Kind::Request, &event, id.encoded());
    let mut dealer = DealerSocket::new();
    net("dealer connect", dealer.connect(device.frontend()))
        .await
        .expect("connects");
    let send = |frame: Bytes| ZmqMessage::try_from(vec![Bytes::new(), frame]).expect("frames");

    net("first send", dealer.send(send(captured.clone())))
        .await
        .expect("sent");
    let (sealed, reply) = answer_to(&mut dealer, &trust, &id).await;
    assert!(sealed, "a worker's reply is sealed");
    assert_eq!(reply.name, names::OK);

    net("replay", dealer.send(send(captured)))
        .await
        .expect("sent");
    let (sealed, refusal) = answer_to(&mut dealer, &trust, &id).await;
    assert!(!sealed, "refusals go out unsealed");
    assert_eq!(refusal.name, names::ERR);
    assert_eq!(wire::parse_err_args(&refusal.args).0, "Replayed");
    assert_eq!(device.stats().replay_rejected, 1);
    assert_eq!(calls.load(Ordering::Relaxed), 1, "the replay did not run");
    node.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_without_the_right_key_cannot_register() {
    let device = device(Some(key(ALPHA))).await;
    let rogue_calls = Arc::new(AtomicU64::new(0));
    let rogue = worker(
        device.backend(),
        "rogue",
        counted(rogue_calls.clone()),
        Some(key(BRAVO)),
    )
    .await;
    let unkeyed = worker(
        device.backend(),
        "unkeyed",
        counted(rogue_calls.clone()),
        None,
    )
    .await;
    // Both announced themselves and were refused, and both were told so.
    eventually(NET_TIMEOUT, "rogue announcements refused", || {
        device.stats().unauthenticated >= 2
    })
    .await;
    eventually(NET_TIMEOUT, "workers learn they are refused", || {
        rogue.stats().unauthenticated > 0 && unkeyed.stats().unauthenticated > 0
    })
    .await;
    assert_eq!(device.stats().workers, 0);
    let keyed_client = client(device.frontend(), Some(key(ALPHA)));
    let err = net(
        "call with only rogue workers",
        keyed_client.call_with::<u64>("work.job", (1,), short()),
    )
    .await
    .expect_err("no worker serves it");
    assert_eq!(remote_name(&err), Some("NameError"), "{err}");

    // A worker with the key registers next to them and gets every call.
    let good_calls = Arc::new(AtomicU64::new(0));
    let good = worker(
        device.backend(),
        "good",
        counted(good_calls.clone()),
        Some(key(ALPHA)),
    )
    .await;
    eventually(NET_TIMEOUT, "keyed worker registered", || {
        device.stats().workers == 1
    })
    .await;
    for x in 0..20u64 {
        let got: u64 = net("keyed call", keyed_client.call("work.job", (x,)))
            .await
            .expect("served");
        assert_eq!(got, x);
    }
    assert_eq!(good_calls.load(Ordering::Relaxed), 20);
    assert_eq!(
        rogue_calls.load(Ordering::Relaxed),
        0,
        "no request reached them"
    );
    assert_eq!(device.stats().workers, 1);
    for node in [rogue, unkeyed, good] {
        node.shutdown(Duration::from_secs(1)).await;
    }
    device.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_worker_refuses_an_unkeyed_device() {
    let device = device(None).await;
    let calls = Arc::new(AtomicU64::new(0));
    let node = worker(
        device.backend(),
        "keyed",
        counted(calls.clone()),
        Some(key(ALPHA)),
    )
    .await;
    // The device cannot read the sealed announcement: counted, and the worker is told.
    eventually(NET_TIMEOUT, "sealed announcement refused", || {
        device.stats().unauthenticated > 0
    })
    .await;
    eventually(NET_TIMEOUT, "worker learns it is refused", || {
        node.stats().unauthenticated > 0
    })
    .await;
    assert_eq!(device.stats().workers, 0);
    let plain = client(device.frontend(), None);
    let err = net("call", plain.call_with::<u64>("work.job", (1,), short()))
        .await
        .expect_err("no worker");
    assert_eq!(remote_name(&err), Some("NameError"), "{err}");
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    node.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
}

async fn beacon_node(mesh: &str, name: &str, port: u16, key: Option<MeshKey>) -> MeshNode {
    let mut builder = MeshNode::builder(mesh)
        .name(name)
        .bind("tcp://127.0.0.1:0")
        .service(mesh_support::billing(name, None))
        .beacon(BeaconConfig::loopback(port).interval(Duration::from_millis(50)))
        .timing(Duration::from_millis(200), Duration::from_millis(3000));
    if let Some(key) = key {
        builder = builder.mesh_key(key);
    }
    net("mesh node start", builder.start())
        .await
        .expect("mesh node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_mesh_ignores_unsealed_and_foreign_key_beacons() {
    let mesh = mesh_name("keyed-beacons");
    let port = beacon_port();
    let a = beacon_node(&mesh, "a", port, Some(key(ALPHA))).await;
    let b = beacon_node(&mesh, "b", port, Some(key(ALPHA))).await;
    // Keyed members find each other by (sealed) beacons.
    eventually(
        Duration::from_secs(10),
        "keyed members hear each other",
        || {
            a.discovery().peers().iter().any(|p| p.name == "b")
                && b.discovery().peers().iter().any(|p| p.name == "a")
        },
    )
    .await;
    assert!(a.discovery().stats().beacons_heard > 0);

    // Same mesh name, same port: one announces unsealed beacons, one seals with another key.
    let before = a.discovery().stats().beacons_unauthenticated;
    let plain = beacon_node(&mesh, "plain", port, None).await;
    let other = beacon_node(&mesh, "other", port, Some(key(BRAVO))).await;
    eventually(Duration::from_secs(10), "forged beacons counted", || {
        a.discovery().stats().beacons_unauthenticated >= before + 10
    })
    .await;
    // Also a hand-made unsealed datagram on the port.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.set_broadcast(true).expect("broadcast");
    sock.send_to(b"\x83not sealed", ("127.255.255.255", port))
        .expect("sent");
    // The other key's members hear each other no more than the keyed ones hear them.
    for node in [&a, &b] {
        let names: Vec<String> = node
            .discovery()
            .peers()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert!(
            !names.iter().any(|n| n == "plain" || n == "other"),
            "{names:?}"
        );
    }
    assert!(
        !plain
            .discovery()
            .peers()
            .iter()
            .any(|p| p.name == "a" || p.name == "b")
    );
    assert!(
        !other
            .discovery()
            .peers()
            .iter()
            .any(|p| p.name == "a" || p.name == "b")
    );
    // Keyed members still call each other.
    let b_client = a.client(zmesh::mesh::MeshClientConfig::default());
    let quote: (String, u64) = net("mesh call", b_client.call("billing.quote", (21,)))
        .await
        .expect("served");
    assert_eq!(quote.1, 42);
}
