//! Endpoints: [`Endpoint`], parsed once (from zmesh-proto: `tcp://host:port` or
//! `ipc://path`, with [`EndpointError`] for anything else), and the housekeeping the `zeromq`
//! crate leaves to its users: clearing a stale ipc socket file before binding, and waiting
//! after a close until a listener has really let go of its address, so that a node or
//! device restarted on the same endpoint can bind it.
//!
//! Why the wait matters: once a split socket is dropped, the crate stops its accept loop
//! asynchronously, and for ipc that loop deletes the socket *path* afterwards. A restart that
//! binds the same path in between gets its fresh socket file deleted by the old loop, and
//! nobody can connect to it again.

use std::time::{Duration, Instant};

pub use zmesh_proto::endpoint::{Endpoint, EndpointError};

/// How long [`wait_released`] waits at most for the crate to stop a listener.
pub const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// Removes a leftover ipc socket file that nobody listens on (a crashed process leaves one
/// behind, and binding over it fails). A live listener is left alone, so binding then fails
/// with "address in use" as it should. Nothing to do for `tcp://`.
pub fn remove_stale_ipc_socket(endpoint: &Endpoint) {
    #[cfg(unix)]
    if let Some(path) = endpoint.path() {
        use std::os::unix::fs::FileTypeExt;
        let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
        if is_socket
            && std::os::unix::net::UnixStream::connect(path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            tracing::info!(path = %path.display(), "removing stale ipc socket file");
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Waits, up to [`RELEASE_WAIT`], until the listener that was bound on `endpoint` is gone:
/// for `ipc://` until the crate's accept loop has deleted the socket file (the last thing
/// it does), for `tcp://` until nothing accepts connections on the address.
pub async fn wait_released(endpoint: &Endpoint) {
    let deadline = Instant::now() + RELEASE_WAIT;
    while Instant::now() < deadline {
        if !still_bound(endpoint).await {
            return;
        }
        // Polling is the only way: the crate exposes no completion for a split socket's
        // accept loop.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tracing::debug!(%endpoint, "listener not released after shutdown");
}

/// [`wait_released`] for every one of `endpoints` that parses (the resolved endpoints a
/// socket reported after binding always do).
pub async fn wait_all_released(endpoints: &[String]) {
    for endpoint in endpoints {
        match endpoint.parse::<Endpoint>() {
            Ok(endpoint) => wait_released(&endpoint).await,
            Err(e) => {
                tracing::debug!(endpoint, error = %e, "not waiting for an unparsable endpoint")
            }
        }
    }
}

async fn still_bound(endpoint: &Endpoint) -> bool {
    match endpoint {
        Endpoint::Ipc { path, .. } => std::fs::symlink_metadata(path).is_ok(),
        Endpoint::Tcp { host, port, .. } => {
            tokio::net::TcpStream::connect(format!("{host}:{port}"))
                .await
                .is_ok()
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ipc_endpoint_is_released_once_its_socket_file_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.sock");
        let endpoint: Endpoint = format!("ipc://{}", path.display()).parse().expect("valid");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(still_bound(&endpoint).await);
        drop(listener);
        // The file outlives the listener, as with the crate until its accept loop ends.
        assert!(still_bound(&endpoint).await);
        remove_stale_ipc_socket(&endpoint);
        assert!(!still_bound(&endpoint).await);
        tokio::time::timeout(Duration::from_secs(1), wait_released(&endpoint))
            .await
            .expect("returns at once for a released endpoint");
    }

    #[tokio::test]
    async fn a_live_ipc_listener_is_not_taken_for_stale() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("live.sock");
        let endpoint: Endpoint = format!("ipc://{}", path.display()).parse().expect("valid");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        remove_stale_ipc_socket(&endpoint);
        assert!(path.exists(), "a live listener's socket file stays");
    }
}
