//! Fuzzes the zerorpc wire codec: arbitrary bytes must decode or fail with an error (never
//! panic), and whatever decodes must survive a re-encode and decode unchanged.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use zmesh_core::wire;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let _ = wire::decode_header(data);
    let Ok(event) = wire::decode_event(&frame) else {
        return;
    };
    // The helpers a node or client applies to the args of control events and errors.
    let _ = wire::parse_err_args(&event.args);
    let _ = wire::parse_more_args(&event.args);
    let again = wire::encode_event(&event.header, &event.name, &event.args);
    let decoded = wire::decode_event(&again).expect("a re-encoded event decodes");
    assert_eq!(decoded.header, event.header, "header round-trips");
    assert_eq!(decoded.name, event.name, "name round-trips");
    assert_eq!(decoded.args, event.args, "args round-trip");
    // Encoding is canonical: a second round gives the same bytes.
    let third = wire::encode_event(&decoded.header, &decoded.name, &decoded.args);
    assert_eq!(third, again, "encoding is stable");
});
