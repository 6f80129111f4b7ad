//! zmesh patch: the remote address a socket keeps with each peer (`peer_address`), over
//! real sockets: TCP on loopback, where it is the peer's end of the connection, and
//! `ipc://`, where there is none.

use crate::codec::{Message, ZmqCodec, ZmqCommand, ZmqGreeting};
use crate::prelude::*;
use crate::util::PeerIdentity;
use crate::{DealerSocket, Endpoint, RouterSocket, SocketEvent, SocketType, ZmqMessage};

use asynchronous_codec::Encoder;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use std::net::SocketAddr;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// The first `Disconnected` the monitor reports.
async fn disconnected(monitor: &mut futures::channel::mpsc::Receiver<SocketEvent>) -> PeerIdentity {
    tokio::time::timeout(T, async {
        while let Some(event) = monitor.next().await {
            if let SocketEvent::Disconnected(id) = event {
                return id;
            }
        }
        panic!("monitor closed");
    })
    .await
    .expect("a Disconnected event")
}

#[tokio::test]
async fn a_router_knows_the_address_each_tcp_peer_connected_from() {
    let mut socket = RouterSocket::new();
    let endpoint = socket.bind("tcp://127.0.0.1:0").await.expect("bind");
    let Endpoint::Tcp(_, port) = endpoint else {
        panic!("tcp endpoint");
    };
    let mut monitor = socket.monitor();
    let (send, mut recv) = socket.split();

    // A raw TCP peer, so that the test knows its local address.
    let mut peer = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let local: SocketAddr = peer.local_addr().expect("local address");
    let mut hello = BytesMut::from(ZmqGreeting::default());
    hello.unsplit(BytesMut::from(ZmqCommand::ready(SocketType::DEALER)));
    ZmqCodec::new()
        .encode(Message::Message(ZmqMessage::from("hi")), &mut hello)
        .expect("encode");
    peer.write_all(&hello).await.expect("handshake and message");

    let message = tokio::time::timeout(T, recv.recv())
        .await
        .expect("received in time")
        .expect("a message");
    let identity =
        PeerIdentity::try_from(message.get(0).expect("identity").clone()).expect("an identity");
    assert_eq!(recv.peer_address(&identity), Some(local));
    assert_eq!(send.peer_address(&identity), Some(local), "both halves");
    assert_eq!(
        recv.peer_address(&PeerIdentity::new()),
        None,
        "an identity nobody has"
    );

    // A DEALER's one peer is the ROUTER's listening address.
    let mut dealer = DealerSocket::new();
    assert_eq!(dealer.peer_address(), None, "not connected yet");
    dealer
        .connect(&format!("tcp://127.0.0.1:{port}"))
        .await
        .expect("connect");
    assert_eq!(
        dealer.peer_address(),
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    );

    // Gone with the peer. Its end is noticed as its stream is read, so read meanwhile.
    drop(peer);
    let gone = tokio::select! {
        received = recv.recv() => panic!("nothing more was sent: {received:?}"),
        gone = disconnected(&mut monitor) => gone,
    };
    assert_eq!(gone, identity);
    assert_eq!(recv.peer_address(&identity), None);
}

#[tokio::test]
async fn an_ipc_peer_has_no_address() {
    let dir = std::env::temp_dir().join(format!(
        "zmesh-zeromq-peer-address-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("router.sock");
    let endpoint = format!("ipc://{}", path.display());

    let mut socket = RouterSocket::new();
    socket.bind(&endpoint).await.expect("bind");
    let (_send, mut recv) = socket.split();
    let mut dealer = DealerSocket::new();
    dealer.connect(&endpoint).await.expect("connect");
    assert_eq!(
        dealer.peer_address(),
        None,
        "a unix socket has no IP address"
    );
    dealer.send(ZmqMessage::from("hi")).await.expect("send");

    let message = tokio::time::timeout(T, recv.recv())
        .await
        .expect("received in time")
        .expect("a message");
    let identity =
        PeerIdentity::try_from(message.get(0).expect("identity").clone()).expect("an identity");
    assert_eq!(message.get(1), Some(&Bytes::from_static(b"hi")));
    assert_eq!(recv.peer_address(&identity), None);
    drop(dealer);
    drop(recv);
    let _ = std::fs::remove_dir_all(&dir);
}
