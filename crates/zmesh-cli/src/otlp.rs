//! Provides `--otlp-endpoint URL` (env `ZMESH_OTLP_ENDPOINT`, a `--config` key too) for
//! `zmesh serve`, `zmesh proxy` and `zmesh call`, and the subscriber it builds: the fmt
//! layer on stderr under RUST_LOG as always, and with the flag, zmesh's INFO spans
//! exported over OTLP/HTTP (`zmesh_core::otel::Exporter`). The flag exists only in a binary
//! built with the `otel` feature (`cargo install --path crates/zmesh-cli --features otel`).

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The flag, flattened into each verb that takes it.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct OtlpArgs {
    /// Export this process's spans (a server span per call served, a client span per call
    /// made; docs/OBSERVABILITY.md) over OTLP/HTTP to the collector at URL, its base such as
    /// http://127.0.0.1:4318. The service name is OTEL_SERVICE_NAME, else zmesh-VERB.
    #[cfg(feature = "otel")]
    #[arg(
        long = "otlp-endpoint",
        value_name = "URL",
        env = "ZMESH_OTLP_ENDPOINT"
    )]
    pub(crate) otlp_endpoint: Option<String>,
}

impl OtlpArgs {
    /// The collector's URL, when the flag was given (never without the feature).
    pub(crate) fn endpoint(&self) -> Option<&str> {
        #[cfg(feature = "otel")]
        return self.otlp_endpoint.as_deref();
        #[cfg(not(feature = "otel"))]
        None
    }
}

/// What keeps the export going: dropping it (at the end of `main`) sends the last spans.
#[cfg(feature = "otel")]
pub(crate) type Guard = zmesh_core::otel::Exporter;
/// Without the feature there is nothing to keep.
#[cfg(not(feature = "otel"))]
pub(crate) type Guard = ();

/// Installs the process's subscriber: `fmt` (already filtered by the caller) on stderr,
/// and with `otlp` = `(verb, URL)` the exporter's layer at INFO, so RUST_LOG (default
/// `warn`) does not decide which spans are exported.
///
/// # Errors
/// The exporter's, for a URL it refuses.
pub(crate) fn init(
    fmt: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>,
    otlp: Option<(&str, &str)>,
) -> Result<Option<Guard>, String> {
    let registry = tracing_subscriber::registry().with(fmt);
    #[cfg(feature = "otel")]
    if let Some((verb, endpoint)) = otlp {
        let service =
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| format!("zmesh-{verb}"));
        let exporter =
            zmesh_core::otel::Exporter::otlp_http(endpoint, service).map_err(|e| e.to_string())?;
        let layer = exporter
            .layer()
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        registry.with(layer).init();
        return Ok(Some(exporter));
    }
    #[cfg(not(feature = "otel"))]
    let _ = otlp;
    registry.init();
    Ok(None)
}
