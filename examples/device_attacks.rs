//! Runs the hostile-peer attacks of docs/RELIABILITY.md ("Proxy device: hostile peers")
//! against a `zmesh proxy` binary on loopback and prints what each one achieved. Used to
//! measure a release build before and after a change; tests/device_hostile.rs asserts the
//! outcomes against the current code.
//!
//! ```text
//! cargo build --release -p zmesh-cli
//! cargo run --release --example device_attacks -- target/release/zmesh all
//! cargo run --release --example device_attacks -- target/release/zmesh capacity [proxy args..]
//! ```
//! Attacks: `capacity`, `remap`, `flood`, `bigqueue`, `nonreader`, `all`. Arguments after
//! the attack's name are passed to `zmesh proxy`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::wire::worker as proto;
use zmesh::wire::{self, Header, names};
use zmesh::{CallError, CallOptions, Client, Node, NodeConfig, Service};

#[path = "../tests/common/hostile.rs"]
mod hostile;

use hostile::{flood_readies, message, raw_request, ready_event, rss_kib};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Proxy {
    child: Child,
    frontend: String,
    backend: String,
}

impl Proxy {
    async fn spawn(bin: &str, extra: &[String]) -> Result<Self, Error> {
        let mut child = Command::new(bin)
            .args([
                "proxy",
                "--frontend",
                "tcp://127.0.0.1:0",
                "--backend",
                "tcp://127.0.0.1:0",
                "--no-mesh-key",
            ])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut frontend = None;
        let mut backend = None;
        while frontend.is_none() || backend.is_none() {
            let line = lines.next_line().await?.ok_or("proxy exited")?;
            match line.split_once(' ') {
                Some(("frontend", e)) => frontend = Some(e.to_owned()),
                Some(("backend", e)) => backend = Some(e.to_owned()),
                _ => {}
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            frontend: frontend.ok_or("no frontend")?,
            backend: backend.ok_or("no backend")?,
        })
    }

    /// The proxy's resident set in MiB, from /proc.
    fn rss_mib(&self) -> f64 {
        let Some(pid) = self.child.id() else {
            return 0.0;
        };
        rss_kib(pid) as f64 / 1024.0
    }
}

async fn real_worker(backend: &str, name: &str, service: Service) -> Result<Node, Error> {
    Ok(Node::builder()
        .name(name)
        .worker_of(backend)
        .service(service)
        .config(NodeConfig::default().heartbeat(Duration::from_millis(500)))
        .start()
        .await?)
}

/// A raw DEALER on the backend that announces `methods` and heartbeats; with `forge`, it
/// answers every request `OK "FORGED"` (after `delay`). Returns how many requests it got.
async fn rogue(
    backend: String,
    ready: Vec<Bytes>,
    forge: bool,
    delay: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<u64, Error> {
    let mut socket = DealerSocket::new();
    socket.connect(&backend).await?;
    let (mut send, mut recv) = socket.split();
    for event in ready {
        send.send(message(vec![Bytes::new(), event])).await?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ZmqMessage>();
    let mut got = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if *stop.borrow() {
                    return Ok(got);
                }
                let hb = wire::encode_event(&Header::zmesh(None), proto::WORKER_HEARTBEAT, wire::HEARTBEAT_ARGS);
                send.send(message(vec![Bytes::new(), hb])).await?;
            }
            Some(reply) = rx.recv() => send.send(reply).await?,
            received = recv.recv() => {
                let mut frames = received?.into_vec();
                if frames.len() < 3 {
                    continue;
                }
                let Some(frame) = frames.pop() else { continue };
                let Ok(event) = wire::decode_event(&frame) else { continue };
                if event.header.response_to.is_some() {
                    continue;
                }
                got += 1;
                if forge {
                    let header = Header::zmesh(Some(event.header.message_id.clone()));
                    let args = rmp_serde::to_vec(&("FORGED",)).expect("encodes");
                    let ok = wire::encode_event(&header, names::OK, &args);
                    frames.push(ok);
                    let reply = message(frames);
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = tx.send(reply);
                    });
                }
            }
        }
    }
}

fn err_name(e: &CallError) -> String {
    e.remote()
        .map_or_else(|| e.to_string(), |r| format!("{}: {}", r.name, r.message))
}

async fn capacity(bin: &str, extra: &[String]) -> Result<(), Error> {
    let proxy = Proxy::spawn(bin, extra).await?;
    let _worker = real_worker(&proxy.backend, "real", zmesh_echo::service()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let methods = vec![("echo.upper".to_owned(), "echo".to_owned())];
    let rogue = tokio::spawn(rogue(
        proxy.backend.clone(),
        vec![ready_event(u32::MAX, &methods)],
        true,
        Duration::ZERO,
        stop,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = Client::new(proxy.frontend.clone());
    let calls = (0..400).map(|i| {
        client.call_with::<String>(
            "echo.upper",
            (format!("x{i}"),),
            CallOptions::timeout(Duration::from_secs(10)),
        )
    });
    let results = futures::future::join_all(calls).await;
    let forged = results
        .iter()
        .filter(|r| matches!(r, Ok(s) if s == "FORGED"))
        .count();
    let real = results
        .iter()
        .filter(|r| matches!(r, Ok(s) if s.starts_with('X')))
        .count();
    let errors = results.iter().filter(|r| r.is_err()).count();
    let _ = stop_tx.send(true);
    let got = rogue.await??;
    println!(
        "capacity: rogue (capacity 2^32-1) received {got} of 400 pipelined calls; client accepted {forged} forged results ({:.0}%), {real} real, {errors} errors",
        forged as f64 / 4.0
    );
    Ok(())
}

async fn remap(bin: &str, extra: &[String]) -> Result<(), Error> {
    let proxy = Proxy::spawn(bin, extra).await?;
    let _worker = real_worker(&proxy.backend, "real", zmesh_echo::service()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let methods = vec![("echo.upper".to_owned(), "evil".to_owned())];
    let rogue = tokio::spawn(rogue(
        proxy.backend.clone(),
        vec![ready_event(1, &methods)],
        false,
        Duration::ZERO,
        stop,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = Client::new(proxy.frontend.clone());
    let mut ok = 0;
    let mut last_err = String::new();
    for i in 0..10 {
        match client
            .call_with::<String>(
                "echo.upper",
                (format!("x{i}"),),
                CallOptions::timeout(Duration::from_millis(1500)),
            )
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => last_err = err_name(&e),
        }
    }
    let _ = stop_tx.send(true);
    let got = rogue.await??;
    println!(
        "remap: after a READY mapping echo.upper to service evil, {ok} of 10 echo.upper calls succeeded; the rogue received {got}; last error: {last_err}"
    );
    Ok(())
}

/// The honest worker's service.
#[zmesh::service]
trait Kv {
    /// `v-KEY` for every key.
    async fn get(&self, key: String) -> Result<String, zmesh::HandlerError>;
}

struct Constant;

impl Kv for Constant {
    async fn get(&self, key: String) -> Result<String, zmesh::HandlerError> {
        Ok(format!("v-{key}"))
    }
}

fn kv_service() -> Service {
    KvServer::new(Constant).into_service()
}

/// `kv.get("a")` through the device: its value or its error.
async fn kv_get(client: &Client) -> String {
    match client
        .call_with::<String>(
            "kv.get",
            ("a",),
            CallOptions::timeout(Duration::from_secs(3)),
        )
        .await
    {
        Ok(v) => format!("ok {v}"),
        Err(e) => err_name(&e),
    }
}

/// How many services the device routes, from its stats (slow to answer when flooded).
async fn services_routed(client: &Client) -> String {
    match client
        .call_with::<rmpv::Value>(
            zmesh::reserved::DEVICE_STATS,
            (),
            CallOptions::timeout(Duration::from_secs(900)),
        )
        .await
    {
        Ok(stats) => stats["services"].as_map().map_or(0, Vec::len).to_string(),
        Err(e) => format!("(stats unreadable: {})", err_name(&e)),
    }
}

async fn flood(bin: &str, extra: &[String]) -> Result<(), Error> {
    let proxy = Proxy::spawn(bin, extra).await?;
    let client = Client::with_config(
        proxy.frontend.clone(),
        zmesh::ClientConfig::default()
            .connect_timeout(Duration::from_secs(900))
            .heartbeat(Duration::from_secs(1000)),
    );
    let slow = || CallOptions::timeout(Duration::from_secs(900));
    let _worker = real_worker(&proxy.backend, "real", zmesh_echo::service()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = proxy.rss_mib();
    let readies: Vec<Bytes> = flood_readies();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let rogue = tokio::spawn(rogue(
        proxy.backend.clone(),
        readies,
        false,
        Duration::ZERO,
        stop,
    ));
    // Let the device take in the 40 announcements: until its RSS holds still for 3 s.
    let started = Instant::now();
    let mut last = proxy.rss_mib();
    let mut still = Instant::now();
    while started.elapsed() < Duration::from_secs(1800) && still.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = proxy.rss_mib();
        if (now - last).abs() > 1.0 {
            still = Instant::now();
            last = now;
        }
    }
    let services = services_routed(&client).await;
    let took = started.elapsed();
    let rss_flooded = proxy.rss_mib();
    let _kv = real_worker(&proxy.backend, "kv", kv_service()).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let kv = kv_get(&client).await;
    let _ = stop_tx.send(true);
    let _ = rogue.await?;
    // The rogue's socket is closed now.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let after = services_routed(&client).await;
    let methods: Vec<String> = client
        .call_with("_zerorpc_list", (), slow())
        .await
        .unwrap_or_default();
    let kv_after = kv_get(&client).await;
    println!(
        "flood: 40 READYs x 65,536 names: device RSS {rss_before:.0} -> {rss_flooded:.0} MiB, {services} services after {took:.1?}; new worker's kv.get: {kv}; after the rogue left: {after} services, {} methods listed, RSS {:.0} MiB, kv.get: {kv_after}",
        methods.len(),
        proxy.rss_mib()
    );
    Ok(())
}

async fn bigqueue(bin: &str, extra: &[String]) -> Result<(), Error> {
    let proxy = Proxy::spawn(bin, extra).await?;
    let _worker = Node::builder()
        .name("real")
        .worker_of(proxy.backend.clone())
        .service(zmesh_echo::service())
        .worker_capacity(1)
        .config(NodeConfig::default().heartbeat(Duration::from_millis(500)))
        .start()
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = Client::new(proxy.frontend.clone());
    let rss_before = proxy.rss_mib();
    // Occupy the only slot, then queue 60 x 15 MiB.
    let blocker = client.call_with::<u64>(
        "echo.sleep",
        (30_000u64,),
        CallOptions::timeout(Duration::from_secs(40)),
    );
    let big = tokio::spawn({
        let client = client.clone();
        async move {
            let payload = rmpv::Value::Binary(vec![7u8; 15 * 1024 * 1024]);
            let calls = (0..60).map(|_| {
                client.call_with::<rmpv::Value>(
                    "echo.echo",
                    (payload.clone(),),
                    CallOptions::timeout(Duration::from_secs(25)),
                )
            });
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for r in futures::future::join_all(calls).await {
                let key = match r {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => e.remote().map_or_else(|| e.to_string(), |r| r.name.clone()),
                };
                *counts.entry(key).or_default() += 1;
            }
            format!("{counts:?}")
        }
    });
    let pid = proxy.child.id().unwrap_or(0);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let watch = async {
        tokio::time::sleep(Duration::from_secs(15)).await;
    };
    tokio::pin!(blocker);
    tokio::select! {
        _ = watch => {}
        _ = &mut blocker => {}
    }
    let rss_queued = proxy.rss_mib();
    sampler.abort();
    let finished = big.is_finished();
    println!(
        "bigqueue: 60 x 15 MiB requests queued behind a busy worker: device RSS {rss_before:.0} -> {rss_queued:.0} MiB (peak {:.0} MiB); refusals: {}",
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0,
        if finished {
            big.await?
        } else {
            "none within 15 s (all queued)".to_owned()
        }
    );
    Ok(())
}

async fn nonreader(bin: &str, extra: &[String], call_ms: u64) -> Result<(), Error> {
    let proxy = Proxy::spawn(bin, extra).await?;
    let _worker = real_worker(&proxy.backend, "real", zmesh_echo::service()).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = Client::new(proxy.frontend.clone());
    let rss_before = proxy.rss_mib();
    let long = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .call_with::<u64>(
                    "echo.sleep",
                    (call_ms,),
                    CallOptions::timeout(Duration::from_millis(call_ms + 10_000)),
                )
                .await
        }
    });
    // The non-reader: a raw DEALER that sends and never reads.
    let mut flooder = DealerSocket::new();
    flooder.connect(&proxy.frontend).await?;
    let burst_started = Instant::now();
    for _ in 0..300_000 {
        flooder.send(raw_request("nope.garbage")).await?;
    }
    let burst = burst_started.elapsed();
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if flooder.send(raw_request("nope.garbage")).await.is_err() {
                return;
            }
        }
    });
    // Meanwhile the other client's mistakes must still be answered.
    let mut name_errors = 0;
    let mut lost = 0;
    let deadline = Instant::now() + Duration::from_millis(call_ms.saturating_sub(1000));
    while Instant::now() < deadline {
        match client
            .call_with::<u64>(
                "echo.nosuch",
                (),
                CallOptions::timeout(Duration::from_secs(3)),
            )
            .await
        {
            Err(e) if e.remote().is_some_and(|r| r.name == "NameError") => name_errors += 1,
            _ => lost += 1,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let long = long.await?;
    trickle.abort();
    println!(
        "nonreader: 300k unread requests in {burst:.1?}, then 2/s: the other client's echo.sleep({call_ms}) -> {}; its NameErrors: {name_errors} arrived, {lost} lost; device RSS {rss_before:.0} -> {:.0} MiB",
        match &long {
            Ok(v) => format!("ok {v}"),
            Err(e) => err_name(e),
        },
        proxy.rss_mib()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: device_attacks ZMESH_BINARY ATTACK [proxy args..]");
        std::process::exit(2);
    }
    let bin = args.remove(0);
    let attack = args.remove(0);
    let call_ms: u64 = std::env::var("ATTACK_CALL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    let all = attack == "all";
    if all || attack == "capacity" {
        capacity(&bin, &args).await?;
    }
    if all || attack == "remap" {
        remap(&bin, &args).await?;
    }
    if all || attack == "flood" {
        flood(&bin, &args).await?;
    }
    if all || attack == "bigqueue" {
        bigqueue(&bin, &args).await?;
    }
    if all || attack == "nonreader" {
        nonreader(&bin, &args, call_ms).await?;
    }
    Ok(())
}
