//! Provides a queue's figures: the counters the queue keeps as it goes (attempts started,
//! jobs gone dead, submissions refused by reason), and the collector that adds them, with
//! the jobs per state, bytes held and durability read at scrape time, to its node's
//! `/metrics` (through the attachment's `metrics`). `jobs.stats` answers the same counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use zmesh_core::metrics::{
    Collector, CounterFamily, DescriptorEncoder, encode_counter_values, encode_counters,
    encode_gauge_families, encode_gauges,
};

use crate::queue::{Bound, Change, QueueError, StateName};
use crate::service::JobQueue;

/// Why a submission was refused, as counted and labelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// At `max_jobs`.
    JobsBound,
    /// At `max_bytes`.
    BytesBound,
    /// Bad arguments or options (`TypeError`).
    Invalid,
    /// The store failed (`StoreError`).
    Store,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Self::JobsBound,
        Self::BytesBound,
        Self::Invalid,
        Self::Store,
    ];

    /// The label value.
    fn name(self) -> &'static str {
        match self {
            Self::JobsBound => "max_jobs",
            Self::BytesBound => "max_bytes",
            Self::Invalid => "invalid",
            Self::Store => "store_failed",
        }
    }

    /// The reason a queue's refusal of a submission counts under.
    pub(crate) fn of(e: &QueueError) -> Self {
        match e {
            QueueError::QueueFull {
                bound: Bound::Jobs, ..
            } => Self::JobsBound,
            QueueError::QueueFull {
                bound: Bound::Bytes,
                ..
            } => Self::BytesBound,
            // `submit` meets neither of the others; they would be the caller's mistake.
            QueueError::Unknown(_) | QueueError::WrongState { .. } | QueueError::Invalid(_) => {
                Self::Invalid
            }
        }
    }
}

/// What a queue counts from the time it opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    attempts_started: AtomicU64,
    dead: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

/// A copy of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct CountersSnapshot {
    /// Attempts started since the queue opened.
    pub(crate) attempts_started: u64,
    /// Jobs that went to dead since the queue opened.
    pub(crate) dead_total: u64,
    /// Submissions refused, by reason.
    pub(crate) refused: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// Counts what committed state changes say: an attempt started for each job that went
    /// running, and each job that went dead.
    pub(crate) fn count_changes(&self, changes: &[Change]) {
        for change in changes {
            match change.to {
                Some(StateName::Running) => {
                    self.attempts_started.fetch_add(1, Ordering::Relaxed);
                }
                Some(StateName::Dead) => {
                    self.dead.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    }

    /// Counts a refused submission.
    pub(crate) fn count_refusal(&self, why: Refusal) {
        // `ALL` lists every variant in declaration order, so the index is in range.
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            attempts_started: self.attempts_started.load(Ordering::Relaxed),
            dead_total: self.dead.load(Ordering::Relaxed),
            refused: Refusal::ALL
                .into_iter()
                .map(|r| (r.name(), self.refused[r as usize].load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// One scrape's figures of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Figures {
    pub(crate) durability: &'static str,
    pub(crate) depth: Vec<(&'static str, u64)>,
    pub(crate) bytes: u64,
    pub(crate) counters: CountersSnapshot,
}

impl Figures {
    pub(crate) fn of(queue: &JobQueue) -> Self {
        let (depth, bytes) = {
            let q = queue.inner.lock();
            let depth = q
                .depth()
                .into_iter()
                .map(|(s, n)| (s.name(), n as u64))
                .collect();
            (depth, q.bytes())
        };
        Self {
            durability: queue.durability().name(),
            depth,
            bytes,
            counters: queue.inner.counters.snapshot(),
        }
    }
}

/// A queue as a collector for its node's `/metrics`.
#[derive(Debug)]
pub(crate) struct QueueMetrics(pub(crate) JobQueue);

impl Collector for QueueMetrics {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode(&Figures::of(&self.0), encoder)
    }
}

fn encode(f: &Figures, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
    encode_gauge_families(
        &mut encoder,
        &[
            CounterFamily {
                name: "zmesh_jobs",
                help: "Jobs the queue holds now, by state.",
                label: "state",
                values: f.depth.clone(),
            },
            CounterFamily {
                name: "zmesh_jobs_durability",
                help: "The durability level every acknowledgement states (1 for the queue's).",
                label: "level",
                values: vec![(f.durability, 1)],
            },
        ],
    )?;
    encode_gauges(
        &mut encoder,
        &[(
            "zmesh_jobs_held_bytes",
            "Bytes the queue holds now: method names, arguments and results.",
            f.bytes,
        )],
    )?;
    encode_counter_values(
        &mut encoder,
        &[
            (
                "zmesh_jobs_attempts_started",
                "Attempts the queue started since it opened.",
                f.counters.attempts_started,
            ),
            (
                "zmesh_jobs_dead",
                "Jobs that went to dead since the queue opened.",
                f.counters.dead_total,
            ),
        ],
    )?;
    encode_counters(
        &mut encoder,
        &[CounterFamily {
            name: "zmesh_jobs_submits_refused",
            help: "Submissions the queue refused since it opened, by reason.",
            label: "reason",
            values: f
                .counters
                .refused
                .iter()
                .map(|(reason, n)| (*reason, *n))
                .collect(),
        }],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::JobId;

    #[derive(Debug)]
    struct Fixed(Figures);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode(&self.0, encoder)
        }
    }

    #[test]
    fn counters_count_attempts_deaths_and_refusals_by_reason() {
        let counters = Counters::default();
        let change = |from, to| Change {
            id: JobId(1),
            from,
            to,
        };
        counters.count_changes(&[
            change(None, Some(StateName::Queued)),
            change(Some(StateName::Queued), Some(StateName::Running)),
            change(Some(StateName::Running), Some(StateName::Retrying)),
            change(Some(StateName::Retrying), Some(StateName::Running)),
            change(Some(StateName::Running), Some(StateName::Dead)),
        ]);
        counters.count_refusal(Refusal::of(&QueueError::QueueFull {
            bound: Bound::Bytes,
            limit: 10,
        }));
        counters.count_refusal(Refusal::Invalid);
        let s = counters.snapshot();
        assert_eq!(s.attempts_started, 2);
        assert_eq!(s.dead_total, 1);
        assert_eq!(s.refused["max_bytes"], 1);
        assert_eq!(s.refused["invalid"], 1);
        assert_eq!(s.refused["max_jobs"], 0);
    }

    #[test]
    fn the_figures_encode_as_openmetrics_lines() {
        let mut refused = BTreeMap::new();
        refused.insert("max_jobs", 3);
        let text = zmesh_core::metrics::render(Fixed(Figures {
            durability: "os",
            depth: vec![("queued", 2), ("dead", 1)],
            bytes: 512,
            counters: CountersSnapshot {
                attempts_started: 5,
                dead_total: 1,
                refused,
            },
        }));
        for line in [
            "# TYPE zmesh_jobs gauge",
            "zmesh_jobs{state=\"queued\"} 2",
            "zmesh_jobs{state=\"dead\"} 1",
            "zmesh_jobs_durability{level=\"os\"} 1",
            "zmesh_jobs_held_bytes 512",
            "# TYPE zmesh_jobs_attempts_started counter",
            "zmesh_jobs_attempts_started_total 5",
            "zmesh_jobs_dead_total 1",
            "zmesh_jobs_submits_refused_total{reason=\"max_jobs\"} 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
