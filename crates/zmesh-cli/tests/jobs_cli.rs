//! `zmesh serve jobs` and `zmesh jobs VERB` over real processes on loopback: a queue node
//! stores jobs in a temp dir and runs them through a worker node; submit, result, status,
//! stats, dead and replay print the queue's answers as JSON; a refusal exits 1 and a queue
//! without its store or workers exits 2. Every child is killed when its test ends.

mod common;

use common::{Server, run, stderr, stdout, zmesh};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(stdout(out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

#[tokio::test]
async fn the_cli_hosts_a_queue_and_drives_its_jobs() {
    let worker = Server::serve_echo("tcp://127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let mut command = zmesh();
    command.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--data",
        data.to_str().expect("utf-8"),
        "--jobs-workers",
        &worker.endpoint,
        "jobs",
    ]);
    let queue = Server::start(command, "zmesh serve jobs").await;
    let q = queue.endpoint.as_str();

    let out = run(&["jobs", "submit", q, "echo.upper", "queued"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let ticket = json(&out);
    assert_eq!(ticket["durability"], "fsync");
    let id = ticket["id"].to_string();

    let out = run(&["jobs", "result", q, &id, "--wait", "10"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let result = json(&out);
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["result"], "QUEUED");

    let out = run(&["jobs", "status", q, &id]).await;
    assert_eq!(json(&out)["state"], "succeeded");

    let out = run(&[
        "jobs",
        "submit",
        q,
        "echo.fail",
        "no",
        "--options",
        r#"{"max_attempts": 1}"#,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let failing = json(&out)["id"].to_string();
    let out = run(&["jobs", "result", q, &failing, "--wait", "10"]).await;
    assert_eq!(json(&out)["status"], "failed");
    let out = run(&["jobs", "dead", q]).await;
    let dead = json(&out);
    assert_eq!(dead[0]["reason"], "attempts_exhausted", "{dead}");
    assert_eq!(dead[0]["errors"][0]["error"], "EchoError: no");
    let out = run(&["jobs", "replay", q, &failing]).await;
    assert_eq!(json(&out)["state"], "queued", "{}", stderr(&out));

    let out = run(&["jobs", "stats", q]).await;
    let stats = json(&out);
    assert_eq!(stats["depth"]["succeeded"], 1, "{stats}");

    let out = run(&["jobs", "status", q, "424242"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("UnknownJob"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_queue_needs_its_store_and_its_workers() {
    let out = run(&["serve", "--bind", "tcp://127.0.0.1:0", "jobs"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--data DIR"), "{}", stderr(&out));
}
