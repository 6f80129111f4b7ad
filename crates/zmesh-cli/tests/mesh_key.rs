//! Drives the mesh key from the shell over real processes: `zmesh keygen`, a keyed
//! `zmesh serve` (with plain endpoints and a previous key), `call`/`list`/`ping`/`stats` with
//! the right, a wrong and no key (file, `ZMESH_MESH_KEY`, `--no-mesh-key`), sealed events
//! through `serve --events`, `sub` and `pub`, and `bench --modes ...,keyed`. Every child is
//! killed when its test ends.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{LIMIT, Lines, Server, dead_endpoint, exit_status, run, stderr, stdout, zmesh};
use tokio::io::AsyncBufReadExt;
use tokio::time::timeout;

const ENV: &str = "ZMESH_MESH_KEY";

/// `zmesh keygen --out DIR/NAME`, checked to succeed; returns the file.
async fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = run(&["keygen", "--out", path.to_str().expect("utf-8 path")]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    path
}

/// Runs `zmesh ARGS...` with `ZMESH_MESH_KEY` set to `env` (or removed), within LIMIT.
async fn run_env(args: &[&str], env: Option<&str>) -> Output {
    let mut command = zmesh();
    match env {
        Some(value) => command.env(ENV, value),
        None => command.env_remove(ENV),
    };
    let child = command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh starts");
    common::finish(child, &format!("zmesh {args:?}")).await
}

/// Asserts the verb was refused by the node: `Unauthenticated` on stderr, exit 1.
fn assert_refused(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(1), "{what}: {}", stderr(out));
    assert_eq!(stdout(out), "", "{what}");
    assert!(
        stderr(out).starts_with("Unauthenticated"),
        "{what}: {}",
        stderr(out)
    );
}

/// `zmesh serve` of `services` with `extra` options, its environment free of a key; the
/// first line's last word is the keyed endpoint.
async fn serve(extra: &[&str], services: &[&str]) -> Server {
    let mut command = zmesh();
    command.env_remove(ENV);
    command.args(["serve", "--bind", "tcp://127.0.0.1:0", "--name", "keyed"]);
    command.args(extra).args(services);
    Server::start(command, "zmesh serve with a mesh key").await
}

#[tokio::test]
async fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = keygen(dir.path(), "mesh.key").await;
    let text = std::fs::read_to_string(&path).expect("the key file");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    assert_eq!(text.len(), 65, "{text:?}");
    assert!(text.ends_with('\n'));
    assert!(
        text.trim_end().chars().all(|c| c.is_ascii_hexdigit()),
        "{text:?}"
    );

    let p = path.to_str().expect("utf-8");
    let out = run(&["keygen", "--out", p]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&path).expect("kept"), text);

    // --force replaces the key and tightens a loose file's mode.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&["keygen", "--out", p, "--force"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrote a new mesh key (id "),
        "{}",
        stderr(&out)
    );
    let replaced = std::fs::read_to_string(&path).expect("replaced");
    assert_ne!(replaced, text);
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");

    // Without --out the key goes to stdout, and two keys differ.
    let a = run(&["keygen"]).await;
    let b = run(&["keygen"]).await;
    assert!(a.status.success() && b.status.success());
    assert_eq!(stdout(&a).trim_end().len(), 64, "{}", stdout(&a));
    assert_ne!(stdout(&a), stdout(&b));
}

#[tokio::test]
async fn a_keyed_serve_answers_key_holders_and_refuses_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "mesh.key").await;
    let other = keygen(dir.path(), "other.key").await;
    let key = key.to_str().expect("utf-8");
    let other = other.to_str().expect("utf-8");
    let mut server = serve(
        &["--mesh-key-file", key, "--plain-bind", "tcp://127.0.0.1:0"],
        &["echo"],
    )
    .await;
    let ep = server.endpoint.clone();
    let plain = server.announced("plain").await;
    assert!(
        plain.starts_with("tcp://127.0.0.1:") && plain != ep,
        "{plain}"
    );

    // The right key, from the file and from the environment.
    let out = run_env(
        &["call", &ep, "echo.upper", "hi", "--mesh-key-file", key],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\"HI\"\n");
    let secret = std::fs::read_to_string(key).expect("key");
    let out = run_env(&["call", &ep, "echo.count", "3"], Some(&secret)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\n1\n2\n");
    let out = run_env(&["ping", &ep, "--mesh-key-file", key], None).await;
    assert!(
        stdout(&out).starts_with("pong from keyed in "),
        "{}",
        stderr(&out)
    );
    let out = run_env(&["list", &ep], Some(&secret)).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l == "echo.upper(s)  Return the string upper-cased."),
        "{}",
        stdout(&out)
    );
    let out = run_env(&["stats", &ep, "--json", "--mesh-key-file", key], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["methods"]["echo.upper"]["calls"], 1, "{report}");

    // No key, a wrong key, and the environment's key ignored on request.
    for verb in [
        &["call", &ep, "echo.upper", "hi"][..],
        &["ping", &ep],
        &["list", &ep],
        &["stats", &ep],
    ] {
        assert_refused(
            &run_env(verb, None).await,
            &format!("{verb:?} without a key"),
        );
        let mut wrong = verb.to_vec();
        wrong.extend(["--mesh-key-file", other]);
        assert_refused(
            &run_env(&wrong, None).await,
            &format!("{verb:?} with another key"),
        );
    }
    let out = run_env(
        &["call", &ep, "echo.upper", "hi", "--no-mesh-key"],
        Some(&secret),
    )
    .await;
    assert_refused(&out, "--no-mesh-key");

    // The node counted the refusals (the right key reads them).
    let out = run_env(&["stats", &ep, "--json", "--mesh-key-file", key], None).await;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let refused = report["counters"]["unauthenticated"].as_u64();
    assert!(refused.is_some_and(|n| n >= 9), "{report}");

    // The plain endpoint serves unkeyed zerorpc beside the keyed one.
    let out = run_env(&["call", &plain, "echo.upper", "plain"], None).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\"PLAIN\"\n");

    common::terminate(&server.child);
    let status = common::exit_status(&mut server.child, "keyed serve after SIGTERM").await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn bad_keys_are_usage_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too short\n").expect("write");
    let short = short.to_str().expect("utf-8");
    let missing = dir.path().join("missing.key");
    let missing = missing.to_str().expect("utf-8");
    let ep = common::dead_endpoint();
    let cases: [(&[&str], Option<&str>, &str); 7] = [
        (
            &["call", &ep, "echo.upper", "--mesh-key-file", missing],
            None,
            "cannot read mesh key file",
        ),
        (
            &["ping", &ep, "--mesh-key-file", short],
            None,
            "at least 16 bytes",
        ),
        (&["list", &ep], Some(""), "set but empty"),
        (&["stats", &ep], Some("short"), "at least 16 bytes"),
        (
            &["sub", &ep, "--mesh-key-file", missing],
            None,
            "cannot read mesh key file",
        ),
        (
            &["pub", &ep, "t", "1", "--mesh-key-file", short],
            None,
            "at least 16 bytes",
        ),
        (
            &[
                "serve",
                "--bind",
                "tcp://127.0.0.1:0",
                "--mesh-key-file",
                missing,
                "echo",
            ],
            None,
            "cannot read mesh key file",
        ),
    ];
    for (args, env, message) in cases {
        let out = run_env(args, env).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    // Options that need each other or cannot go together.
    let key = keygen(dir.path(), "mesh.key").await;
    let key = key.to_str().expect("utf-8");
    for args in [
        &["serve", "--previous-key-file", key, "echo"][..],
        &[
            "serve",
            "--mesh",
            "m",
            "--plain-bind",
            "tcp://127.0.0.1:0",
            "echo",
        ],
        &["call", &ep, "m", "--mesh-key-file", key, "--no-mesh-key"],
        &[
            "serve",
            "--previous-key-file",
            key,
            "--previous-until",
            "@4102444800",
            "echo",
        ],
    ] {
        let out = run_env(args, None).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

/// `zmesh call EP echo.upper r --mesh-key-file KEY`.
async fn upper_with(ep: &str, key: &str) -> Output {
    run_env(
        &["call", ep, "echo.upper", "r", "--mesh-key-file", key],
        None,
    )
    .await
}

/// `@SECONDS` since the Unix epoch, `from_now` from now (rounded up to a second).
fn epoch_arg(from_now: Duration) -> String {
    let at = std::time::SystemTime::now() + from_now;
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch")
        .as_secs()
        + 1;
    format!("@{secs}")
}

#[tokio::test]
async fn rotation_accepts_the_previous_key_until_an_absolute_time_that_restarts_keep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = keygen(dir.path(), "old.key").await;
    let new = keygen(dir.path(), "new.key").await;
    let stranger = keygen(dir.path(), "stranger.key").await;
    let (old, new, stranger) = (
        old.to_str().expect("utf-8"),
        new.to_str().expect("utf-8"),
        stranger.to_str().expect("utf-8"),
    );
    let far = epoch_arg(Duration::from_secs(600));
    let server = serve(
        &[
            "--mesh-key-file",
            new,
            "--previous-key-file",
            old,
            "--previous-until",
            &far,
        ],
        &["echo"],
    )
    .await;
    let ep = server.endpoint.as_str();
    for key in [new, old] {
        let out = upper_with(ep, key).await;
        assert!(out.status.success(), "{key}: {}", stderr(&out));
        assert_eq!(stdout(&out), "\"R\"\n");
    }
    let out = upper_with(ep, stranger).await;
    assert_refused(&out, "a key that is neither");
    drop(server);

    // The attack on the old `--previous-grace SECS`: it counted from each start, so a node
    // restarted by its supervisor accepted the retired key again for a whole new grace.
    // Now the end is a wall-clock time: a node killed (-9) and started again with the same
    // command line after that time refuses the old key at once.
    // Far enough ahead for a slow machine to start the node and call it before.
    let until = epoch_arg(Duration::from_secs(3));
    let args = [
        "--mesh-key-file",
        new,
        "--previous-key-file",
        old,
        "--previous-until",
        &until,
    ];
    let mut first = serve(&args, &["echo"]).await;
    let out = upper_with(&first.endpoint, old).await;
    assert!(out.status.success(), "before the time: {}", stderr(&out));
    first.child.start_kill().expect("kill -9");
    let _ = exit_status(&mut first.child, "the killed node").await;
    let end = parse_epoch(&until);
    // Waiting for a wall-clock time is the point of this check; bounded (4 s at most).
    while std::time::SystemTime::now() <= end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = serve(&args, &["echo"]).await;
    let out = upper_with(&restarted.endpoint, old).await;
    assert_refused(&out, "the previous key after its time, across a restart");
    assert!(
        stderr(&out).contains("grace period is over"),
        "{}",
        stderr(&out)
    );
    let out = upper_with(&restarted.endpoint, new).await;
    assert!(out.status.success(), "the new key: {}", stderr(&out));
}

fn parse_epoch(arg: &str) -> std::time::SystemTime {
    let secs: u64 = arg.trim_start_matches('@').parse().expect("seconds");
    std::time::UNIX_EPOCH + Duration::from_secs(secs)
}

/// The event inside a sealed `frame`, opened with the secret in `key_file`.
fn open_with(key_file: &str, frame: &bytes::Bytes) -> zmesh_core::wire::Event {
    use zmesh_proto::seal::envelope;
    let text = std::fs::read_to_string(key_file).expect("key file");
    let key = envelope::SealKey::derive(text.trim().as_bytes());
    let parsed = envelope::parse(frame).expect("sealed");
    let event = envelope::open(&key, frame, &parsed).expect("opens with the key");
    zmesh_core::wire::decode_event(&event).expect("decodes")
}

/// Sends `frame` to `endpoint` from a raw DEALER and returns the reply's event frame.
async fn raw_exchange(endpoint: &str, frame: bytes::Bytes) -> bytes::Bytes {
    use zeromq::{Socket, SocketRecv, SocketSend};
    let mut dealer = zeromq::DealerSocket::new();
    timeout(LIMIT, dealer.connect(endpoint))
        .await
        .expect("connect within the limit")
        .expect("connects");
    let message = zeromq::ZmqMessage::try_from(vec![bytes::Bytes::new(), frame]).expect("frames");
    timeout(LIMIT, dealer.send(message))
        .await
        .expect("send within the limit")
        .expect("sent");
    let reply = timeout(LIMIT, dealer.recv())
        .await
        .expect("a reply within the limit")
        .expect("recv");
    reply.into_vec().pop().expect("event frame")
}

#[tokio::test]
async fn a_request_captured_before_a_kill_9_is_refused_by_the_restarted_node() {
    use zeromq::{Socket, SocketRecv};
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "mesh.key").await;
    let key = key.to_str().expect("utf-8");
    // Capture: `zmesh call` with the key, pointed at a trap that records what it sends.
    let mut trap = zeromq::RouterSocket::new();
    let trap_ep = timeout(LIMIT, trap.bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind within the limit")
        .expect("binds")
        .to_string();
    let mut call = zmesh();
    call.env_remove(ENV)
        .args([
            "call",
            &trap_ep,
            "echo.upper",
            "captured",
            "--mesh-key-file",
            key,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _caller = call.spawn().expect("zmesh call starts");
    let captured = loop {
        let message = timeout(LIMIT, trap.recv())
            .await
            .expect("a request within the limit")
            .expect("recv");
        let frame = message.into_vec().pop().expect("event frame");
        // Skip the client's `_zerorpc_ping` probe.
        if open_with(key, &frame).name.as_ref() == "echo.upper" {
            break frame;
        }
    };
    let captured_at = std::time::Instant::now();
    let mut node = serve(&["--mesh-key-file", key], &["echo"]).await;
    let reply = raw_exchange(&node.endpoint, captured.clone()).await;
    assert_eq!(open_with(key, &reply).name.as_ref(), "OK", "served once");
    node.child.start_kill().expect("kill -9");
    let _ = exit_status(&mut node.child, "the killed node").await;
    // The restarted node refuses what was sealed before it started, less the default clock
    // skew (2 s): waiting that out is the point of this check (bounded, about 3 s).
    while captured_at.elapsed() < Duration::from_millis(2_500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restarted = serve(&["--mesh-key-file", key], &["echo"]).await;
    let reply = raw_exchange(&restarted.endpoint, captured).await;
    let event = open_or_plain(&reply);
    assert_eq!(event.name.as_ref(), "ERR", "the replay is refused");
    let (name, message, _) = zmesh_core::wire::parse_err_args(&event.args);
    assert_eq!(name, "Replayed");
    assert!(
        message.contains("before this receiver started"),
        "{message}"
    );
}

/// A refusal goes out unsealed: decode it as it is.
fn open_or_plain(frame: &bytes::Bytes) -> zmesh_core::wire::Event {
    assert!(
        !zmesh_core::trust::envelope::is_sealed(frame),
        "refusals are unsealed"
    );
    zmesh_core::wire::decode_event(frame).expect("decodes")
}

#[tokio::test]
async fn mesh_without_a_key_warns_that_discovery_is_unauthenticated() {
    let mut command = zmesh();
    command.env_remove(ENV);
    command.args([
        "serve",
        "--bind",
        "tcp://127.0.0.1:0",
        "--mesh",
        "open",
        "--seed",
        &dead_endpoint(),
        "echo",
    ]);
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("zmesh serve starts");
    let mut err = tokio::io::BufReader::new(child.stderr.take().expect("piped")).lines();
    // Other start-up lines (the descriptor limit) may come first.
    let warning = tokio::time::timeout(LIMIT, async {
        while let Some(line) = err.next_line().await.expect("stderr readable") {
            if line.contains("discovery is unauthenticated") {
                return Some(line);
            }
        }
        None
    })
    .await
    .expect("the warning within the limit");
    assert!(warning.is_some(), "stderr ended without the warning");
}

#[tokio::test]
async fn a_stock_zerorpc_client_is_served_on_the_plain_endpoint_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "mesh.key").await;
    let mut server = serve(
        &[
            "--mesh-key-file",
            key.to_str().expect("utf-8"),
            "--plain-bind",
            "tcp://127.0.0.1:0",
        ],
        &["echo"],
    )
    .await;
    let plain = server.announced("plain").await;
    let script = "\
import sys, zerorpc
c = zerorpc.Client(timeout=10)
c.connect(sys.argv[1])
try:
    print(c('echo.upper', 'stock'))
except zerorpc.RemoteError as e:
    print('RemoteError', e.name)
";
    for (endpoint, expected) in [
        (plain.as_str(), "STOCK"),
        (server.endpoint.as_str(), "RemoteError Unauthenticated"),
    ] {
        let child = common::zerorpc_venv::python_code(script)
            .await
            .arg(endpoint)
            .spawn()
            .expect("python starts");
        let out = common::finish(child, "the stock zerorpc client").await;
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out).trim(), expected, "{endpoint}");
    }
}

/// `zmesh call EP kv.put NAME N` with the key, checked to succeed.
async fn put(ep: &str, name: &str, n: u64, key: &str) {
    let value = n.to_string();
    let args = ["call", ep, "kv.put", name, &value, "--mesh-key-file", key];
    let out = run_env(&args, None).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs `zmesh call` of kv.put with the key until `lines` yields a line (bounded by LIMIT):
/// how a test waits for a subscriber to be in place without knowing when its subscription
/// reached the publisher.
async fn put_until_a_line(ep: &str, key: &str, lines: &mut Lines) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline {
        n += 1;
        put(ep, "k", n, key).await;
        if let Some(line) = lines.next_within(Duration::from_millis(20)).await {
            return line;
        }
    }
    panic!("no event reached the subscriber within {LIMIT:?}");
}

/// `zmesh sub ENDPOINT PREFIX --count 1 --timeout SECS`, with `key` when given (never the
/// environment's), stdout and stderr piped.
fn spawn_sub(endpoint: &str, prefix: &str, secs: &str, key: Option<&str>) -> tokio::process::Child {
    let mut sub = zmesh();
    sub.env_remove(ENV)
        .args(["sub", endpoint, prefix, "--count", "1", "--timeout", secs]);
    if let Some(key) = key {
        sub.args(["--mesh-key-file", key]);
    }
    sub.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh sub starts")
}

/// The number before `what` in a `zmesh sub` summary line.
fn summary_count(summary: &str, what: &str) -> u64 {
    let before = summary
        .split(&format!(" {what}"))
        .next()
        .unwrap_or_else(|| panic!("{what} in {summary}"));
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count before {what} in {summary}"))
}

#[tokio::test]
async fn sealed_events_reach_keyed_subscribers_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "mesh.key").await;
    let key = key.to_str().expect("utf-8");
    let mut server = serve(
        &["--events", "tcp://127.0.0.1:0", "--mesh-key-file", key],
        &["kv"],
    )
    .await;
    let events = server.announced("events").await;

    // A keyed subscriber prints kv's changes.
    let mut keyed = spawn_sub(&events, "kv.changed.", "20", Some(key));
    let mut lines = Lines::new(keyed.stdout.take().expect("piped"));
    let line = put_until_a_line(&server.endpoint, key, &mut lines).await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(event["kind"], "event", "{line}");
    assert_eq!(event["topic"], "kv.changed.k", "{line}");
    assert_eq!(event["payload"]["op"], "put", "{line}");
    let status = common::exit_status(&mut keyed, "keyed sub after --count 1").await;
    assert!(status.success(), "{status:?}");

    // An unkeyed subscriber receives only sealed frames it cannot read: it prints nothing,
    // times out (exit 3) and counts them. kv keeps changing for its whole (bounded) life.
    let unkeyed = spawn_sub(&events, "kv.changed.", "2", None);
    let mut waiting = std::pin::pin!(common::finish(unkeyed, "unkeyed sub"));
    let mut n = 0u64;
    let out = loop {
        n += 1;
        put(&server.endpoint, "u", n, key).await;
        if let Ok(out) = timeout(Duration::from_millis(20), &mut waiting).await {
            break out;
        }
    };
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    let summary = stderr(&out);
    let summary = summary
        .lines()
        .find(|l| l.contains(" events, "))
        .unwrap_or_else(|| panic!("a summary in {summary}"));
    assert!(summary.starts_with("zmesh: 0 events"), "{summary}");
    assert!(summary_count(summary, "undecodable") >= 1, "{summary}");
}

#[tokio::test]
async fn pub_seals_its_event_for_keyed_subscribers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "mesh.key").await;
    let key = key.to_str().expect("utf-8");

    // A keyed pub, bound; a keyed sub connects and receives the event.
    for (pub_key, sub_key, received) in [(Some(key), Some(key), true), (None, Some(key), false)] {
        let mut publisher = zmesh();
        publisher.env_remove(ENV).args([
            "pub",
            "--bind",
            "tcp://127.0.0.1:0",
            "orders.created",
            r#"{"id": 7}"#,
        ]);
        if let Some(k) = pub_key {
            publisher.args(["--mesh-key-file", k]);
        }
        let mut publisher = Server::start(publisher, "zmesh pub --bind").await;
        let secs = if received { "20" } else { "3" };
        let sub = spawn_sub(&publisher.endpoint, "orders.", secs, sub_key);
        let status = common::exit_status(&mut publisher.child, "zmesh pub").await;
        assert!(status.success(), "{status:?}");
        let out = common::finish(sub, "zmesh sub").await;
        if received {
            assert!(out.status.success(), "{}", stderr(&out));
            let line: serde_json::Value =
                serde_json::from_str(stdout(&out).trim()).expect("one JSON line");
            assert_eq!(line["topic"], "orders.created");
            assert_eq!(line["payload"]["id"], 7);
        } else {
            // The unsealed event was refused and counted; nothing printed.
            assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
            assert_eq!(stdout(&out), "");
            assert!(
                stderr(&out).contains("1 refused by the mesh key"),
                "{}",
                stderr(&out)
            );
        }
    }
}

#[tokio::test]
async fn bench_measures_the_keyed_mode_beside_raw() {
    let out = run_env(
        &[
            "bench",
            "--modes",
            "raw,tcp,keyed",
            "--count",
            "300",
            "--warmup",
            "20",
            "--duration",
            "15",
            "--json",
        ],
        None,
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let modes = report["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().filter_map(|m| m["mode"].as_str()).collect();
    assert_eq!(names, ["raw", "tcp", "keyed"]);
    let keyed = &modes[2];
    assert_eq!(keyed["calls"], 300, "{keyed}");
    assert!(
        keyed["p50_vs_raw"].as_f64().is_some_and(|r| r > 0.0),
        "{keyed}"
    );
    assert!(
        keyed["calls_per_sec_vs_raw"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{keyed}"
    );
}

/// Polls `done` every 10 ms until it holds, for at most LIMIT: discovery has no event a
/// test can await for "a gossip round happened".
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_keyed_mesh_gossips_with_key_holders_only() {
    use zmesh_core::MeshKey;
    use zmesh_core::mesh::{Discovery, DiscoveryConfig, MeshClient, MeshClientConfig};

    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = keygen(dir.path(), "mesh.key").await;
    let key_path = key_file.to_str().expect("utf-8");
    let mesh = format!("cli-keyed-{}", std::process::id());
    let mut first = serve(&["--mesh", &mesh, "--mesh-key-file", key_path], &["echo"]).await;
    let line = first.lines.next("the mesh line").await;
    assert!(line.starts_with(&format!("mesh {mesh} peer ")), "{line}");
    let seed = first.endpoint.clone();
    // The second member knows the mesh only through sealed gossip with the first.
    let second = serve(
        &[
            "--mesh",
            &mesh,
            "--seed",
            &seed,
            "--mesh-key-file",
            key_path,
        ],
        &["echo"],
    )
    .await;

    let key = MeshKey::from_file(&key_file).expect("the key loads");
    let keyed = Discovery::start(
        DiscoveryConfig::new(mesh.clone())
            .seed(seed.clone())
            .gossip_interval(Duration::from_millis(100))
            .mesh_key(key.clone()),
    )
    .await
    .expect("discovery starts");
    let client = MeshClient::new(keyed, MeshClientConfig::default().mesh_key(key));
    eventually("both keyed members found by gossip", || {
        client.live_peers("echo").len() == 2
    })
    .await;
    let answer: String = timeout(LIMIT, client.call("echo.upper", ("sealed",)))
        .await
        .expect("in time")
        .expect("called by name with the key");
    assert_eq!(answer, "SEALED");

    // Gossip without the key is refused: the exchange fails and nobody is learnt.
    let unkeyed = Discovery::start(
        DiscoveryConfig::new(mesh.clone())
            .seed(seed)
            .gossip_interval(Duration::from_millis(100)),
    )
    .await
    .expect("discovery starts");
    eventually("a refused gossip exchange", || {
        unkeyed.stats().gossip_failed >= 1
    })
    .await;
    assert_eq!(unkeyed.stats().gossip_ok, 0, "{:?}", unkeyed.stats());
    assert!(unkeyed.peers().is_empty(), "{:?}", unkeyed.peers());
    drop(second);
}

#[tokio::test]
async fn a_keyed_proxy_routes_key_holders_to_keyed_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = keygen(dir.path(), "mesh.key").await;
    let key = key.to_str().expect("utf-8");
    let mut proxy = zmesh();
    proxy
        .env_remove(ENV)
        .args(["proxy", "--name", "keyed-proxy", "--mesh-key-file", key])
        .args(["--frontend", "tcp://127.0.0.1:0"])
        .args(["--backend", "tcp://127.0.0.1:0"]);
    let mut proxy = Server::start(proxy, "zmesh proxy with a mesh key").await;
    let frontend = proxy.endpoint.clone();
    let backend = proxy.announced("backend").await;
    let mut worker = zmesh();
    worker.env_remove(ENV).args([
        "serve",
        "--worker-of",
        &backend,
        "--mesh-key-file",
        key,
        "echo",
    ]);
    let worker = Server::start(worker, "zmesh serve --worker-of with a mesh key").await;

    // The worker's sealed announcement reaches the device asynchronously and nothing outside
    // the device reports it: call (bounded) until the device routes echo.
    let mut routed = None;
    for _ in 0..100 {
        let out = run_env(
            &[
                "call",
                &frontend,
                "echo.upper",
                "hi",
                "--mesh-key-file",
                key,
                "--timeout",
                "2",
            ],
            None,
        )
        .await;
        if out.status.success() {
            routed = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = routed.expect("the keyed device never routed echo to its keyed worker");
    assert_eq!(stdout(&out), "\"HI\"\n");
    let out = run_env(
        &["call", &frontend, "echo.count", "3", "--mesh-key-file", key],
        None,
    )
    .await;
    assert_eq!(stdout(&out), "0\n1\n2\n", "{}", stderr(&out));

    // No key: the device itself refuses, before any worker sees the request.
    let out = run_env(&["call", &frontend, "echo.upper", "hi"], None).await;
    assert_refused(&out, "call through the keyed proxy without the key");
    drop(worker);
    drop(proxy);
}

/// `zmesh proxy --jobs` with keys: the queue's node joins the backend with the backend's
/// key (the backend key, else the mesh key) and dispatches through the frontend with the
/// mesh key, so jobs run on keyed workers; with a mesh key, a caller without it is refused.
#[tokio::test]
async fn a_keyed_proxy_holds_a_queue_for_its_keyed_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mesh = keygen(dir.path(), "mesh.key").await;
    let backend_only = keygen(dir.path(), "backend.key").await;
    let (mesh, backend_only) = (
        mesh.to_str().expect("utf-8"),
        backend_only.to_str().expect("utf-8"),
    );
    // (the proxy's key flag, the worker's key, the caller's key flags)
    let cases: [(&str, &str, Vec<&str>); 2] = [
        ("--mesh-key-file", mesh, vec!["--mesh-key-file", mesh]),
        ("--backend-key-file", backend_only, vec![]),
    ];
    for (n, (flag, worker_key, caller)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("jobs-{n}"));
        let mut proxy = zmesh();
        proxy
            .env_remove(ENV)
            .args(["proxy", flag, worker_key])
            .args(["--frontend", "tcp://127.0.0.1:0"])
            .args(["--backend", "tcp://127.0.0.1:0"])
            .args(["--jobs", data.to_str().expect("utf-8")]);
        let mut proxy = Server::start(proxy, "zmesh proxy --jobs with a key").await;
        let frontend = proxy.endpoint.clone();
        let backend = proxy.announced("backend").await;
        let mut worker = zmesh();
        worker.env_remove(ENV).args([
            "serve",
            "--worker-of",
            &backend,
            "--mesh-key-file",
            worker_key,
            "echo",
        ]);
        let _worker = Server::start(worker, "a keyed worker").await;

        // `zmesh jobs`' key flags come before the verb.
        let mut submit = vec!["jobs"];
        submit.extend(caller.iter().copied());
        submit.extend(["submit", &frontend, "echo.upper", "sealed"]);
        // Retried quickly until the worker's announcement reaches the device.
        submit.extend([
            "--options",
            r#"{"max_attempts": 10000, "backoff_base_ms": 50, "backoff_cap_ms": 200}"#,
        ]);
        let out = run_env(&submit, None).await;
        assert!(out.status.success(), "{flag}: {}", stderr(&out));
        let ack: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
        let id = ack["id"].to_string();
        let mut result = vec!["jobs"];
        result.extend(caller.iter().copied());
        result.extend(["result", &frontend, &id, "--wait", "10"]);
        let out = run_env(&result, None).await;
        assert!(
            stdout(&out).contains(r#""result":"SEALED""#),
            "{flag}: {} {}",
            stdout(&out),
            stderr(&out)
        );
        if !caller.is_empty() {
            let out = run_env(&["jobs", "stats", &frontend], None).await;
            assert_refused(&out, "jobs through the keyed proxy without the key");
        }
    }
}
