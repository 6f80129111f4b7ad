//! Discovery: two mesh nodes offering the same service announce themselves by UDP beacons on
//! this host only (sent to `127.255.255.255`); a `MeshClient` finds both by service name, with
//! no address configured, spreads calls over them, and fails over when one shuts down. Runs
//! on loopback and exits by itself.
//!
//! ```text
//! cargo run --example discovery            # beacon port derived from the process id
//! cargo run --example discovery -- 47000   # or a given beacon port
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use zmesh::HandlerError;
use zmesh::mesh::{
    BeaconConfig, Discovery, DiscoveryConfig, MeshClient, MeshClientConfig, MeshNode, Presence,
};

/// Longest wait for the client to find both nodes: the example never hangs.
const FIND_WITHIN: Duration = Duration::from_secs(10);

/// Beacons every 200 ms (default 1 s) so the example is quick; a peer silent for 2 s is gone.
const BEACON_EVERY: Duration = Duration::from_millis(200);
const GOSSIP_EVERY: Duration = Duration::from_millis(200);
const EXPIRE_AFTER: Duration = Duration::from_secs(2);

/// The `greeter` service, served by every node of the example.
#[zmesh::service]
trait Greeter {
    /// Says which node answered; may run on any of them.
    #[zmesh(idempotent)]
    async fn hello(&self, who: String) -> Result<String, HandlerError>;
}

/// One node's greeter: it knows the node's name.
struct Named(&'static str);

impl Greeter for Named {
    async fn hello(&self, who: String) -> Result<String, HandlerError> {
        Ok(format!("hello {who}, from {}", self.0))
    }
}

async fn start_node(mesh: &str, name: &'static str, beacon: &BeaconConfig) -> MeshNode {
    MeshNode::builder(mesh)
        .name(name)
        .bind("tcp://127.0.0.1:0")
        .service(GreeterServer::new(Named(name)))
        .beacon(beacon.clone())
        .timing(GOSSIP_EVERY, EXPIRE_AFTER)
        .start()
        .await
        .unwrap_or_else(|e| panic!("mesh node {name} does not start: {e}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let port: u16 = match std::env::args().nth(1) {
        Some(port) => port.parse()?,
        // Distinct per run, so two runs at once do not join each other's mesh.
        None => 40_000 + (std::process::id() % 20_000) as u16,
    };
    let mesh = format!("example-{port}");
    let beacon = BeaconConfig::loopback(port).interval(BEACON_EVERY);
    println!("mesh {mesh}: beacons on udp 127.255.255.255:{port}");

    // The client's own discovery: it only listens and gossips, it offers nothing.
    let discovery = Discovery::start(
        DiscoveryConfig::new(&mesh)
            .beacon(beacon.clone())
            .gossip_interval(GOSSIP_EVERY)
            .expire_after(EXPIRE_AFTER),
    )
    .await?;
    let mut presence = discovery.subscribe();
    let client = MeshClient::new(discovery, MeshClientConfig::default());
    let greeter = GreeterClient::new(&client);

    let alpha = start_node(&mesh, "alpha", &beacon).await;
    let beta = start_node(&mesh, "beta", &beacon).await;
    println!(
        "started alpha on {} and beta on {}",
        alpha.node().endpoint(),
        beta.node().endpoint()
    );

    // Wait for both joins (heard from beacons), bounded.
    let mut found = Vec::new();
    tokio::time::timeout(FIND_WITHIN, async {
        while found.len() < 2 {
            match presence.recv().await {
                Ok(Presence::Joined(peer)) => {
                    println!(
                        "discovered {} at {}",
                        peer.name,
                        peer.endpoint().unwrap_or("?")
                    );
                    found.push(peer.name);
                }
                Ok(_) => {}
                Err(e) => return Err(format!("presence stream broke: {e}")),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| format!("found only {found:?} within {FIND_WITHIN:?}"))??;

    // Calls by service name, balanced over the live peers.
    let mut answered: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..20 {
        let reply = greeter.hello(format!("#{i}")).await?;
        let node = reply.rsplit(' ').next().unwrap_or_default().to_owned();
        *answered.entry(node).or_default() += 1;
    }
    println!("20 calls answered by: {answered:?}");

    // One node goes away. Its beacons stop, so after the expiry period every directory
    // drops it (a `Left` notification) and calls go to the other node only.
    alpha.shutdown(Duration::from_secs(1)).await;
    println!("alpha shut down");
    tokio::time::timeout(FIND_WITHIN, async {
        loop {
            match presence.recv().await {
                Ok(Presence::Left(peer)) if peer.name == "alpha" => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("presence stream broke: {e}")),
            }
        }
    })
    .await
    .map_err(|_| format!("alpha did not leave within {FIND_WITHIN:?}"))??;
    println!("alpha left the directory");
    let mut after: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..10 {
        let reply = greeter.hello(format!("#{i}")).await?;
        let node = reply.rsplit(' ').next().unwrap_or_default().to_owned();
        *after.entry(node).or_default() += 1;
    }
    println!("10 calls after: {after:?}");
    let stats = client.stats();
    println!("client: {stats:?}");

    beta.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
