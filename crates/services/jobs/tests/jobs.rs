//! The `jobs` service over real sockets (ipc in a temp dir): a test `Client` submits to a
//! node hosting the queue, a worker node serves the methods, results are fetched with
//! `jobs.result`. Poison jobs, permanent errors, replay, idempotency, cancel, QueueFull, a
//! long job kept leased by heartbeats, a worker process killed mid-job, and a queue reopened.

mod support;

use support::HEARTBEAT;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rmpv::Value;
use tokio::sync::{Mutex, mpsc};
use zmesh_core::wire::JobTag;
use zmesh_core::{
    CallContext, CallError, Client, ClientConfig, HandlerError, Node, NodeConfig, Service, State,
};
use zmesh_jobs::{JobsConfig, JobsExtension};

/// Upper bound of any one network await.
const NET: Duration = Duration::from_secs(10);
/// Turns this test binary into a worker process serving at the endpoint it holds.
const WORKER_CHILD: &str = "ZMESH_JOBS_WORKER_CHILD";

async fn net<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(NET, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// What the worker's methods share with the test.
#[derive(Default)]
struct Worker {
    /// The job tags the worker saw, in order.
    seen: Mutex<Vec<JobTag>>,
    /// `work.flaky` fails while this holds.
    broken: AtomicBool,
    /// `work.block`'s starts, to the test.
    started: Mutex<Option<mpsc::UnboundedSender<JobTag>>>,
    runs: AtomicU32,
}

fn worker_service(state: Arc<Worker>) -> Service {
    Service::new("work")
        .with_shared_state(state)
        .method(
            "double",
            |s: State<Worker>, ctx: CallContext, x: u64| async move {
                s.seen
                    .lock()
                    .await
                    .push(ctx.job().expect("a job's call carries its tag"));
                s.runs.fetch_add(1, Ordering::SeqCst);
                Ok(x * 2)
            },
        )
        .method("flaky", |s: State<Worker>, ctx: CallContext| async move {
            let tag = ctx.job().expect("tag");
            s.seen.lock().await.push(tag);
            if s.broken.load(Ordering::SeqCst) {
                return Err(HandlerError::new(
                    "Boom",
                    format!("attempt {}", tag.attempt),
                ));
            }
            Ok("fixed")
        })
        .method("reject", |_: State<Worker>| async move {
            Err::<(), _>(HandlerError::permanent("bad input"))
        })
        .method("sleep", |_: State<Worker>, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        })
        .method("block", |s: State<Worker>, ctx: CallContext| async move {
            let tag = ctx.job().expect("tag");
            if let Some(tx) = s.started.lock().await.as_ref() {
                let _ = tx.send(tag);
            }
            std::future::pending::<()>().await;
            Ok(())
        })
        .into_service()
}

/// A worker node serving `work.*` on `endpoint`.
async fn start_worker(endpoint: &str, state: Arc<Worker>) -> Node {
    net(
        "worker start",
        Node::builder()
            .bind(endpoint)
            .service(worker_service(state))
            .config(NodeConfig::default().heartbeat(HEARTBEAT))
            .start(),
    )
    .await
    .expect("worker starts")
}

/// A node hosting a queue stored in `data`, running jobs on the worker at `worker`.
async fn start_queue(endpoint: &str, data: &Path, config: JobsConfig, worker: &str) -> Node {
    let workers = Client::with_config(worker, ClientConfig::default().heartbeat(HEARTBEAT));
    net(
        "queue start",
        Node::builder()
            .bind(endpoint)
            .extension(JobsExtension::new(data, config, workers))
            .config(NodeConfig::default().heartbeat(HEARTBEAT))
            .start(),
    )
    .await
    .expect("queue starts")
}

struct Setup {
    dir: tempfile::TempDir,
    worker_state: Arc<Worker>,
    _worker: Node,
    queue: Option<Node>,
    client: Client,
}

impl Setup {
    async fn new(config: JobsConfig) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let worker_state = Arc::new(Worker::default());
        let worker = start_worker(&Self::ep(&dir, "worker"), Arc::clone(&worker_state)).await;
        let queue = start_queue(
            &Self::ep(&dir, "queue"),
            &dir.path().join("data"),
            config,
            &Self::ep(&dir, "worker"),
        )
        .await;
        let client = Self::client(Self::ep(&dir, "queue"));
        Self {
            dir,
            worker_state,
            _worker: worker,
            queue: Some(queue),
            client,
        }
    }

    /// A client of the queue, heartbeating as often as the queue's node expects.
    fn client(endpoint: String) -> Client {
        Client::with_config(endpoint, ClientConfig::default().heartbeat(HEARTBEAT))
    }

    fn ep(dir: &tempfile::TempDir, name: &str) -> String {
        format!("ipc://{}/{name}.sock", dir.path().display())
    }

    async fn submit(&self, method: &str, args: Value, options: Value) -> Result<u64, CallError> {
        let ack: Value = net(
            "submit",
            self.client.call("jobs.submit", (method, args, options)),
        )
        .await?;
        assert_eq!(
            field(&ack, "durability").as_str(),
            Some("fsync"),
            "the ack states its level"
        );
        Ok(field(&ack, "id").as_u64().expect("an id"))
    }

    /// Submits a job, waits for its result and checks its `status`.
    async fn run(&self, method: &str, args: Value, options: Value, status: &str) -> (u64, Value) {
        let id = self.submit(method, args, options).await.expect("submit");
        let outcome = self.result(id).await;
        assert_eq!(
            field(&outcome, "status").as_str(),
            Some(status),
            "{outcome}"
        );
        (id, outcome)
    }

    /// Submits a `work.double` that waits a minute before it may run.
    async fn submit_later(&self) -> u64 {
        let later = options(&[("delay_ms", 60_000u64.into())]);
        self.submit("work.double", args(vec![1.into()]), later)
            .await
            .expect("submit")
    }

    async fn result(&self, id: u64) -> Value {
        net("result", self.client.call("jobs.result", (id, 5_000u64)))
            .await
            .expect("result answers")
    }

    async fn status(&self, id: u64) -> Value {
        net("status", self.client.call("jobs.status", (id,)))
            .await
            .expect("status answers")
    }
}

fn field<'a>(map: &'a Value, key: &str) -> &'a Value {
    map.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)))
        .map_or(&Value::Nil, |(_, v)| v)
}

fn options(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

fn args(values: Vec<Value>) -> Value {
    Value::Array(values)
}

/// Quick retries for the tests that fail on purpose.
fn fast_retries(max_attempts: u64) -> Value {
    options(&[
        ("max_attempts", max_attempts.into()),
        ("backoff_base_ms", 10u64.into()),
        ("backoff_cap_ms", 40u64.into()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_runs_with_its_tag_and_its_result_is_fetched() {
    let s = Setup::new(JobsConfig::default()).await;
    let (id, outcome) = s
        .run(
            "work.double",
            args(vec![21.into()]),
            Value::Nil,
            "succeeded",
        )
        .await;
    assert_eq!(field(&outcome, "result").as_u64(), Some(42));
    assert_eq!(
        *s.worker_state.seen.lock().await,
        vec![JobTag { id, attempt: 1 }]
    );
    let status = s.status(id).await;
    assert_eq!(field(&status, "state").as_str(), Some("succeeded"));
    assert_eq!(field(&status, "attempts").as_u64(), Some(1));
    let unknown = s.result(id + 1000).await;
    assert_eq!(field(&unknown, "status").as_str(), Some("unknown"));
    let err = net(
        "status",
        s.client.call::<Value>("jobs.status", (id + 1000,)),
    )
    .await
    .expect_err("unknown");
    assert_eq!(err.remote().map(|r| r.name.as_str()), Some("UnknownJob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_dead_with_every_error_and_replay_runs_it_again() {
    let s = Setup::new(JobsConfig::default()).await;
    s.worker_state.broken.store(true, Ordering::SeqCst);
    let (id, outcome) = s
        .run("work.flaky", args(vec![]), fast_retries(3), "failed")
        .await;
    let job = field(&outcome, "job");
    assert_eq!(field(job, "state").as_str(), Some("dead"));
    assert_eq!(field(job, "reason").as_str(), Some("attempts_exhausted"));
    let errors = field(job, "errors").as_array().expect("errors");
    let texts: Vec<_> = errors
        .iter()
        .map(|e| field(e, "error").as_str().expect("text").to_owned())
        .collect();
    assert_eq!(
        texts,
        ["Boom: attempt 1", "Boom: attempt 2", "Boom: attempt 3"]
    );
    let times: Vec<_> = errors
        .iter()
        .map(|e| field(e, "at_ms").as_u64().expect("at"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let stats: Value = net("stats", s.client.call("jobs.stats", ()))
        .await
        .expect("stats");
    assert_eq!(
        field(field(&stats, "depth"), "dead").as_u64(),
        Some(1),
        "{stats}"
    );
    assert_eq!(field(&stats, "attempts").as_u64(), Some(3), "{stats}");
    let dead: Value = net("dead", s.client.call("jobs.dead", (10u64,)))
        .await
        .expect("dead");
    assert_eq!(dead.as_array().map(Vec::len), Some(1));

    s.worker_state.broken.store(false, Ordering::SeqCst);
    let ack: Value = net("replay", s.client.call("jobs.replay", (id,)))
        .await
        .expect("replay");
    assert_eq!(field(&ack, "state").as_str(), Some("queued"));
    let outcome = s.result(id).await;
    assert_eq!(
        field(&outcome, "status").as_str(),
        Some("succeeded"),
        "{outcome}"
    );
    assert_eq!(field(&outcome, "result").as_str(), Some("fixed"));
    let attempts: Vec<u32> = s
        .worker_state
        .seen
        .lock()
        .await
        .iter()
        .map(|t| t.attempt)
        .collect();
    assert_eq!(attempts, [1, 2, 3, 1], "a replay starts a fresh count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_dead_at_once() {
    let s = Setup::new(JobsConfig::default()).await;
    let id = s
        .submit("work.reject", args(vec![]), fast_retries(5))
        .await
        .expect("submit");
    let outcome = s.result(id).await;
    let job = field(&outcome, "job");
    assert_eq!(
        field(job, "reason").as_str(),
        Some("not_retryable"),
        "{outcome}"
    );
    assert_eq!(field(job, "attempts").as_u64(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_answers_the_first_id() {
    let s = Setup::new(JobsConfig::default()).await;
    let keyed = options(&[
        ("idempotency_key", "order-7".into()),
        ("delay_ms", 60_000u64.into()),
    ]);
    let first = s
        .submit("work.double", args(vec![1.into()]), keyed.clone())
        .await
        .expect("submit");
    let again = s
        .submit("work.double", args(vec![1.into()]), keyed)
        .await
        .expect("submit");
    assert_eq!(first, again);
    let all: Value = net("list", s.client.call("jobs.list", (Value::Nil, 10u64)))
        .await
        .expect("list");
    assert_eq!(all.as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_waiting_job_and_bad_options_are_refused() {
    let s = Setup::new(JobsConfig::default()).await;
    let id = s.submit_later().await;
    assert_eq!(
        field(&s.status(id).await, "state").as_str(),
        Some("scheduled")
    );
    let ack: Value = net("cancel", s.client.call("jobs.cancel", (id,)))
        .await
        .expect("cancel");
    assert_eq!(field(&ack, "state").as_str(), Some("cancelled"));
    let outcome = s.result(id).await;
    assert_eq!(field(&outcome, "status").as_str(), Some("failed"));
    let err = net("cancel", s.client.call::<Value>("jobs.cancel", (id,)))
        .await
        .expect_err("finished");
    assert_eq!(err.remote().map(|r| r.name.as_str()), Some("JobStateError"));

    let err = s
        .submit("work.double", Value::from(1), Value::Nil)
        .await
        .expect_err("not an array");
    assert_eq!(err.remote().map(|r| r.name.as_str()), Some("TypeError"));
    let err = s
        .submit(
            "work.double",
            args(vec![]),
            options(&[("retries", 1u64.into())]),
        )
        .await
        .expect_err("unknown option");
    assert!(
        err.remote().is_some_and(|r| r.message.contains("retries")),
        "{err}"
    );
    assert_eq!(s.worker_state.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_with_queue_full() {
    let s = Setup::new(JobsConfig {
        max_jobs: 2,
        ..JobsConfig::default()
    })
    .await;
    let later = options(&[("delay_ms", 60_000u64.into())]);
    for _ in 0..2 {
        s.submit("work.double", args(vec![1.into()]), later.clone())
            .await
            .expect("fits");
    }
    let err = s
        .submit("work.double", args(vec![1.into()]), later)
        .await
        .expect_err("full");
    assert_eq!(
        err.remote().map(|r| r.name.as_str()),
        Some("QueueFull"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_stays_leased_through_heartbeats() {
    let s = Setup::new(JobsConfig::default()).await;
    // 15 heartbeat periods: without heartbeats the call would be lost after about 3.
    let (id, _) = s
        .run(
            "work.sleep",
            args(vec![1_500u64.into()]),
            Value::Nil,
            "succeeded",
        )
        .await;
    assert_eq!(
        field(&s.status(id).await, "attempts").as_u64(),
        Some(1),
        "never redelivered"
    );
}

/// The worker process `a_worker_killed_mid_job_hands_the_job_to_the_next_worker` kills: it
/// serves `work.block`, printing `STARTED <id> <attempt>` when a job's call arrives.
fn run_worker_child(endpoint: &str) {
    support::runtime().block_on(async {
        let service = Service::new("work").method("block", |ctx: CallContext| async move {
            let tag = ctx.job().expect("tag");
            println!("STARTED {} {}", tag.id, tag.attempt);
            std::future::pending::<()>().await;
            Ok(())
        });
        support::serve_until_killed(Node::builder().bind(endpoint).service(service)).await;
    });
}

/// Not a test on its own: the worker process the kill test spawns.
#[test]
fn child() {
    if let Ok(endpoint) = std::env::var(WORKER_CHILD) {
        run_worker_child(&endpoint);
    }
}

/// Starts a worker process at `endpoint` and waits until it serves.
fn spawn_worker(endpoint: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let (mut proc, lines) = support::spawn_child(&[(WORKER_CHILD, OsStr::new(endpoint))]);
    while support::next_line(&mut proc, &lines) != "READY" {}
    (proc, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_hands_the_job_to_the_next_worker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let worker_ep = Setup::ep(&dir, "worker");
    let queue_ep = Setup::ep(&dir, "queue");
    let (mut first, lines) = spawn_worker(&worker_ep);
    let _queue = start_queue(
        &queue_ep,
        &dir.path().join("data"),
        JobsConfig::default(),
        &worker_ep,
    )
    .await;
    let client = Setup::client(queue_ep);
    let ack: Value = net(
        "submit",
        client.call("jobs.submit", ("work.block", args(vec![]), Value::Nil)),
    )
    .await
    .expect("submit");
    let id = field(&ack, "id").as_u64().expect("id");
    assert_eq!(
        support::next_line(&mut first, &lines),
        format!("STARTED {id} 1")
    );
    support::kill(first);

    let (mut second, lines) = spawn_worker(&worker_ep);
    let again =
        tokio::task::spawn_blocking(move || (support::next_line(&mut second, &lines), second));
    let (line, second) = net("redelivery", again).await.expect("reader");
    assert_eq!(
        line,
        format!("STARTED {id} 2"),
        "redelivered to the next worker"
    );
    let status: Value = net("status", client.call("jobs.status", (id,)))
        .await
        .expect("status");
    assert_eq!(field(&status, "state").as_str(), Some("running"));
    let errors = field(&status, "errors").as_array().expect("errors");
    assert!(errors[0].to_string().contains("peer lost"), "{status}");
    support::kill(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_queue_still_holds_what_it_acknowledged() {
    let mut s = Setup::new(JobsConfig::default()).await;
    let (tx, mut started) = mpsc::unbounded_channel();
    *s.worker_state.started.lock().await = Some(tx);
    let later = s.submit_later().await;
    let running = s
        .submit("work.block", args(vec![]), Value::Nil)
        .await
        .expect("submit");
    net("start", started.recv()).await.expect("started");
    let queue = s.queue.take().expect("queue");
    net("queue shutdown", queue.shutdown(Duration::from_secs(1))).await;

    let queue_ep = Setup::ep(&s.dir, "queue2");
    let _queue = start_queue(
        &queue_ep,
        &s.dir.path().join("data"),
        JobsConfig::default(),
        &Setup::ep(&s.dir, "worker"),
    )
    .await;
    s.client = Setup::client(queue_ep);
    assert_eq!(
        field(&s.status(later).await, "state").as_str(),
        Some("scheduled")
    );
    // The job that was running is queued again, its attempt counted, and runs again.
    let again = net("rerun", started.recv()).await.expect("run again");
    assert_eq!(
        again,
        JobTag {
            id: running,
            attempt: 2
        }
    );
    let next: Value = net(
        "submit",
        s.client
            .call("jobs.submit", ("work.double", (2,), Value::Nil)),
    )
    .await
    .expect("submit");
    assert!(
        field(&next, "id").as_u64().expect("id") > running,
        "ids are not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_on_a_corrupt_store_refuses_to_start_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("jobs.redb"), vec![0x5a; 64 * 1024]).expect("garbage");
    let workers = Client::new(Setup::ep(&dir, "worker"));
    let started = net(
        "queue start",
        Node::builder()
            .bind(Setup::ep(&dir, "queue"))
            .extension(JobsExtension::new(&data, JobsConfig::default(), workers))
            .start(),
    )
    .await;
    let err = started.expect_err("a corrupt store");
    assert!(err.to_string().contains("jobs.redb"), "{err}");
    let bad = JobsConfig {
        concurrency: 0,
        ..JobsConfig::default()
    };
    let err = net(
        "queue start",
        Node::builder()
            .bind(Setup::ep(&dir, "queue"))
            .extension(JobsExtension::new(
                dir.path().join("other"),
                bad,
                Client::new(Setup::ep(&dir, "worker")),
            ))
            .start(),
    )
    .await
    .expect_err("a bad setting");
    assert!(err.to_string().contains("concurrency"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changes_are_published_as_jobs_events_in_order() {
    use futures::StreamExt;
    use zmesh_core::{Delivery, Publisher, Subscriber};

    let dir = tempfile::tempdir().expect("tempdir");
    let publisher = net("publisher", Publisher::bind(Setup::ep(&dir, "events")))
        .await
        .expect("publisher");
    let mut events = net(
        "subscriber",
        Subscriber::builder()
            .connect(Setup::ep(&dir, "events"))
            .subscribe("jobs.")
            .start::<Value>(),
    )
    .await
    .expect("subscriber");
    net(
        "subscription",
        publisher.wait_for_subscribers("jobs.", 1, NET),
    )
    .await
    .expect("subscribed");
    let _worker = start_worker(&Setup::ep(&dir, "worker"), Arc::default()).await;
    let workers = Client::with_config(
        Setup::ep(&dir, "worker"),
        ClientConfig::default().heartbeat(HEARTBEAT),
    );
    let _queue = net(
        "queue start",
        Node::builder()
            .bind(Setup::ep(&dir, "queue"))
            .extension(
                JobsExtension::new(dir.path().join("data"), JobsConfig::default(), workers)
                    .publisher(publisher),
            )
            .start(),
    )
    .await
    .expect("queue starts");
    let client = Setup::client(Setup::ep(&dir, "queue"));
    let ack: Value = net(
        "submit",
        client.call("jobs.submit", ("work.double", (4,), Value::Nil)),
    )
    .await
    .expect("submit");
    let id = field(&ack, "id").as_u64().expect("id");
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("jobs.succeeded") {
        match net("event", events.next()).await.expect("events go on") {
            Delivery::Event(event) => {
                assert_eq!(field(&event.payload, "id").as_u64(), Some(id));
                assert_eq!(
                    Some(event.topic.as_str()),
                    field(&event.payload, "state")
                        .as_str()
                        .map(|s| format!("jobs.{s}"))
                        .as_deref()
                );
                seen.push(event.topic);
            }
            Delivery::Gap(gap) => panic!("unexpected gap {gap:?}"),
        }
    }
    assert_eq!(seen, ["jobs.queued", "jobs.running", "jobs.succeeded"]);
}

/// A queue that is a mesh member: announced with its extension's `jobs` service, so a mesh
/// client finds it by name, and running its jobs through a mesh client of its own, on the
/// member serving each job's method. Its figures reach the node's `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_in_a_mesh_is_found_by_name_and_runs_jobs_on_the_members() {
    use zmesh_core::mesh::{MeshClient, MeshClientConfig, MeshNode};
    let mesh = format!("jobs-mesh-{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let gossip = (Duration::from_millis(200), Duration::from_millis(1500));
    let worker = net(
        "worker member",
        MeshNode::builder(mesh.clone())
            .bind("tcp://127.0.0.1:0")
            .service(worker_service(Arc::new(Worker::default())))
            .timing(gossip.0, gossip.1)
            .start(),
    )
    .await
    .expect("worker member starts");
    let data = dir.path().join("data");
    let queue = net(
        "queue member",
        MeshNode::builder(mesh)
            .bind("tcp://127.0.0.1:0")
            .seed(worker.node().endpoint())
            .timing(gossip.0, gossip.1)
            .extension_with(move |discovery| {
                let members = MeshClient::new(discovery.clone(), MeshClientConfig::default());
                JobsExtension::new(data, JobsConfig::default(), members).worker_name("mesh")
            })
            .start(),
    )
    .await
    .expect("queue member starts");
    assert!(
        queue.record().services.iter().any(|s| s.name == "jobs"),
        "the extension's service is announced: {:?}",
        queue.record()
    );

    // From the worker's side of the mesh: `jobs` by name, waiting for gossip to find it.
    let client = worker.client(MeshClientConfig::default());
    let ack: Value = net(
        "submit through the mesh",
        client.call("jobs.submit", ("work.double", vec![21u64], ())),
    )
    .await
    .expect("submit");
    let id = field(&ack, "id").as_u64().expect("an id");
    let outcome: Value = net("result", client.call("jobs.result", (id, 5_000u64)))
        .await
        .expect("result");
    assert_eq!(
        field(&outcome, "status").as_str(),
        Some("succeeded"),
        "{outcome}"
    );
    assert_eq!(field(&outcome, "result").as_u64(), Some(42));

    let text = queue.node().metrics().encode();
    for line in [
        "zmesh_jobs{state=\"succeeded\"} 1",
        "zmesh_jobs_attempts_started_total 1",
        "zmesh_jobs_durability{level=\"fsync\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}
