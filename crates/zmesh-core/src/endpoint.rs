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
//!
//! It also holds the one rule for "nothing is listening there": the crate retries a refused
//! connection silently until its connect timeout, so [`refused`] probes the address itself
//! and reports the refusal once it has lasted [`REFUSED_GRACE`].

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

/// How long connections to an endpoint must keep being refused before [`refused`] reports
/// it: long enough for a listener that is just starting (a node a test or script started a
/// moment before) to bind, short enough that a user with a wrong port hears so at once.
pub const REFUSED_GRACE: Duration = Duration::from_secs(1);

/// How a refusal [`refused`] reported is put to the user, by every verb and the client.
pub const REFUSED: &str = "connection refused: nothing is listening there";

/// Pause between two probes of [`refused`]; also how long it waits before the first, so a
/// connection to a live listener (done in a millisecond on loopback) costs no probe.
const REFUSED_PROBE_EVERY: Duration = Duration::from_millis(100);

/// Completes with the last refusal once every probe of `endpoint` for [`REFUSED_GRACE`]
/// was refused (`tcp://`: `ConnectionRefused`; `ipc://`: no socket file, or nobody
/// listening on it). Pending forever once a probe is accepted or fails otherwise: then
/// something is there, and the connection attempt it races against decides. Each probe
/// is a plain connection closed at once, which a ZMTP listener shrugs off.
pub async fn refused(endpoint: &Endpoint) -> std::io::Error {
    let mut first_refusal: Option<Instant> = None;
    loop {
        tokio::time::sleep(REFUSED_PROBE_EVERY).await;
        match probe(endpoint).await {
            Err(e) if is_refusal(&e) => {
                let since = *first_refusal.get_or_insert_with(Instant::now);
                if since.elapsed() + REFUSED_PROBE_EVERY > REFUSED_GRACE {
                    return e;
                }
            }
            _ => return std::future::pending().await,
        }
    }
}

/// Whether a connect error means nobody listens at the address (as the `zeromq` crate,
/// which retries exactly these).
pub fn is_refusal(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
    )
}

async fn probe(endpoint: &Endpoint) -> std::io::Result<()> {
    match endpoint {
        #[cfg(unix)]
        Endpoint::Ipc { path, .. } => tokio::net::UnixStream::connect(path).await.map(drop),
        #[cfg(not(unix))]
        Endpoint::Ipc { .. } => std::future::pending().await,
        Endpoint::Tcp { host, port, .. } => {
            // Bounded: an address that drops SYNs would otherwise hold a probe for minutes.
            match tokio::time::timeout(
                REFUSED_GRACE,
                tokio::net::TcpStream::connect(format!("{host}:{port}")),
            )
            .await
            {
                Ok(result) => result.map(drop),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
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
    async fn a_port_nobody_listens_on_is_reported_refused_after_the_grace() {
        // A port that was just free: bind, read it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let endpoint: Endpoint = format!("tcp://127.0.0.1:{port}").parse().expect("valid");
        let started = Instant::now();
        let error = tokio::time::timeout(REFUSED_GRACE * 5, refused(&endpoint))
            .await
            .expect("a refusal is reported well within five graces");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(started.elapsed() >= REFUSED_GRACE, "not before the grace");
    }

    #[tokio::test]
    async fn a_listening_endpoint_is_never_reported_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("up.sock");
        let endpoint: Endpoint = format!("ipc://{}", path.display()).parse().expect("valid");
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        assert!(
            tokio::time::timeout(REFUSED_GRACE * 3, refused(&endpoint))
                .await
                .is_err(),
            "something listens: the probe leaves the decision to the real connection"
        );
        // And a missing socket file is a refusal.
        let missing: Endpoint = format!("ipc://{}", dir.path().join("none.sock").display())
            .parse()
            .expect("valid");
        let error = tokio::time::timeout(REFUSED_GRACE * 5, refused(&missing))
            .await
            .expect("reported");
        assert!(is_refusal(&error));
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
