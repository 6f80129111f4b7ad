//! Every method name, name prefix and topic prefix zmesh reserves, in one place, with the
//! one check nodes and devices share ([`is_reserved_method`]).
//!
//! Two families of methods:
//!
//! - **zerorpc's own built-ins**, `_zerorpc_<name>` ([`ZERORPC_PING`], [`ZERORPC_INSPECT`],
//!   ...). They keep zerorpc's exact names: stock zerorpc clients and tools call them.
//! - **zmesh's methods**, one scheme: `_zmesh.<name>`, the methods of the [`ZMESH_SERVICE`]
//!   service ([`STATS`], [`DEVICE_STATS`], [`SNAPSHOT`], [`PEERS`]). Two of them had
//!   `_zmesh_<name>` names before, which deployed CLIs and tooling still call, so nodes and
//!   devices keep answering those as aliases ([`LEGACY_STATS`], [`LEGACY_DEVICE_STATS`]).
//!
//! The event names of the wire protocol (`_zmesh_cancel`, `_zmesh_worker_*`,
//! `_zmesh_device_*`, in [`crate::wire`]) are events, not methods; they keep their names, and
//! their `_zmesh_` prefix ([`LEGACY_PREFIX`]) stays reserved too.
//!
//! Topics starting with [`TOPIC_PREFIX`] (`_zmesh.`) are zmesh's own (snapshot markers,
//! [`SYNC_TOPIC_PREFIX`]): publishers refuse them and subscribers do not deliver them.

/// Prefix of zerorpc's built-in methods.
pub const ZERORPC_PREFIX: &str = "_zerorpc_";
/// The name under which zerorpc's built-ins are grouped as a service (the device routes
/// those it does not answer itself to any worker, as calls of this pseudo-service).
pub const ZERORPC_SERVICE: &str = "_zerorpc";
/// `_zerorpc_ping []` answers `["pong", name]`.
pub const ZERORPC_PING: &str = "_zerorpc_ping";
/// `_zerorpc_name []` answers the server's name.
pub const ZERORPC_NAME: &str = "_zerorpc_name";
/// `_zerorpc_list []` answers the public method names.
pub const ZERORPC_LIST: &str = "_zerorpc_list";
/// `_zerorpc_help [method]` answers a method's doc string.
pub const ZERORPC_HELP: &str = "_zerorpc_help";
/// `_zerorpc_args [method]` answers a method's arguments, in `getargspec` shape.
pub const ZERORPC_ARGS: &str = "_zerorpc_args";
/// `_zerorpc_inspect []` answers the server's name and every method's args and doc.
pub const ZERORPC_INSPECT: &str = "_zerorpc_inspect";

/// The service zmesh's own methods belong to: each is `_zmesh.<name>`.
pub const ZMESH_SERVICE: &str = "_zmesh";
/// Prefix of zmesh's own methods: [`ZMESH_SERVICE`] and the dot.
pub const ZMESH_PREFIX: &str = "_zmesh.";
/// A node's statistics: its counters and per-method calls, errors and latency.
pub const STATS: &str = "_zmesh.stats";
/// A proxy device's statistics: per service, and what it refused and dropped.
pub const DEVICE_STATS: &str = "_zmesh.device_stats";
/// The snapshot method a node with events serves (`[prefix, marker_topic, token]`).
pub const SNAPSHOT: &str = "_zmesh.snapshot";
/// The gossip method every mesh node serves (`[mesh, caller_record_or_nil]`).
pub const PEERS: &str = "_zmesh.peers";

/// [`STATS`] within [`ZMESH_SERVICE`], for `Service::new(ZMESH_SERVICE).method(..)`.
pub const STATS_IN_SERVICE: &str = "stats";
/// [`SNAPSHOT`] within [`ZMESH_SERVICE`].
pub const SNAPSHOT_IN_SERVICE: &str = "snapshot";
/// [`PEERS`] within [`ZMESH_SERVICE`].
pub const PEERS_IN_SERVICE: &str = "peers";

/// Prefix of zmesh's older method names and of the wire protocol's event names
/// (`_zmesh_cancel`, `_zmesh_worker_ready`, ...).
pub const LEGACY_PREFIX: &str = "_zmesh_";
/// The former name of [`STATS`]. Kept as an alias that every node answers: `zmesh stats`
/// of earlier releases and the dashboards and scripts written against it call this name,
/// and they keep working against upgraded nodes.
pub const LEGACY_STATS: &str = "_zmesh_stats";
/// The former name of [`DEVICE_STATS`]. Kept as an alias the proxy device answers, for the
/// same reason as [`LEGACY_STATS`]: deployed CLIs and tooling call it.
pub const LEGACY_DEVICE_STATS: &str = "_zmesh_device_stats";

/// Topics starting with this are zmesh's own; `publish` refuses them.
pub const TOPIC_PREFIX: &str = "_zmesh.";
/// Prefix of the marker topics a snapshot publishes (`_zmesh.sync.<subscriber id>`).
pub const SYNC_TOPIC_PREFIX: &str = "_zmesh.sync.";

/// Whether `name` is one of zmesh's or zerorpc's reserved method names: `_zerorpc_*`,
/// `_zmesh.*` or `_zmesh_*`. Nodes refuse to host such a method from a service, and a proxy
/// device refuses a worker that announces one: only zmesh itself serves them.
pub fn is_reserved_method(name: &str) -> bool {
    is_zerorpc_builtin(name) || name.starts_with(ZMESH_PREFIX) || name.starts_with(LEGACY_PREFIX)
}

/// Whether `name` is one of zerorpc's built-ins (`_zerorpc_*`), which every server answers
/// from static data.
pub fn is_zerorpc_builtin(name: &str) -> bool {
    name.starts_with(ZERORPC_PREFIX)
}

/// Whether `topic` is one of zmesh's own topics (`_zmesh.*`), which applications may not
/// publish.
pub fn is_reserved_topic(topic: &str) -> bool {
    topic.starts_with(TOPIC_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names as they travel: peers (stock zerorpc, deployed zmesh) match these bytes.
    #[test]
    fn the_names_on_the_wire() {
        let names = [
            (ZERORPC_PING, "_zerorpc_ping"),
            (ZERORPC_NAME, "_zerorpc_name"),
            (ZERORPC_LIST, "_zerorpc_list"),
            (ZERORPC_HELP, "_zerorpc_help"),
            (ZERORPC_ARGS, "_zerorpc_args"),
            (ZERORPC_INSPECT, "_zerorpc_inspect"),
            (STATS, "_zmesh.stats"),
            (DEVICE_STATS, "_zmesh.device_stats"),
            (SNAPSHOT, "_zmesh.snapshot"),
            (PEERS, "_zmesh.peers"),
            (LEGACY_STATS, "_zmesh_stats"),
            (LEGACY_DEVICE_STATS, "_zmesh_device_stats"),
            (SYNC_TOPIC_PREFIX, "_zmesh.sync."),
        ];
        for (constant, wire) in names {
            assert_eq!(constant, wire);
        }
    }

    #[test]
    fn zmesh_methods_follow_one_scheme() {
        for (full, short) in [
            (STATS, STATS_IN_SERVICE),
            (SNAPSHOT, SNAPSHOT_IN_SERVICE),
            (PEERS, PEERS_IN_SERVICE),
            (DEVICE_STATS, "device_stats"),
        ] {
            assert_eq!(full, format!("{ZMESH_SERVICE}.{short}"));
            assert!(full.starts_with(ZMESH_PREFIX));
            assert!(is_reserved_method(full), "{full}");
        }
        assert_eq!(ZMESH_PREFIX, format!("{ZMESH_SERVICE}."));
    }

    #[test]
    fn the_legacy_aliases_are_reserved_and_differ_from_the_new_names() {
        for (legacy, new) in [(LEGACY_STATS, STATS), (LEGACY_DEVICE_STATS, DEVICE_STATS)] {
            assert!(legacy.starts_with(LEGACY_PREFIX));
            assert!(is_reserved_method(legacy), "{legacy}");
            assert_ne!(legacy, new);
            assert_eq!(
                legacy.strip_prefix(LEGACY_PREFIX),
                new.strip_prefix(ZMESH_PREFIX),
                "the same name under the new scheme"
            );
        }
    }

    #[test]
    fn zerorpc_builtins_keep_their_names_and_are_reserved() {
        for name in [
            ZERORPC_PING,
            ZERORPC_NAME,
            ZERORPC_LIST,
            ZERORPC_HELP,
            ZERORPC_ARGS,
            ZERORPC_INSPECT,
        ] {
            assert!(name.starts_with(ZERORPC_PREFIX));
            assert_eq!(
                name,
                format!("{ZERORPC_SERVICE}_{}", &name[ZERORPC_PREFIX.len()..])
            );
            assert!(
                is_zerorpc_builtin(name) && is_reserved_method(name),
                "{name}"
            );
        }
        assert!(!is_zerorpc_builtin(STATS));
    }

    #[test]
    fn the_wire_event_names_are_under_a_reserved_prefix() {
        use crate::wire::{names, worker};
        for name in [
            names::CANCEL,
            worker::READY,
            worker::WORKER_HEARTBEAT,
            worker::BYE,
            worker::DEVICE_HEARTBEAT,
            worker::REFUSED,
            worker::RESET,
        ] {
            assert!(name.starts_with(LEGACY_PREFIX), "{name}");
            assert!(is_reserved_method(name), "{name}");
        }
    }

    #[test]
    fn application_names_are_not_reserved() {
        for name in [
            "echo.upper",
            "upper",
            "_private",
            "zmesh.stats",
            "_zmeshy",
            "_zerorpc",
        ] {
            assert!(!is_reserved_method(name), "{name}");
        }
    }

    #[test]
    fn zmesh_topics_are_reserved() {
        assert!(is_reserved_topic("_zmesh.sync.abc"));
        assert!(SYNC_TOPIC_PREFIX.starts_with(TOPIC_PREFIX));
        assert!(is_reserved_topic(SYNC_TOPIC_PREFIX));
        for topic in ["", "orders.created", "_zmesh", "_zmesh_x", "zmesh.x"] {
            assert!(!is_reserved_topic(topic), "{topic}");
        }
    }
}
