//! The kv service over real sockets: a node on loopback tcp publishing through its own
//! publisher; calls, typed errors and bounds, and the change events a subscriber receives.

use std::time::Duration;

use rmpv::Value;
use tokio::time::timeout;
use zmesh_core::{CallError, Client, Delivery, Node, Publisher, Subscriber};
use zmesh_kv::{Change, KvConfig};

const LIMIT: Duration = Duration::from_secs(10);

struct Fixture {
    node: Node,
    client: Client,
    events: Subscriber<Change>,
}

async fn start(config: KvConfig) -> Fixture {
    let publisher = Publisher::builder()
        .bind("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("publisher binds");
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .publisher(publisher.clone())
        .service(zmesh_kv::service(config, Some(publisher.clone())))
        .start()
        .await
        .expect("node starts");
    let client = Client::new(node.endpoint());
    let mut events = Subscriber::builder()
        .connect(publisher.endpoint())
        .subscribe(zmesh_kv::TOPIC_PREFIX)
        .start::<Change>()
        .await
        .expect("subscriber connects");
    // The snapshot's marker proves the subscription is live at the publisher: no event
    // published from here on can be lost to the slow-joiner window.
    let snapshot = timeout(LIMIT, events.snapshot(&client, zmesh_kv::TOPIC_PREFIX))
        .await
        .expect("snapshot in time")
        .expect("snapshot");
    assert!(snapshot.entries.is_empty());
    Fixture {
        node,
        client,
        events,
    }
}

async fn next_change(events: &mut Subscriber<Change>) -> (String, Change) {
    match timeout(LIMIT, events.recv())
        .await
        .expect("an event in time")
    {
        Some(Delivery::Event(event)) => (event.topic, event.payload),
        other => panic!("expected an event, got {other:?}"),
    }
}

async fn remote_error<T: std::fmt::Debug + serde::de::DeserializeOwned>(
    client: &Client,
    method: &str,
    args: impl serde::Serialize,
) -> (String, String) {
    match client.call::<T>(method, args).await {
        Err(CallError::Remote(e)) => (e.name, e.message),
        other => panic!("{method}: expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn calls_change_the_store_and_publish_in_order() {
    let Fixture {
        node,
        client,
        mut events,
    } = start(KvConfig::default()).await;

    let r1: u64 = client.call("kv.put", ("a", 1)).await.expect("put a");
    let r2: u64 = client
        .call("kv.put", ("b", vec!["x", "y"]))
        .await
        .expect("put b");
    let r3: u64 = client.call("kv.put", ("a", "one")).await.expect("put a");
    assert_eq!((r1, r2, r3), (1, 2, 3));
    let a: Value = client.call("kv.get", ("a",)).await.expect("get");
    assert_eq!(a, Value::from("one"));
    let missing: Value = client.call("kv.get", ("zzz",)).await.expect("get");
    assert_eq!(missing, Value::Nil);
    let all: Vec<(String, Value)> = client.call("kv.scan", ("", 10)).await.expect("scan");
    assert_eq!(
        all,
        vec![
            ("a".to_owned(), Value::from("one")),
            (
                "b".to_owned(),
                Value::Array(vec![Value::from("x"), Value::from("y")])
            ),
        ]
    );
    let limited: Vec<(String, Value)> = client.call("kv.scan", ("", 1)).await.expect("scan");
    assert_eq!(limited.len(), 1);
    let prefixed: Vec<(String, Value)> = client.call("kv.scan", ("b", 10)).await.expect("scan");
    assert_eq!(prefixed.len(), 1);
    assert!(
        client
            .call::<bool>("kv.delete", ("a",))
            .await
            .expect("delete")
    );
    assert!(
        !client
            .call::<bool>("kv.delete", ("a",))
            .await
            .expect("delete")
    );
    let r5: u64 = client.call("kv.put", ("c", true)).await.expect("put c");
    assert_eq!(r5, 5, "a delete of a missing key changes nothing");

    let expected = [
        ("a", "put", Value::from(1), 1),
        (
            "b",
            "put",
            Value::Array(vec![Value::from("x"), Value::from("y")]),
            2,
        ),
        ("a", "put", Value::from("one"), 3),
        ("a", "delete", Value::Nil, 4),
        ("c", "put", Value::from(true), 5),
    ];
    for (key, op, value, revision) in expected {
        let (topic, change) = next_change(&mut events).await;
        assert_eq!(topic, format!("kv.changed.{key}"));
        assert_eq!(
            change,
            Change {
                key: key.to_owned(),
                op: op.to_owned(),
                value,
                revision
            }
        );
    }
    assert_eq!(events.stats().gaps, 0);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bounds_give_typed_errors_and_change_nothing() {
    let config = KvConfig::default()
        .max_key_bytes(8)
        .max_value_bytes(16)
        .max_keys(2)
        .max_scan(5);
    let Fixture {
        node,
        client,
        mut events,
    } = start(config).await;

    let (name, message) = remote_error::<u64>(&client, "kv.put", ("", 1)).await;
    assert_eq!(
        (name.as_str(), message.as_str()),
        ("InvalidKey", "key must not be empty")
    );
    let (name, message) = remote_error::<Value>(&client, "kv.get", ("123456789",)).await;
    assert_eq!(name, "InvalidKey");
    assert_eq!(
        message,
        "key of 9 bytes is longer than the limit of 8 bytes"
    );
    let (name, message) = remote_error::<u64>(&client, "kv.put", ("k", "x".repeat(20))).await;
    assert_eq!(name, "ValueTooLarge");
    assert_eq!(
        message,
        "value of 21 bytes is larger than the limit of 16 bytes"
    );

    client.call::<u64>("kv.put", ("k1", 1)).await.expect("fits");
    client.call::<u64>("kv.put", ("k2", 2)).await.expect("fits");
    // Replacing a key needs no new slot.
    client.call::<u64>("kv.put", ("k2", 3)).await.expect("fits");
    let (name, message) = remote_error::<u64>(&client, "kv.put", ("k3", 3)).await;
    assert_eq!(name, "StoreFull");
    assert!(message.starts_with("store is full (2 keys"), "{message}");

    for limit in [0, 6] {
        let (name, message) =
            remote_error::<Vec<(String, Value)>>(&client, "kv.scan", ("", limit)).await;
        assert_eq!(name, "InvalidLimit");
        assert_eq!(message, format!("scan limit {limit} is out of range 1..=5"));
    }
    // Wrong shapes are the node's precise TypeError.
    let (name, _) = remote_error::<u64>(&client, "kv.put", ("only-key",)).await;
    assert_eq!(name, "TypeError");
    let (name, _) = remote_error::<u64>(&client, "kv.get", (42,)).await;
    assert_eq!(name, "TypeError");

    // Refused calls published nothing: the next events are the three accepted puts.
    for (key, revision) in [("k1", 1), ("k2", 2), ("k2", 3)] {
        let (_, change) = next_change(&mut events).await;
        assert_eq!((change.key.as_str(), change.revision), (key, revision));
    }
    let stored: Vec<(String, Value)> = client.call("kv.scan", ("k", 5)).await.expect("scan");
    assert_eq!(stored.len(), 2);
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn reads_are_idempotent_writes_are_not_and_events_are_optional() {
    let svc = zmesh_kv::service(KvConfig::default(), None);
    assert!(svc.is_idempotent("get") && svc.is_idempotent("scan"));
    assert!(!svc.is_idempotent("put") && !svc.is_idempotent("delete"));

    // Without a publisher the store works the same.
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(svc)
        .start()
        .await
        .expect("node starts");
    let client = Client::new(node.endpoint());
    client.call::<u64>("kv.put", ("k", 1)).await.expect("put");
    let v: Value = client.call("kv.get", ("k",)).await.expect("get");
    assert_eq!(v, Value::from(1));
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_node_takes_either_a_publisher_or_event_endpoints() {
    let publisher = Publisher::bind("tcp://127.0.0.1:0")
        .await
        .expect("publisher binds");
    let refused = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .events("tcp://127.0.0.1:0")
        .publisher(publisher)
        .service(zmesh_kv::service(KvConfig::default(), None))
        .start()
        .await;
    assert!(
        refused
            .expect_err("refused")
            .to_string()
            .contains("not both")
    );
}

/// A scan stops at its bytes bound as well as its count, so a full store of large values
/// answers `kv.scan("", 1000)` with a reply the client can take (it used to be 54 MB, over
/// the client's 16 MiB limit, for 900 x 60 kB values).
#[tokio::test]
async fn a_scan_is_bounded_in_bytes_as_well_as_count() {
    const VALUE: usize = 60_000;
    let config = KvConfig::default().max_scan_bytes(1_000_000);
    let Fixture { node, client, .. } = start(config).await;
    for n in 0..40 {
        let value = serde_bytes_value(VALUE, n);
        timeout(
            LIMIT,
            client.call::<u64>("kv.put", (format!("k{n:03}"), value)),
        )
        .await
        .expect("in time")
        .expect("stored");
    }
    let pairs: Vec<(String, Value)> = timeout(LIMIT, client.call("kv.scan", ("", 1000)))
        .await
        .expect("in time")
        .expect("a bounded scan succeeds");
    // 1,000,000 / ~60,006 bytes a pair: 16 pairs, the first 16 keys in order.
    assert_eq!(pairs.len(), 16);
    let keys: Vec<_> = pairs.iter().map(|(k, _)| k.clone()).collect();
    let expected: Vec<_> = (0..16).map(|n| format!("k{n:03}")).collect();
    assert_eq!(keys, expected);
    // A count below the bytes bound is still honoured, and one pair always comes back even
    // when it alone is over the bound.
    let few: Vec<(String, Value)> = client.call("kv.scan", ("", 3)).await.expect("scan");
    assert_eq!(few.len(), 3);
    node.shutdown(Duration::from_secs(1)).await;
    let tight = KvConfig::default().max_scan_bytes(10);
    let Fixture { node, client, .. } = start(tight).await;
    client
        .call::<u64>("kv.put", ("big", serde_bytes_value(VALUE, 0)))
        .await
        .expect("stored");
    let one: Vec<(String, Value)> = client.call("kv.scan", ("", 10)).await.expect("scan");
    assert_eq!(one.len(), 1);
    node.shutdown(Duration::from_secs(1)).await;
}

/// A binary msgpack value of `len` bytes.
fn serde_bytes_value(len: usize, seed: u8) -> Value {
    Value::Binary(vec![seed; len])
}
