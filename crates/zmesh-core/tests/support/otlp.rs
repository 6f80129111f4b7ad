//! A minimal OTLP/HTTP receiver for the tests that export spans (`otel_three_hops.rs`
//! here, and by `#[path]` the CLI's `otel_cli.rs`): HTTP/1.1 POSTs to `/v1/traces`
//! (keep-alive), each body an `ExportTraceServiceRequest` decoded with the protocol's own
//! types, and helpers to read the spans' attributes.

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Every network wait here is bounded by this.
pub(crate) const NET_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the receiver on 127.0.0.1:0: its base URL, and the requests it takes (each
/// answered `200` with an empty `ExportTraceServiceResponse`). Its threads end with the
/// test process.
pub(crate) fn start_receiver() -> (String, mpsc::Receiver<ExportTraceServiceRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
    let address = listener.local_addr().expect("address");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve_connection(stream, &tx));
        }
    });
    (format!("http://{address}"), rx)
}

fn serve_connection(stream: TcpStream, tx: &mpsc::Sender<ExportTraceServiceRequest>) {
    stream.set_read_timeout(Some(NET_TIMEOUT)).expect("timeout");
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = None;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if first {
                assert!(
                    line.starts_with("POST /v1/traces "),
                    "request line {line:?}"
                );
                first = false;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length.expect("a content-length")];
        reader.read_exact(&mut body).expect("body");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
        let reply =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        writer.write_all(reply.as_bytes()).expect("reply");
        if tx.send(request).is_err() {
            return;
        }
    }
}

pub(crate) fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub(crate) fn string_attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(span, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

pub(crate) fn int_attribute(span: &Span, key: &str) -> Option<i64> {
    match attribute(span, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of a request, each with its resource's `service.name`.
pub(crate) fn spans(request: ExportTraceServiceRequest) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in resource.scope_spans {
            out.extend(scope.spans.into_iter().map(|span| (service.clone(), span)));
        }
    }
    out
}
