//! The default build's spans carry the OpenTelemetry RPC conventions' fields: a server
//! span (`zmesh.call`) and a client span (`zmesh.client_call`) per call, named by the method
//! through `otel.name`, with `rpc.system.name`, `rpc.method`, `server.address`/`port`, and
//! `error.type` with the error status on failure; streams alike. The server span names its
//! immediate peer, `network.peer.address`/`port`: the client's end of the TCP connection,
//! none over `ipc://`.
//!
//! Spans are captured by a small layer under `set_default`, per test: each test runs on a
//! current-thread runtime, so the nodes' and clients' tasks run on the thread that holds it.

#[path = "support/spans.rs"]
mod spans;

use std::time::Duration;

use futures::StreamExt;
use zmesh_core::{
    CallError, CallOptions, Client, ClientConfig, HandlerError, ItemStream, MeshKey, Node, Service,
};

use spans::{Closed, NET_TIMEOUT, capture, field};

/// A node serving `greeter.hello` (ok), `greeter.fail` (a `GreetError`), `greeter.hang`
/// (never answers) and the stream `greeter.count`, and a client of it.
async fn greeter() -> (Node, Client, u16) {
    let service = Service::new("greeter")
        .method(
            "hello",
            |name: String| async move { Ok(format!("hi {name}")) },
        )
        .method("fail", |_: String| async move {
            Err::<String, _>(HandlerError::new("GreetError", "no greeting today"))
        })
        .method("hang", |_: String| async move {
            std::future::pending::<Result<String, HandlerError>>().await
        })
        .stream("count", |n: u64| async move {
            let items: ItemStream<u64> = futures::stream::iter((0..n).map(Ok)).boxed();
            Ok(items)
        });
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(service)
        .start()
        .await
        .expect("node starts");
    let port = port_of(node.endpoint());
    let client = Client::new(node.endpoint());
    (node, client, port)
}

/// `{service}.hello(name)`: `"hi {name}"`.
fn hello_service(service: &str) -> Service {
    Service::new(service)
        .method(
            "hello",
            |name: String| async move { Ok(format!("hi {name}")) },
        )
        .into()
}

/// Calls `method` (a `hello`) with `name`, within the test's timeout.
async fn hello(client: &Client, method: &str, name: &str) -> String {
    tokio::time::timeout(NET_TIMEOUT, client.call(method, (name,)))
        .await
        .expect("in time")
        .expect("ok")
}

/// The fields both span kinds share, for `method` served on `port`.
fn assert_rpc_fields(span: &Closed, kind: &str, method: &str, port: u16) {
    assert_eq!(field(span, "otel.name"), Some(method), "{span:?}");
    assert_eq!(field(span, "otel.kind"), Some(kind), "{span:?}");
    assert_eq!(field(span, "rpc.system.name"), Some("zerorpc"), "{span:?}");
    assert_eq!(field(span, "rpc.method"), Some(method), "{span:?}");
    assert_eq!(field(span, "server.address"), Some("127.0.0.1"), "{span:?}");
    assert_eq!(
        field(span, "server.port"),
        Some(port.to_string().as_str()),
        "{span:?}"
    );
}

#[tokio::test]
async fn a_call_has_a_server_and_a_client_span_with_the_rpc_conventions_fields() {
    let (spans, _guard) = capture();
    let (node, client, port) = greeter().await;
    let reply: String = hello(&client, "greeter.hello", "ann").await;
    assert_eq!(reply, "hi ann");

    let server = spans.wait("zmesh.call", "greeter.hello").await;
    assert_rpc_fields(&server, "server", "greeter.hello", port);
    assert_eq!(field(&server, "outcome"), Some("Ok"));
    assert_eq!(field(&server, "error.type"), None, "{server:?}");
    assert_eq!(field(&server, "otel.status_code"), None, "{server:?}");
    let client_span = spans.wait("zmesh.client_call", "greeter.hello").await;
    assert_rpc_fields(&client_span, "client", "greeter.hello", port);
    assert_eq!(field(&client_span, "outcome"), Some("ok"));
    assert_eq!(field(&client_span, "error.type"), None, "{client_span:?}");
    node.shutdown(Duration::from_secs(1)).await;
}

/// The local ports of this process's established TCP connections to 127.0.0.1:`port`: the
/// client ends of the connections to a node listening there (the kernel's table, so the
/// test knows the client's port without asking zmesh).
fn client_ports_to(port: u16) -> Vec<u16> {
    let table = std::fs::read_to_string("/proc/self/net/tcp").expect("the kernel's TCP table");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            let local = loopback_port(local)?;
            // 01: ESTABLISHED.
            (*state == "01" && loopback_port(remote)? == port).then_some(local)
        })
        .collect()
}

/// The port of an address as the kernel's table writes it (`0100007F:1F90`), if the
/// address is 127.0.0.1.
fn loopback_port(address: &str) -> Option<u16> {
    let (ip, port) = address.split_once(':')?;
    (ip == "0100007F")
        .then(|| u16::from_str_radix(port, 16).ok())
        .flatten()
}

#[tokio::test]
async fn the_server_span_names_the_client_end_of_the_connection() {
    let (spans, _guard) = capture();
    let (node, client, port) = greeter().await;
    hello(&client, "greeter.hello", "ann").await;

    let server = spans.wait("zmesh.call", "greeter.hello").await;
    assert_peer_is_a_client_of(&server, port);
    assert_ne!(
        field(&server, "network.peer.port"),
        Some(port.to_string().as_str())
    );
    // Not a client attribute: a client's peer is its server (`server.*`).
    let client_span = spans.wait("zmesh.client_call", "greeter.hello").await;
    assert_eq!(field(&client_span, "network.peer.address"), None);
    node.shutdown(Duration::from_secs(1)).await;
}

/// The port of a `tcp://host:port` endpoint.
fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("a tcp port")
}

/// `network.peer.port` of a server span, which must be the client's end of a connection
/// to `port`.
fn assert_peer_is_a_client_of(span: &Closed, port: u16) {
    assert_eq!(
        field(span, "network.peer.address"),
        Some("127.0.0.1"),
        "{span:?}"
    );
    let peer_port: u16 = field(span, "network.peer.port")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a network.peer.port: {span:?}"));
    let clients = client_ports_to(port);
    assert!(
        clients.contains(&peer_port),
        "{peer_port} is not the client's end of a connection to {port}: {clients:?}"
    );
}

#[tokio::test]
async fn a_keyed_node_names_the_peer_on_its_sealed_and_its_plain_endpoint() {
    let (spans, _guard) = capture();
    let key = MeshKey::from_secret("a mesh key of thirty-two bytes!!").expect("key");
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .bind_plain("tcp://127.0.0.1:0")
        .mesh_key(key.clone())
        .service(hello_service("sealed"))
        .service(hello_service("plain"))
        .start()
        .await
        .expect("node starts");
    let (sealed, plain) = (node.endpoints()[0].clone(), node.endpoints()[1].clone());
    let keyed = Client::with_config(&sealed, ClientConfig::default().mesh_key(key));
    hello(&keyed, "sealed.hello", "ann").await;
    let stock = Client::new(&plain);
    hello(&stock, "plain.hello", "bob").await;

    let span = spans.wait("zmesh.call", "sealed.hello").await;
    assert_peer_is_a_client_of(&span, port_of(&sealed));
    // The plain endpoint's connections have identities of their own (prefixed), and the
    // address is still found under the ROUTER's.
    let span = spans.wait("zmesh.call", "plain.hello").await;
    assert_peer_is_a_client_of(&span, port_of(&plain));
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn over_ipc_the_server_span_has_no_network_peer() {
    let (spans, _guard) = capture();
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("ipc://{}", dir.path().join("node.sock").display());
    let node = Node::builder()
        .bind(&endpoint)
        .service(hello_service("greeter"))
        .start()
        .await
        .expect("node starts");
    let client = Client::new(node.endpoint());
    hello(&client, "greeter.hello", "ann").await;

    let server = spans.wait("zmesh.call", "greeter.hello").await;
    let path = dir.path().join("node.sock");
    assert_eq!(
        field(&server, "server.address"),
        path.to_str(),
        "{server:?}"
    );
    assert_eq!(field(&server, "network.peer.address"), None, "{server:?}");
    assert_eq!(field(&server, "network.peer.port"), None, "{server:?}");
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_error_reply_names_its_error_type_on_both_spans() {
    let (spans, _guard) = capture();
    let (node, client, port) = greeter().await;
    let result: Result<String, _> =
        tokio::time::timeout(NET_TIMEOUT, client.call("greeter.fail", ("ann",)))
            .await
            .expect("in time");
    assert!(matches!(result, Err(CallError::Remote(_))), "{result:?}");

    for (name, kind) in [("zmesh.call", "server"), ("zmesh.client_call", "client")] {
        let span = spans.wait(name, "greeter.fail").await;
        assert_rpc_fields(&span, kind, "greeter.fail", port);
        assert_eq!(field(&span, "error.type"), Some("GreetError"), "{span:?}");
        assert_eq!(field(&span, "otel.status_code"), Some("ERROR"), "{span:?}");
    }

    // A deadline: the client's span says so, and the node's, which enforces the same one.
    let short = CallOptions::timeout(Duration::from_millis(100));
    let result: Result<String, _> = tokio::time::timeout(
        NET_TIMEOUT,
        client.call_with("greeter.hang", ("ann",), short),
    )
    .await
    .expect("in time");
    assert!(
        matches!(result, Err(CallError::DeadlineExceeded(_))),
        "{result:?}"
    );
    for name in ["zmesh.client_call", "zmesh.call"] {
        let span = spans.wait(name, "greeter.hang").await;
        assert_eq!(
            field(&span, "error.type"),
            Some("DeadlineExceeded"),
            "{span:?}"
        );
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_stream_call_has_the_same_spans() {
    let (spans, _guard) = capture();
    let (node, client, port) = greeter().await;
    let mut items = tokio::time::timeout(
        NET_TIMEOUT,
        client.call_stream::<u64>("greeter.count", (3u64,)),
    )
    .await
    .expect("in time")
    .expect("a stream");
    let mut got = Vec::new();
    while let Some(item) = tokio::time::timeout(NET_TIMEOUT, items.next())
        .await
        .expect("in time")
    {
        got.push(item.expect("an item"));
    }
    assert_eq!(got, [0, 1, 2]);

    let server = spans.wait("zmesh.call", "greeter.count").await;
    assert_rpc_fields(&server, "server", "greeter.count", port);
    assert_eq!(field(&server, "outcome"), Some("StreamDone"));
    let client_span = spans.wait("zmesh.client_call", "greeter.count").await;
    assert_rpc_fields(&client_span, "client", "greeter.count", port);
    assert_eq!(field(&client_span, "outcome"), Some("stream"));
    node.shutdown(Duration::from_secs(1)).await;
}
