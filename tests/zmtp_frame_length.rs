//! A forged ZMTP frame length must not take a process down. The `zeromq` decoder used to
//! reserve a frame's announced length before any of it arrived, so about 80 bytes (a
//! greeting and a long-frame header announcing 1 TiB) made the allocation fail and abort
//! the process: a node from any client, a client from any server (see
//! `vendor/zmesh-zeromq/PATCHED.md`, change 1). Found by the fault soak. If this
//! regresses, the test binary aborts.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use zmesh::{CallOptions, Client, Node};

const T: Duration = Duration::from_secs(10);

/// A ZMTP 3.0 NULL greeting, as a client (`as_server = 0`) or a server.
fn greeting(as_server: bool) -> Vec<u8> {
    let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    g.extend_from_slice(&mechanism);
    g.push(u8::from(as_server));
    g.resize(64, 0);
    g
}

/// A greeting, then a long message frame announcing 1 TiB and 4 KiB of it.
fn forged(as_server: bool) -> Vec<u8> {
    let mut bytes = greeting(as_server);
    bytes.push(0x02);
    bytes.extend_from_slice(&(1u64 << 40).to_be_bytes());
    bytes.extend(std::iter::repeat_n(0x41, 4096));
    bytes
}

#[tokio::test]
async fn node_survives_a_frame_announcing_one_tebibyte() {
    let node = tokio::time::timeout(
        T,
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .service(zmesh_echo::service())
            .start(),
    )
    .await
    .expect("node start timed out")
    .expect("node starts");
    let addr = node.endpoint().trim_start_matches("tcp://").to_owned();
    for _ in 0..3 {
        let mut stream = tokio::time::timeout(T, tokio::net::TcpStream::connect(&addr))
            .await
            .expect("connect timed out")
            .expect("connects");
        tokio::time::timeout(T, stream.write_all(&forged(false)))
            .await
            .expect("write timed out")
            .expect("writes");
        // Keep the connection open while the node reads it, then hang up.
        let client = Client::new(node.endpoint());
        let reply: String = tokio::time::timeout(T, client.call("echo.upper", ("still here",)))
            .await
            .expect("call timed out")
            .expect("the node still serves");
        assert_eq!(reply, "STILL HERE");
        drop(stream);
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn client_survives_a_server_announcing_one_tebibyte() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let endpoint = format!("tcp://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accepts");
        let _ = stream.write_all(&forged(true)).await;
        // Hold the connection until the client gives up.
        tokio::time::sleep(T).await;
    });
    let client = Client::new(&endpoint);
    let result = tokio::time::timeout(
        T,
        client.call_with::<String>(
            "echo.upper",
            ("x",),
            CallOptions::timeout(Duration::from_secs(2)),
        ),
    )
    .await
    .expect("the call resolves by its deadline");
    assert!(result.is_err(), "a forged server cannot answer: {result:?}");
    server.abort();
}
