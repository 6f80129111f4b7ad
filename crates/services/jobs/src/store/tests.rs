//! Tests of the store on real files in a temp dir: round trips at both levels, group
//! commit, the log's wrap, torn tail and corruption, the previous layout's journal, other
//! formats and corrupt files.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::queue::{JobOptions, JobState, Outcome, Queue, QueueLimits, StateName};

const WAIT: Duration = Duration::from_secs(10);

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(2_000_000)
}

/// Submits `n` jobs to `q`, answering the records to persist.
fn submit_n(q: &mut Queue, n: usize) -> Vec<Persist> {
    (0..n)
        .flat_map(|i| {
            let (_, fx) = q
                .submit(
                    now(),
                    format!("m{}", i % 3),
                    vec![0x91, i as u8 & 0x7f],
                    JobOptions::default(),
                )
                .expect("submit");
            fx.persist
        })
        .collect()
}

/// Writes into the store's database file behind its back, in one transaction.
fn write_raw(dir: &Path, write: impl FnOnce(&redb::WriteTransaction)) {
    let db = Database::create(dir.join(DB_FILE)).expect("db");
    let tx = db.begin_write().expect("tx");
    write(&tx);
    tx.commit().expect("commit");
}

fn reopen(dir: &Path, level: Level) -> Loaded {
    Store::open(dir, level).expect("reopen").1
}

#[test]
fn records_round_trip_at_both_levels() {
    for level in [Level::Fsync, Level::Os] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, loaded) = Store::open(dir.path(), level).expect("open");
        assert!(loaded.jobs.is_empty());
        let mut q = Queue::new(QueueLimits::default(), 1);
        let ops = submit_n(&mut q, 5);
        store.commit(q.next_id(), ops).expect("commit");
        let (_, fx) = q.purge(&crate::queue::Selector::Ids(vec![JobId(2)]));
        store.commit(q.next_id(), fx.persist).expect("commit");
        drop(store);
        let loaded = reopen(dir.path(), level);
        let ids: Vec<u64> = loaded.jobs.iter().map(|j| j.id.0).collect();
        assert_eq!(ids, vec![1, 3, 4, 5], "{level:?}");
        assert_eq!(loaded.next_id, 6);
        assert_eq!(loaded.jobs[0], *q.get(JobId(1)).expect("job"));
    }
}

/// Opens `dir` again, as a new process after a kill would: a dropped [`Store`] leaves the
/// log as it was (only the writer checkpoints at its stop).
fn reopen_sized(dir: &Path, wal_bytes: u64) -> Loaded {
    Store::open_sized(dir, Level::Os, wal_bytes)
        .expect("reopen")
        .1
}

#[test]
fn a_log_left_by_a_killed_run_is_replayed_at_any_level_then_checkpointed() {
    for (written, reopened) in [(Level::Os, Level::Fsync), (Level::Fsync, Level::Os)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, _) = Store::open(dir.path(), written).expect("open");
        let mut q = Queue::new(QueueLimits::default(), 1);
        let ops = submit_n(&mut q, 3);
        store.commit(q.next_id(), ops).expect("commit");
        // Dropped without a checkpoint, as at a kill: redb has none of these jobs yet.
        drop(store);
        let loaded = reopen(dir.path(), reopened);
        assert_eq!(loaded.jobs.len(), 3, "{written:?}");
        assert_eq!(loaded.next_id, 4);
        // Checkpointed at that open: redb holds them without the log.
        std::fs::remove_file(dir.path().join(WAL_FILE)).expect("rm");
        let loaded = reopen(dir.path(), reopened);
        assert_eq!(loaded.jobs.len(), 3, "{written:?}: in redb");
    }
}

#[test]
fn a_full_log_checkpoints_and_starts_again_and_older_frames_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Four frames' room: ten groups wrap it twice.
    let small = 4 * FRAME_ALIGN;
    let (mut store, _) = Store::open_sized(dir.path(), Level::Os, small).expect("open");
    let mut q = Queue::new(QueueLimits::default(), 1);
    for _ in 0..6 {
        let ops = submit_n(&mut q, 1);
        store.commit(q.next_id(), ops).expect("commit");
    }
    for id in 1..=3 {
        let (_, fx) = q.purge(&crate::queue::Selector::Ids(vec![JobId(id)]));
        store.commit(q.next_id(), fx.persist).expect("commit");
    }
    assert_eq!(store.wal.epoch, 2, "checkpointed when the log was full");
    assert_eq!(store.wal.at, FRAME_ALIGN, "one frame of this epoch");
    assert_eq!(
        std::fs::metadata(dir.path().join(WAL_FILE))
            .expect("log")
            .len(),
        small,
        "written in place, never grown"
    );
    drop(store);
    // The file still holds puts of jobs 1-3 from older epochs after this epoch's frame.
    let loaded = reopen_sized(dir.path(), small);
    let ids: Vec<u64> = loaded.jobs.iter().map(|j| j.id.0).collect();
    assert_eq!(ids, vec![4, 5, 6]);
    assert_eq!(loaded.next_id, 7);
}

#[test]
fn a_group_larger_than_the_log_grows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open_sized(dir.path(), Level::Fsync, FRAME_ALIGN).expect("open");
    let mut q = Queue::new(QueueLimits::default(), 1);
    let ops = submit_n(&mut q, 40);
    store.commit(q.next_id(), ops).expect("commit");
    drop(store);
    assert!(
        std::fs::metadata(dir.path().join(WAL_FILE))
            .expect("log")
            .len()
            > FRAME_ALIGN
    );
    assert_eq!(reopen_sized(dir.path(), FRAME_ALIGN).jobs.len(), 40);
}

#[test]
fn a_torn_last_log_frame_is_dropped_and_a_bad_middle_frame_refuses_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(dir.path(), Level::Os).expect("open");
    let mut q = Queue::new(QueueLimits::default(), 1);
    let mut second = 0;
    for _ in 0..2 {
        second = usize::try_from(store.wal.at).expect("offset");
        let ops = submit_n(&mut q, 1);
        store.commit(q.next_id(), ops).expect("commit");
    }
    drop(store);
    let wal_path = dir.path().join(WAL_FILE);
    let whole = std::fs::read(&wal_path).expect("read");

    // Torn: the second frame's write cut short (the disk has zeros where it stopped).
    let mut torn = whole.clone();
    torn[second + FRAME_HEADER + 2..second + FRAME_ALIGN as usize].fill(0);
    std::fs::write(&wal_path, &torn).expect("write");
    let loaded = reopen(dir.path(), Level::Os);
    assert_eq!(loaded.jobs.len(), 1, "the whole first frame is kept");

    // A flipped byte in the first frame, with the second whole after it: corruption.
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_path = dir.path().join(WAL_FILE);
    let mut bad = whole.clone();
    bad[FRAME_HEADER + 2] ^= 0xff;
    std::fs::write(&wal_path, &bad).expect("write");
    let err = Store::open(dir.path(), Level::Os).expect_err("corrupt");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    assert!(
        std::fs::read(&wal_path).expect("read") == bad,
        "nothing is thrown away"
    );
}

#[test]
fn a_journal_of_the_previous_layout_is_replayed_once_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut q = Queue::new(QueueLimits::default(), 1);
    let ops: Vec<Op> = submit_n(&mut q, 2).into_iter().map(Op::from).collect();
    let payload = rmp_serde::to_vec(&Group {
        next_id: q.next_id(),
        ops,
    })
    .expect("encode");
    let mut journal = u32::try_from(payload.len())
        .expect("len")
        .to_le_bytes()
        .to_vec();
    journal.extend_from_slice(&checksum(&[&payload]).to_le_bytes());
    journal.extend_from_slice(&payload);
    let path = dir.path().join(LEGACY_JOURNAL_FILE);
    std::fs::write(&path, &journal).expect("write");
    let loaded = reopen(dir.path(), Level::Fsync);
    assert_eq!(loaded.jobs.len(), 2);
    assert_eq!(loaded.next_id, 3);
    assert!(!path.exists(), "replayed into redb, then removed");
    assert_eq!(reopen(dir.path(), Level::Fsync).jobs.len(), 2);
}

#[test]
fn a_store_of_another_format_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), Level::Fsync).expect("open"));
    write_raw(dir.path(), |tx| {
        tx.open_table(META)
            .expect("meta")
            .insert(META_FORMAT, 999)
            .expect("insert");
    });
    let err = Store::open(dir.path(), Level::Fsync).expect_err("other format");
    assert!(
        matches!(
            err,
            StoreError::Version {
                found: Some(999),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("format Some(999)"), "{err}");
}

#[test]
fn a_redb_file_that_is_not_a_job_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_raw(dir.path(), |tx| {
        let def: TableDefinition<u64, u64> = TableDefinition::new("other");
        tx.open_table(def).expect("t").insert(1, 1).expect("insert");
    });
    let err = Store::open(dir.path(), Level::Fsync).expect_err("not ours");
    assert!(
        matches!(err, StoreError::Version { found: None, .. }),
        "{err}"
    );
}

#[test]
fn a_corrupt_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 64 * 1024]).expect("write");
    let err = Store::open(dir.path(), Level::Fsync).expect_err("garbage");
    assert!(matches!(err, StoreError::Database { .. }), "{err}");
    assert!(err.to_string().contains(DB_FILE), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(DB_FILE)).expect("read").len(),
        64 * 1024,
        "left as it was"
    );
}

#[test]
fn a_record_that_does_not_decode_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), Level::Fsync).expect("open"));
    write_raw(dir.path(), |tx| {
        tx.open_table(JOBS)
            .expect("jobs")
            .insert(7, &[0xc1u8][..])
            .expect("insert");
    });
    let err = Store::open(dir.path(), Level::Fsync).expect_err("bad record");
    assert!(
        matches!(&err, StoreError::Corrupt { what, .. } if what.contains("record 7")),
        "{err}"
    );
}

#[test]
fn the_writer_takes_every_waiting_request_as_one_group() {
    let (tx, rx) = mpsc::channel();
    let mut dones = Vec::new();
    for i in 0..10 {
        let (ack, done) = oneshot::channel();
        tx.send(Request {
            next_id: i,
            ops: Vec::new(),
            flush: Flush::Now,
            ack,
        })
        .expect("send");
        dones.push(done);
    }
    let first = rx.recv().expect("first");
    assert_eq!(drain(first, &rx).len(), 10);
}

/// A request a spinning writer sees while it spins, and one sent after its spin ended (it
/// then sleeps in the channel, as without a spin); a closed channel ends it either way.
#[test]
fn a_spinning_writer_takes_requests_during_and_after_its_spin() {
    let (tx, rx) = mpsc::channel();
    let request = |i| {
        let (ack, _done) = oneshot::channel();
        Request {
            next_id: i,
            ops: Vec::new(),
            flush: Flush::Now,
            ack,
        }
    };
    let spin = Some(Duration::from_millis(1));
    tx.send(request(1)).expect("send");
    let got = next_request(&rx, WAIT, spin).expect("during the spin");
    assert_eq!(got.next_id, 1);
    let sender = std::thread::spawn(move || {
        // Well after the spin: the writer is asleep in `recv_timeout` by then.
        std::thread::sleep(Duration::from_millis(30));
        tx.send(request(2)).expect("send");
        tx
    });
    let got = next_request(&rx, WAIT, spin).expect("after the spin");
    assert_eq!(got.next_id, 2);
    drop(sender.join().expect("sender"));
    assert_eq!(
        next_request(&rx, WAIT, spin).map(|r| r.next_id),
        Err(mpsc::RecvTimeoutError::Disconnected)
    );
    // With nothing sent the wait still ends at its timeout, spin or not.
    let (_tx, rx) = mpsc::channel::<Request>();
    assert_eq!(
        next_request(&rx, Duration::from_millis(5), spin).map(|r| r.next_id),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
}

/// `Flush::Soon` at `fsync`: acknowledged once written, then synced by the writer's own
/// timer within `SYNC_LAG` with nothing else sent; `Flush::Now` syncs before its ack. At
/// `os` the log is never synced.
#[tokio::test]
async fn a_soon_group_is_synced_by_the_lag_timer_and_a_now_group_before_its_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path(), Level::Fsync).expect("open");
    let writer = Writer::start(store, None).expect("writer");
    let mut q = Queue::new(QueueLimits::default(), 1);
    let mut ops = submit_n(&mut q, 2).into_iter();
    let now_op = ops.next().expect("op");
    let soon_op = ops.next().expect("op");
    async fn acked(commit: impl Future<Output = Result<Level, StoreError>>) -> Level {
        tokio::time::timeout(WAIT, commit)
            .await
            .expect("in time")
            .expect("ack")
    }
    acked(writer.commit(q.next_id(), vec![now_op], Flush::Now)).await;
    assert_eq!(writer.syncs(), 1, "a Now group is synced before its ack");
    acked(writer.commit(q.next_id(), vec![soon_op], Flush::Soon)).await;
    // Nothing more is sent: only the writer's timer can sync the Soon group.
    tokio::time::timeout(WAIT, async {
        while writer.syncs() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the Soon group is synced within the lag");

    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path(), Level::Os).expect("open");
    let mut writer = Writer::start(store, None).expect("writer");
    for (i, op) in submit_n(&mut q, 2).into_iter().enumerate() {
        let flush = if i == 0 { Flush::Now } else { Flush::Soon };
        acked(writer.commit(q.next_id(), vec![op], flush)).await;
    }
    writer.stop();
    assert_eq!(writer.syncs(), 0, "the os level never syncs the log");
}

#[tokio::test]
async fn concurrent_commits_now_and_soon_are_all_acknowledged_with_the_level_and_stored() {
    let spins = [None, Some(Duration::from_micros(50))];
    for (level, spin) in [Level::Fsync, Level::Os]
        .into_iter()
        .flat_map(|level| spins.map(|spin| (level, spin)))
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(dir.path(), level).expect("open");
        let writer = Arc::new(Writer::start(store, spin).expect("writer"));
        let mut q = Queue::new(QueueLimits::default(), 1);
        let mut acks = Vec::new();
        for (i, op) in submit_n(&mut q, 200).into_iter().enumerate() {
            let writer = Arc::clone(&writer);
            let next_id = q.next_id();
            let flush = if i % 2 == 0 { Flush::Now } else { Flush::Soon };
            acks.push(tokio::spawn(async move {
                writer.commit(next_id, vec![op], flush).await
            }));
        }
        for ack in acks {
            let level_acked = tokio::time::timeout(WAIT, ack)
                .await
                .expect("in time")
                .expect("task")
                .expect("ack");
            assert_eq!(level_acked, level);
        }
        drop(writer);
        // Checkpointed at the writer's stop: redb holds them without the log.
        std::fs::remove_file(dir.path().join(WAL_FILE)).expect("rm");
        let loaded = reopen(dir.path(), level);
        assert_eq!(loaded.jobs.len(), 200, "{level:?} spin {spin:?}");
        assert_eq!(loaded.next_id, 201);
    }
}

#[test]
fn a_reopened_queue_requeues_what_was_running_and_keeps_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = Store::open(dir.path(), Level::Fsync).expect("open");
    let mut q = Queue::new(QueueLimits::default(), 1);
    let mut ops = submit_n(&mut q, 2);
    let (later, fx) = q
        .submit(
            now(),
            "m".into(),
            vec![0x90],
            JobOptions::default().with_delay(now(), Duration::from_secs(60)),
        )
        .expect("submit");
    ops.extend(fx.persist);
    let (d, fx) = q.next_dispatch("w1").expect("ready");
    ops.extend(fx.persist);
    store.commit(q.next_id(), ops).expect("commit");
    drop(store);

    let (mut store, loaded) = Store::open(dir.path(), Level::Fsync).expect("reopen");
    let (mut q2, fx) = Queue::restore(
        QueueLimits::default(),
        2,
        loaded.jobs,
        loaded.next_id,
        now(),
    );
    store.commit(q2.next_id(), fx.persist).expect("commit");
    let job = q2.get(d.id).expect("job");
    assert_eq!((job.state.name(), job.attempts), (StateName::Queued, 1));
    assert_eq!(
        q2.get(later).expect("job").state.name(),
        StateName::Scheduled
    );
    let (again, fx) = q2.next_dispatch("w2").expect("requeued");
    assert_eq!((again.id, again.attempt), (d.id, 2));
    store.commit(q2.next_id(), fx.persist).expect("commit");
    let fx = q2
        .finish(now(), again.id, again.lease, Outcome::Ok(vec![0xc3]))
        .expect("finish");
    store.commit(q2.next_id(), fx.persist).expect("commit");
    drop(store);
    let loaded = reopen(dir.path(), Level::Fsync);
    let job = loaded.jobs.iter().find(|j| j.id == d.id).expect("job");
    assert!(matches!(&job.state, JobState::Succeeded { result, .. } if result == &vec![0xc3]));
}
