//! Provides events on a [`Node`]: the builder settings (`events`, `last_value_cache`,
//! `subscribe`, `on_event`, `on_gap`), the `_zmesh.snapshot` service, and the task that runs
//! event handlers concurrently, each on its own task, bounded like RPC calls. They plug into
//! the node as its [`Extension`] `NodeEvents`, whose [`Attachment`] is `RunningEvents`.

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use zmesh_proto::ErrorKind;

use super::subscriber::{Core, Item, RawEvent};
use super::{
    EventsError, Gap, Publisher, Received, SubscriberBuilder, SubscriberConfig, SubscriberStats,
};
use crate::node::{
    Attached, Attachment, Extension, ExtensionError, Node, NodeBuilder, NodeContext,
};
use crate::service::{HandlerError, Service};

/// A type-erased event handler: `None` when the payload does not decode.
type EventHandler = Arc<dyn Fn(&RawEvent) -> Option<BoxFuture<'static, ()>> + Send + Sync>;
/// A gap callback.
type GapHandler = Arc<dyn Fn(&Gap) + Send + Sync>;

/// What a node builder collected about events.
#[derive(Default)]
struct NodeEvents {
    publish: Vec<String>,
    /// A publisher started before the node (see `NodeBuilder::publisher`).
    existing: Option<Publisher>,
    last_value_cache: bool,
    subscribe: Vec<String>,
    handlers: Vec<(String, EventHandler)>,
    gap_handlers: Vec<GapHandler>,
    subscriber_config: SubscriberConfig,
}

impl std::fmt::Debug for NodeEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEvents")
            .field("publish", &self.publish)
            .field("existing", &self.existing)
            .field("last_value_cache", &self.last_value_cache)
            .field("subscribe", &self.subscribe)
            .field(
                "handlers",
                &self.handlers.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl NodeBuilder {
    /// Binds a PUB socket on `endpoint` (call again for more) and serves
    /// `_zmesh.snapshot`; publish with [`Node::publisher`].
    pub fn events(mut self, endpoint: impl Into<String>) -> Self {
        self.extension_mut::<NodeEvents>()
            .publish
            .push(endpoint.into());
        self
    }

    /// Publishes through `publisher`, started beforehand, instead of binding a new one, and
    /// serves `_zmesh.snapshot` for it. This lets a service built before the node hold a
    /// clone of the node's publisher (so its handlers can publish from their first call).
    /// Cannot be combined with [`events`](Self::events); the publisher's own
    /// last-value-cache setting applies.
    pub fn publisher(mut self, publisher: Publisher) -> Self {
        self.extension_mut::<NodeEvents>().existing = Some(publisher);
        self
    }

    /// Keeps the last payload of every topic for snapshots (default off).
    pub fn last_value_cache(mut self, on: bool) -> Self {
        self.extension_mut::<NodeEvents>().last_value_cache = on;
        self
    }

    /// Connects to a publisher's endpoint for the [`on_event`](Self::on_event) handlers
    /// (call again for more publishers).
    pub fn subscribe(mut self, endpoint: impl Into<String>) -> Self {
        self.extension_mut::<NodeEvents>()
            .subscribe
            .push(endpoint.into());
        self
    }

    /// Runs `handler` for every event whose topic starts with `prefix`, from every
    /// subscribed publisher. Handlers run concurrently, each event on its own task (at most
    /// `NodeConfig::max_concurrent_calls` at once; beyond that, events queue and then drop,
    /// reported as gaps). A payload that does not decode as `T` is counted and logged.
    pub fn on_event<T, F, Fut>(mut self, prefix: impl Into<String>, handler: F) -> Self
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Received<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let erased: EventHandler = Arc::new(move |raw: &RawEvent| match raw.decode::<T>() {
            Ok(event) => Some(handler(event).boxed()),
            Err(e) => {
                tracing::warn!(
                    endpoint = %raw.endpoint, topic = %raw.topic, error = %e,
                    "event payload does not decode for its handler; dropped"
                );
                None
            }
        });
        self.extension_mut::<NodeEvents>()
            .handlers
            .push((prefix.into(), erased));
        self
    }

    /// Calls `handler` for every gap report of the subscribed publishers (gaps are also
    /// logged and counted in [`Node::event_stats`]).
    pub fn on_gap(mut self, handler: impl Fn(&Gap) + Send + Sync + 'static) -> Self {
        self.extension_mut::<NodeEvents>()
            .gap_handlers
            .push(Arc::new(handler));
        self
    }

    /// Sets the configuration of the node's subscriber.
    pub fn subscriber_config(mut self, config: SubscriberConfig) -> Self {
        self.extension_mut::<NodeEvents>().subscriber_config = config;
        self
    }
}

/// A node's running events: its publisher and its handler dispatcher.
#[derive(Debug, Default)]
struct RunningEvents {
    publisher: Option<Publisher>,
    subscriber: Option<Arc<super::subscriber::Shared>>,
    dispatcher: Option<JoinHandle<()>>,
}

impl NodeEvents {
    /// Binds the publisher and connects the subscriber. Returns the running parts and the
    /// snapshot service to host.
    async fn launch(
        mut self,
        max_concurrent: usize,
        mesh_key: Option<&crate::trust::MeshKey>,
    ) -> Result<(RunningEvents, Option<Service>), EventsError> {
        // A keyed node's events are sealed both ways with its key.
        if let Some(key) = mesh_key {
            self.subscriber_config.mesh_key = Some(key.clone());
        }
        let mut running = RunningEvents::default();
        let mut service = None;
        if let Some(publisher) = self.existing {
            if !self.publish.is_empty() {
                return Err(EventsError::PublisherTwice);
            }
            service = Some(snapshot_service(publisher.clone()));
            running.publisher = Some(publisher);
        } else if !self.publish.is_empty() {
            let mut builder = Publisher::builder().last_value_cache(self.last_value_cache);
            if let Some(key) = mesh_key {
                builder = builder.mesh_key(key.clone());
            }
            for endpoint in self.publish {
                builder = builder.bind(endpoint);
            }
            let publisher = builder.start().await?;
            service = Some(snapshot_service(publisher.clone()));
            running.publisher = Some(publisher);
        }
        if !self.subscribe.is_empty() || !self.handlers.is_empty() {
            let mut builder = SubscriberBuilder::default().config(self.subscriber_config);
            for endpoint in self.subscribe {
                builder = builder.connect(endpoint);
            }
            let mut prefixes: Vec<&String> = self.handlers.iter().map(|(p, _)| p).collect();
            prefixes.sort();
            prefixes.dedup();
            for prefix in prefixes {
                builder = builder.subscribe(prefix.clone());
            }
            let core = builder.start_core().await?;
            running.subscriber = Some(core.shared.clone());
            running.dispatcher = Some(tokio::spawn(dispatch(
                core,
                self.handlers.into(),
                self.gap_handlers.into(),
                Arc::new(Semaphore::new(max_concurrent)),
            )));
        }
        Ok((running, service))
    }
}

impl Extension for NodeEvents {
    fn name(&self) -> &'static str {
        "events"
    }

    fn start<'a>(
        self: Box<Self>,
        node: NodeContext<'a>,
    ) -> BoxFuture<'a, Result<Attached, ExtensionError>> {
        Box::pin(async move {
            let (running, service) = self
                .launch(node.max_concurrent_calls, node.mesh_key)
                .await?;
            Ok(Attached {
                running: Box::new(running),
                services: service.into_iter().collect(),
            })
        })
    }
}

impl Attachment for RunningEvents {
    fn shutdown(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop())
    }

    fn metrics(&self) -> Option<Arc<dyn crate::metrics::Collector>> {
        Some(Arc::new(super::metrics::EventsFigures {
            publisher: self.publisher.clone(),
            subscriber: self.subscriber.clone(),
        }))
    }
}

impl RunningEvents {
    /// Stops the handlers' dispatcher and closes the publisher.
    async fn stop(&mut self) {
        if let Some(task) = self.dispatcher.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(publisher) = &self.publisher {
            publisher.close().await;
        }
    }
}

impl Drop for RunningEvents {
    fn drop(&mut self) {
        if let Some(task) = &self.dispatcher {
            task.abort();
        }
    }
}

impl Node {
    /// The node's publisher, when it was built with [`NodeBuilder::events`].
    pub fn publisher(&self) -> Option<&Publisher> {
        self.attachment::<RunningEvents>()?.publisher.as_ref()
    }

    /// The endpoint the node publishes on, when it has events.
    pub fn events_endpoint(&self) -> Option<&str> {
        self.publisher().map(Publisher::endpoint)
    }

    /// The counters of the node's subscriber, when it has event handlers.
    pub fn event_stats(&self) -> Option<SubscriberStats> {
        self.attachment::<RunningEvents>()?
            .subscriber
            .as_ref()
            .map(|s| s.stats())
    }
}

/// `_zmesh.snapshot(prefix, marker_topic, token)`.
fn snapshot_service(publisher: Publisher) -> Service {
    Service::new(crate::reserved::ZMESH_SERVICE)
        .method(
            crate::reserved::SNAPSHOT_IN_SERVICE,
            move |prefix: String, marker_topic: String, token: String| {
                let publisher = publisher.clone();
                async move {
                    publisher
                        .sync_snapshot(&prefix, &marker_topic, &token)
                        .await
                        .map_err(|e| {
                            HandlerError::new(ErrorKind::SnapshotError.as_str(), e.to_string())
                        })
                }
            },
        )
        .into_service()
}

/// Runs every matching handler of every event on its own task, bounded by `slots`.
async fn dispatch(
    mut core: Core,
    handlers: Arc<[(String, EventHandler)]>,
    gap_handlers: Arc<[GapHandler]>,
    slots: Arc<Semaphore>,
) {
    while let Some(item) = core.rx.recv().await {
        match item {
            Item::Event(raw) => {
                for (prefix, handler) in handlers.iter() {
                    if !raw.topic.starts_with(prefix.as_str()) {
                        continue;
                    }
                    let Some(run) = handler(&raw) else {
                        core.shared.count_undecodable();
                        continue;
                    };
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    tokio::spawn(async move {
                        run.await;
                        drop(permit);
                    });
                }
            }
            Item::Gap(gap) => {
                for handler in gap_handlers.iter() {
                    handler(&gap);
                }
            }
        }
    }
}
