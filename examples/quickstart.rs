//! The README's quick start: a node serving a typed service on loopback, a call and a stream
//! from a client, and a graceful shutdown.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use futures::StreamExt;
use zmesh::{CallContext, Client, HandlerError, ItemStream, Node};

/// A service is a trait; `#[zmesh::service]` generates its typed server and client.
#[zmesh::service]
trait Greeter {
    /// Greets `name`. The context is optional and is not a wire argument.
    async fn hello(&self, ctx: &CallContext, name: String) -> Result<String, HandlerError>;
    /// Counts from 0 to `n - 1`, as a stream.
    #[zmesh(stream)]
    async fn count(&self, n: u64) -> Result<ItemStream<u64>, HandlerError>;
}

struct Polite;

impl Greeter for Polite {
    async fn hello(&self, ctx: &CallContext, name: String) -> Result<String, HandlerError> {
        // The context holds the caller's deadline, trace and peer; a call made from here
        // through `client.with_context(ctx)` keeps to that deadline and continues the trace.
        Ok(format!("Hello, {name}, from {}", ctx.method()))
    }

    async fn count(&self, n: u64) -> Result<ItemStream<u64>, HandlerError> {
        Ok(futures::stream::iter((0..n).map(Ok)).boxed())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let node = Node::builder()
        .bind("tcp://127.0.0.1:4242") // also ipc:///path; bind several if you like
        .service(GreeterServer::new(Polite)) // on the wire: greeter.hello, greeter.count
        .export_unprefixed("greeter") // lets zerorpc clients call hello() as well
        .start()
        .await?;

    // No method name written as a string: a typo or a wrong argument type does not compile.
    let greeter = GreeterClient::new(Client::new("tcp://127.0.0.1:4242"));
    let reply = greeter.hello("zmesh".into()).await?;
    let mut items = greeter.count(3).await?;
    while let Some(item) = items.next().await {
        println!("{}", item?);
    }
    println!("{reply}");
    node.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}
