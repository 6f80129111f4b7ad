//! Keeps a client's figures for Prometheus, the client side of `metrics.rs`: the
//! OpenTelemetry RPC conventions' `rpc.client.call.duration` histogram per method (seconds,
//! the conventions' buckets, recorded with the same per-method statistics as the server's),
//! calls by outcome, and failures by `error.type`. Opt-in (`ClientConfig::metrics`): a
//! client without it records nothing and pays one branch per call. Several clients (a
//! queue's dispatcher, a mesh client's connections to every peer) can share one.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::stats::{MethodStats, Outcome};

/// A set of clients' call figures: hand it to each client's config, and to an exporter as
/// a collector (`metrics::render_all`).
#[derive(Clone, Default)]
pub struct ClientMetrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Per method: durations, outcomes and failures by `error.type`. Read-locked per call;
    /// written once per method.
    methods: RwLock<HashMap<String, Arc<MethodStats>>>,
}

impl std::fmt::Debug for ClientMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let methods = self.inner.methods.read().map_or(0, |methods| methods.len());
        f.debug_struct("ClientMetrics")
            .field("methods", &methods)
            .finish_non_exhaustive()
    }
}

impl ClientMetrics {
    /// An empty set of figures.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one call of `method` that took `elapsed` (to its first reply) and failed
    /// with `error_type`, if it did.
    pub(crate) fn record(&self, method: &str, elapsed: Duration, error_type: Option<&str>) {
        let outcome = match error_type {
            None => Outcome::Ok,
            Some(_) => Outcome::Error,
        };
        let stats = self.stats(method);
        stats.record(elapsed, outcome);
        if let Some(error_type) = error_type {
            stats.count_error(error_type);
        }
    }

    fn stats(&self, method: &str) -> Arc<MethodStats> {
        let read = self
            .inner
            .methods
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = read.get(method) {
            return Arc::clone(stats);
        }
        drop(read);
        let mut methods = self
            .inner
            .methods
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(methods.entry(method.to_owned()).or_default())
    }
}

impl Collector for ClientMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut methods: Vec<(String, Arc<MethodStats>)> = self
            .inner
            .methods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, stats)| (name.clone(), Arc::clone(stats)))
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        crate::metrics::encode_calls(
            &mut encoder,
            &crate::metrics::CallFamilies {
                duration: "rpc_client_call_duration",
                duration_help: "Duration of calls this process made, to their first reply \
                                (OpenTelemetry rpc.client.call.duration).",
                calls: "zmesh_client_calls",
                calls_help: "Calls this process made, by method and outcome (ok, error).",
                errors: "zmesh_client_call_errors",
                errors_help: "Calls this process made that failed, by method and \
                              error.type.",
                aborted: false,
            },
            &methods,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_failures_are_counted_per_method_and_error_type() {
        let metrics = ClientMetrics::new();
        metrics.record("echo.upper", Duration::from_micros(40), None);
        metrics.record("echo.upper", Duration::from_micros(60), None);
        metrics.record("echo.fail", Duration::from_millis(7), Some("ValueError"));
        metrics.record(
            "echo.fail",
            Duration::from_millis(7),
            Some("DeadlineExceeded"),
        );
        let text = crate::metrics::render(metrics.clone());
        for series in [
            r#"rpc_client_call_duration_seconds_count{rpc_system_name="zerorpc",rpc_method="echo.upper"} 2"#,
            r#"rpc_client_call_duration_seconds_bucket{le="0.005",rpc_system_name="zerorpc",rpc_method="echo.upper"} 2"#,
            r#"rpc_client_call_duration_seconds_bucket{le="0.01",rpc_system_name="zerorpc",rpc_method="echo.fail"} 2"#,
            r#"zmesh_client_calls_total{rpc_method="echo.upper",outcome="ok"} 2"#,
            r#"zmesh_client_calls_total{rpc_method="echo.fail",outcome="error"} 2"#,
            r#"zmesh_client_call_errors_total{rpc_method="echo.fail",error_type="DeadlineExceeded"} 1"#,
            r#"zmesh_client_call_errors_total{rpc_method="echo.fail",error_type="ValueError"} 1"#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}
