//! Clients that flood a node and never read, or connect and vanish, while others call it,
//! must not wedge the node. Found by the fault soak: the `zeromq` ROUTER locked its peer
//! map asynchronously to send and synchronously (blocking a runtime thread) to forget a
//! disconnected peer; once both runtime threads blocked there, the task holding the lock
//! could never run, and the node stopped serving and accepting for good (see
//! `vendor/zmesh-zeromq/PATCHED.md`, change 2).
//!
//! The node runs on its own 2-thread runtime on its own OS thread, so that if it wedges,
//! the test's own timeouts still fire and report it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use zeromq::{DealerSocket, Socket, SocketSend, ZmqMessage};
use zmesh::wire::{self, Header, MessageId};
use zmesh::{CallOptions, Client, Node};

const T: Duration = Duration::from_secs(10);
/// Rounds of churn and flooding.
const ROUNDS: usize = 20;

fn request(method: &str, args: &[u8]) -> ZmqMessage {
    let header = Header::zmesh_with_id(MessageId::generate(), None);
    let event = wire::encode_event(&header, method, args);
    ZmqMessage::try_from(vec![Bytes::new(), event]).expect("two frames")
}

/// Starts an echo node on a runtime of its own; returns its endpoint.
fn node_on_own_runtime() -> String {
    common::node_on_own_runtime(|| {
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
    })
}

/// Connects, sends `count` requests without reading a reply, and hangs up.
async fn flood_and_vanish(endpoint: String, count: usize) {
    let mut sock = DealerSocket::new();
    if !matches!(
        tokio::time::timeout(T, sock.connect(&endpoint)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    // `["x"]` as msgpack.
    let args = [0x91, 0xa1, b'x'];
    for _ in 0..count {
        if !matches!(
            tokio::time::timeout(T, sock.send(request("echo.echo", &args))).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooders_and_vanishing_clients_do_not_wedge_the_node() {
    let endpoint = node_on_own_runtime();
    let polite = Client::new(&endpoint);
    for round in 0..ROUNDS {
        // Several connections flood and vanish at once while a polite client calls.
        let churn: Vec<_> = (0..8)
            .map(|k| tokio::spawn(flood_and_vanish(endpoint.clone(), 200 + k * 300)))
            .collect();
        for i in 0..20 {
            let word = format!("r{round}-{i}");
            let reply: String = tokio::time::timeout(
                T,
                polite.call_with("echo.upper", (&word,), CallOptions::timeout(T)),
            )
            .await
            .unwrap_or_else(|_| panic!("round {round}: the node stopped answering"))
            .unwrap_or_else(|e| panic!("round {round}: call failed: {e}"));
            assert_eq!(reply, word.to_uppercase());
        }
        for task in churn {
            tokio::time::timeout(T, task)
                .await
                .expect("a flooder finished")
                .expect("a flooder did not panic");
        }
        // A new connection is still accepted and served.
        let fresh = Client::new(&endpoint);
        let reply: String = tokio::time::timeout(T, fresh.call("echo.upper", ("fresh",)))
            .await
            .unwrap_or_else(|_| panic!("round {round}: a new client is not served"))
            .expect("served");
        assert_eq!(reply, "FRESH");
    }
}
