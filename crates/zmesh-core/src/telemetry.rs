//! Provides what the node's and client's spans say in OpenTelemetry's terms: the RPC
//! semantic conventions' attribute values (semconv v1.45, as `metrics.rs`), a call's
//! `error.type`, `server.address`/`server.port` from an endpoint, `network.peer.address`/
//! `network.peer.port` from the peer's socket address, and, with the `otel`
//! feature, the glue between a span and the W3C trace context on the wire.
//!
//! The spans themselves are made where the calls are (`node/dispatch.rs`, `client/mod.rs`,
//! `mesh/client.rs`); their field names are the conventions' own, so
//! `tracing-opentelemetry` exports them as attributes unchanged and reads the span's name,
//! kind and status from `otel.name`, `otel.kind` and `otel.status_code`. Nothing here
//! allocates: a disabled span costs its callers nothing.
//!
//! Without the `otel` feature the trace context still travels (`CallContext` keeps the
//! caller's `traceparent`, calls made with it send a child with a fresh span id); with it,
//! a server span's parent is the caller's span and the `traceparent` a client sends is its
//! own span's, so the span ids on the wire are those of the exported spans.

use std::net::SocketAddr;

use tracing::field;
use zmesh_proto::ErrorKind;

use crate::client::CallError;
use crate::wire::JobTag;

/// `rpc.system.name`: the wire protocol.
pub(crate) const RPC_SYSTEM: &str = "zerorpc";

/// `otel.status_code` of a call that failed (tracing-opentelemetry's spelling).
pub(crate) const STATUS_ERROR: &str = "ERROR";

/// `server.address` and `server.port` of an endpoint, borrowed from it: the host without
/// IPv6 brackets and the port for `tcp://host:port`, the socket path and no port for
/// `ipc://path` (the conventions' address of a Unix socket). Anything else is its own
/// address.
pub(crate) fn server_address(endpoint: &str) -> (&str, Option<u16>) {
    if let Some(rest) = endpoint.strip_prefix("tcp://")
        && let Some((host, port)) = rest.rsplit_once(':')
    {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        return (host, port.parse().ok());
    }
    (endpoint.strip_prefix("ipc://").unwrap_or(endpoint), None)
}

/// `error.type` of a call that failed, as its client saw it: the error's name on the wire
/// for an `ERR` reply (`NameError`, `Overloaded`, a handler's own name), zmesh's
/// [`ErrorKind`] name for a failure of its own that has one (`PeerLost`,
/// `DeadlineExceeded`, `MessageTooLarge`), otherwise the [`CallError`] variant's name.
/// Low-cardinality, as the conventions ask: no message, no id.
pub(crate) fn error_type(error: &CallError) -> &str {
    match error {
        CallError::Remote(remote) => &remote.name,
        CallError::PeerLost(_) => ErrorKind::PeerLost.as_str(),
        CallError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded.as_str(),
        CallError::MessageTooLarge { .. } => ErrorKind::MessageTooLarge.as_str(),
        CallError::InvalidEndpoint { .. } => "InvalidEndpoint",
        CallError::Connect { .. } => "Connect",
        CallError::Encode(_) => "Encode",
        CallError::Decode(_) => "Decode",
        CallError::Protocol(_) => "Protocol",
        CallError::Config(_) => "Config",
        CallError::Integrity(_) => "Integrity",
        CallError::NoPeer { .. } => "NoPeer",
        CallError::BadMethod(_) => "BadMethod",
    }
}

// Integers are recorded as `i64`: tracing-opentelemetry exports an unsigned field as a
// string, and the conventions' `server.port` is an int.

/// The client span of one call (`zmesh.client_call`), named by its method (`otel.name`),
/// with the conventions' attributes: `server.*` from `endpoint` when the call goes to one
/// (a `MeshClient` records each attempt's peer as it picks it), the job it runs when a
/// queue dispatches it. The values are borrowed: a disabled span formats nothing.
pub(crate) fn client_span(
    method: &str,
    endpoint: Option<&str>,
    job: Option<JobTag>,
) -> tracing::Span {
    // Field values are evaluated only for a span that some subscriber wants.
    tracing::info_span!(
        "zmesh.client_call",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = field::Empty,
        rpc.system.name = RPC_SYSTEM,
        rpc.method = method,
        server.address = endpoint.map(|e| server_address(e).0),
        server.port = endpoint.and_then(|e| server_address(e).1).map(i64::from),
        error.type = field::Empty,
        zmesh.job.id = job.map(|job| job.id as i64),
        zmesh.job.attempt = job.map(|job| i64::from(job.attempt)),
        zmesh.attempts = field::Empty,
        method,
        endpoint,
        outcome = field::Empty,
        duration_us = field::Empty,
    )
}

/// Records on a client span the peer an attempt goes to (the last attempt's stays).
pub(crate) fn record_server(span: &tracing::Span, endpoint: &str) {
    if span.is_disabled() {
        return;
    }
    let (address, port) = server_address(endpoint);
    span.record("server.address", address);
    if let Some(port) = port {
        span.record("server.port", i64::from(port));
    }
}

/// Records on a server span the network address of the call's immediate peer, the other
/// end of the connection it came in on: `network.peer.address` (the IP, no brackets) and
/// `network.peer.port`. The IP is formatted only by a subscriber that records it.
pub(crate) fn record_network_peer(span: &tracing::Span, peer: SocketAddr) {
    span.record("network.peer.address", field::display(peer.ip()));
    span.record("network.peer.port", i64::from(peer.port()));
}

/// Records a failed call on its span: `error.type` and the error status.
pub(crate) fn record_error(span: &tracing::Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", STATUS_ERROR);
}

#[cfg(feature = "otel")]
mod otel_context {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use zmesh_proto::TraceParent;

    /// Makes the caller's span, as its `traceparent` names it, the parent of `span` (a
    /// server span, or a client span with no span of this process above it). Must run
    /// before `span` is first entered: tracing-opentelemetry fixes the parent then.
    pub(crate) fn set_remote_parent(span: &tracing::Span, caller: &TraceParent) {
        let remote = SpanContext::new(
            TraceId::from_bytes(caller.trace_id()),
            SpanId::from_bytes(caller.parent_id()),
            TraceFlags::new(caller.flags()),
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(remote);
        // Fails only when no OpenTelemetry layer records the span: nothing to join then.
        let _ = span.set_parent(cx);
    }

    /// The `traceparent` naming `span` itself, when an OpenTelemetry layer records it: what
    /// a client sends, so the server's span is a child of the exported client span.
    fn traceparent_of(span: &tracing::Span) -> Option<TraceParent> {
        let cx = span.context();
        let own = cx.span();
        let own = own.span_context();
        TraceParent::from_parts(
            own.trace_id().to_bytes(),
            own.span_id().to_bytes(),
            own.trace_flags().to_u8(),
        )
    }

    /// Whether `span` is recorded by an OpenTelemetry layer as part of a trace (so a span
    /// made under it joins that trace by itself).
    fn is_traced(span: &tracing::Span) -> bool {
        span.context().span().span_context().is_valid()
    }

    /// Puts a new client span in its trace and makes it the one the call names on the
    /// wire: under the current span when that one is traced (a handler's server span, a
    /// mesh call's client span), else under the `traceparent` the options carry (one set
    /// by hand, or a context's child); then `traceparent` becomes the span's own.
    pub(crate) fn send_own_context(span: &tracing::Span, traceparent: &mut Option<String>) {
        if span.is_disabled() {
            return;
        }
        if !is_traced(&tracing::Span::current())
            && let Some(caller) = traceparent.as_deref().and_then(TraceParent::parse)
        {
            set_remote_parent(span, &caller);
        }
        if let Some(own) = traceparent_of(span) {
            *traceparent = Some(own.to_string());
        }
    }
}

#[cfg(feature = "otel")]
pub(crate) use otel_context::{send_own_context, set_remote_parent};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_splits_tcp_and_keeps_ipc_paths() {
        assert_eq!(
            server_address("tcp://127.0.0.1:4242"),
            ("127.0.0.1", Some(4242))
        );
        assert_eq!(server_address("tcp://[::1]:80"), ("::1", Some(80)));
        assert_eq!(server_address("tcp://db.local:7"), ("db.local", Some(7)));
        assert_eq!(
            server_address("ipc:///tmp/node.sock"),
            ("/tmp/node.sock", None)
        );
        assert_eq!(server_address("weird"), ("weird", None));
    }

    #[test]
    fn error_type_is_the_wire_name_or_the_kind() {
        let remote = CallError::Remote(crate::client::RemoteError {
            name: "NameError".into(),
            message: "no such method".into(),
            traceback: None,
        });
        assert_eq!(error_type(&remote), "NameError");
        assert_eq!(
            error_type(&CallError::DeadlineExceeded(std::time::Duration::ZERO)),
            "DeadlineExceeded"
        );
        assert_eq!(error_type(&CallError::BadMethod("x".into())), "BadMethod");
    }
}
