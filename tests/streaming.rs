//! Server streaming over real sockets: order, errors mid-stream, credit-based backpressure
//! that keeps a slow consumer's memory bounded, and cancellation on drop.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{NET_TIMEOUT, TRANSPORTS, Transport, eventually, net, start_node};
use futures::StreamExt;
use tokio::sync::Notify;
use zmesh::{CallError, Client, ClientConfig, HandlerError, NodeConfig, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_arrive_complete_and_in_order() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![]).await;
        // A small window forces hundreds of credit grants.
        let client =
            Client::with_config(node.endpoint(), ClientConfig::default().stream_window(16));
        let stream = net("open", client.call_stream::<u64>("echo.count", (10_000,)))
            .await
            .expect("stream");
        let items: Vec<u64> = net("items", stream.map(|i| i.expect("item")).collect()).await;
        assert_eq!(items, (0..10_000).collect::<Vec<_>>(), "{transport:?}");

        let empty = net("open empty", client.call_stream::<u64>("echo.count", (0,)))
            .await
            .expect("stream");
        assert_eq!(net("empty", empty.collect::<Vec<_>>()).await.len(), 0);
        assert_eq!(node.stats().in_flight, 0);
    }
}

fn faulty() -> Service {
    Service::new("faulty")
        .stream("three_then_fail", || async {
            let items = (0..4u64).map(|i| {
                if i < 3 {
                    Ok(i)
                } else {
                    Err(HandlerError::new("ValueError", "ran out"))
                }
            });
            Ok(futures::stream::iter(items))
        })
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_mid_stream_ends_it_with_the_remote_error() {
    for transport in TRANSPORTS {
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![faulty()]).await;
        let client = Client::new(node.endpoint());
        let stream = net(
            "open",
            client.call_stream::<u64>("faulty.three_then_fail", ()),
        )
        .await
        .expect("stream");
        let items: Vec<Result<u64, CallError>> = net("items", stream.collect()).await;
        assert_eq!(items.len(), 4, "{transport:?}");
        for (i, item) in items.iter().take(3).enumerate() {
            assert_eq!(*item.as_ref().expect("item"), i as u64);
        }
        let remote = items[3]
            .as_ref()
            .expect_err("error")
            .remote()
            .expect("remote")
            .clone();
        assert_eq!(
            (remote.name.as_str(), remote.message.as_str()),
            ("ValueError", "ran out")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape_mismatches_are_reported_not_hung() {
    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), vec![]).await;
    let client = Client::new(node.endpoint());
    let err = net("call a stream", client.call::<u64>("echo.count", (3,)))
        .await
        .expect_err("stream");
    assert!(matches!(err, CallError::Protocol(_)), "{err:?}");
    let err = net(
        "stream a value",
        client.call_stream::<u64>("echo.echo", (3,)),
    )
    .await
    .expect_err("value");
    assert!(matches!(err, CallError::Protocol(_)), "{err:?}");
    // Neither left a call running on the node.
    eventually(NET_TIMEOUT, "channels closed", || {
        node.stats().in_flight == 0
    })
    .await;
}

/// A stream that counts how many items it has produced and reports when it is dropped.
fn metered(produced: Arc<AtomicU64>, dropped: Arc<Notify>) -> Service {
    struct OnDrop(Arc<Notify>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    Service::new("metered")
        .stream("items", move |n: u64, size: usize| {
            let (produced, dropped) = (produced.clone(), dropped.clone());
            async move {
                let guard = OnDrop(dropped);
                let items = futures::stream::iter(0..n).map(move |_| {
                    let _keep = &guard;
                    produced.fetch_add(1, Ordering::SeqCst);
                    Ok(rmpv::Value::Binary(vec![0xab; size]))
                });
                Ok(items)
            }
        })
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_applies_backpressure_and_memory_stays_bounded() {
    const WINDOW: u64 = 10;
    for transport in TRANSPORTS {
        let (produced, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
        let service = metered(produced.clone(), dropped.clone());
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![service]).await;
        let client = Client::with_config(
            node.endpoint(),
            ClientConfig::default().stream_window(WINDOW),
        );
        // 64 KiB items: without credit the server would push all 2,000 (125 MiB) at once.
        let mut stream = net(
            "open",
            client.call_stream::<rmpv::Value>("metered.items", (2_000, 65_536)),
        )
        .await
        .expect("stream");
        let mut consumed = 0u64;
        while consumed < 25 {
            net("item", stream.next())
                .await
                .expect("more")
                .expect("item");
            consumed += 1;
        }
        // The consumer stalls. Give the server ample time to overrun if it ignored credit
        // (a bounded wait: we are checking that something does NOT happen).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ahead = produced.load(Ordering::SeqCst) - consumed;
        assert!(
            ahead <= WINDOW + 1,
            "{transport:?}: server produced {ahead} items ahead of a stalled consumer"
        );

        // Reading slowly to the end, the server never gets more than a window ahead.
        while let Some(item) = net("item", stream.next()).await {
            item.expect("item");
            consumed += 1;
            let ahead = produced.load(Ordering::SeqCst) - consumed;
            assert!(ahead <= WINDOW + 1, "{transport:?}: {ahead} items ahead");
            if consumed.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert_eq!(consumed, 2_000);
        net("producer dropped at the end", dropped.notified()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_cancels_the_producer() {
    for transport in TRANSPORTS {
        let (produced, dropped) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
        let service = metered(produced.clone(), dropped.clone());
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![service]).await;
        let client = Client::new(node.endpoint());
        let _: String = net("warm up", client.call("echo.upper", ("x",)))
            .await
            .expect("ok");
        let mut stream = net(
            "open",
            client.call_stream::<rmpv::Value>("metered.items", (1_000_000, 8)),
        )
        .await
        .expect("stream");
        for _ in 0..10 {
            net("item", stream.next())
                .await
                .expect("more")
                .expect("item");
        }
        drop(stream);
        net("producer dropped after cancel", dropped.notified()).await;
        eventually(NET_TIMEOUT, "channel closed", || {
            node.stats().in_flight == 0
        })
        .await;
        assert!(produced.load(Ordering::SeqCst) < 1_000_000);
    }
}

/// A server's `ERR DeadlineExceeded` in the middle of a stream is the same error as on a
/// plain call, `CallError::DeadlineExceeded`, not a remote error (a raw ROUTER plays the
/// server: zmesh's node never sends that mid-stream itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_error_mid_stream_is_deadline_exceeded() {
    use bytes::Bytes;
    use zeromq::{RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
    use zmesh::wire::{self, Header, names};

    let mut server = RouterSocket::new();
    let endpoint = net("bind", server.bind("tcp://127.0.0.1:0"))
        .await
        .expect("binds")
        .to_string();
    let client = Client::new(endpoint.as_str());
    let stream = tokio::spawn({
        let client = client.clone();
        async move {
            let stream = client.call_stream::<u64>("slow.count", (3u64,)).await?;
            Ok::<_, CallError>(stream.collect::<Vec<_>>().await)
        }
    });
    // The request: [identity, "", event]; answer one item, then the deadline error.
    let request = loop {
        let message = net("the request", server.recv()).await.expect("received");
        let frames = message.into_vec();
        let event = wire::decode_event(frames.last().expect("frames")).expect("an event");
        if event.name == "slow.count" {
            break (frames[0].clone(), event.header.message_id);
        }
    };
    let (identity, id) = request;
    let reply = |name: &str, args: Vec<u8>| {
        let event = wire::encode_event(&Header::zmesh(Some(id.clone())), name, &args);
        ZmqMessage::try_from(vec![identity.clone(), Bytes::new(), event]).expect("frames")
    };
    let item = rmp_serde::to_vec(&7u64).expect("encodes");
    net("the item", server.send(reply(names::STREAM, item)))
        .await
        .expect("sent");
    let err = wire::err_args("DeadlineExceeded", "the call's deadline passed", None);
    net("the error", server.send(reply(names::ERR, err.to_vec())))
        .await
        .expect("sent");
    let results = net("the stream ends", stream)
        .await
        .expect("joins")
        .expect("the stream opens");
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].as_ref().expect("the item"), &7);
    assert!(
        matches!(results[1], Err(CallError::DeadlineExceeded(_))),
        "{:?}",
        results[1]
    );
}
