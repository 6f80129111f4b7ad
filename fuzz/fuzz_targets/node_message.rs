//! Fuzzes the node's handling of whole multipart messages, through the socket-free harness
//! that runs the same entry point as the node's ROUTER reader.
//!
//! Input format (so the seed corpus can hold real captures): a sequence of frames, each a
//! little-endian u16 length then that many bytes; a trailing partial frame takes the rest.
//! The node must never panic, and every message it sends must be a valid zerorpc event with
//! a route in front (replies of calls that finish later, and heartbeats, may go to the
//! identity of an earlier input, so the route is not compared with this input's).
#![no_main]

use std::cell::RefCell;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use zmesh_core::NodeConfig;
use zmesh_core::node::harness::Harness;
use zmesh_core::wire;

/// Messages one harness handles before it is replaced, so calls left running (`echo.sleep`
/// with a huge argument) cannot pin every slot for the rest of the run.
const MESSAGES_PER_HARNESS: u32 = 2_000;

thread_local! {
    static HARNESS: RefCell<Option<(u32, Harness)>> = const { RefCell::new(None) };
}

fn frames(mut data: &[u8]) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while !data.is_empty() && frames.len() < 16 {
        if data.len() < 2 {
            frames.push(Bytes::copy_from_slice(data));
            break;
        }
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let take = len.min(rest.len());
        frames.push(Bytes::copy_from_slice(&rest[..take]));
        data = &rest[take..];
    }
    frames
}

fn harness() -> Harness {
    let config = NodeConfig::default()
        .max_concurrent_calls(64)
        .max_calls_per_peer(16)
        .max_message_size(64 * 1024)
        .max_bytes_per_peer(256 * 1024);
    Harness::new(&[zmesh_echo::service()], config).expect("harness starts")
}

fuzz_target!(|data: &[u8]| {
    let frames = frames(data);
    HARNESS.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (handled, h) = slot.get_or_insert_with(|| (0, harness()));
        let sent = h.handle(frames);
        for message in sent {
            let out = message.into_vec();
            assert!(out.len() >= 2, "a reply is routed: {out:?}");
            let event = out.last().expect("a reply has an event frame");
            wire::decode_event(event).expect("the node only sends valid events");
        }
        *handled += 1;
        if *handled >= MESSAGES_PER_HARNESS {
            *slot = None;
        }
    });
});
