//! The audit log: a SHA-256 hash chain kept in a key-value store with no transactions.
//!
//! `hash = SHA-256(prev_hash ‖ canonical record)` where `prev_hash` is the previous
//! record's hash in lowercase hex (64 zeros before the first record) and the canonical
//! record is the compact JSON of `seq, action, user_id, model_id, inference_id, batch_id,
//! detail, timestamp` in that order.
//!
//! # Why the chain cannot fork or lose a record
//!
//! The chain's tip lives in one key, `audit/head`, whose value is the last appended group
//! of records (one request appends one group: one record, or a batch's records). Appending
//! is a compare-and-swap loop:
//!
//! 1. read `audit/head` (value `H`);
//! 2. *help*: make sure `H`'s records are stored under `audit/r/{seq}` (write them if the
//!    last one is missing — its writer may have died after its swap);
//! 3. chain the new records after `H`'s last record;
//! 4. compare-and-swap `audit/head` from `H` to the new group; on failure start again;
//! 5. store the new records under `audit/r/{seq}`.
//!
//! Every successful swap replaces exactly the value it read, so the sequence of head values
//! is a single line: two writers can never both extend the same tip (no fork), and a group
//! is only replaced after its records were stored by their writer or by the helper (nothing
//! lost). Sequence numbers are dense: each group starts right after the previous one.
//! Readers that find `audit/r/{seq}` missing take the record from the head, where it must
//! then still be.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kv::{KeyValue, StoreError};

const HEAD: &str = "audit/head";
/// Hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Records per head value: keeps the head far below Spin's 1 MB value limit.
const GROUP: usize = 256;
/// Compare-and-swap attempts before giving up (each failed attempt means another writer
/// succeeded, so the chain as a whole always progresses).
const ATTEMPTS: usize = 10_000;

/// Actions recorded.
pub mod action {
    /// An image was classified and its result stored.
    pub const INFERENCE_COMPLETED: &str = "INFERENCE_COMPLETED";
    /// An inference request (or batch item) was refused or failed.
    pub const INFERENCE_FAILED: &str = "INFERENCE_FAILED";
    /// A batch finished (its items are recorded individually too).
    pub const BATCH_COMPLETED: &str = "BATCH_COMPLETED";
    /// A request was refused for want of a valid token or role.
    pub const ACCESS_DENIED: &str = "ACCESS_DENIED";
    /// Stored results were read.
    pub const RESULTS_READ: &str = "RESULTS_READ";
    /// The audit log was read.
    pub const AUDIT_READ: &str = "AUDIT_READ";
    /// The chain was verified.
    pub const AUDIT_VERIFIED: &str = "AUDIT_VERIFIED";
}

/// What happened, before it is chained.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// One of [`action`].
    pub action: &'static str,
    /// The token's `sub`, when there was a valid token.
    pub user_id: Option<String>,
    /// The model involved.
    pub model_id: Option<String>,
    /// The inference involved.
    pub inference_id: Option<String>,
    /// The batch involved.
    pub batch_id: Option<String>,
    /// A short, PHI-free detail: an error code, a route, a count.
    pub detail: Option<String>,
}

/// One chained audit record as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// One of [`action`].
    pub action: String,
    /// JWT `sub` of the caller.
    pub user_id: Option<String>,
    /// Model involved.
    pub model_id: Option<String>,
    /// Inference involved.
    pub inference_id: Option<String>,
    /// Batch involved.
    pub batch_id: Option<String>,
    /// PHI-free detail.
    pub detail: Option<String>,
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// The previous record's hash.
    pub prev_hash: String,
    /// SHA-256(prev_hash ‖ canonical record), hex.
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    action: &'a str,
    user_id: Option<&'a str>,
    model_id: Option<&'a str>,
    inference_id: Option<&'a str>,
    batch_id: Option<&'a str>,
    detail: Option<&'a str>,
    timestamp: &'a str,
}

impl AuditRecord {
    /// The hash this record should have.
    pub fn compute_hash(&self) -> String {
        let canonical = Canonical {
            seq: self.seq,
            action: &self.action,
            user_id: self.user_id.as_deref(),
            model_id: self.model_id.as_deref(),
            inference_id: self.inference_id.as_deref(),
            batch_id: self.batch_id.as_deref(),
            detail: self.detail.as_deref(),
            timestamp: &self.timestamp,
        };
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(serde_json::to_vec(&canonical).unwrap_or_default());
        hex::encode(h.finalize())
    }
}

fn record_key(seq: u64) -> String {
    format!("audit/r/{seq}")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn parse_head(bytes: Option<&[u8]>) -> Result<Vec<AuditRecord>, StoreError> {
    match bytes {
        None => Ok(Vec::new()),
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| StoreError(format!("audit head is not readable: {e}"))),
    }
}

/// Appends `events` (in order, contiguous) and returns their records.
pub async fn append<K: KeyValue>(
    kv: &K,
    events: &[Event],
    timestamp: &str,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    for chunk in events.chunks(GROUP) {
        out.extend(append_group(kv, chunk, timestamp).await?);
    }
    Ok(out)
}

async fn append_group<K: KeyValue>(
    kv: &K,
    events: &[Event],
    timestamp: &str,
) -> Result<Vec<AuditRecord>, StoreError> {
    for _ in 0..ATTEMPTS {
        let current = kv.get(HEAD).await?;
        let head = parse_head(current.as_deref())?;
        if let Some(last) = head.last()
            && kv.get(&record_key(last.seq)).await?.is_none()
        {
            store_records(kv, &head).await?;
        }
        let (mut seq, mut prev) = match head.last() {
            Some(r) => (r.seq, r.hash.clone()),
            None => (0, GENESIS.to_string()),
        };
        let mut group = Vec::with_capacity(events.len());
        for e in events {
            seq += 1;
            let mut r = AuditRecord {
                seq,
                action: e.action.to_string(),
                user_id: e.user_id.clone(),
                model_id: e.model_id.clone(),
                inference_id: e.inference_id.clone(),
                batch_id: e.batch_id.clone(),
                detail: e.detail.clone(),
                timestamp: timestamp.to_string(),
                prev_hash: prev,
                hash: String::new(),
            };
            r.hash = r.compute_hash();
            prev = r.hash.clone();
            group.push(r);
        }
        if kv.compare_and_swap(HEAD, current.as_deref(), &encode(&group)).await? {
            store_records(kv, &group).await?;
            return Ok(group);
        }
    }
    Err(StoreError("audit head stayed contended".into()))
}

async fn store_records<K: KeyValue>(kv: &K, records: &[AuditRecord]) -> Result<(), StoreError> {
    let items: Vec<(String, Vec<u8>)> =
        records.iter().map(|r| (record_key(r.seq), encode(r))).collect();
    kv.set_many(&items).await
}

/// How many records the chain holds.
pub async fn len<K: KeyValue>(kv: &K) -> Result<u64, StoreError> {
    let head = parse_head(kv.get(HEAD).await?.as_deref())?;
    Ok(head.last().map_or(0, |r| r.seq))
}

/// Record `seq`, from its key or, while its writer has not stored it yet, from the head.
async fn record<K: KeyValue>(kv: &K, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
    for _ in 0..2 {
        if let Some(bytes) = kv.get(&record_key(seq)).await? {
            return Ok(serde_json::from_slice(&bytes).ok());
        }
        let head = parse_head(kv.get(HEAD).await?.as_deref())?;
        if let Some(r) = head.iter().find(|r| r.seq == seq) {
            return Ok(Some(r.clone()));
        }
        // The head moved on, so its new writer stored this record: read it again.
    }
    Ok(None)
}

/// Records `from..from+limit` (1-based) and the next cursor.
pub async fn page<K: KeyValue>(
    kv: &K,
    from: u64,
    limit: usize,
) -> Result<(Vec<AuditRecord>, Option<u64>), StoreError> {
    let total = len(kv).await?;
    let mut items = Vec::new();
    let mut seq = from.max(1);
    while seq <= total && items.len() < limit {
        match record(kv, seq).await? {
            Some(r) => items.push(r),
            None => return Err(StoreError(format!("audit record {seq} is missing"))),
        }
        seq += 1;
    }
    Ok((items, (seq <= total).then_some(seq)))
}

/// The outcome of re-walking the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Whether every link holds.
    pub valid: bool,
    /// Records in the chain.
    pub records: u64,
    /// The first record whose link or hash is wrong (or that is missing).
    pub first_broken_seq: Option<u64>,
}

/// Re-walks the whole chain from the first record.
pub async fn verify<K: KeyValue>(kv: &K) -> Result<Verification, StoreError> {
    let head = parse_head(kv.get(HEAD).await?.as_deref())?;
    let total = head.last().map_or(0, |r| r.seq);
    let mut prev = GENESIS.to_string();
    for seq in 1..=total {
        let ok = match record(kv, seq).await? {
            Some(r) => {
                r.seq == seq && r.prev_hash == prev && r.compute_hash() == r.hash && {
                    prev = r.hash;
                    true
                }
            }
            None => false,
        };
        if !ok {
            return Ok(Verification { valid: false, records: total, first_broken_seq: Some(seq) });
        }
    }
    // The head's copy of the tip must agree with the stored chain.
    let tip_ok = head.last().is_none_or(|r| r.hash == prev);
    Ok(Verification { valid: tip_ok, records: total, first_broken_seq: (!tip_ok).then_some(total) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryKv;

    fn event(n: usize) -> Event {
        Event { action: action::RESULTS_READ, detail: Some(format!("n={n}")), ..Event::default() }
    }

    #[test]
    fn appends_chain_and_verify_detects_tampering() {
        pollster::block_on(async {
            let kv = MemoryKv::new();
            for i in 0..5 {
                append(&kv, &[event(i)], "t").await.unwrap();
            }
            append(&kv, &[event(5), event(6), event(7)], "t").await.unwrap();
            let v = verify(&kv).await.unwrap();
            assert_eq!(v, Verification { valid: true, records: 8, first_broken_seq: None });
            let (page1, next) = page(&kv, 1, 3).await.unwrap();
            assert_eq!(page1.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
            assert_eq!(next, Some(4));
            assert_eq!(page1[1].prev_hash, page1[0].hash);

            let mut r = page(&kv, 4, 1).await.unwrap().0.remove(0);
            r.detail = Some("edited".into());
            kv.raw_set("audit/r/4", serde_json::to_vec(&r).unwrap());
            assert_eq!(verify(&kv).await.unwrap().first_broken_seq, Some(4));
        });
    }

    #[test]
    fn a_writer_that_died_after_its_swap_is_helped() {
        pollster::block_on(async {
            let kv = MemoryKv::new();
            append(&kv, &[event(0), event(1)], "t").await.unwrap();
            // Simulate a writer that swapped the head but never stored its records.
            let orphan = kv.get("audit/r/2").await.unwrap().unwrap();
            kv.raw_remove("audit/r/2");
            assert!(verify(&kv).await.unwrap().valid, "readers fall back to the head");
            append(&kv, &[event(2)], "t").await.unwrap();
            assert_eq!(kv.get("audit/r/2").await.unwrap().unwrap(), orphan);
            assert_eq!(verify(&kv).await.unwrap().records, 3);
        });
    }

    #[test]
    #[cfg(not(target_family = "wasm"))] // threads
    fn concurrent_appends_never_fork() {
        let kv = std::sync::Arc::new(MemoryKv::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        pollster::block_on(append(&*kv, &[event(t * 1000 + i)], "t")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = pollster::block_on(verify(&*kv)).unwrap();
        assert_eq!(v, Verification { valid: true, records: 400, first_broken_seq: None });
        let (all, _) = pollster::block_on(page(&*kv, 1, 1000)).unwrap();
        let mut details: Vec<_> = all.iter().map(|r| r.detail.clone().unwrap()).collect();
        details.sort();
        details.dedup();
        assert_eq!(details.len(), 400, "no record lost or duplicated");
    }
}
