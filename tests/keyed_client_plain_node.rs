//! A keyed client pointed at a plain (unkeyed) node gets a clear answer at once: the node
//! cannot open the sealed request, but it can read its clear id, so it refuses it with an
//! unsealed `ERR Unauthenticated` saying the endpoint takes no mesh key (which a keyed
//! client accepts unsealed), counts it, and keeps serving everyone else.

mod common;

use std::time::Duration;

use common::{Transport, start_node};
use zmesh::{Client, ClientConfig, MeshKey, NodeConfig};

/// Bound on every network step; the call's own deadline is far longer, so an answer
/// within this bound is the node's refusal, not the deadline.
const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_sealed_request_to_a_plain_node_is_refused_as_taking_no_key() {
    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), Vec::new()).await;
    let endpoint = node.endpoint().to_owned();
    let key = MeshKey::from_secret("a mesh key of thirty-two bytes!!").expect("key");
    let config = ClientConfig::default()
        .mesh_key(key)
        .default_timeout(T * 30);
    let keyed = Client::with_config(&endpoint, config);
    let error = tokio::time::timeout(T, keyed.call::<String>("echo.upper", ("hi",)))
        .await
        .expect("answered well before the call's deadline")
        .expect_err("refused");
    let remote = error
        .remote()
        .unwrap_or_else(|| panic!("an ERR, not {error}"));
    assert_eq!(remote.name, "Unauthenticated", "{remote}");
    assert_eq!(remote.message, "this endpoint takes no mesh key");
    // The request, and whatever else the keyed client sealed (its probe of the peer).
    assert!(node.stats().unauthenticated >= 1, "{:?}", node.stats());

    // The node keeps serving plain clients.
    let plain = Client::new(&endpoint);
    let up: String = tokio::time::timeout(T, plain.call("echo.upper", ("hi",)))
        .await
        .expect("plain call timed out")
        .expect("served");
    assert_eq!(up, "HI");
}
