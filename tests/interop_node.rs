//! Interop tests against stock zerorpc-node 0.9.8 (npm; its zeromq overridden to 5.3.1 and
//! built against the system libzmq, see tests/interop/node/package.json), in both
//! directions:
//!
//! - a zerorpc-node client (tests/interop/node/client.js, every case in one process) against
//!   a zmesh node serving the echo service in this process: values, unicode, binary, 4 MiB,
//!   an error, a stream, an unknown method, introspection, a 20 s call kept alive by
//!   heartbeats, and a client timeout after which the node aborts the handler;
//! - a zmesh client against a zerorpc-node server (tests/interop/node/server.js) as a child
//!   process: the same kinds of calls, and a method the server lacks, which zerorpc-node
//!   ignores without a word (a `PeerLost` whose cause is `NoAnswer`: `CallError::is_unanswered`).
//!
//! zerorpc-node is installed by tests/interop/node-setup.sh on first use; without node the
//! tests are skipped with a message (never under CI, where `.ci/run` installs it).

mod common;

use std::time::Duration;

use futures::StreamExt;
use rmpv::Value;
use serde_json::{Value as Json, json};
use tokio::time::timeout;
use zmesh::{CallError, CallOptions, Client, ClientConfig, NodeConfig};

use common::{Transport, eventually, net, start_node};

#[path = "common/zerorpc_node.rs"]
mod zerorpc_node;

/// Longest wait for the whole client script (its 20 s call included).
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);
/// Longest wait for a 20-second call, end to end.
const LONG_CALL_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zerorpc_node_client_calls_a_zmesh_node() {
    if !zerorpc_node::available().await {
        return;
    }
    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), Vec::new()).await;
    let endpoint = node.endpoint().to_owned();
    let output = timeout(
        SCRIPT_LIMIT,
        zerorpc_node::node_script("client.js", &[&endpoint]).output(),
    )
    .await
    .expect("client.js finishes")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client.js: {stdout}\n{stderr}");
    let results: std::collections::HashMap<String, Json> = stdout
        .lines()
        .map(|line| {
            let v: Json = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            (v["case"].as_str().expect("case").to_owned(), v)
        })
        .collect();
    let ok = |case: &str| {
        let r = &results[case];
        assert!(r.get("err").is_none(), "{case}: {r}\n{stderr}");
        r["ok"].clone()
    };
    let err = |case: &str| {
        let r = &results[case];
        assert!(r.get("ok").is_none(), "{case} should fail: {r}");
        (
            r["err"]["name"].as_str().unwrap_or_default().to_owned(),
            r["err"]["message"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(
        ok("values"),
        json!([1, -2, 2.5, true, null, "s", {"k": "v"}])
    );
    assert_eq!(ok("unicode"), json!("HÉLLO WÖRLD ✓ 日本"));
    assert_eq!(ok("binary"), json!({"base64": "AAH+/w=="}));
    assert_eq!(ok("large"), json!(4 * 1024 * 1024));
    assert_eq!(
        err("error"),
        ("EchoError".to_owned(), "boom from node".to_owned())
    );
    assert_eq!(ok("stream"), json!([0, 1, 2, 3, 4]));
    assert_eq!(err("unknown").0, "NameError");
    let inspect = ok("inspect");
    assert!(
        inspect["methods"].get("echo.upper").is_some(),
        "introspection lists echo.upper: {inspect}"
    );
    assert_eq!(ok("heartbeats"), json!(20000), "kept alive by heartbeats");
    assert_eq!(err("timeout").0, "TimeoutExpired");
    // The client gave up and stopped heartbeating: the node aborts the handler rather than
    // let it run its 30 s.
    eventually(
        Duration::from_secs(30),
        "the abandoned call aborted",
        || {
            let stats = node.stats();
            stats.in_flight == 0 && stats.peers_lost >= 1
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zmesh_client_calls_a_zerorpc_node_server() {
    if !zerorpc_node::available().await {
        return;
    }
    let (endpoint, _server) = zerorpc_node::start_server().await;
    let client = Client::new(endpoint.clone());

    let upper: String = net("upper", client.call("upper", ("héllo ✓",)))
        .await
        .expect("upper");
    assert_eq!(upper, "HÉLLO ✓");
    let values = Value::Array(vec![
        Value::from(1),
        Value::from(-2),
        Value::F64(2.5),
        Value::Boolean(true),
        Value::Nil,
        Value::Map(vec![(Value::from("k"), Value::from("v"))]),
    ]);
    let echoed: Value = net("echo values", client.call("echo", (values.clone(),)))
        .await
        .expect("echo");
    assert_eq!(echoed, values);
    let bytes = Value::Binary(vec![0, 1, 254, 255]);
    let echoed: Value = net("echo bytes", client.call("echo", (bytes.clone(),)))
        .await
        .expect("echo bytes");
    assert_eq!(echoed, bytes, "binary survives both ways");
    let big = "x".repeat(4 * 1024 * 1024);
    let size: u64 = net("size", client.call("size", (big,)))
        .await
        .expect("size");
    assert_eq!(size, 4 * 1024 * 1024);

    match net("boom", client.call::<Value>("boom", ("from node",))).await {
        Err(CallError::Remote(e)) => {
            assert_eq!(
                (e.name.as_str(), e.message.as_str()),
                ("NodeBoom", "from node")
            );
        }
        other => panic!("expected a remote error, got {other:?}"),
    }

    let stream = net("count", client.call_stream::<u64>("count", (5,)))
        .await
        .expect("count opens");
    let items: Vec<u64> = net("count items", stream.map(|i| i.expect("item")).collect()).await;
    assert_eq!(items, [0, 1, 2, 3, 4]);

    let inspect: Value = net("inspect", client.call("_zerorpc_inspect", ()))
        .await
        .expect("inspect");
    assert!(format!("{inspect}").contains("upper"), "{inspect}");

    // zerorpc-node drops a call to a method it lacks without a reply or a heartbeat: with
    // short heartbeats the client says so instead of reporting a lost peer.
    let impatient = Client::with_config(
        endpoint.clone(),
        ClientConfig::default().heartbeat(Duration::from_millis(300)),
    );
    let err = net(
        "unknown method",
        impatient.call::<Value>("nothing_here", ()),
    )
    .await
    .expect_err("ignored");
    assert!(err.is_unanswered(), "{err:?}");

    // Default heartbeats keep a 20-second call alive through zerorpc-node's own.
    let slept: u64 = timeout(
        LONG_CALL_LIMIT,
        client.call_with(
            "sleep",
            (20_000,),
            CallOptions::timeout(Duration::from_secs(50)),
        ),
    )
    .await
    .expect("within the limit")
    .expect("sleep");
    assert_eq!(slept, 20_000);
}
