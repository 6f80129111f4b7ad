//! Exposes a node's figures as Prometheus/OpenMetrics text, read at scrape time from the
//! atomics the node keeps anyway (so exporting costs the hot path nothing): the
//! OpenTelemetry RPC conventions' `rpc.server.call.duration` histogram per method (seconds,
//! the conventions' buckets; semconv v1.45 names, with `rpc.system.name` = `zerorpc`), calls
//! per method by outcome, calls and connections in flight, and every refusal and drop the
//! node counts, by reason. `_zmesh.stats` and `zmesh stats` read the same counters.
//!
//! Names follow the Prometheus translation of the conventions: dots become underscores and
//! the unit a suffix (`rpc_server_call_duration_seconds`), attributes become labels
//! (`rpc_method`, `rpc_system_name`). zmesh's own figures are prefixed `zmesh_`.
//!
//! A component plugged into the node (an [`Extension`](crate::node::Extension)) adds its own
//! figures through its attachment's [`Attachment::metrics`](crate::node::Attachment::metrics),
//! a [`Collector`] read at the same scrape (the node's events, a job queue).

use std::collections::HashSet;
use std::sync::Arc;

pub use crate::client::ClientMetrics;
pub use prometheus_client::collector::Collector;
pub use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::NoLabelSet;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::node::{NodeStats, Shared};
use crate::stats::MethodStats;

/// The HTTP `Content-Type` of [`NodeMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The value of the `rpc_system_name` label: the wire protocol.
const RPC_SYSTEM: &str = "zerorpc";

/// A handle on a node's figures for an exporter (from `Node::metrics`); it outlives
/// nothing: a scrape after the node shut down shows its last figures.
#[derive(Clone)]
pub struct NodeMetrics {
    shared: Arc<Shared>,
    /// The figures of the node's extensions, read at each scrape after the node's own.
    extensions: Vec<Arc<dyn Collector>>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("node", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl NodeMetrics {
    pub(crate) fn new(shared: Arc<Shared>, extensions: Vec<Arc<dyn Collector>>) -> Self {
        Self { shared, extensions }
    }

    /// The node's figures now, as OpenMetrics text (which Prometheus reads), its
    /// extensions' after its own.
    pub fn encode(&self) -> String {
        render_all(&self.collectors())
    }

    /// The node's figures now and its extensions', as collectors, for an exporter that
    /// renders them beside others ([`render_all`]; a mesh member's discovery figures).
    pub fn collectors(&self) -> Vec<Arc<dyn Collector>> {
        let mut collectors: Vec<Arc<dyn Collector>> = vec![Arc::new(Figures {
            stats: crate::node::stats_of(&self.shared),
            methods: methods_of(&self.shared),
        })];
        collectors.extend(self.extensions.iter().cloned());
        collectors
    }

    /// The figures the node's extensions add (a job queue's, its events'), for an exporter
    /// that shows them beside figures of its own (`zmesh proxy --jobs`).
    pub fn extensions(&self) -> &[Arc<dyn Collector>] {
        &self.extensions
    }
}

/// A collector shared with its extension, registered for one scrape (a registry owns what
/// it is given; `Arc<T>`'s own impl needs a sized `T`).
#[derive(Debug)]
struct SharedCollector(Arc<dyn Collector>);

impl Collector for SharedCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// Each method once, under its full name (a method exported unprefixed too shares its
/// statistics with the prefixed name), in name order.
fn methods_of(shared: &Shared) -> Vec<(String, Arc<MethodStats>)> {
    let mut names: Vec<(&String, &Arc<MethodStats>)> = shared
        .methods
        .iter()
        .map(|(name, method)| (name, &method.stats))
        .collect();
    // Prefixed names first, so the unprefixed alias of the same statistics is the one left out.
    names.sort_by_key(|(name, _)| (!name.contains('.'), (*name).clone()));
    let mut seen = HashSet::new();
    let mut methods: Vec<(String, Arc<MethodStats>)> = names
        .into_iter()
        .filter(|(_, stats)| seen.insert(Arc::as_ptr(stats)))
        .map(|(name, stats)| (name.clone(), Arc::clone(stats)))
        .collect();
    methods.sort_by(|a, b| a.0.cmp(&b.0));
    methods
}

/// One scrape's figures.
#[derive(Debug)]
struct Figures {
    stats: NodeStats,
    methods: Vec<(String, Arc<MethodStats>)>,
}

/// A counter family for a collector: its name (without `_total`, which the exposition
/// adds), help, and a count per value of one label. Components with figures of their own
/// (the proxy device) encode theirs with [`encode_counters`] and [`encode_gauges`] too.
#[derive(Debug)]
pub struct CounterFamily<'a> {
    /// The metric's name.
    pub name: &'a str,
    /// What it counts.
    pub help: &'a str,
    /// The label that tells its series apart.
    pub label: &'a str,
    /// Each label value with its count.
    pub values: Vec<(&'a str, u64)>,
}

/// The names of a side's call figures: its duration histogram (the conventions') and its
/// calls-by-outcome counter.
pub(crate) struct CallFamilies {
    pub(crate) duration: &'static str,
    pub(crate) duration_help: &'static str,
    pub(crate) calls: &'static str,
    pub(crate) calls_help: &'static str,
    pub(crate) errors: &'static str,
    pub(crate) errors_help: &'static str,
    /// Whether the side counts aborted calls (a server does; a client's dropped call is
    /// not counted).
    pub(crate) aborted: bool,
}

/// Encodes a side's call figures, server or client: the duration histogram per method
/// (`rpc_system_name`, `rpc_method`; seconds, the conventions' buckets), calls per method
/// and outcome, and failures per method and `error.type`, all from the same per-method
/// statistics.
pub(crate) fn encode_calls(
    encoder: &mut DescriptorEncoder,
    families: &CallFamilies,
    methods: &[(String, Arc<MethodStats>)],
) -> Result<(), std::fmt::Error> {
    let seconds = Unit::Seconds;
    let mut durations = encoder.encode_descriptor(
        families.duration,
        families.duration_help,
        Some(&seconds),
        MetricType::Histogram,
    )?;
    for (method, stats) in methods {
        let h = stats.durations();
        let labels = [
            ("rpc_system_name", RPC_SYSTEM),
            ("rpc_method", method.as_str()),
        ];
        durations
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum_s, h.count, &h.buckets, None)?;
    }
    let mut calls = encoder.encode_descriptor(
        families.calls,
        families.calls_help,
        None,
        MetricType::Counter,
    )?;
    for (method, stats) in methods {
        let s = stats.snapshot();
        let outcomes = [("ok", s.calls), ("error", s.errors), ("aborted", s.aborted)];
        let counted = if families.aborted { 3 } else { 2 };
        for (outcome, count) in &outcomes[..counted] {
            let labels = [("rpc_method", method.as_str()), ("outcome", *outcome)];
            calls
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(count, None)?;
        }
    }
    let mut errors = encoder.encode_descriptor(
        families.errors,
        families.errors_help,
        None,
        MetricType::Counter,
    )?;
    for (method, stats) in methods {
        for (error_type, count) in stats.errors_by_type() {
            let labels = [
                ("rpc_method", method.as_str()),
                ("error_type", error_type.as_str()),
            ];
            errors
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
    }
    Ok(())
}

/// Encodes counter families.
///
/// # Errors
/// The writer's error (none for a `String`).
pub fn encode_counters(
    encoder: &mut DescriptorEncoder,
    families: &[CounterFamily<'_>],
) -> Result<(), std::fmt::Error> {
    for family in families {
        let mut metric =
            encoder.encode_descriptor(family.name, family.help, None, MetricType::Counter)?;
        for (value, count) in &family.values {
            metric
                .encode_family(&[(family.label, *value)])?
                .encode_counter::<NoLabelSet, _, u64>(count, None)?;
        }
    }
    Ok(())
}

/// Encodes gauge families: the same shape as counters (one label, a value per label value),
/// for figures that go down as well as up (jobs per state, calls queued per service).
///
/// # Errors
/// The writer's error (none for a `String`).
pub fn encode_gauge_families(
    encoder: &mut DescriptorEncoder,
    families: &[CounterFamily<'_>],
) -> Result<(), std::fmt::Error> {
    for family in families {
        let mut metric =
            encoder.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
        for (value, count) in &family.values {
            metric
                .encode_family(&[(family.label, *value)])?
                .encode_gauge(count)?;
        }
    }
    Ok(())
}

/// Encodes unlabelled counters: (name without `_total`, help, value).
///
/// # Errors
/// The writer's error (none for a `String`).
pub fn encode_counter_values(
    encoder: &mut DescriptorEncoder,
    counters: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in counters {
        encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?
            .encode_counter::<NoLabelSet, _, u64>(value, None)?;
    }
    Ok(())
}

/// Encodes unlabelled gauges: (name, help, value).
///
/// # Errors
/// The writer's error (none for a `String`).
pub fn encode_gauges(
    encoder: &mut DescriptorEncoder,
    gauges: &[(&str, &str, u64)],
) -> Result<(), std::fmt::Error> {
    for (name, help, value) in gauges {
        encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?
            .encode_gauge(value)?;
    }
    Ok(())
}

/// A collector's figures now, as OpenMetrics text (which Prometheus reads).
pub fn render(collector: impl Collector) -> String {
    render_all(&[Arc::new(collector)])
}

/// Several collectors' figures now, in order, as one OpenMetrics text.
pub fn render_all(collectors: &[Arc<dyn Collector>]) -> String {
    let mut registry = Registry::default();
    for collector in collectors {
        registry.register_collector(Box::new(SharedCollector(Arc::clone(collector))));
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_calls(
            &mut encoder,
            &CallFamilies {
                duration: "rpc_server_call_duration",
                duration_help: "Duration of calls this node served (OpenTelemetry \
                                rpc.server.call.duration).",
                calls: "zmesh_server_calls",
                calls_help: "Calls this node finished, by method and outcome (ok, error, \
                             aborted).",
                errors: "zmesh_server_call_errors",
                errors_help: "Calls this node answered with an error, by method and \
                              error.type (the error's name on the wire).",
                aborted: true,
            },
            &self.methods,
        )?;
        let s = &self.stats;
        encode_gauges(
            &mut encoder,
            &[
                (
                    "zmesh_server_calls_in_flight",
                    "Calls running on this node now.",
                    s.in_flight as u64,
                ),
                (
                    "zmesh_server_peers_in_flight",
                    "Connections with calls running now.",
                    s.peers_in_flight as u64,
                ),
            ],
        )?;
        encode_counters(&mut encoder, &self.families())
    }
}

impl Figures {
    /// The node's counters, grouped by what they mean, each under the name `_zmesh.stats`
    /// gives it.
    fn families(&self) -> Vec<CounterFamily<'static>> {
        let s = &self.stats;
        vec![
            CounterFamily {
                name: "zmesh_server_requests_refused",
                help: "Requests refused before a handler ran, by reason (each answered with \
                       ERR where a reply address exists).",
                label: "reason",
                values: vec![
                    ("malformed", s.malformed),
                    ("oversized", s.oversized),
                    ("overloaded", s.overloaded),
                    ("fair_share_refused", s.fair_share_refused),
                    ("peer_overloaded", s.peer_overloaded),
                    ("expired", s.expired),
                    ("unauthenticated", s.unauthenticated),
                    ("replay_rejected", s.replay_rejected),
                ],
            },
            CounterFamily {
                name: "zmesh_server_messages_dropped",
                help: "Messages the node dropped, by reason.",
                label: "reason",
                values: vec![
                    ("replies_dropped", s.replies_dropped),
                    ("oversized_replies", s.oversized_replies),
                    ("control_dropped_full", s.control_dropped_full),
                    ("control_dropped_gone", s.control_dropped_gone),
                    ("refusals_suppressed", s.refusals_suppressed),
                    ("unknown_channel", s.unknown_channel),
                    ("send_queue_full", s.send_queue_full),
                ],
            },
            CounterFamily {
                name: "zmesh_server_connections_closed",
                help: "Connections the node closed or refused, by reason.",
                label: "reason",
                values: vec![
                    ("garbage_disconnects", s.garbage_disconnects),
                    ("conn_oversized", s.conn_oversized),
                    ("conn_too_many_frames", s.conn_too_many_frames),
                    ("handshake_timeouts", s.handshake_timeouts),
                    ("connections_refused", s.connections_refused),
                    ("accept_errors", s.accept_errors),
                    ("peers_disconnected", s.peers_disconnected),
                ],
            },
            CounterFamily {
                name: "zmesh_server_calls_ended_early",
                help: "Calls that ended before their handler did, by cause.",
                label: "cause",
                values: vec![("cancelled", s.cancelled), ("peers_lost", s.peers_lost)],
            },
            CounterFamily {
                name: "zmesh_server_requests_replayed",
                help: "Repeats of a request answered from the reply cache instead of running \
                       again.",
                label: "source",
                values: vec![("reply_cache", s.replayed)],
            },
        ]
    }
}
