//! A job's attempt is traced like any call: the queue's dispatch is a client span of the
//! method (`zmesh.client_call`, `otel.kind` client) tagged with `zmesh.job.id` and
//! `zmesh.job.attempt`, the worker's server span of it carries the same tags, and the
//! attempt carries the submitter's trace context, so it joins the submitter's trace.

#[path = "../crates/zmesh-core/tests/support/spans.rs"]
mod spans;

use std::sync::{Arc, Mutex};

use rmpv::Value;
use zmesh::jobs::{JobsConfig, JobsExtension};
use zmesh::{CallContext, CallOptions, Client, Node, Service, TraceParent};

use spans::{NET_TIMEOUT, capture, field};

#[tokio::test]
async fn a_job_attempt_is_a_client_span_tagged_with_the_job_and_its_attempt() {
    let (spans, _guard) = capture();
    let dir = tempfile::tempdir().expect("tempdir");
    // The trace context each attempt arrived with.
    let seen: Arc<Mutex<Vec<Option<TraceParent>>>> = Arc::default();
    let work = Service::new("work").method("double", {
        let seen = Arc::clone(&seen);
        move |ctx: CallContext, x: u64| {
            seen.lock().expect("lock").push(ctx.traceparent().copied());
            async move { Ok(x * 2) }
        }
    });
    let worker = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .service(work)
        .start()
        .await
        .expect("worker starts");
    let jobs = JobsExtension::new(
        dir.path().join("data"),
        JobsConfig::default(),
        Client::new(worker.endpoint()),
    );
    let queue = Node::builder()
        .bind("tcp://127.0.0.1:0")
        .extension(jobs)
        .start()
        .await
        .expect("queue starts");
    let client = Client::new(queue.endpoint());
    let no_options = Value::Map(Vec::new());
    let submitter = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let ack: Value = tokio::time::timeout(
        NET_TIMEOUT,
        client.call_with(
            "jobs.submit",
            ("work.double", vec![21u64], no_options),
            CallOptions::default().traceparent(submitter),
        ),
    )
    .await
    .expect("in time")
    .expect("submitted");
    let id = ack
        .as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("id")))
        .and_then(|(_, v)| v.as_u64())
        .expect("the ack has the job's id");

    let dispatch = spans.wait("zmesh.client_call", "work.double").await;
    assert_eq!(
        field(&dispatch, "otel.kind"),
        Some("client"),
        "{dispatch:?}"
    );
    assert_eq!(field(&dispatch, "otel.name"), Some("work.double"));
    assert_eq!(
        field(&dispatch, "zmesh.job.id"),
        Some(id.to_string().as_str())
    );
    assert_eq!(field(&dispatch, "zmesh.job.attempt"), Some("1"));
    assert_eq!(field(&dispatch, "error.type"), None, "{dispatch:?}");
    let served = spans.wait("zmesh.call", "work.double").await;
    assert_eq!(
        field(&served, "zmesh.job.id"),
        Some(id.to_string().as_str())
    );
    assert_eq!(field(&served, "zmesh.job.attempt"), Some("1"));
    let seen = seen.lock().expect("lock").clone();
    let expected = TraceParent::parse(submitter).expect("valid");
    assert_eq!(
        seen,
        [Some(expected)],
        "the attempt carries the submitter's context"
    );

    queue.shutdown(std::time::Duration::from_secs(1)).await;
    worker.shutdown(std::time::Duration::from_secs(1)).await;
}
