//! Provides the methods every node answers by itself: the `_zerorpc_*` introspection
//! methods, in the shapes the stock zerorpc client and CLI expect, and `_zmesh.stats` (also
//! answered under its former name `_zmesh_stats`, see [`reserved::LEGACY_STATS`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rmpv::Value;
use zmesh_proto::ErrorKind;

use super::Counters;
use crate::reserved;
use crate::service::{HandlerError, Method, Service};
use crate::stats::MethodStats;

/// What `_zerorpc_inspect` reports per method.
#[derive(Clone)]
struct MethodInfo {
    doc: Option<String>,
    args: Option<Vec<String>>,
}

/// Adds the built-ins to a complete method table (so listings include every method).
pub(super) fn register(node_name: &str, methods: &mut HashMap<String, Arc<Method>>) {
    let public: BTreeMap<String, MethodInfo> = methods
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|(name, m)| {
            let info = MethodInfo {
                doc: m.doc.clone(),
                args: m.arg_names.clone(),
            };
            (name.clone(), info)
        })
        .collect();
    let public = Arc::new(public);
    let name = node_name.to_owned();

    let inspect = {
        let methods = public
            .iter()
            .map(|(m, info)| {
                let args = match &info.args {
                    Some(names) => Value::Array(
                        names
                            .iter()
                            .map(|a| {
                                Value::Map(vec![(Value::from("name"), Value::from(a.as_str()))])
                            })
                            .collect(),
                    ),
                    None => Value::Nil,
                };
                let doc = info.doc.as_deref().map(Value::from).unwrap_or(Value::Nil);
                let entry =
                    Value::Map(vec![(Value::from("args"), args), (Value::from("doc"), doc)]);
                (Value::from(m.as_str()), entry)
            })
            .collect();
        Value::Map(vec![
            (Value::from("name"), Value::from(name.as_str())),
            (Value::from("methods"), Value::Map(methods)),
        ])
    };

    let lookup = {
        let public = public.clone();
        move |method: &str| {
            public.get(method).cloned().ok_or_else(|| {
                HandlerError::new(ErrorKind::KeyError.as_str(), format!("'{method}'"))
            })
        }
    };

    let ping_name = name.clone();
    let help_lookup = lookup.clone();
    let builtins = Service::new(reserved::ZERORPC_SERVICE)
        .method("ping", move || {
            let n = ping_name.clone();
            async move { Ok(("pong", n)) }
        })
        .method("name", move || {
            let n = name.clone();
            async move { Ok(n) }
        })
        .method("list", {
            let list: Vec<String> = public.keys().cloned().collect();
            move || {
                let list = list.clone();
                async move { Ok(list) }
            }
        })
        .method("help", move |method: String| {
            let found = help_lookup(&method);
            async move { found.map(|info| info.doc) }
        })
        .method("args", move |method: String| {
            let found = lookup(&method);
            // getargspec shape: [args, varargs, keywords, defaults]
            async move { found.map(|info| (info.args.unwrap_or_default(), (), (), ())) }
        })
        .method("inspect", move || {
            let v = inspect.clone();
            async move { Ok(v) }
        })
        .into_service();
    for (method, entry) in builtins.methods {
        methods.insert(
            format!("{}{method}", reserved::ZERORPC_PREFIX),
            Arc::new(entry),
        );
    }
}

/// Adds `_zmesh.stats` ([`reserved::STATS`]), also under its former name `_zmesh_stats`
/// ([`reserved::LEGACY_STATS`]): the node's name, uptime and counters, and per method its
/// calls, errors, aborted calls and latency percentiles. Call last, on the complete method
/// table, so every method (this one included) is reported. A method exported under two
/// names (prefixed and unprefixed) is one method with one set of figures, reported under
/// its prefixed name; the two stats names are one method too, reported as `_zmesh.stats`.
pub(super) fn register_stats(
    node_name: &str,
    methods: &mut HashMap<String, Arc<Method>>,
    counters: Arc<Counters>,
) {
    let own_stats = Arc::new(MethodStats::default());
    let mut table: BTreeMap<String, Arc<MethodStats>> = BTreeMap::new();
    let mut seen: HashMap<*const MethodStats, String> = HashMap::new();
    let all = methods
        .iter()
        .map(|(name, m)| (name.clone(), m.stats.clone()))
        .chain([(reserved::STATS.to_owned(), own_stats.clone())]);
    for (name, stats) in all {
        let key = Arc::as_ptr(&stats);
        match seen.get(&key) {
            // Keep the longer (prefixed) of two names for the same method.
            Some(other) if other.len() >= name.len() => continue,
            Some(other) => {
                table.remove(other);
            }
            None => {}
        }
        seen.insert(key, name.clone());
        table.insert(name, stats);
    }
    let node_name = node_name.to_owned();
    let started = std::time::Instant::now();
    let table = Arc::new(table);
    let handler = Service::new(reserved::ZMESH_SERVICE)
        .method(reserved::STATS_IN_SERVICE, move || {
            let report = stats_report(&node_name, started, &counters, &table);
            async move { Ok(report) }
        })
        .into_service();
    if let Some(method) = handler.methods.get(reserved::STATS_IN_SERVICE) {
        let method = Arc::new(Method {
            stats: own_stats,
            ..method.clone()
        });
        methods.insert(reserved::STATS.to_owned(), method.clone());
        methods.insert(reserved::LEGACY_STATS.to_owned(), method);
    }
}

fn stats_report(
    node_name: &str,
    started: std::time::Instant,
    counters: &Counters,
    table: &BTreeMap<String, Arc<MethodStats>>,
) -> Value {
    let count = |name: &str, v: &std::sync::atomic::AtomicU64| {
        (
            Value::from(name),
            Value::from(v.load(std::sync::atomic::Ordering::Relaxed)),
        )
    };
    let counters_list = vec![
        count("calls", &counters.calls),
        count("malformed", &counters.malformed),
        count("oversized", &counters.oversized),
        count("oversized_replies", &counters.oversized_replies),
        count("overloaded", &counters.overloaded),
        count("fair_share_refused", &counters.fair_share_refused),
        count("peer_overloaded", &counters.peer_overloaded),
        count("expired", &counters.expired),
        count("unknown_channel", &counters.unknown_channel),
        count("cancelled", &counters.cancelled),
        count("peers_lost", &counters.peers_lost),
        count("replies_dropped", &counters.replies_dropped),
        count("unauthenticated", &counters.unauthenticated),
        count("replay_rejected", &counters.replayed_messages),
        count("control_dropped_full", &counters.control_dropped_full),
        count("control_dropped_gone", &counters.control_dropped_gone),
        count("refusals_suppressed", &counters.refusals_suppressed),
        count("garbage_disconnects", &counters.garbage_disconnects),
    ];
    // The sockets' limit counters (see `NodeStats`), under the same names.
    let zmtp = counters.zmtp();
    let counters = Value::Map(
        counters_list
            .into_iter()
            .chain(
                [
                    ("conn_oversized", zmtp.oversized),
                    ("conn_too_many_frames", zmtp.too_many_frames),
                    ("handshake_timeouts", zmtp.handshake_timeouts),
                    ("connections_refused", zmtp.connections_refused),
                    ("accept_errors", zmtp.accept_errors),
                    ("send_queue_full", zmtp.send_queue_full),
                    ("peers_disconnected", zmtp.disconnected),
                ]
                .map(|(name, n)| (Value::from(name), Value::from(n))),
            )
            .collect(),
    );
    let methods = table
        .iter()
        .map(|(name, stats)| {
            let s = stats.snapshot();
            let field = |k: &str, v: u64| (Value::from(k), Value::from(v));
            let figures = Value::Map(vec![
                field("calls", s.calls),
                field("errors", s.errors),
                field("aborted", s.aborted),
                field("p50_us", s.p50_us),
                field("p90_us", s.p90_us),
                field("p99_us", s.p99_us),
                field("p999_us", s.p999_us),
                field("max_us", s.max_us),
            ]);
            (Value::from(name.as_str()), figures)
        })
        .collect();
    Value::Map(vec![
        (Value::from("node"), Value::from(node_name)),
        (
            Value::from("uptime_s"),
            Value::F64(started.elapsed().as_secs_f64()),
        ),
        (Value::from("counters"), counters),
        (Value::from("methods"), Value::Map(methods)),
    ])
}
