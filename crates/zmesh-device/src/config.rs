//! Provides the device's configuration with its documented defaults.

use std::time::Duration;

use crate::DeviceError;

/// Device settings. Build with `DeviceConfig::default()` and the chained setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeviceConfig {
    /// Heartbeat period toward clients, on every open call (default 5 s, as zerorpc). A
    /// client silent for more than two periods is lost and its call is cancelled at the
    /// worker. Workers are heartbeated at their own announced period instead.
    pub heartbeat: Duration,
    /// Calls that may wait per service when none of its workers has a free slot; beyond it
    /// callers get `ERR Overloaded` at once (default 1,000).
    pub max_queue: usize,
    /// Largest accepted event frame in bytes, from clients and from workers (default 16 MiB).
    pub max_message_size: usize,
    /// Distinct method names the device routes; names announced beyond it are ignored with
    /// a warning, so workers cannot grow the table without bound (default 100,000).
    pub max_methods: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            max_queue: 1_000,
            max_message_size: 16 * 1024 * 1024,
            max_methods: 100_000,
        }
    }
}

impl DeviceConfig {
    /// Sets the client-facing heartbeat period.
    #[must_use]
    pub fn heartbeat(mut self, period: Duration) -> Self {
        self.heartbeat = period;
        self
    }

    /// Sets the per-service queue bound.
    #[must_use]
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n;
        self
    }

    /// Sets the largest accepted message in bytes.
    #[must_use]
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets the bound on routed method names.
    #[must_use]
    pub fn max_methods(mut self, n: usize) -> Self {
        self.max_methods = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), DeviceError> {
        if self.heartbeat < Duration::from_millis(10) {
            return Err(DeviceError::Config("heartbeat must be at least 10 ms"));
        }
        if self.max_message_size < 64 {
            return Err(DeviceError::Config(
                "max_message_size must be at least 64 bytes",
            ));
        }
        Ok(())
    }
}
