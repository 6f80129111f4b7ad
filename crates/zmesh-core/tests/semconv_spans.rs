//! The default build's spans carry the OpenTelemetry RPC conventions' fields: a server
//! span (`zmesh.call`) and a client span (`zmesh.client_call`) per call, named by the method
//! through `otel.name`, with `rpc.system.name`, `rpc.method`, `server.address`/`port`, and
//! `error.type` with the error status on failure; streams alike.
//!
//! Spans are captured by a small layer under `set_default`, per test: each test runs on a
//! current-thread runtime, so the nodes' and clients' tasks run on the thread that holds it.

#[path = "support/spans.rs"]
mod spans;

use std::time::Duration;

use futures::StreamExt;
use zmesh_core::{CallError, CallOptions, Client, HandlerError, ItemStream, Node, Service};

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
    let port = node
        .endpoint()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("a tcp port");
    let client = Client::new(node.endpoint());
    (node, client, port)
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
    let reply: String = tokio::time::timeout(NET_TIMEOUT, client.call("greeter.hello", ("ann",)))
        .await
        .expect("in time")
        .expect("ok");
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
