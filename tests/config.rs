//! The one config rule over real sockets: a setting out of range is refused where the
//! component starts, with a `ConfigError` naming the field, never clamped and never a
//! panic in one of its tasks later.

mod common;

use std::time::Duration;

use common::{TRANSPORTS, bind_endpoint, net, start_node};
use zmesh::{CallError, Client, ClientConfig, Node, NodeConfig, NodeError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_zero_heartbeat_fails_at_once_with_the_field_named() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let mut config = ClientConfig::default();
        config.heartbeat = Duration::ZERO;

        let client = Client::with_config(node.endpoint(), config.clone());
        for _ in 0..2 {
            match net(
                "call with a bad config",
                client.call::<String>("echo.upper", ("hi",)),
            )
            .await
            {
                Err(CallError::Config(e)) => {
                    assert_eq!(e.field, "heartbeat", "{transport:?}");
                    assert!(e.to_string().starts_with("heartbeat "), "{e}");
                }
                other => panic!("{transport:?}: {other:?}"),
            }
        }
        match net(
            "connect with a bad config",
            Client::connect(node.endpoint(), config),
        )
        .await
        {
            Err(CallError::Config(e)) => assert_eq!(e.field, "heartbeat", "{transport:?}"),
            other => panic!("{transport:?}: {other:?}"),
        }

        // The node is untouched, and a client with a valid config is served.
        let client = Client::new(node.endpoint());
        let upper: String = net("call", client.call("echo.upper", ("hi",)))
            .await
            .expect("served");
        assert_eq!(upper, "HI");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_no_connections_allowed_fails_to_start_with_the_field_named() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = bind_endpoint(transport, &dir, "node");
        let started = Node::builder()
            .bind(endpoint.clone())
            .service(zmesh_echo::service())
            .config(NodeConfig::default().max_connections_per_endpoint(0))
            .start();
        match net("node start", started).await {
            Err(NodeError::Config(e)) => {
                assert_eq!(e.field, "max_connections_per_endpoint", "{transport:?}");
            }
            other => panic!(
                "{transport:?}: {:?}",
                other.map(|n| n.endpoint().to_owned())
            ),
        }
        // Nothing was bound: the endpoint is free for a valid node.
        let node = net(
            "node start",
            Node::builder()
                .bind(endpoint)
                .service(zmesh_echo::service())
                .start(),
        )
        .await
        .expect("a valid node starts");
        let upper: String = net(
            "call",
            Client::new(node.endpoint()).call("echo.upper", ("ok",)),
        )
        .await
        .expect("served");
        assert_eq!(upper, "OK");
    }
}
