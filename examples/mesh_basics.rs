//! The README's mesh example: a mesh node that announces itself by UDP beacons on this host
//! (127.255.255.255), and a caller that finds it by service name, with no address
//! configured. Exits by itself.
//!
//! ```text
//! cargo run --example mesh_basics
//! ```

use std::time::Duration;
use zmesh::HandlerError;
use zmesh::mesh::{
    BeaconConfig, Discovery, DiscoveryConfig, MeshClient, MeshClientConfig, MeshNode,
};

#[zmesh::service]
trait Billing {
    /// The price of `n` items.
    #[zmesh(idempotent)] // safe to retry on another peer
    async fn quote(&self, n: u64) -> Result<u64, HandlerError>;
    /// Charges `cents`; not idempotent, so never run twice.
    async fn charge(&self, cents: u64) -> Result<u64, HandlerError>;
}

struct Desk;

impl Billing for Desk {
    async fn quote(&self, n: u64) -> Result<u64, HandlerError> {
        Ok(n * 3)
    }

    async fn charge(&self, cents: u64) -> Result<u64, HandlerError> {
        Ok(cents)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // On a LAN: bind the host's address and use BeaconConfig::new(47_000), which
    // broadcasts to 255.255.255.255; loopback() keeps the beacons on this host.
    let beacon = BeaconConfig::loopback(47_000).interval(Duration::from_millis(200));
    // Start as many as you like, here or in other processes: they find each other.
    let node = MeshNode::builder("prod")
        .bind("tcp://127.0.0.1:4270")
        .service(BillingServer::new(Desk))
        .beacon(beacon.clone())
        .start()
        .await?;

    // A process that only calls: it listens for beacons and offers nothing.
    let discovery = Discovery::start(DiscoveryConfig::new("prod").beacon(beacon)).await?;
    let billing = BillingClient::new(MeshClient::new(discovery, MeshClientConfig::default()));
    let price = billing.quote(7).await?; // waits until a peer offers billing
    let charged = billing.charge(price).await?;
    println!("quote {price}, charged {charged}");
    node.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
