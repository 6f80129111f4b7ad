//! Provides the ZMTP-level limits zmesh puts on its `zeromq` sockets: the wire size a
//! message may reach while being read, the frame count, and the descriptor budget a node's
//! connection caps must stay within.

use std::sync::Arc;

use zeromq::{SocketOptions, SocketStats, SocketStatsSnapshot};

/// The most a message may have on the wire, for a socket whose application-level limit is
/// `max_message_size`: twice that, plus 1 MiB for the routing envelope and the frames'
/// overhead. A message up to this size is read whole and refused by zmesh with a precise
/// error (`ERR MessageTooLarge`, as before); one past it is cut while being read and its
/// connection closed, so a peer cannot make the process buffer more than this per
/// connection whatever it announces.
pub(crate) fn wire_limit(max_message_size: usize) -> usize {
    max_message_size
        .saturating_mul(2)
        .saturating_add(1024 * 1024)
}

/// Frames a zerorpc message may have at most on a zmesh socket: `[routes.., "", event]`,
/// with room for many routing hops; real messages have two to four.
pub(crate) const MAX_FRAMES: usize = 128;

/// Descriptors a node keeps for itself besides its connection caps: the runtime, its
/// listeners, the events sockets, outgoing links, files.
const FD_HEADROOM: u64 = 64;

/// The options of a socket zmesh builds: the connect timeout the crate's default, the
/// limits given.
pub(crate) fn options(max_message_size: usize, max_frames: usize) -> SocketOptions {
    let mut options = SocketOptions::default();
    options
        .max_message_size(wire_limit(max_message_size))
        .max_frames(max_frames.max(1));
    options
}

/// The per-endpoint connection cap that fits the process's descriptor limit: `wanted`, or
/// less when `endpoints` of that many would not leave [`FD_HEADROOM`] descriptors free.
pub(crate) fn connection_cap(wanted: usize, endpoints: usize) -> usize {
    let Ok((soft, _hard)) = nofile_limit() else {
        return wanted.max(1);
    };
    let budget = soft.saturating_sub(FD_HEADROOM).max(1);
    let per_endpoint = budget / endpoints.max(1) as u64;
    let cap = usize::try_from(per_endpoint).unwrap_or(usize::MAX).max(1);
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            nofile = soft,
            endpoints,
            "connection cap lowered to fit the descriptor limit (RLIMIT_NOFILE)"
        );
        cap
    } else {
        wanted.max(1)
    }
}

/// The process's soft and hard `RLIMIT_NOFILE` (`u64::MAX` for unlimited).
pub fn nofile_limit() -> std::io::Result<(u64, u64)> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    Ok((
        limit.current.unwrap_or(u64::MAX),
        limit.maximum.unwrap_or(u64::MAX),
    ))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what a server wants: systemd starts
/// services with a soft limit of 1,024) and returns the limit now in force.
///
/// # Errors
/// The `setrlimit` error, with the limit unchanged.
pub fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
    }
    Ok(nofile_limit()?.0)
}

/// The limit counters of several sockets, summed.
pub(crate) fn sum(stats: &[Arc<SocketStats>]) -> SocketStatsSnapshot {
    stats
        .iter()
        .map(|s| s.snapshot())
        .fold(SocketStatsSnapshot::default(), |mut total, s| {
            total.oversized += s.oversized;
            total.too_many_frames += s.too_many_frames;
            total.handshake_timeouts += s.handshake_timeouts;
            total.connections_refused += s.connections_refused;
            total.accept_errors += s.accept_errors;
            total.send_queue_full += s.send_queue_full;
            total.send_dropped += s.send_dropped;
            total.disconnected += s.disconnected;
            total
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_limit_leaves_room_for_a_precise_refusal() {
        assert_eq!(wire_limit(16 << 20), (32 << 20) + (1 << 20));
        assert_eq!(wire_limit(64 << 10), (128 << 10) + (1 << 20));
        assert_eq!(wire_limit(usize::MAX), usize::MAX);
    }

    #[test]
    fn the_connection_cap_fits_the_descriptor_limit() {
        let (soft, _) = nofile_limit().expect("getrlimit");
        let cap = connection_cap(usize::MAX, 2);
        assert!((cap as u64) * 2 + FD_HEADROOM <= soft.max(FD_HEADROOM + 2));
        assert_eq!(connection_cap(1, 2), 1);
    }
}
