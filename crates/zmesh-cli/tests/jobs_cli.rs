//! `zmesh serve jobs` and `zmesh jobs VERB` over real processes on loopback: a queue node
//! stores jobs in a temp dir and runs them through a worker node; submit, result, status,
//! stats, dead and replay print the queue's answers as JSON; a refusal exits 1 and a queue
//! without its store or workers exits 2; `zmesh stats` shows the queue. A queue held by
//! `zmesh proxy --jobs` (kept across restarts), a queue that is a worker of a device, and
//! one in a mesh. Every child is killed when its test ends.

mod common;

use common::{Server, run, serve_jobs, stderr, stdout, zmesh};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(stdout(out).trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(out), stderr(out)))
}

#[tokio::test]
async fn the_cli_hosts_a_queue_and_drives_its_jobs() {
    let worker = Server::serve_echo("tcp://127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let command = serve_jobs(&data, &worker.endpoint, &[]);
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
    let out = run(&["jobs", "stats", q]).await;
    assert_eq!(json(&out)["dead_total"], 1, "{}", stdout(&out));

    // `zmesh stats` of the node shows its queue after its methods; --json holds it too.
    let out = run(&["stats", q]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("jobs: 2 held"), "{text}");
    assert!(text.contains("durability fsync"), "{text}");
    assert!(text.contains("1 dead since the queue opened"), "{text}");
    let out = run(&["stats", q, "--json"]).await;
    let report = json(&out);
    assert_eq!(report["jobs"]["depth"]["succeeded"], 1, "{report}");
    assert!(report["methods"]["jobs.submit"].is_object(), "{report}");
    let out = run(&["jobs", "replay", q, &failing]).await;
    assert_eq!(json(&out)["state"], "queued", "{}", stderr(&out));

    let out = run(&["jobs", "stats", q]).await;
    let stats = json(&out);
    assert_eq!(stats["depth"]["succeeded"], 1, "{stats}");

    let out = run(&["jobs", "status", q, "424242"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("UnknownJob"), "{}", stderr(&out));
}

/// `--jobs-writer-spin-us`: a queue whose writer spins stores and runs jobs as any other;
/// a spin past a millisecond is refused before anything starts.
#[tokio::test]
async fn a_queue_with_a_spinning_writer_runs_jobs_and_a_longer_spin_is_refused() {
    let worker = Server::serve_echo("tcp://127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let serve = |spin: &'static str| {
        let flags = ["--jobs-durability", "os", "--jobs-writer-spin-us", spin];
        serve_jobs(&data, &worker.endpoint, &flags)
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), serve("5000").output())
        .await
        .expect("in time")
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--jobs-writer-spin-us"),
        "{}",
        stderr(&out)
    );

    let queue = Server::start(serve("50"), "zmesh serve jobs").await;
    let q = queue.endpoint.as_str();
    for word in ["one", "two", "three"] {
        let out = run(&["jobs", "submit", q, "echo.upper", word]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        let ticket = json(&out);
        assert_eq!(ticket["durability"], "os");
        let id = ticket["id"].to_string();
        let out = run(&["jobs", "result", q, &id, "--wait", "10"]).await;
        let result = json(&out);
        assert_eq!(result["status"], "succeeded", "{result}");
        assert_eq!(result["result"], word.to_uppercase());
    }
}

#[tokio::test]
async fn a_queue_needs_its_store_and_its_workers() {
    let out = run(&["serve", "--bind", "tcp://127.0.0.1:0", "jobs"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--data DIR"), "{}", stderr(&out));
}

/// Retries every 50-200 ms, for jobs submitted before their worker is there (the device
/// answers NameError until one joins, which is retried like any error).
const UNTIL_A_WORKER_JOINS: &str =
    r#"{"max_attempts": 10000, "backoff_base_ms": 50, "backoff_cap_ms": 200}"#;

/// `zmesh proxy --jobs DIR` on free ports; its endpoint is the frontend. Answers it with
/// its backend.
async fn proxy_with_queue(data: &std::path::Path) -> (Server, String) {
    let (mut proxy, backend) = Server::proxy(&["--jobs", data.to_str().expect("utf-8")]).await;
    let line = proxy.lines.next("the jobs line").await;
    assert_eq!(line, format!("jobs {}", data.display()));
    (proxy, backend)
}

/// `zmesh serve --worker-of BACKEND ARGS...`.
async fn worker_of(backend: &str, args: &[&str]) -> Server {
    let mut command = zmesh();
    command.args(["serve", "--worker-of", backend]).args(args);
    Server::start(command, "zmesh serve --worker-of").await
}

/// Stops a child with SIGTERM and checks it shut down cleanly.
async fn stop(mut server: Server, what: &str) {
    common::terminate(&server.child);
    let status = common::exit_status(&mut server.child, what).await;
    assert!(status.success(), "{what}: {status}");
}

/// Submits `echo.upper WORD` to the queue at `q` (retried until a worker joins), waits for
/// it to succeed with WORD in capitals; answers its id.
async fn runs_upper(q: &str, word: &str) -> String {
    let out = run(&submit_args(q, word)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = json(&out)["id"].to_string();
    let out = run(&["jobs", "result", q, &id, "--wait", "10"]).await;
    let result = json(&out);
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["result"], word.to_uppercase());
    id
}

fn submit_args<'a>(q: &'a str, word: &'a str) -> Vec<&'a str> {
    vec![
        "jobs",
        "submit",
        q,
        "echo.upper",
        word,
        "--options",
        UNTIL_A_WORKER_JOINS,
    ]
}

#[tokio::test]
async fn a_proxy_holds_a_queue_for_its_workers_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let (proxy, backend) = proxy_with_queue(&data).await;
    let worker = worker_of(&backend, &["echo"]).await;
    let q = proxy.endpoint.clone();

    // Answered at the frontend, run on the device's worker.
    let id = runs_upper(&q, "through").await;

    // `zmesh stats` of the proxy: the device's figures, then the queue's.
    let out = run(&["stats", &q]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("device: "), "{text}");
    assert!(text.contains("\njobs: 1 held"), "{text}");
    assert!(text.contains("succeeded 1"), "{text}");
    let out = run(&["stats", &q, "--json"]).await;
    let stats = json(&out);
    assert_eq!(stats["jobs"]["depth"]["succeeded"], 1, "{stats}");
    assert_eq!(stats["jobs"]["durability"], "fsync", "{stats}");
    assert!(stats["services"]["echo"].is_object(), "{stats}");

    // No worker: the job waits (retried) in the store through a restart of the proxy.
    stop(worker, "the worker").await;
    stop(proxy, "the proxy").await;
    let (proxy, _) = proxy_with_queue(&data).await;
    let q = proxy.endpoint.clone();
    let out = run(&submit_args(&q, "later")).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let later = json(&out)["id"].to_string();
    let out = run(&["jobs", "status", &q, &later]).await;
    assert_ne!(json(&out)["state"], "succeeded", "no worker ran it");
    stop(proxy, "the proxy").await;

    let (proxy, backend) = proxy_with_queue(&data).await;
    let q = proxy.endpoint.clone();
    let _worker = worker_of(&backend, &["echo"]).await;
    let out = run(&["jobs", "result", &q, &later, "--wait", "10"]).await;
    let result = json(&out);
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["result"], "LATER");
    let out = run(&["jobs", "status", &q, &id]).await;
    assert_eq!(
        json(&out)["state"],
        "succeeded",
        "the first job is still held"
    );
}

/// A queue that is itself a worker of a device: its methods are answered at the device's
/// frontend, and its jobs go back through the frontend to the device's other workers.
#[tokio::test]
async fn a_queue_can_be_a_worker_of_a_device() {
    let (proxy, backend) = Server::proxy(&[]).await;
    let frontend = proxy.endpoint.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let queue = worker_of(
        &backend,
        &[
            "--data",
            data.to_str().expect("utf-8"),
            "--jobs-workers",
            &frontend,
            "jobs",
        ],
    )
    .await;
    assert!(
        queue.endpoint == backend,
        "serving jobs as a worker of {backend}: {}",
        queue.endpoint
    );
    let _echo = worker_of(&backend, &["echo"]).await;
    // The queue registers with the device shortly after it connects.
    tokio::time::timeout(common::LIMIT, async {
        while !run(&["call", &frontend, "jobs.stats"])
            .await
            .status
            .success()
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the device routes jobs.* to the queue");
    runs_upper(&frontend, "device").await;
}

/// A queue in a mesh without --jobs-workers: announced as `jobs`, and running each job on
/// a member serving its method, found by service name.
#[tokio::test]
async fn a_queue_in_a_mesh_runs_jobs_on_the_members() {
    let mesh = format!("jobs-cli-{}", std::process::id());
    let mut command = zmesh();
    command.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--mesh",
        &mesh,
        "--name",
        "echoes",
        "echo",
    ]);
    let echo = Server::start(command, "zmesh serve --mesh echo").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let mut command = zmesh();
    command.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--mesh",
        &mesh,
        "--seed",
        &echo.endpoint,
        "--data",
        data.to_str().expect("utf-8"),
        "jobs",
    ]);
    let queue = Server::start(command, "zmesh serve --mesh jobs").await;
    let q = queue.endpoint.as_str();
    let id = runs_upper(q, "mesh").await;
    let out = run(&["jobs", "status", q, &id]).await;
    assert_eq!(json(&out)["state"], "succeeded");
    // The echo member learnt of the queue by gossip, with its service.
    let out = run(&["call", &echo.endpoint, "_zmesh.peers", &mesh, "null"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"jobs\""), "{}", stdout(&out));
}
