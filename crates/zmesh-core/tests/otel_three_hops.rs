//! With the `otel` feature, a call chain is one trace in the collector: the test calls
//! `a.front`, whose handler calls `b.mid` with its context, whose handler calls `c.leaf`,
//! each on its own node over tcp. The spans go through `otel::Exporter` over real OTLP/HTTP
//! to a receiver this test runs on 127.0.0.1:0, which decodes each
//! `ExportTraceServiceRequest` with the protocol's own types. One trace id; each server
//! span's parent is its caller's client span, each inner client span's the server span it
//! runs in; names are the methods; the conventions' attributes are there.
//!
//! Its own test binary: the subscriber is global (the nodes' tasks run on runtime threads).
#![cfg(feature = "otel")]

#[path = "support/otlp.rs"]
mod otlp;

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tracing_subscriber::layer::SubscriberExt;
use zmesh_core::otel::Exporter;
use zmesh_core::{Call, CallContext, CallOptions, Client, Node, Service};

use otlp::{NET_TIMEOUT, attribute, hex, int_attribute, start_receiver, string_attribute};

/// A node serving `service.method`, which calls `next` (with its context) when given one.
async fn start_hop(service: &str, method: &str, next: Option<(Client, &'static str)>) -> Node {
    let next = next.map(Arc::new);
    let service = Service::new(service).method(method, move |ctx: CallContext, n: u64| {
        let next = next.clone();
        async move {
            match next.as_deref() {
                None => Ok(n + 1),
                Some((client, method)) => {
                    let reply: u64 = client
                        .with_context(&ctx)
                        .call_with(method, (n + 1,), CallOptions::default())
                        .await?;
                    Ok(reply)
                }
            }
        }
    });
    Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(service)
        .start()
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_hop_call_is_one_trace_of_client_and_server_spans() {
    let (collector, received) = start_receiver();
    let exporter = Arc::new(Exporter::otlp_http(&collector, "three-hops").expect("exporter"));
    let subscriber = tracing_subscriber::registry().with(exporter.layer());
    tracing::subscriber::set_global_default(subscriber).expect("only test in this binary");

    let c = start_hop("c", "leaf", None).await;
    let b = start_hop("b", "mid", Some((Client::new(c.endpoint()), "c.leaf"))).await;
    let a = start_hop("a", "front", Some((Client::new(b.endpoint()), "b.mid"))).await;
    let client = Client::new(a.endpoint());
    let reply: u64 = tokio::time::timeout(NET_TIMEOUT, client.call("a.front", (1u64,)))
        .await
        .expect("in time")
        .expect("the chain answers");
    assert_eq!(reply, 4, "each hop adds one");

    // A server span ends just after its reply leaves, so flush until all six arrived.
    // Other traces are the clients' one-time `_zerorpc_ping`s, roots of their own.
    let mut received_spans: Vec<Span> = Vec::new();
    let until = Instant::now() + NET_TIMEOUT;
    let in_the_chain = |spans: &[Span]| -> Vec<Span> {
        let Some(first) = spans.iter().find(|s| s.name == "a.front") else {
            return Vec::new();
        };
        spans
            .iter()
            .filter(|s| s.trace_id == first.trace_id)
            .cloned()
            .collect()
    };
    let mut spans = Vec::new();
    while spans.len() < 6 {
        assert!(
            Instant::now() < until,
            "only {} spans: {spans:#?}",
            spans.len()
        );
        let flushing = exporter.clone();
        tokio::task::spawn_blocking(move || flushing.flush())
            .await
            .expect("flush task")
            .expect("the receiver takes the spans");
        while let Ok(request) = received.try_recv() {
            received_spans.extend(otlp::spans(request).into_iter().map(|(_, span)| span));
        }
        spans = in_the_chain(&received_spans);
    }
    assert_eq!(
        spans.len(),
        6,
        "three client and three server spans: {spans:#?}"
    );

    let trace_id = spans[0].trace_id.clone();
    let find = |name: &str, kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.name == name && s.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span {name}: {spans:#?}"))
    };
    let chain = [
        ("a.front", SpanKind::Client, a.endpoint()),
        ("a.front", SpanKind::Server, a.endpoint()),
        ("b.mid", SpanKind::Client, b.endpoint()),
        ("b.mid", SpanKind::Server, b.endpoint()),
        ("c.leaf", SpanKind::Client, c.endpoint()),
        ("c.leaf", SpanKind::Server, c.endpoint()),
    ];
    println!("trace {}", hex(&trace_id));
    let mut parent: Option<&Span> = None;
    for (name, kind, endpoint) in chain {
        let span = find(name, kind);
        println!(
            "  {:<7} {:<6} span {} parent {}",
            name,
            format!("{kind:?}"),
            hex(&span.span_id),
            if span.parent_span_id.is_empty() {
                "(root)".to_owned()
            } else {
                hex(&span.parent_span_id)
            }
        );
        assert_eq!(span.trace_id, trace_id, "one trace: {span:#?}");
        match parent {
            None => assert!(span.parent_span_id.is_empty(), "the first is a root"),
            Some(parent) => assert_eq!(
                span.parent_span_id, parent.span_id,
                "{name} {kind:?}'s parent is the {} {:?} span",
                parent.name, parent.kind
            ),
        }
        assert_eq!(string_attribute(span, "rpc.system.name"), Some("zerorpc"));
        assert_eq!(string_attribute(span, "rpc.method"), Some(name));
        let port = endpoint.rsplit_once(':').expect("tcp").1;
        assert_eq!(string_attribute(span, "server.address"), Some("127.0.0.1"));
        assert_eq!(
            int_attribute(span, "server.port").map(|p| p.to_string()),
            Some(port.to_owned()),
            "{span:#?}"
        );
        assert_eq!(attribute(span, "error.type"), None, "nothing failed");
        // The server's immediate peer, exported as a string and an int: the client's end
        // of its connection. A client span has none.
        match kind {
            SpanKind::Server => {
                assert_eq!(
                    string_attribute(span, "network.peer.address"),
                    Some("127.0.0.1"),
                    "{span:#?}"
                );
                let peer_port = int_attribute(span, "network.peer.port");
                assert!(
                    peer_port.is_some_and(|p| p > 0 && p.to_string() != port),
                    "{span:#?}"
                );
            }
            _ => assert_eq!(attribute(span, "network.peer.address"), None),
        }
        parent = Some(span);
    }
    let server = find("a.front", SpanKind::Server);
    assert_eq!(
        attribute(server, "otel.name"),
        None,
        "read as the name, not kept"
    );

    for node in [a, b, c] {
        node.shutdown(Duration::from_secs(1)).await;
    }
}
