//! Fuzzes the zerorpc wire codec: arbitrary bytes must decode or fail with an error (never
//! panic), the client's reply decoding must agree with the full decoding, and whatever
//! decodes must survive a re-encode and decode unchanged.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use zmesh_core::wire;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let _ = wire::decode_header(data);
    let reply = wire::decode_reply(&frame);
    let event = match wire::decode_event(&frame) {
        Ok(event) => event,
        Err(error) => {
            let reply = reply.expect_err("decode_reply accepts only what decode_event accepts");
            assert_eq!(reply.error, error.error, "same decode error");
            let response_to = error.header.and_then(|h| h.response_to);
            assert_eq!(reply.response_to, response_to, "same call addressed");
            return;
        }
    };
    let reply = reply.expect("decode_reply accepts what decode_event accepts");
    assert_eq!(reply.response_to, event.header.response_to, "same call addressed");
    assert_eq!(reply.zmesh, event.header.is_zmesh(), "same zmesh marker");
    assert_eq!(reply.name, event.name, "same name");
    assert_eq!(reply.args, event.args, "same args");
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
