use crate::codec::{CodecResult, Message, ZmqFramedWrite};
use crate::limits::{message_cost, ByteBudget, CloseOnDrop};

use futures::channel::oneshot;
use futures::{FutureExt, SinkExt};

use std::sync::Arc;

const WRITE_BATCH_LIMIT: usize = 128;

/// zmesh patch: the sending half of a peer's send queue (ROUTER, DEALER and the other
/// multi-peer sockets, and each PUB subscriber). tokio's bounded channel rather than
/// futures': that one allocates a node per message and frees it on receipt (about 500
/// instructions per message on each side of a call, 2026-12-04), where tokio's stores
/// messages in blocks of 32 slots it reuses. It needs no tokio runtime.
pub(crate) type QueueSender = tokio::sync::mpsc::Sender<Message>;
/// zmesh patch: the receiving half of a peer's send queue, read by its writer task.
pub(crate) type QueueReceiver = tokio::sync::mpsc::Receiver<Message>;

/// zmesh patch: a peer's send queue holding at most `capacity` messages.
pub(crate) fn message_queue(capacity: usize) -> (QueueSender, QueueReceiver) {
    tokio::sync::mpsc::channel(capacity)
}

/// Writes queued socket messages into the underlying framed sink in small batches.
///
/// zmesh patch: `bytes`, when given, is the queue's byte budget; each message's bytes are
/// released once the message has been handed to the framed sink (whose own buffer is
/// flushed when it passes its high-water mark), so senders see room as the writer writes.
#[inline]
pub(crate) async fn write_message_queue(
    mut queue_receiver: QueueReceiver,
    mut send_queue: ZmqFramedWrite,
    bytes: Option<&ByteBudget>,
) -> CodecResult<()> {
    let release = |cost: usize| {
        if let Some(bytes) = bytes {
            bytes.release(cost);
        }
    };
    while let Some(message) = queue_receiver.recv().await {
        // When backlog already exists, feed a batch before flushing once to avoid per-message flush cost during bursts.
        let cost = message_cost(&message);
        send_queue.feed(message).await?;
        release(cost);

        for _ in 1..WRITE_BATCH_LIMIT {
            let message = match queue_receiver.try_recv() {
                Ok(message) => message,
                Err(_) => break,
            };
            let cost = message_cost(&message);
            send_queue.feed(message).await?;
            release(cost);
        }

        send_queue.flush().await?;
    }

    Ok(())
}

/// zmesh patch: a peer's writer task: [`write_message_queue`] until the queue is closed
/// and drained, or at once when `abort` is sent (the peer disconnected by the application
/// or for a broken limit: its queue is dropped and the write half closed, even if the peer
/// reads nothing). `abort` dropped unsent means "drain first", as before the patch. The
/// byte budget is closed when the writer ends, so waiting senders fail instead of hanging.
pub(crate) async fn write_until_aborted(
    queue_receiver: QueueReceiver,
    send_queue: ZmqFramedWrite,
    bytes: Arc<ByteBudget>,
    abort: oneshot::Receiver<()>,
) -> CodecResult<()> {
    let _close = CloseOnDrop(bytes.clone());
    let write = write_message_queue(queue_receiver, send_queue, Some(&bytes)).fuse();
    futures::pin_mut!(write);
    let mut abort = abort.fuse();
    futures::select! {
        written = write => written,
        signal = abort => match signal {
            Ok(()) => Ok(()),
            Err(oneshot::Canceled) => write.await,
        },
    }
}

#[cfg(test)]
mod tests {
    mod batch_boundaries;

    use super::*;
    use crate::codec::{CodecError, ZmqCodec};
    use crate::ZmqMessage;

    use bytes::Bytes;
    use futures::AsyncWrite;
    use parking_lot::Mutex;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    #[derive(Default)]
    struct WriteStats {
        bytes: Vec<u8>,
        flushes: usize,
    }

    struct RecordingWrite {
        stats: Arc<Mutex<WriteStats>>,
    }

    impl AsyncWrite for RecordingWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut stats = self.stats.lock();
            stats.bytes.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.stats.lock().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct FailingWrite;

    impl AsyncWrite for FailingWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "writer failed",
            )))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[crate::async_rt::test]
    async fn test_write_message_queue_batches_ready_messages_into_one_flush() {
        let (sender, receiver) = message_queue(8);
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"a"))))
            .await
            .expect("send first message");
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"b"))))
            .await
            .expect("send second message");
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"c"))))
            .await
            .expect("send third message");
        drop(sender);

        let stats = Arc::new(Mutex::new(WriteStats::default()));
        let writer = RecordingWrite {
            stats: Arc::clone(&stats),
        };
        let send_queue = ZmqFramedWrite::new(Box::new(writer), ZmqCodec::new());

        write_message_queue(receiver, send_queue, None)
            .await
            .expect("write queued messages");

        let stats = stats.lock();
        assert_eq!(1, stats.flushes);
        assert_eq!(
            stats.bytes,
            vec![0x00, 0x01, b'a', 0x00, 0x01, b'b', 0x00, 0x01, b'c']
        );
    }

    #[crate::async_rt::test]
    async fn test_write_message_queue_returns_writer_errors() {
        let (sender, receiver) = message_queue(1);
        sender
            .send(Message::Message(ZmqMessage::from(Bytes::from_static(b"a"))))
            .await
            .expect("send message");
        drop(sender);

        let send_queue = ZmqFramedWrite::new(Box::new(FailingWrite), ZmqCodec::new());
        let error = write_message_queue(receiver, send_queue, None)
            .await
            .expect_err("write error");

        let CodecError::Io(error) = error else {
            panic!("unexpected error type");
        };
        assert_eq!(io::ErrorKind::BrokenPipe, error.kind());
    }
}
