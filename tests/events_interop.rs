//! Events interop with stock Python zerorpc 0.6.3, both ways:
//!
//! - a stock `zerorpc.Subscriber` (tests/interop/py_subscriber.py) receives a zmesh node's
//!   events, dispatched to the method named after the topic, with zmesh's header keys;
//! - a zmesh [`Subscriber`] receives a stock `zerorpc.Publisher`'s single-frame events
//!   (tests/interop/py_publisher.py), subscribed to every topic.
//!
//! The venv is found (or built) as in tests/interop.rs: `<repo>/.venv-zerorpc`, or
//! `ZMESH_ZERORPC_VENV`; when its python cannot import zerorpc, it is built with
//! tests/interop/zerorpc-venv.sh, and a failed build fails the tests. Nothing is skipped.

mod common;
#[path = "common/zerorpc_venv.rs"]
mod zerorpc_venv;

use std::time::Duration;

use common::{net, within};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use zerorpc_venv::python_script;
use zmesh::{Delivery, Node, Subscriber};

/// Longest wait for a Python peer to start or finish.
const PY_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    item: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_subscriber_receives_zmesh_events() {
    const COUNT: u64 = 5;
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .events("tcp://127.0.0.1:0")
        .start();
    let node = net("node start", node).await.expect("node starts");
    let publisher = node.publisher().expect("events").clone();
    let mut cmd = python_script("py_subscriber.py").await;
    cmd.arg(node.events_endpoint().expect("events"))
        .arg(COUNT.to_string());
    let mut child = cmd.spawn().expect("py_subscriber.py starts");
    let _log = common::child_log::ChildLog::capture(&mut child, "py_subscriber.py");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = within(PY_LIMIT, "py_subscriber start", lines.next_line()).await;
    assert_eq!(first.expect("readable").as_deref(), Some("SUBSCRIBED"));

    // Its connection is lazy: publish until it has what it wants and reports.
    let report = within(PY_LIMIT, "py_subscriber report", async {
        let mut report = Box::pin(lines.next_line());
        for id in 1u64.. {
            let order = Order {
                id,
                item: "book".into(),
            };
            let seq = publisher
                .publish("orders.created", &order)
                .await
                .expect("publishes");
            assert_eq!(seq, id);
            tokio::select! {
                line = &mut report => return line.expect("readable").expect("a report line"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        unreachable!("the loop only ends by returning")
    })
    .await;
    let report: serde_json::Value = serde_json::from_str(&report).expect("JSON report");
    assert_eq!(report["ok"], true, "{report}");
    let events = report["events"].as_array().expect("events");
    assert_eq!(events.len() as u64, COUNT, "{report}");
    let first_id = events[0][0]["id"].as_u64().expect("id");
    for (k, event) in events.iter().enumerate() {
        let id = first_id + k as u64;
        // The method got the payload; the header carried the publisher and the sequence.
        assert_eq!(event[0]["id"], id, "{report}");
        assert_eq!(event[0]["item"], "book", "{report}");
        assert_eq!(event[1], publisher.id(), "{report}");
        assert_eq!(event[2], id, "{report}");
    }
    let _ = within(PY_LIMIT, "py_subscriber exit", child.wait()).await;
    net("shutdown", node.shutdown(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmesh_subscriber_receives_stock_publisher_events() {
    let mut child = python_script("py_publisher.py")
        .await
        .spawn()
        .expect("py_publisher.py starts");
    let _log = common::child_log::ChildLog::capture(&mut child, "py_publisher.py");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = within(PY_LIMIT, "py_publisher READY", lines.next_line())
        .await
        .expect("readable")
        .expect("a READY line");
    let endpoint = ready.strip_prefix("READY ").expect("READY <endpoint>");
    let mut sub = Subscriber::builder()
        .connect(endpoint)
        .subscribe("")
        .start::<(String, u64)>()
        .await
        .expect("subscriber connects");
    let mut previous = None;
    for _ in 0..20 {
        let item = net("stock event", sub.next())
            .await
            .expect("stream never ends");
        let Delivery::Event(event) = item else {
            panic!("a stock publisher has no sequence numbers, so no gaps: {item:?}");
        };
        assert_eq!(event.topic, "greet");
        assert_eq!((event.publisher.as_deref(), event.seq), (None, None));
        let (greeting, i) = event.payload;
        assert_eq!(greeting, "hi");
        if let Some(previous) = previous {
            assert_eq!(i, previous + 1, "loopback delivers every event in order");
        }
        previous = Some(i);
    }
    let stats = sub.stats();
    assert_eq!(
        (stats.gaps, stats.undecodable, stats.received >= 20),
        (0, 0, true)
    );
    let _ = child.start_kill();
    let _ = within(PY_LIMIT, "py_publisher exit", child.wait()).await;
}
