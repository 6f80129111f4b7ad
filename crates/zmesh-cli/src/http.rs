//! Serves `--metrics ADDR` for `zmesh serve` and `zmesh proxy`: `GET /metrics` (the node's
//! or device's figures as OpenMetrics text, for Prometheus), `GET /healthz` (the process is
//! up) and `GET /readyz` (it is bound and serving; 503 once it shuts down). HTTP/1.1 with
//! one request per connection, enough for Prometheus and probes, and bounded like every
//! other door of the node: a request head of at most 8 KiB read within 5 s, at most 64
//! connections at once (more are closed unanswered), anything but those paths a 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use zmesh_core::metrics::CONTENT_TYPE;

/// Longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;

/// Renders the figures at each scrape.
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// What the endpoint answers from.
#[derive(Clone)]
pub(crate) struct Endpoints {
    pub(crate) render: Render,
    /// Set once the node serves, cleared when it starts shutting down.
    pub(crate) ready: Arc<AtomicBool>,
}

/// A running metrics endpoint of `zmesh serve` or `zmesh proxy`.
pub(crate) struct Exporter {
    ready: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// Serves `render`'s figures on `addr`, ready at once, and prints the
    /// `metrics http://ADDR` line.
    pub(crate) async fn start(addr: SocketAddr, render: Render) -> Result<Self, crate::CliError> {
        let ready = Arc::new(AtomicBool::new(true));
        let endpoints = Endpoints {
            render,
            ready: Arc::clone(&ready),
        };
        let (bound, task) = serve(addr, endpoints)
            .await
            .map_err(|e| crate::CliError::Other(format!("cannot serve metrics on {addr}: {e}")))?;
        crate::output::outln!("metrics http://{bound}");
        Ok(Self { ready, task })
    }

    /// Answers /readyz with 503 from now on: probes see the process leave before it stops
    /// answering.
    pub(crate) fn not_ready(&self) {
        self.ready.store(false, Ordering::Release);
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves until the task is aborted; the bound address (port 0 picks one).
pub(crate) async fn serve(
    addr: SocketAddr,
    endpoints: Endpoints,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, for one: pause rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                continue; // dropped: closed unanswered
            };
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = answer(stream, &endpoints).await {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            });
        }
    });
    Ok((bound, task))
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, endpoints: &Endpoints) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            return respond(&mut stream, 431, "text/plain", b"request too large\n").await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    };
    let (status, content_type, body) = route(&head, endpoints);
    respond(&mut stream, status, content_type, body.as_bytes()).await
}

/// The response to a request head: status, content type and body.
fn route(head: &str, endpoints: &Endpoints) -> (u16, &'static str, String) {
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next(), words.next().unwrap_or_default());
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        (Some("GET"), "/metrics") => (200, CONTENT_TYPE, (endpoints.render)()),
        (Some("GET"), "/healthz") => (200, "text/plain", "ok\n".to_owned()),
        (Some("GET"), "/readyz") if endpoints.ready.load(Ordering::Acquire) => {
            (200, "text/plain", "ready\n".to_owned())
        }
        (Some("GET"), "/readyz") => (503, "text/plain", "not ready\n".to_owned()),
        (Some("GET"), _) => (404, "text/plain", "not found\n".to_owned()),
        _ => (405, "text/plain", "GET only\n".to_owned()),
    }
}

/// The request head up to its blank line; `None` past [`MAX_HEAD`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
