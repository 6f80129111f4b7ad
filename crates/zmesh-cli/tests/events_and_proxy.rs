//! Drives `zmesh proxy`, `zmesh sub` and `zmesh pub` as real processes over loopback: the
//! proxy's announced endpoints, calls through it and its shutdown on SIGTERM; events through
//! its forwarder, topic filtering, a publisher that starts before its subscriber, events with
//! sequence numbers and a publisher restart from an in-process `Publisher`; and the exit
//! codes and messages of every failure; the warning an unkeyed backend prints, and a
//! `--backend-key-file` proxy serving unkeyed clients from a keyed worker. Children are
//! killed when their test ends.

mod common;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value as Json, json};
use tokio::process::Child;
use zmesh_core::{Client, Node, Publisher};

use common::{ChildLog, LIMIT, Lines, dead_endpoint, finish, run, stderr, stdout, zmesh};

/// A running `zmesh proxy` and the endpoints it announced.
struct Proxy {
    child: Child,
    /// Its stderr, shown only if the test fails.
    _log: ChildLog,
    frontend: String,
    backend: String,
    events_in: String,
    events_out: String,
}

impl Proxy {
    async fn start() -> Self {
        let mut child = zmesh()
            .args(["proxy", "--name", "cli-proxy"])
            .args([
                "--frontend",
                "tcp://127.0.0.1:0",
                "--backend",
                "tcp://127.0.0.1:0",
            ])
            .args(["--events-in", "tcp://127.0.0.1:0"])
            .args(["--events-out", "tcp://127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("zmesh proxy starts");
        let log = ChildLog::capture(&mut child, "zmesh proxy");
        let mut lines = Lines::new(child.stdout.take().expect("piped"));
        let mut endpoint = async |role: &str| {
            let line = lines.next("zmesh proxy announcing its endpoints").await;
            let (got, endpoint) = line.split_once(' ').expect("ROLE ENDPOINT");
            assert_eq!(got, role, "{line}");
            assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{line}");
            assert!(!endpoint.ends_with(":0"), "the real port is shown: {line}");
            endpoint.to_owned()
        };
        let frontend = endpoint("frontend").await;
        let backend = endpoint("backend").await;
        let events_in = endpoint("events-in").await;
        let events_out = endpoint("events-out").await;
        Self {
            child,
            _log: log,
            frontend,
            backend,
            events_in,
            events_out,
        }
    }
}

/// Starts `zmesh sub ARGS...` with stdout and stderr piped.
fn spawn_sub(args: &[&str]) -> Child {
    zmesh()
        .arg("sub")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh sub starts")
}

/// The JSON lines a `zmesh sub` printed.
fn json_lines(out: &std::process::Output) -> Vec<Json> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

fn untracked_event(topic: &str, payload: Json) -> Json {
    json!({"kind": "event", "topic": topic, "payload": payload, "publisher": null, "seq": null})
}

#[tokio::test]
async fn proxy_announces_its_endpoints_routes_calls_and_stops_on_sigterm() {
    let mut proxy = Proxy::start().await;
    let worker = Node::builder()
        .worker_of(proxy.backend.clone())
        .service(zmesh_echo::service())
        .start()
        .await
        .expect("the worker starts");

    // The worker's announcement reaches the device asynchronously, and nothing outside the
    // device reports it: call (bounded, in-process) until the device routes echo.
    let client = Client::new(proxy.frontend.clone());
    let mut routed = false;
    for _ in 0..500 {
        if client.call::<String>("echo.upper", ("x",)).await.is_ok() {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(routed, "the device never routed echo to its worker");
    drop(client);

    let out = run(&["call", &proxy.frontend, "echo.upper", "hi"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "\"HI\"\n");
    let out = run(&["call", &proxy.frontend, "echo.count", "3"]).await;
    assert_eq!(stdout(&out), "0\n1\n2\n", "{}", stderr(&out));
    let out = run(&["ping", &proxy.frontend]).await;
    assert!(
        stdout(&out).starts_with("pong from cli-proxy in "),
        "{}",
        stdout(&out)
    );

    common::terminate(&proxy.child);
    let status = common::exit_status(&mut proxy.child, "proxy after SIGTERM").await;
    assert!(status.success(), "{status:?}");
    // Shut down means closed: the frontend port can be bound again at once.
    let address = proxy.frontend.trim_start_matches("tcp://");
    std::net::TcpListener::bind(address).expect("the frontend port is free again");
    worker.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn proxy_reports_bad_endpoints() {
    let out = run(&[
        "proxy",
        "--frontend",
        "nonsense",
        "--backend",
        "tcp://127.0.0.1:0",
    ])
    .await;
    // Refused as a usage error, before anything is bound.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "invalid value 'nonsense' for '--frontend <FRONTEND>': no scheme: use tcp://host:port or ipc:///path"
        ),
        "{}",
        stderr(&out)
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = format!("tcp://{}", taken.local_addr().expect("addr"));
    let out = run(&[
        "proxy",
        "--frontend",
        &taken,
        "--backend",
        "tcp://127.0.0.1:0",
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot bind {taken}")),
        "{}",
        stderr(&out)
    );

    // Half a forwarder is a usage error.
    let out = run(&[
        "proxy",
        "--frontend",
        "tcp://127.0.0.1:0",
        "--backend",
        "tcp://127.0.0.1:0",
        "--events-in",
        "tcp://127.0.0.1:0",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--events-out"), "{}", stderr(&out));
}

#[tokio::test]
async fn events_pass_through_the_proxy_filtered_by_topic() {
    let proxy = Proxy::start().await;
    let (events_in, events_out) = (proxy.events_in.as_str(), proxy.events_out.as_str());

    // Each `zmesh pub` returns only once the subscription of its topic has reached it, so
    // a delivered "ready" event proves that subscriber is in place at the proxy.
    let orders = spawn_sub(&[events_out, "orders.", "--count", "2", "--timeout", "20"]);
    let out = run(&["pub", events_in, "orders.ready", "true"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("published \"orders.ready\""),
        "{}",
        stderr(&out)
    );
    let stock = spawn_sub(&[events_out, "stock.", "--count", "1", "--timeout", "20"]);
    let out = run(&["pub", events_in, "stock.ready", "1.5"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let payload = r#"{"id":7,"items":["book",null],"paid":false}"#;
    let out = run(&["pub", events_in, "orders.created", payload]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let out = finish(orders, "sub orders.").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json_lines(&out),
        [
            untracked_event("orders.ready", json!(true)),
            untracked_event(
                "orders.created",
                json!({"id": 7, "items": ["book", null], "paid": false})
            ),
        ]
    );
    assert!(
        stderr(&out).contains("2 events, 0 gap reports"),
        "{}",
        stderr(&out)
    );
    let out = finish(stock, "sub stock.").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json_lines(&out),
        [untracked_event("stock.ready", json!(1.5))]
    );
}

#[tokio::test]
async fn pub_waits_for_a_subscriber_that_starts_after_it() {
    let proxy = Proxy::start().await;
    // The slow-joiner case: the publisher is up first. It must not send into the void.
    let publisher = zmesh()
        .args(["pub", &proxy.events_in, "late.news", r#""hello""#])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh pub starts");
    let subscriber = spawn_sub(&[
        &proxy.events_out,
        "late.",
        "--count",
        "1",
        "--timeout",
        "20",
    ]);
    let out = finish(publisher, "pub").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = finish(subscriber, "sub").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json_lines(&out),
        [untracked_event("late.news", json!("hello"))]
    );
}

#[tokio::test]
async fn pub_with_bind_waits_for_a_connecting_subscriber() {
    let mut publisher = zmesh()
        .args([
            "pub",
            "--bind",
            "tcp://127.0.0.1:0",
            "direct.hello",
            "[1,2]",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh pub starts");
    let _log = ChildLog::capture(&mut publisher, "zmesh pub --bind");
    let mut lines = Lines::new(publisher.stdout.take().expect("piped"));
    let line = lines.next("pub --bind announcing its endpoint").await;
    let endpoint = line
        .strip_prefix("bound ")
        .expect("bound ENDPOINT")
        .to_owned();
    assert!(
        endpoint.starts_with("tcp://127.0.0.1:") && !endpoint.ends_with(":0"),
        "{line}"
    );
    let subscriber = spawn_sub(&[&endpoint, "direct.", "--count", "1", "--timeout", "20"]);
    let status = common::exit_status(&mut publisher, "pub --bind").await;
    assert!(status.success(), "{status:?}");
    let out = finish(subscriber, "sub").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json_lines(&out),
        [untracked_event("direct.hello", json!([1, 2]))]
    );
}

#[tokio::test]
async fn pub_failures_have_clear_messages_and_exit_codes() {
    // Not JSON: a usage error, before anything is sent.
    let out = run(&["pub", "tcp://127.0.0.1:1", "t", "{oops"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));

    // Not an endpoint: a usage error too.
    let out = run(&["pub", "nonsense", "t", "1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid value 'nonsense' for '<ENDPOINT>': no scheme"),
        "{}",
        stderr(&out)
    );

    let out = run(&["pub", "tcp://127.0.0.1:1", "_zmesh.sync.x", "1"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("is reserved"), "{}", stderr(&out));

    let dead = dead_endpoint();
    let out = run(&["pub", &dead, "t", "1", "--timeout", "0.5"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot connect to {dead}")),
        "{}",
        stderr(&out)
    );

    // Reachable, but nobody subscribes to the topic: nothing is sent, and it says so.
    let proxy = Proxy::start().await;
    // The subscribers' side of the proxy is no place to publish.
    let out = run(&["pub", &proxy.events_out, "t", "1"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not compatible"), "{}", stderr(&out));
    let out = run(&[
        "pub",
        &proxy.events_in,
        "nobody.listens",
        "1",
        "--timeout",
        "0.5",
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no subscriber of \"nobody.listens\""),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("nothing published"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn sub_failures_and_timeouts() {
    let dead = dead_endpoint();
    let out = run(&["sub", &dead, "--timeout", "0.5"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("cannot subscribe: cannot connect to {dead}")),
        "{}",
        stderr(&out)
    );

    let out = run(&["sub", "inproc://x"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unsupported scheme \"inproc\""),
        "{}",
        stderr(&out)
    );

    let publisher = Publisher::bind("tcp://127.0.0.1:0").await.expect("binds");
    let endpoint = publisher.endpoint().to_owned();
    // --count not reached by --timeout: a failure.
    let out = run(&["sub", &endpoint, "--count", "1", "--timeout", "0.3"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("timed out: 0 of 1 events"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
    // --timeout alone bounds a listening session: a normal end.
    let out = run(&["sub", &endpoint, "--timeout", "0.3"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 events"), "{}", stderr(&out));

    let out = run(&["sub", &endpoint, "--count", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Publishes `topic` events from `publisher` every few ms until `lines` yields a line, and
/// returns it (bounded by LIMIT): how a test waits for a subscriber to be in place without
/// knowing when its subscription reached the publisher.
async fn publish_until_a_line(publisher: &Publisher, topic: &str, lines: &mut Lines) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut n = 0u64;
    while tokio::time::Instant::now() < deadline {
        n += 1;
        publisher.publish(topic, &n).await.expect("publishes");
        if let Some(line) = lines.next_within(Duration::from_millis(20)).await {
            return line;
        }
    }
    panic!("no event reached the subscriber within {LIMIT:?}");
}

#[tokio::test]
async fn sub_shows_sequence_numbers_publisher_restarts_and_stops_on_sigterm() {
    let first = Publisher::bind("tcp://127.0.0.1:0").await.expect("binds");
    let endpoint = first.endpoint().to_owned();
    let mut sub = zmesh()
        .args(["sub", &endpoint, "ticks."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh sub starts");
    let mut lines = Lines::new(sub.stdout.take().expect("piped"));

    let line = publish_until_a_line(&first, "ticks.a", &mut lines).await;
    let event: Json = serde_json::from_str(&line).expect("JSON");
    assert_eq!(event["kind"], "event", "{line}");
    assert_eq!(event["topic"], "ticks.a", "{line}");
    assert_eq!(event["publisher"], first.id(), "{line}");
    let seq = event["seq"].as_u64().expect("a sequence number");
    assert_eq!(
        event["payload"], seq,
        "the payload is the publish count: {line}"
    );
    // In order from here: every later number, one by one, with no gap report between.
    let mut newest = 0;
    for n in 0..2u64 {
        newest = first
            .publish("ticks.a", &(1000 + n))
            .await
            .expect("publishes");
    }
    let mut last = seq;
    while last < newest {
        let line = lines.next("the following events").await;
        let event: Json = serde_json::from_str(&line).expect("JSON");
        assert_eq!(event["kind"], "event", "{line}");
        assert_eq!(event["seq"], last + 1, "{line}");
        last += 1;
    }
    assert_eq!(last, newest);
    let published = first.stats().published;

    // A restart on the same port: the subscriber reconnects and reports the old publisher's
    // later events as unknown, naming the new one.
    first.close().await;
    let address = endpoint.clone();
    let second = async {
        for _ in 0..200 {
            if let Ok(p) = Publisher::bind(address.clone()).await {
                return p;
            }
            // The zeromq crate releases the listener asynchronously after close.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("cannot bind {address} again");
    }
    .await;
    let mut line = publish_until_a_line(&second, "ticks.a", &mut lines).await;
    // Events still in flight from the first publisher may come first; none of the second's
    // may come before the report.
    loop {
        let item: Json = serde_json::from_str(&line).expect("JSON");
        if item["kind"] != "event" {
            break;
        }
        assert_eq!(item["publisher"], first.id(), "{line}");
        line = lines.next("the restart report").await;
    }
    let gap: Json = serde_json::from_str(&line).expect("JSON");
    assert_eq!(gap["kind"], "gap", "{line}");
    assert_eq!(gap["reason"], "publisher_restarted", "{line}");
    assert_eq!(gap["publisher"], first.id(), "{line}");
    assert_eq!(gap["successor"], second.id(), "{line}");
    assert_eq!(gap["topic"], "ticks.a", "{line}");
    assert!(
        gap["first"].as_u64().expect("first") <= published + 1,
        "{line}"
    );
    assert_eq!(gap["last"], Json::Null, "{line}");
    assert_eq!(gap["missing"], Json::Null, "{line}");

    common::terminate(&sub);
    let out = finish(sub, "sub after SIGTERM").await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("gap reports"), "{}", stderr(&out));
}

#[tokio::test]
async fn help_documents_the_verbs() {
    for verb in ["proxy", "sub", "pub"] {
        let out = run(&[verb, "--help"]).await;
        assert!(out.status.success(), "{verb} --help: {}", stderr(&out));
        assert!(stdout(&out).contains("Usage: zmesh"), "{}", stdout(&out));
    }
    let out = run(&["pub", "--help"]).await;
    let help = stdout(&out);
    for words in ["--events-in", "slow-joiner", "--bind"] {
        assert!(help.contains(words), "{words} in {help}");
    }
    let out = run(&["proxy", "--help"]).await;
    assert!(
        stdout(&out).contains("events-out tcp://"),
        "{}",
        stdout(&out)
    );
}

/// Starts `zmesh proxy ARGS...` on port 0 without a mesh key in the environment, stdout
/// and stderr piped, and waits for its frontend and backend lines.
async fn start_proxy(args: &[&str]) -> (Child, String, String) {
    let mut child = zmesh()
        .env_remove("ZMESH_MESH_KEY")
        .args(["proxy", "--frontend", "tcp://127.0.0.1:0"])
        .args(["--backend", "tcp://127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zmesh proxy starts");
    let mut lines = Lines::new(child.stdout.take().expect("piped"));
    let frontend = lines.next("the frontend line").await;
    let backend = lines.next("the backend line").await;
    let last = |line: String| line.rsplit(' ').next().unwrap_or_default().to_owned();
    (child, last(frontend), last(backend))
}

#[tokio::test]
async fn an_unkeyed_backend_is_warned_about_and_a_backend_key_admits_only_keyed_workers() {
    // Without a key: the warning that any process reaching the backend is trusted.
    let (child, _, _) = start_proxy(&[]).await;
    common::terminate(&child);
    let out = finish(child, "unkeyed proxy").await;
    assert!(
        stderr(&out).contains("has no key: any process that can connect to it is trusted"),
        "{}",
        stderr(&out)
    );

    // With --backend-key-file: no warning, a keyed worker serves unkeyed clients.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("backend.key");
    std::fs::write(&key, "backend key for the cli test, 32+ bytes").expect("key written");
    let key = key.to_str().expect("utf-8");
    let (child, frontend, backend) = start_proxy(&["--backend-key-file", key]).await;
    let worker = zmesh()
        .env_remove("ZMESH_MESH_KEY")
        .args([
            "serve",
            "--worker-of",
            &backend,
            "--mesh-key-file",
            key,
            "echo",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("zmesh serve starts");
    let mut served = None;
    for _ in 0..100 {
        let out = run(&[
            "call",
            &frontend,
            "echo.upper",
            "hi",
            "--no-mesh-key",
            "--timeout",
            "2",
        ])
        .await;
        if out.status.success() {
            served = Some(out);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = served.expect("the keyed worker never served through the backend-keyed proxy");
    assert_eq!(stdout(&out), "\"HI\"\n");
    // An unkeyed worker is refused; `zmesh stats` on the device shows it.
    let unkeyed = zmesh()
        .env_remove("ZMESH_MESH_KEY")
        .args(["serve", "--worker-of", &backend, "echo"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("zmesh serve starts");
    let mut report = String::new();
    for _ in 0..100 {
        let out = run(&["stats", &frontend, "--no-mesh-key"]).await;
        assert!(out.status.success(), "{}", stderr(&out));
        report = stdout(&out);
        if report.contains("unauthenticated") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(report.starts_with("device: 1 workers"), "{report}");
    assert!(report.contains("unauthenticated"), "{report}");
    assert!(report.lines().any(|l| l.starts_with("echo ")), "{report}");
    drop(unkeyed);
    drop(worker);
    common::terminate(&child);
    let out = finish(child, "backend-keyed proxy").await;
    assert!(!stderr(&out).contains("has no key"), "{}", stderr(&out));
}
