//! Keeps the queue's records on disk: a redb database (`jobs.redb`) written by one writer
//! thread with group commit, at one of two durability levels, and read back whole when the
//! queue opens.
//!
//! **Levels.** [`Level::Fsync`] (the default) commits each group with
//! `redb::Durability::Immediate`: acknowledged jobs survive a power loss. [`Level::Os`]
//! must survive a kill -9 of the process (not a power loss) without an fsync per group.
//! redb's `Durability::None` does not give that: its documentation says such commits are
//! not persisted unless an `Immediate` commit follows, and `tests/store_kill.rs` shows it (a
//! child commits 99 non-durable transactions after one durable one and is SIGKILLed; on
//! reopen only the durable one is there, with redb 4.6). So at the `os` level each group is
//! first appended to a journal file (`jobs.journal`) with one write(2) and no fsync, which
//! the kernel keeps through the process's death, then committed to redb with
//! `Durability::None`; a checkpoint (an `Immediate` commit, then the journal truncated)
//! runs when the journal passes [`CHECKPOINT_BYTES`], when the writer is idle for
//! [`CHECKPOINT_IDLE`] and when it stops. Opening the store replays the journal into redb
//! (puts and deletes of whole records, so replaying one already applied is harmless) and
//! checkpoints. A journal frame is length, checksum, MessagePack; a torn last frame is a
//! group that was never acknowledged (the ack follows the write) and is dropped, a bad
//! frame with more after it is corruption and refuses the open.
//!
//! **Format.** A `meta` table holds the format version ([`FORMAT`]) and the next job id. A
//! store of another version, a file redb cannot read, or a record that does not decode is a
//! [`StoreError`] at open, never a panic, never a silent skip.
//!
//! An ack is sent only after its group is committed at the store's level; a group whose
//! commit fails fails every waiter, and the writer refuses everything after it
//! ([`StoreError::Stopped`]): the queue in memory is then ahead of the disk, so it must not
//! go on as if it were not.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::queue::{Job, JobId, Persist};

/// The store's format version, kept in its `meta` table.
pub const FORMAT: u64 = 1;
/// Journal size past which the `os` level checkpoints.
pub const CHECKPOINT_BYTES: u64 = 4 * 1024 * 1024;
/// Idle time after which the `os` level checkpoints a journal that is not empty.
pub const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_FORMAT: &str = "format";
const META_NEXT_ID: &str = "next_id";
const DB_FILE: &str = "jobs.redb";
const JOURNAL_FILE: &str = "jobs.journal";
/// Frame header: payload length (u32 LE), then its checksum (u64 LE).
const FRAME_HEADER: usize = 12;

/// How durable an acknowledged job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    /// On disk through an fsync: survives a power loss.
    #[default]
    Fsync,
    /// In the operating system's page cache: survives a kill of the process, not a power
    /// loss.
    Os,
}

impl Level {
    /// The level's name, as stated in every ack (`fsync`, `os`).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Fsync => "fsync",
            Self::Os => "os",
        }
    }

    /// The level named `name`.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "fsync" => Some(Self::Fsync),
            "os" => Some(Self::Os),
            _ => None,
        }
    }
}

/// Why the store cannot open or commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store's directory or journal could not be read or written.
    #[error("job store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// redb refused: the file is not a database it can read, or a transaction failed.
    #[error("job store {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: Arc<redb::Error>,
    },
    /// The store was written in another format.
    #[error("job store {path} has format {found:?}, this build reads format {FORMAT}")]
    Version {
        /// The database file.
        path: PathBuf,
        /// The format it holds (`None`: a redb file without zmesh's `meta` table).
        found: Option<u64>,
    },
    /// A record or journal frame does not decode.
    #[error("job store {path} is corrupt: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What does not decode.
        what: String,
    },
    /// An earlier commit failed, or the writer has stopped.
    #[error("the job store's writer has stopped after an error; reopen the queue")]
    Stopped,
}

/// What the store held when it opened.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every job record, by id.
    pub jobs: Vec<Job>,
    /// The first id not yet used.
    pub next_id: u64,
}

/// One group in the journal: what a commit wrote.
#[derive(Debug, Serialize, Deserialize)]
struct Group {
    next_id: u64,
    ops: Vec<Op>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Put(Box<Job>),
    Delete(JobId),
}

impl From<Persist> for Op {
    fn from(p: Persist) -> Self {
        match p {
            Persist::Put(job) => Op::Put(job),
            Persist::Delete(id) => Op::Delete(id),
        }
    }
}

/// FNV-1a, 64 bits: enough to tell a torn or overwritten frame from a whole one (the
/// journal guards against crashes, not against an adversary).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The store: redb, and at the `os` level its journal.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    level: Level,
    journal: Option<Journal>,
}

#[derive(Debug)]
struct Journal {
    file: File,
    path: PathBuf,
    len: u64,
}

impl Store {
    /// Opens (or creates) the store in `dir` at `level`, replays a journal left by a
    /// previous process, and reads every record.
    ///
    /// # Errors
    /// [`StoreError`]: the directory, a file redb cannot read, another format, a record
    /// or journal frame that does not decode.
    pub fn open(dir: &Path, level: Level) -> Result<(Self, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(DB_FILE);
        let db_err = |e: redb::Error| StoreError::Database {
            path: path.clone(),
            source: Arc::new(e),
        };
        let db = Database::create(&path).map_err(|e| db_err(e.into()))?;
        let mut store = Self {
            db,
            path: path.clone(),
            level,
            journal: None,
        };
        store.check_format()?;
        // A journal is replayed whatever this open's level: a queue reopened at `fsync`
        // after running at `os` must not lose what the `os` run acknowledged.
        let journal_path = dir.join(JOURNAL_FILE);
        if journal_path.exists() {
            let groups = read_journal(&journal_path)?;
            store.apply(groups, Durability::Immediate)?;
            File::create(&journal_path).map_err(|e| io(&journal_path, e))?;
        }
        if level == Level::Os {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&journal_path)
                .map_err(|e| io(&journal_path, e))?;
            store.journal = Some(Journal {
                file,
                path: journal_path,
                len: 0,
            });
        }
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    /// The store's level.
    #[must_use]
    pub fn level(&self) -> Level {
        self.level
    }

    /// Checks the format version, writing it into a new store.
    fn check_format(&mut self) -> Result<(), StoreError> {
        let found = {
            let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
            match tx.open_table(META) {
                Ok(meta) => meta
                    .get(META_FORMAT)
                    .map_err(|e| self.db_err(e))?
                    .map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    // A new file has no table at all; a redb file with other tables is
                    // someone else's.
                    let tables = tx.list_tables().map_err(|e| self.db_err(e))?.count();
                    if tables > 0 {
                        return Err(StoreError::Version {
                            path: self.path.clone(),
                            found: None,
                        });
                    }
                    let mut tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
                    tx.set_durability(Durability::Immediate)
                        .map_err(|e| self.db_err(e))?;
                    {
                        let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
                        meta.insert(META_FORMAT, FORMAT)
                            .map_err(|e| self.db_err(e))?;
                        meta.insert(META_NEXT_ID, 1).map_err(|e| self.db_err(e))?;
                        tx.open_table(JOBS).map_err(|e| self.db_err(e))?;
                    }
                    tx.commit().map_err(|e| self.db_err(e))?;
                    Some(FORMAT)
                }
                Err(e) => return Err(self.db_err(e)),
            }
        };
        if found != Some(FORMAT) {
            return Err(StoreError::Version {
                path: self.path.clone(),
                found,
            });
        }
        Ok(())
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let next_id = tx
            .open_table(META)
            .map_err(|e| self.db_err(e))?
            .get(META_NEXT_ID)
            .map_err(|e| self.db_err(e))?
            .map_or(1, |v| v.value());
        let table = tx.open_table(JOBS).map_err(|e| self.db_err(e))?;
        let mut jobs = Vec::with_capacity(usize::try_from(table.len().unwrap_or(0)).unwrap_or(0));
        for row in table.iter().map_err(|e| self.db_err(e))? {
            let (id, bytes) = row.map_err(|e| self.db_err(e))?;
            let job: Job =
                rmp_serde::from_slice(bytes.value()).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("job record {}: {e}", id.value()),
                })?;
            if job.id.0 != id.value() {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    what: format!("job record {} holds job {}", id.value(), job.id),
                });
            }
            jobs.push(job);
        }
        Ok(Loaded { jobs, next_id })
    }

    /// Commits one group: every operation of every request in it, in order, in one
    /// transaction at the store's level.
    ///
    /// # Errors
    /// [`StoreError`] from the journal or redb.
    pub fn commit(&mut self, next_id: u64, ops: Vec<Persist>) -> Result<(), StoreError> {
        let group = Group {
            next_id,
            ops: ops.into_iter().map(Op::from).collect(),
        };
        match &mut self.journal {
            None => self.apply(vec![group], Durability::Immediate),
            Some(journal) => {
                journal.append(&group)?;
                self.apply(vec![group], Durability::None)?;
                if self
                    .journal
                    .as_ref()
                    .is_some_and(|j| j.len >= CHECKPOINT_BYTES)
                {
                    self.checkpoint()?;
                }
                Ok(())
            }
        }
    }

    /// At the `os` level, makes redb's commits durable and empties the journal.
    ///
    /// # Errors
    /// [`StoreError`] from redb or the journal.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        if journal.len == 0 {
            return Ok(());
        }
        self.apply(Vec::new(), Durability::Immediate)?;
        if let Some(journal) = &mut self.journal {
            journal.file.set_len(0).map_err(|e| io(&journal.path, e))?;
            journal.len = 0;
        }
        Ok(())
    }

    fn apply(&self, groups: Vec<Group>, durability: Durability) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        tx.set_durability(durability).map_err(|e| self.db_err(e))?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(|e| self.db_err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            let mut next_id = None;
            for group in groups {
                next_id = Some(group.next_id);
                for op in group.ops {
                    match op {
                        Op::Put(job) => {
                            let bytes =
                                rmp_serde::to_vec(&job).map_err(|e| StoreError::Corrupt {
                                    path: self.path.clone(),
                                    what: format!("job {} does not encode: {e}", job.id),
                                })?;
                            jobs.insert(job.id.0, bytes.as_slice())
                                .map_err(|e| self.db_err(e))?;
                        }
                        Op::Delete(id) => {
                            jobs.remove(id.0).map_err(|e| self.db_err(e))?;
                        }
                    }
                }
            }
            if let Some(next_id) = next_id {
                meta.insert(META_NEXT_ID, next_id)
                    .map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source: Arc::new(e.into()),
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source: Arc::new(e),
    }
}

impl Journal {
    /// Appends one frame with a single write(2): the kernel has it once this returns.
    fn append(&mut self, group: &Group) -> Result<(), StoreError> {
        let payload = rmp_serde::to_vec(group).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("a journal group does not encode: {e}"),
        })?;
        let len = u32::try_from(payload.len()).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            what: "a journal group over 4 GiB".into(),
        })?;
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&checksum(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.file.write_all(&frame).map_err(|e| io(&self.path, e))?;
        self.len += frame.len() as u64;
        Ok(())
    }
}

/// Reads every whole frame of a journal; a torn last frame is dropped (never acknowledged),
/// a bad frame with data after it is corruption.
fn read_journal(path: &Path) -> Result<Vec<Group>, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io(path, e))?;
    let corrupt = |what: String| StoreError::Corrupt {
        path: path.to_owned(),
        what,
    };
    let mut groups = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let whole = rest.len() >= FRAME_HEADER && {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            rest.len() >= FRAME_HEADER + len
        };
        if !whole {
            tracing::warn!(path = %path.display(), offset = at, "dropping a torn last journal frame (never acknowledged)");
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&rest[4..FRAME_HEADER]);
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        let end = at + FRAME_HEADER + len;
        if checksum(payload) != u64::from_le_bytes(sum) {
            if end == bytes.len() {
                tracing::warn!(path = %path.display(), offset = at, "dropping a torn last journal frame (never acknowledged)");
                break;
            }
            return Err(corrupt(format!(
                "journal frame at byte {at} fails its checksum"
            )));
        }
        let group: Group = rmp_serde::from_slice(payload)
            .map_err(|e| corrupt(format!("journal frame at byte {at}: {e}")))?;
        groups.push(group);
        at = end;
    }
    Ok(groups)
}

/// A request to the writer: operations to commit, and who waits for the ack.
#[derive(Debug)]
struct Request {
    next_id: u64,
    ops: Vec<Persist>,
    ack: oneshot::Sender<Result<Level, StoreError>>,
}

/// The one writer: a thread that owns the [`Store`], takes every request waiting in its
/// channel as one group, commits the group in one transaction and then acks each request.
/// Many concurrent submissions therefore share one fsync.
#[derive(Debug)]
pub struct Writer {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    level: Level,
}

impl Writer {
    /// Starts the writer thread over `store`.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(store: Store) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let level = store.level();
        let thread = std::thread::Builder::new()
            .name("zmesh-jobs-writer".into())
            .spawn(move || write_loop(store, &rx))
            .map_err(|e| io(Path::new("zmesh-jobs-writer thread"), e))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            level,
        })
    }

    /// The level every ack states.
    #[must_use]
    pub fn level(&self) -> Level {
        self.level
    }

    /// Sends `ops` (with the queue's next id) to the writer at once, and answers a future
    /// that resolves once they are committed at the store's level, with that level. The send
    /// happens here, not when the future is first polled: a caller that sends while it holds
    /// the queue's lock has its commits reach the writer in the queue's order.
    ///
    /// # Errors
    /// The future's: [`StoreError`] from the group's commit, or [`StoreError::Stopped`].
    pub fn commit(
        &self,
        next_id: u64,
        ops: Vec<Persist>,
    ) -> impl Future<Output = Result<Level, StoreError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Request { next_id, ops, ack }).is_ok());
        async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            done.await.map_err(|_| StoreError::Stopped)?
        }
    }

    /// Stops the writer after the requests already sent, checkpointing the journal.
    pub fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the job store's writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes `first` and every request already waiting: one group.
fn drain(first: Request, rx: &mpsc::Receiver<Request>) -> Vec<Request> {
    let mut group = vec![first];
    group.extend(rx.try_iter());
    group
}

fn write_loop(mut store: Store, rx: &mpsc::Receiver<Request>) {
    let mut failed = false;
    loop {
        let first = match rx.recv_timeout(CHECKPOINT_IDLE) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !failed && let Err(e) = store.checkpoint() {
                    tracing::error!(error = %e, "job store checkpoint failed");
                    failed = true;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let group = drain(first, rx);
        if failed {
            for r in group {
                let _ = r.ack.send(Err(StoreError::Stopped));
            }
            continue;
        }
        let next_id = group.iter().map(|r| r.next_id).max().unwrap_or(1);
        let mut ops = Vec::new();
        let mut acks = Vec::with_capacity(group.len());
        for r in group {
            ops.extend(r.ops);
            acks.push(r.ack);
        }
        let result = store.commit(next_id, ops).map(|()| store.level());
        if let Err(e) = &result {
            tracing::error!(error = %e, "job store commit failed; the writer stops");
            failed = true;
        }
        for ack in acks {
            // A waiter that went away (its caller gave up) needs no answer.
            let _ = ack.send(result.clone());
        }
    }
    if !failed && let Err(e) = store.checkpoint() {
        tracing::error!(error = %e, "job store checkpoint at stop failed");
    }
}

#[cfg(test)]
mod tests;
