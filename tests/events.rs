//! Events over real sockets: several publishers and subscribers with prefix filtering, node
//! handlers running concurrently, a gap forced by a stalled subscriber with its exact range,
//! late-joiner snapshots under concurrent publishing, publisher restart, and bad input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{TRANSPORTS, Transport, bind_endpoint, eventually, net, within};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};
use zmesh::{
    Client, Delivery, Gap, GapReason, Node, Publisher, Received, Subscriber, SubscriberConfig,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

/// A node with events (and its RPC endpoint for snapshots), on `transport`.
async fn events_node(transport: Transport, dir: &tempfile::TempDir, name: &str, lvc: bool) -> Node {
    let node = Node::builder()
        .name(name)
        .bind(bind_endpoint(transport, dir, &format!("{name}-rpc")))
        .events(bind_endpoint(transport, dir, &format!("{name}-pub")))
        .last_value_cache(lvc)
        .start();
    net("events node start", node).await.expect("node starts")
}

fn publisher(node: &Node) -> Publisher {
    node.publisher().expect("node has events").clone()
}

/// Reads the next item within the network timeout.
async fn next<T: serde::de::DeserializeOwned>(sub: &mut Subscriber<T>) -> Delivery<T> {
    net("next event", sub.next())
        .await
        .expect("a subscriber stream never ends")
}

async fn next_event<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    sub: &mut Subscriber<T>,
) -> Received<T> {
    match next(sub).await {
        Delivery::Event(event) => event,
        Delivery::Gap(gap) => panic!("unexpected gap {gap:?}"),
    }
}

/// Makes sure `sub`'s prefixes are live at `node`'s publisher (the snapshot call's marker).
async fn sync<T: serde::de::DeserializeOwned>(sub: &mut Subscriber<T>, node: &Node) {
    let client = Client::new(node.endpoint());
    net("snapshot sync", sub.snapshot(&client, "\u{0}nothing"))
        .await
        .expect("subscriber syncs with the publisher");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_publishers_and_subscribers_filter_by_prefix() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = events_node(transport, &dir, "a", false).await;
        let b = events_node(transport, &dir, "b", false).await;
        let endpoints = [a.events_endpoint(), b.events_endpoint()].map(|e| e.expect("events"));

        let mut orders = Subscriber::builder()
            .connect(endpoints[0])
            .connect(endpoints[1])
            .subscribe("orders.")
            .start::<Order>()
            .await
            .expect("subscriber starts");
        let mut mixed = Subscriber::builder()
            .connect(endpoints[0])
            .connect(endpoints[1])
            .subscribe("users.")
            .subscribe("orders.created")
            .start::<Order>()
            .await
            .expect("subscriber starts");
        for node in [&a, &b] {
            sync(&mut orders, node).await;
            sync(&mut mixed, node).await;
        }

        let order = |id| Order {
            id,
            item: "book".into(),
        };
        let plan = [
            (&a, "orders.created", 3),
            (&a, "orders.cancelled", 2),
            (&a, "users.joined", 2),
            (&b, "orders.created", 2),
            (&b, "users.left", 1),
            (&b, "audit.log", 2),
        ];
        for (node, topic, n) in plan {
            for id in 1..=n {
                let seq = publisher(node)
                    .publish(topic, &order(id))
                    .await
                    .expect("publishes");
                assert_eq!(seq, u64::from(id));
            }
        }
        // End markers: per connection order is kept, so once both arrive, all did.
        for node in [&a, &b] {
            let p = publisher(node);
            p.publish("orders.end", &order(0)).await.expect("publishes");
            p.publish("users.end", &order(0)).await.expect("publishes");
        }

        async fn collect(
            sub: &mut Subscriber<Order>,
            end: &str,
        ) -> BTreeSet<(String, u32, String)> {
            let mut seen = BTreeSet::new();
            let mut ends = 0;
            while ends < 2 {
                let event = next_event(sub).await;
                assert_eq!(event.seq, Some(u64::from(event.payload.id).max(1)));
                let publisher = event.publisher.expect("zmesh events carry their publisher");
                if event.topic == end {
                    ends += 1;
                } else {
                    assert!(
                        seen.insert((event.topic, event.payload.id, publisher.to_string())),
                        "duplicate"
                    );
                }
            }
            seen
        }
        let (pa, pb) = (publisher(&a).id().to_owned(), publisher(&b).id().to_owned());
        let want = |items: &[(&str, u32, &str)]| {
            items
                .iter()
                .flat_map(|(topic, n, p)| {
                    (1..=*n).map(move |id| (topic.to_string(), id, p.to_string()))
                })
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            collect(&mut orders, "orders.end").await,
            want(&[
                ("orders.created", 3, &pa),
                ("orders.cancelled", 2, &pa),
                ("orders.created", 2, &pb),
            ])
        );
        assert_eq!(
            collect(&mut mixed, "users.end").await,
            want(&[
                ("orders.created", 3, &pa),
                ("users.joined", 2, &pa),
                ("orders.created", 2, &pb),
                ("users.left", 1, &pb),
            ])
        );
        for sub in [orders.stats(), mixed.stats()] {
            assert_eq!(
                (sub.gaps, sub.lost, sub.undecodable, sub.dropped),
                (0, 0, 0, 0)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_handlers_run_concurrently_and_count_bad_payloads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = events_node(Transport::Tcp, &dir, "source", false).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, u32)>(64);
    // Both events must be in their handlers at the same time for either to finish.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let warmups = Arc::new(AtomicUsize::new(0));
    let gaps = Arc::new(AtomicUsize::new(0));
    let sink = Node::builder()
        .name("sink")
        .bind("tcp://127.0.0.1:0")
        .subscribe(source.events_endpoint().expect("events"))
        .on_event("orders.", {
            let tx = tx.clone();
            let barrier = barrier.clone();
            move |event: Received<Order>| {
                let tx = tx.clone();
                let barrier = barrier.clone();
                async move {
                    barrier.wait().await;
                    let _ = tx.send((event.topic, event.payload.id)).await;
                }
            }
        })
        .on_event("warmup", {
            let warmups = warmups.clone();
            move |_: Received<u32>| {
                warmups.fetch_add(1, Ordering::SeqCst);
                async {}
            }
        })
        .on_gap({
            let gaps = gaps.clone();
            move |_: &Gap| {
                gaps.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start();
    let sink = net("sink start", sink).await.expect("sink starts");
    let p = publisher(&source);
    // Until the subscription is live at the publisher, events are not sent to it.
    within(
        Duration::from_secs(10),
        "first warm-up event handled",
        async {
            for i in 0u32.. {
                p.publish("warmup", &i).await.expect("publishes");
                if warmups.load(Ordering::SeqCst) > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;

    let order = |id| Order {
        id,
        item: "pen".into(),
    };
    p.publish("orders.a", &order(1)).await.expect("publishes");
    p.publish("orders.b", &order(2)).await.expect("publishes");
    let mut got = vec![
        net("handler 1", rx.recv()).await.expect("handled"),
        net("handler 2", rx.recv()).await.expect("handled"),
    ];
    got.sort();
    assert_eq!(got, [("orders.a".into(), 1), ("orders.b".into(), 2)]);

    // A payload that is not an Order is counted and logged; the handlers go on.
    p.publish("orders.bad", &"not an order")
        .await
        .expect("publishes");
    p.publish("orders.c", &order(3)).await.expect("publishes");
    p.publish("orders.d", &order(4)).await.expect("publishes");
    let mut got = vec![
        net("handler 3", rx.recv()).await.expect("handled"),
        net("handler 4", rx.recv()).await.expect("handled"),
    ];
    got.sort();
    assert_eq!(got, [("orders.c".into(), 3), ("orders.d".into(), 4)]);
    eventually(Duration::from_secs(5), "undecodable counted", || {
        sink.event_stats().is_some_and(|s| s.undecodable == 1)
    })
    .await;
    let stats = sink.event_stats().expect("sink has a subscriber");
    assert_eq!((stats.gaps, stats.lost), (0, 0));
    assert_eq!(gaps.load(Ordering::SeqCst), 0);
    net("sink shutdown", sink.shutdown(Duration::from_secs(1))).await;
    net("source shutdown", source.shutdown(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_gets_the_exact_gap_and_blocks_no_one() {
    const QUEUE: usize = 64;
    const BURST: u64 = 1000;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = events_node(Transport::Tcp, &dir, "pub", false).await;
    let endpoint = node.events_endpoint().expect("events").to_owned();
    let mut stalled = Subscriber::builder()
        .connect(&endpoint)
        .subscribe("t")
        .config(SubscriberConfig::default().queue(QUEUE))
        .start::<u64>()
        .await
        .expect("subscriber starts");
    let mut healthy = Subscriber::builder()
        .connect(&endpoint)
        .subscribe("t")
        .start::<u64>()
        .await
        .expect("subscriber starts");
    sync(&mut stalled, &node).await;
    sync(&mut healthy, &node).await;

    let p = publisher(&node);
    // The stalled subscriber reads nothing while the burst goes out; publishing never waits.
    within(Duration::from_secs(30), "publishing the burst", async {
        for i in 1..=BURST {
            assert_eq!(p.publish("t", &i).await.expect("publishes"), i);
        }
    })
    .await;
    // The healthy subscriber gets all of it, in order, while the other one is stalled.
    for i in 1..=BURST {
        let event = next_event(&mut healthy).await;
        assert_eq!((event.seq, event.payload), (Some(i), i));
    }
    let dropped = BURST - QUEUE as u64;
    eventually(
        Duration::from_secs(10),
        "stalled subscriber's drops",
        || stalled.stats().dropped == dropped,
    )
    .await;

    // Now it reads: what fitted in its queue, then (at the next event) the exact gap.
    for i in 1..=QUEUE as u64 {
        let event = next_event(&mut stalled).await;
        assert_eq!((event.seq, event.payload), (Some(i), i));
    }
    p.publish("t", &(BURST + 1)).await.expect("publishes");
    match next(&mut stalled).await {
        Delivery::Gap(gap) => {
            assert_eq!(gap.topic, "t");
            assert_eq!(&*gap.publisher, p.id());
            assert_eq!((gap.first, gap.last), (QUEUE as u64 + 1, Some(BURST)));
            assert_eq!(gap.reason, GapReason::Missed);
            assert_eq!(gap.missing(), Some(dropped));
        }
        other => panic!("expected the gap report, got {other:?}"),
    }
    let event = next_event(&mut stalled).await;
    assert_eq!(event.seq, Some(BURST + 1));
    let stats = stalled.stats();
    assert_eq!(
        (stats.gaps, stats.lost, stats.dropped),
        (1, dropped, dropped)
    );
    let event = next_event(&mut healthy).await;
    assert_eq!(event.seq, Some(BURST + 1));
    assert_eq!(healthy.stats().gaps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_snapshot_is_consistent_under_concurrent_publishing() {
    const TOPICS: u64 = 8;
    /// Published before the late joiner starts.
    const BEFORE: u64 = 500;
    /// Published once the late joiner has its snapshot, before the writer stops: so it
    /// joins while publishing however fast the writer is (a fixed count could be all
    /// published before the subscriber is up).
    const AFTER_SNAPSHOT: u64 = 500;
    /// A bound on the writer, whatever happens.
    const MAX_EVENTS: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = events_node(Transport::Tcp, &dir, "state", true).await;
    let p = publisher(&node);
    let snapshot_taken = Arc::new(AtomicBool::new(false));
    // The publisher runs concurrently with the late joiner's start, snapshot and reads.
    let writer = tokio::spawn({
        let p = p.clone();
        let snapshot_taken = Arc::clone(&snapshot_taken);
        async move {
            let mut last = BTreeMap::new();
            let mut after = 0;
            let mut published = 0;
            while published < MAX_EVENTS && after < AFTER_SNAPSHOT {
                let i = published;
                let topic = format!("state.{}", i % TOPICS);
                p.publish(&topic, &i).await.expect("publishes");
                last.insert(topic, i);
                published += 1;
                if snapshot_taken.load(Ordering::Acquire) {
                    after += 1;
                }
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (last, published)
        }
    });
    eventually(Duration::from_secs(10), "publishing under way", || {
        p.stats().published >= BEFORE
    })
    .await;

    let mut sub = Subscriber::builder()
        .connect(node.events_endpoint().expect("events"))
        .subscribe("state.")
        .start::<u64>()
        .await
        .expect("subscriber starts");
    let client = Client::new(node.endpoint());
    let snapshot = net("snapshot", sub.snapshot(&client, "state."))
        .await
        .expect("snapshot");
    snapshot_taken.store(true, Ordering::Release);
    assert_eq!(&*snapshot.publisher, p.id());
    // topic -> (seq, value): the snapshot, then live events strictly after it.
    let mut state: BTreeMap<String, (u64, u64)> = snapshot
        .entries
        .iter()
        .map(|e| (e.topic.clone(), (e.seq, e.value.expect("cached value"))))
        .collect();
    let (last, published) = net("writer", writer).await.expect("writer finished");
    let finals: BTreeMap<String, u64> = p.sequences("state.").await.into_iter().collect();
    let mut applied = 0u64;
    while state
        .iter()
        .map(|(t, (s, _))| (t.clone(), *s))
        .collect::<BTreeMap<_, _>>()
        != finals
    {
        match next(&mut sub).await {
            Delivery::Event(event) => {
                let seq = event.seq.expect("numbered");
                let entry = state.entry(event.topic.clone()).or_insert((0, 0));
                assert_eq!(
                    seq,
                    entry.0 + 1,
                    "no gap and no duplicate on {}",
                    event.topic
                );
                *entry = (seq, event.payload);
                applied += 1;
            }
            Delivery::Gap(gap) => panic!("a late joiner with a snapshot sees no gap: {gap:?}"),
        }
    }
    let values: BTreeMap<String, u64> = state.into_iter().map(|(t, (_, v))| (t, v)).collect();
    assert_eq!(values, last, "final state equals the publisher's");
    let stats = sub.stats();
    assert_eq!((stats.gaps, stats.lost, stats.duplicates), (0, 0, 0));
    assert!(
        applied >= AFTER_SNAPSHOT && applied < published,
        "joined while publishing ({applied} of {published} applied)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_restart_is_reported_and_the_subscriber_reconnects() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = events_node(transport, &dir, "p", false).await;
        let endpoint = first.events_endpoint().expect("events").to_owned();
        let mut sub = Subscriber::builder()
            .connect(&endpoint)
            .subscribe("t")
            .start::<u64>()
            .await
            .expect("subscriber starts");
        sync(&mut sub, &first).await;
        let old = publisher(&first);
        for i in 1..=5u64 {
            old.publish("t", &i).await.expect("publishes");
        }
        for i in 1..=5u64 {
            assert_eq!(next_event(&mut sub).await.seq, Some(i));
        }
        let old_id = old.id().to_owned();
        drop(old);
        net("first shutdown", first.shutdown(Duration::from_secs(1))).await;

        // The same endpoint, a new publisher (new id, numbering from 1).
        let second = Node::builder()
            .bind(bind_endpoint(transport, &dir, "p2-rpc"))
            .events(endpoint.clone())
            .start();
        let second = net("second start", second)
            .await
            .expect("rebinds the endpoint");
        let new = publisher(&second);
        assert_ne!(new.id(), old_id);
        // Publish until the reconnected subscriber hears from it.
        let mut published = 0u64;
        let first_item = within(Duration::from_secs(15), "reconnect", async {
            loop {
                published = new.publish("t", &100).await.expect("publishes");
                tokio::select! {
                    item = sub.next() => return item.expect("stream never ends"),
                    () = tokio::time::sleep(Duration::from_millis(25)) => {}
                }
            }
        })
        .await;
        let Delivery::Gap(restart) = first_item else {
            panic!("expected the restart report first, got {first_item:?}");
        };
        assert_eq!(
            (&*restart.publisher, restart.topic.as_str()),
            (old_id.as_str(), "t")
        );
        assert_eq!((restart.first, restart.last), (6, None));
        assert_eq!(
            restart.reason,
            GapReason::PublisherRestarted {
                successor: Arc::from(new.id())
            }
        );
        // Events of the new publisher before the reconnect are reported, then delivered on.
        let mut expected = 1;
        let event = loop {
            match next(&mut sub).await {
                Delivery::Gap(gap) => {
                    assert_eq!(&*gap.publisher, new.id());
                    assert_eq!(gap.first, expected);
                    expected = gap.last.expect("known range") + 1;
                }
                Delivery::Event(event) => break event,
            }
        };
        assert_eq!(event.seq, Some(expected));
        assert_eq!(event.publisher.as_deref(), Some(new.id()));
        assert!(expected <= published);
        let stats = sub.stats();
        assert!(stats.reconnects >= 1, "{stats:?}");
        assert_eq!(stats.publisher_restarts, 1);
        net("second shutdown", second.shutdown(Duration::from_secs(1))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_counted_and_the_stream_goes_on() {
    let mut raw = PubSocket::new();
    let endpoint = net("raw bind", raw.bind("tcp://127.0.0.1:0"))
        .await
        .expect("binds")
        .to_string();
    let mut sub = Subscriber::builder()
        .connect(&endpoint)
        .subscribe("")
        .start::<u32>()
        .await
        .expect("subscriber starts");

    /// A valid zmesh-framed event built by hand (header, name, [payload]).
    fn event(topic: &str, seq: u64, payload: impl Serialize) -> ZmqMessage {
        let header = BTreeMap::from([
            (
                "message_id",
                rmpv::Value::Binary(format!("id{seq}").into_bytes()),
            ),
            ("v", rmpv::Value::from(3)),
            ("zmesh_pub", rmpv::Value::from("raw")),
            ("zmesh_seq", rmpv::Value::from(seq)),
        ]);
        let body = rmp_serde::to_vec(&(header, topic, (payload,))).expect("encodes");
        let mut message = ZmqMessage::from(Bytes::copy_from_slice(topic.as_bytes()));
        message.push_back(Bytes::from(body));
        message
    }

    // Warm up until the subscription is live (events before that are not sent to it).
    let mut seq = 0;
    within(Duration::from_secs(10), "warm-up", async {
        loop {
            seq += 1;
            raw.send(event("warm", seq, 0u32)).await.expect("sends");
            tokio::select! {
                item = sub.next() => { item.expect("stream"); break; }
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    })
    .await;
    let before = sub.stats();

    let garbage: Vec<ZmqMessage> = vec![
        ZmqMessage::from(Bytes::from_static(b"\xc1 not msgpack")),
        {
            let mut m = ZmqMessage::from(Bytes::from_static(b"t"));
            m.push_back(Bytes::from_static(&[0x93, 0x80]));
            m
        },
        {
            let mut m = ZmqMessage::from(Bytes::from_static(b"t"));
            m.push_back(Bytes::from_static(b"a"));
            m.push_back(Bytes::from_static(b"b"));
            m
        },
        {
            let mut m = ZmqMessage::from(Bytes::from_static(b"\xff\xfe"));
            m.push_back(event("x", 1, 1u32).into_vec().pop().expect("frame"));
            m
        },
        // Valid framing, but the payload is not a u32.
        event("typed", 1, "text"),
    ];
    for message in garbage {
        raw.send(message).await.expect("sends");
    }
    raw.send(event("typed", 2, 7u32)).await.expect("sends");
    let event = loop {
        match next(&mut sub).await {
            Delivery::Event(e) if e.topic == "warm" => continue,
            Delivery::Event(e) => break e,
            Delivery::Gap(gap) => panic!("unexpected gap {gap:?}"),
        }
    };
    assert_eq!(
        (event.topic.as_str(), event.seq, event.payload),
        ("typed", Some(2), 7)
    );
    let stats = sub.stats();
    assert_eq!(stats.undecodable - before.undecodable, 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_topics_and_closed_publishers_are_errors() {
    let p = Publisher::bind("tcp://127.0.0.1:0").await.expect("binds");
    assert!(matches!(
        p.publish("_zmesh.sync.x", &1).await,
        Err(zmesh::PublishError::ReservedTopic(_))
    ));
    assert_eq!(p.publish("t", &1).await.expect("publishes"), 1);
    p.close().await;
    assert!(matches!(
        p.publish("t", &2).await,
        Err(zmesh::PublishError::Closed)
    ));
    let err = Subscriber::builder()
        .connect("inproc://x")
        .subscribe("")
        .start::<u32>()
        .await
        .expect_err("inproc is not supported");
    assert!(matches!(
        err,
        zmesh::EventsError::InvalidEndpoint {
            source: zmesh::EndpointError::UnsupportedScheme(_),
            ..
        }
    ));
    let err = Publisher::bind("127.0.0.1:4250")
        .await
        .expect_err("no scheme");
    assert!(
        matches!(
            &err,
            zmesh::EventsError::InvalidEndpoint {
                endpoint,
                source: zmesh::EndpointError::NoScheme,
            } if endpoint == "127.0.0.1:4250"
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_waits_for_its_subscribers_before_the_first_event() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = events_node(transport, &dir, "waits", false).await;
        let publisher = publisher(&node);
        let endpoint = node.events_endpoint().expect("events");

        // Nobody subscribed yet: the wait says how many came.
        let err = publisher
            .wait_for_subscribers("orders.created", 1, Duration::from_millis(50))
            .await
            .expect_err("no subscriber");
        assert_eq!(
            err,
            zmesh::WaitError::TimedOut {
                waited_for: "subscribers to \"orders.created\"".into(),
                wanted: 1,
                seen: 0
            }
        );

        let mut other = Subscriber::builder()
            .connect(endpoint)
            .subscribe("stock.")
            .start::<Order>()
            .await
            .expect("subscriber starts");
        let mut orders = Subscriber::builder()
            .connect(endpoint)
            .subscribe("orders.")
            .start::<Order>()
            .await
            .expect("subscriber starts");
        let seen = net(
            "subscription arrives",
            publisher.wait_for_subscribers("orders.created", 1, Duration::from_secs(10)),
        )
        .await
        .expect("the subscription arrives");
        // The stock subscriber does not count for orders.
        assert_eq!(seen, 1);

        // Published at once after the wait, the first event is not lost.
        let order = Order {
            id: 1,
            item: "book".into(),
        };
        assert_eq!(
            publisher
                .publish("orders.created", &order)
                .await
                .expect("publish"),
            1
        );
        let event = next_event(&mut orders).await;
        assert_eq!((event.seq, event.payload), (Some(1), order));
        sync(&mut other, &node).await;

        publisher.close().await;
        assert_eq!(
            publisher
                .wait_for_subscribers("orders.created", 1, Duration::from_secs(1))
                .await,
            Err(zmesh::WaitError::Closed)
        );
    }
}
