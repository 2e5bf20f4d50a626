//! The key-value port: what the service needs from a store, and an in-memory implementation.
//!
//! The operations are those every deployment target offers: Spin's `spin:key-value` (get,
//! set) plus the `wasi:keyvalue` atomics Spin implements beside it (increment,
//! compare-and-swap), and any embedded store natively. There are no transactions and no key
//! scans: every read the service makes names its keys.

use std::collections::HashMap;
use std::sync::Mutex;

/// Longest key any store must accept (Spin's limit).
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value any store must accept (Spin's limit).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// A store failure (I/O, backend unavailable). Its text is for logs, never for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "key-value store: {}", self.0)
    }
}

impl std::error::Error for StoreError {}

/// What the service needs from a key-value store.
///
/// Implementations must make [`KeyValue::increment`] and [`KeyValue::compare_and_swap`]
/// atomic with respect to every other operation on the same key, across all processes and
/// instances that share the store.
#[allow(async_fn_in_trait)]
pub trait KeyValue {
    /// The value of `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Sets `key` to `value`, replacing any value.
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError>;

    /// Sets several keys. Not atomic as a whole; stores that can group writes do so.
    async fn set_many(&self, items: &[(String, Vec<u8>)]) -> Result<(), StoreError> {
        for (key, value) in items {
            self.set(key, value).await?;
        }
        Ok(())
    }

    /// Atomically adds `delta` to the counter at `key` (absent = 0) and returns the new value.
    /// `delta = 0` reads the counter. Counters are only ever touched through this method.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError>;

    /// Atomically sets `key` to `new` if its current value is `expected` (`None`: absent).
    /// Returns whether it did.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError>;
}

/// A process-local store (tests, and the component host's default backend).
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> MemoryKv {
        MemoryKv::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // A poisoned map is still a consistent map: every mutation is a single insert.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Overwrites a value directly (tests use this to tamper with the store).
    pub fn raw_set(&self, key: &str, value: Vec<u8>) {
        self.lock().insert(key.to_string(), value);
    }

    /// Removes a key directly (tests use this to simulate a writer that died).
    pub fn raw_remove(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Every key (tests use this to look for PHI).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = self.lock().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        all.sort();
        all
    }
}

/// Encodes a counter the way [`MemoryKv`] and the native store keep it.
pub fn encode_counter(value: i64) -> [u8; 8] {
    value.to_le_bytes()
}

/// Decodes a counter written by [`encode_counter`]; anything else counts as 0.
pub fn decode_counter(bytes: Option<&[u8]>) -> i64 {
    bytes.and_then(|b| <[u8; 8]>::try_from(b).ok()).map(i64::from_le_bytes).unwrap_or(0)
}

impl KeyValue for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_sizes(key, value)?;
        self.lock().insert(key.to_string(), value.to_vec());
        Ok(())
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        let mut map = self.lock();
        let value = decode_counter(map.get(key).map(Vec::as_slice)).saturating_add(delta);
        map.insert(key.to_string(), encode_counter(value).to_vec());
        Ok(value)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, StoreError> {
        check_sizes(key, new)?;
        let mut map = self.lock();
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        map.insert(key.to_string(), new.to_vec());
        Ok(true)
    }
}

/// Refuses what Spin would refuse, so tests against [`MemoryKv`] catch it too.
pub fn check_sizes(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError(format!("key of {} bytes exceeds {MAX_KEY_BYTES}", key.len())));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError(format!(
            "value of {} bytes exceeds {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}
