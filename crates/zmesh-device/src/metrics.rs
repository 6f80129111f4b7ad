//! Exposes the device's figures as Prometheus/OpenMetrics text at scrape time, from the
//! [`DeviceStats`] the router keeps (`zmesh stats` reads the same): workers, open calls,
//! held request bytes and routed methods; per service its queue, workers, calls in flight
//! and calls by outcome; every refusal and drop by reason, and peers lost by side.

use std::sync::Arc;

use zmesh_core::metrics::{
    Collector, CounterFamily, DescriptorEncoder, encode_counters, encode_gauge_families,
    encode_gauges, render,
};

use crate::{DeviceStats, Shared};

/// A handle on a device's figures for an exporter (from `Device::metrics`).
#[derive(Clone)]
pub struct DeviceMetrics {
    shared: Option<Arc<Shared>>,
}

impl std::fmt::Debug for DeviceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceMetrics").finish_non_exhaustive()
    }
}

impl DeviceMetrics {
    pub(crate) fn new(shared: Option<Arc<Shared>>) -> Self {
        Self { shared }
    }

    /// The device's figures now, as OpenMetrics text (which Prometheus reads).
    pub fn encode(&self) -> String {
        render(Figures(self.stats()))
    }

    fn stats(&self) -> DeviceStats {
        self.shared
            .as_ref()
            .map(|shared| shared.lock().stats())
            .unwrap_or_default()
    }
}

/// The device's figures as a collector, to render beside others' (`zmesh proxy --jobs`
/// adds its queue's).
impl Collector for DeviceMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        Figures(self.stats()).encode(encoder)
    }
}

#[derive(Debug)]
struct Figures(DeviceStats);

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        encode_gauges(
            &mut encoder,
            &[
                (
                    "zmesh_device_workers",
                    "Workers connected now.",
                    s.workers as u64,
                ),
                (
                    "zmesh_device_open_calls",
                    "Calls open now, queued or running.",
                    s.open_calls as u64,
                ),
                (
                    "zmesh_device_methods",
                    "Method names routed now.",
                    s.methods as u64,
                ),
                (
                    "zmesh_device_request_bytes",
                    "Bytes of requests held now.",
                    s.request_bytes,
                ),
            ],
        )?;
        let per_service = |pick: fn(&crate::ServiceStats) -> u64| -> Vec<(&str, u64)> {
            s.services
                .iter()
                .map(|(name, service)| (name.as_str(), pick(service)))
                .collect()
        };
        let family = |name, help, values| CounterFamily {
            name,
            help,
            label: "service",
            values,
        };
        encode_gauge_families(
            &mut encoder,
            &[
                family(
                    "zmesh_device_service_queued",
                    "Calls waiting for a worker, per service.",
                    per_service(|v| v.queued as u64),
                ),
                family(
                    "zmesh_device_service_workers",
                    "Workers serving each service.",
                    per_service(|v| v.workers as u64),
                ),
                family(
                    "zmesh_device_service_in_flight",
                    "Calls running on workers, per service.",
                    per_service(|v| v.in_flight as u64),
                ),
            ],
        )?;
        let mut calls = encoder.encode_descriptor(
            "zmesh_device_service_calls",
            "Calls through the device per service, by outcome.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (service, v) in &s.services {
            for (outcome, count) in [
                ("dispatched", v.dispatched),
                ("completed", v.completed),
                ("failed", v.failed),
                ("overloaded", v.overloaded),
                ("redispatched", v.redispatched),
            ] {
                calls
                    .encode_family(&[("service", service.as_str()), ("outcome", outcome)])?
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(
                        &count, None,
                    )?;
            }
        }
        let mut refused: Vec<(&str, u64)> = vec![
            ("malformed", s.malformed),
            ("oversized", s.oversized),
            ("oversized_events", s.oversized_events),
            ("unknown_method", s.unknown_method),
            ("expired", s.expired),
            ("unauthenticated", s.unauthenticated),
            ("replay_rejected", s.replay_rejected),
        ];
        refused.extend(s.refused.iter().map(|(k, v)| (k.as_str(), *v)));
        encode_counters(
            &mut encoder,
            &[
                CounterFamily {
                    name: "zmesh_device_refused",
                    help: "Messages and announcements the device refused, by reason.",
                    label: "reason",
                    values: refused,
                },
                CounterFamily {
                    name: "zmesh_device_dropped",
                    help: "Messages dropped because their peer was not reading, by kind.",
                    label: "kind",
                    values: s.dropped.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
                },
                CounterFamily {
                    name: "zmesh_device_peers_gone",
                    help: "Clients and workers the device lost or saw leave.",
                    label: "how",
                    values: vec![
                        ("clients_lost", s.clients_lost),
                        ("workers_lost", s.workers_lost),
                        ("workers_left", s.workers_left),
                    ],
                },
                CounterFamily {
                    name: "zmesh_device_events_ignored",
                    help: "Events for calls that are not open, and replies for calls re-sent \
                           or failed meanwhile.",
                    label: "kind",
                    values: vec![
                        ("unknown_channel", s.unknown_channel),
                        ("stale_replies", s.stale_replies),
                    ],
                },
            ],
        )
    }
}
