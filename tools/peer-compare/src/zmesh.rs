//! zmesh: a [`Client`] calling `echo.echo` on a [`Node`] serving the reference echo service
//! over tcp, the payload a msgpack bin.

use zmesh_core::{Client, Node};

use zmesh_bench::Figures;

use crate::measure;
use crate::{Error, Plan};

/// Starts a node with the echo service on a free loopback port; returns its endpoint and
/// the node, which serves until dropped.
pub(crate) async fn serve() -> Result<(String, Node), Error> {
    let node = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(zmesh_echo::service())
        .start()
        .await
        .map_err(|e| Error::Server(format!("zmesh node: {e}")))?;
    Ok((node.endpoint().to_string(), node))
}

/// Sequential and pipelined passes through one client (one connection).
pub(crate) async fn measure(endpoint: &str, plan: &Plan) -> Result<(Figures, Figures), Error> {
    let client = Client::new(endpoint);
    let value = rmpv::Value::Binary(vec![0x5a; plan.payload]);
    let call = || {
        let client = client.clone();
        let value = value.clone();
        async move {
            let reply: rmpv::Value = client
                .call("echo.echo", (value,))
                .await
                .map_err(|e| Error::Call(format!("zmesh: {e}")))?;
            std::hint::black_box(reply);
            Ok(())
        }
    };
    measure::passes(&call, plan).await
}
