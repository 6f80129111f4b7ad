//! Unmodified upstream `zeromq` 0.7.0 from crates.io (the package `zeromq`, renamed
//! `zeromq_upstream` here), as the same DEALER -> ROUTER echo of one frame the `raw` row
//! runs on zmesh's fork: the fork's changes (`vendor/zmesh-zeromq/PATCHED.md`) speed up that
//! baseline too, so each row is also given against this one.

use zeromq_upstream::{RouterSocket, Socket, SocketRecv, SocketSend};

use crate::Error;

/// Binds a ROUTER on a free loopback port; returns its endpoint and the loop sending every
/// message back unchanged.
pub(crate) async fn serve() -> Result<(String, impl Future<Output = ()>), Error> {
    let mut router = RouterSocket::new();
    let endpoint = router
        .bind("tcp://127.0.0.1:0")
        .await
        .map_err(|e| Error::Server(format!("upstream ROUTER bind: {e}")))?
        .to_string();
    let echo = async move {
        while let Ok(message) = router.recv().await {
            if let Err(e) = router.send(message).await {
                eprintln!("upstream echo: reply not sent: {e}");
            }
        }
    };
    Ok((endpoint, echo))
}

crate::raw::dealer_row!(zeromq_upstream, "upstream zeromq");
