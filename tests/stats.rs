//! The `_zmesh.stats` built-in over real sockets: per-method calls, errors, aborted calls and
//! latency percentiles, counted per node, with a method exported under two names counted once;
//! and its former name `_zmesh_stats`, still answered.

mod common;

use std::time::Duration;

use common::{TRANSPORTS, net, start_node};
use rmpv::Value;
use zmesh::{CallError, CallOptions, Client, HandlerError, NodeConfig, Service, reserved};

/// `stats.methods[name][field]` as u64.
fn figure(stats: &Value, method: &str, field: &str) -> u64 {
    let get = |v: &Value, key: &str| -> Option<Value> {
        v.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v.clone())
    };
    get(stats, "methods")
        .and_then(|m| get(&m, method))
        .and_then(|f| get(&f, field))
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("methods.{method}.{field} in {stats}"))
}

async fn stats(client: &Client) -> Value {
    net(reserved::STATS, client.call::<Value>(reserved::STATS, ()))
        .await
        .expect("_zmesh.stats answers")
}

#[tokio::test]
async fn stats_count_calls_errors_and_aborts_per_method() {
    for transport in TRANSPORTS {
        let panicky = Service::new("p").method("boom", || async {
            if true {
                panic!("deliberate");
            }
            Ok::<u8, HandlerError>(0)
        });
        let (node, _dir) = start_node(transport, NodeConfig::default(), vec![panicky.into()]).await;
        let client = Client::new(node.endpoint());

        for i in 0..20 {
            // Half prefixed, half through the unprefixed export: one method, one count.
            let method = if i % 2 == 0 { "echo.upper" } else { "upper" };
            let up: String = net("upper", client.call(method, ("x",)))
                .await
                .expect("upper");
            assert_eq!(up, "X");
        }
        for _ in 0..3 {
            let err = net("fail", client.call::<Value>("echo.fail", ("no",)))
                .await
                .expect_err("fail fails");
            assert_eq!(err.remote().map(|r| r.name.as_str()), Some("EchoError"));
        }
        // A wrong argument type is the method's error too.
        net("bad args", client.call::<Value>("echo.upper", (1,)))
            .await
            .expect_err("upper(1) is a TypeError");
        let err = net("panic", client.call::<Value>("p.boom", ()))
            .await
            .expect_err("boom panics");
        assert_eq!(err.remote().map(|r| r.name.as_str()), Some("HandlerPanic"));
        // A call that outlives its deadline is aborted on the node.
        let slow = client.call_with::<u64>(
            "echo.sleep",
            (5_000,),
            CallOptions::timeout(Duration::from_millis(100)),
        );
        assert!(matches!(
            net("sleep", slow).await,
            Err(CallError::DeadlineExceeded(_))
        ));
        // The node's verdict and the client's timer race: wait for the node's record.
        let mut report = Value::Nil;
        let probe = Client::new(node.endpoint());
        for _ in 0..200 {
            report = stats(&probe).await;
            if figure(&report, "echo.sleep", "aborted") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(figure(&report, "echo.sleep", "aborted"), 1, "{report}");
        assert_eq!(figure(&report, "echo.upper", "calls"), 20, "{report}");
        assert_eq!(figure(&report, "echo.upper", "errors"), 1, "{report}");
        assert_eq!(figure(&report, "echo.fail", "errors"), 3, "{report}");
        assert_eq!(figure(&report, "echo.fail", "calls"), 0, "{report}");
        assert_eq!(figure(&report, "p.boom", "errors"), 1, "{report}");
        assert_eq!(figure(&report, "echo.echo", "calls"), 0, "{report}");
        let map = report.as_map().expect("a map");
        let methods = map
            .iter()
            .find(|(k, _)| k.as_str() == Some("methods"))
            .and_then(|(_, v)| v.as_map())
            .expect("methods");
        assert!(
            !methods.iter().any(|(k, _)| k.as_str() == Some("upper")),
            "the unprefixed alias is reported under echo.upper only"
        );
        // Percentiles are ordered and bounded by the maximum.
        let p = |f: &str| figure(&report, "echo.upper", f);
        assert!(p("p50_us") <= p("p90_us") && p("p90_us") <= p("p99_us"));
        assert!(p("p99_us") <= p("p999_us") && p("p999_us") <= p("max_us"));
        assert!(
            figure(&report, "echo.sleep", "max_us") >= 50_000,
            "the aborted call ran until its deadline: {report}"
        );
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn each_node_counts_only_its_own_calls() {
    let (a, _da) = start_node(common::Transport::Tcp, NodeConfig::default(), vec![]).await;
    let (b, _db) = start_node(common::Transport::Tcp, NodeConfig::default(), vec![]).await;
    let (ca, cb) = (Client::new(a.endpoint()), Client::new(b.endpoint()));
    for _ in 0..5 {
        let _: String = net("upper", ca.call("echo.upper", ("a",)))
            .await
            .expect("upper");
    }
    let _: String = net("upper", cb.call("echo.upper", ("b",)))
        .await
        .expect("upper");
    assert_eq!(figure(&stats(&ca).await, "echo.upper", "calls"), 5);
    assert_eq!(figure(&stats(&cb).await, "echo.upper", "calls"), 1);
    let own = stats(&cb).await;
    assert_eq!(
        figure(&own, reserved::STATS, "calls"),
        1,
        "the stats method counts its own finished calls (one before this one): {own}"
    );
}

/// Deployed `zmesh stats` and tooling call the former name: the node still answers it, with
/// the same report, as one method with `_zmesh.stats` (counted and listed under the new name).
#[tokio::test]
async fn the_legacy_stats_name_still_answers() {
    let (node, _dir) = start_node(common::Transport::Tcp, NodeConfig::default(), vec![]).await;
    let client = Client::new(node.endpoint());
    let _: String = net("upper", client.call("echo.upper", ("a",)))
        .await
        .expect("upper");
    let legacy: Value = net(
        reserved::LEGACY_STATS,
        client.call(reserved::LEGACY_STATS, ()),
    )
    .await
    .expect("_zmesh_stats answers");
    assert_eq!(figure(&legacy, "echo.upper", "calls"), 1, "{legacy}");
    let new = stats(&client).await;
    assert_eq!(
        figure(&new, reserved::STATS, "calls"),
        1,
        "the legacy call counts as a call of _zmesh.stats: {new}"
    );
    let listed = |report: &Value, name: &str| {
        report
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("methods")))
            .and_then(|(_, methods)| methods.as_map())
            .is_some_and(|methods| methods.iter().any(|(k, _)| k.as_str() == Some(name)))
    };
    assert!(listed(&new, reserved::STATS), "{new}");
    assert!(
        !listed(&new, reserved::LEGACY_STATS),
        "one method, one row: {new}"
    );
}
