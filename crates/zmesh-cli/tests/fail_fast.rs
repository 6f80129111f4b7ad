//! The CLI fails fast and says why, over real processes on loopback: a refused connection is
//! reported as refused long before the connect timeout (`call`, `ping`, `list`, `stats`,
//! `pub`); `--connect-timeout` bounds connecting apart from the call's deadline; a keyed
//! client of a plain node is told the endpoint takes no key; `serve --worker-of` warns while
//! its device is not there and registers once it is; `zmesh stats` explains a stock zerorpc
//! server and shows a proxy's figures; a proxy says no worker serves a method. Every child
//! is killed when its test ends.

mod common;
use common::zerorpc_venv;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{LIMIT, Lines, Server, dead_endpoint, run, stderr, stdout, zmesh};

/// Exit status of a local failure (unreachable endpoint, deadline).
const EXIT_FAILURE: i32 = 3;
/// Exit status when the peer answered with an error.
const EXIT_REMOTE_ERROR: i32 = 1;
/// The connect timeout the refusal tests give: a refusal must be reported far sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The call deadline the tests give: an answer must come far sooner.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

fn secs(d: Duration) -> String {
    d.as_secs().to_string()
}

/// Checks that a run failed with exit status `code` and said `needle` on stderr.
fn assert_failed(out: &Output, code: i32, needle: &str, what: &str) {
    let said = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {said}");
    assert!(said.contains(needle), "{what}: {said}");
}

/// Runs `zmesh ARGS...` and how long it took.
async fn timed(args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = run(args).await;
    (out, started.elapsed())
}

#[tokio::test]
async fn a_refused_connection_is_reported_as_refused_long_before_the_connect_timeout() {
    let dead = dead_endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = format!("ipc://{}", dir.path().join("nobody.sock").display());
    let (connect, timeout) = (secs(CONNECT_TIMEOUT), secs(CALL_TIMEOUT));
    let cases: Vec<Vec<&str>> = vec![
        vec!["call", &dead, "echo.upper", "hi"],
        vec!["call", &missing, "echo.upper", "hi"],
        vec!["ping", &dead],
        vec!["list", &dead],
        vec!["stats", &dead],
    ];
    for mut args in cases {
        args.extend(["--connect-timeout", &connect, "--timeout", &timeout]);
        let (out, took) = timed(&args).await;
        assert_failed(&out, EXIT_FAILURE, "refused", &format!("{args:?}"));
        assert!(
            took < CONNECT_TIMEOUT / 4,
            "{args:?} took {took:?} of a {CONNECT_TIMEOUT:?} connect timeout"
        );
    }
    // `pub` connects with its own socket and the same rule.
    let args = [
        "pub",
        &dead,
        "t",
        "1",
        "--connect-timeout",
        &connect,
        "--timeout",
        &timeout,
    ];
    let (out, took) = timed(&args).await;
    assert_failed(&out, EXIT_FAILURE, "refused", "pub");
    assert!(took < CONNECT_TIMEOUT / 4, "pub took {took:?}");
}

#[tokio::test]
async fn connect_timeout_is_documented_and_bounds_connecting_apart_from_the_deadline() {
    for verb in ["call", "list", "ping", "stats", "sub", "pub"] {
        let out = run(&[verb, "--help"]).await;
        assert!(out.status.success(), "{verb} --help");
        assert!(
            stdout(&out).contains("--connect-timeout"),
            "{verb}: {}",
            stdout(&out)
        );
    }
    let out = run(&["ping", &dead_endpoint(), "--connect-timeout", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // A listener that accepts TCP connections (the kernel does, into its backlog) and never
    // answers the ZMTP greeting: not refused, just never there.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("tcp://{}", silent.local_addr().expect("addr"));
    let connect_timeout = Duration::from_secs(1);
    let (out, took) = timed(&[
        "call",
        &endpoint,
        "echo.upper",
        "hi",
        "--connect-timeout",
        &secs(connect_timeout),
        "--timeout",
        &secs(CALL_TIMEOUT),
    ])
    .await;
    assert_failed(&out, EXIT_FAILURE, "cannot connect", "silent listener");
    assert!(!stderr(&out).contains("refused"), "{}", stderr(&out));
    assert!(
        took >= connect_timeout,
        "gave connecting its time: {took:?}"
    );
    assert!(took < CALL_TIMEOUT / 4, "not the call's deadline: {took:?}");
}

#[tokio::test]
async fn a_keyed_call_to_a_plain_node_is_told_the_endpoint_takes_no_key() {
    let server = Server::serve_echo("tcp://127.0.0.1:0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("mesh.key");
    let out = run(&["keygen", "--out", key.to_str().expect("utf-8 path")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, took) = timed(&[
        "call",
        &server.endpoint,
        "echo.upper",
        "hi",
        "--mesh-key-file",
        key.to_str().expect("utf-8 path"),
        "--timeout",
        &secs(CALL_TIMEOUT),
    ])
    .await;
    assert_failed(
        &out,
        EXIT_REMOTE_ERROR,
        "Unauthenticated: this endpoint takes no mesh key",
        "keyed call",
    );
    assert!(took < CALL_TIMEOUT / 4, "answered, not timed out: {took:?}");
    // The node keeps serving plain calls.
    let out = run(&["call", &server.endpoint, "echo.upper", "hi"]).await;
    assert_eq!(stdout(&out), "\"HI\"\n", "{}", stderr(&out));
}

/// Lines of a child's output, and what was read of it for a failure's message.
struct Transcript {
    lines: Lines,
    seen: Vec<String>,
}

impl Transcript {
    /// The first line (from here on) that satisfies `wanted`, within [`LIMIT`].
    async fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.next_within(left).await {
                Some(line) if wanted(&line) => return line,
                Some(line) => self.seen.push(line),
                None => panic!(
                    "{what}: not within {LIMIT:?} (or the output ended); it said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// `zmesh proxy` with a free frontend and the given backend; it announces its frontend
/// first (the server's endpoint).
async fn start_proxy(backend: &str) -> Server {
    let mut command = zmesh();
    command.args(["proxy", "--name", "fail-fast-proxy"]).args([
        "--frontend",
        "tcp://127.0.0.1:0",
        "--backend",
        backend,
    ]);
    Server::start(command, "zmesh proxy").await
}

#[tokio::test]
async fn a_worker_warns_while_its_device_is_missing_and_registers_once_it_is_there() {
    let backend = dead_endpoint();
    let mut worker = zmesh()
        .args(["serve", "--worker-of", &backend, "echo"])
        .env("RUST_LOG", "warn,zmesh_core::node::worker=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh serve starts");
    let mut out = Lines::new(worker.stdout.take().expect("piped"));
    let mut err = Transcript {
        lines: Lines::new(worker.stderr.take().expect("piped")),
        seen: Vec::new(),
    };
    let line = out.next("serve announcing itself").await;
    assert!(line.contains("as a worker of"), "{line}");

    let warning = err
        .until("the not-registered warning", |l| {
            l.contains("not registered")
        })
        .await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&backend), "names the device: {warning}");

    // Still trying: the device arrives on that port and the worker registers.
    let proxy = start_proxy(&backend).await;
    let registered = err
        .until("registering", |l| {
            l.contains("registered with the device") && !l.contains("not registered")
        })
        .await;
    assert!(registered.contains("INFO"), "{registered}");
    let out = run(&["call", &proxy.endpoint, "echo.upper", "hi"]).await;
    assert_eq!(stdout(&out), "\"HI\"\n", "{}", stderr(&out));
}

#[tokio::test]
async fn a_proxy_without_workers_says_no_worker_serves_the_method_and_shows_its_stats() {
    let proxy = start_proxy("tcp://127.0.0.1:0").await;
    let frontend = &proxy.endpoint;
    let out = run(&["call", frontend, "echo.upper", "hi"]).await;
    assert_failed(
        &out,
        EXIT_REMOTE_ERROR,
        "no worker",
        "a call no worker serves",
    );
    let said = stderr(&out);
    // The name stays NameError (what zerorpc clients expect); the message says why.
    assert!(said.starts_with("NameError: "), "{said}");
    assert!(said.contains("echo.upper"), "{said}");

    let out = run(&["stats", frontend]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.starts_with("device: 0 workers"), "{shown}");
    assert!(
        shown.contains("unknown_method "),
        "the refused call is counted: {shown}"
    );
}

#[tokio::test]
async fn stats_of_a_stock_zerorpc_server_says_it_is_not_a_zmesh_node() {
    let command = zerorpc_venv::python_script("py_server.py").await;
    let server = Server::start(command, "py_server.py").await;
    let out = run(&["stats", &server.endpoint]).await;
    assert_failed(
        &out,
        EXIT_REMOTE_ERROR,
        "is not a zmesh node",
        "stats of zerorpc",
    );
    let said = stderr(&out);
    assert!(!said.contains("Traceback"), "no traceback: {said}");
    assert_eq!(said.lines().count(), 1, "one clear line: {said}");
    assert_eq!(stdout(&out), "");
}
