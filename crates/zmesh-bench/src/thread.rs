//! A bench server on its own OS thread with its own tokio runtime, so a server never shares
//! a runtime with the client measuring it: started, waited for (bounded) until it reports
//! its endpoint, and stopped and joined on drop.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::Flavour;
use crate::affinity::{pin_current_thread, unpin_current_thread};

/// Where a server reports the endpoint it serves on, once it serves.
pub type Ready = std::sync::mpsc::Sender<String>;

/// Resolves when the server should stop (its [`ServerThread`] was dropped).
pub type Stop = oneshot::Receiver<()>;

/// Why a server thread did not start.
#[derive(Debug, thiserror::Error)]
pub enum ThreadError {
    /// The OS refused the thread.
    #[error("cannot spawn the {name} thread")]
    Spawn {
        /// What the server is (as the caller named it).
        name: String,
        /// What the spawn said.
        #[source]
        source: std::io::Error,
    },
    /// It did not report an endpoint within the limit (it panicked, or is stuck starting;
    /// a panic is printed on stderr by the thread itself).
    #[error("the {name} did not report its endpoint within {limit:?}")]
    NotReady {
        /// What the server is.
        name: String,
        /// How long it was given.
        limit: Duration,
    },
}

/// A server running on its own thread; dropping it stops the server and joins the thread.
#[derive(Debug)]
pub struct ServerThread {
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    /// Runs `serve(ready, stop)` on a new thread named `name`, on a runtime of `flavour`:
    /// `current_thread` with the thread pinned to `pin` (when given), or a multi-thread
    /// runtime with the server spawned as a task and every thread unpinned (threads inherit
    /// the affinity of the thread that spawns them). Waits up to `limit` for the server to
    /// send its endpoint on `ready`; `serve` should return soon after `stop` resolves.
    pub fn spawn<F, Fut>(
        name: &str,
        flavour: Flavour,
        pin: Option<usize>,
        limit: Duration,
        serve: F,
    ) -> Result<Self, ThreadError>
    where
        F: FnOnce(Ready, Stop) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match flavour {
            Flavour::CurrentThread => Self::spawn_current_thread(name, pin, limit, serve),
            Flavour::MultiThread => {
                let thread_name = name.to_owned();
                Self::start(name, limit, move |ready, stop| {
                    unpin_current_thread();
                    let rt = Flavour::multi_thread_builder()
                        .thread_name(thread_name)
                        .on_thread_start(unpin_current_thread)
                        .build()
                        .expect("cannot build a server runtime");
                    rt.block_on(async move {
                        tokio::spawn(serve(ready, stop))
                            .await
                            .expect("the server task panicked");
                    });
                })
            }
        }
    }

    /// [`ServerThread::spawn`] on a `current_thread` runtime, for a server whose future is
    /// not `Send` (it never leaves its thread).
    pub fn spawn_current_thread<F, Fut>(
        name: &str,
        pin: Option<usize>,
        limit: Duration,
        serve: F,
    ) -> Result<Self, ThreadError>
    where
        F: FnOnce(Ready, Stop) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        Self::start(name, limit, move |ready, stop| {
            if let Some(cpu) = pin {
                pin_current_thread(cpu);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cannot build a server runtime");
            rt.block_on(serve(ready, stop));
        })
    }

    /// Runs `body` on a new thread and waits up to `limit` for its endpoint.
    fn start(
        name: &str,
        limit: Duration,
        body: impl FnOnce(Ready, Stop) + Send + 'static,
    ) -> Result<Self, ThreadError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || body(ready_tx, stop_rx))
            .map_err(|source| ThreadError::Spawn {
                name: name.to_owned(),
                source,
            })?;
        // A server that fails to start panics on its thread, which drops its `Ready`.
        let endpoint = ready_rx
            .recv_timeout(limit)
            .map_err(|_| ThreadError::NotReady {
                name: name.to_owned(),
                limit,
            })?;
        Ok(Self {
            endpoint,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The endpoint the server reported.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A server that panicked has said so on stderr; nothing more to report here.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_its_endpoint_and_stops_on_drop() {
        for flavour in [Flavour::CurrentThread, Flavour::MultiThread] {
            let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
            let server = ServerThread::spawn(
                "test server",
                flavour,
                None,
                Duration::from_secs(10),
                move |ready, stop| async move {
                    let _ = ready.send("tcp://127.0.0.1:1".to_owned());
                    let _ = stop.await;
                    let _ = stopped_tx.send(());
                },
            )
            .expect("starts");
            assert_eq!(server.endpoint(), "tcp://127.0.0.1:1");
            drop(server);
            stopped_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the server saw the stop");
        }
    }

    #[test]
    fn a_server_that_never_reports_is_an_error_not_a_hang() {
        let e = ServerThread::spawn(
            "silent server",
            Flavour::CurrentThread,
            None,
            Duration::from_millis(50),
            |_ready, stop| async move {
                let _ = stop.await;
            },
        );
        // The thread is left waiting for its stop, which the dropped sender gives it.
        assert!(matches!(e, Err(ThreadError::NotReady { .. })), "{e:?}");
    }
}
