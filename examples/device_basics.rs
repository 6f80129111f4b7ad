//! The README's proxy device example: a device, a worker node behind it, and a call through
//! it. Exits by itself.
//!
//! ```text
//! cargo run --example device_basics
//! ```

use std::time::Duration;

use zmesh::device::Device;
use zmesh::{Client, HandlerError, Node};

#[zmesh::service]
trait Orders {
    /// The order `id`. Safe to run twice, so the device may re-run it on another worker
    /// if its worker dies.
    #[zmesh(idempotent)]
    async fn get(&self, id: u64) -> Result<u64, HandlerError>;
}

struct Store;

impl Orders for Store {
    async fn get(&self, id: u64) -> Result<u64, HandlerError> {
        Ok(id)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::builder()
        .frontend("tcp://127.0.0.1:4260") // clients call this
        .backend("tcp://127.0.0.1:4261") // workers connect here
        .start()
        .await?;
    let worker = Node::builder()
        .worker_of(device.backend())
        .service(OrdersServer::new(Store))
        .start()
        .await?;

    // A worker announces itself once connected; until then the device would answer that
    // no worker serves orders.get.
    device
        .wait_for_workers("orders", 1, Duration::from_secs(5))
        .await?;
    let orders = OrdersClient::new(Client::new("tcp://127.0.0.1:4260"));
    let id = orders.get(7).await?;
    println!("orders.get(7) = {id}, through the device");
    worker.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
    Ok(())
}
