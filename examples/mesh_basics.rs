//! The README's mesh example: a mesh node that announces itself by UDP beacons on this host
//! (127.255.255.255), and a caller that finds it by service name, with no address
//! configured. Exits by itself.
//!
//! ```text
//! cargo run --example mesh_basics
//! ```

use std::time::Duration;
use zmesh::mesh::{
    BeaconConfig, Discovery, DiscoveryConfig, MeshClient, MeshClientConfig, MeshNode,
};
use zmesh::{HandlerError, Service};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // On a LAN: bind the host's address and use BeaconConfig::new(47_000), which
    // broadcasts to 255.255.255.255; loopback() keeps the beacons on this host.
    let beacon = BeaconConfig::loopback(47_000).interval(Duration::from_millis(200));
    let billing = Service::new("billing")
        .method(
            "quote",
            |n: u64| async move { Ok::<_, HandlerError>(n * 3) },
        )
        .idempotent("quote") // safe to retry on another peer
        .method("charge", |cents: u64| async move {
            Ok::<_, HandlerError>(cents)
        });
    // Start as many as you like, here or in other processes: they find each other.
    let node = MeshNode::builder("prod")
        .bind("tcp://127.0.0.1:4270")
        .service(billing)
        .beacon(beacon.clone())
        .start()
        .await?;

    // A process that only calls: it listens for beacons and offers nothing.
    let discovery = Discovery::start(DiscoveryConfig::new("prod").beacon(beacon)).await?;
    let mesh = MeshClient::new(discovery, MeshClientConfig::default());
    let price: u64 = mesh.call("billing.quote", (7,)).await?; // waits until a peer offers it
    let charged: u64 = mesh.call("billing.charge", (price,)).await?;
    println!("quote {price}, charged {charged}");
    node.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
