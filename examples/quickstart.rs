//! The zmesh quick start: starts a node with the echo service on loopback, calls it, streams
//! from it, shows a remote error, and shuts down gracefully.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use zmesh::{Client, Node};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(zmesh_echo::service())
        .export_unprefixed("echo")
        .start()
        .await?;
    println!("node '{}' serving on {}", node.name(), node.endpoint());

    let client = Client::new(node.endpoint());
    let upper: String = client.call("echo.upper", ("hello, zmesh",)).await?;
    println!("echo.upper(\"hello, zmesh\") -> {upper:?}");

    let value: rmpv::Value = client
        .call(
            "echo.echo",
            (rmpv::Value::Map(vec![("answer".into(), 42.into())]),),
        )
        .await?;
    println!("echo.echo({{answer: 42}})    -> {value}");

    let mut counted = Vec::new();
    let mut stream = client.call_stream::<u64>("echo.count", (5,)).await?;
    while let Some(item) = stream.next().await {
        counted.push(item?);
    }
    println!("echo.count(5) streamed     -> {counted:?}");

    match client.call::<()>("echo.fail", ("on purpose",)).await {
        Err(e) => println!("echo.fail(\"on purpose\")    -> {e}"),
        Ok(()) => println!("echo.fail unexpectedly succeeded"),
    }

    let methods: Vec<String> = client.call(zmesh::reserved::ZERORPC_LIST, ()).await?;
    println!("_zerorpc_list              -> {methods:?}");

    let calls = 10_000;
    let started = Instant::now();
    for i in 0..calls {
        let _: u64 = client.call("echo.echo", (i,)).await?;
    }
    let elapsed = started.elapsed();
    println!(
        "{calls} sequential calls in {:.1} ms ({:.1} us per call)",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / f64::from(calls)
    );

    let aborted = node.shutdown(Duration::from_secs(1)).await;
    println!("node shut down ({aborted} calls aborted)");
    Ok(())
}
