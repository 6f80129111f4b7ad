//! Call figures for Prometheus on both sides, over real sockets: a client's
//! (`ClientConfig::metrics`; two clients can share one set) show calls answered and failed
//! in the `rpc.client.call.duration` histogram, by outcome and by `error.type`; the node's
//! show the failures its handlers answered by `error.type` too.

mod common;

use common::{Transport, net, start_node};
use zmesh::metrics::{ClientMetrics, render};
use zmesh::{CallError, Client, ClientConfig, NodeConfig};

#[tokio::test]
async fn calls_answered_and_failed_are_recorded_by_method_and_error_type() {
    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), vec![]).await;
    let metrics = ClientMetrics::new();
    let config = ClientConfig::default().metrics(metrics.clone());
    let first = Client::with_config(node.endpoint(), config.clone());
    let second = Client::with_config(node.endpoint(), config);
    for client in [&first, &second] {
        let back: String = net("a call", client.call("echo.upper", ("hi",)))
            .await
            .expect("answers");
        assert_eq!(back, "HI");
    }
    let failed = net("an unknown method", first.call::<()>("echo.nope", ())).await;
    assert!(matches!(failed, Err(CallError::Remote(_))), "{failed:?}");
    let failed = net("a failing handler", second.call::<()>("echo.fail", ("no",))).await;
    assert!(matches!(failed, Err(CallError::Remote(_))), "{failed:?}");
    let text = render(metrics);
    for series in [
        r#"rpc_client_call_duration_seconds_count{rpc_system_name="zerorpc",rpc_method="echo.upper"} 2"#,
        r#"zmesh_client_calls_total{rpc_method="echo.upper",outcome="ok"} 2"#,
        r#"zmesh_client_calls_total{rpc_method="echo.nope",outcome="error"} 1"#,
        r#"zmesh_client_call_errors_total{rpc_method="echo.nope",error_type="NameError"} 1"#,
        r#"zmesh_client_call_errors_total{rpc_method="echo.fail",error_type="EchoError"} 1"#,
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
    let served = node.metrics().encode();
    for series in [
        r#"zmesh_server_calls_total{rpc_method="echo.fail",outcome="error"} 1"#,
        r#"zmesh_server_call_errors_total{rpc_method="echo.fail",error_type="EchoError"} 1"#,
    ] {
        assert!(served.contains(series), "{series} in {served}");
    }
    net(
        "shutdown",
        node.shutdown(std::time::Duration::from_millis(100)),
    )
    .await;
}
