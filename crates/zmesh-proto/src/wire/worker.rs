//! Provides the control events of zmesh's worker protocol, spoken between a worker node and
//! a proxy device on the device's backend socket: the names, and the `READY` announcement
//! with its encoding. Pure, like the rest of `wire`.
//!
//! A worker connects a DEALER to the device's backend ROUTER. Control events travel as
//! `["", event]` from the worker (the device sees `[worker_id, "", event]`) and as
//! `[worker_id, "", event]` from the device (the worker sees `["", event]`). Requests and
//! their replies carry the client's envelope instead: `[worker_id, client_id, "", event]` at
//! the device, `[client_id, "", event]` at the worker, exactly what a node's ROUTER sees.
//! See `docs/PROTOCOL.md`, section "Worker protocol".

use serde::{Deserialize, Serialize};

/// Worker -> device: the worker's services and capacity; args `[Ready]`. Sent after every
/// (re)connect.
pub const READY: &str = "_zmesh_worker_ready";
/// Worker -> device: the worker is alive; args `[0]`. Sent every heartbeat period.
pub const WORKER_HEARTBEAT: &str = "_zmesh_worker_hb";
/// Worker -> device: the worker is shutting down; route no new calls to it; args `[]`.
pub const BYE: &str = "_zmesh_worker_bye";
/// Device -> worker: the device is alive; args `[0]`. Sent every worker heartbeat period.
pub const DEVICE_HEARTBEAT: &str = "_zmesh_device_hb";
/// Device -> worker: the device refused a message from this worker because of the mesh key
/// (unsealed, wrong key, replayed); args `[reason]`. Always sent unsealed, since the worker
/// may not hold the key: a keyed worker only logs it. The worker is not registered; it
/// tries again when its link times out.
pub const REFUSED: &str = "_zmesh_device_refused";
/// Device -> worker: the device does not know this worker (it restarted, or declared the
/// worker dead); the worker must reconnect and announce itself again; args `[]`.
pub const RESET: &str = "_zmesh_device_reset";

/// Most methods one `READY` may announce; a larger announcement is refused.
pub const MAX_ANNOUNCED_METHODS: usize = 65_536;

/// One routable method a worker offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AnnouncedMethod {
    /// The name clients call (`service.method`, or the bare method when exported unprefixed).
    pub name: String,
    /// The service it belongs to; the device queues and balances per service.
    pub service: String,
    /// Whether a call may be run again on another worker when its worker is lost.
    pub idempotent: bool,
}

impl AnnouncedMethod {
    /// Describes one method.
    pub fn new(name: impl Into<String>, service: impl Into<String>, idempotent: bool) -> Self {
        Self {
            name: name.into(),
            service: service.into(),
            idempotent,
        }
    }
}

/// The args of [`READY`]: what a worker offers and how the device should treat it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Ready {
    /// The worker node's name (for logs and statistics).
    pub name: String,
    /// Calls the device may have open on this worker at once.
    pub capacity: u32,
    /// The worker's heartbeat period in milliseconds; the device heartbeats the worker (and
    /// its open calls) at this period and declares it dead after three silent periods.
    pub heartbeat_ms: u64,
    /// The methods offered.
    pub methods: Vec<AnnouncedMethod>,
}

/// Why a `READY` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadyError {
    /// The args are not `[{name, capacity, heartbeat_ms, methods}]`.
    #[error("malformed worker READY: {0}")]
    Malformed(String),
    /// Capacity 0, heartbeat under 10 ms, or too many methods.
    #[error("invalid worker READY: {0}")]
    Invalid(&'static str),
}

impl Ready {
    /// Describes a worker: its name, capacity, heartbeat period (ms) and methods. Not
    /// checked here; [`Ready::decode_args`] checks what a peer sends.
    pub fn new(
        name: impl Into<String>,
        capacity: u32,
        heartbeat_ms: u64,
        methods: Vec<AnnouncedMethod>,
    ) -> Self {
        Self {
            name: name.into(),
            capacity,
            heartbeat_ms,
            methods,
        }
    }

    /// Encodes the args array `[ready]`.
    ///
    /// # Errors
    /// Never in practice (plain strings, integers and booleans always encode); the error is
    /// the encoder's message.
    pub fn encode_args(&self) -> Result<Vec<u8>, String> {
        rmp_serde::to_vec_named(&(self,)).map_err(|e| e.to_string())
    }

    /// Decodes and checks the args array of a `READY` from a peer.
    ///
    /// # Errors
    /// [`ReadyError`] when the shape is wrong or the values are out of range.
    pub fn decode_args(args: &[u8]) -> Result<Self, ReadyError> {
        let mut de = rmp_serde::Deserializer::from_read_ref(args);
        de.set_max_depth(8);
        let (ready,): (Self,) = Deserialize::deserialize(&mut de)
            .map_err(|e: rmp_serde::decode::Error| ReadyError::Malformed(e.to_string()))?;
        if ready.capacity == 0 {
            return Err(ReadyError::Invalid("capacity must be at least 1"));
        }
        if ready.heartbeat_ms < 10 {
            return Err(ReadyError::Invalid("heartbeat_ms must be at least 10"));
        }
        if ready.methods.len() > MAX_ANNOUNCED_METHODS {
            return Err(ReadyError::Invalid("too many methods"));
        }
        Ok(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_round_trips_and_is_checked() {
        let ready = Ready {
            name: "w".into(),
            capacity: 8,
            heartbeat_ms: 500,
            methods: vec![AnnouncedMethod::new("echo.echo", "echo", true)],
        };
        let args = ready.encode_args().expect("encodes");
        assert_eq!(Ready::decode_args(&args), Ok(ready.clone()));

        let zero = Ready {
            capacity: 0,
            ..ready
        };
        let args = zero.encode_args().expect("encodes");
        assert!(matches!(
            Ready::decode_args(&args),
            Err(ReadyError::Invalid(_))
        ));
        assert!(matches!(
            Ready::decode_args(&[0x91, 0x01]),
            Err(ReadyError::Malformed(_))
        ));
    }
}
