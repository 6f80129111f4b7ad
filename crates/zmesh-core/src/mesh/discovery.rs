//! Provides discovery: the runtime around the peer directory. It learns peers from its
//! sources (static seeds, seeds resolved from DNS (`dns.rs`), UDP beacons, and gossip of
//! directories over request-reply with the built-in `_zmesh.peers` method), expires silent
//! peers, and announces who joined and left.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;
use zmesh_proto::ErrorKind;

use super::MeshError;
use super::beacon::{self, Beacon, BeaconConfig, BeaconError, MAX_BEACON_BYTES};
use super::directory::{Directory, PeerRecord, Presence, Refused};
use crate::client::{CallOptions, Client, ClientConfig};
use crate::config::{self, ConfigError};
use crate::service::{HandlerError, Service};
use crate::trust::Kind;

/// Name of the service that carries gossip ([`reserved::ZMESH_SERVICE`]); its method is
/// `_zmesh.peers`.
///
/// [`reserved::ZMESH_SERVICE`]: crate::reserved::ZMESH_SERVICE
pub const GOSSIP_SERVICE: &str = crate::reserved::ZMESH_SERVICE;
/// The gossip method as called on the wire ([`reserved::PEERS`](crate::reserved::PEERS)).
pub const GOSSIP_METHOD: &str = crate::reserved::PEERS;
/// Presence events buffered per subscriber before the slowest one starts missing events.
const PRESENCE_BUFFER: usize = 1024;

/// Discovery settings. Build with [`DiscoveryConfig::new`] and the chained setters.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiscoveryConfig {
    /// The mesh name; beacons and gossip of other meshes are ignored.
    pub mesh: String,
    /// Endpoints asked for their directory every gossip round (static seeds).
    pub seeds: Vec<String>,
    /// UDP beacons, if any (default none).
    pub beacon: Option<BeaconConfig>,
    /// How often the directory is exchanged with the seeds and a few known peers
    /// (default 1 s).
    pub gossip_interval: Duration,
    /// Known peers asked per gossip round, besides the seeds (default 3).
    pub gossip_fanout: usize,
    /// A peer not heard of (by beacon, gossip or directly) for this long leaves the
    /// directory (default 5 s).
    pub expire_after: Duration,
    /// Most peers kept (default 1,024); beyond it new peers are refused and counted.
    pub max_peers: usize,
    /// The mesh key gossip calls and beacons are sealed with (default none). With a key,
    /// unsealed beacons and beacons sealed with another key are ignored and counted
    /// ([`DiscoveryStats::beacons_unauthenticated`]); without one, beacons stay plain
    /// msgpack, as before.
    pub mesh_key: Option<crate::trust::MeshKey>,
    /// Seeds resolved from DNS every refresh period, beside the static ones (default
    /// none): SRV records, or A/AAAA records at a port ([`DnsSeeds`](super::dns::DnsSeeds)).
    pub dns: Option<super::dns::DnsSeeds>,
}

impl DiscoveryConfig {
    /// Discovery for mesh `mesh` with no seeds and no beacons yet.
    pub fn new(mesh: impl Into<String>) -> Self {
        Self {
            mesh: mesh.into(),
            seeds: Vec::new(),
            beacon: None,
            gossip_interval: Duration::from_secs(1),
            gossip_fanout: 3,
            expire_after: Duration::from_secs(5),
            max_peers: 1024,
            mesh_key: None,
            dns: None,
        }
    }

    /// Also gossips with the endpoints `seeds` resolves to, resolved again every refresh
    /// period (a Kubernetes headless Service, Consul DNS).
    #[must_use]
    pub fn dns(mut self, seeds: super::dns::DnsSeeds) -> Self {
        self.dns = Some(seeds);
        self
    }

    /// Adds a static seed endpoint.
    #[must_use]
    pub fn seed(mut self, endpoint: impl Into<String>) -> Self {
        self.seeds.push(endpoint.into());
        self
    }

    /// Turns on UDP beacons.
    #[must_use]
    pub fn beacon(mut self, beacon: BeaconConfig) -> Self {
        self.beacon = Some(beacon);
        self
    }

    /// Sets the gossip interval.
    #[must_use]
    pub fn gossip_interval(mut self, interval: Duration) -> Self {
        self.gossip_interval = interval;
        self
    }

    /// Sets the expiry period.
    #[must_use]
    pub fn expire_after(mut self, period: Duration) -> Self {
        self.expire_after = period;
        self
    }

    /// Seals gossip calls with the mesh key (needed to gossip with keyed nodes).
    #[must_use]
    pub fn mesh_key(mut self, key: crate::trust::MeshKey) -> Self {
        self.mesh_key = Some(key);
        self
    }

    /// Sets the most peers kept.
    #[must_use]
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n;
        self
    }

    /// Checks every setting against its range (see [`crate::config`]).
    ///
    /// # Errors
    /// [`ConfigError`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::in_range("mesh", self.mesh.len(), 1, super::directory::MAX_NAME)?;
        config::at_least(
            "gossip_interval",
            self.gossip_interval,
            Duration::from_millis(10),
        )?;
        if self.expire_after <= self.gossip_interval {
            return Err(ConfigError::new(
                "expire_after",
                "must be longer than gossip_interval",
            ));
        }
        if let Some(dns) = &self.dns {
            dns.validate()?;
        }
        if let Some(b) = &self.beacon {
            config::at_least("beacon.interval", b.interval, Duration::from_millis(10))?;
            if b.interval >= self.expire_after {
                return Err(ConfigError::new(
                    "beacon.interval",
                    "must be shorter than expire_after",
                ));
            }
        }
        Ok(())
    }
}

/// Counters of a [`Discovery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Beacons sent.
    pub beacons_sent: u64,
    /// Valid beacons of this mesh heard (including this process's own).
    pub beacons_heard: u64,
    /// Beacons of other meshes ignored.
    pub beacons_foreign: u64,
    /// Datagrams on the beacon port that were not valid beacons.
    pub beacons_malformed: u64,
    /// Beacons ignored by a keyed mesh: unsealed, sealed with another key, tampered, or
    /// sealed longer ago than the key's replay window (or ahead of its clock skew).
    pub beacons_unauthenticated: u64,
    /// Sealed beacons ignored as repeats (a number already taken from that peer: one
    /// datagram heard twice, or a recorded one replayed) or as too old for the directory
    /// (sealed longer ago than the expiry period).
    pub beacons_stale: u64,
    /// Gossip exchanges that succeeded.
    pub gossip_ok: u64,
    /// Gossip exchanges that failed (peer unreachable, wrong mesh, bad reply).
    pub gossip_failed: u64,
    /// Peers refused because the directory was full.
    pub refused_full: u64,
    /// DNS lookups that gave endpoints ([`DiscoveryConfig::dns`]).
    pub dns_lookups_ok: u64,
    /// DNS lookups that failed (the last endpoints found stay in use).
    pub dns_lookups_failed: u64,
    /// Endpoints the last good DNS lookup gave.
    pub dns_seeds: usize,
    /// Peers known now.
    pub peers: usize,
}

#[derive(Debug, Default)]
struct Counters {
    beacons_sent: AtomicU64,
    beacons_heard: AtomicU64,
    beacons_foreign: AtomicU64,
    beacons_malformed: AtomicU64,
    beacons_unauthenticated: AtomicU64,
    beacons_stale: AtomicU64,
    gossip_ok: AtomicU64,
    gossip_failed: AtomicU64,
    refused_full: AtomicU64,
    dns_ok: AtomicU64,
    dns_failed: AtomicU64,
}

/// One entry of a gossip reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GossipEntry {
    pub(crate) peer: PeerRecord,
    /// Milliseconds since the responder last heard of this peer (0 for itself).
    pub(crate) age_ms: u64,
}

/// The reply of `_zmesh.peers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GossipReply {
    pub(crate) mesh: String,
    pub(crate) peers: Vec<GossipEntry>,
}

/// Discovery for one process. Cheap to clone; the background tasks stop when the last
/// clone is dropped.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub(crate) inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

#[derive(Debug, Default)]
struct Tasks(Mutex<Vec<AbortHandle>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        let tasks = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        for t in tasks.iter() {
            t.abort();
        }
    }
}

pub(crate) struct Inner {
    pub(crate) config: DiscoveryConfig,
    self_record: RwLock<Option<PeerRecord>>,
    directory: Mutex<Directory>,
    presence: broadcast::Sender<Presence>,
    version: watch::Sender<u64>,
    counters: Counters,
    /// Seals and opens beacons when the mesh has a key.
    beacon_trust: Option<crate::trust::Trust>,
    /// The endpoints the last good DNS lookup gave, gossiped with like static seeds.
    dns_seeds: RwLock<Vec<String>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("mesh", &self.config.mesh)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts discovery for a process that only calls (it announces nothing): listens to
    /// beacons, gossips with the seeds and the peers it learns.
    ///
    /// # Errors
    /// [`MeshError::Config`] for out-of-range settings, [`MeshError::Beacon`] when the
    /// beacon port cannot be bound.
    pub async fn start(config: DiscoveryConfig) -> Result<Self, MeshError> {
        let discovery = Self::new(config)?;
        discovery.run(None)?;
        Ok(discovery)
    }

    pub(crate) fn new(config: DiscoveryConfig) -> Result<Self, MeshError> {
        config.validate()?;
        let (presence, _) = broadcast::channel(PRESENCE_BUFFER);
        let (version, _) = watch::channel(0);
        let directory = Directory::new(None, config.expire_after, config.max_peers);
        let beacon_trust = config.mesh_key.clone().map(crate::trust::Trust::new);
        Ok(Self {
            inner: Arc::new(Inner {
                beacon_trust,
                config,
                self_record: RwLock::new(None),
                directory: Mutex::new(directory),
                presence,
                version,
                counters: Counters::default(),
                dns_seeds: RwLock::new(Vec::new()),
            }),
            tasks: Arc::new(Tasks::default()),
        })
    }

    /// Sets this process's own record (a node) and starts the background tasks.
    pub(crate) fn run(&self, me: Option<PeerRecord>) -> Result<(), MeshError> {
        if let Some(me) = &me {
            self.inner.directory().set_self_id(me.id.clone());
        }
        *self
            .inner
            .self_record
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = me.clone();
        let mut tasks = Vec::new();
        if let Some(config) = &self.inner.config.beacon {
            let socket = beacon::bind(config).map_err(|source| MeshError::Beacon {
                port: config.port,
                source,
            })?;
            let socket = Arc::new(socket);
            tasks.push(
                tokio::spawn(hear_beacons(self.inner.clone(), socket.clone())).abort_handle(),
            );
            if let Some(me) = me {
                let mut beacon = Beacon::new(&self.inner.config.mesh, me);
                // Sized with the largest number it will carry.
                beacon.seq = u64::MAX;
                let bytes = beacon
                    .encode()
                    .map_err(|e| MeshError::BeaconTooLarge(e.to_string()))?;
                if self.inner.beacon_trust.is_some()
                    && bytes.len() + crate::trust::envelope::MIN_SEALED > MAX_BEACON_BYTES
                {
                    return Err(MeshError::BeaconTooLarge(format!(
                        "sealed beacon of {} bytes is too large",
                        bytes.len() + crate::trust::envelope::MIN_SEALED
                    )));
                }
                tasks.push(
                    tokio::spawn(send_beacons(
                        self.inner.clone(),
                        socket,
                        beacon,
                        config.clone(),
                    ))
                    .abort_handle(),
                );
            }
        }
        if let Some(seeds) = &self.inner.config.dns {
            let source = super::dns::DnsSource::new(seeds.clone())
                .map_err(|e| MeshError::Dns(e.to_string()))?;
            tasks.push(tokio::spawn(dns_loop(self.inner.clone(), source)).abort_handle());
        }
        tasks.push(tokio::spawn(gossip_loop(self.inner.clone())).abort_handle());
        tasks.push(tokio::spawn(expire_loop(self.inner.clone())).abort_handle());
        self.tasks
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(tasks);
        Ok(())
    }

    /// Presence notifications: every peer that joins, changes or leaves from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Presence> {
        self.inner.presence.subscribe()
    }

    /// The peers known now (not including this process).
    pub fn peers(&self) -> Vec<PeerRecord> {
        self.inner.directory().records().cloned().collect()
    }

    /// The mesh name.
    pub fn mesh(&self) -> &str {
        &self.inner.config.mesh
    }

    /// The mesh key gossip uses, if any.
    pub(crate) fn mesh_key(&self) -> Option<&crate::trust::MeshKey> {
        self.inner.config.mesh_key.as_ref()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DiscoveryStats {
        let c = &self.inner.counters;
        DiscoveryStats {
            beacons_sent: c.beacons_sent.load(Ordering::Relaxed),
            beacons_heard: c.beacons_heard.load(Ordering::Relaxed),
            beacons_foreign: c.beacons_foreign.load(Ordering::Relaxed),
            beacons_malformed: c.beacons_malformed.load(Ordering::Relaxed),
            beacons_unauthenticated: c.beacons_unauthenticated.load(Ordering::Relaxed),
            beacons_stale: c.beacons_stale.load(Ordering::Relaxed),
            gossip_ok: c.gossip_ok.load(Ordering::Relaxed),
            gossip_failed: c.gossip_failed.load(Ordering::Relaxed),
            refused_full: c.refused_full.load(Ordering::Relaxed),
            dns_lookups_ok: c.dns_ok.load(Ordering::Relaxed),
            dns_lookups_failed: c.dns_failed.load(Ordering::Relaxed),
            dns_seeds: self.inner.dns_seeds().len(),
            peers: self.inner.directory().len(),
        }
    }

    /// A receiver that changes whenever the directory does.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// The `_zmesh` service a node hosts so others can gossip with it.
    pub(crate) fn gossip_service(&self) -> Service {
        let inner = self.inner.clone();
        Service::new(GOSSIP_SERVICE)
            .method(
                crate::reserved::PEERS_IN_SERVICE,
                move |mesh: String, caller: Option<PeerRecord>| {
                    let reply = inner.answer_gossip(&mesh, caller);
                    async move { reply }
                },
            )
            .into_service()
    }
}

impl Inner {
    /// The endpoints of the last good DNS lookup.
    fn dns_seeds(&self) -> Vec<String> {
        self.dns_seeds
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn directory(&self) -> std::sync::MutexGuard<'_, Directory> {
        // The directory is only changed by its own methods, none of which can panic midway.
        self.directory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn me(&self) -> Option<PeerRecord> {
        self.self_record
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records an observation and announces what changed.
    fn observe(&self, record: PeerRecord, seen: Instant, now: Instant) {
        let result = self.directory().observe(record, seen, now);
        self.took(result);
    }

    /// Takes a sealed beacon numbered `seq`, sealed at `sealed_ms` by its sender's clock.
    fn observe_beacon(&self, record: PeerRecord, seq: u64, sealed_ms: u64) {
        let now = Instant::now();
        let result = match beacon::sent_at(now, crate::trust::now_ms(), sealed_ms) {
            Some(seen) => self.directory().observe_beacon(record, seq, seen, now),
            None => Err(Refused::Stale),
        };
        if matches!(result, Err(Refused::Repeated | Refused::Stale)) {
            self.counters.beacons_stale.fetch_add(1, Ordering::Relaxed);
        }
        self.took(result);
    }

    fn took(&self, result: Result<Option<Presence>, Refused>) {
        match result {
            Ok(Some(change)) => self.announce(vec![change]),
            Ok(None) | Err(Refused::Myself | Refused::Stale | Refused::Repeated) => {}
            Err(Refused::Full) => {
                let n = self.counters.refused_full.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(refused = n, "peer directory full; refusing new peers");
                }
            }
        }
    }

    fn announce(&self, changes: Vec<Presence>) {
        if changes.is_empty() {
            return;
        }
        for change in changes {
            match &change {
                Presence::Joined(p) => {
                    tracing::info!(mesh = %self.config.mesh, peer = %p.id, endpoints = ?p.endpoints, "peer joined")
                }
                Presence::Updated(p) => {
                    tracing::debug!(mesh = %self.config.mesh, peer = %p.id, "peer updated")
                }
                Presence::Left(p) => {
                    tracing::info!(mesh = %self.config.mesh, peer = %p.id, "peer left (silent too long)")
                }
            }
            // No subscriber is fine: presence is a notification, the directory is the truth.
            let _ = self.presence.send(change);
        }
        self.version.send_modify(|v| *v += 1);
    }

    fn answer_gossip(
        &self,
        mesh: &str,
        caller: Option<PeerRecord>,
    ) -> Result<GossipReply, HandlerError> {
        if mesh != self.config.mesh {
            return Err(HandlerError::new(
                ErrorKind::WrongMesh.as_str(),
                format!("this node is in mesh {:?}, not {mesh:?}", self.config.mesh),
            ));
        }
        let now = Instant::now();
        if let Some(caller) = caller {
            match caller.validate() {
                Ok(()) => self.observe(caller, now, now),
                Err(why) => tracing::debug!(why, "ignoring invalid caller record in gossip"),
            }
        }
        let mut peers: Vec<GossipEntry> = self
            .directory()
            .with_ages(now)
            .into_iter()
            .map(|(peer, age_ms)| GossipEntry { peer, age_ms })
            .collect();
        if let Some(me) = self.me() {
            peers.push(GossipEntry {
                peer: me,
                age_ms: 0,
            });
        }
        Ok(GossipReply {
            mesh: self.config.mesh.clone(),
            peers,
        })
    }

    fn take_gossip(&self, reply: GossipReply, asked_at: Instant) -> Result<(), String> {
        if reply.mesh != self.config.mesh {
            return Err(format!("peer answered for mesh {:?}", reply.mesh));
        }
        let now = Instant::now();
        let limit = self.config.max_peers.saturating_add(1);
        for entry in reply.peers.into_iter().take(limit) {
            if let Err(why) = entry.peer.validate() {
                tracing::debug!(why, "ignoring invalid gossip entry");
                continue;
            }
            // Ages are measured by the responder when it answered, which was no earlier
            // than when we asked: counting from `asked_at` never makes a peer look fresher.
            let seen = asked_at
                .checked_sub(Duration::from_millis(entry.age_ms))
                .unwrap_or(asked_at);
            self.observe(entry.peer, seen.min(now), now);
        }
        Ok(())
    }
}

async fn hear_beacons(inner: Arc<Inner>, socket: Arc<tokio::net::UdpSocket>) {
    let mut buf = vec![0u8; MAX_BEACON_BYTES + 1];
    let me = inner.me().map(|m| m.id);
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                tracing::debug!(error = %e, "beacon receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let datagram = buf.get(..len).unwrap_or_default();
        let opened;
        let (datagram, sealed_ms) = match &inner.beacon_trust {
            None => (datagram, None),
            Some(trust) => {
                // Time-checked, no nonce cache (see `Trust::open_windowed`): repeats are
                // refused by the beacon's number, stale ones by its sealed time.
                match trust.open_windowed(&Bytes::copy_from_slice(datagram), Kind::Beacon) {
                    Ok(beacon) => {
                        opened = beacon;
                        (&opened.event[..], Some(opened.timestamp_ms))
                    }
                    Err(rejection) => {
                        let n = inner
                            .counters
                            .beacons_unauthenticated
                            .fetch_add(1, Ordering::Relaxed)
                            + 1;
                        // Rate-limited: a warning at 1, 2, 4, 8, ... ignored beacons.
                        if n.is_power_of_two() {
                            tracing::warn!(%from, %rejection, ignored = n, "ignoring a beacon refused by the mesh key");
                        } else {
                            tracing::debug!(%from, %rejection, "ignoring a beacon refused by the mesh key");
                        }
                        continue;
                    }
                }
            }
        };
        match Beacon::decode(datagram, &inner.config.mesh) {
            Ok(beacon) => {
                inner.counters.beacons_heard.fetch_add(1, Ordering::Relaxed);
                if me.as_deref() != Some(beacon.peer.id.as_str()) {
                    match sealed_ms {
                        Some(sealed_ms) => inner.observe_beacon(beacon.peer, beacon.seq, sealed_ms),
                        // Without a key discovery is open by design: heard is current.
                        None => {
                            let now = Instant::now();
                            inner.observe(beacon.peer, now, now);
                        }
                    }
                }
            }
            Err(BeaconError::OtherMesh(mesh)) => {
                inner
                    .counters
                    .beacons_foreign
                    .fetch_add(1, Ordering::Relaxed);
                tracing::trace!(%from, mesh, "ignoring beacon of another mesh");
            }
            Err(e) => {
                let n = inner
                    .counters
                    .beacons_malformed
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                if n.is_power_of_two() {
                    tracing::warn!(%from, error = %e, malformed = n, "ignoring bad datagram on the beacon port");
                } else {
                    tracing::debug!(%from, error = %e, "ignoring bad datagram on the beacon port");
                }
            }
        }
    }
}

async fn send_beacons(
    inner: Arc<Inner>,
    socket: Arc<tokio::net::UdpSocket>,
    mut beacon: Beacon,
    config: BeaconConfig,
) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beacon.seq = 0;
    loop {
        ticker.tick().await;
        // Numbered and sealed afresh on every tick: the number and the sealed time are
        // what receivers refuse replays by.
        beacon.seq += 1;
        let bytes = match beacon.encode() {
            Ok(bytes) => bytes,
            // Checked at start with the largest number: cannot happen.
            Err(e) => {
                tracing::warn!(error = %e, "beacon not encoded");
                continue;
            }
        };
        let sealed = inner
            .beacon_trust
            .as_ref()
            .map(|trust| trust.seal(Kind::Beacon, &bytes, &[]));
        let datagram = sealed.as_deref().unwrap_or(&bytes);
        for target in &config.targets {
            match socket.send_to(datagram, target).await {
                Ok(_) => {
                    inner.counters.beacons_sent.fetch_add(1, Ordering::Relaxed);
                }
                // A cut link or missing route: the next tick tries again.
                Err(e) => tracing::debug!(%target, error = %e, "beacon not sent"),
            }
        }
    }
}

async fn gossip_loop(inner: Arc<Inner>) {
    let interval = inner.config.gossip_interval;
    let mut client_config = ClientConfig::default()
        .connect_timeout(interval)
        .default_timeout(interval);
    client_config.mesh_key = inner.config.mesh_key.clone();
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let me = inner.me();
        let own: HashSet<String> = me.iter().flat_map(|m| m.endpoints.clone()).collect();
        let mut targets: Vec<String> = inner.config.seeds.clone();
        targets.extend(inner.dns_seeds());
        {
            let known: Vec<String> = inner
                .directory()
                .records()
                .filter_map(|r| r.endpoint().map(str::to_owned))
                .collect();
            // A few random known peers per round spread news in O(log n) rounds.
            let fanout = inner.config.gossip_fanout.min(known.len());
            let start = if known.is_empty() {
                0
            } else {
                (super::balance::random_u64() % known.len() as u64) as usize
            };
            targets.extend((0..fanout).map(|k| known[(start + k) % known.len()].clone()));
        }
        targets.retain(|t| !own.contains(t));
        targets.sort();
        targets.dedup();
        // Keep connections only to endpoints still worth asking.
        clients.retain(|endpoint, _| targets.contains(endpoint));
        let calls = targets.iter().map(|endpoint| {
            let client = clients
                .entry(endpoint.clone())
                .or_insert_with(|| Client::with_config(endpoint.clone(), client_config.clone()))
                .clone();
            let mesh = inner.config.mesh.clone();
            let me = me.clone();
            async move {
                let asked_at = Instant::now();
                let options = CallOptions::timeout(interval);
                let reply = client
                    .call_with::<GossipReply>(GOSSIP_METHOD, (mesh, me), options)
                    .await;
                (client.endpoint().to_owned(), asked_at, reply)
            }
        });
        for (endpoint, asked_at, reply) in futures::future::join_all(calls).await {
            let result = reply
                .map_err(|e| e.to_string())
                .and_then(|r| inner.take_gossip(r, asked_at));
            match result {
                Ok(()) => inner.counters.gossip_ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "gossip exchange failed");
                    inner.counters.gossip_failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// Resolves the DNS seeds every refresh period; a failed lookup keeps the last good ones.
async fn dns_loop(inner: Arc<Inner>, source: super::dns::DnsSource) {
    let mut ticker = tokio::time::interval(source.refresh());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match source.resolve().await {
            Ok(found) => {
                inner.counters.dns_ok.fetch_add(1, Ordering::Relaxed);
                let mut seeds = inner
                    .dns_seeds
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *seeds != found {
                    tracing::info!(seeds = ?found, "DNS seeds changed");
                    *seeds = found;
                }
            }
            Err(e) => {
                inner.counters.dns_failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "DNS lookup failed; keeping the last seeds");
            }
        }
    }
}

async fn expire_loop(inner: Arc<Inner>) {
    let mut ticker = tokio::time::interval(inner.config.expire_after / 8);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let left = inner.directory().expire(Instant::now());
        inner.announce(left);
    }
}
