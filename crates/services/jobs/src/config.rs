//! Provides a queue's settings, [`JobsConfig`], and their one check: stored as given,
//! validated when the queue opens, a setting out of range refused with a `ConfigError`
//! naming it (zmesh's config rule, `zmesh_core::config`).

use std::time::Duration;

use zmesh_core::ConfigError;
use zmesh_core::config::{at_least, in_range};

use crate::queue::QueueLimits;
use crate::store::Level;

/// A job queue's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsConfig {
    /// How durable an acknowledged job is: `fsync` (default) or `os`.
    pub durability: Level,
    /// Jobs held, finished ones included until `result_ttl`.
    pub max_jobs: usize,
    /// Bytes held: method names, arguments, results.
    pub max_bytes: u64,
    /// Jobs running at once.
    pub concurrency: usize,
    /// How long a finished job's result and errors are kept.
    pub result_ttl: Duration,
    /// Attempt errors kept per job (the count goes on past it).
    pub keep_errors: usize,
    /// An attempt's deadline when its job sets none. Not a lease: a running job stays
    /// leased as long as its call is alive (heartbeats); this only bounds one attempt.
    pub attempt_timeout: Duration,
    /// The longest `result` wait a caller may ask for.
    pub max_result_wait: Duration,
    /// Seeds the retry jitter; `None` takes one from the clock.
    pub seed: Option<u64>,
    /// Opt-in low-latency mode of the store's writer thread: after each group it polls for
    /// the next request for up to this long before it sleeps (at most
    /// [`MAX_SPIN`](zmesh_core::config::MAX_SPIN), the bound of every zmesh spin; `None`, the default, sleeps at
    /// once). On an idle machine a sleeping thread's wake-up costs about as much as an `os`
    /// write: a spin of 50 us took a single submitter's p50 at `os` from about 124 to 86 us
    /// here. The cost is CPU: under a steady trickle of jobs the writer burns up to the spin
    /// after every group (docs/JOBS.md has the figures); an idle queue spins not at all.
    pub writer_spin: Option<Duration>,
}

impl Default for JobsConfig {
    fn default() -> Self {
        let limits = QueueLimits::default();
        Self {
            durability: Level::Fsync,
            max_jobs: limits.max_jobs,
            max_bytes: limits.max_bytes,
            concurrency: limits.concurrency,
            result_ttl: limits.result_ttl,
            keep_errors: limits.keep_errors,
            attempt_timeout: Duration::from_secs(24 * 3600),
            max_result_wait: Duration::from_secs(300),
            seed: None,
            writer_spin: None,
        }
    }
}

impl JobsConfig {
    /// Checks every setting.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least("max_jobs", self.max_jobs, 1)?;
        at_least("max_bytes", self.max_bytes, 1)?;
        in_range("concurrency", self.concurrency, 1, 1 << 16)?;
        at_least("result_ttl", self.result_ttl, Duration::from_secs(1))?;
        in_range("keep_errors", self.keep_errors, 1, 10_000)?;
        at_least(
            "attempt_timeout",
            self.attempt_timeout,
            Duration::from_millis(10),
        )?;
        in_range(
            "max_result_wait",
            self.max_result_wait,
            Duration::ZERO,
            Duration::from_secs(3600),
        )?;
        if let Some(spin) = self.writer_spin {
            in_range(
                "writer_spin",
                spin,
                Duration::ZERO,
                zmesh_core::config::MAX_SPIN,
            )?;
        }
        Ok(())
    }

    pub(crate) fn limits(&self) -> QueueLimits {
        QueueLimits {
            max_jobs: self.max_jobs,
            max_bytes: self.max_bytes,
            concurrency: self.concurrency,
            result_ttl: self.result_ttl,
            keep_errors: self.keep_errors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_each_bad_setting_is_named() {
        assert_eq!(JobsConfig::default().validate(), Ok(()));
        let bad = [
            (
                JobsConfig {
                    max_jobs: 0,
                    ..JobsConfig::default()
                },
                "max_jobs",
            ),
            (
                JobsConfig {
                    concurrency: 0,
                    ..JobsConfig::default()
                },
                "concurrency",
            ),
            (
                JobsConfig {
                    keep_errors: 0,
                    ..JobsConfig::default()
                },
                "keep_errors",
            ),
            (
                JobsConfig {
                    result_ttl: Duration::ZERO,
                    ..JobsConfig::default()
                },
                "result_ttl",
            ),
            (
                JobsConfig {
                    max_result_wait: Duration::from_secs(7200),
                    ..JobsConfig::default()
                },
                "max_result_wait",
            ),
            (
                JobsConfig {
                    writer_spin: Some(Duration::from_millis(2)),
                    ..JobsConfig::default()
                },
                "writer_spin",
            ),
        ];
        for (config, field) in bad {
            assert_eq!(config.validate().expect_err(field).field, field);
        }
    }
}
