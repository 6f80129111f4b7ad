//! A store survives a kill -9 of its process at both levels: a child process (this test
//! binary again) commits jobs through the writer, many at once, and prints each job's id
//! once its ack arrives; the test SIGKILLs it mid-stream and reopens the store. Every
//! acknowledged job must be there. And the redb experiment the `os` level's design rests
//! on.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

mod support;

use redb::{Database, Durability, ReadableDatabase, ReadableTableMetadata, TableDefinition};
use support::{kill, next_line, spawn_child};
use tokio::sync::Mutex;
use zmesh_jobs::store::{Flush, Level, Store, Writer};
use zmesh_jobs::{JobOptions, Queue, QueueLimits};

const CHILD_DIR: &str = "ZMESH_JOBS_KILL_DIR";
const CHILD_LEVEL: &str = "ZMESH_JOBS_KILL_LEVEL";
const REDB_CHILD: &str = "ZMESH_JOBS_REDB_CHILD";
const TABLE: TableDefinition<u64, u64> = TableDefinition::new("t");
/// Acks the test waits for before the kill.
const ACKED_BEFORE_KILL: usize = 300;

/// The child: submits without end from 16 tasks, printing `ACK <id>` after each ack.
fn run_child(dir: &Path, level: Level) {
    support::runtime().block_on(async {
        let (store, loaded) = Store::open(dir, level).expect("open");
        assert!(loaded.jobs.is_empty());
        let writer = Arc::new(Writer::start(store, None).expect("writer"));
        let queue = Arc::new(Mutex::new(Queue::new(QueueLimits::default(), 1)));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (writer, queue) = (Arc::clone(&writer), Arc::clone(&queue));
            tasks.push(tokio::spawn(async move {
                loop {
                    // The queue's lock is held until the commit is sent, so commits reach
                    // the writer in the order the queue made them.
                    let (id, commit) = {
                        let mut q = queue.lock().await;
                        let (id, fx) = q
                            .submit(
                                SystemTime::now(),
                                "work".into(),
                                vec![0x90],
                                JobOptions::default(),
                            )
                            .expect("submit");
                        (id, writer.commit(q.next_id(), fx.persist, Flush::Now))
                    };
                    commit.await.expect("ack");
                    println!("ACK {id}");
                }
            }));
        }
        // The submitters run until the test kills this process.
        drop(tasks);
        std::future::pending::<()>().await;
    });
}

fn kill_mid_stream(level: Level) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut proc, lines) = spawn_child(&[
        (CHILD_DIR, dir.path().as_os_str()),
        (CHILD_LEVEL, level.name().as_ref()),
    ]);
    let mut acked = BTreeSet::new();
    while acked.len() < ACKED_BEFORE_KILL {
        let line = next_line(&mut proc, &lines);
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.insert(id.parse::<u64>().expect("id"));
        }
    }
    assert_eq!(acked.len(), ACKED_BEFORE_KILL, "the child stopped early");
    kill(proc);

    let (_, loaded) = Store::open(dir.path(), level).expect("reopen after the kill");
    let stored: BTreeSet<u64> = loaded.jobs.iter().map(|j| j.id.0).collect();
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{}: acknowledged jobs lost: {lost:?}",
        level.name()
    );
    assert!(loaded.next_id > *acked.last().expect("acked"));
}

/// The experiment behind the `os` level's journal (see `store.rs`): redb commits made with
/// `Durability::None` after a durable one, then the process killed.
fn redb_child(path: &Path) {
    let db = Database::create(path).expect("create");
    for i in 0..100u64 {
        let mut tx = db.begin_write().expect("begin");
        let durability = if i == 0 {
            Durability::Immediate
        } else {
            Durability::None
        };
        tx.set_durability(durability).expect("durability");
        tx.open_table(TABLE)
            .expect("table")
            .insert(i, i)
            .expect("insert");
        tx.commit().expect("commit");
    }
    println!("COMMITTED");
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn redb_keeps_its_durable_commit_through_a_kill_and_the_store_needs_no_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db.redb");
    let (mut proc, lines) = spawn_child(&[(REDB_CHILD, path.as_os_str())]);
    while next_line(&mut proc, &lines) != "COMMITTED" {}
    kill(proc);
    let db = Database::open(&path).expect("reopen");
    let tx = db.begin_read().expect("read");
    let table = tx.open_table(TABLE).expect("table");
    assert!(
        table.get(0).expect("get").is_some(),
        "the durable commit survives"
    );
    // What the journal exists for: redb 4.6 keeps none of the 99 (store.rs's doc). The
    // store is right either way, so this is reported, not asserted.
    let kept = table.len().expect("len") - 1;
    println!("redb kept {kept} of 99 non-durable commits through SIGKILL");
}

/// Not a test on its own: the child process `kill_mid_stream` spawns.
#[test]
fn child() {
    if let Ok(path) = std::env::var(REDB_CHILD) {
        redb_child(Path::new(&path));
    }
    if let (Ok(dir), Ok(level)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_LEVEL)) {
        run_child(Path::new(&dir), Level::parse(&level).expect("level"));
    }
}

#[test]
fn os_level_keeps_every_acknowledged_job_through_a_kill() {
    kill_mid_stream(Level::Os);
}

#[test]
fn fsync_level_keeps_every_acknowledged_job_through_a_kill() {
    kill_mid_stream(Level::Fsync);
}

#[test]
fn the_durability_levels_have_their_names() {
    assert_eq!(Level::parse("os"), Some(Level::Os));
    assert_eq!(Level::parse(Level::Fsync.name()), Some(Level::Fsync));
    assert_eq!(Level::default(), Level::Fsync);
    assert_eq!(Level::parse("none"), None);
}
