//! Provides UDP beacons: the datagram format (msgpack, pure and unit-tested) and the
//! socket every process of a mesh on one network shares a port on.
//!
//! Several processes on one host (or in one network namespace) bind the same UDP port with
//! `SO_REUSEADDR` and `SO_REUSEPORT`; beacons go to a broadcast address, which the kernel
//! delivers to every socket bound to that port (unicast would reach only one of them). On
//! Linux this works on loopback too: send to `127.255.255.255` and every process bound to
//! the port on that host hears it, no interface flags needed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::directory::PeerRecord;

/// Largest beacon sent or accepted, in bytes (fits one datagram on any usual network).
pub const MAX_BEACON_BYTES: usize = 8192;
/// The value of a beacon's `zmesh_beacon` key: the beacon format version.
pub const BEACON_VERSION: u8 = 1;

/// UDP beacon settings. Every process of one mesh on one network uses the same port.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BeaconConfig {
    /// The UDP port beacons are sent to and heard on.
    pub port: u16,
    /// How often a node announces itself (default 1 s).
    pub interval: Duration,
    /// The address the beacon socket binds (default `0.0.0.0`, every interface).
    pub bind: IpAddr,
    /// Where beacons go: broadcast addresses with the port (default
    /// `255.255.255.255:port`; `127.255.255.255:port` for one host; a subnet's broadcast
    /// address such as `10.1.2.255:port` for a LAN).
    pub targets: Vec<SocketAddr>,
}

impl BeaconConfig {
    /// Beacons on `port`, sent to the limited broadcast address every second.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            interval: Duration::from_secs(1),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            targets: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), port)],
        }
    }

    /// Beacons on `port` for processes on this host only (`127.255.255.255`).
    pub fn loopback(port: u16) -> Self {
        Self::new(port).targets([IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255))])
    }

    /// Sets the announce interval.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets the broadcast addresses beacons go to (on the configured port).
    #[must_use]
    pub fn targets(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> Self {
        self.targets = addresses
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect();
        self
    }

    /// Sets the address the beacon socket binds.
    #[must_use]
    pub fn bind(mut self, address: IpAddr) -> Self {
        self.bind = address;
        self
    }
}

/// One beacon datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Beacon {
    /// Format version; also what tells a zmesh beacon from other traffic on the port.
    pub(crate) zmesh_beacon: u8,
    /// The mesh name: beacons of other meshes on the same port are ignored.
    pub(crate) mesh: String,
    /// The sender.
    pub(crate) peer: PeerRecord,
    /// The beacon's number among its sender's beacons, from 1 (the sender's id is new at
    /// every start). A keyed receiver takes each number once and in increasing order, so a
    /// recorded beacon replayed later is ignored. Absent (0) from older senders.
    #[serde(default)]
    pub(crate) seq: u64,
}

/// When a sealed beacon was sent, on this host's monotonic clock: `now` less the beacon's
/// age by the sender's clock (`sealed_ms`, the envelope's timestamp; never taken as later
/// than now). `None` when that is before this host's monotonic clock began: older than
/// anything a directory keeps.
///
/// A keyed directory counts a peer's silence from here, not from when the datagram was
/// heard, so a recorded beacon replayed later cannot make a peer look fresher than its
/// last real beacon: a killed node leaves every directory one expiry period after it died.
pub(crate) fn sent_at(now: Instant, now_ms: u64, sealed_ms: u64) -> Option<Instant> {
    now.checked_sub(Duration::from_millis(now_ms.saturating_sub(sealed_ms)))
}

/// Why a datagram was not taken as a beacon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BeaconError {
    /// Not a msgpack beacon map (garbage, or another program's traffic).
    #[error("not a zmesh beacon: {0}")]
    Malformed(String),
    /// A beacon of a format version this build does not speak.
    #[error("beacon version {0} is not supported")]
    Version(u8),
    /// A beacon of another mesh.
    #[error("beacon of another mesh ({0:?})")]
    OtherMesh(String),
    /// A beacon whose record breaks the size bounds.
    #[error("invalid beacon record: {0}")]
    Invalid(&'static str),
    /// The beacon does not fit in [`MAX_BEACON_BYTES`].
    #[error("beacon of {0} bytes is too large")]
    TooLarge(usize),
}

impl Beacon {
    pub(crate) fn new(mesh: &str, peer: PeerRecord) -> Self {
        Self {
            zmesh_beacon: BEACON_VERSION,
            mesh: mesh.to_owned(),
            peer,
            seq: 0,
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, BeaconError> {
        let bytes =
            rmp_serde::to_vec_named(self).map_err(|e| BeaconError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_BEACON_BYTES {
            return Err(BeaconError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes and checks a datagram from the network for mesh `mesh`.
    pub(crate) fn decode(bytes: &[u8], mesh: &str) -> Result<Self, BeaconError> {
        if bytes.len() > MAX_BEACON_BYTES {
            return Err(BeaconError::TooLarge(bytes.len()));
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(8);
        let beacon =
            Self::deserialize(&mut de).map_err(|e| BeaconError::Malformed(e.to_string()))?;
        if beacon.zmesh_beacon != BEACON_VERSION {
            return Err(BeaconError::Version(beacon.zmesh_beacon));
        }
        if beacon.mesh != mesh {
            return Err(BeaconError::OtherMesh(beacon.mesh));
        }
        beacon.peer.validate().map_err(BeaconError::Invalid)?;
        Ok(beacon)
    }
}

/// Binds the shared beacon socket: reusable address and port, broadcast allowed.
pub(crate) fn bind(config: &BeaconConfig) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let address = SocketAddr::new(config.bind, config.port);
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::super::directory::ServiceInfo;
    use super::*;

    fn peer() -> PeerRecord {
        PeerRecord::new(
            "billing-1-abc",
            "billing-1",
            vec!["tcp://10.0.0.5:4242".into()],
            vec![ServiceInfo::new("billing", vec!["quote".to_owned()])],
        )
    }

    #[test]
    fn round_trip_and_mesh_filter() {
        let bytes = Beacon::new("prod", peer()).encode().expect("encodes");
        let back = Beacon::decode(&bytes, "prod").expect("decodes");
        assert_eq!(back.peer, peer());
        assert_eq!(
            Beacon::decode(&bytes, "staging"),
            Err(BeaconError::OtherMesh("prod".into()))
        );
    }

    #[test]
    fn garbage_and_bad_records_are_refused() {
        for junk in [
            &b""[..],
            b"\xc1",
            b"hello",
            b"\x93\x01\x02\x03",
            &[0xdd, 0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(
                matches!(Beacon::decode(junk, "prod"), Err(BeaconError::Malformed(_))),
                "{junk:?}"
            );
        }
        let mut b = Beacon::new("prod", peer());
        b.zmesh_beacon = 9;
        let bytes = rmp_serde::to_vec_named(&b).expect("encodes");
        assert_eq!(Beacon::decode(&bytes, "prod"), Err(BeaconError::Version(9)));
        let mut b = Beacon::new("prod", peer());
        b.peer.endpoints.clear();
        let bytes = rmp_serde::to_vec_named(&b).expect("encodes");
        assert!(matches!(
            Beacon::decode(&bytes, "prod"),
            Err(BeaconError::Invalid(_))
        ));
        assert!(matches!(
            Beacon::decode(&vec![0u8; MAX_BEACON_BYTES + 1], "prod"),
            Err(BeaconError::TooLarge(_))
        ));
    }

    #[test]
    fn sequence_numbers_travel_and_older_beacons_read_as_zero() {
        let mut b = Beacon::new("prod", peer());
        b.seq = 42;
        let back = Beacon::decode(&b.encode().expect("encodes"), "prod").expect("decodes");
        assert_eq!(back.seq, 42);
        // A beacon of a build without the number still decodes.
        #[derive(Serialize)]
        struct Old {
            zmesh_beacon: u8,
            mesh: String,
            peer: PeerRecord,
        }
        let old = rmp_serde::to_vec_named(&Old {
            zmesh_beacon: BEACON_VERSION,
            mesh: "prod".into(),
            peer: peer(),
        })
        .expect("encodes");
        assert_eq!(Beacon::decode(&old, "prod").expect("decodes").seq, 0);
    }

    #[test]
    fn a_beacon_is_as_old_as_its_sender_says() {
        let now = Instant::now();
        let now_ms = 1_700_000_010_000;
        assert_eq!(sent_at(now, now_ms, now_ms), Some(now));
        assert_eq!(
            sent_at(now, now_ms, now_ms - 4_000),
            now.checked_sub(Duration::from_secs(4))
        );
        // A sender a little ahead is not taken as later than now.
        assert_eq!(sent_at(now, now_ms, now_ms + 500), Some(now));
        // Older than this host's monotonic clock: too old for anything.
        assert_eq!(
            sent_at(now, now_ms, 0),
            now.checked_sub(Duration::from_millis(now_ms))
        );
    }
}
