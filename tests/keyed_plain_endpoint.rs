//! A keyed node's plain endpoint answers a connection's very first message, even when that
//! message is refused before it is read (oversized). Found by the fault soak: the node
//! learnt that a connection was plain only after the size check, so the `ERR
//! MessageTooLarge` for an oversized first message went out sealed on the keyed socket,
//! which does not know the connection, and was lost; the raw peer waited forever.

use std::time::Duration;

use bytes::Bytes;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zmesh::wire::{self, Header, MessageId};
use zmesh::{MeshKey, Node, NodeConfig};

const T: Duration = Duration::from_secs(10);
const LIMIT: usize = 64 * 1024;

#[tokio::test]
async fn oversized_first_message_on_a_plain_endpoint_gets_message_too_large() {
    let node = tokio::time::timeout(
        T,
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .bind_plain("tcp://127.0.0.1:0")
            .mesh_key(MeshKey::from_secret("a mesh key of thirty-two bytes!!").expect("key"))
            .service(zmesh_echo::service())
            .config(NodeConfig::default().max_message_size(LIMIT))
            .start(),
    )
    .await
    .expect("node start timed out")
    .expect("node starts");
    let plain = node.endpoints()[1].clone();
    let mut raw = DealerSocket::new();
    tokio::time::timeout(T, raw.connect(&plain))
        .await
        .expect("connect timed out")
        .expect("connects");

    // A stock zerorpc request (no zmesh marker) whose args are over the limit.
    let id = MessageId::generate();
    let mut header = Header::zmesh_with_id(id.clone(), None);
    header.zmesh = None;
    let mut args = vec![0x91, 0xc6];
    args.extend_from_slice(&(2 * LIMIT as u32).to_be_bytes());
    args.resize(args.len() + 2 * LIMIT, 0x5a);
    let event = wire::encode_event(&header, "echo.size", &args);
    let message = ZmqMessage::try_from(vec![Bytes::new(), event]).expect("frames");
    tokio::time::timeout(T, raw.send(message))
        .await
        .expect("send timed out")
        .expect("sends");

    let reply = tokio::time::timeout(T, raw.recv())
        .await
        .expect("the oversized first message is answered")
        .expect("recv");
    let frames = reply.into_vec();
    let event = wire::decode_event(frames.last().expect("a frame")).expect("a plain reply");
    assert_eq!(event.name, "ERR");
    assert_eq!(event.header.response_to, Some(id));
    assert_eq!(wire::parse_err_args(&event.args).0, "MessageTooLarge");
    node.shutdown(Duration::from_secs(1)).await;
}
