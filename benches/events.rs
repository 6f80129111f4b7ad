//! zmesh events against raw `zeromq` PUB/SUB, measured in one run so the ratios mean
//! something.
//!
//! - `fanout_tcp_64B`: one publisher, four subscribers on loopback TCP; each iteration
//!   publishes [`BATCH`] events with a 64-byte payload as fast as the publisher can and ends
//!   when all four subscribers have every one of them. `zmesh` publishes through
//!   [`Publisher::publish`] (msgpack payload, zerorpc event with id, publisher id and
//!   sequence number, two frames) and receives through four [`Subscriber`] streams (decode,
//!   gap tracking, typed payload); `raw` sends `[topic, 64 bytes]` from a `PubSocket` to four
//!   `SubSocket`s.
//! - After criterion, unless running as a test: an interleaved check that alternates raw
//!   and zmesh batches [`ROUNDS`] times (median events per second of each, and the ratio;
//!   target >= 0.8x raw), then publish-to-receive latency: one event at a time, time from
//!   `publish` until each of the four subscribers has it, p50 and p99 over
//!   [`LATENCY_EVENTS`] events per side, also interleaved in blocks.
//!
//! Everything runs in one process on one tokio multi-thread runtime with 2 workers (the
//! machine this was written on has 2 CPUs); raw and zmesh get the same arrangement.
//!
//! ```text
//! cargo bench --bench events
//! ```

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use zeromq::{PubSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage};
use zmesh::{Client, Delivery, Node, Publisher, Subscriber, SubscriberConfig};
use zmesh_bench::{Latencies, micros};

/// Subscribers per publisher.
const SUBSCRIBERS: usize = 4;
/// Payload bytes.
const PAYLOAD: usize = 64;
/// Events per timed batch.
const BATCH: u64 = 5_000;
/// Interleaved throughput rounds (one raw and one zmesh batch each).
const ROUNDS: usize = 15;
/// Events per side in the latency check.
const LATENCY_EVENTS: usize = 2_000;
/// Events per block of the interleaved latency check.
const LATENCY_BLOCK: usize = 200;
/// Upper bound on one batch or one event: a stuck side fails the bench instead of hanging.
const DEADLINE: Duration = Duration::from_secs(60);
/// The topic every event goes to.
const TOPIC: &str = "bench.tick";
/// The throughput zmesh must reach, relative to raw.
const TARGET: f64 = 0.8;

/// What subscriber tasks report: one message per received event (subscriber, event, time).
type Receipts = mpsc::UnboundedReceiver<(usize, u64, Instant)>;

/// One side of the comparison: a publisher and four subscriber tasks reporting receipts.
trait Side {
    async fn publish(&mut self, n: u64);
    fn receipts(&mut self) -> &mut Receipts;
}

struct Raw {
    socket: PubSocket,
    receipts: Receipts,
    payload: Bytes,
}

impl Side for Raw {
    async fn publish(&mut self, n: u64) {
        let mut payload = self.payload.to_vec();
        payload[..8].copy_from_slice(&n.to_le_bytes());
        let mut message = ZmqMessage::from(Bytes::from_static(TOPIC.as_bytes()));
        message.push_back(Bytes::from(payload));
        self.socket.send(message).await.expect("raw send");
    }

    fn receipts(&mut self) -> &mut Receipts {
        &mut self.receipts
    }
}

struct Zmesh {
    publisher: Publisher,
    receipts: Receipts,
    payload: String,
    _node: Node,
}

impl Side for Zmesh {
    async fn publish(&mut self, n: u64) {
        // The sequence number identifies the event; the payload is 64 bytes of text.
        let _ = n;
        self.publisher
            .publish(TOPIC, &self.payload)
            .await
            .expect("zmesh publish");
    }

    fn receipts(&mut self) -> &mut Receipts {
        &mut self.receipts
    }
}

async fn raw_side() -> Raw {
    let mut socket = PubSocket::new();
    let endpoint = socket
        .bind("tcp://127.0.0.1:0")
        .await
        .expect("raw bind")
        .to_string();
    let (tx, receipts) = mpsc::unbounded_channel();
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut sub = SubSocket::new();
        sub.subscribe("bench.").await.expect("subscribe");
        sub.connect(&endpoint).await.expect("raw connect");
        subs.push(sub);
    }
    for (index, mut sub) in subs.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(message) = sub.recv().await {
                let n = message
                    .get(1)
                    .and_then(|f| f.get(..8))
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
                    .unwrap_or_default();
                if tx.send((index, n, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    let mut side = Raw {
        socket,
        receipts,
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
    };
    // Subscriptions travel after the connection: publish until every subscriber hears.
    warm_up(&mut side).await;
    side
}

async fn zmesh_side() -> Zmesh {
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .events("tcp://127.0.0.1:0")
        .start()
        .await
        .expect("node starts");
    let publisher = node.publisher().expect("events").clone();
    let client = Client::new(node.endpoint());
    let (tx, receipts) = mpsc::unbounded_channel();
    for index in 0..SUBSCRIBERS {
        let mut sub = Subscriber::builder()
            .connect(node.events_endpoint().expect("events"))
            .subscribe("bench.")
            // Room for a whole batch: the bench measures delivery, not drops.
            .config(SubscriberConfig::default().queue(2 * BATCH as usize))
            .start::<String>()
            .await
            .expect("subscriber starts");
        sub.snapshot(&client, "bench.").await.expect("sync");
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(item) = sub.next().await {
                let n = match item {
                    Delivery::Event(event) => event.seq.unwrap_or_default(),
                    Delivery::Gap(gap) => panic!("the bench lost events: {gap:?}"),
                };
                if tx.send((index, n, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    Zmesh {
        publisher,
        receipts,
        payload: "x".repeat(PAYLOAD),
        _node: node,
    }
}

/// Publishes until every subscriber has received something, then drains.
async fn warm_up(side: &mut impl Side) {
    let heard = tokio::time::timeout(DEADLINE, async {
        let mut seen = std::collections::HashSet::new();
        let mut n = 0;
        while seen.len() < SUBSCRIBERS {
            side.publish(n).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
            while let Ok((index, _, _)) = side.receipts().try_recv() {
                seen.insert(index);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        while side.receipts().try_recv().is_ok() {}
    })
    .await;
    heard.expect("warm-up within the deadline");
}

/// Publishes `BATCH` events and waits until every subscriber received each; returns the time.
async fn batch(side: &mut impl Side, next: &mut u64) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        *next += 1;
        side.publish(*next).await;
    }
    let want = BATCH as usize * SUBSCRIBERS;
    let mut got = 0;
    tokio::time::timeout(DEADLINE, async {
        while got < want {
            side.receipts().recv().await.expect("subscribers alive");
            got += 1;
        }
    })
    .await
    .expect("a batch within the deadline");
    start.elapsed()
}

/// Publishes one event and returns the publish-to-receive time of each subscriber.
async fn one(side: &mut impl Side, next: &mut u64, out: &mut Latencies) {
    *next += 1;
    let start = Instant::now();
    side.publish(*next).await;
    for _ in 0..SUBSCRIBERS {
        let (_, _, at) = tokio::time::timeout(DEADLINE, side.receipts().recv())
            .await
            .expect("an event within the deadline")
            .expect("subscribers alive");
        out.record(at.saturating_duration_since(start));
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (mut raw, mut zmesh) = rt.block_on(async { (raw_side().await, zmesh_side().await) });
    let mut raw_next = 1_000_000u64;
    let mut zmesh_next = 0u64;

    let mut criterion = Criterion::default()
        // No HTML plots (criterion is built without plotters): its terminal report stays.
        .without_plots()
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    {
        let mut group = criterion.benchmark_group("fanout_tcp_64B");
        group.throughput(Throughput::Elements(BATCH * SUBSCRIBERS as u64));
        group.bench_function("raw", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += batch(&mut raw, &mut raw_next).await;
                    }
                    total
                })
            });
        });
        group.bench_function("zmesh", |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += batch(&mut zmesh, &mut zmesh_next).await;
                    }
                    total
                })
            });
        });
        group.finish();
    }
    criterion.final_summary();
    if !benchmarking {
        return;
    }

    // Interleaved throughput: both sides see the same machine state.
    let per_second = |d: Duration| (BATCH * SUBSCRIBERS as u64) as f64 / d.as_secs_f64();
    let (mut raw_rates, mut zmesh_rates) = (Vec::new(), Vec::new());
    rt.block_on(async {
        for round in 0..ROUNDS {
            if round % 2 == 0 {
                raw_rates.push(per_second(batch(&mut raw, &mut raw_next).await));
                zmesh_rates.push(per_second(batch(&mut zmesh, &mut zmesh_next).await));
            } else {
                zmesh_rates.push(per_second(batch(&mut zmesh, &mut zmesh_next).await));
                raw_rates.push(per_second(batch(&mut raw, &mut raw_next).await));
            }
        }
    });
    let (raw_rate, zmesh_rate) = (median(raw_rates), median(zmesh_rates));

    // Interleaved latency, one event in flight at a time.
    let (mut raw_lat, mut zmesh_lat) = (Latencies::new(), Latencies::new());
    rt.block_on(async {
        for _ in 0..LATENCY_EVENTS / LATENCY_BLOCK {
            for _ in 0..LATENCY_BLOCK {
                one(&mut raw, &mut raw_next, &mut raw_lat).await;
            }
            for _ in 0..LATENCY_BLOCK {
                one(&mut zmesh, &mut zmesh_next, &mut zmesh_lat).await;
            }
        }
    });
    let ratio = zmesh_rate / raw_rate;
    let us = micros;
    println!();
    println!(
        "events, 1 publisher -> {SUBSCRIBERS} subscribers, {PAYLOAD}-byte payload, tcp loopback"
    );
    println!(
        "fan-out (interleaved, median of {ROUNDS}): zmesh {:.0} events/s, raw {:.0} events/s, \
         zmesh/raw {ratio:.2}x (target >= {TARGET}x) {}",
        zmesh_rate,
        raw_rate,
        if ratio >= TARGET { "MET" } else { "MISSED" }
    );
    for (name, lat) in [("zmesh", &zmesh_lat), ("raw", &raw_lat)] {
        println!(
            "publish-to-receive latency {name}: p50 {:.1} us, p99 {:.1} us ({} samples)",
            us(lat.p50()),
            us(lat.p99()),
            lat.len()
        );
    }
    println!(
        "latency zmesh/raw: p50 {:.2}x, p99 {:.2}x",
        us(zmesh_lat.p50()) / us(raw_lat.p50()),
        us(zmesh_lat.p99()) / us(raw_lat.p99()),
    );
}
