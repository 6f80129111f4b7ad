//! Provides the node's table of open channels, per client connection: what the dispatcher
//! consults to route heartbeats, credit and cancels, what enforces the per-connection limit,
//! and what the heartbeat sweeper walks.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::wire::MessageId;
use zmesh_proto::credit::SendCredit;
use zmesh_proto::liveness::{Liveness, Verdict};

/// Send credit of one streaming channel (`_zpc_more`): the rule is
/// [`SendCredit`]'s, this adds the wait for a grant.
#[derive(Debug, Default)]
pub(crate) struct Credit {
    credit: SendCredit,
    notify: Notify,
}

impl Credit {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Waits for one unit of credit and takes it.
    pub(crate) async fn take(&self) {
        while !self.credit.try_take() {
            // notify_one stores a permit when nobody waits, so a grant that lands between
            // the check above and this await is not lost.
            self.notify.notified().await;
        }
    }

    pub(crate) fn grant(&self, n: u64) {
        self.credit.grant(n);
        self.notify.notify_one();
    }
}

/// One open channel (a running call).
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) route: Vec<Bytes>,
    pub(crate) abort: Option<AbortHandle>,
    pub(crate) credit: Option<Arc<Credit>>,
    /// The client's heartbeats and ours.
    pub(crate) liveness: Liveness,
    /// Bytes of the request that opened the channel, counted against the connection's
    /// in-flight bytes until the channel closes.
    pub(crate) size: usize,
}

#[derive(Debug, Default)]
struct PeerCalls {
    channels: HashMap<MessageId, Channel>,
    /// Sum of the open channels' request sizes.
    bytes: usize,
}

impl PeerCalls {
    /// Why a request of `size` bytes may not open a channel now, if it may not.
    fn refusal(&self, id: &MessageId, size: usize, limits: PeerLimits) -> Option<OpenError> {
        if self.channels.len() >= limits.calls {
            Some(OpenError::PeerCalls)
        } else if self.bytes.saturating_add(size) > limits.bytes {
            Some(OpenError::PeerBytes)
        } else if self.channels.contains_key(id) {
            Some(OpenError::Duplicate)
        } else {
            None
        }
    }

    fn remove(&mut self, id: &MessageId) -> Option<Channel> {
        let channel = self.channels.remove(id)?;
        self.bytes = self.bytes.saturating_sub(channel.size);
        Some(channel)
    }
}

/// What one client connection may have in flight at once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerLimits {
    /// Open channels (running calls).
    pub(crate) calls: usize,
    /// Sum of the open channels' request sizes in bytes.
    pub(crate) bytes: usize,
}

/// What the sweeper decided for one channel.
#[derive(Debug)]
pub(crate) struct Due {
    pub(crate) route: Vec<Bytes>,
    pub(crate) channel: MessageId,
}

/// Open channels keyed by client connection identity, then channel id.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    peers: Mutex<HashMap<Bytes, PeerCalls>>,
}

/// Why a channel could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// The connection is at its bound on running calls.
    PeerCalls,
    /// The request would take the connection over its bound on in-flight bytes.
    PeerBytes,
    /// The node is past half its bound on concurrent calls and this connection holds at
    /// least half as many calls as there are free slots.
    FairShare {
        /// The connection's calls in flight.
        holds: u32,
        /// The node's free call slots.
        free: u32,
    },
    Duplicate,
}

/// The node-wide picture [`Registry::admit`] needs to share the node fairly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NodeLoad {
    /// Calls running on the node now.
    pub(crate) in_flight: usize,
    /// The node's bound on concurrent calls.
    pub(crate) limit: usize,
}

impl NodeLoad {
    /// Whether a connection holding `holds` calls is refused a new one.
    ///
    /// Past half its limit the node is under pressure, and a connection may then hold
    /// fewer calls than half the free slots: the more a connection holds, the sooner it
    /// is refused, and what is left can never be taken by connections already holding
    /// calls (each may take at most half of it), so a connection with none is served
    /// while any slot is free. Below half the limit only the per-connection bounds apply,
    /// and so they do while this connection is the only one holding calls (there is nobody
    /// to be fair to: a newcomer holds none).
    fn refuses(self, holds: usize, others_hold_calls: bool) -> Option<usize> {
        let free = self.limit.saturating_sub(self.in_flight);
        let under_pressure = self.in_flight >= self.limit / 2;
        (under_pressure && others_hold_calls && holds > 0 && holds * 2 >= free).then_some(free)
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, PeerCalls>> {
        // A poisoned lock only means a panic elsewhere mid-update of plain data; the map is
        // still structurally sound, so keep serving.
        self.peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a channel (or hands it back with the reason it was refused), then runs `spawn` while the lock is held so the spawned task cannot
    /// finish (and try to close the channel) before it is registered.
    pub(crate) fn open(
        &self,
        peer: &Bytes,
        id: MessageId,
        mut channel: Channel,
        limits: PeerLimits,
        spawn: impl FnOnce() -> AbortHandle,
    ) -> Result<(), (OpenError, Channel)> {
        let mut peers = self.lock();
        if let Some(refusal) = peers
            .get(peer)
            .and_then(|calls| calls.refusal(&id, channel.size, limits))
        {
            return Err((refusal, channel));
        }
        if channel.size > limits.bytes {
            return Err((OpenError::PeerBytes, channel));
        }
        // Only now is an entry made, so a refused peer leaves nothing behind.
        let calls = peers.entry(peer.clone()).or_default();
        channel.abort = Some(spawn());
        calls.bytes += channel.size;
        calls.channels.insert(id, channel);
        Ok(())
    }

    /// Checks that a request of `size` bytes may open a channel: its connection is under
    /// its bounds on calls and bytes, and the id is not already running. One lock, no
    /// allocation: this runs for every request.
    ///
    /// Under pressure (`load` past half its limit) the connections that hold the most
    /// running calls are refused first, so one that holds few is still served (see
    /// [`NodeLoad`]).
    pub(crate) fn admit(
        &self,
        peer: &Bytes,
        id: &MessageId,
        size: usize,
        limits: PeerLimits,
        load: NodeLoad,
    ) -> Result<(), OpenError> {
        let peers = self.lock();
        let calls = peers.get(peer);
        if let Some(refusal) = calls.and_then(|calls| calls.refusal(id, size, limits)) {
            return Err(refusal);
        }
        if size > limits.bytes {
            return Err(OpenError::PeerBytes);
        }
        let holds = calls.map_or(0, |calls| calls.channels.len());
        let others_hold_calls = peers.len() > usize::from(calls.is_some());
        match load.refuses(holds, others_hold_calls) {
            // Both below the node's bound, which is at most u32::MAX (NodeConfig::validate).
            Some(free) => Err(OpenError::FairShare {
                holds: holds as u32,
                free: free as u32,
            }),
            None => Ok(()),
        }
    }

    /// Client connections with at least one call in flight (the table holds no others).
    pub(crate) fn peers(&self) -> usize {
        self.lock().len()
    }

    /// Closes a channel; a no-op if it is already gone.
    pub(crate) fn close(&self, peer: &Bytes, id: &MessageId) -> Option<Channel> {
        let mut peers = self.lock();
        let calls = peers.get_mut(peer)?;
        let channel = calls.remove(id);
        if calls.channels.is_empty() {
            peers.remove(peer);
        }
        channel
    }

    /// Records a heartbeat (or any event) from the client on a channel; false if unknown.
    pub(crate) fn heard(&self, peer: &Bytes, id: &MessageId, now: Instant) -> bool {
        let mut peers = self.lock();
        match peers.get_mut(peer).and_then(|c| c.channels.get_mut(id)) {
            Some(channel) => {
                channel.liveness.heard(now);
                true
            }
            None => false,
        }
    }

    /// The credit of a streaming channel; `None` if unknown or not a stream.
    pub(crate) fn credit(&self, peer: &Bytes, id: &MessageId) -> Option<Arc<Credit>> {
        let peers = self.lock();
        peers.get(peer)?.channels.get(id)?.credit.clone()
    }

    /// Removes every channel of a client connection (it disconnected).
    pub(crate) fn close_peer(&self, peer: &Bytes) -> Vec<Channel> {
        let mut peers = self.lock();
        peers
            .remove(peer)
            .map(|c| c.channels.into_values().collect())
            .unwrap_or_default()
    }

    /// Removes every channel (shutdown).
    pub(crate) fn close_all(&self) -> Vec<(MessageId, Channel)> {
        let mut peers = self.lock();
        peers.drain().flat_map(|(_, c)| c.channels).collect()
    }

    pub(crate) fn open_channels(&self) -> usize {
        self.lock().values().map(|c| c.channels.len()).sum()
    }

    /// One heartbeat pass: returns the channels that are due a heartbeat and removes (and
    /// returns) those whose client has been silent too long ([`Liveness::channel`]:
    /// zerorpc's timing).
    pub(crate) fn sweep(&self, now: Instant) -> (Vec<Due>, Vec<Channel>) {
        let mut due = Vec::new();
        let mut lost = Vec::new();
        let mut peers = self.lock();
        peers.retain(|_, calls| {
            calls.channels.retain(|id, ch| match ch.liveness.poll(now) {
                Verdict::Lost => {
                    let dead = Channel {
                        route: std::mem::take(&mut ch.route),
                        abort: ch.abort.take(),
                        credit: None,
                        ..*ch
                    };
                    calls.bytes = calls.bytes.saturating_sub(dead.size);
                    lost.push(dead);
                    false
                }
                Verdict::Heartbeat => {
                    due.push(Due {
                        route: ch.route.clone(),
                        channel: id.clone(),
                    });
                    true
                }
                Verdict::Quiet => true,
            });
            !calls.channels.is_empty()
        });
        (due, lost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn channel_every(now: Instant, period: Duration) -> Channel {
        Channel {
            route: vec![Bytes::from_static(b"peer")],
            abort: None,
            credit: None,
            liveness: Liveness::channel(period, now),
            size: 10,
        }
    }

    fn channel(now: Instant) -> Channel {
        channel_every(now, Duration::from_secs(1))
    }

    fn limits(calls: usize, bytes: usize) -> PeerLimits {
        PeerLimits { calls, bytes }
    }

    fn dummy_abort() -> AbortHandle {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async { tokio::spawn(async {}).abort_handle() })
    }

    #[test]
    fn per_peer_limit_and_close() {
        let reg = Registry::default();
        let peer = Bytes::from_static(b"p");
        let now = Instant::now();
        let a = MessageId::from_bin(b"a");
        assert!(
            reg.open(&peer, a.clone(), channel(now), limits(1, 100), dummy_abort)
                .is_ok()
        );
        let b = MessageId::from_bin(b"b");
        assert!(matches!(
            reg.open(&peer, b, channel(now), limits(1, 100), dummy_abort),
            Err((OpenError::PeerCalls, _))
        ));
        assert!(reg.close(&peer, &a).is_some());
        assert_eq!(reg.open_channels(), 0);
        assert_eq!(
            reg.peers(),
            0,
            "a peer with nothing in flight leaves no entry"
        );
    }

    const IDLE: NodeLoad = NodeLoad {
        in_flight: 0,
        limit: 100,
    };

    #[test]
    fn under_pressure_the_connections_holding_the_most_are_refused_first() {
        let reg = Registry::default();
        let now = Instant::now();
        let l = limits(1000, usize::MAX);
        let (heavy, light, new) = (
            Bytes::from_static(b"heavy"),
            Bytes::from_static(b"light"),
            Bytes::from_static(b"new"),
        );
        for n in 0..60u32 {
            let id = MessageId::from_bin(&n.to_be_bytes());
            reg.open(&heavy, id, channel(now), l, dummy_abort)
                .expect("under the per-connection bound");
        }
        for n in 0..10u32 {
            let id = MessageId::from_bin(&(1000 + n).to_be_bytes());
            reg.open(&light, id, channel(now), l, dummy_abort)
                .expect("under the per-connection bound");
        }
        let next = MessageId::from_bin(b"next");
        // Below half the limit nobody is refused for fairness.
        let calm = NodeLoad {
            in_flight: 49,
            limit: 200,
        };
        assert_eq!(reg.admit(&heavy, &next, 1, l, calm), Ok(()));
        // Under pressure, 30 slots free: 60 >= 15, 10 < 15.
        let pressed = NodeLoad {
            in_flight: 70,
            limit: 100,
        };
        assert_eq!(
            reg.admit(&heavy, &next, 1, l, pressed),
            Err(OpenError::FairShare {
                holds: 60,
                free: 30
            })
        );
        assert_eq!(reg.admit(&light, &next, 1, l, pressed), Ok(()));
        // With 2 slots free, only a connection holding nothing gets one.
        let nearly_full = NodeLoad {
            in_flight: 98,
            limit: 100,
        };
        assert!(reg.admit(&light, &next, 1, l, nearly_full).is_err());
        assert_eq!(reg.admit(&new, &next, 1, l, nearly_full), Ok(()));
        // A connection alone in holding calls may use the whole node.
        reg.close_peer(&light);
        assert_eq!(reg.admit(&heavy, &next, 1, l, nearly_full), Ok(()));
    }

    #[test]
    fn per_peer_bytes_are_counted_and_released() {
        let reg = Registry::default();
        let (p, q) = (Bytes::from_static(b"p"), Bytes::from_static(b"q"));
        let now = Instant::now();
        let l = limits(100, 25);
        let (a, b, c) = (
            MessageId::from_bin(b"a"),
            MessageId::from_bin(b"b"),
            MessageId::from_bin(b"c"),
        );
        reg.open(&p, a.clone(), channel(now), l, dummy_abort)
            .expect("10 of 25");
        reg.open(&p, b.clone(), channel(now), l, dummy_abort)
            .expect("20 of 25");
        assert_eq!(reg.admit(&p, &c, 10, l, IDLE), Err(OpenError::PeerBytes));
        assert_eq!(reg.admit(&p, &c, 5, l, IDLE), Ok(()));
        assert!(matches!(
            reg.open(&p, c.clone(), channel(now), l, dummy_abort),
            Err((OpenError::PeerBytes, _))
        ));
        // Another connection has its own budget.
        reg.open(&q, c.clone(), channel(now), l, dummy_abort)
            .expect("q is not charged for p");
        // A request larger than the whole budget is refused even on an idle connection,
        // and leaves no entry behind.
        let idle = Bytes::from_static(b"idle");
        let mut big = channel(now);
        big.size = 26;
        assert_eq!(reg.admit(&idle, &a, 26, l, IDLE), Err(OpenError::PeerBytes));
        assert!(reg.open(&idle, a.clone(), big, l, dummy_abort).is_err());
        assert_eq!(reg.peers(), 2);
        reg.close(&p, &a);
        reg.open(&p, c, channel(now), l, dummy_abort)
            .expect("closing released 10 bytes");
        // Channels lost by the sweeper release their bytes and entries too.
        let (_, lost) = reg.sweep(now + Duration::from_secs(60));
        assert_eq!(lost.len(), 3);
        assert_eq!(reg.peers(), 0);
        reg.open(&p, b, channel(now), l, dummy_abort)
            .expect("budget back after the sweep");
    }

    #[test]
    fn sweep_follows_zerorpc_timing() {
        let reg = Registry::default();
        let peer = Bytes::from_static(b"p");
        let t0 = Instant::now();
        let period = Duration::from_secs(5);
        reg.open(
            &peer,
            MessageId::from_bin(b"a"),
            channel_every(t0, period),
            limits(10, 1000),
            dummy_abort,
        )
        .expect("opens");
        let (due, lost) = reg.sweep(t0 + Duration::from_secs(4));
        assert!(due.is_empty() && lost.is_empty());
        let (due, lost) = reg.sweep(t0 + Duration::from_secs(5));
        assert_eq!((due.len(), lost.len()), (1, 0));
        // Never heard: lost only after opened + period + 2 * period.
        let (_, lost) = reg.sweep(t0 + Duration::from_secs(15));
        assert!(lost.is_empty());
        let (_, lost) = reg.sweep(t0 + Duration::from_millis(15_001));
        assert_eq!(lost.len(), 1);
        assert_eq!(reg.open_channels(), 0);
    }

    #[tokio::test]
    async fn credit_waits_for_grants() {
        let credit = Arc::new(Credit::new());
        credit.take().await;
        let waiter = tokio::spawn({
            let credit = credit.clone();
            async move { credit.take().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        credit.grant(2);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("granted credit wakes the sender")
            .expect("task ok");
    }
}
