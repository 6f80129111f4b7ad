//! Provides worker mode: instead of binding a ROUTER, the node connects a DEALER to a proxy
//! device's backend, announces its methods (`READY`) and serves the requests the device
//! routes to it through the same dispatcher a bound node uses.
//!
//! A request arrives as `[client_id, "", event]`, the shape a node's ROUTER sees, so calls,
//! streams, heartbeats and cancels need nothing new. What is new is the link itself (the
//! Paranoid Pirate pattern of the ZeroMQ Guide): worker and device heartbeat each other, and
//! because the `zeromq` DEALER never reconnects by itself, this module notices a lost device
//! (socket disconnect, three silent heartbeat periods, or the device asking for a reset),
//! aborts the calls that can no longer be answered, reconnects and announces itself again.
//!
//! With a mesh key the whole link is sealed: the worker seals everything it sends (control
//! events and replies, as `Kind::Reply`) and opens everything it receives (the device's
//! control events and the clients' requests the device forwards unchanged, as
//! `Kind::Request`) with its own replay guard. So a worker without the key cannot register
//! with a keyed device, and a keyed worker ignores a device without it; either way the
//! refusal is counted and logged, and the link times out and is retried.
//!
//! A device that is not there is retried for ever, but not in silence: after
//! [`REGISTER_WARN_AFTER`] without a link the worker warns once, and says so (INFO) when it
//! registers after all.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zeromq::{DealerSocket, Socket, SocketEvent};

use super::Shared;
use super::dispatch::{self, Control, RateLimitedWarn};
use super::sender::{Keyed, Sender, WorkerOutlet};
use crate::read_turns::ReadTurns;
use crate::trust::{self, Kind, Rejection};
use crate::wire::worker::{self as proto, Ready};
use crate::wire::{self, EMPTY_ARRAY_ARGS, HEARTBEAT_ARGS, Header};
use zmesh_proto::liveness::Liveness;

/// Silent heartbeat periods after which the device is considered lost.
const DEVICE_LIVENESS: u32 = 3;
/// Longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a worker tries to reach its device before it warns that it is not registered
/// (it keeps trying): a device on the same machine or network answers in milliseconds, so a
/// few seconds mean a wrong address or a device that is not running.
pub(crate) const REGISTER_WARN_AFTER: Duration = Duration::from_secs(3);

/// What a worker announces and where.
pub(super) struct WorkerLink {
    pub(super) endpoint: String,
    pub(super) ready: Ready,
    pub(super) outlet: Arc<WorkerOutlet>,
    /// The mesh key's state when the node has one.
    pub(super) keyed: Option<Arc<Keyed>>,
}

/// Starts the task that keeps the link to the device up and reads from it.
pub(super) fn spawn(
    shared: Arc<Shared>,
    link: WorkerLink,
    control: Control,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(shared, link, control, stop))
}

/// How one link ended.
enum Ended {
    Stopped,
    Lost(String),
}

async fn run(
    shared: Arc<Shared>,
    link: WorkerLink,
    control: Control,
    mut stop: watch::Receiver<bool>,
) {
    let period = shared.config.heartbeat;
    let warn = RateLimitedWarn::default();
    let ready_args = match link.ready.encode_args() {
        Ok(args) => args,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the worker announcement");
            return;
        }
    };
    let mut backoff = Duration::from_millis(10);
    let mut unregistered = Unregistered::since(Instant::now());
    loop {
        let attempt = unregistered.noting(
            &link.endpoint,
            connect(&link.endpoint, period, &shared.config),
        );
        let connected = tokio::select! {
            biased;
            _ = stop.changed() => return,
            c = attempt => c,
        };
        let (socket, monitor) = match connected {
            Ok(connected) => connected,
            Err(e) => {
                tracing::debug!(device = %link.endpoint, error = %e, "cannot reach the device; retrying");
                let pause = unregistered.noting(&link.endpoint, tokio::time::sleep(backoff));
                tokio::select! {
                    biased;
                    _ = stop.changed() => return,
                    () = pause => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        if unregistered.warned {
            tracing::info!(
                device = %link.endpoint,
                after_s = unregistered.since.elapsed().as_secs_f64(),
                "registered with the device"
            );
        }
        // The device is every call's immediate peer: its address, once per link.
        let peers = match socket.peer_address() {
            Some(address) => dispatch::PeerAddresses::Fixed(address),
            None => dispatch::PeerAddresses::Unknown,
        };
        let (send, recv) = socket.split();
        link.outlet.set(Some(send));
        let header = Header::zmesh(None);
        control.send(wire::join_frames(
            &[],
            wire::encode_event(&header, proto::READY, &ready_args),
        ));
        tracing::info!(device = %link.endpoint, methods = link.ready.methods.len(), "worker announced itself");

        let door = dispatch::Door {
            inbound: match &link.keyed {
                Some(keyed) => dispatch::Inbound::Sealed(keyed.clone()),
                None => dispatch::Inbound::Plain,
            },
            // A worker's calls all come through its device.
            endpoint: Some(Arc::from(link.endpoint.to_string())),
            peers,
        };
        let ended = serve_link(&shared, &control, &warn, &door, recv, monitor, &mut stop).await;
        link.outlet.set(None);
        // The device that routed these calls is gone (or forgot us): nobody can receive
        // their replies, and a device that comes back will have failed or re-run them.
        let orphans = shared.registry.close_all();
        if !orphans.is_empty() {
            shared
                .counters
                .peers_lost
                .fetch_add(orphans.len() as u64, Ordering::Relaxed);
        }
        for (_, channel) in orphans {
            if let Some(abort) = channel.abort {
                abort.abort();
            }
        }
        match ended {
            Ended::Stopped => return,
            Ended::Lost(reason) => {
                tracing::info!(device = %link.endpoint, reason, "lost the device; reconnecting");
                unregistered = Unregistered::since(Instant::now());
            }
        }
    }
}

/// Since when the worker has had no link to its device, and whether it said so.
struct Unregistered {
    since: Instant,
    warned: bool,
}

impl Unregistered {
    fn since(since: Instant) -> Self {
        Self {
            since,
            warned: false,
        }
    }

    /// Runs `step` (a connection attempt, a pause), warning once if the worker is still
    /// unregistered [`REGISTER_WARN_AFTER`] after it lost (or never had) its link.
    async fn noting<F: std::future::Future>(&mut self, device: &str, step: F) -> F::Output {
        let mut step = std::pin::pin!(step);
        if !self.warned {
            let warn_at = self.since + REGISTER_WARN_AFTER;
            tokio::select! {
                out = &mut step => return out,
                () = tokio::time::sleep_until(warn_at.into()) => {
                    self.warned = true;
                    tracing::warn!(
                        device,
                        "not registered with the device after {:?}; is it running there? still trying",
                        REGISTER_WARN_AFTER
                    );
                }
            }
        }
        step.await
    }
}

async fn connect(
    endpoint: &str,
    period: Duration,
    config: &super::NodeConfig,
) -> Result<(DealerSocket, futures::channel::mpsc::Receiver<SocketEvent>), zeromq::ZmqError> {
    // The device is trusted more than a client, but a message from it is read under the
    // same wire limits (the connection cap has nothing to count on a connecting socket).
    let mut options = config.socket_options(1);
    options.connect_timeout((period * DEVICE_LIVENESS).max(Duration::from_millis(100)));
    let mut socket = DealerSocket::with_options(options);
    let monitor = socket.monitor();
    socket.connect(endpoint).await?;
    Ok((socket, monitor))
}

/// Reads one link until it is lost or the node stops, heartbeating the device meanwhile.
async fn serve_link(
    shared: &Arc<Shared>,
    control: &Control,
    warn: &RateLimitedWarn,
    door: &dispatch::Door,
    mut recv: zeromq::DealerRecvHalf,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let period = shared.config.heartbeat;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut device = Liveness::link(period, DEVICE_LIVENESS, Instant::now());
    let mut turns = ReadTurns::default();
    let mut actions = dispatch::Actions::new();
    loop {
        turns.handled_one().await;
        tokio::select! {
            biased;
            _ = stop.changed() => return Ended::Stopped,
            event = monitor.next() => match event {
                Some(SocketEvent::Disconnected(_)) | None => {
                    return Ended::Lost("disconnected".into());
                }
                Some(_) => {}
            },
            message = std::future::poll_fn(|cx| recv.poll_recv(cx)) => {
                let frames = match message {
                    Ok(message) => message.into_vec(),
                    Err(e) => return Ended::Lost(format!("receive failed: {e}")),
                };
                if is_from_device(&frames) {
                    // Only what the device really sent proves it alive.
                    let Some(event) = device_event(shared, warn, &door.inbound, &frames) else {
                        continue;
                    };
                    device.heard(Instant::now());
                    if event.name == proto::RESET {
                        return Ended::Lost("the device asked for a reset".into());
                    }
                } else {
                    device.heard(Instant::now());
                    dispatch::handle_message(shared, control, warn, frames, door, &mut actions);
                }
            }
            // The ticker paces the heartbeats: one as the link comes up, then every period.
            _ = ticker.tick() => {
                if device.is_lost(Instant::now()) {
                    return Ended::Lost(format!(
                        "no heartbeat from the device for {:?}",
                        device.silence_limit()
                    ));
                }
                let header = Header::zmesh(None);
                let event = wire::encode_event(&header, proto::WORKER_HEARTBEAT, HEARTBEAT_ARGS);
                control.send(wire::join_frames(&[], event));
            }
        }
    }
}

/// Control events from the device carry no client envelope: `["", event]` (or a bare event).
fn is_from_device(frames: &[bytes::Bytes]) -> bool {
    match frames {
        [_event] => true,
        [first, _event] => first.is_empty(),
        _ => false,
    }
}

/// A control event from the device, opened with the mesh key when the worker has one;
/// `None` (counted and logged when the key is why) when it must be ignored.
fn device_event(
    shared: &Shared,
    warn: &RateLimitedWarn,
    inbound: &dispatch::Inbound,
    frames: &[Bytes],
) -> Option<wire::Event> {
    let frame = frames.last()?;
    let device = Bytes::from_static(b"device");
    let refused = |rejection: &Rejection| {
        let counter = match rejection {
            Rejection::Replayed(_) => &shared.counters.replayed_messages,
            _ => &shared.counters.unauthenticated,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        warn.bad_input(&device, rejection, Instant::now());
    };
    let keyed = match inbound {
        dispatch::Inbound::Sealed(keyed) => Some(keyed),
        _ => None,
    };
    let opened = match keyed {
        Some(keyed) if trust::envelope::is_sealed(frame) => {
            match keyed.trust.open(frame, Kind::Request) {
                Ok(event) => event,
                Err(rejection) => {
                    refused(&rejection);
                    return None;
                }
            }
        }
        None if trust::envelope::is_sealed(frame) => {
            refused(&Rejection::Unauthenticated(
                "the device seals its messages with a mesh key; this worker has none".into(),
            ));
            return None;
        }
        _ => frame.clone(),
    };
    let event = wire::decode_event(&opened).ok()?;
    if event.name == proto::REFUSED {
        let (reason,): (String,) = rmp_serde::from_slice(&event.args).unwrap_or_default();
        refused(&Rejection::Unauthenticated(format!(
            "the device refused this worker: {reason}"
        )));
        return None;
    }
    if keyed.is_some() && !trust::envelope::is_sealed(frame) {
        refused(&Rejection::Unauthenticated(format!(
            "unsealed {} from the device (it has no mesh key?)",
            event.name
        )));
        return None;
    }
    Some(event)
}

/// Tells the device to route no new calls here (graceful shutdown); best effort.
pub(super) async fn say_bye(shared: &Shared) {
    if !matches!(shared.sender, Sender::Worker(_)) {
        return;
    }
    let event = wire::encode_event(&Header::zmesh(None), proto::BYE, EMPTY_ARRAY_ARGS);
    let mut sender = shared.sender.clone();
    let sent = tokio::time::timeout(
        shared.config.heartbeat,
        sender.send(wire::join_frames(&[], event)),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!("could not tell the device this worker is leaving");
    }
}
