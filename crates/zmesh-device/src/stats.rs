//! Provides the device's figures: per service and device-wide, as returned by
//! [`Device::stats`](crate::Device::stats) and by the `_zmesh.device_stats` method (msgpack
//! maps with these field names, so any zerorpc client can read them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Figures of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Calls waiting for a free worker now.
    pub queued: usize,
    /// Workers offering the service now.
    pub workers: usize,
    /// Calls running on a worker now.
    pub in_flight: usize,
    /// Calls sent to a worker (a re-dispatched call counts again).
    pub dispatched: u64,
    /// Calls answered by a worker (`OK`, `ERR` or the end of a stream).
    pub completed: u64,
    /// Calls failed with `PeerLost` because their worker was lost.
    pub failed: u64,
    /// Calls refused with `Overloaded` (queue full).
    pub overloaded: u64,
    /// Calls run again on another worker after theirs was lost (idempotent methods) or
    /// refused them while shutting down.
    pub redispatched: u64,
}

/// Figures of the whole device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeviceStats {
    /// Per service, by name.
    pub services: BTreeMap<String, ServiceStats>,
    /// Workers connected now.
    pub workers: usize,
    /// Calls open now (queued or running).
    pub open_calls: usize,
    /// Messages that were not valid events (from clients or workers).
    pub malformed: u64,
    /// Messages over `max_message_size` (from clients or workers), refused before
    /// decoding, as a node counts them.
    #[serde(default)]
    pub oversized: u64,
    /// Messages over `max_message_size` dropped by the event forwarder (events from
    /// publishers, or subscriptions from subscribers).
    #[serde(default)]
    pub oversized_events: u64,
    /// Requests for methods no worker ever announced (answered `NameError`).
    pub unknown_method: u64,
    /// Events for calls that are not open (late heartbeats, mostly).
    pub unknown_channel: u64,
    /// Replies from a worker for a call that was re-dispatched or failed meanwhile.
    pub stale_replies: u64,
    /// Requests dropped because their deadline passed before a worker was free.
    pub expired: u64,
    /// Calls cancelled because their client stopped heartbeating or disconnected.
    pub clients_lost: u64,
    /// Workers declared lost: disconnected without saying they were shutting down, or
    /// silent for three heartbeat periods.
    pub workers_lost: u64,
    /// Workers that left gracefully: said they were shutting down (`BYE`), then
    /// disconnected.
    #[serde(default)]
    pub workers_left: u64,
    /// Messages refused by the mesh key (from clients or workers): unsealed, sealed with
    /// another key, tampered, or sealed while the device has no key.
    #[serde(default)]
    pub unauthenticated: u64,
    /// Messages refused as replays: seen before, or outside the replay window.
    #[serde(default)]
    pub replay_rejected: u64,
    /// Method names routed now (every live worker's announcements, each name once).
    #[serde(default)]
    pub methods: usize,
    /// Bytes of request frames held now (queued calls and running ones).
    #[serde(default)]
    pub request_bytes: u64,
    /// What the device refused, by reason: worker announcements (`ready_heartbeat`,
    /// `ready_remap`, `ready_worker_bounds`, `ready_table_full`, `ready_name`), requests
    /// (`request_bytes`: the byte bound; `queue_full`: a service's queue;
    /// `no_worker`: no worker serves the method), and `suppressed`: refusals not sent
    /// because their connection passed its refusal rate. `capacity_capped` counts
    /// announcements whose capacity was lowered to the bound (accepted).
    #[serde(default)]
    pub refused: BTreeMap<String, u64>,
    /// Messages the device dropped because their peer's queue was full (it is not
    /// reading), by what they were: `heartbeat`, `refusal` (an `ERR` the device made),
    /// `answer` (a built-in's `OK`), `control` (worker protocol), `reply` (a worker's reply
    /// or stream item for a client), `request` (a client's request or event for a worker),
    /// `cancel`. A drop never waits and only concerns that peer.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
}
