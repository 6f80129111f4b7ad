//! Liveness over real sockets: heartbeats keep long calls alive, a killed or frozen server
//! fails in-flight calls with `PeerLost` promptly, the same client then uses a restarted
//! server, and a vanished client's calls are aborted on the node.

mod common;

use std::time::{Duration, Instant};

use common::{
    NET_TIMEOUT, TRANSPORTS, Transport, bind_endpoint, eventually, net, spawn_child_server,
    start_node, within,
};
use zmesh::{CallError, CallOptions, Client, ClientConfig, NodeConfig};

/// Entry point for the child server process; a no-op in a normal test run.
#[test]
fn child_server_entry() {
    common::serve_if_child();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_far_longer_than_the_heartbeat_period_stay_alive() {
    let heartbeat = Duration::from_millis(100);
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(
            transport,
            NodeConfig::default().heartbeat(heartbeat),
            vec![],
        )
        .await;
        let client = Client::with_config(
            node.endpoint(),
            ClientConfig::default().heartbeat(heartbeat),
        );
        // 15 periods: without heartbeats either side would give up after about 3.
        let slept: u64 = net("long call", client.call("echo.sleep", (1_500,)))
            .await
            .expect("alive");
        assert_eq!(slept, 1_500);
        assert_eq!(node.stats().peers_lost, 0, "{transport:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_second_call_with_default_heartbeats() {
    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), vec![]).await;
    let client = Client::new(node.endpoint());
    let options = CallOptions::timeout(Duration::from_secs(40));
    let slept: u64 = within(
        Duration::from_secs(60),
        "20 s call",
        client.call_with("echo.sleep", (20_000,), options),
    )
    .await
    .expect("kept alive by default heartbeats");
    assert_eq!(slept, 20_000);
    assert_eq!(node.stats().peers_lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_in_flight_calls_then_restarted_server_is_used() {
    let heartbeat = Duration::from_millis(500);
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = spawn_child_server(&bind_endpoint(transport, &dir, "child"), heartbeat).await;
        let endpoint = server.endpoint.clone();
        let client = Client::with_config(
            endpoint.clone(),
            ClientConfig::default().heartbeat(heartbeat),
        );
        let warm: String = net("warm up", client.call("echo.upper", ("x",)))
            .await
            .expect("ok");
        assert_eq!(warm, "X");

        let calls: Vec<_> = (0..10)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.call::<u64>("echo.sleep", (60_000,)).await })
            })
            .collect();
        // Let the requests reach the server before it dies.
        let _: u64 = net("round trip", client.call("echo.echo", (1,)))
            .await
            .expect("ok");
        let killed_at = Instant::now();
        server.kill().await;
        for call in calls {
            let err = within(3 * heartbeat, "PeerLost within 3 heartbeat periods", call)
                .await
                .expect("join")
                .expect_err("server died");
            assert!(err.is_peer_lost(), "{transport:?}: {err:?}");
        }
        let detected_after = killed_at.elapsed();

        // Same endpoint, new process: the same client reconnects by itself.
        let restarted = spawn_child_server(&endpoint, heartbeat).await;
        let again: String = net("call after restart", client.call("echo.upper", ("back",)))
            .await
            .expect("reconnected");
        assert_eq!(again, "BACK");
        restarted.kill().await;
        eprintln!("{transport:?}: in-flight calls failed {detected_after:?} after the kill");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_is_detected_by_missing_heartbeats() {
    // SIGSTOP keeps the TCP connection open, so only heartbeats can reveal the dead peer.
    let heartbeat = Duration::from_millis(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = spawn_child_server(&bind_endpoint(Transport::Tcp, &dir, "child"), heartbeat).await;
    let client = Client::with_config(
        server.endpoint.clone(),
        ClientConfig::default().heartbeat(heartbeat),
    );
    let call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call_with::<u64>(
                    "echo.sleep",
                    (60_000,),
                    CallOptions::timeout(Duration::from_secs(60)),
                )
                .await
        }
    });
    // Let a few heartbeats flow so the channel is established both ways.
    let _: u64 = net("warm up", client.call("echo.sleep", (3 * 300,)))
        .await
        .expect("ok");
    server.signal("STOP");
    // Lost after two silent periods; allow one more for the sweep tick and the last
    // heartbeat's spacing, still far below the 60 s deadline.
    let err = within(4 * heartbeat, "PeerLost from missing heartbeats", call)
        .await
        .expect("join")
        .expect_err("frozen server");
    assert!(
        matches!(err, CallError::PeerLost(ref why) if why.contains("no heartbeat")),
        "{err:?}"
    );
    server.signal("CONT");
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_client_calls_are_aborted_on_the_node() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call::<u64>("echo.sleep", (60_000,)).await }
        });
        eventually(NET_TIMEOUT, "call running", || node.stats().in_flight == 1).await;
        call.abort();
        let _ = call.await;
        drop(client);
        // Either the zmesh cancel or the disconnect must close the channel promptly.
        eventually(NET_TIMEOUT, "call aborted on the node", || {
            node.stats().in_flight == 0
        })
        .await;
        let other = Client::new(node.endpoint());
        let ok: String = net("other client", other.call("echo.upper", ("x",)))
            .await
            .expect("ok");
        assert_eq!(ok, "X");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_fails_within_the_deadline() {
    let client = Client::new("tcp://127.0.0.1:1");
    let err = net(
        "connect failure",
        client.call_with::<String>(
            "echo.upper",
            ("x",),
            CallOptions::timeout(Duration::from_millis(500)),
        ),
    )
    .await
    .expect_err("nothing listens on port 1");
    assert!(
        matches!(
            err,
            CallError::Connect { .. } | CallError::DeadlineExceeded(_)
        ),
        "{err:?}"
    );
}

/// A server that takes a request and never says a word about it (no reply, no heartbeat:
/// what a zerorpc-node server does with a method it does not have) fails the call as a lost
/// peer whose cause says so (`NoAnswer`), told apart from a server that went silent mid-call
/// ("no heartbeat", above).
#[tokio::test]
async fn a_server_that_ignores_a_call_is_reported_as_not_answering() {
    use zeromq::{RouterSocket, Socket, SocketRecv};

    let heartbeat = Duration::from_millis(100);
    let mut router = RouterSocket::new();
    let bound = net("bind", router.bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind");
    let endpoint = bound.to_string();
    // Reads every request and answers none of them.
    let silent = tokio::spawn(async move {
        let mut taken = 0usize;
        while router.recv().await.is_ok() {
            taken += 1;
        }
        taken
    });
    let client = Client::with_config(endpoint, ClientConfig::default().heartbeat(heartbeat));
    let err = within(
        Duration::from_secs(5),
        "an unanswered call fails",
        client.call_with::<String>(
            "missing.method",
            ("hi",),
            CallOptions::timeout(Duration::from_secs(60)),
        ),
    )
    .await
    .expect_err("nothing answers");
    assert!(err.is_unanswered() && err.is_peer_lost(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("no answer from") && text.contains("neither a reply nor a heartbeat"),
        "{text}"
    );
    silent.abort();
}
