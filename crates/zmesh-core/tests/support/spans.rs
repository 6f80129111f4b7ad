//! A `tracing` layer for the tests that check spans (`semconv_spans.rs` here, and by
//! `#[path]` the root's `job_spans.rs`): it records every span's name and fields, and a
//! test waits for a span to close. Installed with `set_default` by [`capture`], per test:
//! such a test runs on a current-thread runtime, so the tasks of its nodes and clients run
//! on the thread that holds the subscriber.

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Every network wait here is bounded by this.
pub(crate) const NET_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type Fields = HashMap<String, String>;

/// A closed span: its name and every field recorded on it.
#[derive(Debug, Clone)]
pub(crate) struct Closed {
    pub(crate) name: &'static str,
    pub(crate) fields: Fields,
}

/// Records every span's fields; a closed span moves to `closed` and wakes `changed`.
#[derive(Clone, Default)]
pub(crate) struct Spans {
    open: Arc<Mutex<HashMap<u64, Closed>>>,
    closed: Arc<Mutex<Vec<Closed>>>,
    changed: Arc<Notify>,
}

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S>
    for Spans
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        let span = Closed {
            name: attrs.metadata().name(),
            fields,
        };
        self.open.lock().expect("lock").insert(id.into_u64(), span);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        if let Some(span) = self.open.lock().expect("lock").get_mut(&id.into_u64()) {
            values.record(&mut Collect(&mut span.fields));
        }
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(span) = self.open.lock().expect("lock").remove(&id.into_u64()) {
            self.closed.lock().expect("lock").push(span);
            self.changed.notify_waiters();
        }
    }
}

impl Spans {
    pub(crate) fn find(&self, name: &str, method: &str) -> Option<Closed> {
        self.closed
            .lock()
            .expect("lock")
            .iter()
            .find(|s| {
                s.name == name && s.fields.get("rpc.method").map(String::as_str) == Some(method)
            })
            .cloned()
    }

    /// The closed span `name` of `method`, once it closes (within the test's timeout).
    pub(crate) async fn wait(&self, name: &str, method: &str) -> Closed {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                let mut changed = std::pin::pin!(changed);
                changed.as_mut().enable();
                if let Some(span) = self.find(name, method) {
                    return span;
                }
                changed.await;
            }
        };
        tokio::time::timeout(NET_TIMEOUT, wait)
            .await
            .unwrap_or_else(|_| panic!("no closed {name} span of {method}"))
    }
}

pub(crate) fn field<'a>(span: &'a Closed, name: &str) -> Option<&'a str> {
    span.fields.get(name).map(String::as_str)
}

/// A [`Spans`] recording this thread's spans until the guard drops.
pub(crate) fn capture() -> (Spans, tracing::subscriber::DefaultGuard) {
    let spans = Spans::default();
    let guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    (spans, guard)
}
