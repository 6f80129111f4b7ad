//! Provides the soak's hostile peers. Each class runs in sessions (one connection each)
//! until the soak ends, reconnecting when its node has been killed, and counts what it did:
//!
//! - `garbage`: a raw DEALER sending bursts of random bytes in odd frame shapes, msgpack of
//!   the wrong shape, truncated requests, unknown methods and wrong argument types, then a
//!   ping on the same connection that must still be answered;
//! - `oversized`: a raw DEALER sending requests four times the node's size limit, each of
//!   which must get `ERR MessageTooLarge`;
//! - `flood`: a raw DEALER sending valid requests in fast bursts and never reading a reply;
//! - `overload`: a raw DEALER opening more slow calls at once than the node allows one
//!   connection (`ERR Overloaded` for the rest), reading every reply;
//! - `churn`: connections that open a long call and vanish at once;
//! - `zmtp-garbage`: raw TCP connections that break the ZMTP handshake or send a frame
//!   announcing 1 TiB and then hang up;
//! - `non-reader`: a raw DEALER that sends a burst of requests for an unknown method (each
//!   earns an `ERR`) and then two a second, never reading a reply;
//! - `slow-subscriber`: a raw SUB on the node's publisher, subscribed to everything, that
//!   never reads an event.
//!
//! The wrong-key class uses `zmesh::Client`s (with a wrong key, or none) and lives in
//! `polite.rs`, where calls are counted as succeeded, failed or lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rmpv::Value;
use tokio::io::AsyncWriteExt;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::wire::{self, Header, MessageId};

use super::node::NODE_LIMIT;
use super::tally::RawTally;

/// Bound on each network step of a hostile peer (connect, send, a raw write).
const STEP: Duration = Duration::from_secs(5);
/// A probe answered later than this (a call's deadline plus grace in `polite`) is counted
/// late; one not answered within [`PROBE_GIVE_UP`] is counted unanswered.
pub const PROBE_LATE: Duration = Duration::from_secs(8);
pub const PROBE_GIVE_UP: Duration = Duration::from_secs(30);
/// Pause before retrying a node that could not be reached (it is being restarted).
const RETRY: Duration = Duration::from_millis(200);

/// The hostile classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Garbage,
    Oversized,
    Flood,
    Overload,
    Churn,
    ZmtpGarbage,
    NonReader,
    SlowSubscriber,
}

impl Class {
    /// Every class the soak runs.
    pub const ALL: [Class; 8] = [
        Class::Garbage,
        Class::Oversized,
        Class::Flood,
        Class::Overload,
        Class::Churn,
        Class::ZmtpGarbage,
        Class::NonReader,
        Class::SlowSubscriber,
    ];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Class::Garbage => "garbage",
            Class::Oversized => "oversized",
            Class::Flood => "flood",
            Class::Overload => "overload",
            Class::Churn => "churn",
            Class::ZmtpGarbage => "zmtp-garbage",
            Class::NonReader => "non-reader",
            Class::SlowSubscriber => "slow-subscriber",
        }
    }

    /// True for peers that send zerorpc requests: they use a node's plain endpoint, since
    /// on the keyed one they would only be refused before decoding (which the wrong-key
    /// class covers). ZMTP garbage never gets that far and uses the keyed endpoint.
    pub fn speaks_zerorpc(self) -> bool {
        !matches!(self, Class::ZmtpGarbage | Class::SlowSubscriber)
    }

    /// What its probes are, for the report.
    pub fn probe(self) -> &'static str {
        match self {
            Class::Garbage => "ping after each burst",
            Class::Oversized => "ERR MessageTooLarge per request",
            Class::Flood | Class::NonReader | Class::SlowSubscriber => "none (never reads)",
            Class::Overload => "a reply per request",
            Class::Churn | Class::ZmtpGarbage => "none (hangs up)",
        }
    }
}

/// Runs one peer of `class` against `endpoint` until `stop_at`.
pub async fn run(
    class: Class,
    endpoint: String,
    tally: Arc<RawTally>,
    seed: u64,
    stop_at: Instant,
) {
    let mut rng = Rng::new(seed);
    while Instant::now() < stop_at {
        let ran = match class {
            Class::Garbage => garbage_session(&endpoint, &tally, &mut rng, stop_at).await,
            Class::Oversized => oversized_session(&endpoint, &tally, stop_at).await,
            Class::Flood => flood_session(&endpoint, &tally, stop_at).await,
            Class::Overload => overload_session(&endpoint, &tally).await,
            Class::Churn => churn_session(&endpoint, &tally).await,
            Class::ZmtpGarbage => zmtp_garbage_session(&endpoint, &tally, &mut rng).await,
            Class::NonReader => non_reader_session(&endpoint, &tally, stop_at).await,
            Class::SlowSubscriber => slow_subscriber_session(&endpoint, &tally, stop_at).await,
        };
        if ran {
            tally.sessions.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.connect_failures.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(RETRY).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw DEALER helpers
// ---------------------------------------------------------------------------------------

/// A raw DEALER connected within [`STEP`], or `None` (node down).
async fn connect(endpoint: &str) -> Option<DealerSocket> {
    let mut sock = DealerSocket::new();
    match tokio::time::timeout(STEP, sock.connect(endpoint)).await {
        Ok(Ok(())) => Some(sock),
        _ => None,
    }
}

/// Sends frames within [`STEP`]; false when the node is gone or not reading.
async fn send(sock: &mut DealerSocket, frames: Vec<Bytes>) -> bool {
    let Ok(message) = ZmqMessage::try_from(frames) else {
        return false;
    };
    matches!(
        tokio::time::timeout(STEP, sock.send(message)).await,
        Ok(Ok(()))
    )
}

/// A request as a stock zerorpc client encodes it: `["", [header, method, args]]`.
fn request(method: &str, args: &Value) -> (MessageId, Vec<Bytes>) {
    let id = MessageId::generate();
    let mut header = Header::zmesh_with_id(id.clone(), None);
    header.zmesh = None;
    let mut encoded = Vec::new();
    // Encoding a Value into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut encoded, args);
    let event = wire::encode_event(&header, method, &encoded);
    (id, vec![Bytes::new(), event])
}

/// Reads replies (counting each by name) until the one addressed to `id` arrives, or
/// `bound` passes. Returns its name (`ERR` as `ERR <name>`).
async fn reply_to(
    sock: &mut DealerSocket,
    id: &MessageId,
    bound: Duration,
    tally: &RawTally,
) -> Option<String> {
    let sent_at = tokio::time::Instant::now();
    let until = sent_at + bound;
    loop {
        let message = match tokio::time::timeout_at(until, sock.recv()).await {
            Ok(Ok(message)) => message,
            _ => return None,
        };
        let Some(name) = count_reply(message, tally) else {
            continue;
        };
        if name.1.as_ref() == Some(id) {
            if sent_at.elapsed() > PROBE_LATE {
                tally.probes_late.fetch_add(1, Ordering::Relaxed);
            }
            return Some(name.0);
        }
    }
}

/// Counts one reply by name; returns its name and the request it answers.
fn count_reply(message: ZmqMessage, tally: &RawTally) -> Option<(String, Option<MessageId>)> {
    let frames = message.into_vec();
    let event = wire::decode_event(frames.last()?).ok()?;
    if event.name == wire::names::HEARTBEAT {
        return None;
    }
    let name = if event.name == wire::names::ERR {
        format!("ERR {}", wire::parse_err_args(&event.args).0)
    } else {
        event.name.to_string()
    };
    tally.reply(&name);
    Some((name, event.header.response_to))
}

// ---------------------------------------------------------------------------------------
// Classes
// ---------------------------------------------------------------------------------------

/// Garbage messages per burst, and bursts per connection.
const GARBAGE_BURST: usize = 50;
const GARBAGE_BURSTS: usize = 20;

async fn garbage_session(
    endpoint: &str,
    tally: &RawTally,
    rng: &mut Rng,
    stop_at: Instant,
) -> bool {
    let Some(mut sock) = connect(endpoint).await else {
        return false;
    };
    for _ in 0..GARBAGE_BURSTS {
        if Instant::now() >= stop_at {
            break;
        }
        for _ in 0..GARBAGE_BURST {
            if !send(&mut sock, garbage(rng)).await {
                return true;
            }
            tally.sent.fetch_add(1, Ordering::Relaxed);
        }
        // The node reads a connection in order: a ping answered after the burst shows it
        // handled all of it and still serves this very connection.
        let (id, ping) = request("_zerorpc_ping", &Value::Array(vec![]));
        if !send(&mut sock, ping).await {
            return true;
        }
        match reply_to(&mut sock, &id, PROBE_GIVE_UP, tally).await {
            Some(name) if name == "OK" => {
                tally.probes_answered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.probes_unanswered.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// One garbage message: unreadable bytes in several frame shapes, or readable requests
/// that are wrong (the node answers those with a precise `ERR`).
fn garbage(rng: &mut Rng) -> Vec<Bytes> {
    let event = match rng.below(7) {
        0 | 1 => Bytes::from(rng.some_bytes(600)),
        2 => {
            // Valid msgpack, wrong shape.
            let mut out = Vec::new();
            let value = match rng.below(3) {
                0 => Value::from("not an event"),
                1 => Value::Map(vec![(Value::from("message_id"), Value::from(rng.next()))]),
                _ => Value::Array(vec![Value::from(1), Value::from("echo.upper")]),
            };
            let _ = rmpv::encode::write_value(&mut out, &value);
            Bytes::from(out)
        }
        3 => {
            // A valid request cut short.
            let (_, frames) = request("echo.upper", &Value::Array(vec![Value::from("cut")]));
            let event = frames[1].clone();
            let cut = 1 + rng.below(event.len() as u64 - 1) as usize;
            event.slice(..cut)
        }
        4 => request("no.such.method", &Value::Array(vec![])).1[1].clone(),
        5 => request("echo.upper", &Value::Array(vec![Value::from(42)])).1[1].clone(),
        _ => {
            // A deeply nested argument.
            // `[header, "echo.echo", nil]` with the nil replaced by 100,000 nested arrays.
            let (_, frames) = request("echo.echo", &Value::Nil);
            let mut out = frames[1][..frames[1].len() - 1].to_vec();
            out.extend(std::iter::repeat_n(0x91u8, 100_000));
            out.push(0xc0);
            Bytes::from(out)
        }
    };
    match rng.below(4) {
        0 => vec![event],
        1 => vec![Bytes::from_static(b"hop"), Bytes::new(), event],
        2 => {
            let mut frames: Vec<Bytes> = (0..30).map(|i| Bytes::from(vec![i as u8; i])).collect();
            frames.push(event);
            frames
        }
        _ => vec![Bytes::new(), event],
    }
}

/// Oversized requests per connection.
const OVERSIZED_PER_SESSION: usize = 20;

async fn oversized_session(endpoint: &str, tally: &RawTally, stop_at: Instant) -> bool {
    let Some(mut sock) = connect(endpoint).await else {
        return false;
    };
    let payload = Value::Binary(vec![0xa5; 4 * NODE_LIMIT]);
    for _ in 0..OVERSIZED_PER_SESSION {
        if Instant::now() >= stop_at {
            break;
        }
        let (id, frames) = request("echo.size", &Value::Array(vec![payload.clone()]));
        if !send(&mut sock, frames).await {
            return true;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match reply_to(&mut sock, &id, PROBE_GIVE_UP, tally).await {
            Some(name) if name == "ERR MessageTooLarge" => {
                tally.probes_answered.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.probes_unanswered.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// Requests per burst, bursts per connection, and the pause between bursts: about 20,000
/// requests a second at most, which on two cores is more than a node can answer.
const FLOOD_BURST: usize = 200;
const FLOOD_BURSTS: usize = 100;
const FLOOD_PAUSE: Duration = Duration::from_millis(10);

async fn flood_session(endpoint: &str, tally: &RawTally, stop_at: Instant) -> bool {
    let Some(mut sock) = connect(endpoint).await else {
        return false;
    };
    let args = Value::Array(vec![Value::from("flood")]);
    for _ in 0..FLOOD_BURSTS {
        if Instant::now() >= stop_at {
            break;
        }
        for _ in 0..FLOOD_BURST {
            let (_, frames) = request("echo.echo", &args);
            if !send(&mut sock, frames).await {
                return true;
            }
            tally.sent.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(FLOOD_PAUSE).await;
    }
    // Dropped without ever reading: the node is left with replies nobody takes.
    true
}

/// Requests in the non-reader's burst, how long a session trickles after it, and how often.
const NON_READER_BURST: usize = 50_000;
const NON_READER_SESSION: Duration = Duration::from_secs(15);
const NON_READER_TRICKLE: Duration = Duration::from_millis(500);

async fn non_reader_session(endpoint: &str, tally: &RawTally, stop_at: Instant) -> bool {
    let Some(mut sock) = connect(endpoint).await else {
        return false;
    };
    let (_, frames) = request("soak.no_such_method", &Value::Array(vec![]));
    for _ in 0..NON_READER_BURST {
        if Instant::now() >= stop_at || !send(&mut sock, frames.clone()).await {
            return true;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
    let until = (Instant::now() + NON_READER_SESSION).min(stop_at);
    while Instant::now() < until {
        tokio::time::sleep(NON_READER_TRICKLE).await;
        if !send(&mut sock, frames.clone()).await {
            return true;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
    // Dropped without ever reading.
    true
}

/// How long a slow subscriber stays connected without reading.
const SLOW_SUBSCRIBER_SESSION: Duration = Duration::from_secs(20);

async fn slow_subscriber_session(endpoint: &str, tally: &RawTally, stop_at: Instant) -> bool {
    let mut sock = zeromq::SubSocket::new();
    if !matches!(
        tokio::time::timeout(STEP, sock.connect(endpoint)).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    if !matches!(
        tokio::time::timeout(STEP, sock.subscribe("")).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    tally.sent.fetch_add(1, Ordering::Relaxed);
    // Never polled for input: the publisher's events back up towards it.
    let until = (Instant::now() + SLOW_SUBSCRIBER_SESSION).min(stop_at);
    tokio::time::sleep_until(until.into()).await;
    true
}

/// Slow calls opened at once on one connection (the node allows 1,000 per connection).
const OVERLOAD_CALLS: usize = 1_200;
const OVERLOAD_SLEEP_MS: u64 = 300;

async fn overload_session(endpoint: &str, tally: &RawTally) -> bool {
    let Some(mut sock) = connect(endpoint).await else {
        return false;
    };
    let args = Value::Array(vec![Value::from(OVERLOAD_SLEEP_MS)]);
    let mut open = std::collections::HashSet::new();
    for _ in 0..OVERLOAD_CALLS {
        let (id, frames) = request("echo.sleep", &args);
        if !send(&mut sock, frames).await {
            return true;
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
        open.insert(id);
    }
    let sent_at = tokio::time::Instant::now();
    let until = sent_at + PROBE_GIVE_UP;
    while !open.is_empty() {
        let message = match tokio::time::timeout_at(until, sock.recv()).await {
            Ok(Ok(message)) => message,
            _ => break,
        };
        if let Some((_, Some(id))) = count_reply(message, tally)
            && open.remove(&id)
        {
            tally.probes_answered.fetch_add(1, Ordering::Relaxed);
            if sent_at.elapsed() > PROBE_LATE {
                tally.probes_late.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
        .probes_unanswered
        .fetch_add(open.len() as u64, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    true
}

async fn churn_session(endpoint: &str, tally: &RawTally) -> bool {
    let Some(mut sock) = connect(endpoint).await else {
        return false;
    };
    // A call the node would hold for 10 s, then gone without a word.
    let (_, frames) = request("echo.sleep", &Value::Array(vec![Value::from(10_000)]));
    if send(&mut sock, frames).await {
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
    drop(sock);
    tokio::time::sleep(Duration::from_millis(20)).await;
    true
}

/// The 64-byte ZMTP 3.0 greeting of a NULL-mechanism client.
fn zmtp_greeting() -> Vec<u8> {
    let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    g.extend_from_slice(&mechanism);
    g.push(0); // as-server
    g.resize(64, 0);
    g
}

async fn zmtp_garbage_session(endpoint: &str, tally: &RawTally, rng: &mut Rng) -> bool {
    let Some(addr) = endpoint.strip_prefix("tcp://") else {
        return false;
    };
    let Ok(Ok(mut stream)) = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let bytes = match rng.below(4) {
        0 => rng.some_bytes(300),
        1 => {
            let mut b = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f];
            b.extend(rng.some_bytes(200));
            b
        }
        2 => {
            // A full greeting, then a long frame announcing 1 TiB, 4 KiB of it, and gone.
            let mut b = zmtp_greeting();
            b.push(0x02);
            b.extend_from_slice(&(1u64 << 40).to_be_bytes());
            b.extend(rng.bytes(4096));
            b
        }
        _ => Vec::new(),
    };
    if !bytes.is_empty()
        && matches!(
            tokio::time::timeout(STEP, stream.write_all(&bytes)).await,
            Ok(Ok(()))
        )
    {
        tally.sent.fetch_add(1, Ordering::Relaxed);
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(20)).await;
    true
}

/// Deterministic pseudo-random numbers (xorshift64*), so a failing soak can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Between 1 and `max` bytes.
    pub fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let len = 1 + self.below(max) as usize;
        self.bytes(len)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
}
