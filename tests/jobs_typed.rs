//! Typed job submission over real sockets (ipc in a temp dir): a `#[zmesh::service]`
//! trait's generated `{Trait}Jobs` submits through a `zmesh::jobs::JobsClient` to a node
//! hosting a queue, the queue runs the call on a worker node, and the result is fetched.

use std::time::Duration;

use rmpv::Value;
use zmesh::jobs::{JobsClient, JobsConfig, JobsExtension};
use zmesh::{Client, HandlerError, Node};

const NET: Duration = Duration::from_secs(10);

async fn net<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(NET, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A mailer whose sends are jobs.
#[zmesh::service]
trait Mailer {
    /// Sends `body` to `to`; answers the message's length.
    async fn send(&self, to: String, body: String) -> Result<u64, HandlerError>;
}

struct Outbox;

impl Mailer for Outbox {
    async fn send(&self, to: String, body: String) -> Result<u64, HandlerError> {
        Ok((to.len() + body.len()) as u64)
    }
}

fn field<'a>(map: &'a Value, key: &str) -> &'a Value {
    map.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)))
        .map_or(&Value::Nil, |(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_client_submits_jobs_without_method_names_in_strings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ep = |name: &str| format!("ipc://{}/{name}.sock", dir.path().display());
    let _worker = net(
        "worker",
        Node::builder()
            .bind(ep("worker"))
            .service(MailerServer::new(Outbox))
            .start(),
    )
    .await
    .expect("worker starts");
    let _queue = net(
        "queue",
        Node::builder()
            .bind(ep("queue"))
            .extension(JobsExtension::new(
                dir.path().join("data"),
                JobsConfig::default(),
                Client::new(ep("worker")),
            ))
            .start(),
    )
    .await
    .expect("queue starts");
    let jobs = JobsClient::new(Client::new(ep("queue")));
    let mailer = MailerJobs::new(&jobs);
    let ticket = net("submit", mailer.send("ada".into(), "hello".into()))
        .await
        .expect("submitted");
    assert_eq!(ticket.durability, "fsync");
    let outcome = net("result", jobs.result(ticket.id, Duration::from_secs(5)))
        .await
        .expect("result");
    assert_eq!(
        field(&outcome, "status").as_str(),
        Some("succeeded"),
        "{outcome}"
    );
    assert_eq!(field(&outcome, "result").as_u64(), Some(8));
}
