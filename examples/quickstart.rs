//! The README's quick start: a node serving a typed service on loopback, a call and a stream
//! from a client, and a graceful shutdown.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use futures::StreamExt;
use zmesh::{Client, HandlerError, Node, Service};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A service is a set of typed async handlers. Parameters are decoded from the request's
    // positional arguments; the result is encoded back.
    let greeter = Service::new("greeter")
        .method("hello", |name: String| async move {
            Ok::<_, HandlerError>(format!("Hello, {name}"))
        })
        .stream("count", |n: u64| async move {
            Ok::<_, HandlerError>(futures::stream::iter((0..n).map(Ok::<_, HandlerError>)))
        });

    let node = Node::builder()
        .bind("tcp://127.0.0.1:4242") // also ipc:///path; bind several if you like
        .service(greeter)
        .export_unprefixed("greeter") // lets zerorpc clients call hello() as well
        .start()
        .await?;

    let client = Client::new("tcp://127.0.0.1:4242");
    let reply: String = client.call("greeter.hello", ("zmesh",)).await?; // args are a tuple
    let mut items = client.call_stream::<u64>("greeter.count", (3,)).await?;
    while let Some(item) = items.next().await {
        println!("{}", item?);
    }
    println!("{reply}");
    node.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}
