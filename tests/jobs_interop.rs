//! A zmesh job queue between stock Python zerorpc 0.6.3 peers (tests/interop/py_jobs.py):
//! a stock `zerorpc.Client` submits with `jobs.submit` and fetches with `jobs.result`, and a
//! stock `zerorpc.Server` is the worker, one of whose methods raises `PermanentError` (the
//! name convention that sends a job to dead at once). Loopback tcp, default heartbeats.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::timeout;
use zmesh::jobs::{JobsConfig, JobsExtension};
use zmesh::{Client, Node};

#[path = "common/zerorpc_venv.rs"]
mod zerorpc_venv;
use zerorpc_venv::python_script;

/// Longest wait for a Python process's line (interpreter and gevent start-up included).
const PY_LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_zerorpc_submits_and_fetches_and_a_stock_server_works_the_jobs() {
    let mut worker = python_script("py_jobs.py").await;
    let mut worker = worker.arg("worker").spawn().expect("py_jobs.py worker");
    let mut lines = BufReader::new(worker.stdout.take().expect("stdout")).lines();
    let ready = timeout(PY_LIMIT, lines.next_line())
        .await
        .expect("the worker announces itself in time")
        .expect("read")
        .expect("a line");
    let worker_ep = ready
        .strip_prefix("READY ")
        .expect("READY <endpoint>")
        .to_owned();

    let dir = tempfile::tempdir().expect("tempdir");
    let queue = timeout(
        PY_LIMIT,
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .extension(JobsExtension::new(
                dir.path().join("data"),
                JobsConfig::default(),
                Client::new(worker_ep),
            ))
            .start(),
    )
    .await
    .expect("queue start in time")
    .expect("queue starts");

    let mut submit = python_script("py_jobs.py").await;
    submit.arg("submit").arg(queue.endpoint());
    let output = timeout(PY_LIMIT, submit.output())
        .await
        .expect("the stock client finishes in time")
        .expect("py_jobs.py submit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n--- stderr ---\n{}",
        stdout,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line");
    let triple = &report["triple"];
    assert_eq!(triple["ack"]["durability"], "fsync", "{report}");
    assert_eq!(triple["outcome"]["status"], "succeeded", "{report}");
    assert_eq!(triple["outcome"]["result"], 21, "{report}");
    let reject = &report["reject"]["outcome"];
    assert_eq!(reject["status"], "failed", "{report}");
    assert_eq!(reject["job"]["reason"], "not_retryable", "{report}");
    assert_eq!(reject["job"]["attempts"], 1, "{report}");
    assert!(
        reject["job"]["errors"][0]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("PermanentError: bad input")),
        "{report}"
    );
    let _ = worker.kill().await;
}
