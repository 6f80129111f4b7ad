//! `zmesh serve --metrics` against a real Prometheus (Debian's `prometheus`, installed by
//! `.ci/run`; skipped with a message where it is absent outside CI): the node's endpoint
//! answers /healthz, /readyz and /metrics, and Prometheus, scraping it every second on
//! loopback, shows the calls made through the node in the call counter and the
//! `rpc.server.call.duration` histogram. Every child is killed when its test ends.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use common::{LIMIT, Server, assert_lines, run, serve_jobs, stderr, zmesh};

/// Longest wait for Prometheus to start, scrape and answer with the calls.
const PROMETHEUS_LIMIT: Duration = Duration::from_secs(90);

/// `GET path` from `addr` (`127.0.0.1:PORT`): the status and the body. HTTP/1.0, so the
/// body comes whole, never chunked.
async fn get(addr: &str, path: &str) -> (u16, String) {
    try_get(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// [`get`], or the error of a server not (yet) there.
async fn try_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    timeout(LIMIT, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok::<_, std::io::Error>((status, body))
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} within {LIMIT:?}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The first value of an instant query's result, as Prometheus' HTTP API gives it.
async fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    // Until Prometheus listens, its port refuses.
    let (status, body) = try_get(prometheus, &format!("/api/v1/query?query={encoded}"))
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_node_and_sees_its_calls() {
    let binary = Path::new("/usr/bin/prometheus");
    if !binary.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have prometheus (.ci/run installs it)"
        );
        eprintln!("skipped: prometheus is not installed (Debian's prometheus)");
        return;
    }
    let mut command = zmesh();
    command.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "echo",
    ]);
    let mut node = Server::start(command, "zmesh serve --metrics").await;
    let metrics = node.metrics_addr().await;

    assert_eq!(get(&metrics, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(get(&metrics, "/readyz").await.0, 200);
    assert_eq!(get(&metrics, "/elsewhere").await.0, 404);
    for _ in 0..5 {
        let out = run(&["call", &node.endpoint, "echo.upper", "scraped"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = run(&["call", &node.endpoint, "echo.fail", "counted"]).await;
    assert_eq!(out.status.code(), Some(1));
    let (status, text) = get(&metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(
            "rpc_server_call_duration_seconds_count{rpc_system_name=\"zerorpc\",rpc_method=\"echo.upper\"} 5"
        ),
        "{text}"
    );
    assert!(text.contains("le=\"+Inf\""), "{text}");
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: zmesh\n    static_configs:\n      - targets: [\"{metrics}\"]\n"
        ),
    )
    .expect("prometheus.yml");
    let prometheus = format!("127.0.0.1:{}", free_port());
    let _server = tokio::process::Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");

    let expected = [
        (
            "rpc_server_call_duration_seconds_count{rpc_method=\"echo.upper\"}",
            5.0,
        ),
        (
            "rpc_server_call_duration_seconds_bucket{rpc_method=\"echo.upper\",le=\"+Inf\"}",
            5.0,
        ),
        (
            "zmesh_server_calls_total{rpc_method=\"echo.upper\",outcome=\"ok\"}",
            5.0,
        ),
        (
            "zmesh_server_calls_total{rpc_method=\"echo.fail\",outcome=\"error\"}",
            1.0,
        ),
    ];
    let seen = std::sync::Mutex::new(Vec::new());
    let shown = timeout(PROMETHEUS_LIMIT, async {
        loop {
            let mut now = Vec::new();
            for (promql, _) in expected {
                now.push(query(&prometheus, promql).await);
            }
            let all = now
                .iter()
                .zip(expected)
                .all(|(got, (_, want))| *got == Some(want));
            *seen.lock().expect("lock") = now;
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    assert!(
        shown.is_ok(),
        "Prometheus did not show the calls within {PROMETHEUS_LIMIT:?}: {expected:?} gave {:?}",
        seen.lock().expect("lock")
    );
    let sum = query(
        &prometheus,
        "rpc_server_call_duration_seconds_sum{rpc_method=\"echo.upper\"}",
    )
    .await
    .expect("a duration sum");
    assert!(sum > 0.0 && sum < 5.0, "five short calls: {sum} s");

    common::terminate(&node.child);
    let status = common::exit_status(&mut node.child, "zmesh serve").await;
    assert!(status.success(), "{status}");
}

/// `zmesh proxy --metrics` serves the device's figures: its workers and the calls through
/// it per service and outcome.
#[tokio::test]
async fn the_proxy_serves_its_figures() {
    let (mut proxy, backend) = Server::proxy(&["--metrics", "127.0.0.1:0"]).await;
    let metrics = proxy.metrics_addr().await;
    assert_eq!(get(&metrics, "/readyz").await.0, 200);

    let mut worker = zmesh();
    worker.args(["serve", "--worker-of", &backend, "echo"]);
    let _worker = Server::start(worker, "zmesh serve --worker-of").await;
    // The worker registers with the device shortly after it connects.
    timeout(LIMIT, async {
        loop {
            let out = run(&["call", &proxy.endpoint, "echo.upper", "via"]).await;
            if out.status.success() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the worker serves through the proxy");
    for _ in 0..3 {
        let out = run(&["call", &proxy.endpoint, "echo.upper", "via"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let (status, text) = get(&metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("zmesh_device_workers 1"), "{text}");
    let completed = text
        .lines()
        .find(|l| {
            l.starts_with("zmesh_device_service_calls_total{")
                && l.contains("service=\"echo\"")
                && l.contains("outcome=\"completed\"")
        })
        .unwrap_or_else(|| panic!("no completed echo calls in {text}"));
    let count: u64 = completed
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(count >= 4, "{completed}");
    assert!(text.trim_end().ends_with("# EOF"));
}

/// `zmesh serve jobs --events --metrics` adds the queue's and the events' figures to the
/// node's: jobs per state, attempts started, refusals by reason, durability, and what the
/// publisher sent.
#[tokio::test]
async fn a_queue_node_shows_its_jobs_and_its_events() {
    let worker = Server::serve_echo("tcp://127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let flags = ["--events", "tcp://127.0.0.1:0", "--metrics", "127.0.0.1:0"];
    let command = serve_jobs(&data, &worker.endpoint, &flags);
    let mut node = Server::start(command, "zmesh serve jobs --metrics").await;
    node.announced("events").await;
    let metrics = node.metrics_addr().await;

    let q = node.endpoint.as_str();
    let out = run(&["jobs", "submit", q, "echo.upper", "scraped"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let id = common::stdout(&out);
    let id: serde_json::Value = serde_json::from_str(id.trim()).expect("json");
    let id = id["id"].to_string();
    let out = run(&["jobs", "result", q, &id, "--wait", "10"]).await;
    assert!(
        common::stdout(&out).contains("\"succeeded\""),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "jobs",
        "submit",
        q,
        "echo.upper",
        "refused",
        "--options",
        r#"{"no_such_option": 1}"#,
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    let (status, text) = get(&metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert_lines(
        &text,
        &[
            "# TYPE zmesh_jobs gauge",
            "zmesh_jobs{state=\"succeeded\"} 1",
            "zmesh_jobs{state=\"dead\"} 0",
            "zmesh_jobs_durability{level=\"fsync\"} 1",
            "zmesh_jobs_attempts_started_total 1",
            "zmesh_jobs_dead_total 0",
            "zmesh_jobs_submits_refused_total{reason=\"invalid\"} 1",
            "zmesh_jobs_submits_refused_total{reason=\"max_jobs\"} 0",
            "zmesh_events_published_total{kind=\"snapshots\"} 0",
            "zmesh_events_publisher_dropped_total{reason=\"subscriber_queue_full\"} 0",
            // The job's attempt, as the call the queue made (rpc.client.call.duration).
            "rpc_client_call_duration_seconds_count{rpc_system_name=\"zerorpc\",rpc_method=\"echo.upper\"} 1",
            "zmesh_client_calls_total{rpc_method=\"echo.upper\",outcome=\"ok\"} 1",
        ],
    );
    // The queue publishes each change once it is committed, on a task of its own: the
    // count is there, its value may still be growing.
    assert!(
        text.lines()
            .any(|l| l.starts_with("zmesh_events_published_total{kind=\"events\"} ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("zmesh_jobs_held_bytes ") && !l.ends_with(" 0")),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    common::terminate(&node.child);
    let status = common::exit_status(&mut node.child, "zmesh serve jobs").await;
    assert!(status.success(), "{status}");
}

/// `zmesh proxy --jobs DIR --metrics` shows the device's figures and its queue's: the
/// queue's node is one of the device's workers, serving `jobs`.
#[tokio::test]
async fn a_proxy_with_a_queue_serves_both_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("jobs");
    let (mut proxy, _) = Server::proxy(&[
        "--jobs",
        data.to_str().expect("utf-8"),
        "--jobs-durability",
        "os",
        "--metrics",
        "127.0.0.1:0",
    ])
    .await;
    proxy.announced("jobs").await;
    let metrics = proxy.metrics_addr().await;
    let out = run(&["jobs", "submit", &proxy.endpoint, "echo.upper", "nobody"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let (status, text) = get(&metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert_lines(
        &text,
        &[
            "zmesh_device_workers 1",
            "zmesh_device_service_workers{service=\"jobs\"} 1",
            "zmesh_jobs_durability{level=\"os\"} 1",
            "zmesh_jobs_submits_refused_total{reason=\"invalid\"} 0",
        ],
    );
    // One job held, whichever state its retries have it in (no worker serves echo).
    assert!(
        text.lines()
            .any(|l| l.starts_with("zmesh_jobs{state=") && l.ends_with("} 1")),
        "{text}"
    );
    assert!(
        !text.contains("rpc_server_call_duration"),
        "the device's figures: {text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

/// A mesh member's `/metrics` holds its node's figures and its discovery's (peers, gossip
/// exchanges, DNS lookups) in one exposition, ending in one `# EOF`.
#[tokio::test]
async fn a_mesh_member_serves_its_discovery_figures_too() {
    let mut command = zmesh();
    command.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--mesh",
        "metrics-test",
        "--metrics",
        "127.0.0.1:0",
        "echo",
    ]);
    let mut node = Server::start(command, "zmesh serve --mesh --metrics").await;
    let metrics = loop {
        let line = node.lines.next("the metrics line").await;
        if let Some(addr) = line.strip_prefix("metrics http://") {
            break addr.to_owned();
        }
    };
    let (status, text) = get(&metrics, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "zmesh_mesh_peers 0",
        "zmesh_mesh_gossip_exchanges_total{result=\"ok\"} 0",
        "zmesh_server_calls_in_flight 0",
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
    assert_eq!(text.matches("# EOF").count(), 1, "{text}");
    assert!(text.trim_end().ends_with("# EOF"));
    common::terminate(&node.child);
    let status = common::exit_status(&mut node.child, "zmesh serve").await;
    assert!(status.success(), "{status}");
}
