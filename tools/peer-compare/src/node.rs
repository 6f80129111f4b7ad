//! The node's own cost, seen from an independent client: the `raw` row's DEALER (the same
//! code, over the fork) sending stock zerorpc requests, as a Python or Node client would,
//! with no zmesh marker, to the `zmesh` row's node. Against the `raw` row (the same DEALER
//! and a ROUTER echo, on the same runtime flavour) the ratio is what the node adds to a
//! call: decoding, dispatch, the handler's future, encoding the reply.

use bytes::Bytes;
use zmesh_core::wire::{Header, MessageId, encode_event};

/// A zerorpc `echo.echo` request of `payload` as a msgpack bin, under a fresh id (a node
/// refuses an id already in flight from the same peer).
fn request(payload: &Bytes, _n: u64) -> Bytes {
    let header = Header {
        zmesh: None,
        ..Header::zmesh_with_id(MessageId::generate(), None)
    };
    let args = rmpv::Value::Array(vec![rmpv::Value::Binary(payload.to_vec())]);
    let mut encoded = Vec::with_capacity(payload.len() + 8);
    rmpv::encode::write_value(&mut encoded, &args).expect("a Vec takes every write");
    encode_event(&header, "echo.echo", &encoded)
}

crate::raw::dealer_row!(zeromq, "node", request);
