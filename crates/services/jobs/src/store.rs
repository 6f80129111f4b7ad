//! Keeps the queue's records on disk: a write-ahead log (`jobs.wal`) that every group of
//! changes is appended to before it is acknowledged, and a redb database (`jobs.redb`) that
//! the log is checkpointed into; one writer thread with group commit; read back whole when
//! the queue opens.
//!
//! **Why a log in front of redb.** A redb commit rewrites B-tree pages and, when durable,
//! syncs the file more than once: on this project's VM an `Immediate` commit of a few records
//! cost about 500 us, an append to a preallocated file plus one `fdatasync` about 115 us.
//! And redb's non-durable commits (`Durability::None`) do not survive a kill -9 at all: its
//! documentation says they are not persisted unless an `Immediate` commit follows, and
//! `tests/store_kill.rs` shows it (99 such commits after a durable one, the process
//! SIGKILLed: only the durable one is there, with redb 4.6). So every group is one frame
//! written with one `pwrite(2)` into the log, the queue's only write on the ack path, and
//! redb receives the changes later, coalesced by job, in one `Immediate` transaction per
//! checkpoint.
//!
//! **Levels.** [`Level::Fsync`] (the default) follows each group's write with an
//! `fdatasync`: acknowledged jobs survive a power loss. [`Level::Os`] does not: the kernel
//! holds the write, so acknowledged jobs survive a kill -9 of the process, not a power loss.
//!
//! **The log.** A file of [`WAL_BYTES`] written with zeros when created, so a frame's write
//! and sync never change the file's size or extents (no metadata to sync). A frame is
//! length, the log's epoch, a checksum of both and the payload, then the payload
//! (MessagePack of the group's operations). A checkpoint commits every change since the last one to
//! redb together with the next epoch, then writes from the start of the file again: frames
//! of older epochs still in the file are ignored, so nothing is erased or truncated. It runs
//! when the next frame does not fit, when the writer is idle for [`CHECKPOINT_IDLE`] and
//! when it stops. Opening the store replays the frames of redb's epoch (puts and deletes of
//! whole records, so replaying one already applied is harmless) and checkpoints. The first
//! frame that is not whole ends the log: a torn last write was never acknowledged (the ack
//! follows the write) and is dropped; a bad frame followed by a whole frame of the same
//! epoch is corruption and refuses the open. A `jobs.journal` left by the previous layout
//! (append-only, the `os` level only) is replayed once and removed.
//!
//! **Format.** A `meta` table holds the format version ([`FORMAT`]), the next job id and the
//! log's epoch. A store of another version, a file redb cannot read, or a record that does
//! not decode is a [`StoreError`] at open, never a panic, never a silent skip.
//!
//! An ack is sent only after its group is written at the store's level; a group whose
//! write fails fails every waiter, and the writer refuses everything after it
//! ([`StoreError::Stopped`]): the queue in memory is then ahead of the disk, so it must not
//! go on as if it were not.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::queue::{Job, JobId, Persist};

/// The store's format version, kept in its `meta` table.
pub const FORMAT: u64 = 1;
/// The log's size: the changes a checkpoint takes at most (a larger group grows the file).
pub const WAL_BYTES: u64 = 8 * 1024 * 1024;
/// Idle time after which the writer checkpoints a log that holds changes.
pub const CHECKPOINT_IDLE: Duration = Duration::from_secs(1);
/// At [`Level::Fsync`], the longest a group written with [`Flush::Soon`] waits for its sync.
pub const SYNC_LAG: Duration = Duration::from_millis(10);
/// Spin turns between two readings of the clock.
const SPIN_CLOCK_EVERY: u32 = 64;

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_FORMAT: &str = "format";
const META_NEXT_ID: &str = "next_id";
const META_EPOCH: &str = "wal_epoch";
const DB_FILE: &str = "jobs.redb";
const WAL_FILE: &str = "jobs.wal";
/// The previous layout's append-only journal, replayed once if found.
const LEGACY_JOURNAL_FILE: &str = "jobs.journal";
/// Frame header: payload length (u32 LE), epoch (u64 LE), checksum of those and the payload
/// (u64 LE).
const FRAME_HEADER: usize = 20;
/// The legacy journal's frame header: length (u32 LE), checksum of the payload (u64 LE).
const LEGACY_FRAME_HEADER: usize = 12;

/// When a group must be at the store's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Before its ack: a submission, a cancel, a replay, whatever a caller is told is done.
    Now,
    /// Within [`SYNC_LAG`], or with the next [`Flush::Now`] group (the log is written in
    /// order, so one sync covers every frame before it): a job's own progress, an attempt
    /// starting or ending, which a power loss may undo only by running the attempt again.
    /// At-least-once allows that, and a sync per attempt would double the syncs per job.
    Soon,
}

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
    /// The store's directory or log could not be read or written.
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
    /// A record or log frame does not decode.
    #[error("job store {path} is corrupt: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What does not decode.
        what: String,
    },
    /// An earlier write failed, or the writer has stopped.
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

/// One group in the log: what a commit wrote.
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

/// FNV-1a, 64 bits, over `parts` in order: enough to tell a torn or overwritten frame from
/// a whole one (the log guards against crashes, not against an adversary).
fn checksum(parts: &[&[u8]]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.iter())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The store: the log, and redb behind it.
#[derive(Debug)]
pub struct Store {
    db: Db,
    level: Level,
    wal: Wal,
    /// The changes written to the log since the last checkpoint, the last one of each job:
    /// what the next checkpoint commits to redb. Bounded by the log's size.
    pending: BTreeMap<u64, Op>,
    /// The next id as of the last group written since the last checkpoint.
    pending_next_id: Option<u64>,
    /// fdatasyncs of the log so far, shared with the [`Writer`]'s owner.
    syncs: Arc<AtomicU64>,
    /// The frame being written, kept between groups: a group of 64 submissions encodes
    /// into tens of kilobytes, and growing a new vector for each one (reallocating and
    /// copying as it doubles) cost about a tenth of the queue's CPU.
    frame: Vec<u8>,
}

/// The database file and the name its errors carry.
#[derive(Debug)]
struct Db {
    db: Database,
    path: PathBuf,
}

/// The write-ahead log: one preallocated file, written from its start in each epoch.
#[derive(Debug)]
struct Wal {
    file: File,
    path: PathBuf,
    /// Frames of this epoch are the log; redb's `meta` holds it.
    epoch: u64,
    /// Where the next frame goes.
    at: u64,
    /// The file's size.
    size: u64,
}

/// The largest frame buffer kept for the next group.
const FRAME_KEEP: usize = 1 << 20;

/// Frames start at multiples of this, so finding every frame after a bad one (to tell
/// corruption from a torn last write) looks at one offset in 512, not at every byte.
const FRAME_ALIGN: u64 = 512;

impl Store {
    /// Opens (or creates) the store in `dir` at `level`, replays the log (and a journal of
    /// the previous layout) left by a previous process, and reads every record.
    ///
    /// # Errors
    /// [`StoreError`]: the directory, a file redb cannot read, another format, a record
    /// or log frame that does not decode.
    pub fn open(dir: &Path, level: Level) -> Result<(Self, Loaded), StoreError> {
        Self::open_sized(dir, level, WAL_BYTES)
    }

    /// [`Store::open`] with a log of `wal_bytes` (the tests' small logs fill quickly).
    fn open_sized(dir: &Path, level: Level, wal_bytes: u64) -> Result<(Self, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(DB_FILE);
        let database = Database::create(&path).map_err(|e| StoreError::Database {
            path: path.clone(),
            source: Arc::new(e.into()),
        })?;
        let db = Db { db: database, path };
        db.check_format()?;
        let epoch = db.epoch()?;
        let (wal, bytes) = Wal::open(&dir.join(WAL_FILE), epoch, wal_bytes)?;
        let mut store = Self {
            db,
            level,
            wal,
            pending: BTreeMap::new(),
            pending_next_id: None,
            syncs: Arc::new(AtomicU64::new(0)),
            frame: Vec::new(),
        };
        // Both are replayed whatever this open's level: a queue reopened at `fsync` after
        // running at `os` must not lose what the `os` run acknowledged.
        let legacy = dir.join(LEGACY_JOURNAL_FILE);
        let legacy_found = legacy.exists();
        if legacy_found {
            store.stage(read_legacy_journal(&legacy)?);
        }
        store.stage(read_wal(&bytes, epoch, &store.wal.path)?);
        store.checkpoint()?;
        if legacy_found {
            std::fs::remove_file(&legacy).map_err(|e| io(&legacy, e))?;
        }
        let loaded = store.db.load()?;
        Ok((store, loaded))
    }

    /// The store's level.
    #[must_use]
    pub fn level(&self) -> Level {
        self.level
    }

    /// Writes one group to the log and syncs it: the group is at the store's level once
    /// this returns.
    ///
    /// # Errors
    /// [`StoreError`] from the log, or from redb when it checkpoints.
    pub fn commit(&mut self, next_id: u64, ops: Vec<Persist>) -> Result<(), StoreError> {
        self.write(next_id, ops)?;
        self.sync()
    }

    /// At [`Level::Fsync`], syncs every frame written so far (an fdatasync); at
    /// [`Level::Os`] there is nothing to do.
    ///
    /// # Errors
    /// [`StoreError`] from the log.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.level == Level::Fsync {
            self.wal
                .file
                .sync_data()
                .map_err(|e| io(&self.wal.path, e))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes one group to the log, every operation of every request in it in order, with
    /// one pwrite(2): the kernel has it, which is the [`Level::Os`] promise; [`Store::sync`]
    /// makes it the [`Level::Fsync`] one. Checkpoints first when the group does not fit.
    ///
    /// # Errors
    /// [`StoreError`] from the log, or from redb when it checkpoints.
    pub fn write(&mut self, next_id: u64, ops: Vec<Persist>) -> Result<(), StoreError> {
        let group = Group {
            next_id,
            ops: ops.into_iter().map(Op::from).collect(),
        };
        let mut frame = std::mem::take(&mut self.frame);
        let written = self.write_frame(&mut frame, &group);
        // A rare huge group (large arguments or results) does not pin its memory.
        if frame.capacity() <= FRAME_KEEP {
            self.frame = frame;
        }
        written?;
        self.stage(vec![group]);
        Ok(())
    }

    /// Encodes `group` into `frame` (after room for the header) and appends it to the log.
    fn write_frame(&mut self, frame: &mut Vec<u8>, group: &Group) -> Result<(), StoreError> {
        frame.clear();
        frame.resize(FRAME_HEADER, 0);
        rmp_serde::encode::write(frame, group).map_err(|e| StoreError::Corrupt {
            path: self.wal.path.clone(),
            what: format!("a log group does not encode: {e}"),
        })?;
        if !self.wal.fits(frame.len() - FRAME_HEADER) {
            self.checkpoint()?;
        }
        self.wal.append(frame)
    }

    /// Commits every change since the last checkpoint to redb with an fsync, with the log's
    /// next epoch, so the log starts again from its beginning.
    ///
    /// # Errors
    /// [`StoreError`] from redb.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        if self.wal.at == 0 && self.pending.is_empty() {
            return Ok(());
        }
        let epoch = self.wal.epoch + 1;
        let ops = std::mem::take(&mut self.pending);
        self.db.apply(ops, self.pending_next_id.take(), epoch)?;
        self.wal.epoch = epoch;
        self.wal.at = 0;
        Ok(())
    }

    /// Keeps `groups`' changes for the next checkpoint, the last of each job.
    fn stage(&mut self, groups: Vec<Group>) {
        for group in groups {
            self.pending_next_id = Some(self.pending_next_id.unwrap_or(0).max(group.next_id));
            for op in group.ops {
                self.pending.insert(op.id().0, op);
            }
        }
    }
}

impl Op {
    fn id(&self) -> JobId {
        match self {
            Op::Put(job) => job.id,
            Op::Delete(id) => *id,
        }
    }
}

impl Db {
    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source: Arc::new(e.into()),
        }
    }

    /// Checks the format version, writing it into a new store.
    fn check_format(&self) -> Result<(), StoreError> {
        let found = {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            match tx.open_table(META) {
                Ok(meta) => meta
                    .get(META_FORMAT)
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    // A new file has no table at all; a redb file with other tables is
                    // someone else's.
                    let tables = tx.list_tables().map_err(|e| self.err(e))?.count();
                    if tables > 0 {
                        return Err(StoreError::Version {
                            path: self.path.clone(),
                            found: None,
                        });
                    }
                    let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
                    tx.set_durability(Durability::Immediate)
                        .map_err(|e| self.err(e))?;
                    {
                        let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
                        meta.insert(META_FORMAT, FORMAT).map_err(|e| self.err(e))?;
                        meta.insert(META_NEXT_ID, 1).map_err(|e| self.err(e))?;
                        tx.open_table(JOBS).map_err(|e| self.err(e))?;
                    }
                    tx.commit().map_err(|e| self.err(e))?;
                    Some(FORMAT)
                }
                Err(e) => return Err(self.err(e)),
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

    /// The log's epoch (0 in a store that has never checkpointed one).
    fn epoch(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta
            .get(META_EPOCH)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value()))
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let next_id = tx
            .open_table(META)
            .map_err(|e| self.err(e))?
            .get(META_NEXT_ID)
            .map_err(|e| self.err(e))?
            .map_or(1, |v| v.value());
        let table = tx.open_table(JOBS).map_err(|e| self.err(e))?;
        let mut jobs = Vec::with_capacity(usize::try_from(table.len().unwrap_or(0)).unwrap_or(0));
        for row in table.iter().map_err(|e| self.err(e))? {
            let (id, bytes) = row.map_err(|e| self.err(e))?;
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

    /// Commits `ops`, the next id and the log's new `epoch` in one transaction with an
    /// fsync.
    fn apply(
        &self,
        ops: BTreeMap<u64, Op>,
        next_id: Option<u64>,
        epoch: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut jobs = tx.open_table(JOBS).map_err(|e| self.err(e))?;
            // One buffer for every record of the checkpoint.
            let mut bytes = Vec::new();
            for op in ops.into_values() {
                match op {
                    Op::Put(job) => {
                        bytes.clear();
                        rmp_serde::encode::write(&mut bytes, &job).map_err(|e| {
                            StoreError::Corrupt {
                                path: self.path.clone(),
                                what: format!("job {} does not encode: {e}", job.id),
                            }
                        })?;
                        jobs.insert(job.id.0, bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Delete(id) => {
                        jobs.remove(id.0).map_err(|e| self.err(e))?;
                    }
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            if let Some(next_id) = next_id {
                meta.insert(META_NEXT_ID, next_id)
                    .map_err(|e| self.err(e))?;
            }
            meta.insert(META_EPOCH, epoch).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source: Arc::new(e),
    }
}

/// Makes `frame` (room for the header, then the payload) a frame as written: the header
/// filled in, zeros up to the next [`FRAME_ALIGN`].
fn seal_frame(epoch: u64, frame: &mut Vec<u8>) {
    let payload = &frame[FRAME_HEADER..];
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let epoch = epoch.to_le_bytes();
    let sum = checksum(&[&len, &epoch, payload]).to_le_bytes();
    frame[..4].copy_from_slice(&len);
    frame[4..12].copy_from_slice(&epoch);
    frame[12..FRAME_HEADER].copy_from_slice(&sum);
    let padded = frame.len().next_multiple_of(FRAME_ALIGN as usize);
    frame.resize(padded, 0);
}

/// The payload of the whole frame of `epoch` at the start of `rest`, if there is one, and
/// the bytes it takes with its padding.
fn frame_at(rest: &[u8], epoch: u64) -> Option<(&[u8], usize)> {
    let header = rest.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if header[4..12] != epoch.to_le_bytes() {
        return None;
    }
    let payload = rest.get(FRAME_HEADER..FRAME_HEADER + len)?;
    let sum = u64::from_le_bytes(header[12..20].try_into().ok()?);
    (checksum(&[&header[..4], &header[4..12], payload]) == sum).then(|| {
        (
            payload,
            (FRAME_HEADER + len).next_multiple_of(FRAME_ALIGN as usize),
        )
    })
}

impl Wal {
    /// Opens the log at `path`, creating it full of zeros, and answers it with its bytes.
    fn open(path: &Path, epoch: u64, size: u64) -> Result<(Self, Vec<u8>), StoreError> {
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| io(path, e))?;
        let len = bytes.len() as u64;
        if len < size {
            // Real zeros, not a hole: a frame's write then allocates nothing, so its
            // fdatasync has no metadata to write.
            let zeros = vec![0u8; usize::try_from(size - len).unwrap_or(0)];
            file.write_all_at(&zeros, len).map_err(|e| io(path, e))?;
            file.sync_all().map_err(|e| io(path, e))?;
        }
        if created && let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io(dir, e))?;
        }
        let wal = Self {
            file,
            path: path.to_owned(),
            epoch,
            at: 0,
            size: size.max(len),
        };
        Ok((wal, bytes))
    }

    /// Whether a frame of `payload_len` fits after what this epoch has written (a frame
    /// larger than the whole log is written at its start, growing the file).
    fn fits(&self, payload_len: usize) -> bool {
        let taken = (FRAME_HEADER + payload_len).next_multiple_of(FRAME_ALIGN as usize);
        self.at == 0 || self.at + taken as u64 <= self.size
    }

    /// Writes one frame (room for its header, then its payload) with a single pwrite(2).
    fn append(&mut self, frame: &mut Vec<u8>) -> Result<(), StoreError> {
        if u32::try_from(frame.len() - FRAME_HEADER).is_err() {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                what: "a log group over 4 GiB".into(),
            });
        }
        seal_frame(self.epoch, frame);
        self.file
            .write_all_at(frame, self.at)
            .map_err(|e| io(&self.path, e))?;
        self.at += frame.len() as u64;
        self.size = self.size.max(self.at);
        Ok(())
    }
}

/// The groups of `epoch` in a log's `bytes`, from its start to the first frame that is not
/// whole. That frame is a torn last write (never acknowledged) unless a whole frame of the
/// same epoch follows it somewhere: then it is corruption.
fn read_wal(bytes: &[u8], epoch: u64, path: &Path) -> Result<Vec<Group>, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt {
        path: path.to_owned(),
        what,
    };
    let mut groups = Vec::new();
    let mut at = 0;
    while let Some((payload, taken)) = frame_at(&bytes[at..], epoch) {
        let group: Group = rmp_serde::from_slice(payload)
            .map_err(|e| corrupt(format!("log frame at byte {at}: {e}")))?;
        groups.push(group);
        at = (at + taken).min(bytes.len());
    }
    let align = FRAME_ALIGN as usize;
    let later = (at + align..bytes.len())
        .step_by(align)
        .find(|&p| frame_at(&bytes[p..], epoch).is_some());
    if let Some(later) = later {
        return Err(corrupt(format!(
            "log frame at byte {at} is damaged (its length, epoch or checksum), and a whole frame follows at byte {later}"
        )));
    }
    if bytes
        .get(at..at + FRAME_HEADER)
        .is_some_and(|h| h[4..12] == epoch.to_le_bytes())
    {
        tracing::warn!(path = %path.display(), offset = at, "dropping a torn last log frame (never acknowledged)");
    }
    Ok(groups)
}

/// Reads every whole frame of the previous layout's append-only journal; a torn last frame
/// is dropped (never acknowledged), a bad frame with data after it is corruption.
fn read_legacy_journal(path: &Path) -> Result<Vec<Group>, StoreError> {
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
        let len = rest
            .get(..4)
            .map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
        let Some(len) = len.filter(|len| rest.len() >= LEGACY_FRAME_HEADER + len) else {
            tracing::warn!(path = %path.display(), offset = at, "dropping a torn last journal frame (never acknowledged)");
            break;
        };
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&rest[4..LEGACY_FRAME_HEADER]);
        let payload = &rest[LEGACY_FRAME_HEADER..LEGACY_FRAME_HEADER + len];
        let end = at + LEGACY_FRAME_HEADER + len;
        if checksum(&[payload]) != u64::from_le_bytes(sum) {
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
    flush: Flush,
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
    syncs: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the writer thread over `store`. With `spin`, after each group the thread
    /// polls its channel for up to that long before it sleeps (see
    /// [`crate::JobsConfig::writer_spin`]).
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn start(store: Store, spin: Option<Duration>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let level = store.level();
        let syncs = Arc::clone(&store.syncs);
        let thread = std::thread::Builder::new()
            .name("zmesh-jobs-writer".into())
            .spawn(move || write_loop(store, &rx, spin))
            .map_err(|e| io(Path::new("zmesh-jobs-writer thread"), e))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            level,
            syncs,
        })
    }

    /// The log's fdatasyncs so far (always 0 at [`Level::Os`]): one per group with a
    /// [`Flush::Now`] request, one per [`SYNC_LAG`] for [`Flush::Soon`] groups alone.
    #[must_use]
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The level every ack states.
    #[must_use]
    pub fn level(&self) -> Level {
        self.level
    }

    /// Sends `ops` (with the queue's next id) to the writer at once, and answers a future
    /// that resolves, with the store's level, once they are at that level ([`Flush::Now`])
    /// or written ([`Flush::Soon`]). The send happens here, not when the future is first
    /// polled: a caller that sends while it holds the queue's lock has its commits reach the
    /// writer in the queue's order.
    ///
    /// # Errors
    /// The future's: [`StoreError`] from the group's write or sync, or
    /// [`StoreError::Stopped`].
    pub fn commit(
        &self,
        next_id: u64,
        ops: Vec<Persist>,
        flush: Flush,
    ) -> impl Future<Output = Result<Level, StoreError>> + Send + 'static {
        let (ack, done) = oneshot::channel();
        let request = Request {
            next_id,
            ops,
            flush,
            ack,
        };
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(request).is_ok());
        async move {
            if !sent {
                return Err(StoreError::Stopped);
            }
            done.await.map_err(|_| StoreError::Stopped)?
        }
    }

    /// Stops the writer after the requests already sent, checkpointing the log.
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

/// The next request, waiting up to `wait`; with `spin`, polling the channel for up to that
/// long first. A request that comes while the thread spins is taken without the thread
/// falling asleep and being woken, which on an idle machine costs about as much as the
/// write itself (see [`crate::JobsConfig::writer_spin`]).
fn next_request(
    rx: &mpsc::Receiver<Request>,
    wait: Duration,
    spin: Option<Duration>,
) -> Result<Request, mpsc::RecvTimeoutError> {
    let Some(spin) = spin.filter(|s| !s.is_zero()) else {
        return rx.recv_timeout(wait);
    };
    let started = Instant::now();
    let mut turns: u32 = 0;
    loop {
        match rx.try_recv() {
            Ok(request) => return Ok(request),
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(mpsc::RecvTimeoutError::Disconnected);
            }
            Err(mpsc::TryRecvError::Empty) => {}
        }
        turns = turns.wrapping_add(1);
        if turns.is_multiple_of(SPIN_CLOCK_EVERY) {
            let spent = started.elapsed();
            if spent >= spin.min(wait) {
                return rx.recv_timeout(wait.saturating_sub(spent));
            }
        }
        std::hint::spin_loop();
    }
}

fn write_loop(mut store: Store, rx: &mpsc::Receiver<Request>, spin: Option<Duration>) {
    let mut failed = false;
    // At `fsync`, when the oldest frame written without its sync was written.
    let mut unsynced: Option<Instant> = None;
    loop {
        let wait = unsynced.map_or(CHECKPOINT_IDLE, |at| SYNC_LAG.saturating_sub(at.elapsed()));
        // No spin after a failure: nothing more will be written.
        let spin = spin.filter(|_| !failed);
        let first = match next_request(rx, wait, spin) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // After a failure the store is left as it is: nothing more is written.
                if failed {
                    continue;
                }
                let done = if unsynced.take().is_some() {
                    store.sync()
                } else {
                    store.checkpoint()
                };
                if let Err(e) = done {
                    tracing::error!(error = %e, "job store sync or checkpoint failed");
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
        let sync = group.iter().any(|r| r.flush == Flush::Now)
            || unsynced.is_some_and(|at| at.elapsed() >= SYNC_LAG);
        let mut ops = Vec::new();
        let mut acks = Vec::with_capacity(group.len());
        for r in group {
            ops.extend(r.ops);
            acks.push(r.ack);
        }
        let result = store
            .write(next_id, ops)
            .and_then(|()| if sync { store.sync() } else { Ok(()) })
            .map(|()| store.level());
        match &result {
            Err(e) => {
                tracing::error!(error = %e, "job store write failed; the writer stops");
                failed = true;
            }
            Ok(_) if sync => unsynced = None,
            Ok(Level::Fsync) => {
                unsynced.get_or_insert_with(Instant::now);
            }
            Ok(Level::Os) => {}
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
