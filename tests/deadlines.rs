//! Call deadlines enforced by the client connection's single timer: a call whose deadline
//! is earlier than every other open call's re-arms it, and expiring some calls leaves the
//! others' deadlines intact.

mod common;

use std::time::Duration;

use common::{TRANSPORTS, net, start_node};
use futures::future::{Either, select};
use zmesh::{CallError, CallOptions, Client, NodeConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_deadline_behind_a_later_one_fires_first() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        // Connect first, so both calls below share one connection and its timer.
        let _: u64 = net("warm-up", client.call("echo.sleep", (1u64,)))
            .await
            .expect("warm-up call");

        let long = client.call_with::<u64>(
            "echo.sleep",
            (2_000u64,),
            CallOptions::timeout(Duration::from_secs(30)),
        );
        let mut long = Box::pin(long);
        // Give the long call a chance to register (and arm the timer for 30 s) first.
        let polled = futures::poll!(long.as_mut());
        assert!(polled.is_pending(), "a 2 s sleep is not done at once");
        let short = client.call_with::<u64>(
            "echo.sleep",
            (2_000u64,),
            CallOptions::timeout(Duration::from_millis(100)),
        );
        let short = Box::pin(short);
        let long = match net("one of the calls ends", select(short, long)).await {
            Either::Left((short, long)) => {
                let err = short.expect_err("the short deadline passes");
                assert!(matches!(err, CallError::DeadlineExceeded(_)), "{err:?}");
                long
            }
            Either::Right((long, _)) => panic!("the long call ended first: {long:?}"),
        };
        let value = net("the long call", long).await.expect("long call in time");
        assert_eq!(value, 2_000);
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_some_calls_keeps_the_others_deadlines() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        let client = Client::new(node.endpoint());
        let calls = (0..20u64).map(|i| {
            let client = client.clone();
            async move {
                let timeout = if i % 2 == 0 {
                    Duration::from_millis(50)
                } else {
                    Duration::from_secs(10)
                };
                let result = client
                    .call_with::<u64>("echo.sleep", (300u64,), CallOptions::timeout(timeout))
                    .await;
                (i, result)
            }
        });
        let results = net("all calls end", futures::future::join_all(calls)).await;
        for (i, result) in results {
            if i % 2 == 0 {
                let err = result.expect_err("a 50 ms deadline passes during a 300 ms sleep");
                assert!(
                    matches!(err, CallError::DeadlineExceeded(_)),
                    "{i}: {err:?}"
                );
            } else {
                assert_eq!(result.expect("a 10 s deadline holds"), 300, "call {i}");
            }
        }
        // The connection is still healthy after the expiries.
        let value: u64 = net("after", client.call("echo.sleep", (1u64,)))
            .await
            .expect("call after the expiries");
        assert_eq!(value, 1);
        node.shutdown(Duration::from_secs(1)).await;
    }
}
