//! Exports zmesh's spans to an OpenTelemetry collector over OTLP/HTTP (protobuf), for
//! applications: the library never installs a subscriber, so an application adds
//! [`Exporter::layer`] to its own (`tracing_subscriber::registry().with(exporter.layer())`).
//! Only with the `otel` feature.
//!
//! The spans are the ones the node and clients always make (`zmesh.call`, server, and
//! `zmesh.client_call`, client; attributes in docs/OBSERVABILITY.md); with this feature a
//! server span's parent is the caller's client span, named by the `traceparent` it sent,
//! and a client sends its own span's context, so one call chain is one trace in the
//! collector.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! let exporter = zmesh_core::otel::Exporter::otlp_http("http://127.0.0.1:4318", "billing")?;
//! let subscriber = tracing_subscriber::registry().with(exporter.layer());
//! tracing::subscriber::set_global_default(subscriber)?;
//! // ... run the node; dropping `exporter` sends what is still buffered.
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// The OTLP/HTTP path of traces under a collector's base URL (the OpenTelemetry exporter
/// specification's, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
const TRACES_PATH: &str = "/v1/traces";

/// Why the exporter could not be built or could not send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The OTLP exporter refused its settings (an endpoint that is not a URL, say).
    #[error("cannot build the OTLP exporter for {endpoint}: {source}")]
    Build {
        /// The traces URL it was given.
        endpoint: String,
        /// What the exporter said.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// Flushing or shutting down failed (the collector did not take the spans).
    #[error("cannot export spans: {0}")]
    Export(#[source] opentelemetry_sdk::error::OTelSdkError),
}

/// A tracer provider exporting over OTLP/HTTP in batches (from a thread of its own, so
/// exporting never runs on the application's runtime), and the layer that feeds it.
/// Dropping it sends what is still buffered and stops the export thread.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Exporter {
    /// An exporter to the collector at `endpoint`, its OTLP/HTTP base URL
    /// (`http://127.0.0.1:4318`; `/v1/traces` is appended unless it is already there),
    /// naming this process `service_name` (the resource's `service.name`).
    ///
    /// # Errors
    /// [`OtelError::Build`] when the exporter refuses the endpoint.
    pub fn otlp_http(endpoint: &str, service_name: impl Into<String>) -> Result<Self, OtelError> {
        let endpoint = traces_url(endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|source| OtelError::Build {
                endpoint: endpoint.clone(),
                source,
            })?;
        let resource = Resource::builder()
            .with_service_name(service_name.into())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(Self { provider, endpoint })
    }

    /// The URL spans are posted to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans for this exporter
    /// (add it to the application's subscriber, with a filter of its own if it likes:
    /// zmesh's spans are at INFO).
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, Tracer>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("zmesh"))
    }

    /// Sends every span that has ended and is still buffered, and waits for the collector
    /// to take them. Blocks: from async code, call it in `spawn_blocking`.
    ///
    /// # Errors
    /// [`OtelError::Export`] when the collector did not take them.
    pub fn flush(&self) -> Result<(), OtelError> {
        self.provider.force_flush().map_err(OtelError::Export)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // Best effort: a collector gone at exit loses the last batch, and says so.
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "OTLP exporter shutdown");
        }
    }
}

/// The traces URL under a collector's base URL.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with(TRACES_PATH) {
        base.to_owned()
    } else {
        format!("{base}{TRACES_PATH}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
