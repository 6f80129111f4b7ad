//! A zmesh reference service: an in-memory key-value store that publishes every change as
//! an event. Tools and the `zmesh demo` rely on exactly this contract:
//!
//! | method | behaviour |
//! |---|---|
//! | `kv.get(key)` | the value stored under `key`, or nil (idempotent) |
//! | `kv.put(key, value)` | stores any msgpack `value` under `key`; returns the store's new revision |
//! | `kv.delete(key)` | removes `key`; returns whether it was there |
//! | `kv.scan(prefix, limit)` | up to `limit` `[key, value]` pairs whose key starts with `prefix`, in key order, and no more than [`KvConfig::max_scan_bytes`] of them (idempotent) |
//!
//! Every `put`, and every `delete` that removed something, publishes a [`Change`] on topic
//! `kv.changed.<key>` through the publisher the service was built with (normally the node's
//! own, see [`NodeBuilder::publisher`](zmesh_core::NodeBuilder::publisher)), in revision
//! order: the event is published under the same lock as the change, so subscribers see the
//! changes of a key in the order they were made.
//!
//! Bounds ([`KvConfig`]): key length, value size (its msgpack encoding), number of keys,
//! total bytes, and scan length in pairs and in bytes. A scan stops at whichever of its
//! bounds comes first (always returning at least one pair when one matches), so its reply
//! stays well under the message size limits of the node and its callers: a short result
//! means no more keys match, or that the next pair would have passed the bytes bound. Breaking one is a typed error with a clear message:
//! `InvalidKey`, `ValueTooLarge`, `StoreFull`, `InvalidLimit` (see [`KvError`]).
//!
//! Only the reads are marked idempotent. `put` and `delete` leave the same state when run
//! twice in a row, but a retry that runs after someone else's write in between would undo
//! that write (a repeated `put` of an old value, a repeated `delete` of a new one), so
//! callers must not have them re-run on another peer; request ids and the node's reply
//! cache make plain retries to the same node safe.

use std::collections::BTreeMap;

use rmpv::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use zmesh_core::{HandlerError, Publisher, Service};

/// The service name.
pub const NAME: &str = "kv";

/// Change events are published on this prefix followed by the key.
pub const TOPIC_PREFIX: &str = "kv.changed.";

/// The bounds of one store. Build with `KvConfig::default()` and the setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvConfig {
    /// Longest key in bytes (default 256).
    pub max_key_bytes: usize,
    /// Largest value, as msgpack bytes (default 64 KiB).
    pub max_value_bytes: usize,
    /// Most keys held (default 100,000).
    pub max_keys: usize,
    /// Most bytes held, keys plus values (default 64 MiB).
    pub max_total_bytes: usize,
    /// Largest `limit` a scan may ask for (default 1,000).
    pub max_scan: usize,
    /// Most bytes of keys and values one scan returns (default 4 MiB).
    pub max_scan_bytes: usize,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self {
            max_key_bytes: 256,
            max_value_bytes: 64 * 1024,
            max_keys: 100_000,
            max_total_bytes: 64 * 1024 * 1024,
            max_scan: 1_000,
            max_scan_bytes: 4 * 1024 * 1024,
        }
    }
}

impl KvConfig {
    /// Sets the longest key in bytes.
    #[must_use]
    pub fn max_key_bytes(mut self, n: usize) -> Self {
        self.max_key_bytes = n;
        self
    }

    /// Sets the largest value (msgpack bytes).
    #[must_use]
    pub fn max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// Sets the most keys held.
    #[must_use]
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Sets the most bytes held.
    #[must_use]
    pub fn max_total_bytes(mut self, n: usize) -> Self {
        self.max_total_bytes = n;
        self
    }

    /// Sets the largest scan limit.
    #[must_use]
    pub fn max_scan(mut self, n: usize) -> Self {
        self.max_scan = n;
        self
    }

    /// Sets the most bytes of keys and values one scan returns.
    #[must_use]
    pub fn max_scan_bytes(mut self, n: usize) -> Self {
        self.max_scan_bytes = n;
        self
    }
}

/// Why a kv call was refused. Travels as `ERR [name, message]` with the name from
/// [`KvError::name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The key is empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key is longer than [`KvConfig::max_key_bytes`].
    #[error("key of {len} bytes is longer than the limit of {max} bytes")]
    KeyTooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value's encoding is larger than [`KvConfig::max_value_bytes`].
    #[error("value of {len} bytes is larger than the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's msgpack size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Storing the value would pass [`KvConfig::max_keys`] or [`KvConfig::max_total_bytes`].
    #[error(
        "store is full ({keys} keys, {bytes} bytes; limits {max_keys} keys, {max_bytes} bytes)"
    )]
    Full {
        /// Keys held now.
        keys: usize,
        /// Bytes held now.
        bytes: usize,
        /// The key limit.
        max_keys: usize,
        /// The byte limit.
        max_bytes: usize,
    },
    /// A scan limit of 0 or above [`KvConfig::max_scan`].
    #[error("scan limit {limit} is out of range 1..={max}")]
    BadLimit {
        /// The limit asked for.
        limit: u64,
        /// The largest allowed.
        max: usize,
    },
}

impl KvError {
    /// The error name callers see: `InvalidKey`, `ValueTooLarge`, `StoreFull` or
    /// `InvalidLimit`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::EmptyKey | Self::KeyTooLong { .. } => "InvalidKey",
            Self::ValueTooLarge { .. } => "ValueTooLarge",
            Self::Full { .. } => "StoreFull",
            Self::BadLimit { .. } => "InvalidLimit",
        }
    }

    fn into_handler_error(self) -> HandlerError {
        HandlerError::new(self.name(), self.to_string())
    }
}

/// The payload of a `kv.changed.<key>` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The key that changed.
    pub key: String,
    /// `"put"` or `"delete"`.
    pub op: String,
    /// The new value; nil for a delete.
    pub value: Value,
    /// The store's revision after the change (increases by one per change).
    pub revision: u64,
}

/// The store behind one service instance.
#[derive(Debug, Default)]
struct Store {
    /// Value and its msgpack size, by key.
    entries: BTreeMap<String, (Value, usize)>,
    /// Keys plus values, in bytes.
    bytes: usize,
    revision: u64,
}

/// One service instance: the store, its bounds and where changes go.
#[derive(Debug)]
struct Kv {
    config: KvConfig,
    store: Mutex<Store>,
    publisher: Option<Publisher>,
}

impl Kv {
    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if key.len() > self.config.max_key_bytes {
            return Err(KvError::KeyTooLong {
                len: key.len(),
                max: self.config.max_key_bytes,
            });
        }
        Ok(())
    }

    async fn read(&self, key: String) -> Result<Value, KvError> {
        self.check_key(&key)?;
        let store = self.store.lock().await;
        Ok(store
            .entries
            .get(&key)
            .map_or(Value::Nil, |(value, _)| value.clone()))
    }

    async fn write(&self, key: String, value: Value) -> Result<u64, KvError> {
        self.check_key(&key)?;
        let size = encoded_size(&value);
        if size > self.config.max_value_bytes {
            return Err(KvError::ValueTooLarge {
                len: size,
                max: self.config.max_value_bytes,
            });
        }
        let mut store = self.store.lock().await;
        let previous = store.entries.get(&key).map(|(_, s)| key.len() + s);
        let bytes = store.bytes - previous.unwrap_or(0) + key.len() + size;
        let keys = store.entries.len() + usize::from(previous.is_none());
        if keys > self.config.max_keys || bytes > self.config.max_total_bytes {
            return Err(KvError::Full {
                keys: store.entries.len(),
                bytes: store.bytes,
                max_keys: self.config.max_keys,
                max_bytes: self.config.max_total_bytes,
            });
        }
        store.bytes = bytes;
        store.revision += 1;
        let revision = store.revision;
        store.entries.insert(key.clone(), (value.clone(), size));
        // Published under the store lock, so the events of a key leave in revision order.
        self.publish(Change {
            key,
            op: "put".into(),
            value,
            revision,
        })
        .await;
        Ok(revision)
    }

    async fn remove(&self, key: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        let mut store = self.store.lock().await;
        let Some((_, size)) = store.entries.remove(&key) else {
            return Ok(false);
        };
        store.bytes -= key.len() + size;
        store.revision += 1;
        let revision = store.revision;
        self.publish(Change {
            key,
            op: "delete".into(),
            value: Value::Nil,
            revision,
        })
        .await;
        Ok(true)
    }

    async fn range(&self, prefix: String, limit: u64) -> Result<Vec<(String, Value)>, KvError> {
        let max = self.config.max_scan;
        let n = usize::try_from(limit).unwrap_or(usize::MAX);
        if n == 0 || n > max {
            return Err(KvError::BadLimit { limit, max });
        }
        let store = self.store.lock().await;
        let mut budget = self.config.max_scan_bytes;
        let mut pairs = Vec::new();
        for (k, (v, size)) in store
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(n)
        {
            let cost = k.len() + size;
            if cost > budget && !pairs.is_empty() {
                break;
            }
            budget = budget.saturating_sub(cost);
            pairs.push((k.clone(), v.clone()));
        }
        Ok(pairs)
    }

    /// Publishes a change. The change is made whatever happens here: a publisher that was
    /// closed (the node is shutting down) or refuses the event only costs subscribers this
    /// event, which they see as a gap at the key's next change.
    async fn publish(&self, change: Change) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let topic = format!("{TOPIC_PREFIX}{}", change.key);
        if let Err(e) = publisher.publish(&topic, &change).await {
            tracing::warn!(%topic, error = %e, "kv change event not published");
        }
    }
}

/// The msgpack size of a value (what it costs to hold and to send).
fn encoded_size(value: &Value) -> usize {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, value);
    out.len()
}

/// The kv service's contract, as a `#[zmesh::service]` trait: [`KeyValueClient`] calls it
/// typed (`kv.get`, `kv.put`, ... on the wire).
#[zmesh_macros::service(name = "kv", crate = "zmesh_core")]
pub trait KeyValue {
    /// Return the value stored under key, or nil.
    #[zmesh(idempotent)]
    async fn get(&self, key: String) -> Result<Value, HandlerError>;
    /// Store value under key; return the new revision. Publishes `kv.changed.<key>`.
    async fn put(&self, key: String, value: Value) -> Result<u64, HandlerError>;
    /// Remove key; return whether it was there. Publishes `kv.changed.<key>` if it was.
    async fn delete(&self, key: String) -> Result<bool, HandlerError>;
    /// Return up to limit [key, value] pairs whose key starts with prefix, in key order.
    #[zmesh(idempotent)]
    async fn scan(&self, prefix: String, limit: u64) -> Result<Vec<(String, Value)>, HandlerError>;
}

// Each method's KvError becomes the HandlerError of its own wire name (`KeyTooLong`, `Full`,
// ...): `?` would name them all after the type instead.
impl KeyValue for Kv {
    async fn get(&self, key: String) -> Result<Value, HandlerError> {
        self.read(key).await.map_err(KvError::into_handler_error)
    }

    async fn put(&self, key: String, value: Value) -> Result<u64, HandlerError> {
        self.write(key, value)
            .await
            .map_err(KvError::into_handler_error)
    }

    async fn delete(&self, key: String) -> Result<bool, HandlerError> {
        self.remove(key).await.map_err(KvError::into_handler_error)
    }

    async fn scan(&self, prefix: String, limit: u64) -> Result<Vec<(String, Value)>, HandlerError> {
        self.range(prefix, limit)
            .await
            .map_err(KvError::into_handler_error)
    }
}

/// Builds the kv service with its own empty store. Changes are published through
/// `publisher` when given (pass the node's, see the crate docs), else not at all.
pub fn service(config: KvConfig, publisher: Option<Publisher>) -> Service {
    KeyValueServer::new(Kv {
        config,
        store: Mutex::new(Store::default()),
        publisher,
    })
    .into_service()
}
