//! Provides the peer directory, pure: which nodes of the mesh are known, what they offer,
//! when each was last heard of, and the joined/left/updated changes that follow from a
//! beacon, a gossip entry or the passing of time. No sockets, no clocks (callers pass
//! `now`), unit-tested below.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Longest id, name, endpoint, service or method name accepted from a peer.
pub(crate) const MAX_NAME: usize = 256;
/// Most endpoints one peer may advertise.
pub(crate) const MAX_ENDPOINTS: usize = 16;
/// Most services one peer may advertise.
pub(crate) const MAX_SERVICES: usize = 128;
/// Most idempotent methods per advertised service.
pub(crate) const MAX_METHODS: usize = 1024;

/// What one node tells the mesh about itself: in beacons and in gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PeerRecord {
    /// Unique id of this node process (its name plus a random suffix, new at every start).
    pub id: String,
    /// The node's name (`_zerorpc_name`).
    pub name: String,
    /// Endpoints a caller connects to, such as `tcp://10.0.0.5:4242`.
    pub endpoints: Vec<String>,
    /// The services it hosts.
    pub services: Vec<ServiceInfo>,
}

/// One advertised service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// The service name: its methods are called `name.method`.
    pub name: String,
    /// Methods marked idempotent at registration (without the service prefix).
    pub idempotent: Vec<String>,
}

impl ServiceInfo {
    /// Describes a service and its idempotent methods.
    pub fn new(name: impl Into<String>, idempotent: impl IntoIterator<Item = String>) -> Self {
        Self {
            name: name.into(),
            idempotent: idempotent.into_iter().collect(),
        }
    }
}

impl PeerRecord {
    /// A record for a node.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        endpoints: Vec<String>,
        services: Vec<ServiceInfo>,
    ) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            endpoints,
            services,
        }
    }

    /// True when the node hosts `service`.
    pub fn offers(&self, service: &str) -> bool {
        self.services.iter().any(|s| s.name == service)
    }

    /// The endpoint callers use: the first advertised one.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoints.first().map(String::as_str)
    }

    /// Checks a record that came from the network against the size bounds, so a peer
    /// cannot make the directory hold arbitrary amounts of data.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= MAX_NAME;
        if !name_ok(&self.id) || !name_ok(&self.name) {
            return Err("id or name empty or too long");
        }
        if self.endpoints.is_empty() || self.endpoints.len() > MAX_ENDPOINTS {
            return Err("endpoint count out of range");
        }
        if !self
            .endpoints
            .iter()
            .all(|e| name_ok(e) && e.parse::<crate::Endpoint>().is_ok())
        {
            return Err("invalid endpoint");
        }
        if self.endpoints.iter().any(|e| {
            e.parse::<crate::Endpoint>()
                .is_ok_and(|e| e.is_unspecified())
        }) {
            // A node bound to every interface knows no address others reach it at.
            return Err(
                "announces an unspecified address (0.0.0.0, [::], *), which reaches no one: \
                 advertise a reachable endpoint",
            );
        }
        if self.services.len() > MAX_SERVICES {
            return Err("too many services");
        }
        for s in &self.services {
            if !name_ok(&s.name)
                || s.idempotent.len() > MAX_METHODS
                || !s.idempotent.iter().all(|m| name_ok(m))
            {
                return Err("bad service entry");
            }
        }
        Ok(())
    }
}

/// A change in the set of known peers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Presence {
    /// A peer was heard of for the first time (or again after it had left).
    Joined(PeerRecord),
    /// A known peer now advertises something different.
    Updated(PeerRecord),
    /// A peer has not been heard of for longer than the expiry period.
    Left(PeerRecord),
}

struct Entry {
    record: PeerRecord,
    last_seen: Instant,
    /// The highest beacon number taken from this peer (0: none).
    beacon_seq: u64,
}

/// The known peers of one mesh, as seen by one process.
#[derive(Debug)]
pub(crate) struct Directory {
    self_id: Option<String>,
    peers: HashMap<String, Entry>,
    expire_after: Duration,
    max_peers: usize,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.record.id)
            .finish_non_exhaustive()
    }
}

/// Why an observation was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It is about this process itself.
    Myself,
    /// It is older than the expiry period (or than what is already known).
    Stale,
    /// The directory is full.
    Full,
    /// A beacon whose number was already taken from this peer: a repeat or a replay.
    Repeated,
}

impl Directory {
    pub(crate) fn new(self_id: Option<String>, expire_after: Duration, max_peers: usize) -> Self {
        Self {
            self_id,
            peers: HashMap::new(),
            expire_after,
            max_peers,
        }
    }

    pub(crate) fn set_self_id(&mut self, id: String) {
        self.peers.remove(&id);
        self.self_id = Some(id);
    }

    /// Takes note that `record` was current at `seen` (now for a beacon or a direct gossip
    /// partner; now minus the reported age for a gossiped entry).
    pub(crate) fn observe(
        &mut self,
        record: PeerRecord,
        seen: Instant,
        now: Instant,
    ) -> Result<Option<Presence>, Refused> {
        if self.self_id.as_deref() == Some(record.id.as_str()) {
            return Err(Refused::Myself);
        }
        if now.saturating_duration_since(seen) >= self.expire_after {
            return Err(Refused::Stale);
        }
        match self.peers.get_mut(&record.id) {
            Some(entry) => {
                if seen <= entry.last_seen {
                    return Err(Refused::Stale);
                }
                entry.last_seen = seen;
                if entry.record == record {
                    Ok(None)
                } else {
                    entry.record = record.clone();
                    Ok(Some(Presence::Updated(record)))
                }
            }
            None => {
                if self.peers.len() >= self.max_peers {
                    return Err(Refused::Full);
                }
                let entry = Entry {
                    record: record.clone(),
                    last_seen: seen,
                    beacon_seq: 0,
                };
                self.peers.insert(record.id.clone(), entry);
                Ok(Some(Presence::Joined(record)))
            }
        }
    }

    /// Takes note of a sealed beacon numbered `seq` that its sender sealed at `seen`: as
    /// [`observe`](Self::observe), but a number already taken from this peer (or a lower
    /// one) is refused as [`Refused::Repeated`], so a recorded beacon replayed within the
    /// key's window changes nothing.
    pub(crate) fn observe_beacon(
        &mut self,
        record: PeerRecord,
        seq: u64,
        seen: Instant,
        now: Instant,
    ) -> Result<Option<Presence>, Refused> {
        let id = record.id.clone();
        if let Some(entry) = self.peers.get(&id)
            && seq <= entry.beacon_seq
        {
            return Err(Refused::Repeated);
        }
        let observed = self.observe(record, seen, now);
        if let Some(entry) = self.peers.get_mut(&id) {
            entry.beacon_seq = entry.beacon_seq.max(seq);
        }
        observed
    }

    /// Removes peers not heard of for the expiry period.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Presence> {
        let limit = self.expire_after;
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_seen) >= limit)
            .map(|(id, _)| id.clone())
            .collect();
        gone.into_iter()
            .filter_map(|id| self.peers.remove(&id))
            .map(|e| Presence::Left(e.record))
            .collect()
    }

    /// Every known peer.
    pub(crate) fn records(&self) -> impl Iterator<Item = &PeerRecord> {
        self.peers.values().map(|e| &e.record)
    }

    /// Every known peer with how long ago it was last heard of, for gossip.
    pub(crate) fn with_ages(&self, now: Instant) -> Vec<(PeerRecord, u64)> {
        self.peers
            .values()
            .map(|e| {
                let age = now.saturating_duration_since(e.last_seen).as_millis();
                (e.record.clone(), u64::try_from(age).unwrap_or(u64::MAX))
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, port: u16, services: &[&str]) -> PeerRecord {
        PeerRecord::new(
            id,
            id,
            vec![format!("tcp://127.0.0.1:{port}")],
            services
                .iter()
                .map(|s| ServiceInfo::new(*s, Vec::new()))
                .collect(),
        )
    }

    /// A record announcing an address that reaches no one is refused, whether the node
    /// itself or a gossiping peer made it.
    #[test]
    fn records_with_unspecified_addresses_are_invalid() {
        let mut record = rec("a", 1, &["billing"]);
        assert_eq!(record.validate(), Ok(()));
        for unspecified in ["tcp://0.0.0.0:4242", "tcp://[::]:4242", "tcp://*:4242"] {
            record.endpoints = vec!["tcp://127.0.0.1:1".into(), unspecified.into()];
            let why = record.validate().expect_err(unspecified);
            assert!(why.contains("advertise"), "{unspecified}: {why}");
        }
    }

    #[test]
    fn join_update_and_expiry() {
        let t0 = Instant::now();
        let mut d = Directory::new(Some("me".into()), Duration::from_secs(3), 10);
        let a = rec("a", 1, &["billing"]);
        assert_eq!(
            d.observe(a.clone(), t0, t0),
            Ok(Some(Presence::Joined(a.clone())))
        );
        // Heard again, nothing new.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(d.observe(a.clone(), t1, t1), Ok(None));
        // It now offers something else.
        let a2 = rec("a", 1, &["billing", "ledger"]);
        assert_eq!(
            d.observe(a2.clone(), t1 + Duration::from_millis(1), t1),
            Ok(Some(Presence::Updated(a2.clone())))
        );
        assert!(d.expire(t1 + Duration::from_secs(2)).is_empty());
        assert_eq!(
            d.expire(t1 + Duration::from_secs(4)),
            vec![Presence::Left(a2)]
        );
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn self_stale_and_full_are_refused() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(10);
        let mut d = Directory::new(Some("me".into()), Duration::from_secs(3), 1);
        assert_eq!(d.observe(rec("me", 1, &[]), now, now), Err(Refused::Myself));
        // A gossiped entry older than the expiry period is not taken.
        assert_eq!(d.observe(rec("a", 1, &[]), t0, now), Err(Refused::Stale));
        assert!(d.observe(rec("a", 1, &[]), now, now).is_ok());
        // An older report than what is known does not move last_seen back.
        let before = now - Duration::from_secs(1);
        assert_eq!(
            d.observe(rec("a", 1, &[]), before, now),
            Err(Refused::Stale)
        );
        assert_eq!(d.observe(rec("b", 2, &[]), now, now), Err(Refused::Full));
    }

    #[test]
    fn gossip_ages_keep_expiry_honest() {
        let t0 = Instant::now();
        let mut d = Directory::new(None, Duration::from_secs(3), 10);
        d.observe(rec("a", 1, &[]), t0, t0).expect("taken");
        let later = t0 + Duration::from_millis(2500);
        let ages = d.with_ages(later);
        assert_eq!(ages[0].1, 2500);
        // Another directory that learns "a" from this one expires it at the same moment.
        let mut e = Directory::new(None, Duration::from_secs(3), 10);
        let seen = later - Duration::from_millis(ages[0].1);
        e.observe(ages[0].0.clone(), seen, later).expect("taken");
        assert_eq!(e.expire(t0 + Duration::from_millis(3001)).len(), 1);
    }

    #[test]
    fn validation_bounds_peer_data() {
        assert!(rec("a", 1, &["s"]).validate().is_ok());
        let mut r = rec("a", 1, &[]);
        r.endpoints = vec!["inproc://x".into()];
        assert!(r.validate().is_err());
        let mut r = rec("", 1, &[]);
        assert!(r.validate().is_err());
        r = rec("a", 1, &[]);
        r.endpoints = (0..17).map(|i| format!("tcp://127.0.0.1:{i}")).collect();
        assert!(r.validate().is_err());
        r = rec("a", 1, &[]);
        r.services = vec![ServiceInfo::new("x".repeat(300), Vec::new())];
        assert!(r.validate().is_err());
    }

    #[test]
    fn replayed_and_stale_beacons_change_nothing() {
        let mut d = Directory::new(None, Duration::from_secs(5), 16);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let a = rec("a", 1, &["svc"]);
        // Beacons 1..=3, one a second; the node then dies after beacon 3 (sent at 2 s).
        for (seq, ms) in [(1, 0), (2, 1_000), (3, 2_000)] {
            d.observe_beacon(a.clone(), seq, at(ms), at(ms))
                .expect("taken");
        }
        // A recorded beacon replayed later, inside the key's 30 s window: refused by number.
        assert_eq!(
            d.observe_beacon(a.clone(), 3, at(2_000), at(6_000)),
            Err(Refused::Repeated)
        );
        assert_eq!(
            d.observe_beacon(a.clone(), 1, at(0), at(6_000)),
            Err(Refused::Repeated)
        );
        // It leaves one expiry period after its last real beacon, not after the replays.
        assert!(d.expire(at(6_999)).is_empty());
        assert_eq!(d.expire(at(7_000)).len(), 1);
        // Replayed once it has left: its sealed time is older than the expiry period.
        assert_eq!(
            d.observe_beacon(a.clone(), 3, at(2_000), at(9_000)),
            Err(Refused::Stale)
        );
        assert_eq!(d.len(), 0);
        // A new start of the node (a new id) is taken at once.
        let a2 = rec("a-restarted", 1, &["svc"]);
        assert!(d.observe_beacon(a2, 1, at(9_000), at(9_000)).is_ok());
    }
}
