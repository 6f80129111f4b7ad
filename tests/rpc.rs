//! Request-reply over real sockets, tcp and ipc: concurrency, typed args and results, remote
//! errors, panics, limits, deadlines, cancellation, built-ins and graceful shutdown.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{NET_TIMEOUT, TRANSPORTS, Transport, eventually, net, start_node};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Notify;
use zmesh::{CallError, CallOptions, Client, NodeConfig, Service, wire};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_calls_from_one_client_are_all_correct() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        let calls: FuturesUnordered<_> = (0..1000u64)
            .map(|i| {
                let client = client.clone();
                async move {
                    let text = format!("call-{i}");
                    let upper: String = client.call("echo.upper", (&text,)).await.expect("upper");
                    let echoed: u64 = client.call("echo.echo", (i,)).await.expect("echo");
                    (i, text, upper, echoed)
                }
            })
            .collect();
        let results: Vec<_> = net("1000 concurrent calls", calls.collect()).await;
        assert_eq!(results.len(), 1000, "{transport:?}");
        for (i, text, upper, echoed) in results {
            assert_eq!(upper, text.to_uppercase(), "{transport:?}");
            assert_eq!(echoed, i, "{transport:?}");
        }
        assert!(node.stats().calls >= 2000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_values_round_trip_and_unprefixed_names_work() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        let value = rmpv::Value::Map(vec![
            (
                "list".into(),
                rmpv::Value::Array(vec![1.into(), "two".into(), rmpv::Value::Nil]),
            ),
            ("bin".into(), rmpv::Value::Binary(vec![0, 1, 2, 255])),
            ("float".into(), rmpv::Value::F64(1.5)),
        ]);
        let back: rmpv::Value = net("echo", client.call("echo.echo", (value.clone(),)))
            .await
            .expect("echo");
        assert_eq!(back, value);
        let upper: String = net("unprefixed", client.call("upper", ("hi",)))
            .await
            .expect("upper");
        assert_eq!(upper, "HI");
        let size: usize = net(
            "size",
            client.call("echo.size", (rmpv::Value::Binary(vec![7; 4096]),)),
        )
        .await
        .expect("size");
        assert_eq!(size, 4096);
        let slept: u64 = net("sleep", client.call("echo.sleep", (5,)))
            .await
            .expect("sleep");
        assert_eq!(slept, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_errors_arrive_typed() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());

        let err = net("fail", client.call::<()>("echo.fail", ("boom",)))
            .await
            .expect_err("fails");
        let remote = err.remote().expect("remote error");
        assert_eq!(
            (remote.name.as_str(), remote.message.as_str()),
            ("EchoError", "boom")
        );

        let err = net("unknown", client.call::<()>("echo.nope", ()))
            .await
            .expect_err("fails");
        let remote = err.remote().expect("remote error");
        assert_eq!(
            (remote.name.as_str(), remote.message.as_str()),
            ("NameError", "echo.nope")
        );

        let err = net("wrong type", client.call::<String>("echo.upper", (5,)))
            .await
            .expect_err("fails");
        let remote = err.remote().expect("remote error");
        assert_eq!(remote.name, "TypeError");
        assert!(
            remote.message.starts_with("argument 1: "),
            "{}",
            remote.message
        );

        let err = net("arity", client.call::<String>("echo.upper", ("a", "b")))
            .await
            .expect_err("fails");
        assert_eq!(
            err.remote().expect("remote").message,
            "takes 1 positional argument but 2 were given"
        );

        let err = net("size of int", client.call::<usize>("echo.size", (1,)))
            .await
            .expect_err("fails");
        assert_eq!(
            err.remote().expect("remote").message,
            "size expects bin or str, got int"
        );

        // Decoding into the wrong local type is a local error, not a remote one.
        let err = net("decode", client.call::<u64>("echo.upper", ("x",)))
            .await
            .expect_err("fails");
        assert!(matches!(err, CallError::Decode(_)), "{err:?}");

        // The node keeps serving after all of that.
        let ok: String = net("after errors", client.call("echo.upper", ("ok",)))
            .await
            .expect("ok");
        assert_eq!(ok, "OK");
    }
}

fn panicky() -> Service {
    Service::new("panicky")
        .method("boom", |msg: String| async move {
            if msg == "panic" {
                panic!("handler exploded");
            }
            Ok(msg)
        })
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panic_becomes_err_and_node_keeps_serving() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![panicky()]).await;
        let client = Client::new(node.endpoint());
        let err = net("panic", client.call::<String>("panicky.boom", ("panic",)))
            .await
            .expect_err("panics");
        let remote = err.remote().expect("remote error");
        assert_eq!(remote.name, "HandlerPanic");
        assert!(
            remote.message.contains("handler exploded"),
            "{}",
            remote.message
        );
        let fine: String = net("after panic", client.call("panicky.boom", ("fine",)))
            .await
            .expect("ok");
        assert_eq!(fine, "fine");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_call_never_delays_others() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        let slow = tokio::spawn({
            let client = client.clone();
            async move { client.call::<u64>("echo.sleep", (5_000,)).await }
        });
        eventually(NET_TIMEOUT, "slow call running", || {
            node.stats().in_flight == 1
        })
        .await;
        for i in 0..100u64 {
            let v: u64 = net("quick call", client.call("echo.echo", (i,)))
                .await
                .expect("quick");
            assert_eq!(v, i);
        }
        // All hundred quick calls finished while the slow one is still running.
        assert!(
            !slow.is_finished(),
            "{transport:?}: slow call finished before the quick ones"
        );
        assert_eq!(
            net("slow call", slow)
                .await
                .expect("join")
                .expect("slow ok"),
            5_000
        );
    }
}

/// Starts `n` 4-second calls from `client` and waits until the node runs all of them.
async fn occupy(
    node: &zmesh::Node,
    client: &Client,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<u64, CallError>>> {
    let busy = (0..n)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call::<u64>("echo.sleep", (4_000,)).await })
        })
        .collect();
    eventually(NET_TIMEOUT, "calls running", || node.stats().in_flight == n).await;
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_concurrency_bound_answers_overloaded() {
    for transport in TRANSPORTS {
        let config = NodeConfig::default().max_concurrent_calls(2);
        let (node, _dir) = start_node(transport, config, vec![]).await;
        let client = Client::new(node.endpoint());
        let busy = occupy(&node, &client, 2).await;
        let err = net("third call", client.call::<String>("echo.upper", ("x",)))
            .await
            .expect_err("overloaded");
        assert_eq!(err.remote().expect("remote").name, "Overloaded");
        assert!(node.stats().overloaded >= 1);
        for call in busy {
            assert_eq!(
                net("busy call", call).await.expect("join").expect("ok"),
                4_000
            );
        }
        let ok: String = net("after overload", client.call("echo.upper", ("x",)))
            .await
            .expect("ok");
        assert_eq!(ok, "X");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_connection_bound_answers_peer_overloaded_only_to_that_client() {
    let config = NodeConfig::default().max_calls_per_peer(2);
    let (node, _dir) = start_node(Transport::Tcp, config, vec![]).await;
    let greedy = Client::new(node.endpoint());
    let polite = Client::new(node.endpoint());
    let busy = occupy(&node, &greedy, 2).await;
    let err = net("greedy third", greedy.call::<String>("echo.upper", ("x",)))
        .await
        .expect_err("over");
    let remote = err.remote().expect("remote");
    assert_eq!(remote.name, "PeerOverloaded");
    assert!(remote.message.contains("connection"), "{}", remote.message);
    let ok: String = net("polite call", polite.call("echo.upper", ("y",)))
        .await
        .expect("served");
    assert_eq!(ok, "Y");
    for call in busy {
        net("busy call", call).await.expect("join").expect("ok");
    }
}

/// A service whose handler reports when it starts and when it is dropped unfinished.
fn observed(started: Arc<Notify>, dropped: Arc<Notify>, finished: Arc<AtomicU64>) -> Service {
    struct OnDrop(Arc<Notify>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    Service::new("observed")
        .method("wait", move |ms: u64| {
            let (started, dropped, finished) = (started.clone(), dropped.clone(), finished.clone());
            async move {
                let guard = OnDrop(dropped);
                started.notify_one();
                tokio::time::sleep(Duration::from_millis(ms)).await;
                std::mem::forget(guard);
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(ms)
            }
        })
        .into()
}

/// A node hosting [`observed`], with a client and the observation handles.
struct Observed {
    node: zmesh::Node,
    _dir: tempfile::TempDir,
    client: Client,
    started: Arc<Notify>,
    dropped: Arc<Notify>,
    finished: Arc<AtomicU64>,
}

async fn observed_node(transport: Transport) -> Observed {
    let (started, dropped, finished) = (
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
        Arc::new(AtomicU64::new(0)),
    );
    let service = observed(started.clone(), dropped.clone(), finished.clone());
    let (node, _dir) = start_node(transport, NodeConfig::default(), vec![service]).await;
    let client = Client::new(node.endpoint());
    // Connected and warm: the connection has learned the peer speaks zmesh (so drops send a
    // cancel), and deadlines measured by the tests cover calls, not connects.
    let _: String = net("warm up", client.call("echo.upper", ("x",)))
        .await
        .expect("ok");
    Observed {
        node,
        _dir,
        client,
        started,
        dropped,
        finished,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_aborts_the_server_handler() {
    for transport in TRANSPORTS {
        let Observed {
            node,
            _dir,
            client,
            started,
            dropped,
            finished,
        } = observed_node(transport).await;

        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call::<u64>("observed.wait", (60_000,)).await }
        });
        net("handler start", started.notified()).await;
        call.abort(); // drops the call's future
        net("handler aborted by cancel", dropped.notified()).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0);
        eventually(NET_TIMEOUT, "cancel counted", || {
            node.stats().cancelled == 1
        })
        .await;
        assert_eq!(node.stats().in_flight, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_expiry_fails_the_call_and_aborts_the_handler() {
    for transport in TRANSPORTS {
        let Observed {
            node: _node,
            _dir,
            client,
            started,
            dropped,
            finished,
        } = observed_node(transport).await;
        let options = CallOptions::timeout(Duration::from_millis(500));
        let err = net(
            "deadline",
            client.call_with::<u64>("observed.wait", (60_000,), options),
        )
        .await
        .expect_err("deadline passes");
        assert!(matches!(err, CallError::DeadlineExceeded(_)), "{err:?}");
        net("handler started", started.notified()).await;
        net("handler aborted", dropped.notified()).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0);
        // A call within its deadline still succeeds.
        let options = CallOptions::timeout(Duration::from_secs(5));
        let ok: u64 = net("in time", client.call_with("observed.wait", (10,), options))
            .await
            .expect("ok");
        assert_eq!(ok, 10);
    }
}

/// A raw DEALER that speaks the wire protocol by hand (no cancel, no heartbeats), to see what
/// the node does on its own.
async fn raw_peer(endpoint: &str) -> zeromq::DealerSocket {
    use zeromq::Socket as _;
    let mut socket = zeromq::DealerSocket::new();
    net("raw connect", socket.connect(endpoint))
        .await
        .expect("connects");
    socket
}

async fn raw_request(
    socket: &mut zeromq::DealerSocket,
    header: &wire::Header,
    method: &str,
    args: &[u8],
) {
    use zeromq::SocketSend as _;
    let event = wire::encode_event(header, method, args);
    net("raw send", socket.send(wire::join_frames(&[], event)))
        .await
        .expect("sent");
}

async fn raw_reply(socket: &mut zeromq::DealerSocket) -> wire::Event {
    use zeromq::SocketRecv as _;
    loop {
        let message = net("raw reply", socket.recv()).await.expect("received");
        let envelope = wire::split_frames(message.into_vec()).expect("frames");
        let event = wire::decode_event(&envelope.event).expect("valid event");
        if event.name != wire::names::HEARTBEAT {
            return event;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_enforces_the_deadline_it_was_sent() {
    let Observed {
        node,
        _dir,
        started,
        dropped,
        finished,
        ..
    } = observed_node(Transport::Tcp).await;
    let mut raw = raw_peer(node.endpoint()).await;
    // Still running when its deadline passes: aborted, and answered with DeadlineExceeded.
    let mut header = wire::Header::zmesh(None);
    header.deadline_ms = Some(300);
    raw_request(
        &mut raw,
        &header,
        "observed.wait",
        &rmp_serde::to_vec(&(60_000,)).expect("args"),
    )
    .await;
    net("handler started", started.notified()).await;
    let reply = raw_reply(&mut raw).await;
    assert_eq!(reply.header.response_to.as_ref(), Some(&header.message_id));
    assert_eq!(reply.name, "ERR");
    assert_eq!(wire::parse_err_args(&reply.args).0, "DeadlineExceeded");
    net("handler aborted", dropped.notified()).await;
    assert_eq!(finished.load(Ordering::SeqCst), 0);
    // Already expired on arrival: dropped without running.
    let before = node.stats().expired;
    let mut header = wire::Header::zmesh(None);
    header.deadline_ms = Some(0);
    raw_request(
        &mut raw,
        &header,
        "observed.wait",
        &rmp_serde::to_vec(&(1,)).expect("args"),
    )
    .await;
    eventually(NET_TIMEOUT, "expired request counted", || {
        node.stats().expired > before
    })
    .await;
    assert_eq!(node.stats().in_flight, 0);
    // The connection still works.
    let header = wire::Header::zmesh(None);
    raw_request(
        &mut raw,
        &header,
        "echo.upper",
        &rmp_serde::to_vec(&("ok",)).expect("args"),
    )
    .await;
    let reply = raw_reply(&mut raw).await;
    assert_eq!(reply.name, "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_raw_client_calls_are_aborted_on_disconnect() {
    // No cancel event: only the node's disconnect watch can notice this client is gone.
    for transport in TRANSPORTS {
        let Observed {
            node,
            _dir,
            started,
            dropped,
            ..
        } = observed_node(transport).await;
        let mut raw = raw_peer(node.endpoint()).await;
        let header = wire::Header::zmesh(None);
        raw_request(
            &mut raw,
            &header,
            "observed.wait",
            &rmp_serde::to_vec(&(60_000,)).expect("args"),
        )
        .await;
        net("handler started", started.notified()).await;
        drop(raw);
        net("handler aborted after disconnect", dropped.notified()).await;
        eventually(NET_TIMEOUT, "channel closed", || {
            node.stats().in_flight == 0
        })
        .await;
        assert!(node.stats().peers_lost >= 1, "{transport:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtins_answer_in_zerorpc_shapes() {
    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), vec![]).await;
    let client = Client::new(node.endpoint());
    let ping: (String, String) = net("ping", client.call("_zerorpc_ping", ()))
        .await
        .expect("ping");
    assert_eq!(ping, ("pong".to_owned(), "echo".to_owned()));
    let name: String = net("name", client.call("_zerorpc_name", ()))
        .await
        .expect("name");
    assert_eq!(name, "echo");
    let list: Vec<String> = net("list", client.call("_zerorpc_list", ()))
        .await
        .expect("list");
    for expected in ["echo.upper", "echo.count", "upper", "count"] {
        assert!(list.contains(&expected.to_owned()), "{list:?}");
    }
    let mut sorted = list.clone();
    sorted.sort();
    assert_eq!(list, sorted);
    assert!(list.iter().all(|m| !m.starts_with('_')));
    let help: Option<String> = net("help", client.call("_zerorpc_help", ("echo.upper",)))
        .await
        .expect("help");
    assert_eq!(help.as_deref(), Some("Return the string upper-cased."));
    let err = net(
        "help unknown",
        client.call::<Option<String>>("_zerorpc_help", ("nope",)),
    )
    .await
    .expect_err("unknown");
    assert_eq!(err.remote().expect("remote").name, "KeyError");
    assert_eq!(err.remote().expect("remote").message, "'nope'");
    let inspect: rmpv::Value = net("inspect", client.call("_zerorpc_inspect", ()))
        .await
        .expect("inspect");
    let get = |v: &rmpv::Value, k: &str| -> rmpv::Value {
        v.as_map()
            .and_then(|m| {
                m.iter()
                    .find(|(key, _)| key.as_str() == Some(k))
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| panic!("key {k} missing in {v}"))
    };
    assert_eq!(get(&inspect, "name").as_str(), Some("echo"));
    let upper = get(&get(&inspect, "methods"), "echo.upper");
    assert_eq!(
        get(&upper, "doc").as_str(),
        Some("Return the string upper-cased.")
    );
    assert_eq!(
        get(&get(&upper, "args").as_array().expect("args")[0], "name").as_str(),
        Some("s")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_calls_and_refuses_new_ones() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        let short = tokio::spawn({
            let client = client.clone();
            async move { client.call::<u64>("echo.sleep", (300,)).await }
        });
        let long = tokio::spawn({
            let client = client.clone();
            async move { client.call::<u64>("echo.sleep", (60_000,)).await }
        });
        eventually(NET_TIMEOUT, "both calls running", || {
            node.stats().in_flight == 2
        })
        .await;
        let aborted = net("shutdown", node.shutdown(Duration::from_secs(3))).await;
        assert_eq!(aborted, 1, "{transport:?}");
        // The short call finished within the grace period.
        assert_eq!(
            net("short call", short)
                .await
                .expect("join")
                .expect("finished"),
            300
        );
        // The long one was told, not left hanging.
        let err = net("long call", long)
            .await
            .expect("join")
            .expect_err("aborted");
        let remote = err.remote().expect("remote error");
        assert_eq!(remote.name, "Unavailable");
        // The node is gone: a new call fails instead of hanging.
        let options = CallOptions::timeout(Duration::from_secs(2));
        let err = net(
            "after shutdown",
            client.call_with::<String>("echo.upper", ("x",), options),
        )
        .await
        .expect_err("node is gone");
        assert!(
            matches!(
                err,
                CallError::PeerLost(_) | CallError::Connect { .. } | CallError::DeadlineExceeded(_)
            ),
            "{err:?}"
        );
    }
}

/// When `shutdown` returns, the node's listeners are gone: the same address can be bound
/// again at once (a restart in the same process). Checked synchronously after the return, on
/// a `current_thread` runtime, so no task of the old node can run in between.
#[tokio::test(flavor = "current_thread")]
async fn shutdown_releases_the_endpoints_before_returning() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let endpoint = node.endpoint().to_owned();
        let client = Client::new(&endpoint);
        let upper: String = net("call", client.call("echo.upper", ("x",)))
            .await
            .expect("served");
        assert_eq!(upper, "X");
        net("shutdown", node.shutdown(Duration::from_secs(1))).await;
        match transport {
            Transport::Tcp => {
                let address = endpoint.strip_prefix("tcp://").expect("tcp endpoint");
                if let Err(e) = std::net::TcpListener::bind(address) {
                    panic!("{address} still bound after shutdown: {e}");
                }
            }
            Transport::Ipc => {
                let path = endpoint.strip_prefix("ipc://").expect("ipc endpoint");
                assert!(
                    std::fs::symlink_metadata(path).is_err(),
                    "{path} still exists after shutdown"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_binds_several_endpoints_and_serves_all() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = net(
        "start",
        zmesh::Node::builder()
            .bind("tcp://127.0.0.1:0")
            .bind(format!("ipc://{}/multi.sock", dir.path().display()))
            .service(zmesh_echo::service())
            .start(),
    )
    .await
    .expect("starts");
    assert_eq!(node.endpoints().len(), 2);
    for endpoint in node.endpoints() {
        let client = Client::new(endpoint.clone());
        let v: String = net("call", client.call("echo.upper", ("a",)))
            .await
            .expect("ok");
        assert_eq!(v, "A");
    }
    let err = net(
        "bad endpoint",
        zmesh::Node::builder().bind("inproc://x").start(),
    )
    .await
    .expect_err("inproc is unsupported");
    assert!(
        matches!(
            &err,
            zmesh::NodeError::InvalidEndpoint { endpoint, source: zmesh::EndpointError::UnsupportedScheme(scheme) }
                if endpoint == "inproc://x" && scheme == "inproc"
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("invalid endpoint \"inproc://x\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_is_refused_before_anything_is_bound() {
    // The good endpoint first: the bad one must stop the node before it binds anything.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let good = format!("tcp://{}", free.local_addr().expect("addr"));
    drop(free);
    for (bad, expected) in [
        ("127.0.0.1:4242", zmesh::EndpointError::NoScheme),
        ("tcp://127.0.0.1", zmesh::EndpointError::MissingPort),
        ("tcp://:1", zmesh::EndpointError::EmptyHost),
        ("ipc://", zmesh::EndpointError::EmptyPath),
        ("ipc://*", zmesh::EndpointError::WildcardPath("*".into())),
    ] {
        let err = net(
            "bad endpoint",
            zmesh::Node::builder()
                .bind(&good)
                .bind(bad)
                .service(zmesh_echo::service())
                .start(),
        )
        .await
        .expect_err(bad);
        match err {
            zmesh::NodeError::InvalidEndpoint { endpoint, source } => {
                assert_eq!(endpoint, bad);
                assert_eq!(source, expected, "{bad}");
            }
            other => panic!("{bad}: {other:?}"),
        }
        let address = good.strip_prefix("tcp://").expect("tcp");
        std::net::TcpListener::bind(address).expect("the good endpoint was never bound");
    }
    let err = net(
        "bad device backend",
        zmesh::Node::builder()
            .worker_of("localhost:4243")
            .service(zmesh_echo::service())
            .start(),
    )
    .await
    .expect_err("no scheme");
    assert!(
        matches!(
            err,
            zmesh::NodeError::InvalidEndpoint {
                source: zmesh::EndpointError::NoScheme,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_bad_endpoint_fails_its_first_call_at_once() {
    // A deadline far beyond the test's patience: the failure must not wait for it.
    let config = zmesh::ClientConfig::default()
        .default_timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(300));
    let client = Client::with_config("127.0.0.1:4242", config.clone());
    assert_eq!(client.endpoint(), "127.0.0.1:4242");
    for _ in 0..2 {
        let err = tokio::time::timeout(
            Duration::from_secs(2),
            client.call::<String>("echo.upper", ("x",)),
        )
        .await
        .expect("fails at once, not at the deadline")
        .expect_err("invalid endpoint");
        match &err {
            CallError::InvalidEndpoint { endpoint, source } => {
                assert_eq!(endpoint, "127.0.0.1:4242");
                assert_eq!(*source, zmesh::EndpointError::NoScheme);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "invalid endpoint \"127.0.0.1:4242\": no scheme: use tcp://host:port or ipc:///path"
        );
        assert!(
            std::error::Error::source(&err).is_some(),
            "the EndpointError is its source"
        );
    }
    let err = tokio::time::timeout(
        Duration::from_secs(2),
        Client::connect("inproc://x", config),
    )
    .await
    .expect("fails at once")
    .expect_err("invalid endpoint");
    assert!(
        matches!(
            err,
            CallError::InvalidEndpoint {
                source: zmesh::EndpointError::UnsupportedScheme(_),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_may_not_take_a_reserved_name() {
    for (service, method, unprefixed, name) in [
        ("_zmesh", "stats", false, "_zmesh.stats"),
        ("_zmesh", "anything", false, "_zmesh.anything"),
        ("x", "_zerorpc_ping", true, "_zerorpc_ping"),
        ("x", "_zmesh_stats", true, "_zmesh_stats"),
    ] {
        let mut builder = zmesh::Node::builder()
            .bind("tcp://127.0.0.1:0")
            .service(Service::new(service).method(method, || async { Ok(1u8) }));
        if unprefixed {
            builder = builder.export_unprefixed(service);
        }
        let err = net("start", builder.start()).await.expect_err("reserved");
        match err {
            zmesh::NodeError::ReservedMethod(found) if found == name => {}
            other => panic!("{service}.{method}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_stall_the_node() {
    use zeromq::SocketSend as _;
    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), vec![]).await;
    let mut greedy = raw_peer(node.endpoint()).await;
    let args = rmp_serde::to_vec(&("x",)).expect("args");
    // Requests as fast as the socket takes them, replies never read. Bounded: 200,000
    // sends, each given up after a second once backpressure reaches the sender.
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        for _ in 0..200_000 {
            let event = wire::encode_event(&wire::Header::zmesh(None), "echo.upper", &args);
            let send = greedy.send(wire::join_frames(&[], event));
            match tokio::time::timeout(Duration::from_secs(1), send).await {
                Ok(Ok(())) => sent += 1,
                _ => break,
            }
        }
        (greedy, sent)
    });
    let (_greedy, sent) = common::within(Duration::from_secs(120), "flood", flood)
        .await
        .expect("flood task");
    assert!(sent > 0);
    // The node answered what reached it without holding calls open for the greedy client,
    // and a polite client is served while the greedy one still is not reading.
    let polite = Client::new(node.endpoint());
    let ok: String = net("polite call", polite.call("echo.upper", ("still here",)))
        .await
        .expect("served");
    assert_eq!(ok, "STILL HERE");
    let stats = node.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert!(stats.calls > 0, "{stats:?}");
}

/// A caller waiting for its reply reads the socket itself when it gets there first. A
/// caller that then stops being polled (a future left in a `select!`) or is dropped must
/// not hold up the other calls on the connection: the reader task still hears every
/// message. One thread, so the reading caller is deterministic: the only one polled.
#[tokio::test(flavor = "current_thread")]
async fn a_caller_left_unpolled_or_dropped_while_reading_holds_up_no_one() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        // Connected, so the next call's first poll sends it and reads the socket at once.
        let warm: u64 = net("warm-up call", client.call("echo.echo", (1u64,)))
            .await
            .expect("warm-up");
        assert_eq!(warm, 1);

        let mut reading = Box::pin(client.call::<u64>("echo.sleep", (60_000u64,)));
        assert!(
            futures::poll!(reading.as_mut()).is_pending(),
            "{transport:?}: the long call is in flight"
        );
        // From here on `reading` is not polled.
        let waiting = tokio::spawn({
            let client = client.clone();
            async move { client.call::<u64>("echo.sleep", (50u64,)).await }
        });
        let answered = net("the other caller's reply", waiting)
            .await
            .expect("join")
            .expect("the waiting call succeeds");
        assert_eq!(answered, 50, "{transport:?}");

        // Cancels the unpolled call; its reply never comes, and the connection still
        // serves plain and streaming calls.
        drop(reading);
        eventually(NET_TIMEOUT, "the cancelled call's handler aborted", || {
            node.stats().in_flight == 0
        })
        .await;
        let echoed: u64 = net("a call after the cancel", client.call("echo.echo", (2u64,)))
            .await
            .expect("call");
        assert_eq!(echoed, 2, "{transport:?}");
        let items: Vec<u64> = net("a stream after the cancel", async {
            let stream = client
                .call_stream::<u64>("echo.count", (20u64,))
                .await
                .expect("stream opens");
            stream.map(|item| item.expect("item")).collect().await
        })
        .await;
        assert_eq!(items, (0..20).collect::<Vec<_>>(), "{transport:?}");
    }
}

/// Sequential callers on several threads take turns reading the socket, and every fifth
/// call is dropped right after its request went out (possibly while it reads): every call
/// that is kept gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_on_many_threads_take_turns_reading_one_connection() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        let callers: FuturesUnordered<_> = (0..8u64)
            .map(|caller| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut answered = 0u64;
                    for i in 0..300u64 {
                        let value = caller * 1_000 + i;
                        let mut call = std::pin::pin!(client.call::<u64>("echo.echo", (value,)));
                        if i % 5 == 4 {
                            // The first poll sends the request; dropping then cancels it.
                            let _ = futures::poll!(call.as_mut());
                            continue;
                        }
                        let echoed = call.await.expect("call succeeds");
                        assert_eq!(echoed, value, "caller {caller} call {i}");
                        answered += 1;
                    }
                    answered
                })
            })
            .collect();
        let answered: Vec<u64> = net("8 callers x 300 calls", callers.collect::<Vec<_>>())
            .await
            .into_iter()
            .map(|joined| joined.expect("caller task"))
            .collect();
        assert_eq!(answered, vec![240; 8], "{transport:?}");
        let after: u64 = net("a call after the run", client.call("echo.echo", (7u64,)))
            .await
            .expect("call");
        assert_eq!(after, 7);
    }
}
