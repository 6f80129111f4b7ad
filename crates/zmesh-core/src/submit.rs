//! The trait through which a typed client hands calls to a job queue instead of making
//! them: `#[zmesh::service]` generates a `{Trait}Jobs<J: Submit>` beside its client whose
//! methods submit a job (the method's wire name and its arguments) and answer with the
//! queue's ticket at once. The queue (`zmesh::jobs`) implements it; this crate knows only
//! the shape, so the macro's output does not depend on the queue's crate.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;

use crate::client::CallError;

/// Submits a call as a durable job: the queue runs `method` with `args` (positional, a
/// tuple) later, at least once, and `submit` resolves once the queue has stored it, with
/// its ticket (the job's id).
pub trait Submit: Send + Sync {
    /// What the queue answers a submission with.
    type Ticket: Send + 'static;

    /// Submits `method` with `args`.
    ///
    /// # Errors
    /// The submission's [`CallError`]: the queue's refusal (`CallError::Remote`, e.g.
    /// `QueueFull`), or the call to the queue failing.
    fn submit<'a>(
        &'a self,
        method: &'a str,
        args: impl Serialize + Send + 'static,
    ) -> impl Future<Output = Result<Self::Ticket, CallError>> + Send + 'a;
}

/// Forwards every submission to the `Submit` behind a reference or an `Arc`.
macro_rules! forward_submit {
    ($($ty:ty),*) => {$(
        impl<S: Submit + ?Sized> Submit for $ty {
            type Ticket = S::Ticket;

            fn submit<'a>(
                &'a self,
                method: &'a str,
                args: impl Serialize + Send + 'static,
            ) -> impl Future<Output = Result<Self::Ticket, CallError>> + Send + 'a {
                (**self).submit(method, args)
            }
        }
    )*};
}

forward_submit!(&S, Arc<S>);
