//! Provides the client side of a server stream: items as they arrive, with `_zpc_more`
//! credit granted only as the consumer reads, so a slow consumer slows the server instead
//! of growing a buffer.

use std::any::Any;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use zmesh_proto::credit::Window;

use super::connection::{ConnShared, Inbound};
use super::{CallError, decode_result, err_reply};
use crate::telemetry;
use crate::wire::{MessageId, more_args, names};

/// Keeps a call registered while it is open; when dropped early it unregisters the call and
/// asks a zmesh server to abort the handler.
pub(crate) struct CallGuard {
    pub(crate) conn: Arc<ConnShared>,
    pub(crate) id: MessageId,
    pub(crate) open: bool,
}

impl CallGuard {
    /// The call ended normally; nothing to cancel. No unregistering either: the reader
    /// removes a call's entry before it hands over the terminal event (OK, ERR, STREAM_DONE)
    /// or a failure, so taking the lock again here would only repeat that work.
    pub(crate) fn complete(&mut self) {
        self.open = false;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.open && self.conn.unregister(&self.id) {
            self.conn.cancel(&self.id);
        }
    }
}

/// A stream of items from a streaming method. Dropping it cancels the call.
///
/// Items are decoded as `T`; the stream ends after `STREAM_DONE`, or yields one error (a
/// remote `ERR`, or `PeerLost`) and then ends.
#[must_use = "streams do nothing unless polled"]
pub struct CallStream<T = rmpv::Value> {
    rx: Option<mpsc::Receiver<Inbound>>,
    guard: Option<CallGuard>,
    first: Option<Bytes>,
    /// The credit the server has been granted.
    credit: Window,
    /// The call's deadline, reported by a server's `ERR DeadlineExceeded` as by the call's.
    timeout: Duration,
    _permit: Option<OwnedSemaphorePermit>,
    /// Whatever the stream's opener needs kept while the stream is open (the mesh client's
    /// count of a peer's outstanding calls), released when it ends or is dropped.
    lease: Option<Box<dyn Any + Send + Sync>>,
    /// The call's client span, kept open until the stream ends, so it covers the items
    /// too; a failure mid-stream is recorded on it.
    span: tracing::Span,
    _item: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for CallStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("open", &self.rx.is_some())
            .field("reserved", &self.credit.reserved())
            .field("window", &self.credit.window())
            .finish()
    }
}

impl<T> CallStream<T> {
    pub(crate) fn new(
        rx: Option<mpsc::Receiver<Inbound>>,
        guard: CallGuard,
        first: Option<Bytes>,
        window: u64,
        timeout: Duration,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        let done = first.is_none();
        let mut stream = Self {
            rx,
            guard: Some(guard),
            first,
            credit: Window::new(window),
            timeout,
            _permit: Some(permit),
            lease: None,
            span: tracing::Span::none(),
            _item: PhantomData,
        };
        if done {
            stream.finish();
        }
        stream
    }

    /// Reinterprets the items as another type.
    pub fn typed<U>(mut self) -> CallStream<U> {
        CallStream {
            rx: self.rx.take(),
            guard: self.guard.take(),
            first: self.first.take(),
            credit: self.credit,
            timeout: self.timeout,
            _permit: self._permit.take(),
            lease: self.lease.take(),
            span: std::mem::replace(&mut self.span, tracing::Span::none()),
            _item: PhantomData,
        }
    }

    /// Keeps `lease` until the stream ends (its last item or error) or is dropped.
    pub(crate) fn hold(mut self, lease: impl Any + Send + Sync) -> Self {
        // A stream that already ended (an empty one) has nothing open to account for.
        if self.guard.is_some() {
            self.lease = Some(Box::new(lease));
        }
        self
    }

    /// Keeps the call's client span open until the stream ends or is dropped.
    pub(crate) fn keep_span(&mut self, span: &tracing::Span) {
        if self.guard.is_some() && !span.is_disabled() {
            self.span = span.clone();
        }
    }

    fn finish(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            guard.complete();
        }
        self.rx = None;
        self._permit = None;
        self.lease = None;
        self.span = tracing::Span::none();
    }

    fn fail(&mut self, error: CallError) -> Poll<Option<Result<T, CallError>>> {
        if !self.span.is_disabled() {
            telemetry::record_error(&self.span, telemetry::error_type(&error));
        }
        self.finish();
        Poll::Ready(Some(Err(error)))
    }
}

impl<T: DeserializeOwned> Stream for CallStream<T> {
    type Item = Result<T, CallError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(decode_result(&first)));
        }
        let Some(rx) = this.rx.as_mut() else {
            return Poll::Ready(None);
        };
        // The consumer wants another item: top the server's credit up once it falls below
        // half the window, as the Python client does.
        if let Some(guard) = &this.guard
            && let Some(grant) = this.credit.wants_item()
        {
            guard
                .conn
                .send_control(&guard.id, names::MORE, &more_args(grant));
        }
        match rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => this.fail(CallError::PeerLost(
                "connection closed during the stream".into(),
            )),
            Poll::Ready(Some(Inbound::Failed(error))) => this.fail(error),
            Poll::Ready(Some(Inbound::Stream(..))) => {
                this.fail(CallError::Protocol("stream restarted".into()))
            }
            Poll::Ready(Some(Inbound::Event(event))) => match event.name.as_ref() {
                names::STREAM => {
                    this.credit.received();
                    Poll::Ready(Some(decode_result(&event.args)))
                }
                names::STREAM_DONE => {
                    this.finish();
                    Poll::Ready(None)
                }
                names::ERR => {
                    let error = err_reply(&event.args, this.timeout);
                    this.fail(error)
                }
                other => {
                    let why = format!("unexpected {other} event in a stream");
                    this.fail(CallError::Protocol(why.into()))
                }
            },
        }
    }
}
