//! The call context over real sockets: a three-hop chain A -> B -> C of `#[zmesh::service]`
//! nodes, each calling the next with its context (deadlines shrink hop by hop, one trace
//! id, and dropping A's call cancels C's handler), tcp and ipc; a handler's method name and
//! peer (plain and keyed), for trait and closure handlers; and a deadline that passes
//! cancelling the handler's context.

mod common;

use std::time::Duration;

use common::{NET_TIMEOUT, TRANSPORTS, Transport, bind_endpoint, net};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use zmesh::{
    Call, CallContext, CallError, CallOptions, Client, ClientConfig, HandlerError, MeshKey, Node,
    Service, TraceParent,
};

/// The trace context the test's own call to A carries.
const ROOT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// What one hop saw of its context.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    hop: String,
    /// `ctx.remaining()` as the handler started, in nanoseconds.
    remaining_ns: u64,
    traceparent: String,
}

/// What a handler reports of its call's context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Whoami {
    method: String,
    identity: Vec<u8>,
    endpoint: Option<String>,
    keyed: bool,
}

impl Whoami {
    fn of(ctx: &CallContext) -> Self {
        Self {
            method: ctx.method().to_owned(),
            identity: ctx.peer().identity().to_vec(),
            endpoint: ctx.peer().endpoint().map(str::to_owned),
            keyed: ctx.peer().is_keyed(),
        }
    }
}

/// One hop of a chain: serves, and calls the next hop (if any) with its context.
#[zmesh::service]
trait Hop {
    /// What this hop and every later one saw of its context.
    async fn trace(&self, ctx: &CallContext) -> Result<Vec<Seen>, HandlerError>;
    /// Never answers; the last hop reports its start and its context's cancellation.
    async fn hang(&self, ctx: &CallContext) -> Result<(), HandlerError>;
    /// The method name and peer the context reports.
    async fn whoami(&self, ctx: &zmesh::CallContext) -> Result<Whoami, HandlerError>;
}

/// What the last hop tells the test.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Started,
    /// The context's cancellation fired; `is_cancelled()` then.
    Cancelled(bool),
}

struct Relay {
    name: &'static str,
    next: Option<Client>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Hop for Relay {
    async fn trace(&self, ctx: &CallContext) -> Result<Vec<Seen>, HandlerError> {
        let remaining = ctx
            .remaining()
            .ok_or_else(|| HandlerError::new("NoDeadline", "the caller sent no deadline"))?;
        let traceparent = ctx
            .traceparent()
            .ok_or_else(|| HandlerError::new("NoTrace", "the caller sent no traceparent"))?;
        let mut seen = vec![Seen {
            hop: self.name.to_owned(),
            remaining_ns: u64::try_from(remaining.as_nanos()).expect("fits"),
            traceparent: traceparent.to_string(),
        }];
        if let Some(next) = &self.next {
            seen.extend(HopClient::new(next.with_context(ctx)).trace().await?);
        }
        Ok(seen)
    }

    async fn hang(&self, ctx: &CallContext) -> Result<(), HandlerError> {
        if let Some(next) = &self.next {
            return Ok(HopClient::new(next.with_context(ctx)).hang().await?);
        }
        // The node stops polling a cancelled handler: a task of its own watches the context.
        let watcher = ctx.clone();
        let reports = self.reports.clone();
        tokio::spawn(async move {
            watcher.cancelled().await;
            let _ = reports.send(Report::Cancelled(watcher.is_cancelled()));
        });
        let _ = self.reports.send(Report::Started);
        std::future::pending::<()>().await;
        Ok(())
    }

    async fn whoami(&self, ctx: &CallContext) -> Result<Whoami, HandlerError> {
        Ok(Whoami::of(ctx))
    }
}

async fn start(endpoint: String, service: impl Into<Service>, key: Option<MeshKey>) -> Node {
    let mut builder = Node::builder().bind(endpoint).service(service);
    if let Some(key) = key {
        builder = builder.mesh_key(key);
    }
    net("node start", builder.start())
        .await
        .expect("node starts")
}

/// Nodes A, B and C; A and B call on to the next. The receiver gets C's reports.
async fn chain(
    transport: Transport,
    dir: &tempfile::TempDir,
) -> (Vec<Node>, mpsc::UnboundedReceiver<Report>) {
    let (reports, received) = mpsc::unbounded_channel();
    let mut nodes: Vec<Node> = Vec::new();
    for name in ["c", "b", "a"] {
        let relay = Relay {
            name,
            next: nodes.last().map(|next| Client::new(next.endpoint())),
            reports: reports.clone(),
        };
        let endpoint = bind_endpoint(transport, dir, name);
        nodes.push(start(endpoint, HopServer::new(relay), None).await);
    }
    nodes.reverse();
    (nodes, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_shares_one_trace_its_deadlines_shrink_and_a_cancel_reaches_the_end() {
    let root = TraceParent::parse(ROOT).expect("valid");
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let (nodes, mut reports) = chain(transport, &dir).await;
        let client = Client::new(nodes[0].endpoint());
        let timeout = Duration::from_secs(30);
        let a =
            HopClient::new(&client).with_options(CallOptions::timeout(timeout).traceparent(ROOT));

        let seen = net("the chain's trace", a.trace()).await.expect("traced");
        let hops: Vec<&str> = seen.iter().map(|s| s.hop.as_str()).collect();
        assert_eq!(hops, ["a", "b", "c"], "{transport:?}");
        // Each hop's deadline is the caller's remaining time: never later than the
        // caller's, so what each handler has left shrinks along the chain.
        let remaining: Vec<u64> = seen.iter().map(|s| s.remaining_ns).collect();
        assert!(
            u128::from(remaining[0]) <= timeout.as_nanos(),
            "{transport:?}: {remaining:?}"
        );
        assert!(
            remaining[0] > remaining[1] && remaining[1] > remaining[2],
            "{transport:?}: {remaining:?}"
        );
        // One trace: A sees the test's own context; B and C the same trace id, each
        // under a parent span id of its own.
        let parents: Vec<TraceParent> = seen
            .iter()
            .map(|s| TraceParent::parse(&s.traceparent).expect("valid"))
            .collect();
        assert_eq!(parents[0], root, "{transport:?}");
        for parent in &parents {
            assert_eq!(parent.trace_id(), root.trace_id(), "{transport:?}");
            assert_eq!(parent.flags(), root.flags(), "{transport:?}");
        }
        let spans: std::collections::HashSet<[u8; 8]> =
            parents.iter().map(TraceParent::parent_id).collect();
        assert_eq!(spans.len(), 3, "a new span id per call: {parents:?}");

        // Dropping the call to A cancels B's call to C and C's handler, which its context
        // reports. (Every client in the chain has already heard its peer speak zmesh, so
        // each drop sends a cancel.)
        let hanging = tokio::spawn({
            let client = client.clone();
            async move { HopClient::new(client).hang().await }
        });
        assert_eq!(
            net("C's handler starts", reports.recv()).await,
            Some(Report::Started)
        );
        hanging.abort();
        assert_eq!(
            net("C's context is cancelled", reports.recv()).await,
            Some(Report::Cancelled(true)),
            "{transport:?}"
        );
        for node in nodes {
            net("shutdown", node.shutdown(Duration::from_secs(1))).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_sees_its_method_name_and_peer() {
    let (reports, _received) = mpsc::unbounded_channel();
    let relay = || Relay {
        name: "only",
        next: None,
        reports: reports.clone(),
    };
    // A closure handler whose first parameter is the context gets it the same way.
    let dynamic = Service::new("dyn")
        .method("who", |ctx: CallContext, n: u32| async move {
            Ok((Whoami::of(&ctx), n))
        })
        .into_service();
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = net(
            "node start",
            Node::builder()
                .bind(bind_endpoint(transport, &dir, "node"))
                .service(HopServer::new(relay()))
                .service(dynamic.clone())
                .start(),
        )
        .await
        .expect("node starts");
        let client = Client::new(node.endpoint());
        let seen = net("whoami", HopClient::new(&client).whoami())
            .await
            .expect("answered");
        assert_eq!(seen.method, "hop.whoami");
        assert_eq!(
            seen.endpoint.as_deref(),
            Some(node.endpoint()),
            "{transport:?}"
        );
        assert!(!seen.keyed);
        assert!(
            !seen.identity.is_empty(),
            "the connection's routing identity"
        );
        let (closure, n): (Whoami, u32) = net("dyn.who", client.call("dyn.who", (7u32,)))
            .await
            .expect("answered");
        assert_eq!(n, 7);
        assert_eq!(closure.method, "dyn.who");
        assert_eq!(
            closure.identity, seen.identity,
            "one client connection, one identity"
        );
        net("shutdown", node.shutdown(Duration::from_secs(1))).await;
    }

    // A keyed call says so.
    let key = MeshKey::from_secret("call context key, 32 bytes long!").expect("long enough");
    let node = start(
        "tcp://127.0.0.1:0".into(),
        HopServer::new(relay()),
        Some(key.clone()),
    )
    .await;
    let client = Client::with_config(node.endpoint(), ClientConfig::default().mesh_key(key));
    let seen = net("keyed whoami", HopClient::new(&client).whoami())
        .await
        .expect("answered");
    assert!(seen.keyed);
    assert_eq!(seen.endpoint.as_deref(), Some(node.endpoint()));
    net("shutdown", node.shutdown(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_cancels_the_handlers_context() {
    let (reports, mut received) = mpsc::unbounded_channel();
    let relay = Relay {
        name: "only",
        next: None,
        reports,
    };
    let node = start("tcp://127.0.0.1:0".into(), HopServer::new(relay), None).await;
    let client = Client::new(node.endpoint());
    let deadline = Duration::from_millis(300);
    let hop = HopClient::new(&client).with_options(CallOptions::timeout(deadline));
    let (result, started) = net("a call past its deadline", async {
        tokio::join!(hop.hang(), received.recv())
    })
    .await;
    assert_eq!(started, Some(Report::Started));
    assert!(
        matches!(result, Err(CallError::DeadlineExceeded(d)) if d == deadline),
        "{result:?}"
    );
    assert_eq!(
        net("the handler's context is cancelled", received.recv()).await,
        Some(Report::Cancelled(true))
    );
    net("shutdown", node.shutdown(NET_TIMEOUT)).await;
}
