//! Drives the `zmesh` binary over real sockets: `serve` hosts the echo service on loopback tcp
//! or ipc, and `call`, `list` and `ping` talk to it and to a stock Python zerorpc server.
//! Every child process is waited on with a timeout and killed when its test ends.

mod common;

use std::process::Stdio;
use std::time::Duration;

use tokio::time::timeout;

use common::{Server, dead_endpoint, run, stderr, stdout};

#[tokio::test]
async fn call_prints_results_as_json_over_tcp_and_ipc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ipc = format!("ipc://{}", dir.path().join("node.sock").display());
    for bind in ["tcp://127.0.0.1:0", ipc.as_str()] {
        let server = Server::serve_echo(bind).await;
        let ep = server.endpoint.as_str();

        // A plain word is a string; JSON is JSON.
        let out = run(&["call", ep, "echo.upper", "hi"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "\"HI\"\n");

        let out = run(&[
            "call",
            ep,
            "echo.echo",
            r#"{"a":[1,-2,2.5,null,true],"b":"x"}"#,
        ])
        .await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "{\"a\":[1,-2,2.5,null,true],\"b\":\"x\"}\n");

        // A quoted number stays a string.
        let out = run(&["call", ep, "echo.echo", "\"42\""]).await;
        assert_eq!(stdout(&out), "\"42\"\n");

        // A stream prints one JSON value per line.
        let out = run(&["call", ep, "echo.count", "4"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "0\n1\n2\n3\n");
    }
}

#[tokio::test]
async fn remote_errors_go_to_stderr_with_a_nonzero_exit() {
    let server = Server::serve_echo("tcp://127.0.0.1:0").await;
    let ep = server.endpoint.as_str();

    let out = run(&["call", ep, "echo.fail", "boom"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("EchoError: boom"), "{}", stderr(&out));

    let out = run(&["call", ep, "echo.nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("NameError"), "{}", stderr(&out));

    // Wrong argument type: the node's TypeError names the argument.
    let out = run(&["call", ep, "echo.upper", "[1]"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("TypeError"), "{}", stderr(&out));
}

#[tokio::test]
async fn deadline_and_unreachable_endpoint_fail_locally() {
    let server = Server::serve_echo("tcp://127.0.0.1:0").await;
    let out = run(&[
        "call",
        &server.endpoint,
        "echo.sleep",
        "5000",
        "--timeout",
        "0.3",
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("deadline"), "{}", stderr(&out));

    // A port nothing listens on (the server above is gone after drop; use a fresh one).
    let dead = dead_endpoint();
    let out = run(&["call", &dead, "echo.upper", "x", "--timeout", "0.5"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(&dead), "{}", stderr(&out));
}

/// Well below any verb's deadline (`call` waits 30 s by default): an invalid endpoint must
/// be refused before anything waits.
const USAGE_LIMIT: Duration = Duration::from_secs(5);

/// Runs `zmesh ARGS...`, which must exit 2 within [`USAGE_LIMIT`] saying `says`, having
/// printed nothing on stdout; returns its stderr.
async fn usage_error(args: &[&str], says: &str) -> String {
    let child = common::zmesh()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start zmesh");
    let out = timeout(USAGE_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("zmesh {args:?} did not exit within {USAGE_LIMIT:?}"))
        .expect("the child ran");
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    assert_eq!(stdout(&out), "", "{args:?}");
    stderr(&out)
}

/// Runs `zmesh ARGS...`, which must exit 2 within [`USAGE_LIMIT`] naming the bad endpoint
/// and saying what is wrong with it, having printed nothing on stdout.
async fn refused_as_usage(args: &[&str], endpoint: &str, says: &str) {
    let err = usage_error(args, says).await;
    assert!(
        err.contains(&format!("invalid value '{endpoint}'")),
        "{args:?}: {err}"
    );
}

#[tokio::test]
async fn a_missing_scheme_is_a_usage_error_at_once() {
    const NO_SCHEME: &str = "no scheme: use tcp://host:port or ipc:///path";
    refused_as_usage(
        &["call", "127.0.0.1:4242", "echo.upper", "hi"],
        "127.0.0.1:4242",
        NO_SCHEME,
    )
    .await;
    refused_as_usage(&["sub", "127.0.0.1:4245"], "127.0.0.1:4245", NO_SCHEME).await;
    refused_as_usage(
        &["serve", "--bind", "127.0.0.1:4242", "echo"],
        "127.0.0.1:4242",
        NO_SCHEME,
    )
    .await;
}

#[tokio::test]
async fn every_endpoint_argument_is_parsed_before_the_verb_runs() {
    // A valid endpoint nobody listens on beside each bad one: the verb would wait on it.
    let live = "tcp://127.0.0.1:1";
    for (args, bad, says) in [
        (
            vec!["list", "localhost:4242"],
            "localhost:4242",
            "no scheme",
        ),
        (
            vec!["ping", "inproc://x"],
            "inproc://x",
            "unsupported scheme \"inproc\"",
        ),
        (
            vec!["stats", "tcp://127.0.0.1"],
            "tcp://127.0.0.1",
            "no port",
        ),
        (
            vec!["call", "tcp://:4242", "m"],
            "tcp://:4242",
            "empty host",
        ),
        (
            vec!["pub", "tcp://127.0.0.1:99999", "t", "1"],
            "tcp://127.0.0.1:99999",
            "bad port",
        ),
        (vec!["sub", "ipc://"], "ipc://", "empty path"),
        (vec!["sub", "ipc://*"], "ipc://*", "wildcard path"),
        (
            vec!["serve", "--bind", live, "--plain-bind", "x", "echo"],
            "x",
            "no scheme",
        ),
        (
            vec!["serve", "--bind", live, "--events", "inproc://e", "kv"],
            "inproc://e",
            "unsupported scheme",
        ),
        (
            vec!["serve", "--worker-of", "host:1", "echo"],
            "host:1",
            "no scheme",
        ),
        (
            vec!["serve", "--mesh", "m", "--seed", "udp://x:1", "echo"],
            "udp://x:1",
            "unsupported scheme",
        ),
        (
            vec!["proxy", "--frontend", "nonsense", "--backend", live],
            "nonsense",
            "no scheme",
        ),
        (
            vec!["proxy", "--frontend", live, "--backend", "tcp://b"],
            "tcp://b",
            "no port",
        ),
        (
            vec![
                "proxy",
                "--frontend",
                live,
                "--backend",
                live,
                "--events-in",
                "in",
                "--events-out",
                live,
            ],
            "in",
            "no scheme",
        ),
    ] {
        refused_as_usage(&args, bad, says).await;
    }
}

#[tokio::test]
async fn list_and_ping_use_introspection() {
    let server = Server::serve_echo("tcp://127.0.0.1:0").await;
    let out = run(&["list", &server.endpoint]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    for line in [
        "echo.count(n)  Stream the integers 0..n.",
        "echo.upper(s)  Return the string upper-cased.",
    ] {
        assert!(listing.lines().any(|l| l == line), "{line:?} in {listing}");
    }

    let out = run(&["ping", &server.endpoint]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("pong from cli-test in "),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn stats_shows_per_method_figures() {
    let server = Server::serve_echo("tcp://127.0.0.1:0").await;
    let ep = server.endpoint.as_str();
    for _ in 0..3 {
        assert!(run(&["call", ep, "echo.upper", "x"]).await.status.success());
    }
    assert_eq!(
        run(&["call", ep, "echo.fail", "no"]).await.status.code(),
        Some(1)
    );

    let out = run(&["stats", ep]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.starts_with("node cli-test, up "), "{table}");
    let row = |method: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(method))
            .unwrap_or_else(|| panic!("a row for {method} in {table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(row("echo.upper")[1..4], ["3", "0", "0"]);
    assert_eq!(row("echo.fail")[1..4], ["0", "1", "0"]);
    assert!(
        !table.lines().any(|l| l.starts_with("echo.sleep")),
        "methods never called are hidden without --all: {table}"
    );
    let out = run(&["stats", ep, "--all"]).await;
    assert!(stdout(&out).lines().any(|l| l.starts_with("echo.sleep")));

    let out = run(&["stats", ep, "--json"]).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["methods"]["echo.upper"]["calls"], 3, "{report}");
    assert_eq!(report["node"], "cli-test");
}

#[tokio::test]
async fn serve_shuts_down_gracefully_on_sigterm() {
    let mut server = Server::serve_echo("tcp://127.0.0.1:0").await;
    common::terminate(&server.child);
    let status = common::exit_status(&mut server.child, "serve after SIGTERM").await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn serve_shuts_down_gracefully_on_ctrl_c_and_exits_130() {
    let mut server = Server::serve_echo("tcp://127.0.0.1:0").await;
    common::send_signal(&server.child, "INT");
    let status = common::exit_status(&mut server.child, "serve after SIGINT").await;
    assert_eq!(status.code(), Some(130), "{status:?}");
}

#[tokio::test]
async fn usage_errors_and_help() {
    let out = run(&["call"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage"), "{}", stderr(&out));
    for verb in ["call", "list", "ping", "stats", "serve", "bench"] {
        let out = run(&[verb, "--help"]).await;
        assert!(out.status.success(), "{verb} --help: {}", stderr(&out));
        assert!(stdout(&out).contains("Usage: zmesh"), "{}", stdout(&out));
    }
    let out = run(&["serve", "nosuchservice"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // An argument that starts like JSON and does not parse is refused before any connection
    // (the endpoint has nobody listening), not sent as a string.
    let dead = common::dead_endpoint();
    let out = run(&["call", &dead, "echo.echo", r#"{"a": [1, 2.5, null"#]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not valid JSON"),
        "{}",
        stderr(&out)
    );
}

// --- a stock Python zerorpc server --------------------------------------------------------

#[tokio::test]
async fn call_and_list_against_a_stock_zerorpc_server() {
    let command = common::zerorpc_venv::python_script("py_server.py").await;
    let server = Server::start(command, "py_server.py").await;
    let ep = server.endpoint.as_str();

    let out = run(&["call", ep, "hello", "zmesh"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\"Hello, zmesh\"\n");

    let out = run(&["call", ep, "count", "3"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\n1\n2\n");

    let out = run(&["call", ep, "boom", "bad"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ValueError: bad"), "{}", stderr(&out));

    let out = run(&["list", ep]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = stdout(&out);
    assert!(
        listing.lines().any(|l| l.starts_with("hello(")),
        "{listing}"
    );

    let out = run(&["ping", ep]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

// --- zmesh bench ----------------------------------------------------------------------------

#[tokio::test]
async fn bench_reports_every_mode_as_json_and_draws_the_distributions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let svg = dir.path().join("latency.svg");
    let svg_arg = svg.to_string_lossy().into_owned();
    let out = run(&[
        "bench",
        // Not a multiple of the 10 blocks the modes take turns in: the last block is short.
        "--count",
        "305",
        "--warmup",
        "20",
        "--duration",
        "15",
        "--json",
        "--plot",
        &svg_arg,
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    assert_eq!(report["payload"], 64);
    assert_eq!(report["in_flight"], 1);
    let modes = report["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().filter_map(|m| m["mode"].as_str()).collect();
    assert_eq!(names, ["raw", "tcp", "ipc", "device"]);
    for m in modes {
        assert_eq!(m["calls"], 305, "{m}");
        let f = |key: &str| m[key].as_f64().unwrap_or_else(|| panic!("{key} in {m}"));
        assert!(f("p50_us") > 0.0, "{m}");
        assert!(
            f("p50_us") <= f("p90_us") && f("p90_us") <= f("p99_us"),
            "{m}"
        );
        assert!(
            f("p99_us") <= f("p999_us") && f("p999_us") <= f("max_us"),
            "{m}"
        );
        assert!(f("calls_per_sec") > 0.0, "{m}");
        assert!(
            f("p50_vs_raw") > 0.0 && f("calls_per_sec_vs_raw") > 0.0,
            "{m}"
        );
    }
    assert_eq!(modes[0]["p50_vs_raw"], 1.0, "raw is the baseline");

    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    assert_eq!(report["build"], build);
    // This test binary and zmesh share a profile: a debug build says so.
    assert_eq!(
        stderr(&out).contains("zmesh: warning: this is a debug build"),
        cfg!(debug_assertions),
        "{}",
        stderr(&out)
    );

    let drawing = std::fs::read_to_string(&svg).expect("the plot was written");
    assert!(
        drawing.starts_with("<svg"),
        "{}",
        &drawing[..drawing.len().min(200)]
    );
    for label in [
        "raw",
        "tcp",
        "ipc",
        "device",
        "percentile",
        ">p50<",
        ">p99.99<",
        "305 calls per mode",
        &format!("{build} build"),
    ] {
        assert!(drawing.contains(label), "{label} in the plot");
    }
    assert!(!drawing.contains("NaN"), "{drawing}");
    // The plot was written in place: no temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readable")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("latency.svg")]);
}

/// The low-latency mode as a bench mode: measured beside raw and tcp in one run, every
/// call answered.
#[tokio::test]
async fn bench_measures_the_spin_mode_beside_tcp() {
    common::bench_beside_raw_and_tcp("spin").await;
}

/// The scaling mode: calls over four connections to one node, measured beside raw and tcp
/// in one run, every call answered.
#[tokio::test]
async fn bench_measures_the_four_connection_mode_beside_tcp() {
    common::bench_beside_raw_and_tcp("tcp4").await;
}

/// `--idle-connections`: every mode's server gets that many connections, each answered
/// once, then idle; the report has each mode's server CPU over the idle sample, and the
/// calls are measured with them open.
#[tokio::test]
async fn bench_holds_idle_connections_and_reports_the_servers_idle_cpu() {
    let out = common::run(&[
        "bench",
        "--modes",
        "raw,tcp",
        "--count",
        "200",
        "--warmup",
        "10",
        "--idle-connections",
        "50",
        "--json",
    ])
    .await;
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["idle_connections"], 50, "{report}");
    for mode in report["modes"].as_array().expect("modes") {
        assert_eq!(mode["calls"], 200, "{mode}");
        assert!(
            mode["idle_cpu_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{mode}"
        );
    }
}

/// `zmesh bench ARGS...` must exit 2 saying `says`, before any mode runs: the arguments ask
/// for a run far longer than [`USAGE_LIMIT`], and nothing is printed on stdout.
async fn bench_refused(args: &[&str], says: &str) {
    // A million warm-up calls per mode alone take minutes.
    let mut all = vec!["bench", "--warmup", "1000000", "--duration", "3600"];
    all.extend_from_slice(args);
    usage_error(&all, says).await;
}

#[tokio::test]
async fn bench_refuses_a_run_it_cannot_do_before_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    bench_refused(&["--count", "0"], "is not a count of calls").await;
    bench_refused(&["--plot", &at("latency.png")], "drawn as SVG").await;
    bench_refused(&["--plot", &at("latency")], "drawn as SVG").await;
    bench_refused(
        &["--plot", &at("missing/latency.svg")],
        "cannot write the plot",
    )
    .await;
    std::fs::create_dir(dir.path().join("folder.svg")).expect("mkdir");
    bench_refused(&["--plot", &at("folder.svg")], "it is a directory").await;
    // Nothing was written, not even a temporary file.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("readable")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(left, [std::ffi::OsString::from("folder.svg")]);
}

#[tokio::test]
async fn bench_pipelines_calls_and_prints_a_table() {
    let out = run(&[
        "bench",
        "--modes",
        "raw,tcp,device,raw-ipc",
        "--in-flight",
        "16",
        "--count",
        "2000",
        "--warmup",
        "50",
        "--duration",
        "15",
        "--payload",
        "512",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("512 B payload, 16 in flight"), "{table}");
    for mode in ["raw ", "tcp ", "device ", "raw-ipc "] {
        let row = table
            .lines()
            .find(|l| l.starts_with(mode))
            .unwrap_or_else(|| panic!("a {mode:?} row in {table}"));
        assert_eq!(row.split_whitespace().nth(1), Some("2000"), "{row}");
    }
}

/// `zmesh call ... | head -1`: the reader goes away after one line of a long stream. The
/// command ends quietly with exit 0 (no panic on the closed pipe); and with stdout on a full
/// disk (`/dev/full`) it fails with a clear message and exit 3.
#[tokio::test]
async fn a_closed_or_full_stdout_ends_the_command_cleanly() {
    use tokio::io::AsyncBufReadExt;
    let server = Server::serve_echo("tcp://127.0.0.1:0").await;
    let ep = server.endpoint.as_str();

    let mut child = common::zmesh()
        .args(["call", ep, "echo.count", "100000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh starts");
    let out = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(out).lines();
    let first = timeout(common::LIMIT, lines.next_line())
        .await
        .expect("a first line in time")
        .expect("readable");
    assert_eq!(first.as_deref(), Some("0"));
    drop(lines);
    let output = common::finish(child, "zmesh call | head -1").await;
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));

    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let child = common::zmesh()
        .args(["call", ep, "echo.upper", "hi"])
        .stdout(Stdio::from(full))
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh starts");
    let output = common::finish(child, "zmesh call > /dev/full").await;
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("cannot write to standard output") && !err.contains("panicked"),
        "{err}"
    );
}

/// Binary and large arguments from `@FILE`, stdin (`-`) and `base64:`, a binary result
/// printed raw (byte for byte) or as base64 JSON, and a refused source named.
#[tokio::test]
async fn call_passes_bytes_from_files_stdin_and_base64_and_prints_them_raw() {
    use tokio::io::AsyncWriteExt;

    let server = Server::serve_echo("tcp://127.0.0.1:0").await;
    let ep = server.endpoint.as_str();
    let dir = tempfile::tempdir().expect("tempdir");
    // 3 MiB of every byte value: not UTF-8, larger than any argument list allows.
    let blob: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let path = dir.path().join("blob.bin");
    std::fs::write(&path, &blob).expect("blob");
    let at_path = format!("@{}", path.display());

    let out = run(&["call", ep, "echo.echo", &at_path, "--raw"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout == blob,
        "the raw result is the file, byte for byte"
    );

    let out = run(&["call", ep, "echo.size", &at_path]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), blob.len().to_string());

    let out = run(&["call", ep, "echo.echo", "base64:/wAB"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "{\"base64\":\"/wAB\"}\n",
        "bytes that are not text"
    );

    let mut child = common::zmesh()
        .args(["call", ep, "echo.echo", "-", "--raw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh call");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(b"\x00from stdin\xff").await.expect("write");
    drop(stdin);
    let out = common::finish(child, "zmesh call -").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"\x00from stdin\xff");

    let out = run(&["call", ep, "echo.echo", "@/nonexistent/blob"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/blob"),
        "{}",
        stderr(&out)
    );
    let out = run(&["call", ep, "echo.size", "abc", "--raw"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--raw prints bytes or strings"),
        "{}",
        stderr(&out)
    );
}
