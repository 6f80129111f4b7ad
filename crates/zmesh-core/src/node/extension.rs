//! Provides the hook through which a component plugs into a node without the node knowing
//! it: the builder keeps one [`Extension`] of each type, starts each when the node starts
//! (before anything is bound, so the services it hosts join the method table), and keeps
//! what it returns, an [`Attachment`], until the node shuts down. Events on a node
//! (`events/node.rs`) plug in this way.

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;

use crate::service::Service;

/// Why an extension could not start.
pub type ExtensionError = Box<dyn std::error::Error + Send + Sync>;

/// What a node tells its extensions when it starts.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct NodeContext<'a> {
    /// The node's [`NodeConfig::max_concurrent_calls`](super::NodeConfig::max_concurrent_calls),
    /// for extensions that run work of their own bounded like calls.
    pub max_concurrent_calls: usize,
    /// The node's mesh key, if it has one.
    pub mesh_key: Option<&'a crate::trust::MeshKey>,
}

/// A component a [`NodeBuilder`](super::NodeBuilder) starts with the node: its settings,
/// gathered through [`NodeBuilder::extension_mut`](super::NodeBuilder::extension_mut).
pub trait Extension: Any + Send + std::fmt::Debug {
    /// The component's name, which prefixes its start errors
    /// ([`NodeError::Extension`](super::NodeError::Extension)).
    fn name(&self) -> &'static str;

    /// Starts the component, called by `NodeBuilder::start` once the node's settings are
    /// validated and before it binds.
    ///
    /// # Errors
    /// Why it cannot start; the node then does not start either.
    fn start<'a>(
        self: Box<Self>,
        node: NodeContext<'a>,
    ) -> BoxFuture<'a, Result<Attached, ExtensionError>>;
}

/// What a started extension hands the node.
#[derive(Debug)]
pub struct Attached {
    /// Kept by the node until it shuts down; found with
    /// [`Node::attachment`](super::Node::attachment).
    pub running: Box<dyn Attachment>,
    /// Services the node hosts for it, beside its own.
    pub services: Vec<Service>,
}

/// The running part of an extension, owned by its node.
pub trait Attachment: Any + Send + Sync + std::fmt::Debug {
    /// Called first by [`Node::shutdown`](super::Node::shutdown), before the node drains
    /// its calls. Dropping the node without it drops the attachment.
    fn shutdown(&mut self) -> BoxFuture<'_, ()>;

    /// The component's figures for the node's `/metrics`
    /// ([`Node::metrics`](super::Node::metrics)), encoded at each scrape after the node's
    /// own; `None` (the default) adds nothing. Names are prefixed `zmesh_` and the
    /// component's name (`zmesh_jobs_`, `zmesh_events_`).
    fn metrics(&self) -> Option<Arc<dyn crate::metrics::Collector>> {
        None
    }
}
