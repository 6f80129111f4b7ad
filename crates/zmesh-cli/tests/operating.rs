//! How an operator runs `zmesh serve` and `zmesh proxy`, over real processes on loopback:
//! settings from a TOML `--config` file, `ZMESH_...` variables and flags, in that order of
//! strength, with a bad key or value named; the node's limits from those flags; what a mesh
//! member advertises (never an unspecified address); and diagnostics that are JSON when
//! asked and carry no colour codes when stderr is not a terminal. Every child is killed when
//! its test ends.

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{LIMIT, Lines, Server, run, stderr, stdout, zmesh};
use tokio::time::timeout;

/// Exit status of a usage error, a bad config file among them.
const EXIT_USAGE: i32 = 2;
/// Exit status when the peer answered with an error.
const EXIT_REMOTE_ERROR: i32 = 1;
/// Exit status of a local failure: here, a node that cannot start.
const EXIT_FAILURE: i32 = 3;

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("config file");
    path.display().to_string()
}

/// `zmesh serve ARGS... echo` with `env` set, once it announced its endpoint.
async fn serve(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut command = zmesh();
    command.arg("serve").args(args).arg("echo");
    command.envs(env.iter().copied());
    Server::start(command, "zmesh serve").await
}

/// The node's name as it answers `_zerorpc_name`.
async fn name_of(endpoint: &str) -> String {
    let out = run(&["call", endpoint, "_zerorpc_name"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().trim_matches('"').to_owned()
}

/// The file sets what nothing else does; a variable beats the file; a flag beats both.
#[tokio::test]
async fn flags_beat_variables_which_beat_the_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        "node.toml",
        "bind = [\"tcp://127.0.0.1:0\"]\nname = \"from-file\"\ngrace = 1\n",
    );
    let from_file = serve(&["--config", &config], &[]).await;
    assert!(
        from_file.endpoint.starts_with("tcp://127.0.0.1:"),
        "bound from the file"
    );
    assert_eq!(name_of(&from_file.endpoint).await, "from-file");

    let from_env = serve(&["--config", &config], &[("ZMESH_NAME", "from-env")]).await;
    assert_eq!(name_of(&from_env.endpoint).await, "from-env");

    let from_flag = serve(
        &["--config", &config, "--name", "from-flag"],
        &[("ZMESH_NAME", "from-env")],
    )
    .await;
    assert_eq!(name_of(&from_flag.endpoint).await, "from-flag");

    // ZMESH_CONFIG names the file as --config does.
    let via_variable = serve(&[], &[("ZMESH_CONFIG", &config)]).await;
    assert_eq!(name_of(&via_variable.endpoint).await, "from-file");
}

/// A key that is no flag, a value the flag refuses, a list for a single flag and a file
/// that is not TOML each exit 2 naming the file and the key, before anything is bound.
#[tokio::test]
async fn a_bad_config_file_names_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (text, needle) in [
        (
            "heartbeet = 1\n",
            "key `heartbeet`: `zmesh serve` has no --heartbeet",
        ),
        (
            "heartbeat = \"soon\"\n",
            "key `heartbeat`: invalid value 'soon'",
        ),
        ("heartbeat = -1\n", "key `heartbeat`: invalid value '-1'"),
        (
            "name = [\"a\", \"b\"]\n",
            "key `name`: takes one value, not a list",
        ),
        (
            "services = [\"echo\"]\n",
            "key `services`: `zmesh serve` has no --services",
        ),
        ("bind = \n", "is not valid TOML"),
    ] {
        let config = write_config(dir.path(), "bad.toml", text);
        let out = run(&["serve", "--config", &config, "echo"]).await;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(EXIT_USAGE), "{text:?}: {said}");
        assert!(said.contains(&config), "{text:?} names the file: {said}");
        assert!(said.contains(needle), "{text:?}: {said}");
        assert!(stdout(&out).is_empty(), "{text:?}: nothing served");
    }
    let out = run(&["serve", "--config", "/nonexistent/zmesh.toml", "echo"]).await;
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot read config file /nonexistent/zmesh.toml"));
}

/// The node's limits come from the flags (and so from variables and files): a request over
/// `--max-message-size` is refused while a small one is served, and a heartbeat the node
/// cannot run from `ZMESH_HEARTBEAT` stops the start with the setting named.
#[tokio::test]
async fn node_limits_come_from_flags_variables_and_files() {
    let small = serve(
        &["--bind", "tcp://127.0.0.1:0", "--max-message-size", "1024"],
        &[],
    )
    .await;
    let ok = run(&["call", &small.endpoint, "echo.upper", "hi"]).await;
    assert!(ok.status.success(), "{}", stderr(&ok));
    let big = "x".repeat(4096);
    let refused = run(&["call", &small.endpoint, "echo.upper", &big]).await;
    assert_ne!(
        refused.status.code(),
        Some(0),
        "an oversized request is refused"
    );
    let after = run(&["call", &small.endpoint, "echo.upper", "still"]).await;
    assert!(
        after.status.success(),
        "the node serves on: {}",
        stderr(&after)
    );

    let mut command = zmesh();
    command
        .args(["serve", "--bind", "tcp://127.0.0.1:0", "echo"])
        .env("ZMESH_HEARTBEAT", "0.001")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = common::finish(command.spawn().expect("zmesh"), "serve").await;
    let said = stderr(&out);
    assert_eq!(out.status.code(), Some(EXIT_FAILURE), "{said}");
    assert!(said.contains("heartbeat"), "{said}");

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        "limits.toml",
        "bind = [\"tcp://127.0.0.1:0\"]\nmax-message-size = 1024\n",
    );
    let from_file = serve(&["--config", &config], &[]).await;
    let refused = run(&["call", &from_file.endpoint, "echo.upper", &big]).await;
    assert_eq!(
        refused.status.code(),
        Some(EXIT_REMOTE_ERROR),
        "the file's limit holds"
    );
    assert!(
        stderr(&refused).contains("MessageTooLarge"),
        "{}",
        stderr(&refused)
    );
}

/// A mesh member announces what `--advertise` says; an unspecified address is refused as
/// an advertisement, and binding one without `--advertise` is refused before anything is
/// bound (so this test never listens beyond loopback).
#[tokio::test]
async fn a_mesh_member_advertises_a_reachable_address_or_none() {
    let mesh = format!("operating-{}", std::process::id());
    let member = serve(
        &[
            "--bind",
            "tcp://127.0.0.1:0",
            "--mesh",
            &mesh,
            "--advertise",
            "tcp://127.0.0.2:7000",
        ],
        &[],
    )
    .await;
    let out = run(&["call", &member.endpoint, "_zmesh.peers", &mesh, "null"]).await;
    let peers = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        peers.contains("tcp://127.0.0.2:7000"),
        "advertised: {peers}"
    );
    assert!(
        !peers.contains(&member.endpoint),
        "the bound one is not: {peers}"
    );

    for (args, needle) in [
        (
            vec![
                "--bind",
                "tcp://127.0.0.1:0",
                "--mesh",
                &mesh,
                "--advertise",
                "tcp://0.0.0.0:7000",
            ],
            "--advertise tcp://0.0.0.0:7000: an unspecified address reaches no one",
        ),
        (
            vec!["--bind", "tcp://0.0.0.0:0", "--mesh", &mesh],
            "add --advertise",
        ),
        (
            vec!["--bind", "tcp://[::]:0", "--mesh", &mesh],
            "add --advertise",
        ),
    ] {
        let mut all = vec!["serve"];
        all.extend(args.iter().copied());
        all.push("echo");
        let out = run(&all).await;
        let said = stderr(&out);
        assert_eq!(out.status.code(), Some(EXIT_USAGE), "{args:?}: {said}");
        assert!(said.contains(needle), "{args:?}: {said}");
        assert!(stdout(&out).is_empty(), "{args:?}: nothing served");
    }
}

/// The first stderr lines of `zmesh serve` with RUST_LOG=info, until it announces itself.
async fn diagnostics(args: &[&str]) -> Vec<String> {
    let mut command = zmesh();
    command
        .arg("serve")
        .args(args)
        .args(["--bind", "tcp://127.0.0.1:0", "echo"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("zmesh serve");
    let mut out = Lines::new(child.stdout.take().expect("piped"));
    let mut err = Lines::new(child.stderr.take().expect("piped"));
    out.next("serve announcing its endpoint").await;
    let mut lines = Vec::new();
    // "node started" is logged before the endpoint line is printed.
    while let Ok(Some(line)) = timeout(LIMIT, err.next_within(LIMIT)).await {
        let started = line.contains("node started");
        lines.push(line);
        if started {
            break;
        }
    }
    lines
}

/// `--log-format json` writes one JSON object per line; text diagnostics written to a pipe
/// (as to a file or a collector) carry no ANSI colour codes.
#[tokio::test]
async fn diagnostics_are_json_when_asked_and_never_coloured_off_a_terminal() {
    let json = diagnostics(&["--log-format", "json"]).await;
    let started = json
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|v| v["fields"]["message"] == "node started")
        .unwrap_or_else(|| panic!("no JSON `node started` line in {json:?}"));
    assert_eq!(started["level"], "INFO", "{started}");
    assert!(started["fields"]["endpoints"].is_string(), "{started}");

    let text = diagnostics(&[]).await;
    assert!(
        text.iter().any(|line| line.contains("node started")),
        "{text:?}"
    );
    assert!(
        text.iter().all(|line| !line.contains('\u{1b}')),
        "no escape codes on a pipe: {text:?}"
    );
}

/// `zmesh proxy` takes its endpoints and limits from a config file as well.
#[tokio::test]
async fn the_proxy_reads_a_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        "proxy.toml",
        "frontend = \"tcp://127.0.0.1:0\"\nbackend = \"tcp://127.0.0.1:0\"\nmax-queue = 10\nname = \"edge\"\n",
    );
    let mut command = zmesh();
    command.args(["proxy", "--config", &config]);
    let proxy = Server::start(command, "zmesh proxy").await;
    assert!(
        proxy.endpoint.starts_with("tcp://127.0.0.1:"),
        "{}",
        proxy.endpoint
    );
    assert_eq!(name_of(&proxy.endpoint).await, "edge");

    let bad = write_config(dir.path(), "bad.toml", "max-queue = \"many\"\n");
    let out = run(&["proxy", "--config", &bad]).await;
    assert_eq!(out.status.code(), Some(EXIT_USAGE), "{}", stderr(&out));
    assert!(stderr(&out).contains("key `max-queue`"), "{}", stderr(&out));
}

/// `zmesh serve --mesh --dns-srv NAME --dns-server IP:PORT` gossips with the members a real
/// dnsmasq lists (skipped with a message without dnsmasq): the node learns a second node
/// it was given no address of.
#[tokio::test]
async fn serve_finds_members_through_dns_srv_records() {
    let Some(dnsmasq) = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: dnsmasq is not installed (Debian's dnsmasq-base)");
        return;
    };
    let mesh = format!("operating-dns-{}", std::process::id());
    let listed = serve(
        &[
            "--bind",
            "tcp://127.0.0.1:0",
            "--mesh",
            &mesh,
            "--name",
            "listed",
        ],
        &[],
    )
    .await;
    let port: u16 = listed
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a tcp port");
    let dir = tempfile::tempdir().expect("temp dir");
    let conf = write_config(
        dir.path(),
        "zone.conf",
        &format!(
            "srv-host=_zmesh._tcp.cli.test,listed.cli.test,{port}\nhost-record=listed.cli.test,127.0.0.1\n"
        ),
    );
    let dns_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let _dns = tokio::process::Command::new(dnsmasq)
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file=",
            "--log-facility=-",
            &format!("--port={dns_port}"),
            &format!("--conf-file={conf}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("dnsmasq starts");
    let dns_server = format!("127.0.0.1:{dns_port}");
    let finder = serve(
        &[
            "--bind",
            "tcp://127.0.0.1:0",
            "--mesh",
            &mesh,
            "--name",
            "finder",
            "--dns-srv",
            "_zmesh._tcp.cli.test",
            "--dns-server",
            &dns_server,
            "--dns-refresh",
            "0.2",
        ],
        &[],
    )
    .await;
    timeout(LIMIT, async {
        loop {
            let out = run(&["call", &finder.endpoint, "_zmesh.peers", &mesh, "null"]).await;
            if stdout(&out).contains(&listed.endpoint) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the finder learns the listed node from DNS");
}
