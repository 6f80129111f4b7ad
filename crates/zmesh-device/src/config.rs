//! Provides the device's configuration with its documented defaults.

use std::time::Duration;

use zmesh_core::config::{self, ConfigError};

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
    /// Bytes of request frames the device may hold at once, over every service: queued
    /// calls, and running ones (each is kept to re-dispatch it if its worker is lost).
    /// A request that would pass it gets `ERR Overloaded` at once (default 256 MiB).
    pub max_request_bytes: usize,
    /// Largest accepted event frame in bytes, from clients and from workers (default 16 MiB).
    pub max_message_size: usize,
    /// Distinct method names the device routes, over all workers; a worker announcement
    /// that would pass it is refused (default 100,000).
    pub max_methods: usize,
    /// Distinct services the device routes, over all workers; a worker announcement that
    /// would pass it is refused (default 10,000).
    pub max_services: usize,
    /// Methods one worker may announce; a larger announcement is refused (default 4,096).
    pub max_methods_per_worker: usize,
    /// Services one worker may announce; a larger announcement is refused (default 256).
    pub max_services_per_worker: usize,
    /// Longest method or service name a worker may announce, in bytes (default 256).
    pub max_name_len: usize,
    /// Most capacity (calls open at once) the device gives one worker, whatever it announces:
    /// a larger announcement is lowered to it (default 1,024; a node announces 128 unless
    /// told otherwise).
    pub max_worker_capacity: u32,
    /// The heartbeat periods a worker may announce, shortest and longest; an announcement
    /// outside them is refused (default 20 ms to 60 s). Too short a period costs the device
    /// a timer pass per period; too long a one leaves a frozen worker undetected.
    pub worker_heartbeat: (Duration, Duration),
    /// Refusals (`ERR NameError`, `ProtocolError`, `MessageTooLarge`, `Unauthenticated`,
    /// `Replayed`) the device sends one client connection in a burst, and per second after
    /// it; beyond them a refused request gets no answer (counted in
    /// [`DeviceStats::refused`](crate::DeviceStats::refused) as `suppressed`), so a peer that
    /// sends garbage without reading cannot fill its queue with answers (default 1,000 and
    /// 100 per second). `Overloaded` and `Unavailable`, the answers to valid calls, are not
    /// limited.
    pub refusals: (u32, u32),
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            max_queue: 1_000,
            max_message_size: 16 * 1024 * 1024,
            max_request_bytes: 256 * 1024 * 1024,
            max_methods: 100_000,
            max_services: 10_000,
            max_methods_per_worker: 4_096,
            max_services_per_worker: 256,
            max_name_len: 256,
            max_worker_capacity: 1_024,
            worker_heartbeat: (Duration::from_millis(20), Duration::from_secs(60)),
            refusals: (1_000, 100),
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

    /// Sets the bound on the bytes of requests held (queued or running).
    #[must_use]
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// Sets the bounds on routed services, in total and per worker.
    #[must_use]
    pub fn max_services(mut self, total: usize, per_worker: usize) -> Self {
        self.max_services = total;
        self.max_services_per_worker = per_worker;
        self
    }

    /// Sets the bound on the methods one worker may announce.
    #[must_use]
    pub fn max_methods_per_worker(mut self, n: usize) -> Self {
        self.max_methods_per_worker = n;
        self
    }

    /// Sets the longest announced method or service name, in bytes.
    #[must_use]
    pub fn max_name_len(mut self, bytes: usize) -> Self {
        self.max_name_len = bytes;
        self
    }

    /// Sets the most capacity the device gives one worker.
    #[must_use]
    pub fn max_worker_capacity(mut self, capacity: u32) -> Self {
        self.max_worker_capacity = capacity;
        self
    }

    /// Sets the range of heartbeat periods a worker may announce.
    #[must_use]
    pub fn worker_heartbeat(mut self, shortest: Duration, longest: Duration) -> Self {
        self.worker_heartbeat = (shortest, longest);
        self
    }

    /// Sets the refusals one client connection gets in a burst and per second after it.
    #[must_use]
    pub fn refusals(mut self, burst: u32, per_second: u32) -> Self {
        self.refusals = (burst, per_second);
        self
    }

    /// Checks every setting against its range (see [`zmesh_core::config`]); the device's
    /// start does.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::at_least("heartbeat", self.heartbeat, Duration::from_millis(10))?;
        config::at_least("max_message_size", self.max_message_size, 64)?;
        config::at_least("max_worker_capacity", self.max_worker_capacity, 1)?;
        if self.worker_heartbeat.0 > self.worker_heartbeat.1 {
            return Err(ConfigError::new(
                "worker_heartbeat",
                "must not have its shortest period exceed its longest",
            ));
        }
        config::at_least_field(
            "max_request_bytes",
            self.max_request_bytes,
            "max_message_size",
            self.max_message_size,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_validated_by_name() {
        assert!(DeviceConfig::default().validate().is_ok());
        for (config, field) in [
            (
                DeviceConfig::default().heartbeat(Duration::ZERO),
                "heartbeat",
            ),
            (
                DeviceConfig::default().max_message_size(63),
                "max_message_size",
            ),
            (
                DeviceConfig::default().max_worker_capacity(0),
                "max_worker_capacity",
            ),
            (
                DeviceConfig::default()
                    .worker_heartbeat(Duration::from_secs(2), Duration::from_secs(1)),
                "worker_heartbeat",
            ),
            (
                DeviceConfig::default().max_request_bytes(1024),
                "max_request_bytes",
            ),
        ] {
            assert_eq!(config.validate().map_err(|e| e.field), Err(field));
        }
    }
}
