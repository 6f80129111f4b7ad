//! Provides what the CLI tests share: running the `zmesh` binary with a time limit, reading a
//! long-running child's stdout line by line, and a child process that announces its endpoint
//! on its first stdout line; and, from the root package's `tests/common`, a child's stderr
//! kept for a failure (`child_log`) and the stock zerorpc venv (`zerorpc_venv`). Every child is killed when its handle drops (also on a failed
//! assertion).

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

#[path = "../../../../tests/common/child_log.rs"]
pub(crate) mod child_log;
pub(crate) use child_log::ChildLog;
#[path = "../../../../tests/common/zerorpc_venv.rs"]
pub(crate) mod zerorpc_venv;

use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Longest any one command may take (they take milliseconds on a quiet machine).
pub(crate) const LIMIT: Duration = Duration::from_secs(20);

/// The `zmesh` binary, killed when its handle drops.
pub(crate) fn zmesh() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zmesh"));
    command.kill_on_drop(true);
    command
}

/// Runs `zmesh ARGS...` to completion within [`LIMIT`].
pub(crate) async fn run(args: &[&str]) -> Output {
    let child = zmesh()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start zmesh");
    finish(child, &format!("zmesh {args:?}")).await
}

/// Runs `zmesh bench --modes raw,tcp,MODE` (300 calls per mode, JSON) and returns MODE's
/// figures, after checking the modes ran in order, MODE measured every call and has a
/// ratio to raw.
pub(crate) async fn bench_beside_raw_and_tcp(mode: &str) -> serde_json::Value {
    let modes = format!("raw,tcp,{mode}");
    let out = run(&[
        "bench",
        "--modes",
        &modes,
        "--count",
        "300",
        "--warmup",
        "20",
        "--duration",
        "15",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let modes = report["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().filter_map(|m| m["mode"].as_str()).collect();
    assert_eq!(names, ["raw", "tcp", mode]);
    let figures = modes[2].clone();
    assert_eq!(figures["calls"], 300, "{figures}");
    assert!(
        figures["p50_vs_raw"].as_f64().is_some_and(|r| r > 0.0),
        "{figures}"
    );
    figures
}

/// Waits within [`LIMIT`] for a child started with piped stdout and stderr.
pub(crate) async fn finish(child: Child, what: &str) -> Output {
    timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
        .expect("the child ran")
}

pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Sends SIGTERM to a running child.
pub(crate) fn terminate(child: &Child) {
    send_signal(child, "TERM");
}

/// Sends `signal` (`TERM`, `INT`...) to a running child.
pub(crate) fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the child is running").to_string();
    let kill = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -{signal} {pid}");
}

/// Waits within [`LIMIT`] for a child to exit.
pub(crate) async fn exit_status(child: &mut Child, what: &str) -> ExitStatus {
    timeout(LIMIT, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} did not exit within {LIMIT:?}"))
        .expect("wait")
}

/// A child's stdout (or stderr) as lines, read by a task of its own so that waiting for a
/// line can be given up (a timeout, a `select!`) without losing part of one.
#[derive(Debug)]
pub(crate) struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
}

impl Lines {
    pub(crate) fn new(output: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(output).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { rx }
    }

    /// The next line; panics at end of output or after [`LIMIT`].
    pub(crate) async fn next(&mut self, what: &str) -> String {
        match timeout(LIMIT, self.rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("{what}: output ended"),
            Err(_) => panic!("{what}: no line within {LIMIT:?}"),
        }
    }

    /// The next line if one arrives within `wait`; `None` at end of output too.
    pub(crate) async fn next_within(&mut self, wait: Duration) -> Option<String> {
        timeout(wait, self.rx.recv()).await.ok().flatten()
    }
}

/// A child process that announced its endpoint on its first stdout line.
pub(crate) struct Server {
    pub(crate) child: Child,
    /// Its stderr, shown only if the test fails.
    _log: ChildLog,
    /// The last word of the first line.
    pub(crate) endpoint: String,
    /// The rest of its stdout.
    pub(crate) lines: Lines,
}

impl Server {
    /// Starts `command` and reads the endpoint as the last word of its first line.
    pub(crate) async fn start(mut command: Command, what: &str) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let log = ChildLog::capture(&mut child, what);
        let mut lines = Lines::new(child.stdout.take().expect("stdout is piped"));
        let line = lines.next(&format!("{what} announcing its endpoint")).await;
        let endpoint = line
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_owned();
        Self {
            child,
            _log: log,
            endpoint,
            lines,
        }
    }

    /// The endpoint on its next stdout line, `WORD ENDPOINT` (`backend`, `events`, ...).
    pub(crate) async fn announced(&mut self, word: &str) -> String {
        let line = self.lines.next(&format!("the {word} line")).await;
        line.strip_prefix(&format!("{word} "))
            .unwrap_or_else(|| panic!("{word} ENDPOINT, not {line:?}"))
            .to_owned()
    }

    /// The `--metrics` address on its next stdout line, `metrics http://ADDR`.
    pub(crate) async fn metrics_addr(&mut self) -> String {
        let url = self.announced("metrics").await;
        url.strip_prefix("http://")
            .unwrap_or_else(|| panic!("not an http URL: {url}"))
            .to_owned()
    }

    /// `zmesh proxy` on free loopback ports with `extra` options (its endpoint is the
    /// frontend); answers it with its backend.
    pub(crate) async fn proxy(extra: &[&str]) -> (Self, String) {
        let mut command = zmesh();
        command
            .args(["proxy", "--frontend", "tcp://127.0.0.1:0"])
            .args(["--backend", "tcp://127.0.0.1:0"])
            .args(extra);
        let mut proxy = Self::start(command, &format!("zmesh proxy {extra:?}")).await;
        let backend = proxy.announced("backend").await;
        (proxy, backend)
    }

    /// `zmesh serve` of the echo service on `bind`.
    pub(crate) async fn serve_echo(bind: &str) -> Self {
        let mut command = zmesh();
        command.args(["serve", "--bind", bind, "--name", "cli-test", "echo"]);
        let server = Self::start(command, "zmesh serve").await;
        assert!(
            server.endpoint.starts_with("tcp://127.0.0.1:")
                || server.endpoint.starts_with("ipc://"),
            "{}",
            server.endpoint
        );
        server
    }
}

/// Asserts that each of `lines` is a whole line of `text` (a scrape, a listing).
pub(crate) fn assert_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "{line} missing from\n{text}"
        );
    }
}

/// `zmesh serve jobs` on a free loopback port, its store in `data`, its jobs run by
/// `workers`, with `flags` besides.
pub(crate) fn serve_jobs(data: &std::path::Path, workers: &str, flags: &[&str]) -> Command {
    let mut command = zmesh();
    command.args(["serve", "--bind", "tcp://127.0.0.1:0", "--data"]);
    command.arg(data);
    command.args(["--jobs-workers", workers]);
    command.args(flags);
    command.arg("jobs");
    command
}

/// A loopback tcp endpoint nothing listens on (the port was free a moment ago).
pub(crate) fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("tcp://127.0.0.1:{port}")
}
