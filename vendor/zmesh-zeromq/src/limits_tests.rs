//! zmesh patch: the limits over real sockets: a ROUTER (or PUB) bound on loopback, and raw
//! TCP peers that speak as much ZMTP as each attack needs.

use crate::codec::{Message, ZmqCodec, ZmqCommand, ZmqGreeting};
use crate::prelude::*;
use crate::util::PeerIdentity;
use crate::{
    DealerSocket, Endpoint, PubSocket, RouterSendHalf, RouterSocket, SocketEvent, SocketOptions,
    SocketType, TrySendError, ZmqMessage,
};

use asynchronous_codec::Encoder;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

async fn bound<S: Socket>(mut socket: S) -> (S, u16) {
    let endpoint = socket.bind("tcp://127.0.0.1:0").await.expect("bind");
    let Endpoint::Tcp(_, port) = endpoint else {
        panic!("tcp endpoint");
    };
    (socket, port)
}

/// A ROUTER bound on loopback whose receive side is read all the time (as an application
/// does: a connection's errors and end are noticed when its stream is polled), with what
/// it receives forwarded to the returned channel.
struct Router {
    send: RouterSendHalf,
    received: tokio::sync::mpsc::UnboundedReceiver<ZmqMessage>,
    monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    port: u16,
}

impl Router {
    async fn recv(&mut self) -> ZmqMessage {
        tokio::time::timeout(T, self.received.recv())
            .await
            .expect("received in time")
            .expect("the reader runs")
    }
}

async fn router(options: SocketOptions) -> Router {
    let mut socket = RouterSocket::with_options(options);
    let endpoint = socket.bind("tcp://127.0.0.1:0").await.expect("bind");
    let Endpoint::Tcp(_, port) = endpoint else {
        panic!("tcp endpoint");
    };
    let monitor = socket.monitor();
    let (send, mut recv) = socket.split();
    let (forward, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(message) = recv.recv().await {
            if forward.send(message).is_err() {
                return;
            }
        }
    });
    Router {
        send,
        received,
        monitor,
        port,
    }
}

/// A raw TCP connection that has sent a greeting and READY as `socket_type`.
async fn raw_peer(port: u16, socket_type: SocketType) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut hello = BytesMut::from(ZmqGreeting::default());
    hello.unsplit(BytesMut::from(ZmqCommand::ready(socket_type)));
    stream.write_all(&hello).await.expect("handshake");
    stream
}

fn encoded(frames: Vec<Bytes>) -> BytesMut {
    let mut out = BytesMut::new();
    let message = ZmqMessage::try_from(frames).expect("frames");
    ZmqCodec::new()
        .encode(Message::Message(message), &mut out)
        .expect("encode");
    out
}

/// Reads until the node closes the connection; panics if it stays open for `within`.
async fn expect_closed(stream: &mut TcpStream, within: Duration) {
    let mut buf = vec![0u8; 64 * 1024];
    let closed = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was not closed within {within:?}"
    );
}

/// Panics if the connection is closed within `window`.
async fn expect_open(stream: &mut TcpStream, window: Duration) {
    let mut buf = vec![0u8; 1024];
    let ended = tokio::time::timeout(window, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_err(), "the connection was closed");
}

/// A well-behaved DEALER still gets through to `router`.
async fn still_serves(router: &mut Router) {
    let mut dealer = DealerSocket::new();
    dealer
        .connect(&format!("tcp://127.0.0.1:{}", router.port))
        .await
        .expect("a good peer connects");
    dealer.send(ZmqMessage::from("hello")).await.expect("send");
    let message = router.recv().await;
    assert_eq!(message.get(1), Some(&Bytes::from_static(b"hello")));
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < T, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_frame_header_announcing_2_pow_40_closes_the_connection_at_once() {
    let mut options = SocketOptions::default();
    options.max_message_size(1024 * 1024);
    let mut router = router(options).await;
    let port = router.port;
    let stats = router.send.stats();

    let mut attacker = raw_peer(port, SocketType::DEALER).await;
    let mut header = vec![0b0000_0011u8]; // long, more
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    attacker.write_all(&header).await.expect("header");
    // Some of the announced body: it is never buffered, the connection is already gone.
    let _ = attacker.write_all(&vec![0x5a; 256 * 1024]).await;
    expect_closed(&mut attacker, T).await;
    wait_for("the oversized count", || stats.snapshot().oversized == 1).await;

    still_serves(&mut router).await;
}

#[tokio::test]
async fn one_frame_too_many_closes_the_connection() {
    let mut options = SocketOptions::default();
    options.max_frames(8);
    let mut router = router(options).await;
    let port = router.port;
    let stats = router.send.stats();

    // Eight frames is a message.
    let mut fine = raw_peer(port, SocketType::DEALER).await;
    fine.write_all(&encoded(vec![Bytes::new(); 8]))
        .await
        .expect("eight frames");
    let message = router.recv().await;
    assert_eq!(message.len(), 9, "identity and eight frames");

    // Empty frames with MORE set, without end: cut at the ninth.
    let mut attacker = raw_peer(port, SocketType::DEALER).await;
    let _ = attacker.write_all(&[1u8, 0].repeat(100_000)).await;
    expect_closed(&mut attacker, T).await;
    wait_for("the frames count", || stats.snapshot().too_many_frames == 1).await;
    expect_open(&mut fine, Duration::from_millis(200)).await;
    still_serves(&mut router).await;
}

#[tokio::test]
async fn a_handshake_that_does_not_finish_in_time_is_dropped() {
    let mut options = SocketOptions::default();
    options.handshake_timeout(Duration::from_millis(300));
    let mut router = router(options).await;
    let port = router.port;
    let stats = router.send.stats();

    // Nothing at all, and half a greeting.
    let mut silent = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut partial = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let greeting = BytesMut::from(ZmqGreeting::default());
    partial.write_all(&greeting[..20]).await.expect("partial");
    let started = Instant::now();
    expect_closed(&mut silent, T).await;
    expect_closed(&mut partial, T).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    wait_for("the timeouts count", || {
        stats.snapshot().handshake_timeouts == 2
    })
    .await;

    // A complete handshake is not affected, however long the peer then stays quiet.
    let mut quiet = raw_peer(port, SocketType::DEALER).await;
    expect_open(&mut quiet, Duration::from_millis(600)).await;
    still_serves(&mut router).await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_the_slot_comes_back() {
    let mut options = SocketOptions::default();
    options.max_connections(2);
    let mut router = router(options).await;
    let port = router.port;
    let stats = router.send.stats();

    let mut first = raw_peer(port, SocketType::DEALER).await;
    let mut second = raw_peer(port, SocketType::DEALER).await;
    let mut third = raw_peer(port, SocketType::DEALER).await;
    expect_closed(&mut third, T).await;
    assert_eq!(stats.snapshot().connections_refused, 1);
    expect_open(&mut first, Duration::from_millis(100)).await;
    expect_open(&mut second, Duration::from_millis(100)).await;

    // One leaves: its slot is free once the node has closed its side.
    drop(first);
    let mut monitor_free = false;
    for _ in 0..100 {
        let mut next = raw_peer(port, SocketType::DEALER).await;
        let mut byte = [0u8; 1];
        // The node sends its greeting to an admitted connection; a refused one reads EOF.
        match tokio::time::timeout(Duration::from_millis(200), next.read(&mut byte)).await {
            Ok(Ok(1)) => {
                monitor_free = true;
                drop(next);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(
        monitor_free,
        "the freed slot was never given to a new connection"
    );
    drop(second);
    // The node notices those two ends when it next reads them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    still_serves(&mut router).await;
}

#[tokio::test]
async fn a_peer_that_never_reads_fills_its_byte_bound_then_try_send_would_block() {
    let mut options = SocketOptions::default();
    options.send_queue_bytes(2 * 1024 * 1024);
    let mut router = router(options).await;
    let port = router.port;
    let stats = router.send.stats();

    let mut reader_never = raw_peer(port, SocketType::DEALER).await;
    reader_never
        .write_all(&encoded(vec![Bytes::from_static(b"hi")]))
        .await
        .expect("send");
    let hello = router.recv().await;
    let peer = hello.get(0).expect("identity").clone();
    let send = router.send.clone();

    // 1 MiB replies: the queue takes 2 MiB, the kernel buffers some more; without the
    // byte bound the queue would take 100,000 of them.
    let reply = Bytes::from(vec![0x42u8; 1024 * 1024]);
    let mut queued = 0;
    let blocked = loop {
        let message = ZmqMessage::try_from(vec![peer.clone(), reply.clone()]).expect("frames");
        match send.try_send(message) {
            Ok(()) => queued += 1,
            Err(TrySendError::WouldBlock(message)) => break message,
            Err(TrySendError::Failed(e)) => panic!("send failed: {e}"),
        }
        assert!(queued < 200, "never blocked: {queued} MiB queued");
        // Let the writer move what it can into the kernel's buffers.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(blocked.get(0), Some(&peer), "the route is handed back");
    assert!(stats.snapshot().send_queue_full >= 1);

    // The application closes that peer: at once, though it never reads.
    let peer_id = PeerIdentity::try_from(peer).expect("identity");
    assert!(send.disconnect_peer(&peer_id));
    assert!(!send.disconnect_peer(&peer_id), "already gone");
    expect_closed(&mut reader_never, T).await;
    assert_eq!(stats.snapshot().disconnected, 1);
    let disconnected = tokio::time::timeout(T, async {
        while let Some(event) = router.monitor.next().await {
            if let SocketEvent::Disconnected(id) = event {
                return id;
            }
        }
        panic!("monitor closed");
    })
    .await
    .expect("a Disconnected event");
    assert_eq!(disconnected, peer_id);
}

#[tokio::test]
async fn a_pub_drops_for_a_subscriber_past_its_byte_bound() {
    let mut options = SocketOptions::default();
    options.send_queue_bytes(1024 * 1024);
    let (mut publisher, port) = bound(PubSocket::with_options(options)).await;
    let stats = publisher.stats();

    let mut never_reads = raw_peer(port, SocketType::SUB).await;
    never_reads
        .write_all(&encoded(vec![Bytes::from_static(&[1])]))
        .await
        .expect("subscribe to everything");
    // Let the publisher register the subscriber and its subscription.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = Bytes::from(vec![0x17u8; 256 * 1024]);
    // 200 x 256 KiB = 50 MiB: far over the bound and the kernel's buffers.
    for _ in 0..200 {
        publisher
            .send(ZmqMessage::from(event.clone()))
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    wait_for("dropped events", || stats.snapshot().send_dropped > 0).await;
    drop(never_reads);
}

/// Out of descriptors, `accept` fails at once for as long as a connection waits in the
/// backlog: the accept loop used to retry at once (a core busy, and the monitor flooded).
/// Now it pauses 10 ms doubling to 1 s. Run in a child process under `prlimit`, since it
/// exhausts the process's descriptors.
#[tokio::test]
async fn accept_backs_off_when_the_process_is_out_of_descriptors() {
    const CHILD_ENV: &str = "ZEROMQ_EMFILE_TEST_CHILD";
    if std::env::var_os(CHILD_ENV).is_none() {
        let output = std::process::Command::new("prlimit")
            .arg("--nofile=128:128")
            .arg(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "limits_tests::accept_backs_off_when_the_process_is_out_of_descriptors",
                "--nocapture",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .expect("prlimit runs the test binary");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed: {stderr}");
        assert!(stderr.contains("emfile test completed"), "{stderr}");
        return;
    }

    let router = router(SocketOptions::default()).await;
    let stats = router.send.stats();
    // Connect until the process has no descriptor left (each connection costs this
    // process two: the client's end and the accepted end).
    let mut held = Vec::new();
    for _ in 0..200 {
        match tokio::time::timeout(T, TcpStream::connect(("127.0.0.1", router.port))).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => break,
        }
    }
    wait_for("a failed accept", || stats.snapshot().accept_errors > 0).await;
    let before = stats.snapshot().accept_errors;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed = stats.snapshot().accept_errors - before;
    eprintln!(
        "{} connections held; {failed} failed accepts in 2 s",
        held.len()
    );
    // 10 + 20 + ... + 640 ms + 1 s: about eight in two seconds; a spinning loop makes
    // thousands.
    assert!(failed <= 20, "{failed} failed accepts in 2 s");
    // Descriptors back: the waiting connections are accepted.
    held.truncate(held.len() / 2);
    let mut fresh = None;
    for _ in 0..50 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(T, TcpStream::connect(("127.0.0.1", router.port))).await
        {
            fresh = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fresh.is_some(),
        "no connection after descriptors were freed"
    );
    eprintln!("emfile test completed");
}
