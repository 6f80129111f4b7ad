//! Built with the `otel` feature, `zmesh serve` (its endpoint from `ZMESH_OTLP_ENDPOINT`)
//! and `zmesh call --otlp-endpoint` export their spans over real OTLP/HTTP to a receiver
//! this test runs on 127.0.0.1:0: the call's client span (service `zmesh-call`) and the
//! node's server span (service `zmesh-serve`) are one trace, the server span's parent the
//! client span. Both processes send their last spans as they exit. Through the proxy
//! device too: the worker's server span is a child of the caller's client span.
#![cfg(feature = "otel")]

mod common;
#[path = "../../zmesh-core/tests/support/otlp.rs"]
mod otlp;

use std::time::Instant;

use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use common::{Server, exit_status, run, stderr, stdout, terminate, zmesh};
use otlp::{NET_TIMEOUT, hex, int_attribute, start_receiver, string_attribute};

#[tokio::test]
async fn serve_and_call_export_one_trace_over_otlp() {
    let (collector, received) = start_receiver();
    let mut command = zmesh();
    command
        .args([
            "serve",
            "--bind",
            "tcp://127.0.0.1:0",
            "--name",
            "otel-test",
            "echo",
        ])
        .env("ZMESH_OTLP_ENDPOINT", &collector);
    let mut server = Server::start(command, "zmesh serve").await;
    let endpoint = server.endpoint.clone();

    let output = run(&[
        "call",
        &endpoint,
        "echo.upper",
        "hi",
        "--otlp-endpoint",
        &collector,
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "\"HI\"");
    terminate(&server.child);
    let status = exit_status(&mut server.child, "zmesh serve").await;
    assert!(status.success(), "{status}");

    // Both have exited, each after sending what it had: their spans are here or coming.
    let mut spans: Vec<(String, Span)> = Vec::new();
    let until = Instant::now() + NET_TIMEOUT;
    let find = |spans: &[(String, Span)], service: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|(s, span)| s == service && span.name == "echo.upper" && span.kind == kind as i32)
            .map(|(_, span)| span.clone())
    };
    let (client, node) = loop {
        if let (Some(client), Some(node)) = (
            find(&spans, "zmesh-call", SpanKind::Client),
            find(&spans, "zmesh-serve", SpanKind::Server),
        ) {
            break (client, node);
        }
        let left = until.saturating_duration_since(Instant::now());
        let request = received
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no client and server span of echo.upper: {spans:#?}"));
        spans.extend(otlp::spans(request));
    };
    println!(
        "trace {}: client span {} (root {}), server span {} parent {}",
        hex(&client.trace_id),
        hex(&client.span_id),
        client.parent_span_id.is_empty(),
        hex(&node.span_id),
        hex(&node.parent_span_id)
    );
    assert_eq!(node.trace_id, client.trace_id, "one trace");
    assert_eq!(
        node.parent_span_id, client.span_id,
        "the server span's parent"
    );
    assert!(
        client.parent_span_id.is_empty(),
        "the call is the trace's root"
    );
    let port: i64 = endpoint
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("a tcp port");
    for span in [&client, &node] {
        assert_eq!(string_attribute(span, "rpc.system.name"), Some("zerorpc"));
        assert_eq!(string_attribute(span, "rpc.method"), Some("echo.upper"));
        assert_eq!(string_attribute(span, "server.address"), Some("127.0.0.1"));
        assert_eq!(int_attribute(span, "server.port"), Some(port));
    }
}

/// Through the proxy device (which makes no spans of its own and forwards the request's
/// `traceparent` unchanged): the worker's server span is a child of the caller's client
/// span, in the caller's trace.
#[tokio::test]
async fn a_call_through_the_device_is_one_trace_with_its_worker() {
    let (collector, received) = start_receiver();
    let (proxy, backend) = Server::proxy(&[]).await;
    let mut command = zmesh();
    command
        .args(["serve", "--worker-of", &backend, "echo"])
        .env("ZMESH_OTLP_ENDPOINT", &collector);
    let mut worker = Server::start(command, "zmesh serve --worker-of").await;
    // The worker registers shortly after it connects; plain calls (no spans exported)
    // until the device routes echo.* to it.
    let until = Instant::now() + NET_TIMEOUT;
    loop {
        let out = run(&["call", &proxy.endpoint, "echo.upper", "warm"]).await;
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < until,
            "the worker never served: {}",
            stderr(&out)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let output = run(&[
        "call",
        &proxy.endpoint,
        "echo.upper",
        "via",
        "--otlp-endpoint",
        &collector,
    ])
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "\"VIA\"");
    terminate(&worker.child);
    let status = exit_status(&mut worker.child, "zmesh serve --worker-of").await;
    assert!(status.success(), "{status}");

    let mut spans: Vec<(String, Span)> = Vec::new();
    let until = Instant::now() + NET_TIMEOUT;
    let (client, served) = loop {
        let client = spans
            .iter()
            .find(|(s, span)| s == "zmesh-call" && span.kind == SpanKind::Client as i32)
            .map(|(_, span)| span.clone());
        if let Some(client) = client
            && let Some((_, served)) = spans.iter().find(|(s, span)| {
                s == "zmesh-serve"
                    && span.kind == SpanKind::Server as i32
                    && span.trace_id == client.trace_id
            })
        {
            break (client, served.clone());
        }
        let left = until.saturating_duration_since(Instant::now());
        let request = received
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no client span and worker span in one trace: {spans:#?}"));
        spans.extend(otlp::spans(request));
    };
    println!(
        "trace {} through the device: client span {}, worker span {} parent {}",
        hex(&client.trace_id),
        hex(&client.span_id),
        hex(&served.span_id),
        hex(&served.parent_span_id)
    );
    assert_eq!(client.name, "echo.upper");
    assert_eq!(served.name, "echo.upper");
    assert_eq!(
        served.parent_span_id, client.span_id,
        "the worker span's parent"
    );
}
