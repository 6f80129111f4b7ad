//! The kill -9 soak: a queue and a worker as separate processes (this test binary started
//! again in a role), submissions from this process; the queue is SIGKILLed and restarted
//! several times and the worker SIGKILLed mid-job, while jobs are submitted. At the end
//! every acknowledged job has succeeded (its result), none is lost, and the worker ran each
//! at least once (runs counted; more than once is the honest at-least-once cost).
//!
//! `ZMESH_JOBS_SOAK_JOBS` sets how many jobs are submitted per durability level (default
//! 3000: a few seconds for both levels here, well inside CI's two minutes).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use rmpv::Value;
use support::HEARTBEAT;
use tokio::sync::Mutex;
use zmesh_core::{CallContext, CallOptions, Client, ClientConfig, Node, Service};
use zmesh_jobs::{JobsConfig, JobsExtension, Level};

const ROLE: &str = "ZMESH_JOBS_SOAK_ROLE";
const DIR: &str = "ZMESH_JOBS_SOAK_DIR";
const LEVEL: &str = "ZMESH_JOBS_SOAK_LEVEL";
/// Kills of each process during the submissions.
const KILLS: usize = 5;
/// The longest the whole soak may take to see every acknowledged job succeed.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

fn ep(dir: &Path, name: &str) -> String {
    format!("ipc://{}/{name}.sock", dir.display())
}

/// The queue process: a node hosting the queue on `dir`, its worker at `dir/worker.sock`.
fn run_queue(dir: &Path, level: Level) {
    support::runtime().block_on(async {
        let workers = Client::with_config(
            ep(dir, "worker"),
            ClientConfig::default().heartbeat(HEARTBEAT),
        );
        let config = JobsConfig {
            durability: level,
            concurrency: 16,
            ..JobsConfig::default()
        };
        support::serve_until_killed(
            Node::builder()
                .bind(ep(dir, "queue"))
                .extension(JobsExtension::new(dir.join("data"), config, workers)),
        )
        .await;
    });
}

/// The worker process: `soak.work(n)` takes a few milliseconds and answers `n`, printing
/// `RUN <id>` as it starts.
fn run_worker(dir: &Path) {
    support::runtime().block_on(async {
        let service = Service::new("soak").method("work", |ctx: CallContext, n: u64| async move {
            let tag = ctx.job().expect("tag");
            println!("RUN {}", tag.id);
            tokio::time::sleep(Duration::from_millis(2 + n % 5)).await;
            Ok(n)
        });
        support::serve_until_killed(Node::builder().bind(ep(dir, "worker")).service(service)).await;
    });
}

/// Not a test on its own: the processes the soak spawns.
#[test]
fn child() {
    let (Ok(role), Ok(dir)) = (std::env::var(ROLE), std::env::var(DIR)) else {
        return;
    };
    let level = std::env::var(LEVEL)
        .ok()
        .and_then(|l| Level::parse(&l))
        .unwrap_or_default();
    match role.as_str() {
        "queue" => run_queue(Path::new(&dir), level),
        "worker" => run_worker(Path::new(&dir)),
        other => panic!("no role {other}"),
    }
}

/// A child process in `role`, once it serves.
fn spawn(role: &str, dir: &Path, level: Level) -> (Child, Receiver<String>) {
    let (mut proc, lines) = support::spawn_child(&[
        (ROLE, OsStr::new(role)),
        (DIR, dir.as_os_str()),
        (LEVEL, OsStr::new(level.name())),
    ]);
    while support::next_line(&mut proc, &lines) != "READY" {}
    (proc, lines)
}

fn field<'a>(map: &'a Value, key: &str) -> &'a Value {
    map.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(key)))
        .map_or(&Value::Nil, |(_, v)| v)
}

async fn soak(level: Level) {
    let jobs: u64 = std::env::var("ZMESH_JOBS_SOAK_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_owned();
    let mut worker = spawn("worker", &dir, level);
    let mut queue = spawn("queue", &dir, level);
    let mut worker_lines = Vec::new();

    let client = Client::with_config(
        ep(&dir, "queue"),
        ClientConfig::default().heartbeat(HEARTBEAT),
    );
    // Acknowledged jobs: id -> the n it was submitted with.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let submitters: Vec<_> = (0..8u64)
        .map(|s| {
            let (client, acked) = (client.clone(), Arc::clone(&acked));
            tokio::spawn(async move {
                let mut refused = 0u64;
                for n in (s..jobs).step_by(8) {
                    let submit = client.call_with::<Value>(
                        "jobs.submit",
                        ("soak.work", (n,), Value::Nil),
                        CallOptions::timeout(Duration::from_secs(2)),
                    );
                    // An error is an unacknowledged job: never counted as accepted.
                    match submit.await {
                        Ok(ack) => {
                            let id = field(&ack, "id").as_u64().expect("id");
                            assert_eq!(field(&ack, "durability").as_str(), Some(level.name()));
                            acked.lock().await.insert(id, n);
                        }
                        Err(_) => refused += 1,
                    }
                }
                refused
            })
        })
        .collect();

    // The chaos, paced by acknowledgements (not by time): after each step of acks, kill
    // and restart the queue, then the worker.
    let step = (jobs as usize / (KILLS + 2)).max(1);
    for kill in 1..=KILLS {
        let wait = async {
            while acked.lock().await.len() < kill * step {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(DRAIN_LIMIT, wait)
            .await
            .expect("submissions go on");
        support::kill(queue.0);
        queue = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || spawn("queue", &dir, level)
        })
        .await
        .expect("restart");
        support::kill(worker.0);
        worker_lines.push(worker.1);
        worker = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || spawn("worker", &dir, level)
        })
        .await
        .expect("restart");
    }
    let mut refused = 0;
    for s in submitters {
        refused += tokio::time::timeout(DRAIN_LIMIT, s)
            .await
            .expect("submitters end")
            .expect("task");
    }

    // Every acknowledged job succeeds, with its own result.
    let acked = acked.lock().await.clone();
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    for (&id, &n) in &acked {
        loop {
            let outcome = client
                .call_with::<Value>(
                    "jobs.result",
                    (id, 2_000u64),
                    CallOptions::timeout(Duration::from_secs(5)),
                )
                .await;
            if let Ok(outcome) = &outcome
                && field(outcome, "status").as_str() != Some("pending")
            {
                assert_eq!(
                    field(outcome, "status").as_str(),
                    Some("succeeded"),
                    "job {id}: {outcome}"
                );
                assert_eq!(field(outcome, "result").as_u64(), Some(n), "job {id}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not finish: {outcome:?}"
            );
        }
    }
    support::kill(queue.0);
    support::kill(worker.0);
    worker_lines.push(worker.1);
    let mut runs: BTreeMap<u64, u32> = BTreeMap::new();
    for lines in worker_lines {
        for line in lines.try_iter() {
            if let Some(id) = line.strip_prefix("RUN ").and_then(|id| id.parse().ok()) {
                *runs.entry(id).or_default() += 1;
            }
        }
    }
    let ran: BTreeSet<u64> = runs.keys().copied().collect();
    let never: Vec<_> = acked.keys().filter(|id| !ran.contains(id)).collect();
    assert!(
        never.is_empty(),
        "acknowledged jobs the worker never ran: {never:?}"
    );
    let repeats = runs.values().filter(|&&r| r > 1).count();
    println!(
        "{}: {} acknowledged of {jobs}, {refused} unacknowledged (queue killed), {repeats} run more than once",
        level.name(),
        acked.len()
    );
    assert!(acked.len() as u64 + refused == jobs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_job_is_lost_through_kills_at_fsync() {
    soak(Level::Fsync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_job_is_lost_through_kills_at_os() {
    soak(Level::Os).await;
}
