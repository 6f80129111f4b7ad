//! Builds services method by method without the macro: a [`MethodBuilder`] sets the doc,
//! argument names and markers of the method just registered (so its name is written once),
//! and a [`StatefulService`] hands its handlers one shared [`State`].

use super::Service;
use super::handler::{self, ErasedHandler, Handler, State, StreamHandler};

/// Where a [`MethodBuilder`] registers methods: a [`Service`], or a [`StatefulService`]
/// whose handlers may take its state. Sealed: its methods are the builder's plumbing.
pub trait Registry: sealed::Sealed + Into<Service> {
    /// What the handlers registered here are handed: `()`, or the [`State`].
    #[doc(hidden)]
    type State: Send + Sync + 'static;
    #[doc(hidden)]
    fn service_mut(&mut self) -> &mut Service;
    #[doc(hidden)]
    fn state(&self) -> Self::State;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Service {}
    impl<S> Sealed for super::StatefulService<S> {}
}

impl Registry for Service {
    type State = ();

    fn service_mut(&mut self) -> &mut Service {
        self
    }

    fn state(&self) {}
}

/// A [`Service`] under construction whose handlers share a state, from
/// [`Service::with_state`]. Converts into the `Service` wherever one is taken.
#[derive(Debug)]
pub struct StatefulService<S> {
    service: Service,
    state: State<S>,
}

impl<S: Send + Sync + 'static> StatefulService<S> {
    pub(super) fn new(service: Service, state: State<S>) -> Self {
        Self { service, state }
    }

    /// Registers a request-reply method, which may take the [`State<S>`](State) first.
    pub fn method<Args, H: Handler<Args, State<S>>>(
        self,
        name: impl Into<String>,
        handler: H,
    ) -> MethodBuilder<Self> {
        let erased = handler::erase(handler, self.state.clone());
        MethodBuilder::register(self, name.into(), erased, false)
    }

    /// Registers a streaming method, which may take the [`State<S>`](State) first.
    pub fn stream<Args, H: StreamHandler<Args, State<S>>>(
        self,
        name: impl Into<String>,
        handler: H,
    ) -> MethodBuilder<Self> {
        let erased = handler::erase_stream(handler, self.state.clone());
        MethodBuilder::register(self, name.into(), erased, true)
    }

    /// The service, its handlers holding the state.
    pub fn into_service(self) -> Service {
        self.service
    }
}

impl<S> From<StatefulService<S>> for Service {
    fn from(stateful: StatefulService<S>) -> Self {
        stateful.service
    }
}

impl<S: Send + Sync + 'static> Registry for StatefulService<S> {
    type State = State<S>;

    fn service_mut(&mut self) -> &mut Service {
        &mut self.service
    }

    fn state(&self) -> State<S> {
        self.state.clone()
    }
}

/// The method just registered, whose doc, argument names and markers chain here; the next
/// `.method(..)` or `.stream(..)` registers another on the same service. Converts into the
/// [`Service`] wherever one is taken (or call [`MethodBuilder::into_service`]).
#[derive(Debug)]
#[must_use = "a method builder holds the service: register more methods or convert it into the Service"]
pub struct MethodBuilder<R> {
    registry: R,
    name: String,
}

impl<R: Registry> MethodBuilder<R> {
    pub(super) fn register(
        mut registry: R,
        name: String,
        handler: ErasedHandler,
        streaming: bool,
    ) -> Self {
        registry
            .service_mut()
            .insert(name.clone(), handler, streaming);
        Self { registry, name }
    }

    /// Sets this method's documentation (answered by `_zerorpc_help` and
    /// `_zerorpc_inspect`, shown by `zmesh list`).
    pub fn doc(mut self, doc: impl Into<String>) -> Self {
        self.with_method(|m| m.doc = Some(doc.into()));
        self
    }

    /// Sets this method's parameter names (answered by `_zerorpc_inspect`).
    pub fn arg_names<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names = names.into_iter().map(Into::into).collect();
        self.with_method(|m| m.arg_names = Some(names));
        self
    }

    /// Marks this method idempotent: running it twice has the same effect as running it
    /// once. A mesh caller ([`MeshClient`](crate::MeshClient)) may then retry it on another
    /// peer when its peer is lost, or hedge it (nodes advertise the mark in their beacons and
    /// gossip), and behind a proxy device a call whose worker is lost before any reply is run
    /// again on another worker instead of failing with `PeerLost`. Methods not marked are
    /// never sent to a second peer once they may have run.
    pub fn idempotent(mut self) -> Self {
        self.with_method(|m| m.idempotent = true);
        self
    }

    /// Registers the next request-reply method on the same service.
    pub fn method<Args, H: Handler<Args, R::State>>(
        self,
        name: impl Into<String>,
        handler: H,
    ) -> Self {
        let erased = handler::erase(handler, self.registry.state());
        Self::register(self.registry, name.into(), erased, false)
    }

    /// Registers the next streaming method on the same service.
    pub fn stream<Args, H: StreamHandler<Args, R::State>>(
        self,
        name: impl Into<String>,
        handler: H,
    ) -> Self {
        let erased = handler::erase_stream(handler, self.registry.state());
        Self::register(self.registry, name.into(), erased, true)
    }

    /// The service with every method registered so far.
    pub fn into_service(self) -> Service {
        self.registry.into()
    }

    fn with_method(&mut self, set: impl FnOnce(&mut super::Method)) {
        // The method was inserted under this name when the builder was made, and nothing
        // else holds the service meanwhile.
        if let Some(method) = self.registry.service_mut().methods.get_mut(&self.name) {
            set(method);
        }
    }
}

impl<R: Registry> From<MethodBuilder<R>> for Service {
    fn from(builder: MethodBuilder<R>) -> Self {
        builder.into_service()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use bytes::Bytes;
    use futures::StreamExt;

    use super::super::{HandlerError, Reply, Service, State, UnknownMethod};
    use crate::context::CallContext;

    /// An empty args array (`()` would encode as nil).
    const NO_ARGS: [u8; 0] = [];

    async fn call(svc: &Service, method: &str, args: impl serde::Serialize) -> rmpv::Value {
        let m = svc.methods.get(method).expect("registered");
        let args = Bytes::from(rmp_serde::to_vec(&args).expect("encodes"));
        match (m.handler)(CallContext::local(format!("t.{method}")), args).await {
            Ok(Reply::Value(bytes)) => rmpv::decode::read_value(&mut &bytes[..]).expect("valid"),
            Ok(Reply::Stream(items)) => {
                let items: Vec<rmpv::Value> = items
                    .map(|item| {
                        let bytes = item.expect("an item");
                        rmpv::decode::read_value(&mut &bytes[..]).expect("valid")
                    })
                    .collect()
                    .await;
                rmpv::Value::Array(items)
            }
            Err(e) => panic!("{method} failed: {e}"),
        }
    }

    /// Doc, names and the marker land on the method registered just before them, and
    /// never on its neighbours.
    #[test]
    fn doc_names_and_marker_chain_onto_the_method_just_registered() {
        let svc: Service = Service::new("t")
            .method("a", |x: u32| async move { Ok(x) })
            .doc("A doc.")
            .arg_names(["x"])
            .idempotent()
            .method("b", || async { Ok(()) })
            .doc("B doc.")
            .stream("c", |n: u64| async move {
                Ok(futures::stream::iter((0..n).map(Ok)))
            })
            .arg_names(["n"])
            .into();
        let a = &svc.methods["a"];
        assert_eq!(a.doc.as_deref(), Some("A doc."));
        assert_eq!(a.arg_names.as_deref(), Some(&["x".to_owned()][..]));
        assert!(a.idempotent && !a.streaming);
        let b = &svc.methods["b"];
        assert_eq!(
            (b.doc.as_deref(), b.arg_names.as_ref()),
            (Some("B doc."), None)
        );
        assert!(!b.idempotent);
        let c = &svc.methods["c"];
        assert!(c.streaming && c.doc.is_none());
        assert_eq!(c.arg_names.as_deref(), Some(&["n".to_owned()][..]));
        assert_eq!(svc.idempotent_methods().collect::<Vec<_>>(), ["a"]);
    }

    /// Registering a name again replaces its handler and keeps what was set on it.
    #[tokio::test]
    async fn registering_again_keeps_doc_and_marker() {
        let svc: Service = Service::new("t")
            .method("v", || async { Ok(1) })
            .doc("Version.")
            .idempotent()
            .method("v", || async { Ok(2) })
            .into();
        assert_eq!(call(&svc, "v", NO_ARGS).await, rmpv::Value::from(2));
        assert_eq!(svc.methods["v"].doc.as_deref(), Some("Version."));
        assert!(svc.is_idempotent("v"));
    }

    /// One state, shared by every method and every call, handed to handlers that ask for
    /// it first (before the context when they take that too); handlers that do not ask
    /// for it live on the same service.
    #[tokio::test]
    async fn handlers_share_one_state() {
        let shared = Arc::new(AtomicU64::new(0));
        let svc: Service = Service::new("t")
            .with_shared_state(Arc::clone(&shared))
            .method("add", |n: State<AtomicU64>, by: u64| async move {
                Ok(n.fetch_add(by, Ordering::Relaxed) + by)
            })
            .arg_names(["by"])
            .method("who", |n: State<AtomicU64>, ctx: CallContext| async move {
                Ok(format!("{} {}", ctx.method(), n.load(Ordering::Relaxed)))
            })
            .method("plain", |x: String| async move { Ok(x) })
            .stream(
                "count",
                |n: State<AtomicU64>, _ctx: CallContext, k: u64| async move {
                    let start = n.load(Ordering::Relaxed);
                    Ok(futures::stream::iter((start..start + k).map(Ok)))
                },
            )
            .into();
        assert_eq!(call(&svc, "add", (2,)).await, rmpv::Value::from(2));
        assert_eq!(call(&svc, "add", (3,)).await, rmpv::Value::from(5));
        assert_eq!(
            shared.load(Ordering::Relaxed),
            5,
            "the caller's handle sees it"
        );
        assert_eq!(
            call(&svc, "who", NO_ARGS).await,
            rmpv::Value::from("t.who 5")
        );
        assert_eq!(call(&svc, "plain", ("x",)).await, rmpv::Value::from("x"));
        assert_eq!(
            call(&svc, "count", (2,)).await,
            rmpv::Value::Array(vec![5.into(), 6.into()])
        );
    }

    /// `?` converts any std error, and the state is no wire argument: arity counts only
    /// what the caller sends.
    #[tokio::test]
    async fn stateful_handlers_decode_only_wire_arguments() {
        let svc: Service = Service::new("t")
            .with_state(10u64)
            .method("parse", |base: State<u64>, text: String| async move {
                Ok(*base + text.parse::<u64>()?)
            })
            .into();
        assert_eq!(call(&svc, "parse", ("5",)).await, rmpv::Value::from(15));
        let m = &svc.methods["parse"];
        let args = Bytes::from(rmp_serde::to_vec(&("x", 1)).expect("encodes"));
        let err = match (m.handler)(CallContext::local("t.parse".to_owned()), args).await {
            Err(e) => e,
            Ok(_) => panic!("two arguments for one"),
        };
        assert_eq!(
            err.message(),
            "takes 1 positional argument but 2 were given"
        );
        let args = Bytes::from(rmp_serde::to_vec(&("x",)).expect("encodes"));
        let err: HandlerError =
            match (m.handler)(CallContext::local("t.parse".to_owned()), args).await {
                Err(e) => e,
                Ok(_) => panic!("not a number"),
            };
        assert_eq!(err.name(), HandlerError::DEFAULT_NAME);
    }

    /// Marking a service built elsewhere names its methods; a typo is an error and marks
    /// nothing.
    #[test]
    fn marking_an_unknown_method_is_an_error() {
        let mut svc: Service = Service::new("t")
            .method("a", || async { Ok(()) })
            .method("b", || async { Ok(()) })
            .into();
        assert_eq!(
            svc.mark_idempotent(["a", "c"]),
            Err(UnknownMethod {
                service: "t".into(),
                method: "c".into()
            })
        );
        assert_eq!(svc.idempotent_methods().count(), 0, "nothing marked");
        svc.mark_idempotent(["a", "b"]).expect("both exist");
        assert_eq!(svc.idempotent_methods().collect::<Vec<_>>(), ["a", "b"]);
    }
}
