//! What every queue under comparison does for the measurement: the [`System`] trait (submit a
//! job and wait for its acknowledgement, run a consumer that processes and acknowledges jobs,
//! settle those acknowledgements, report what is still held), the consumer's [`Processed`]
//! counter, and the run's [`Error`].
//!
//! # Adding a system
//!
//! A system is one module with a `connect` function returning an `Arc<dyn System>`, a
//! [`crate::Kind`] variant naming it on the command line, and its arm in `crate::connect`.
//! `zmesh.rs` (zmesh's own queue, one `Kind` per durability level) is the one whose server
//! the run starts itself.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

/// Any client crate's error, kept as the source of ours.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a run (or one system of it) failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The server is not there or refused the connection: the system is skipped.
    #[error("cannot connect to {system} at {url}")]
    Connect {
        /// The system's name.
        system: &'static str,
        /// Where it was looked for.
        url: String,
        /// What the client said.
        #[source]
        source: BoxError,
    },
    /// A step the server refused or the client could not make.
    #[error("{system}: {step}")]
    Broker {
        /// The system's name.
        system: &'static str,
        /// What was being done.
        step: &'static str,
        /// What the client said.
        #[source]
        source: BoxError,
    },
    /// A submission the server rejected (a nack), rather than failed to answer.
    #[error("{system}: a job was refused: {reason}")]
    Refused {
        /// The system's name.
        system: &'static str,
        /// What the server said.
        reason: String,
    },
    /// A bounded wait ran out.
    #[error("{what} took longer than {limit:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was given.
        limit: Duration,
    },
    /// The consumer stopped on an error (it reports it through [`Processed::fail`]).
    #[error("the consumer failed: {0}")]
    Consumer(String),
    /// The consumer received a job whose payload is not the one submitted.
    #[error("the consumer received a {got} B payload, not the {want} B submitted")]
    Payload {
        /// Bytes received.
        got: usize,
        /// Bytes every job carries.
        want: usize,
    },
    /// At the end of the run the counts do not add up: a job lost, delivered twice or left
    /// unacknowledged in the queue.
    #[error(
        "{system}: {submitted} jobs acknowledged on submit, {processed} processed, {held} \
         still held by the server"
    )]
    Unbalanced {
        /// The system's name.
        system: String,
        /// Jobs whose submission was acknowledged.
        submitted: u64,
        /// Jobs the consumer processed and acknowledged.
        processed: u64,
        /// Jobs the server still holds (queued or unacknowledged).
        held: u64,
    },
}

impl Error {
    /// A [`Error::Broker`] maker for `map_err`.
    pub(crate) fn broker<E: Into<BoxError>>(
        system: &'static str,
        step: &'static str,
    ) -> impl FnOnce(E) -> Self {
        move |source| Self::Broker {
            system,
            step,
            source: source.into(),
        }
    }
}

/// A job queue as the comparison drives it. Every method's future is bounded by the caller.
pub(crate) trait System: Send + Sync {
    /// The system's name in the table ("RabbitMQ 3.10, classic queue").
    fn name(&self) -> String;

    /// What a submit's acknowledgement promises (when it is sent relative to the disk).
    fn durability(&self) -> String;

    /// Submits one job carrying `payload`; resolves once the system acknowledged it at the
    /// durability [`System::durability`] states.
    fn submit(&self, payload: bytes::Bytes) -> BoxFuture<'_, Result<(), Error>>;

    /// Starts the consumer (on tasks of its own): every job it receives is checked with
    /// [`Processed::check`], acknowledged to the system, then counted with
    /// [`Processed::acked`]; on an error it calls [`Processed::fail`] and stops.
    fn start_consumer(&self, processed: Processed) -> BoxFuture<'_, Result<(), Error>>;

    /// Resolves once the server has received every acknowledgement the consumer sent before
    /// the call (a round trip behind them on the consumer's connection).
    fn settle(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Jobs the server still holds, queued or delivered and unacknowledged (the end-of-run
    /// check that nothing was lost or left behind).
    fn held(&self) -> BoxFuture<'_, Result<u64, Error>>;
}

/// What the consumer has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Jobs processed and acknowledged.
    pub(crate) processed: u64,
    /// Why the consumer stopped, if it did.
    pub(crate) failed: Option<String>,
}

/// The consumer's side of the count the measurement waits on.
#[derive(Debug, Clone)]
pub(crate) struct Processed {
    progress: Arc<watch::Sender<Progress>>,
    payload: usize,
}

impl Processed {
    /// A counter for jobs of `payload` bytes, and the receiver the measurement waits on.
    pub(crate) fn new(payload: usize) -> (Self, watch::Receiver<Progress>) {
        let (tx, rx) = watch::channel(Progress::default());
        (
            Self {
                progress: Arc::new(tx),
                payload,
            },
            rx,
        )
    }

    /// The processing every consumer does before acknowledging: the job is the one
    /// submitted (its payload has the submitted size).
    pub(crate) fn check(&self, payload: &[u8]) -> Result<(), Error> {
        if payload.len() == self.payload {
            Ok(())
        } else {
            Err(Error::Payload {
                got: payload.len(),
                want: self.payload,
            })
        }
    }

    /// Counts one job processed and acknowledged.
    pub(crate) fn acked(&self) {
        self.progress.send_modify(|p| p.processed += 1);
    }

    /// Records why the consumer stopped; the measurement waiting on it fails with it.
    pub(crate) fn fail(&self, error: &dyn std::error::Error) {
        let text = chain(error);
        self.progress.send_modify(|p| {
            p.failed.get_or_insert(text);
        });
    }
}

/// Runs a consumer on a task of its own: `handle` processes one item of `deliveries` (checks
/// it with [`Processed::check`] and acknowledges it to the system); each success is counted
/// with [`Processed::acked`], and the first error is recorded with [`Processed::fail`] and
/// stops the consumer.
pub(crate) fn spawn_consumer<S, F, Fut>(mut deliveries: S, processed: Processed, mut handle: F)
where
    S: futures::Stream + Unpin + Send + 'static,
    S::Item: Send,
    F: FnMut(S::Item, Processed) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), Error>> + Send,
{
    use futures::StreamExt;
    tokio::spawn(async move {
        while let Some(item) = deliveries.next().await {
            match handle(item, processed.clone()).await {
                Ok(()) => processed.acked(),
                Err(e) => {
                    processed.fail(&e);
                    return;
                }
            }
        }
    });
}

/// An error and its sources on one line.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Waits (up to `limit`) until the consumer has processed `target` jobs in all.
pub(crate) async fn processed(
    progress: &mut watch::Receiver<Progress>,
    target: u64,
    limit: Duration,
) -> Result<(), Error> {
    let reached = tokio::time::timeout(
        limit,
        progress.wait_for(|p| p.processed >= target || p.failed.is_some()),
    )
    .await
    .map_err(|_| Error::Timeout {
        what: format!("the consumer's {target}th job"),
        limit,
    })?;
    let progress = match reached {
        Ok(progress) => progress.clone(),
        // Every sender gone: the consumer's tasks ended without saying why.
        Err(_) => {
            return Err(Error::Consumer(
                "it ended before processing every job".to_owned(),
            ));
        }
    };
    match progress.failed {
        Some(why) => Err(Error::Consumer(why)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn waiting_ends_at_the_target_count() {
        let (processed, mut progress) = Processed::new(4);
        let consumer = processed.clone();
        let counting = tokio::spawn(async move {
            for _ in 0..3 {
                consumer.check(b"four").expect("the submitted size");
                consumer.acked();
                tokio::task::yield_now().await;
            }
        });
        super::processed(&mut progress, 3, LIMIT)
            .await
            .expect("three jobs counted");
        counting.await.expect("the counting task ran");
        assert_eq!(progress.borrow().processed, 3);
        drop(processed);
    }

    #[tokio::test]
    async fn a_failed_consumer_fails_the_wait_with_its_reason() {
        let (processed, mut progress) = Processed::new(4);
        let error = processed.check(b"five!").expect_err("a wrong size");
        assert_eq!(
            error.to_string(),
            "the consumer received a 5 B payload, not the 4 B submitted"
        );
        processed.fail(&error);
        let waited = super::processed(&mut progress, 1, LIMIT).await;
        assert!(
            matches!(&waited, Err(Error::Consumer(why)) if why.contains("5 B payload")),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_consumer_that_went_away_is_an_error_not_a_hang() {
        let (processed, mut progress) = Processed::new(4);
        drop(processed);
        let waited = super::processed(&mut progress, 1, LIMIT).await;
        assert!(matches!(waited, Err(Error::Consumer(_))), "{waited:?}");
    }
}
