//! RabbitMQ as a job queue, with `lapin`: a durable queue (classic or quorum), persistent
//! messages published with publisher confirms, and a manual-ack consumer on a connection of
//! its own (a worker is another process in real use).

use std::sync::Arc;

use futures::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::system::{Error, Processed, System, spawn_consumer};

/// AMQP's delivery mode of a persistent message.
const PERSISTENT: u8 = 2;

/// Deliveries the consumer may hold unacknowledged: enough that 64 submitters never wait on
/// the consumer's window.
const PREFETCH: u16 = 256;

/// Which kind of durable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueType {
    /// A classic durable queue (RabbitMQ's default).
    Classic,
    /// A quorum queue (Raft log; a single node here).
    Quorum,
}

impl QueueType {
    /// The queue every run deletes and declares afresh; one per type, as both are measured
    /// on the same server in the same run.
    fn queue(self) -> &'static str {
        match self {
            Self::Classic => "zmesh-jobs-compare-classic",
            Self::Quorum => "zmesh-jobs-compare-quorum",
        }
    }
}

/// A connected RabbitMQ: one connection for submitters, one for the consumer.
struct Rabbit {
    queue_type: QueueType,
    /// Kept open: the channels die with it.
    _submit_connection: Connection,
    submit: Channel,
    /// Kept open, as the submitters' one.
    _consumer_connection: Connection,
    /// The consumer's channel: settle and the end-of-run count ride on it, behind its acks.
    consume: Channel,
}

const NAME: &str = "RabbitMQ";

/// Connects to `url` (`amqp://127.0.0.1:PORT/%2f`), declares the queue afresh and enables
/// publisher confirms.
pub(crate) async fn connect(url: &str, queue_type: QueueType) -> Result<Arc<dyn System>, Error> {
    let open = || async {
        Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|source| Error::Connect {
                system: NAME,
                url: url.to_owned(),
                source: source.into(),
            })
    };
    let submit_connection = open().await?;
    let consumer_connection = open().await?;
    let submit = submit_connection
        .create_channel()
        .await
        .map_err(Error::broker(NAME, "opening the submitters' channel"))?;
    let consume = consumer_connection
        .create_channel()
        .await
        .map_err(Error::broker(NAME, "opening the consumer's channel"))?;
    // Deleted first: a queue of another type (or left over from a broken run) would refuse
    // the declaration or skew the first block.
    submit
        .queue_delete(queue_type.queue().into(), QueueDeleteOptions::default())
        .await
        .map_err(Error::broker(NAME, "deleting the previous queue"))?;
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    submit
        .queue_declare(
            queue_type.queue().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .map_err(Error::broker(NAME, "declaring the durable queue"))?;
    submit
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(Error::broker(NAME, "enabling publisher confirms"))?;
    Ok(Arc::new(Rabbit {
        queue_type,
        _submit_connection: submit_connection,
        submit,
        _consumer_connection: consumer_connection,
        consume,
    }))
}

impl System for Rabbit {
    fn name(&self) -> String {
        let queue = match self.queue_type {
            QueueType::Classic => "classic queue",
            QueueType::Quorum => "quorum queue",
        };
        // AMQP's server properties carry the version, but lapin does not expose them.
        format!("{NAME}, {queue}")
    }

    fn durability(&self) -> String {
        match self.queue_type {
            QueueType::Classic => "durable classic queue, persistent messages: the publisher \
                                   confirm is sent once the message is fsynced to disk (in \
                                   batches), or once every queue's consumer acknowledged it if \
                                   that comes first (RabbitMQ's rule), so with a consumer \
                                   keeping up an acknowledged job may not have reached the disk"
                .to_owned(),
            QueueType::Quorum => "quorum queue (one node): the publisher confirm is sent once \
                                  the message is fsynced to the Raft log"
                .to_owned(),
        }
    }

    fn submit(&self, payload: bytes::Bytes) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let confirm = self
                .submit
                .basic_publish(
                    "".into(),
                    self.queue_type.queue().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default().with_delivery_mode(PERSISTENT),
                )
                .await
                .map_err(Error::broker(NAME, "publishing a job"))?
                .await
                .map_err(Error::broker(NAME, "awaiting a publisher confirm"))?;
            if confirm.is_ack() {
                Ok(())
            } else {
                Err(Error::Refused {
                    system: NAME,
                    reason: "the publisher confirm is a nack".to_owned(),
                })
            }
        })
    }

    fn start_consumer(&self, processed: Processed) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.consume
                .basic_qos(PREFETCH, BasicQosOptions::default())
                .await
                .map_err(Error::broker(NAME, "setting the consumer's prefetch"))?;
            let deliveries = self
                .consume
                .basic_consume(
                    self.queue_type.queue().into(),
                    "zmesh-jobs-compare-worker".into(),
                    // Manual acks: `no_ack` stays false.
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(Error::broker(NAME, "starting the consumer"))?;
            spawn_consumer(deliveries, processed, |delivery, processed| async move {
                let delivery = delivery.map_err(Error::broker(NAME, "receiving a delivery"))?;
                processed.check(&delivery.data)?;
                let sent = delivery
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(Error::broker(NAME, "acknowledging a delivery"))?;
                // `false`: the delivery's acker was already used or its channel failed, so
                // the ack was not sent.
                if sent {
                    Ok(())
                } else {
                    Err(Error::Consumer(format!(
                        "{NAME}: an ack was not sent (its channel failed)"
                    )))
                }
            });
            Ok(())
        })
    }

    fn settle(&self) -> BoxFuture<'_, Result<(), Error>> {
        // A synchronous method on the consumer's channel: the broker handles a channel's
        // frames in order, so its reply comes after every ack sent before it.
        Box::pin(async move { self.ready().await.map(|_| ()) })
    }

    fn held(&self) -> BoxFuture<'_, Result<u64, Error>> {
        // AMQP counts the ready messages; the unacknowledged ones are what the consumer has
        // not counted, which the end-of-run check compares separately.
        Box::pin(self.ready())
    }
}

impl Rabbit {
    /// The queue's ready messages, by a passive declaration on the consumer's channel.
    async fn ready(&self) -> Result<u64, Error> {
        let queue = self
            .consume
            .queue_declare(
                self.queue_type.queue().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(Error::broker(NAME, "reading the queue's depth"))?;
        Ok(u64::from(queue.message_count()))
    }
}
