//! Provides the brokerless mesh: callers name a service, not an address, and the mesh
//! finds live instances, spreads load over them and survives one dying.
//!
//! Layout: `directory` is the pure peer directory (joins, updates, expiry); `beacon` the
//! UDP beacon format and shared socket; `discovery` runs seeds, beacons and gossip around
//! the directory; `balance` is the pure balancing and retry arithmetic; `client` the
//! service-level [`MeshClient`]; `node` the [`MeshNode`] that serves and announces.
//!
//! ```no_run
//! use zmesh_core::mesh::{BeaconConfig, MeshClientConfig, MeshNode};
//! use zmesh_core::{HandlerError, Service};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let billing = Service::new("billing")
//!     .method("quote", |n: u64| async move { Ok(n * 3) })
//!     .idempotent()
//!     .into_service();
//! let node = MeshNode::builder("prod")
//!     .bind("tcp://127.0.0.1:0")
//!     .service(billing)
//!     .beacon(BeaconConfig::loopback(47_000))
//!     .start()
//!     .await?;
//! let client = node.client(MeshClientConfig::default());
//! let price: u64 = client.call("billing.quote", (7,)).await?;
//! # Ok(()) }
//! ```

mod balance;
pub mod beacon;
mod client;
mod directory;
mod discovery;
pub mod dns;
mod metrics;
mod node;

pub use beacon::{BeaconConfig, BeaconError};
pub use client::{
    HedgeConfig, MeshCallError, MeshCallOptions, MeshClient, MeshClientConfig, MeshClientStats,
};
pub use directory::{PeerRecord, Presence, ServiceInfo};
pub use discovery::{Discovery, DiscoveryConfig, DiscoveryStats, GOSSIP_METHOD, GOSSIP_SERVICE};
pub use dns::DnsSeeds;
pub use metrics::MeshMetrics;
pub use node::{MeshBuilder, MeshNode};

use crate::node::NodeError;

/// Why a mesh member or discovery could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The node could not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The beacon port could not be bound.
    #[error("cannot bind beacon port {port}: {source}")]
    Beacon {
        /// The port.
        port: u16,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// This node's own beacon would not fit in a datagram.
    #[error("beacon does not fit: {0}")]
    BeaconTooLarge(String),
    /// A setting is out of range.
    #[error("invalid mesh configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The DNS resolver for [`DiscoveryConfig::dns`] could not be set up.
    #[error("cannot start DNS discovery: {0}")]
    Dns(String),
}
