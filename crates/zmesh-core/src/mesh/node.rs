//! Provides the mesh node: a [`Node`] that announces itself to its mesh (beacons, gossip)
//! with what it serves, answers gossip, and hands out service-level clients.

use std::time::Duration;

use super::MeshError;
use super::beacon::BeaconConfig;
use super::client::{MeshClient, MeshClientConfig};
use super::directory::{PeerRecord, ServiceInfo};
use super::discovery::{Discovery, DiscoveryConfig};
use crate::events::Publisher;
use crate::node::{Extension, Node, NodeConfig};
use crate::service::Service;
use crate::wire::MessageId;

/// Builds and starts a [`MeshNode`].
#[derive(Debug)]
#[must_use]
pub struct MeshBuilder {
    name: Option<String>,
    endpoints: Vec<String>,
    advertise: Vec<String>,
    services: Vec<Service>,
    node_config: NodeConfig,
    discovery: DiscoveryConfig,
    publisher: Option<Publisher>,
    mesh_key: Option<crate::trust::MeshKey>,
    extensions: Vec<ExtensionMaker>,
}

/// Makes an extension from the mesh's discovery.
type MakeExtension = dyn FnOnce(&Discovery) -> Box<dyn Extension> + Send;

/// An extension to make once the mesh's discovery exists.
struct ExtensionMaker(Box<MakeExtension>);

impl std::fmt::Debug for ExtensionMaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtensionMaker")
    }
}

impl MeshBuilder {
    /// The node's name (default: its first service's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Requires the mesh key on the node's endpoints and seals gossip and the clients of
    /// [`MeshNode::client`] with it, as [`NodeBuilder::mesh_key`](crate::NodeBuilder::mesh_key).
    pub fn mesh_key(mut self, key: crate::trust::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Adds an endpoint to bind, as [`NodeBuilder::bind`](crate::NodeBuilder::bind).
    pub fn bind(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoints.push(endpoint.into());
        self
    }

    /// Advertises this endpoint instead of the bound ones (for example a routable address
    /// when binding `0.0.0.0`). May be given several times. A node that binds an
    /// unspecified address (`0.0.0.0`, `[::]`, `*`) must advertise: it has no address of
    /// its own to announce, and `start` refuses with a `ConfigError` rather than announce
    /// one that reaches no one.
    pub fn advertise(mut self, endpoint: impl Into<String>) -> Self {
        self.advertise.push(endpoint.into());
        self
    }

    /// Hosts a service; its name and idempotent methods are announced to the mesh.
    pub fn service(mut self, service: impl Into<Service>) -> Self {
        self.services.push(service.into());
        self
    }

    /// Publishes events through `publisher` (started beforehand), as
    /// [`NodeBuilder::publisher`](crate::NodeBuilder::publisher).
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// Adds a component the node starts with itself, as
    /// [`NodeBuilder::extension`](crate::NodeBuilder::extension); the services it hosts are
    /// announced to the mesh with the others.
    pub fn extension<E: Extension>(self, extension: E) -> Self {
        self.extension_with(move |_| extension)
    }

    /// Adds a component made once the mesh's discovery exists (before the node starts):
    /// for one that calls other members, such as a job queue whose jobs run through a
    /// [`MeshClient`] (`MeshClient::new(discovery.clone(), config)`).
    pub fn extension_with<E: Extension>(
        mut self,
        make: impl FnOnce(&Discovery) -> E + Send + 'static,
    ) -> Self {
        self.extensions
            .push(ExtensionMaker(Box::new(move |discovery| {
                Box::new(make(discovery)) as Box<dyn Extension>
            })));
        self
    }

    /// Sets the node's configuration.
    pub fn node_config(mut self, config: NodeConfig) -> Self {
        self.node_config = config;
        self
    }

    /// Adds a static seed endpoint (another node of the mesh).
    pub fn seed(mut self, endpoint: impl Into<String>) -> Self {
        self.discovery.seeds.push(endpoint.into());
        self
    }

    /// Also gossips with the members DNS lists (SRV or A/AAAA records, resolved again every
    /// refresh period), as [`DiscoveryConfig::dns`].
    pub fn dns(mut self, seeds: super::dns::DnsSeeds) -> Self {
        self.discovery.dns = Some(seeds);
        self
    }

    /// Turns on UDP beacons.
    pub fn beacon(mut self, beacon: BeaconConfig) -> Self {
        self.discovery.beacon = Some(beacon);
        self
    }

    /// Replaces the discovery settings (the mesh name is kept).
    pub fn discovery(mut self, config: DiscoveryConfig) -> Self {
        let mesh = std::mem::take(&mut self.discovery.mesh);
        self.discovery = DiscoveryConfig { mesh, ..config };
        self
    }

    /// Sets how often directories are gossiped and how long a silent peer is kept.
    pub fn timing(mut self, gossip_interval: Duration, expire_after: Duration) -> Self {
        self.discovery.gossip_interval = gossip_interval;
        self.discovery.expire_after = expire_after;
        self
    }

    /// Starts the node, then discovery.
    ///
    /// # Errors
    /// [`MeshError`] when the node cannot start, the beacon port cannot be bound, or the
    /// settings are out of range.
    pub async fn start(mut self) -> Result<MeshNode, MeshError> {
        if let Some(key) = &self.mesh_key {
            self.discovery.mesh_key = Some(key.clone());
        }
        let discovery = Discovery::new(self.discovery)?;
        let mut builder = Node::builder().config(self.node_config);
        if let Some(key) = self.mesh_key {
            builder = builder.mesh_key(key);
        }
        if let Some(name) = self.name {
            builder = builder.name(name);
        }
        for endpoint in self.endpoints {
            builder = builder.bind(endpoint);
        }
        for service in self.services {
            builder = builder.service(service);
        }
        if let Some(publisher) = self.publisher {
            builder = builder.publisher(publisher);
        }
        for make in self.extensions {
            builder = builder.extension_boxed((make.0)(&discovery));
        }
        builder = builder.zmesh_service(discovery.gossip_service());
        let node = builder.start().await?;
        // What the node hosts, its extensions' services included (known once they started).
        let services: Vec<ServiceInfo> = node
            .hosted()
            .iter()
            .map(|s| ServiceInfo::new(&s.name, s.idempotent.clone()))
            .collect();
        let endpoints = if self.advertise.is_empty() {
            node.endpoints().to_vec()
        } else {
            self.advertise
        };
        // A new id per start: a restarted node is a new peer, so nobody mistakes it for
        // the old process (whose calls and cached replies died with it).
        let id = format!("{}-{}", node.name(), MessageId::generate());
        let record = PeerRecord::new(id, node.name(), endpoints, services);
        record
            .validate()
            .map_err(|why| crate::config::ConfigError::new("peer record", why))?;
        discovery.run(Some(record.clone()))?;
        Ok(MeshNode {
            node,
            discovery,
            record,
        })
    }
}

/// A node that is a member of a mesh. Dropping it stops serving and announcing.
#[derive(Debug)]
pub struct MeshNode {
    node: Node,
    discovery: Discovery,
    record: PeerRecord,
}

impl MeshNode {
    /// Starts building a member of mesh `mesh`.
    pub fn builder(mesh: impl Into<String>) -> MeshBuilder {
        MeshBuilder {
            name: None,
            endpoints: Vec::new(),
            advertise: Vec::new(),
            services: Vec::new(),
            node_config: NodeConfig::default(),
            discovery: DiscoveryConfig::new(mesh),
            publisher: None,
            mesh_key: None,
            extensions: Vec::new(),
        }
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// What this node announces about itself.
    pub fn record(&self) -> &PeerRecord {
        &self.record
    }

    /// This node's discovery (its view of the mesh, presence notifications).
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// A service-level client that resolves services through this node's discovery.
    pub fn client(&self, config: MeshClientConfig) -> MeshClient {
        MeshClient::new(self.discovery.clone(), config)
    }

    /// Stops announcing, then shuts the node down gracefully (see [`Node::shutdown`]).
    pub async fn shutdown(self, grace: Duration) -> usize {
        drop(self.discovery);
        self.node.shutdown(grace).await
    }
}
