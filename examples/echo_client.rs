//! Calls the echo service: a plain call, a stream, and a remote error.
//!
//! ```text
//! cargo run --example echo_server &                 # terminal 1
//! cargo run --example echo_client                   # terminal 2 (tcp://127.0.0.1:4242)
//! cargo run --example echo_client -- ipc:///tmp/zmesh-echo.sock
//! ```

use futures::StreamExt;
use zmesh::{CallError, Client};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:4242".into());
    let client = Client::new(endpoint);

    let upper: String = client.call("echo.upper", ("hello",)).await?;
    println!("upper: {upper}");

    let mut stream = client.call_stream::<u64>("echo.count", (3,)).await?;
    while let Some(n) = stream.next().await {
        println!("count: {}", n?);
    }

    match client.call::<()>("echo.fail", ("boom",)).await {
        Err(CallError::Remote(e)) => println!("fail: {} {}", e.name, e.message),
        other => println!("fail: unexpected {other:?}"),
    }
    Ok(())
}
