//! The opt-in low-latency mode (`NodeConfig::spin`, `ClientConfig::spin`) over real
//! sockets: calls, concurrent calls and streams answer as without it, on both transports
//! and both runtime flavours, with either side or both spinning; a spinning node still
//! shuts down at once, and a spinning client still times out. (What it buys is measured,
//! not asserted: `zmesh bench --spin`, docs/PERFORMANCE.md.)

mod common;

use std::time::Duration;

use common::{TRANSPORTS, net, start_node};
use futures::StreamExt;
use zmesh::{CallError, CallOptions, Client, ClientConfig, NodeConfig};

const SPIN: Duration = Duration::from_micros(200);

async fn exercise(client: &Client) {
    for i in 0..200u32 {
        let back: String = net("a call", client.call("echo.upper", (format!("x{i}"),)))
            .await
            .expect("answers");
        assert_eq!(back, format!("X{i}"));
    }
    let calls = (0..64u32).map(|i| {
        let client = client.clone();
        async move { client.call::<u32>("echo.echo", (i,)).await }
    });
    let answers = net("64 concurrent calls", futures::future::join_all(calls)).await;
    for (i, answer) in answers.into_iter().enumerate() {
        assert_eq!(answer.expect("answers"), i as u32);
    }
    let stream = net(
        "a stream",
        client.call_stream::<u32>("echo.count", (50u32,)),
    )
    .await
    .expect("opens");
    let items: Vec<u32> = net("its items", stream.map(|i| i.expect("an item")).collect()).await;
    assert_eq!(items, (0..50).collect::<Vec<_>>());
}

async fn every_combination() {
    for transport in TRANSPORTS {
        for (node_spin, client_spin) in [(true, true), (true, false), (false, true)] {
            let mut config = NodeConfig::default();
            if node_spin {
                config = config.spin(SPIN);
            }
            let (node, _dir) = start_node(transport, config, vec![]).await;
            let mut client_config = ClientConfig::default();
            if client_spin {
                client_config = client_config.spin(SPIN);
            }
            let client = Client::with_config(node.endpoint(), client_config);
            exercise(&client).await;
            net("shutdown", node.shutdown(Duration::from_millis(100))).await;
        }
    }
}

#[tokio::test]
async fn calls_and_streams_answer_with_spinning_on_a_current_thread_runtime() {
    every_combination().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_streams_answer_with_spinning_on_a_multi_thread_runtime() {
    every_combination().await;
}

/// A spinning client's deadline still ends a call nobody answers (the spin gives up its
/// budget and the call waits for its timer as usual).
#[tokio::test]
async fn a_spinning_client_still_times_out() {
    let (node, _dir) = start_node(common::Transport::Tcp, NodeConfig::default(), vec![]).await;
    let client = Client::with_config(node.endpoint(), ClientConfig::default().spin(SPIN));
    let outcome = net(
        "a call past its deadline",
        client.call_with::<()>(
            "echo.sleep",
            (5_000u64,),
            CallOptions::timeout(Duration::from_millis(100)),
        ),
    )
    .await;
    assert!(
        matches!(outcome, Err(CallError::DeadlineExceeded(_))),
        "{outcome:?}"
    );
    net("shutdown", node.shutdown(Duration::from_millis(100))).await;
}
