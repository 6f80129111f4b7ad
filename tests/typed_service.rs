//! `#[zmesh::service]` over real sockets: a trait served by its generated server and called
//! by its generated client, over tcp and ipc, directly and through the proxy device, with a
//! stream, a remote error, a deadline and the metadata `zmesh list` reads; and the generated
//! client over every kind of `Call` (`Client`, `&Client`, `Arc<Client>`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TRANSPORTS, Transport, bind_endpoint, net, start_node};
use futures::StreamExt;
use rmpv::Value;
use zmesh::device::Device;
use zmesh::{CallError, CallOptions, Client, HandlerError, ItemStream, Node, NodeConfig, Service};

/// An inventory: a few methods of every shape the macro supports.
#[zmesh::service]
trait Inventory {
    /// How many of `item` are in stock.
    #[zmesh(idempotent)]
    async fn stock(&self, item: String) -> Result<u64, HandlerError>;
    /// Adds `count` of `item`; returns the new stock.
    async fn add(&self, item: String, count: u64) -> Result<u64, HandlerError>;
    /// The number of calls served so far.
    async fn calls(&self) -> Result<u64, HandlerError>;
    /// Streams the stock level, `times` times.
    #[zmesh(stream)]
    async fn watch(&self, item: String, times: u32) -> Result<ItemStream<u64>, HandlerError>;
    /// Always fails with `OutOfStock`.
    async fn take(&self, item: String) -> Result<u64, HandlerError>;
    /// Sleeps `ms`, then returns it (for deadlines).
    async fn slow(&self, ms: u64) -> Result<u64, HandlerError>;
}

#[derive(Default)]
struct Shelf {
    stock: AtomicU64,
    calls: AtomicU64,
}

impl Shelf {
    fn served(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

impl Inventory for Shelf {
    async fn stock(&self, _item: String) -> Result<u64, HandlerError> {
        self.served();
        Ok(self.stock.load(Ordering::Relaxed))
    }

    async fn add(&self, _item: String, count: u64) -> Result<u64, HandlerError> {
        self.served();
        Ok(self.stock.fetch_add(count, Ordering::Relaxed) + count)
    }

    async fn calls(&self) -> Result<u64, HandlerError> {
        Ok(self.calls.load(Ordering::Relaxed))
    }

    async fn watch(&self, _item: String, times: u32) -> Result<ItemStream<u64>, HandlerError> {
        self.served();
        let level = self.stock.load(Ordering::Relaxed);
        Ok(futures::stream::iter((0..times).map(move |_| Ok(level))).boxed())
    }

    async fn take(&self, item: String) -> Result<u64, HandlerError> {
        self.served();
        Err(HandlerError::new("OutOfStock", format!("no {item} left")))
    }

    async fn slow(&self, ms: u64) -> Result<u64, HandlerError> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(ms)
    }
}

/// A service whose name is given, and a method named with a raw identifier.
#[zmesh::service(name = "clock")]
trait Timekeeper {
    /// The answer.
    async fn r#type(&self) -> Result<String, HandlerError>;
}

struct Fixed;

impl Timekeeper for Fixed {
    async fn r#type(&self) -> Result<String, HandlerError> {
        Ok("fixed".into())
    }
}

/// A tcp node serving a fresh [`Shelf`] (beside the echo service the common helper adds).
async fn inventory_node() -> (Node, tempfile::TempDir) {
    let inventory = InventoryServer::new(Shelf::default()).into();
    start_node(Transport::Tcp, NodeConfig::default(), vec![inventory]).await
}

/// Every typed call shape against one endpoint.
async fn exercise(inventory: &InventoryClient<impl zmesh::Call>) {
    assert_eq!(
        net("add", inventory.add("bolt".into(), 5))
            .await
            .expect("add"),
        5
    );
    assert_eq!(
        net("add", inventory.add("bolt".into(), 2))
            .await
            .expect("add"),
        7
    );
    assert_eq!(
        net("stock", inventory.stock("bolt".into()))
            .await
            .expect("stock"),
        7
    );
    let levels: Vec<u64> = net("watch", async {
        inventory
            .watch("bolt".into(), 3)
            .await
            .expect("watch opens")
            .map(|item| item.expect("an item"))
            .collect()
            .await
    })
    .await;
    assert_eq!(levels, [7, 7, 7]);
    match net("take", inventory.take("bolt".into())).await {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.name, "OutOfStock");
            assert_eq!(e.message, "no bolt left");
        }
        other => panic!("take should fail remotely, got {other:?}"),
    }
    // Every served call above went through the one shared implementation.
    assert_eq!(net("calls", inventory.calls()).await.expect("calls"), 5);
}

#[tokio::test]
async fn typed_calls_over_tcp_and_ipc() {
    for transport in TRANSPORTS {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = net(
            "node start",
            Node::builder()
                .bind(bind_endpoint(transport, &dir, "inventory"))
                .service(InventoryServer::new(Shelf::default()))
                .service(TimekeeperServer::new(Fixed))
                .start(),
        )
        .await
        .expect("node starts");
        let client = Client::new(node.endpoint());
        exercise(&InventoryClient::new(&client)).await;
        let clock = TimekeeperClient::new(Arc::new(client.clone()));
        assert_eq!(net("type", clock.r#type()).await.expect("type"), "fixed");
        assert_eq!(TimekeeperClient::<Client>::SERVICE, "clock");
        assert_eq!(InventoryClient::<Client>::SERVICE, "inventory");
        // On the wire the names are the usual `service.method`, positional args.
        let raw: u64 = net("raw call", client.call("inventory.stock", ("bolt",)))
            .await
            .expect("raw call");
        assert_eq!(raw, 7, "{transport:?}");
        node.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_run_in_spawned_tasks() {
    let (node, _dir) = inventory_node().await;
    let inventory = InventoryClient::new(Client::new(node.endpoint()));
    let tasks: Vec<_> = (1..=4)
        .map(|n| {
            let inventory = inventory.clone();
            tokio::spawn(async move { inventory.add("nut".into(), n).await })
        })
        .collect();
    for task in tasks {
        net("a spawned call", task)
            .await
            .expect("the task ran")
            .expect("the call succeeded");
    }
    assert_eq!(
        net("stock", inventory.stock("nut".into()))
            .await
            .expect("stock"),
        10
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_deadline_of_with_options_applies_to_every_call() {
    let (node, _dir) = inventory_node().await;
    let inventory = InventoryClient::new(Client::new(node.endpoint()))
        .with_options(CallOptions::timeout(Duration::from_millis(200)));
    assert_eq!(net("fast", inventory.slow(0)).await.expect("fast call"), 0);
    match net("slow", inventory.slow(5_000)).await {
        Err(CallError::DeadlineExceeded(limit)) => {
            assert_eq!(limit, Duration::from_millis(200));
        }
        other => panic!("the call should pass its deadline, got {other:?}"),
    }
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_server_registers_docs_argument_names_and_markers() {
    let service: Service = InventoryServer::new(Shelf::default()).into();
    assert_eq!(service.name(), "inventory");
    let idempotent: Vec<&str> = service.idempotent_methods().collect();
    assert_eq!(idempotent, ["stock"]);
    let node = net(
        "node start",
        Node::builder()
            .bind("tcp://127.0.0.1:0")
            .service(service)
            .start(),
    )
    .await
    .expect("node starts");
    let client = Client::new(node.endpoint());
    // What `zmesh list` reads: `_zerorpc_inspect`'s methods, each with its args and doc.
    let inspect: Value = net("inspect", client.call("_zerorpc_inspect", ()))
        .await
        .expect("inspect");
    let methods = field(&inspect, "methods");
    let add = field(methods, "inventory.add");
    assert_eq!(
        field(add, "doc").as_str(),
        Some("Adds `count` of `item`; returns the new stock.")
    );
    let args: Vec<&str> = field(add, "args")
        .as_array()
        .expect("args")
        .iter()
        .map(|a| field(a, "name").as_str().expect("a name"))
        .collect();
    assert_eq!(args, ["item", "count"]);
    let calls = field(methods, "inventory.calls");
    assert_eq!(
        field(calls, "args").as_array().map(Vec::len),
        Some(0),
        "a method without parameters lists none: {calls}"
    );
    node.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn typed_calls_through_the_proxy_device() {
    let device = net(
        "device start",
        Device::builder()
            .frontend("tcp://127.0.0.1:0")
            .backend("tcp://127.0.0.1:0")
            .start(),
    )
    .await
    .expect("device starts");
    let worker = net(
        "worker start",
        Node::builder()
            .worker_of(device.backend())
            .service(InventoryServer::new(Shelf::default()))
            .start(),
    )
    .await
    .expect("worker starts");
    net(
        "the worker registers",
        device.wait_for_workers("inventory", 1, Duration::from_secs(10)),
    )
    .await
    .expect("the worker registers");
    exercise(&InventoryClient::new(Client::new(device.frontend()))).await;
    worker.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
}

/// `value[key]` of a msgpack map, failing the test when it is missing.
fn field<'a>(value: &'a Value, key: &str) -> &'a Value {
    value
        .as_map()
        .and_then(|map| map.iter().find(|(k, _)| k.as_str() == Some(key)))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key:?} in {value}"))
}
