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

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{net, within};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::OnceCell;
use zmesh::{Delivery, Node, Subscriber};

/// Longest wait for building the venv (pip downloads a few wheels).
const VENV_BUILD_LIMIT: Duration = Duration::from_secs(600);
/// Longest wait for a Python peer to start or finish.
const PY_LIMIT: Duration = Duration::from_secs(60);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("interop")
}

fn venv_dir() -> PathBuf {
    match std::env::var_os("ZMESH_ZERORPC_VENV") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-zerorpc"),
    }
}

/// The venv's python, building the venv once per test binary if needed.
async fn python() -> PathBuf {
    static PYTHON: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();
    match PYTHON.get_or_init(ensure_venv).await {
        Ok(python) => python.clone(),
        Err(e) => panic!("{e}"),
    }
}

async fn ensure_venv() -> Result<PathBuf, String> {
    let venv = venv_dir();
    let python = venv.join("bin").join("python");
    let imports = Command::new(&python)
        .args(["-c", "import zerorpc, zmq, msgpack, gevent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status();
    if matches!(tokio::time::timeout(PY_LIMIT, imports).await, Ok(Ok(s)) if s.success()) {
        return Ok(python);
    }
    let script = interop_dir().join("zerorpc-venv.sh");
    let build = Command::new("bash")
        .arg(&script)
        .arg(&venv)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(VENV_BUILD_LIMIT, build).await {
        Ok(Ok(out)) if out.status.success() && python.exists() => Ok(python),
        other => Err(format!(
            "the events interop tests need a venv with stock zerorpc at {} (build it with \
             `bash {} DIR` and set ZMESH_ZERORPC_VENV=DIR): {other:?}",
            venv.display(),
            script.display()
        )),
    }
}

async fn python_script(script: &str) -> Command {
    let mut cmd = Command::new(python().await);
    cmd.arg(interop_dir().join(script))
        .current_dir(interop_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

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
