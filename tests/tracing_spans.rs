//! The node emits one `zmesh.call` span per call carrying method, id, peer, outcome and
//! duration. Its own test binary: capturing spans from runtime worker threads needs a global
//! subscriber, and only one test may install it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{Transport, eventually, net, start_node};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use zmesh::{Client, NodeConfig};

type Fields = HashMap<String, String>;

/// Collects the fields of every `zmesh.call` span when it closes.
#[derive(Clone, Default)]
struct CallSpans {
    open: Arc<Mutex<HashMap<u64, Fields>>>,
    closed: Arc<Mutex<Vec<Fields>>>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S>
    for CallSpans
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        if attrs.metadata().name() == "zmesh.call" {
            let mut fields = Fields::new();
            attrs.record(&mut Collect(&mut fields));
            self.open
                .lock()
                .expect("lock")
                .insert(id.into_u64(), fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(fields) = self.open.lock().expect("lock").get_mut(&id.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(fields) = self.open.lock().expect("lock").remove(&id.into_u64()) {
            self.closed.lock().expect("lock").push(fields);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_has_a_span_with_method_id_peer_outcome_and_duration() {
    let spans = CallSpans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    tracing::subscriber::set_global_default(subscriber).expect("only test in this binary");

    let (node, _dir) = start_node(Transport::Tcp, NodeConfig::default(), vec![]).await;
    let client = Client::new(node.endpoint());
    let _: String = net("ok call", client.call("echo.upper", ("x",)))
        .await
        .expect("ok");
    let _ = net("failing call", client.call::<()>("echo.fail", ("boom",))).await;

    let find = |method: &str| {
        spans
            .closed
            .lock()
            .expect("lock")
            .iter()
            .find(|f| f.get("method").map(String::as_str) == Some(method))
            .cloned()
    };
    eventually(common::NET_TIMEOUT, "both call spans closed", || {
        find("echo.upper").is_some() && find("echo.fail").is_some()
    })
    .await;
    let ok = find("echo.upper").expect("span");
    assert_eq!(ok.get("outcome").map(String::as_str), Some("Ok"), "{ok:?}");
    let failed = find("echo.fail").expect("span");
    assert_eq!(
        failed.get("outcome").map(String::as_str),
        Some("Error"),
        "{failed:?}"
    );
    for span in [ok, failed] {
        for field in ["id", "peer", "duration_us"] {
            let value = span
                .get(field)
                .unwrap_or_else(|| panic!("{field} missing in {span:?}"));
            assert!(!value.is_empty(), "{field} empty in {span:?}");
        }
        let id = &span["id"];
        assert_eq!(id.len(), 32, "ids are 32 hex digits: {id}");
        assert!(span["duration_us"].parse::<u64>().is_ok(), "{span:?}");
    }
}
