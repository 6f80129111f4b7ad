//! Provides [`JobsClient`], a queue's client over any `zmesh_core::Call`: it submits jobs
//! (the [`Submit`] trait, so `#[zmesh::service]`'s `{Trait}Jobs` submits typed through it)
//! and asks for their results, with the `jobs` service's documented shapes.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zmesh_core::{Call, CallError, CallOptions, Submit};

use crate::queue::JobId;
use crate::service::SERVICE;

/// What the queue answers a submission with.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Ticket {
    /// The job's id.
    pub id: JobId,
    /// The level the job was stored at (`fsync`, `os`).
    pub durability: String,
}

/// A job queue's client, over any [`Call`] (a `Client` of the queue's node, a device, a
/// `MeshClient` finding the `jobs` service by name).
#[derive(Debug, Clone)]
pub struct JobsClient<C> {
    call: C,
}

impl<C: Call> JobsClient<C> {
    /// A client of the queue `call` reaches.
    pub fn new(call: C) -> Self {
        Self { call }
    }

    /// What `jobs.result` answers for `id` after waiting up to `wait` (see docs/JOBS.md):
    /// a map whose `status` is `succeeded`, `failed`, `pending` or `unknown`.
    ///
    /// # Errors
    /// The call's [`CallError`].
    pub async fn result(&self, id: JobId, wait: Duration) -> Result<rmpv::Value, CallError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        // The call waits as long as the queue may, and a little more for the answer.
        let options = CallOptions::timeout(wait + Duration::from_secs(5));
        self.call
            .call_with(&format!("{SERVICE}.result"), (id.0, wait_ms), options)
            .await
    }
}

impl<C: Call> Submit for JobsClient<C> {
    type Ticket = Ticket;

    fn submit<'a>(
        &'a self,
        method: &'a str,
        args: impl Serialize + Send + 'static,
    ) -> impl Future<Output = Result<Ticket, CallError>> + Send + 'a {
        // The job's args travel as the second positional argument: the tuple encodes as
        // the array the queue stores. No options (nil).
        let args = (method.to_owned(), args, ());
        async move {
            self.call
                .call_with(&format!("{SERVICE}.submit"), args, CallOptions::default())
                .await
        }
    }
}
