//! Stored inference results and their indexes, over a key-value store with no scans.
//!
//! Keys (all ASCII, far below Spin's 256 bytes: ids are UUIDs, pseudonyms and model ids are
//! checked to be short and plain):
//! - `res/{inference_id}` → the [`InferenceResult`] as JSON (about 1 KB);
//! - `idx/{kind}/{value}/n` → a counter: how many slots the index has handed out;
//! - `idx/{kind}/{value}/{slot}` → an inference id, for slots 1..=n;
//!
//! with kinds `all`, `batch`, `patient` and `model`. Appending reserves slots with one atomic
//! increment per index, then writes them, so concurrent writers never share a slot. A query
//! reads the counter and then exactly the slots it returns: O(results returned), never a
//! scan of the store. A slot reserved by a writer that has not written it yet reads empty
//! and is skipped.

use crate::kv::{KeyValue, StoreError};

pub use medinfer_core::{InferenceResult, round_timings};

fn result_key(id: &str) -> String {
    format!("res/{id}")
}

/// Which index a query walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    All,
    Batch,
    Patient,
    Model,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::All => "all",
            Kind::Batch => "batch",
            Kind::Patient => "patient",
            Kind::Model => "model",
        }
    }
}

fn counter_key(kind: Kind, value: &str) -> String {
    format!("idx/{}/{value}/n", kind.name())
}

fn slot_key(kind: Kind, value: &str, slot: i64) -> String {
    format!("idx/{}/{value}/{slot}", kind.name())
}

fn index_entries(r: &InferenceResult) -> Vec<(Kind, String)> {
    let mut out = vec![(Kind::All, "-".to_string()), (Kind::Model, r.model_id.clone())];
    if let Some(b) = &r.batch_id {
        out.push((Kind::Batch, b.clone()));
    }
    if let Some(p) = &r.patient_id {
        out.push((Kind::Patient, p.clone()));
    }
    out
}

/// Stores results (in order) and appends them to their indexes.
pub async fn store<K: KeyValue>(kv: &K, results: &[InferenceResult]) -> Result<(), StoreError> {
    let records: Vec<(String, Vec<u8>)> = results
        .iter()
        .map(|r| (result_key(&r.inference_id), serde_json::to_vec(r).unwrap_or_default()))
        .collect();
    kv.set_many(&records).await?;

    // Group by index, keeping result order, so each index takes one increment.
    let mut groups: Vec<((Kind, String), Vec<&str>)> = Vec::new();
    for r in results {
        for entry in index_entries(r) {
            match groups.iter_mut().find(|(k, _)| *k == entry) {
                Some((_, ids)) => ids.push(&r.inference_id),
                None => groups.push((entry, vec![&r.inference_id])),
            }
        }
    }
    let mut slots = Vec::new();
    for ((kind, value), ids) in &groups {
        let end = kv.increment(&counter_key(*kind, value), ids.len() as i64).await?;
        let first = end - ids.len() as i64 + 1;
        for (i, id) in ids.iter().enumerate() {
            slots.push((slot_key(*kind, value, first + i as i64), id.as_bytes().to_vec()));
        }
    }
    kv.set_many(&slots).await
}

/// What `/results` filters on (all optional, combined with AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exactly this inference.
    pub inference_id: Option<String>,
    /// Results of this batch.
    pub batch_id: Option<String>,
    /// Results of this (pseudonymous) patient.
    pub patient_id: Option<String>,
    /// Results of this model.
    pub model_id: Option<String>,
}

impl Filter {
    fn matches(&self, r: &InferenceResult) -> bool {
        self.batch_id.as_ref().is_none_or(|b| r.batch_id.as_ref() == Some(b))
            && self.patient_id.as_ref().is_none_or(|p| r.patient_id.as_ref() == Some(p))
            && self.model_id.as_ref().is_none_or(|m| &r.model_id == m)
    }
}

/// One page of results, oldest first, and where the next page starts.
pub async fn query<K: KeyValue>(
    kv: &K,
    filter: &Filter,
    limit: usize,
    cursor: Option<u64>,
) -> Result<(Vec<InferenceResult>, Option<u64>), StoreError> {
    if let Some(id) = &filter.inference_id {
        let found = get(kv, id).await?.filter(|r| filter.matches(r));
        return Ok((found.into_iter().collect(), None));
    }
    // The most selective index the filter names.
    let (kind, value) = if let Some(b) = &filter.batch_id {
        (Kind::Batch, b.as_str())
    } else if let Some(p) = &filter.patient_id {
        (Kind::Patient, p.as_str())
    } else if let Some(m) = &filter.model_id {
        (Kind::Model, m.as_str())
    } else {
        (Kind::All, "-")
    };
    let n = kv.increment(&counter_key(kind, value), 0).await?;
    let mut slot = cursor.unwrap_or(1).max(1) as i64;
    // Other filters may reject entries: bound the slots one page reads.
    let budget = limit.saturating_mul(8).saturating_add(64) as i64;
    let stop = slot.saturating_add(budget);
    let mut items = Vec::new();
    while slot <= n && slot < stop && items.len() < limit {
        if let Some(id) = kv.get(&slot_key(kind, value, slot)).await?
            && let Ok(id) = String::from_utf8(id)
            && let Some(r) = get(kv, &id).await?
            && filter.matches(&r)
        {
            items.push(r);
        }
        slot += 1;
    }
    Ok((items, (slot <= n).then_some(slot as u64)))
}

/// One result by id.
pub async fn get<K: KeyValue>(kv: &K, id: &str) -> Result<Option<InferenceResult>, StoreError> {
    Ok(kv.get(&result_key(id)).await?.and_then(|b| serde_json::from_slice(&b).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryKv;
    use medinfer_core::{Score, Timings};

    fn result(id: usize, batch: Option<&str>, patient: &str, model: &str) -> InferenceResult {
        InferenceResult {
            inference_id: format!("id-{id}"),
            batch_id: batch.map(str::to_string),
            model_id: model.into(),
            model_version: "1".into(),
            patient_id: Some(patient.into()),
            predictions: vec![
                Score { label: "b".into(), score: 0.75 },
                Score { label: "a".into(), score: 0.25 },
            ],
            top_label: "b".into(),
            confidence_score: 0.75,
            created_at: "2026-11-25T00:00:00.000Z".into(),
            timing_ms: Timings::default(),
            record_hash: String::new(),
        }
        .seal()
    }

    #[test]
    fn predictions_serialize_as_an_ordered_map_and_round_trip() {
        let r = result(1, None, "PT-1", "m");
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""predictions":{"b":0.75,"a":0.25}"#), "{json}");
        let back: InferenceResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.compute_hash(), r.record_hash);
    }

    #[test]
    fn indexes_page_and_combine_filters() {
        pollster::block_on(async {
            let kv = MemoryKv::new();
            let mut all = Vec::new();
            for i in 0..10 {
                let batch = (i < 6).then_some("B1");
                let model = if i % 2 == 0 { "even" } else { "odd" };
                all.push(result(i, batch, &format!("PT-{}", i % 3), model));
            }
            store(&kv, &all[..6]).await.unwrap();
            store(&kv, &all[6..]).await.unwrap();

            let by_batch = Filter { batch_id: Some("B1".into()), ..Filter::default() };
            let (page1, next) = query(&kv, &by_batch, 4, None).await.unwrap();
            assert_eq!(page1, all[..4]);
            let (page2, next) = query(&kv, &by_batch, 4, next).await.unwrap();
            assert_eq!(page2, all[4..6]);
            assert_eq!(next, None);

            let f = Filter {
                batch_id: Some("B1".into()),
                model_id: Some("odd".into()),
                ..Filter::default()
            };
            let (odd, _) = query(&kv, &f, 100, None).await.unwrap();
            let ids: Vec<_> = odd.iter().map(|r| r.inference_id.as_str()).collect();
            assert_eq!(ids, ["id-1", "id-3", "id-5"]);

            let p = Filter { patient_id: Some("PT-0".into()), ..Filter::default() };
            assert_eq!(query(&kv, &p, 100, None).await.unwrap().0.len(), 4);
            let one = Filter { inference_id: Some("id-7".into()), ..Filter::default() };
            assert_eq!(query(&kv, &one, 100, None).await.unwrap().0, [all[7].clone()]);
            let (everything, _) = query(&kv, &Filter::default(), 100, None).await.unwrap();
            assert_eq!(everything, all);
        });
    }
}
