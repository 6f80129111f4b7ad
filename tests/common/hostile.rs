//! Builds what hostile peers send a proxy device (a worker `READY`, raw requests) and reads
//! a process's resident set; shared by tests/device_hostile.rs and
//! examples/device_attacks.rs, which measures the same attacks against a release binary.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use zeromq::ZmqMessage;
use zmesh::wire::worker::{self as proto, AnnouncedMethod};
use zmesh::wire::{self, Header, MessageId};

/// A multipart message from frames (never empty here).
pub fn message(frames: Vec<Bytes>) -> ZmqMessage {
    ZmqMessage::try_from(frames).expect("non-empty")
}

/// A worker `READY` named `rogue` with `capacity`, a 1 s heartbeat and `(method, service)`s.
pub fn ready_event(capacity: u32, methods: &[(String, String)]) -> Bytes {
    let methods: Vec<AnnouncedMethod> = methods
        .iter()
        .map(|(m, s)| AnnouncedMethod::new(m.clone(), s.clone(), false))
        .collect();
    let args = rmp_serde::to_vec_named(&(("rogue", capacity, 1000u64, methods),)).expect("encodes");
    wire::encode_event(&Header::zmesh(None), proto::READY, &args)
}

/// The table flood: 40 `READY`s of 65,536 new services (one method each) apiece.
pub fn flood_readies() -> Vec<Bytes> {
    (0..40)
        .map(|i| {
            let methods: Vec<(String, String)> = (0..65_536)
                .map(|j| (format!("f{i}x{j}.m"), format!("f{i}x{j}")))
                .collect();
            ready_event(1, &methods)
        })
        .collect()
}

/// A request for `method` with no args, as a DEALER sends it (`["", event]`).
pub fn raw_request(method: &str) -> ZmqMessage {
    let id = MessageId::generate();
    let frame = wire::encode_event(&Header::zmesh_with_id(id, None), method, &[0x90]);
    message(vec![Bytes::new(), frame])
}

/// VmRSS of process `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
