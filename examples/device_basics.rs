//! The README's proxy device example: a device, a worker node behind it, and a call through
//! it. Exits by itself.
//!
//! ```text
//! cargo run --example device_basics
//! ```

use std::time::Duration;

use zmesh::device::Device;
use zmesh::{Client, HandlerError, Node, Service};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::builder()
        .frontend("tcp://127.0.0.1:4260") // clients call this
        .backend("tcp://127.0.0.1:4261") // workers connect here
        .start()
        .await?;
    let jobs = Service::new("jobs")
        .method("get", |id: u64| async move { Ok::<_, HandlerError>(id) })
        .idempotent("get"); // may be re-run elsewhere if its worker dies
    let worker = Node::builder()
        .worker_of(device.backend())
        .service(jobs)
        .start()
        .await?;

    // A worker announces itself once connected; until then the device would answer that
    // no worker serves jobs.get.
    device
        .wait_for_workers("jobs", 1, Duration::from_secs(5))
        .await?;
    let client = Client::new("tcp://127.0.0.1:4260");
    let id: u64 = client.call("jobs.get", (7,)).await?;
    println!("jobs.get(7) = {id}, through the device");
    worker.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
    Ok(())
}
