//! A node must survive hostile or broken input from a raw peer: garbage bytes, msgpack of
//! the wrong shape, missing header keys, wrong argument types, oversized messages, events
//! for channels that do not exist and a flood of all of these, while it keeps serving
//! well-behaved clients with the right answers.
//!
//! The cases that are bytes in, answer out (every wrong shape with or without a readable
//! header, missing `message_id`, unknown method names, oversized requests, the list of
//! events for unknown channels, refusals past the rate) are unit tests of the node's pure
//! session (`crates/zmesh-core/src/node/session.rs`); this file keeps a socket smoke test
//! for each class, and the cases that need a running handler or a real connection.
//!
//! The raw peer is a plain `zeromq::DealerSocket` that builds events by hand with `rmpv`.
//! "No reply" is always checked the same way: after the bad message, the raw peer sends a
//! `_zerorpc_ping` on the same connection and waits for its reply (the node reads one
//! connection in order, so the bad message was handled first), then waits a short, bounded
//! time to make sure nothing else arrives.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rmpv::Value;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::wire::{self, MessageId};
use zmesh::{CallError, Client, Node, NodeConfig, NodeStats};
use zmesh_core::node::harness::raw::{bin, enc, event, hdr, request, s};

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// Bound on every single network await.
const T: Duration = Duration::from_secs(10);
/// How long "nothing else arrived" is watched for, after a later reply already arrived.
const SILENCE: Duration = Duration::from_millis(300);
/// The node's default `max_message_size`.
const LIMIT: usize = 16 * 1024 * 1024;
/// Messages in the flood tests.
const FLOOD: u64 = 100_000;

async fn start_node(endpoint: &str) -> Node {
    start_node_with(endpoint, NodeConfig::default()).await
}

async fn start_node_with(endpoint: &str, config: NodeConfig) -> Node {
    tokio::time::timeout(
        T,
        Node::builder()
            .bind(endpoint)
            .service(zmesh_echo::service())
            .config(config)
            .start(),
    )
    .await
    .expect("node start timed out")
    .expect("node starts")
}

/// A TCP loopback node.
async fn tcp_node() -> Node {
    start_node("tcp://127.0.0.1:0").await
}

/// An IPC node in a fresh temporary directory (kept alive by the returned guard).
async fn ipc_node() -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("ipc://{}/n.sock", dir.path().display());
    (start_node(&endpoint).await, dir)
}

/// A fresh message id payload, unique within the test binary.
fn next_id() -> Vec<u8> {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("bad-input-{:020}", N.fetch_add(1, Ordering::Relaxed)).into_bytes()
}

/// `depth` one-element arrays around `inner`: `[[[...inner...]]]`. Only for depths that
/// `rmpv` itself can encode and drop recursively; deeper values go through [`DEEP`].
fn nested(depth: usize, inner: Value) -> Value {
    (0..depth).fold(inner, |v, _| Value::Array(vec![v]))
}

/// A placeholder str that [`with_deep`] replaces by a very deeply nested array.
const DEEP: &str = "<deeply nested array>";

/// Replaces the encoded [`DEEP`] placeholder in `ev` by `depth` nested one-element arrays
/// around nil, built as raw bytes (the test's own recursive encoder would overflow).
fn with_deep(ev: Bytes, depth: usize) -> Bytes {
    let mark = enc(&s(DEEP));
    let at = ev
        .windows(mark.len())
        .position(|w| w == &mark[..])
        .expect("the event holds the DEEP placeholder");
    let mut out = Vec::with_capacity(ev.len() + depth);
    out.extend_from_slice(&ev[..at]);
    out.extend(std::iter::repeat_n(0x91u8, depth));
    out.push(0xc0);
    out.extend_from_slice(&ev[at + mark.len()..]);
    Bytes::from(out)
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// True when the node cannot even read a header from `frame`, so it must not reply.
fn header_unreadable(frame: &Bytes) -> bool {
    matches!(wire::decode_event(frame), Err(e) if e.header.is_none())
}

/// Polls `cond` every 10 ms until it holds, failing the test after `limit`. Only for
/// events with nothing to await (counters moving on the node).
async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// A hand-driven DEALER that speaks (or breaks) the protocol byte by byte.
struct RawPeer {
    sock: DealerSocket,
}

impl RawPeer {
    async fn connect(endpoint: &str) -> Self {
        let mut sock = DealerSocket::new();
        tokio::time::timeout(T, sock.connect(endpoint))
            .await
            .expect("connect timed out")
            .expect("raw peer connects");
        Self { sock }
    }

    async fn send_message(&mut self, message: ZmqMessage) {
        tokio::time::timeout(T, self.sock.send(message))
            .await
            .expect("send timed out")
            .expect("raw send");
    }

    /// Sends exactly these frames (at least one).
    async fn send_frames(&mut self, frames: Vec<Bytes>) {
        let message = ZmqMessage::try_from(frames).expect("at least one frame");
        self.send_message(message).await;
    }

    /// Sends `["", event]`, the way a zerorpc DEALER does.
    async fn send(&mut self, event: Bytes) {
        self.send_frames(vec![Bytes::new(), event]).await;
    }

    async fn recv_frames(&mut self) -> Vec<Bytes> {
        tokio::time::timeout(T, self.sock.recv())
            .await
            .expect("no reply within the timeout")
            .expect("raw recv")
            .into_vec()
    }

    /// The next message, which must be `["", event]`, decoded.
    async fn recv_event(&mut self) -> wire::Event {
        let frames = self.recv_frames().await;
        assert_eq!(frames.len(), 2, "reply frames: {frames:?}");
        assert!(frames[0].is_empty(), "reply delimiter: {frames:?}");
        wire::decode_event(&frames[1]).expect("the node's reply decodes")
    }

    /// Whatever arrives within `wait`, if anything.
    async fn try_recv(&mut self, wait: Duration) -> Option<Vec<Bytes>> {
        match tokio::time::timeout(wait, self.sock.recv()).await {
            Ok(message) => Some(message.expect("raw recv").into_vec()),
            Err(_) => None,
        }
    }

    /// The reply to the request whose `message_id` was `raw_id` (any msgpack encoding);
    /// it must be the next message and carry `v: 3`.
    async fn reply_to_raw(&mut self, raw_id: &[u8]) -> wire::Event {
        let reply = self.recv_event().await;
        let expected =
            MessageId::from_encoded(Bytes::copy_from_slice(raw_id)).expect("valid id encoding");
        assert_eq!(
            reply.header.response_to,
            Some(expected),
            "reply is not addressed to the request: {reply:?}"
        );
        assert_eq!(reply.header.version, Some(3), "reply header: {reply:?}");
        reply
    }

    /// The reply to the request with bin id `id`.
    async fn reply_to(&mut self, id: &[u8]) -> wire::Event {
        self.reply_to_raw(MessageId::from_bin(id).encoded()).await
    }

    /// The `ERR` reply to request `id`, as `(name, message, traceback)`.
    async fn expect_err(&mut self, id: &[u8]) -> (String, String, Option<String>) {
        let reply = self.reply_to(id).await;
        assert_eq!(reply.name, "ERR", "expected ERR, got {reply:?}");
        wire::parse_err_args(&reply.args)
    }

    /// The `OK` reply to request `id`, as its single result.
    async fn expect_ok(&mut self, id: &[u8]) -> Value {
        let reply = self.reply_to(id).await;
        assert_eq!(reply.name, "OK", "expected OK, got {reply:?}");
        ok_value(&reply)
    }

    /// Round-trips a `_zerorpc_ping`; its reply must be the next message.
    async fn ping(&mut self) {
        let id = next_id();
        self.send(request(&id, "_zerorpc_ping", vec![])).await;
        let pong = self.expect_ok(&id).await;
        assert_eq!(pong, Value::Array(vec![s("pong"), s("echo")]));
    }

    /// Proves everything sent before was handled without a reply: a ping round-trips
    /// first, and then nothing else arrives for a while.
    async fn ping_then_silence(&mut self) {
        self.ping().await;
        self.assert_silent().await;
    }

    async fn assert_silent(&mut self) {
        if let Some(frames) = self.try_recv(SILENCE).await {
            let decoded = frames.last().map(wire::decode_event);
            panic!("expected no reply, got {frames:?} = {decoded:?}");
        }
    }
}

/// The `x` of `OK [x]`.
fn ok_value(reply: &wire::Event) -> Value {
    match rmpv::decode::read_value(&mut &reply.args[..]).expect("OK args decode") {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => panic!("OK args are not [result]: {other}"),
    }
}

/// A well-behaved client call, bounded.
async fn upper(client: &Client, word: &str) -> String {
    tokio::time::timeout(T, client.call::<String>("echo.upper", (word,)))
        .await
        .expect("good call timed out")
        .expect("good call succeeds")
}

/// The node still serves a well-behaved client correctly.
async fn assert_serves(node: &Node) {
    let client = Client::new(node.endpoint());
    assert_eq!(upper(&client, "still alive").await, "STILL ALIVE");
}

fn zero_stats_except_calls(stats: NodeStats) {
    assert_eq!(
        (
            stats.malformed,
            stats.oversized,
            stats.overloaded,
            stats.expired,
            stats.unknown_channel
        ),
        (0, 0, 0, 0, 0),
        "{stats:?}"
    );
}

/// Garbage whose header the node cannot read, in several frame shapes: none of it may be
/// answered, and each message counts once as malformed.
fn garbage_messages() -> Vec<ZmqMessage> {
    let valid = request(b"0123456789abcdef", "echo.upper", vec![s("x")]);
    let mut events: Vec<Bytes> = vec![
        Bytes::new(),                                              // empty frame
        Bytes::from_static(&[0xc1]),                               // reserved marker
        Bytes::from_static(&[0x93]),                               // array header, nothing else
        Bytes::from_static(&[0x93, 0xdf, 0xff, 0xff, 0xff, 0xff]), // map of 2^32-1 entries
        Bytes::from_static(&[0xdd, 0xff, 0xff, 0xff, 0xff]),       // array of 2^32-1 elements
        Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        enc(&s("not an array")),
        enc(&Value::Map(vec![(s("message_id"), bin(b"x"))])),
        enc(&Value::Array(vec![hdr(b"two"), s("echo.upper")])), // 2 elements
        enc(&Value::Array(vec![
            hdr(b"four"),
            s("echo.upper"),
            Value::Array(vec![s("x")]),
            Value::Nil,
        ])),
        event(
            Value::Array(vec![s("message_id"), bin(b"x")]),
            s("echo.upper"),
            Value::Array(vec![s("x")]),
        ),
        event(
            Value::Map(vec![
                (bin(b"message_id"), bin(b"k")),
                (bin(b"v"), Value::from(3)),
            ]),
            s("echo.upper"),
            Value::Array(vec![s("x")]),
        ),
        event(
            Value::Map(vec![(s("v"), Value::from(3))]),
            s("echo.upper"),
            Value::Array(vec![s("x")]),
        ),
        valid.slice(..valid.len() / 3), // truncated inside the header
    ];
    for seed in 1..=24u64 {
        events.push(Bytes::from(pseudo_random(
            seed,
            (seed as usize * 37) % 500 + 1,
        )));
    }
    for ev in &events {
        assert!(
            header_unreadable(ev),
            "test garbage has a readable header: {ev:?}"
        );
    }
    let shapes: [fn(Bytes) -> Vec<Bytes>; 4] = [
        |ev| vec![Bytes::new(), ev],                             // zerorpc shape
        |ev| vec![ev],                                           // no delimiter
        |ev| vec![Bytes::from_static(b"hop"), Bytes::new(), ev], // extra routing frame
        |ev| {
            // many frames
            let mut frames: Vec<Bytes> = (0..40).map(|i| Bytes::from(vec![i as u8; i])).collect();
            frames.push(ev);
            frames
        },
    ];
    let mut out = Vec::new();
    for (i, ev) in events.into_iter().enumerate() {
        // Every event in the common shape, and each in one more shape.
        out.push(ZmqMessage::try_from(shapes[0](ev.clone())).expect("frames"));
        let other = shapes[1 + i % 3](ev);
        out.push(ZmqMessage::try_from(other).expect("frames"));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Garbage bytes and frame shapes
// ---------------------------------------------------------------------------------------

async fn garbage_is_counted_and_ignored(endpoint: &str, node: &Node) {
    let mut peer = RawPeer::connect(endpoint).await;
    let garbage = garbage_messages();
    let count = garbage.len() as u64;
    for message in garbage {
        peer.send_message(message).await;
    }
    peer.ping_then_silence().await;
    let stats = node.stats();
    assert_eq!(stats.malformed, count, "{stats:?}");
    assert_eq!(stats.oversized, 0, "{stats:?}");

    // The raw connection itself is still served after all that.
    let id = next_id();
    peer.send(request(&id, "echo.upper", vec![s("raw")])).await;
    assert_eq!(peer.expect_ok(&id).await, s("RAW"));
    assert_serves(node).await;
    assert_eq!(node.stats().malformed, count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_get_no_reply_tcp() {
    let node = tcp_node().await;
    garbage_is_counted_and_ignored(node.endpoint(), &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_get_no_reply_ipc() {
    let (node, _dir) = ipc_node().await;
    garbage_is_counted_and_ignored(node.endpoint(), &node).await;
}

/// Frame shapes other than `["", event]` carrying a *valid* request are served as zerorpc
/// serves them: the event is the last frame, and the routing frames come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_event_in_odd_frame_shapes_is_served() {
    let node = tcp_node().await;
    let mut peer = RawPeer::connect(node.endpoint()).await;

    // No delimiter: the reply still has one.
    let id = next_id();
    peer.send_frames(vec![request(&id, "echo.upper", vec![s("nodelim")])])
        .await;
    assert_eq!(peer.expect_ok(&id).await, s("NODELIM"));

    // Many frames: everything before the second-to-last frame is echoed as the route.
    let id = next_id();
    let mut frames: Vec<Bytes> = (1..=30u8)
        .map(|i| Bytes::from(vec![i; i as usize]))
        .collect();
    frames.push(Bytes::new());
    frames.push(request(&id, "echo.upper", vec![s("hops")]));
    let expected_route = frames[..30].to_vec();
    peer.send_frames(frames).await;
    let reply = peer.recv_frames().await;
    assert_eq!(reply.len(), 32, "{reply:?}");
    assert_eq!(reply[..30], expected_route[..]);
    assert!(reply[30].is_empty());
    let event = wire::decode_event(&reply[31]).expect("reply decodes");
    assert_eq!(event.header.response_to, Some(MessageId::from_bin(&id)));
    assert_eq!(ok_value(&event), s("HOPS"));

    // Trailing bytes after the event are ignored, as in Python.
    let id = next_id();
    let mut with_tail = request(&id, "echo.upper", vec![s("tail")]).to_vec();
    with_tail.extend_from_slice(&[0xc1, 0xff, 0x00, 0x93]);
    peer.send(Bytes::from(with_tail)).await;
    assert_eq!(peer.expect_ok(&id).await, s("TAIL"));

    peer.ping_then_silence().await;
    zero_stats_except_calls(node.stats());
}

// ---------------------------------------------------------------------------------------
// Msgpack of the wrong shape
// ---------------------------------------------------------------------------------------

/// A burst of readable-header garbage: every one is answered, each with its own id, while
/// the burst is within the connection's refusal rate (here raised above the burst; past the
/// rate refusals are suppressed, see `refusals_past_the_rate_are_suppressed_and_counted`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_protocol_errors_is_answered_one_to_one() {
    const N: usize = 1000;
    let config = NodeConfig::default().refusal_rate(N as u32, 100);
    let node = start_node_with("tcp://127.0.0.1:0", config).await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let mut pending = std::collections::HashSet::new();
    for _ in 0..N {
        let id = next_id();
        peer.send(event(hdr(&id), Value::from(1), Value::Nil)).await;
        pending.insert(MessageId::from_bin(&id));
    }
    for _ in 0..N {
        let reply = peer.recv_event().await;
        assert_eq!(reply.name, "ERR");
        let (name, message, _) = wire::parse_err_args(&reply.args);
        assert_eq!(name, "ProtocolError");
        assert_eq!(message, "malformed request: event name is not a string");
        let to = reply.header.response_to.expect("ERR has response_to");
        assert!(
            pending.remove(&to),
            "unexpected or repeated response_to {to}"
        );
    }
    assert!(pending.is_empty());
    peer.ping_then_silence().await;
    assert_eq!(node.stats().malformed, N as u64);
    assert_serves(&node).await;
}

// ---------------------------------------------------------------------------------------
// Missing and unusual header keys
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_but_valid_headers_are_served() {
    let node = tcp_node().await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let args = Value::Array(vec![s("hi")]);

    // No `v` (a legacy peer): still served.
    let id = next_id();
    peer.send(event(
        Value::Map(vec![(s("message_id"), bin(&id))]),
        s("echo.upper"),
        args.clone(),
    ))
    .await;
    assert_eq!(peer.expect_ok(&id).await, s("HI"));

    // `message_id` as str and as int: echoed back with the same msgpack type and bytes.
    for raw in [s("a str id"), Value::from(123_456_789u64), Value::from(-5)] {
        let header = Value::Map(vec![
            (s("message_id"), raw.clone()),
            (s("v"), Value::from(3)),
        ]);
        peer.send(event(header, s("echo.upper"), args.clone()))
            .await;
        let reply = peer.reply_to_raw(&enc(&raw)).await;
        assert_eq!(reply.name, "OK");
        assert_eq!(ok_value(&reply), s("HI"));
    }

    // Keys in another order, unknown middleware keys (one deeply nested), a huge `v`.
    let id = next_id();
    let header = Value::Map(vec![
        (s("middleware"), Value::Map(vec![(s("trace"), s("t-1"))])),
        (s("junk"), s(DEEP)),
        (s("v"), Value::from(u64::MAX)),
        (s("message_id"), bin(&id)),
    ]);
    peer.send(with_deep(
        event(header, s("echo.upper"), args.clone()),
        100_000,
    ))
    .await;
    assert_eq!(peer.expect_ok(&id).await, s("HI"));

    // zmesh header keys with extreme values: a deadline that never comes, a huge marker
    // version, a long traceparent.
    let id = next_id();
    let header = Value::Map(vec![
        (s("message_id"), bin(&id)),
        (s("v"), Value::from(3)),
        (s("zmesh"), Value::from(u64::MAX)),
        (s("zmesh_deadline_ms"), Value::from(u64::MAX)),
        (s("traceparent"), s(&"f".repeat(10_000))),
    ]);
    peer.send(event(header, s("echo.upper"), args.clone()))
        .await;
    assert_eq!(peer.expect_ok(&id).await, s("HI"));

    peer.ping_then_silence().await;
    zero_stats_except_calls(node.stats());
}

/// Broken control events on a live stream are ignored; the stream still completes once a
/// valid (and absurdly large) credit grant arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_control_events_on_a_live_channel_are_ignored() {
    // A long heartbeat period keeps node heartbeats out of this short exchange.
    let config = NodeConfig::default().heartbeat(Duration::from_secs(60));
    let node = start_node_with("tcp://127.0.0.1:0", config).await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let on_channel = |channel: &[u8], name: &str, args: Value| {
        let mut header = hdr(&next_id());
        if let Value::Map(entries) = &mut header {
            entries.push((s("response_to"), bin(channel)));
        }
        event(header, s(name), args)
    };

    let id = next_id();
    peer.send(request(&id, "echo.count", vec![Value::from(5)]))
        .await;
    let first = peer.reply_to(&id).await;
    assert_eq!(first.name, "STREAM");
    assert_eq!(&first.args[..], &[0x00]);

    // Malformed credit grants and odd events: no credit, so nothing more is sent.
    for args in [
        Value::Array(vec![]),
        Value::Array(vec![Value::from(-1)]),
        Value::Array(vec![s("3")]),
        s("not [n]"),
        Value::Nil,
    ] {
        peer.send(on_channel(&id, "_zpc_more", args)).await;
    }
    peer.send(on_channel(&id, "_zpc_hb", s("odd heartbeat args")))
        .await;
    peer.send(on_channel(&id, "OK", Value::Array(vec![s("x")])))
        .await;
    peer.send(on_channel(&id, "echo.upper", Value::Array(vec![s("x")])))
        .await;
    peer.ping_then_silence().await;

    // A grant of u64::MAX releases the rest of the stream.
    peer.send(on_channel(
        &id,
        "_zpc_more",
        Value::Array(vec![Value::from(u64::MAX)]),
    ))
    .await;
    for n in 1..5u8 {
        let item = peer.reply_to(&id).await;
        assert_eq!((item.name.as_ref(), &item.args[..]), ("STREAM", &[n][..]));
    }
    let done = peer.reply_to(&id).await;
    assert_eq!(
        (done.name.as_ref(), &done.args[..]),
        ("STREAM_DONE", &[0xc0][..])
    );
    peer.ping_then_silence().await;
    zero_stats_except_calls(node.stats());
    wait_until("the stream's channel to close", T, || {
        node.stats().in_flight == 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Wrong arguments and unknown methods
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_arguments_get_type_error_from_raw_peer() {
    let node = tcp_node().await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let exact = |m: &'static str| move |got: &str| got == m;
    type Check = Box<dyn Fn(&str) -> bool>;
    let cases: Vec<(&str, Value, Check)> = vec![
        (
            "echo.upper",
            Value::Array(vec![Value::from(42)]),
            Box::new(|m: &str| m.starts_with("argument 1: ") && m.contains("expected a string")),
        ),
        (
            "echo.upper",
            Value::Array(vec![s("a"), s("b")]),
            Box::new(exact("takes 1 positional argument but 2 were given")),
        ),
        (
            "echo.upper",
            Value::Array(vec![]),
            Box::new(exact("takes 1 positional argument but 0 were given")),
        ),
        (
            "echo.upper",
            s("not an array"),
            Box::new(exact("arguments must be a msgpack array")),
        ),
        (
            "echo.upper",
            Value::Nil,
            Box::new(exact("arguments must be a msgpack array")),
        ),
        (
            "echo.upper",
            Value::Map(vec![(s("s"), s("kwargs do not exist"))]),
            Box::new(exact("arguments must be a msgpack array")),
        ),
        (
            "echo.sleep",
            Value::Array(vec![Value::from(-1)]),
            Box::new(|m: &str| m.starts_with("argument 1: ")),
        ),
        (
            "echo.sleep",
            Value::Array(vec![s("10")]),
            Box::new(|m: &str| m.starts_with("argument 1: ")),
        ),
        (
            "_zerorpc_ping",
            Value::Array(vec![Value::Nil]),
            Box::new(exact("takes 0 positional arguments but 1 was given")),
        ),
    ];
    for (method, args, check) in &cases {
        let id = next_id();
        peer.send(event(hdr(&id), s(method), args.clone())).await;
        let (name, message, traceback) = peer.expect_err(&id).await;
        assert_eq!(name, "TypeError", "{method} {args}: {message}");
        assert!(
            check(&message),
            "{method} {args}: unexpected message {message:?}"
        );
        assert_eq!(traceback, None);
    }
    // Modest nesting is echoed back intact (deep nesting: see the test after next).
    let id = next_id();
    let deep = nested(100, s("core"));
    peer.send(request(&id, "echo.echo", vec![deep.clone()]))
        .await;
    assert_eq!(peer.expect_ok(&id).await, deep);

    peer.ping_then_silence().await;
    zero_stats_except_calls(node.stats());
    assert_serves(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_arguments_and_unknown_methods_from_client() {
    let node = tcp_node().await;
    let client = Client::new(node.endpoint());
    let remote = |r: Result<String, CallError>| match r {
        Err(CallError::Remote(e)) => e,
        other => panic!("expected a remote error, got {other:?}"),
    };
    let e = remote(
        tokio::time::timeout(T, client.call("echo.upper", (42,)))
            .await
            .expect("bounded"),
    );
    assert_eq!(e.name, "TypeError");
    assert!(e.message.starts_with("argument 1: "), "{e:?}");
    assert_eq!(e.traceback, None);

    let e = remote(
        tokio::time::timeout(T, client.call("echo.upper", ("a", "b")))
            .await
            .expect("bounded"),
    );
    assert_eq!(
        (e.name.as_str(), e.message.as_str()),
        ("TypeError", "takes 1 positional argument but 2 were given")
    );

    let e = remote(
        tokio::time::timeout(T, client.call("echo.missing", ("a",)))
            .await
            .expect("bounded"),
    );
    assert_eq!(
        (e.name.as_str(), e.message.as_str()),
        ("NameError", "echo.missing")
    );
    assert_eq!(upper(&client, "after errors").await, "AFTER ERRORS");
    zero_stats_except_calls(node.stats());
}

// ---------------------------------------------------------------------------------------
// Oversized messages
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_call_from_client_fails_fast_instead_of_hanging() {
    let node = tcp_node().await;
    let client = Client::new(node.endpoint());
    assert_eq!(upper(&client, "before").await, "BEFORE");

    // Args over the limit: refused locally, nothing is sent.
    let big = "a".repeat(17 * 1024 * 1024);
    let result = tokio::time::timeout(T, client.call::<String>("echo.upper", (big.as_str(),)))
        .await
        .expect("an oversized call must fail, not hang");
    match result {
        Err(CallError::MessageTooLarge { size, limit }) => {
            assert!(size > LIMIT, "size {size}");
            assert_eq!(limit, LIMIT);
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    assert_eq!(node.stats().oversized, 0, "nothing reached the node");

    // Args exactly at the limit: the whole event (args + header) is over it, so the node
    // refuses it and the client gets that error back.
    let at_limit = "b".repeat(LIMIT - 6); // str32 header (5 bytes) + fixarray (1 byte)
    let result = tokio::time::timeout(T, client.call::<String>("echo.upper", (at_limit.as_str(),)))
        .await
        .expect("a call over the node's limit must fail, not hang");
    match result {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.name, "MessageTooLarge", "{e:?}");
            assert!(
                e.message
                    .ends_with(&format!("exceeds the limit of {LIMIT} bytes")),
                "{e:?}"
            );
        }
        Err(CallError::MessageTooLarge { .. }) => {} // also acceptable: refused locally
        other => panic!("expected a MessageTooLarge error, got {other:?}"),
    }
    assert_eq!(upper(&client, "after").await, "AFTER");
}

// ---------------------------------------------------------------------------------------
// Events for channels that are not open
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_unknown_channels_are_ignored() {
    let node = tcp_node().await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let on_channel = |channel: &[u8], name: &str, args: Value| {
        let mut header = hdr(&next_id());
        if let Value::Map(entries) = &mut header {
            entries.push((s("response_to"), bin(channel)));
        }
        event(header, s(name), args)
    };
    // One heartbeat for a channel that never was and one unsolicited reply; the whole
    // list of channel events is the session's unit test
    // (`node::session::tests::events_for_unknown_channels_are_ignored`).
    let events = vec![
        on_channel(
            b"no such channel",
            "_zpc_hb",
            Value::Array(vec![Value::from(0)]),
        ),
        on_channel(b"no such channel", "OK", Value::Array(vec![s("x")])),
    ];
    let count = events.len() as u64;
    for ev in events {
        peer.send(ev).await;
    }
    peer.ping_then_silence().await;

    // A heartbeat for a call that already finished (the usual race) is ignored too.
    let id = next_id();
    peer.send(request(&id, "echo.upper", vec![s("done")])).await;
    assert_eq!(peer.expect_ok(&id).await, s("DONE"));
    peer.send(on_channel(
        &id,
        "_zpc_hb",
        Value::Array(vec![Value::from(0)]),
    ))
    .await;
    peer.ping_then_silence().await;

    let stats = node.stats();
    assert_eq!(stats.unknown_channel, count + 1, "{stats:?}");
    assert_eq!((stats.malformed, stats.cancelled), (0, 0), "{stats:?}");
    assert_serves(&node).await;
}

// ---------------------------------------------------------------------------------------
// Flood
// ---------------------------------------------------------------------------------------

/// A raw peer floods the node with malformed messages as fast as it can while a client
/// keeps calling: every good call succeeds with the right answer, during and after.
async fn flood_while_serving(node: Node) {
    let node = Arc::new(node);
    let endpoint = node.endpoint().to_owned();
    let client = Client::new(endpoint.as_str());
    assert_eq!(upper(&client, "warm up").await, "WARM UP");
    let mut flooder = RawPeer::connect(&endpoint).await;
    flooder.ping().await;

    let garbage = garbage_messages();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let caller = tokio::spawn({
        let (node, sent, stop, client) = (node.clone(), sent.clone(), stop.clone(), client.clone());
        async move {
            let (mut total, mut during) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                // The flood is under way while the node has not yet counted all of it.
                let flood_active =
                    sent.load(Ordering::SeqCst) > 0 && node.stats().malformed < FLOOD;
                let word = format!("call {total} during the flood");
                assert_eq!(upper(&client, &word).await, word.to_uppercase());
                total += 1;
                if flood_active {
                    during += 1;
                }
            }
            (total, during)
        }
    });

    let flood = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..FLOOD as usize {
                flooder
                    .send_message(garbage[i % garbage.len()].clone())
                    .await;
                sent.fetch_add(1, Ordering::SeqCst);
            }
            flooder
        }
    });
    let mut flooder = tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the flood must finish sending")
        .expect("flood task");
    wait_until(
        "the node to count the whole flood as malformed",
        Duration::from_secs(120),
        || node.stats().malformed >= FLOOD,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (total, during) = tokio::time::timeout(T, caller)
        .await
        .expect("caller stops")
        .expect("every good call succeeded");

    let stats = node.stats();
    assert_eq!(stats.malformed, FLOOD, "{stats:?}");
    assert_eq!(stats.oversized, 0, "{stats:?}");
    assert!(total >= 1, "no good call was made");
    assert!(
        during >= 1,
        "no good call overlapped the flood ({total} calls in all)"
    );

    // Afterwards: the flooder's own connection is served and got nothing for its garbage,
    // and the client keeps getting the right answers.
    flooder.ping_then_silence().await;
    for i in 0..20 {
        let word = format!("after the flood {i}");
        assert_eq!(upper(&client, &word).await, word.to_uppercase());
    }
    assert_serves(&node).await;
    assert_eq!(node.stats().malformed, FLOOD);
    wait_until("every call's channel to close", T, || {
        node.stats().in_flight == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_malformed_messages_does_not_disturb_good_calls_tcp() {
    flood_while_serving(start_node_with("tcp://127.0.0.1:0", flood_config()).await).await;
}

/// The flood's node keeps a connection that sends only garbage, so that the flooder's own
/// connection can be shown served afterwards; by default the node closes it after 10,000
/// bad messages in a row (`hostile_peers::a_connection_that_keeps_sending_garbage_is_closed`).
fn flood_config() -> NodeConfig {
    NodeConfig::default().disconnect_after_bad_requests(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_of_malformed_messages_does_not_disturb_good_calls_ipc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("ipc://{}/n.sock", dir.path().display());
    flood_while_serving(start_node_with(&endpoint, flood_config()).await).await;
}

// ---------------------------------------------------------------------------------------
// Routing envelopes on error replies
// ---------------------------------------------------------------------------------------

/// A request that arrives with extra routing frames (as through a ROUTER/DEALER proxy) must
/// get every reply, errors included, with the same routing frames in front.
async fn replies_keep_envelope(peer: &mut RawPeer, id: &[u8]) -> wire::Event {
    let frames = peer.recv_frames().await;
    assert_eq!(
        frames.len(),
        3,
        "reply lost its routing frame: {frames:?} = {:?}",
        frames.last().map(wire::decode_event)
    );
    assert_eq!(frames[0], Bytes::from_static(b"hop"), "{frames:?}");
    assert!(frames[1].is_empty());
    let event = wire::decode_event(&frames[2]).expect("reply decodes");
    assert_eq!(event.header.response_to, Some(MessageId::from_bin(id)));
    event
}

fn via_hop(ev: Bytes) -> Vec<Bytes> {
    vec![Bytes::from_static(b"hop"), Bytes::new(), ev]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_keep_the_routing_envelope() {
    let node = tcp_node().await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let cases: Vec<(Bytes, Vec<u8>, &str)> = {
        let a = next_id();
        let b = next_id();
        let c = next_id();
        let d = next_id();
        vec![
            (request(&a, "echo.upper", vec![s("x")]), a, "OK"),
            (request(&b, "nope", vec![]), b, "NameError"),
            (request(&c, "echo.upper", vec![]), c, "TypeError"),
            (
                event(hdr(&d), Value::from(1), Value::Nil),
                d,
                "ProtocolError",
            ),
        ]
    };
    for (ev, id, expected) in cases {
        peer.send_frames(via_hop(ev)).await;
        let reply = replies_keep_envelope(&mut peer, &id).await;
        let got = match reply.name.as_ref() {
            "ERR" => wire::parse_err_args(&reply.args).0,
            other => other.to_owned(),
        };
        assert_eq!(got, expected);
    }
}

/// Same as above for a refusal that happens while opening a call: the per-connection call
/// limit. The `ERR PeerOverloaded` goes out without the request's routing frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_limit_refusal_keeps_the_routing_envelope() {
    let node = start_node_with(
        "tcp://127.0.0.1:0",
        NodeConfig::default().max_calls_per_peer(1),
    )
    .await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    // The first call holds the connection's only slot while the second arrives.
    let slow = next_id();
    peer.send_frames(via_hop(request(
        &slow,
        "echo.sleep",
        vec![Value::from(1000)],
    )))
    .await;
    let refused = next_id();
    peer.send_frames(via_hop(request(&refused, "echo.upper", vec![s("x")])))
        .await;
    let reply = replies_keep_envelope(&mut peer, &refused).await;
    assert_eq!(wire::parse_err_args(&reply.args).0, "PeerOverloaded");
    let reply = replies_keep_envelope(&mut peer, &slow).await;
    assert_eq!(reply.name, "OK");
}

/// Same for a request that reuses the `message_id` of a call still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_refusal_keeps_the_routing_envelope() {
    let node = tcp_node().await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let id = next_id();
    peer.send_frames(via_hop(request(&id, "echo.sleep", vec![Value::from(1000)])))
        .await;
    peer.send_frames(via_hop(request(&id, "echo.sleep", vec![Value::from(1)])))
        .await;
    let reply = replies_keep_envelope(&mut peer, &id).await;
    assert_eq!(reply.name, "ERR");
    assert_eq!(
        wire::parse_err_args(&reply.args),
        (
            "ProtocolError".to_owned(),
            "a call with this message_id is already running".to_owned(),
            None
        )
    );
    let reply = replies_keep_envelope(&mut peer, &id).await;
    assert_eq!(reply.name, "OK");
}

/// The refusals above, on a plain connection (no extra routing frames), work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_while_opening_a_call_are_answered() {
    let node = start_node_with(
        "tcp://127.0.0.1:0",
        NodeConfig::default().max_calls_per_peer(2),
    )
    .await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    let slow = next_id();
    peer.send(request(&slow, "echo.sleep", vec![Value::from(1000)]))
        .await;
    // Same id while it runs: refused as a protocol error.
    peer.send(request(&slow, "echo.sleep", vec![Value::from(1)]))
        .await;
    let (name, message, _) = peer.expect_err(&slow).await;
    assert_eq!(
        (name.as_str(), message.as_str()),
        (
            "ProtocolError",
            "a call with this message_id is already running"
        )
    );
    // A second slow call (sent well within the first one's second) fills the connection's two slots; a third is refused.
    let second = next_id();
    peer.send(request(&second, "echo.sleep", vec![Value::from(1000)]))
        .await;
    let third = next_id();
    peer.send(request(&third, "echo.upper", vec![s("x")])).await;
    let (name, message, _) = peer.expect_err(&third).await;
    assert_eq!(
        (name.as_str(), message.as_str()),
        (
            "PeerOverloaded",
            "this connection is at its limit of 2 concurrent calls"
        )
    );
    // Both slow calls still finish (in either order).
    let mut done = Vec::new();
    for _ in 0..2 {
        let reply = peer.recv_event().await;
        assert_eq!(reply.name, "OK", "{reply:?}");
        done.push(reply.header.response_to.expect("addressed"));
    }
    done.sort_by_key(|id| id.encoded().to_vec());
    let mut expected = vec![MessageId::from_bin(&slow), MessageId::from_bin(&second)];
    expected.sort_by_key(|id| id.encoded().to_vec());
    assert_eq!(done, expected);
    peer.ping_then_silence().await;
    // A connection's own bound is counted apart from the node-wide one.
    let stats = node.stats();
    assert_eq!(
        (stats.peer_overloaded, stats.overloaded),
        (1, 0),
        "{stats:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Deeply nested arguments
// ---------------------------------------------------------------------------------------

/// Set in the child process that runs [`deep_nesting_child`].
const DEEP_CHILD_ENV: &str = "ZMESH_BAD_INPUT_DEEP_CHILD";

/// Does nothing unless run as the child process of
/// `deeply_nested_arguments_do_not_crash_the_node`: a stack overflow aborts the whole
/// process, which must not take the other tests down with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_child() {
    if std::env::var_os(DEEP_CHILD_ENV).is_none() {
        return;
    }
    let node = tcp_node().await;
    let mut peer = RawPeer::connect(node.endpoint()).await;
    for depth in [600usize, 1_000, 100_000] {
        let id = next_id();
        eprintln!("sending echo.echo with an argument nested {depth} deep");
        peer.send(with_deep(request(&id, "echo.echo", vec![s(DEEP)]), depth))
            .await;
        let reply = peer.reply_to(&id).await;
        match reply.name.as_ref() {
            // Echoed intact: `[` + the value.
            "OK" => {
                let mut expected = vec![0x91u8; depth + 1];
                expected.push(0xc0);
                assert_eq!(&reply.args[..], &expected[..], "depth {depth}");
            }
            // Or refused as too deep for the decoder.
            "ERR" => {
                let (name, message, _) = wire::parse_err_args(&reply.args);
                assert_eq!(name, "TypeError", "depth {depth}: {message}");
                assert!(message.starts_with("argument 1: "), "{message}");
            }
            other => panic!("depth {depth}: unexpected reply {other}"),
        }
        eprintln!("depth {depth}: answered {}", reply.name);
    }
    peer.ping_then_silence().await;
    assert_serves(&node).await;
}

/// A small message whose argument is deeply nested (about 1 KB of `0x91` bytes) must get an
/// answer, never take the node process down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_arguments_do_not_crash_the_node() {
    let exe = std::env::current_exe().expect("test binary path");
    let child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "deep_nesting_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DEEP_CHILD_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child test process");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("child test process finishes")
        .expect("child output");
    assert!(
        output.status.success(),
        "the process hosting the node died ({:?}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
