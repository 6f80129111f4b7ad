//! Provides the soak's bookkeeping: what every call through a `zmesh::Client` came to
//! (expected result, typed failure, lost, wrong), progress over time, and the counts the raw
//! hostile peers keep.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use zmesh::CallError;

/// How one call ended.
#[derive(Debug)]
pub enum Outcome {
    /// The expected result (a value, or the error the call is meant to provoke).
    Expected,
    /// A typed failure, by class (see [`class_of`]).
    Failed(String),
    /// A result or error that must not happen (wrong value, unexpected error kind).
    Wrong(String),
}

/// The class of a [`CallError`], for the report and the "clear error" check: the variant,
/// with the remote error's name for `Remote`.
pub fn class_of(error: &CallError) -> String {
    match error {
        CallError::Remote(e) => format!("Remote({})", e.name),
        CallError::PeerLost(_) => "PeerLost".into(),
        CallError::DeadlineExceeded(_) => "DeadlineExceeded".into(),
        CallError::Connect { .. } => "Connect".into(),
        CallError::MessageTooLarge { .. } => "MessageTooLarge".into(),
        CallError::Encode(_) => "Encode".into(),
        CallError::Decode(_) => "Decode".into(),
        CallError::Protocol(_) => "Protocol".into(),
        other => format!("other: {other}"),
    }
}

/// Failures a well-behaved call may meet while nodes are flooded, killed and restarted:
/// the node is gone or busy, and the error says which. Anything else (a protocol, decode or
/// unexpected remote error) is not a clear answer to a valid call and fails the soak.
pub fn is_clear_failure(class: &str) -> bool {
    matches!(
        class,
        "PeerLost" | "DeadlineExceeded" | "Connect" | "Remote(Overloaded)" | "Remote(Unavailable)"
    )
}

/// The record of one client (a task making calls through its own `zmesh::Client`).
#[derive(Debug)]
pub struct Tally {
    /// Calls started.
    pub calls: AtomicU64,
    /// Calls that ended as expected.
    pub expected: AtomicU64,
    /// Calls that did not resolve within their deadline plus grace.
    pub lost: AtomicU64,
    /// Typed failures by class.
    failed: Mutex<BTreeMap<String, u64>>,
    /// Wrong outcomes, with the first few descriptions.
    wrong: Mutex<Vec<String>>,
    wrong_count: AtomicU64,
    /// Expected outcomes per slice of the soak (progress over time).
    slices: Vec<AtomicU64>,
    started: Instant,
    slice_len: std::time::Duration,
}

impl Tally {
    /// A tally whose progress is counted in `slices` equal slices of `length` from `started`.
    pub fn new(started: Instant, length: std::time::Duration, slices: usize) -> Self {
        Self {
            calls: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            failed: Mutex::new(BTreeMap::new()),
            wrong: Mutex::new(Vec::new()),
            wrong_count: AtomicU64::new(0),
            slices: (0..slices).map(|_| AtomicU64::new(0)).collect(),
            started,
            slice_len: length / slices.max(1) as u32,
        }
    }

    /// Records a call's end.
    pub fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Expected => {
                self.expected.fetch_add(1, Ordering::Relaxed);
                let slice =
                    (self.started.elapsed().as_nanos() / self.slice_len.as_nanos().max(1)) as usize;
                if let Some(counter) = self.slices.get(slice.min(self.slices.len() - 1)) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Failed(class) => {
                *lock(&self.failed).entry(class).or_default() += 1;
            }
            Outcome::Wrong(what) => {
                self.wrong_count.fetch_add(1, Ordering::Relaxed);
                let mut wrong = lock(&self.wrong);
                if wrong.len() < 5 {
                    wrong.push(what);
                }
            }
        }
    }

    /// Records a call that never resolved.
    pub fn record_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the figures.
    pub fn snapshot(&self) -> TallySnapshot {
        TallySnapshot {
            calls: self.calls.load(Ordering::Relaxed),
            expected: self.expected.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            wrong: self.wrong_count.load(Ordering::Relaxed),
            wrong_examples: lock(&self.wrong).clone(),
            failed: lock(&self.failed).clone(),
            slices: self
                .slices
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned tally only means another client task panicked; its figures still count.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A tally's figures at one moment; snapshots of a class add up.
#[derive(Debug, Clone, Default)]
pub struct TallySnapshot {
    pub calls: u64,
    pub expected: u64,
    pub lost: u64,
    pub wrong: u64,
    pub wrong_examples: Vec<String>,
    pub failed: BTreeMap<String, u64>,
    pub slices: Vec<u64>,
}

impl TallySnapshot {
    /// Typed failures of all classes.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Failures outside [`is_clear_failure`] and outside `also_expected`.
    pub fn unclear(&self, also_expected: &[&str]) -> BTreeMap<String, u64> {
        self.failed
            .iter()
            .filter(|(class, _)| {
                !is_clear_failure(class) && !also_expected.contains(&class.as_str())
            })
            .map(|(class, n)| (class.clone(), *n))
            .collect()
    }

    /// The sum of several snapshots.
    pub fn sum<'a>(all: impl IntoIterator<Item = &'a TallySnapshot>) -> TallySnapshot {
        let mut total = TallySnapshot::default();
        for s in all {
            total.calls += s.calls;
            total.expected += s.expected;
            total.lost += s.lost;
            total.wrong += s.wrong;
            total
                .wrong_examples
                .extend(s.wrong_examples.iter().cloned());
            for (class, n) in &s.failed {
                *total.failed.entry(class.clone()).or_default() += n;
            }
            if total.slices.len() < s.slices.len() {
                total.slices.resize(s.slices.len(), 0);
            }
            for (i, n) in s.slices.iter().enumerate() {
                total.slices[i] += n;
            }
        }
        total
    }
}

/// What a raw hostile peer class did: connections, messages, and replies by name.
#[derive(Debug, Default)]
pub struct RawTally {
    /// Connections opened (sessions).
    pub sessions: AtomicU64,
    /// Sessions that could not connect (the node was down).
    pub connect_failures: AtomicU64,
    /// Hostile messages (or raw writes) sent.
    pub sent: AtomicU64,
    /// Probes (pings on the hostile connection, expected `ERR`s) answered.
    pub probes_answered: AtomicU64,
    /// Probes answered, but later than `hostile::PROBE_LATE`.
    pub probes_late: AtomicU64,
    /// Probes not answered within `hostile::PROBE_GIVE_UP` (the node may have been killed
    /// meanwhile, or, for calls, closed them for want of client heartbeats).
    pub probes_unanswered: AtomicU64,
    /// Replies received, by event name (`ERR` by error name).
    replies: Mutex<BTreeMap<String, u64>>,
}

impl RawTally {
    /// Counts a reply.
    pub fn reply(&self, name: &str) {
        *lock(&self.replies).entry(name.to_owned()).or_default() += 1;
    }

    /// Replies by name.
    pub fn replies(&self) -> BTreeMap<String, u64> {
        lock(&self.replies).clone()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
