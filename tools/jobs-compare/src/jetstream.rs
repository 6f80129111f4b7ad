//! NATS JetStream as a job queue, with `async-nats`: a work-queue retention stream on file
//! storage, each job published and its PubAck awaited, and a durable pull consumer with
//! explicit acks on a connection of its own. The server's `sync_interval` decides what a
//! PubAck promises; it is a server setting, so each level is a server of its own
//! (`servers.sh` starts both) and the URL says which one this is.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer, stream};
use futures::future::BoxFuture;

use crate::system::{Error, Processed, System, spawn_consumer};

/// The stream every run deletes and creates afresh.
const STREAM: &str = "ZMESH_JOBS_COMPARE";
/// The subject jobs are published on.
const SUBJECT: &str = "zmesh-jobs-compare.job";
/// The durable consumer's name.
const CONSUMER: &str = "worker";

const NAME: &str = "NATS JetStream";

/// When the server writes a stream's data to disk with fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// The server's default: writes reach the OS before the PubAck, fsync every 2 minutes.
    Default,
    /// `jetstream { sync_interval: always }`: fsync before every PubAck (nats-server 2.10+).
    Always,
}

/// A connected JetStream: one connection for submitters, one for the consumer.
struct Nats {
    sync: Sync,
    version: String,
    submit: jetstream::Context,
    consumer_client: async_nats::Client,
    consumer_context: jetstream::Context,
}

/// Connects to `url` (`nats://127.0.0.1:PORT`, a server with JetStream enabled at `sync`)
/// and creates the stream afresh.
pub(crate) async fn connect(url: &str, sync: Sync) -> Result<Arc<dyn System>, Error> {
    let open = || async {
        async_nats::connect(url)
            .await
            .map_err(|source| Error::Connect {
                system: NAME,
                url: url.to_owned(),
                source: source.into(),
            })
    };
    let submit_client = open().await?;
    let consumer_client = open().await?;
    let version = submit_client.server_info().version;
    let submit = jetstream::new(submit_client);
    // Deleted first so a stream left by a broken run (or of another shape) cannot skew the
    // first block; "not found" is the usual answer.
    let _ = submit.delete_stream(STREAM).await;
    submit
        .create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: 1,
            ..stream::Config::default()
        })
        .await
        .map_err(Error::broker(NAME, "creating the work-queue stream"))?;
    let consumer_context = jetstream::new(consumer_client.clone());
    Ok(Arc::new(Nats {
        sync,
        version,
        submit,
        consumer_client,
        consumer_context,
    }))
}

impl System for Nats {
    fn name(&self) -> String {
        let sync = match self.sync {
            Sync::Default => "default sync",
            Sync::Always => "sync_interval: always",
        };
        format!("{NAME} {}, {sync}", self.version)
    }

    fn durability(&self) -> String {
        match self.sync {
            Sync::Default => "work-queue stream, file storage, server's default sync: the \
                              PubAck is sent once the message is written to the OS, which \
                              fsyncs it within 2 minutes (survives kill -9, not power loss)"
                .to_owned(),
            Sync::Always => "work-queue stream, file storage, sync_interval: always: the \
                             PubAck is sent once the message is fsynced"
                .to_owned(),
        }
    }

    fn submit(&self, payload: bytes::Bytes) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.submit
                .publish(SUBJECT, payload)
                .await
                .map_err(Error::broker(NAME, "publishing a job"))?
                .await
                .map_err(Error::broker(NAME, "awaiting a PubAck"))?;
            Ok(())
        })
    }

    fn start_consumer(&self, processed: Processed) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let consumer: consumer::PullConsumer = self
                .consumer_context
                .create_consumer_on_stream(
                    consumer::pull::Config {
                        durable_name: Some(CONSUMER.to_owned()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ..consumer::pull::Config::default()
                    },
                    STREAM,
                )
                .await
                .map_err(Error::broker(NAME, "creating the pull consumer"))?;
            let messages = consumer
                .messages()
                .await
                .map_err(Error::broker(NAME, "starting the pull consumer"))?;
            spawn_consumer(messages, processed, |message, processed| async move {
                let message = message.map_err(Error::broker(NAME, "receiving a message"))?;
                processed.check(&message.payload)?;
                // A plain ack, as RabbitMQ's: sent, not confirmed; `settle` is the round
                // trip behind the acks.
                message
                    .ack()
                    .await
                    .map_err(Error::broker(NAME, "acknowledging a message"))
            });
            Ok(())
        })
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), Error>> {
        // PING/PONG on the consumer's connection: the server has read every ack before it.
        Box::pin(async move {
            self.consumer_client
                .flush()
                .await
                .map_err(Error::broker(NAME, "flushing the consumer's acks"))
        })
    }

    fn held(&self) -> BoxFuture<'_, Result<u64, Error>> {
        // A work-queue stream deletes a message when it is acknowledged: what it still
        // holds is what is queued or unacknowledged.
        Box::pin(async move {
            let mut stream = self
                .consumer_context
                .get_stream(STREAM)
                .await
                .map_err(Error::broker(NAME, "looking up the stream"))?;
            let info = stream
                .info()
                .await
                .map_err(Error::broker(NAME, "reading the stream's state"))?;
            Ok(info.state.messages)
        })
    }
}
