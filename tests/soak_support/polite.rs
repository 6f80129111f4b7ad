//! Provides the soak's clients that use `zmesh::Client` as intended: well-behaved callers
//! that check every answer, and a caller that sends oversized requests and must get a typed
//! `MessageTooLarge` back. Every call is bounded by its deadline plus a grace; one that is
//! still unresolved then is counted lost.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use zmesh::{CallError, CallOptions, Client, ClientConfig};

use super::node::{HEARTBEAT, MESH_SECRET, NODE_LIMIT, WRONG_SECRET, key};
use super::tally::{Outcome, Tally, class_of};

/// Every well-behaved call's deadline.
pub const CALL_DEADLINE: Duration = Duration::from_secs(3);
/// A call still unresolved this long after its deadline is lost. A stream item after the
/// first may take up to two heartbeat periods to be declared lost, plus scheduling slack
/// on a loaded 2-core machine.
pub const GRACE: Duration = Duration::from_secs(5);
/// Items in each streamed call.
const STREAM_ITEMS: u64 = 20;
/// Pause after a failed call: a polite client does not hammer a node that is down.
const BACKOFF: Duration = Duration::from_millis(50);
/// Size of the oversized requests (over [`NODE_LIMIT`]).
pub const OVERSIZE: usize = 4 * NODE_LIMIT;

/// A client configured like the nodes, without a key (for the plain endpoint).
pub fn plain_client(endpoint: &str) -> Client {
    Client::with_config(endpoint, config())
}

/// A client holding the mesh key (for the keyed endpoint).
pub fn client(endpoint: &str) -> Client {
    Client::with_config(endpoint, config().mesh_key(key(MESH_SECRET)))
}

fn config() -> ClientConfig {
    ClientConfig::default()
        .heartbeat(HEARTBEAT)
        .default_timeout(CALL_DEADLINE)
}

/// Calls the keyed endpoint with a wrong key and with none, in turn, until `stop_at`: each
/// call must be refused with `ERR Unauthenticated` and never reach a handler.
pub async fn wrong_key_caller(endpoint: String, tally: Arc<Tally>, stop_at: Instant) {
    let wrong = Client::with_config(&endpoint, config().mesh_key(key(WRONG_SECRET)));
    let unkeyed = Client::with_config(&endpoint, config());
    let mut i = 0u64;
    while Instant::now() < stop_at {
        i += 1;
        tally.calls.fetch_add(1, Ordering::Relaxed);
        let client = if i.is_multiple_of(2) {
            &wrong
        } else {
            &unkeyed
        };
        let call = client.call_with::<String>(
            "echo.upper",
            ("intruder",),
            CallOptions::timeout(CALL_DEADLINE),
        );
        match tokio::time::timeout(CALL_DEADLINE + GRACE, call).await {
            Err(_) => tally.record_lost(),
            Ok(Err(CallError::Remote(e))) if e.name == "Unauthenticated" => {
                tally.record(Outcome::Expected)
            }
            Ok(Ok(reply)) => tally.record(Outcome::Wrong(format!(
                "a call without the mesh key was served: {reply:?}"
            ))),
            Ok(Err(e)) => tally.record(Outcome::Failed(class_of(&e))),
        }
        // As often as a busy legitimate client: the point is that every attempt is refused.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs well-behaved calls (echo, upper, a stream, a provoked remote error, a short sleep)
/// in turn until `stop_at`, checking every result.
pub async fn well_behaved(client: Client, tally: Arc<Tally>, seed: u64, stop_at: Instant) {
    let mut i = seed.wrapping_mul(1_000_003);
    while Instant::now() < stop_at {
        i += 1;
        tally.calls.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::time::timeout(CALL_DEADLINE + GRACE, one_call(&client, i)).await;
        match outcome {
            Err(_) => tally.record_lost(),
            Ok(outcome) => {
                let failed = !matches!(outcome, Outcome::Expected);
                tally.record(outcome);
                if failed {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
        }
    }
}

/// One call of kind `i % 5`, checked.
async fn one_call(client: &Client, i: u64) -> Outcome {
    let options = CallOptions::timeout(CALL_DEADLINE);
    match i % 5 {
        0 => {
            let payload = serde_bytes_value(i);
            let expected = payload.clone();
            check(
                client
                    .call_with::<rmpv::Value>("echo.echo", (payload,), options)
                    .await,
                |v| *v == expected,
            )
        }
        1 => {
            let word = format!("soak-{i}");
            check(
                client
                    .call_with::<String>("echo.upper", (&word,), options)
                    .await,
                |v| *v == word.to_uppercase(),
            )
        }
        2 => stream_call(client, options).await,
        3 => match client
            .call_with::<()>("echo.fail", ("soak",), options)
            .await
        {
            Err(CallError::Remote(e)) if e.name == "EchoError" && e.message == "soak" => {
                Outcome::Expected
            }
            Ok(()) => Outcome::Wrong("echo.fail succeeded".into()),
            Err(e) => Outcome::Failed(class_of(&e)),
        },
        _ => check(
            client
                .call_with::<u64>("echo.sleep", (20u64,), options)
                .await,
            |v| *v == 20,
        ),
    }
}

/// `echo.count(STREAM_ITEMS)`: every item in order, then the end.
async fn stream_call(client: &Client, options: CallOptions) -> Outcome {
    let mut items = match client
        .call_stream_with::<u64>("echo.count", (STREAM_ITEMS,), options)
        .await
    {
        Ok(items) => items,
        Err(e) => return Outcome::Failed(class_of(&e)),
    };
    let mut next = 0;
    while let Some(item) = items.next().await {
        match item {
            Ok(n) if n == next => next += 1,
            Ok(n) => return Outcome::Wrong(format!("stream item {n}, expected {next}")),
            Err(e) => return Outcome::Failed(class_of(&e)),
        }
    }
    if next == STREAM_ITEMS {
        Outcome::Expected
    } else {
        Outcome::Wrong(format!("stream ended after {next} of {STREAM_ITEMS} items"))
    }
}

fn check<T: std::fmt::Debug>(result: Result<T, CallError>, ok: impl Fn(&T) -> bool) -> Outcome {
    match result {
        Ok(v) if ok(&v) => Outcome::Expected,
        Ok(v) => Outcome::Wrong(format!("unexpected result {v:?}")),
        Err(e) => Outcome::Failed(class_of(&e)),
    }
}

/// A 1 KiB binary payload that differs per call.
fn serde_bytes_value(i: u64) -> rmpv::Value {
    rmpv::Value::Binary(
        (0..1024u64)
            .map(|k| (i.wrapping_mul(31) ^ k) as u8)
            .collect(),
    )
}

/// Sends requests over the node's size limit through a `zmesh::Client` (whose own limit is
/// higher) until `stop_at`: each must come back as `ERR MessageTooLarge`, never hang.
pub async fn oversized_caller(client: Client, tally: Arc<Tally>, stop_at: Instant) {
    let payload = rmpv::Value::Binary(vec![0x5a; OVERSIZE]);
    while Instant::now() < stop_at {
        tally.calls.fetch_add(1, Ordering::Relaxed);
        let call = client.call_with::<u64>(
            "echo.size",
            (&payload,),
            CallOptions::timeout(CALL_DEADLINE),
        );
        match tokio::time::timeout(CALL_DEADLINE + GRACE, call).await {
            Err(_) => tally.record_lost(),
            Ok(Err(CallError::Remote(e))) if e.name == "MessageTooLarge" => {
                tally.record(Outcome::Expected)
            }
            Ok(Ok(n)) => tally.record(Outcome::Wrong(format!(
                "an oversized request was served ({n} bytes)"
            ))),
            Ok(Err(e)) => tally.record(Outcome::Failed(class_of(&e))),
        }
        // A few per second: enough to keep the node's large-message path busy without
        // turning the soak into a bandwidth test.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
