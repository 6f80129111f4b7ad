//! Provides the optional event forwarder: an XSUB socket publishers connect to and an XPUB
//! socket subscribers connect to, with messages passed on frame for frame (so zerorpc events
//! arrive unchanged) and subscriptions passed back upstream, as the ZeroMQ Guide's forwarder
//! device does. Messages over the device's `max_message_size` are dropped and counted: the
//! `zeromq` crate has no size limit of its own, so this is where the forwarder gets one.

use futures::FutureExt;
use tokio::sync::watch;
use zeromq::{Socket, SocketRecv, SocketSend, XPubSocket, XSubSocket};

use std::sync::Arc;

use crate::{DeviceError, Shared};

/// The two bound sockets of a forwarder.
pub(crate) struct Forwarder {
    xsub: XSubSocket,
    xpub: XPubSocket,
    pub(crate) events_in: String,
    pub(crate) events_out: String,
}

impl Forwarder {
    pub(crate) async fn bind(
        events_in: &zmesh_core::Endpoint,
        events_out: &zmesh_core::Endpoint,
    ) -> Result<Self, DeviceError> {
        let mut xsub = XSubSocket::new();
        let bound_in = crate::bind(&mut xsub, events_in).await?;
        let mut xpub = XPubSocket::new();
        let bound_out = crate::bind(&mut xpub, events_out).await?;
        Ok(Self {
            xsub,
            xpub,
            events_in: bound_in,
            events_out: bound_out,
        })
    }

    /// Forwards until `stop` changes. A failed receive or send is logged and skipped: one
    /// bad peer must not end the forwarder.
    pub(crate) async fn run(mut self, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
        let limit = shared.config.max_message_size;
        loop {
            // Both receives are made fresh each turn and dropped unfinished by `select!`;
            // the sockets' fair queues keep anything not yet taken.
            let turn = tokio::select! {
                biased;
                _ = stop.changed() => return,
                m = self.xpub.recv().fuse() => Turn::Subscription(m),
                m = self.xsub.recv().fuse() => Turn::Event(m),
            };
            let oversized = match &turn {
                Turn::Event(Ok(m)) | Turn::Subscription(Ok(m)) => message_size(m) > limit,
                _ => false,
            };
            if oversized {
                shared.lock().count_oversized_event();
                tracing::debug!(limit, "oversized message dropped by the event forwarder");
                continue;
            }
            match turn {
                Turn::Event(Ok(message)) => {
                    if let Err(e) = self.xpub.send(message).await {
                        tracing::debug!(error = %e, "event not forwarded");
                    }
                }
                Turn::Subscription(Ok(message)) => {
                    if let Err(e) = self.xsub.send(message).await {
                        tracing::debug!(error = %e, "subscription not forwarded");
                    }
                }
                Turn::Event(Err(e)) | Turn::Subscription(Err(e)) => {
                    // A peer went away mid-read; avoid a hot loop if it repeats.
                    tracing::debug!(error = %e, "forwarder receive failed");
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        }
    }
}

/// Bytes of a message's frames together (what the limit is measured against).
pub(crate) fn message_size(message: &zeromq::ZmqMessage) -> usize {
    message.iter().map(|frame| frame.len()).sum()
}

enum Turn {
    Event(zeromq::ZmqResult<zeromq::ZmqMessage>),
    Subscription(zeromq::ZmqResult<zeromq::ZmqMessage>),
}
