//! Through the proxy device, a worker's server span (`zmesh.call`) names its immediate
//! peer as the OpenTelemetry conventions have it: the device, at the backend endpoint the
//! worker connected to (`network.peer.address`/`port`, the same as `server.*`), not the
//! client behind it.

#[path = "../crates/zmesh-core/tests/support/spans.rs"]
mod spans;

use std::time::Duration;

use zmesh::device::Device;
use zmesh::{Client, Node, Service};

use spans::{NET_TIMEOUT, capture, field};

#[tokio::test]
async fn a_workers_server_span_names_the_device_as_its_peer() {
    let (spans, _guard) = capture();
    let device = tokio::time::timeout(
        NET_TIMEOUT,
        Device::builder()
            .name("greeter")
            .frontend("tcp://127.0.0.1:0")
            .backend("tcp://127.0.0.1:0")
            .start(),
    )
    .await
    .expect("in time")
    .expect("device starts");
    let backend_port: u16 = device
        .backend()
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .expect("a tcp port");
    let worker = tokio::time::timeout(
        NET_TIMEOUT,
        Node::builder()
            .worker_of(device.backend())
            .service(
                Service::new("greeter").method("hello", |name: String| async move {
                    Ok(format!("hi {name}"))
                }),
            )
            .start(),
    )
    .await
    .expect("in time")
    .expect("worker starts");
    device
        .wait_for_workers("greeter", 1, NET_TIMEOUT)
        .await
        .expect("the worker registers");

    let client = Client::new(device.frontend());
    let reply: String = tokio::time::timeout(NET_TIMEOUT, client.call("greeter.hello", ("ann",)))
        .await
        .expect("in time")
        .expect("ok");
    assert_eq!(reply, "hi ann");

    let server = spans.wait("zmesh.call", "greeter.hello").await;
    assert_eq!(
        field(&server, "network.peer.address"),
        Some("127.0.0.1"),
        "{server:?}"
    );
    assert_eq!(
        field(&server, "network.peer.port"),
        Some(backend_port.to_string().as_str()),
        "{server:?}"
    );
    worker.shutdown(Duration::from_secs(1)).await;
    device.shutdown().await;
}
