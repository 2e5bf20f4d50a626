//! The record of one inference, the same on every target: the server stores it, the browser
//! returns it, the CLI prints it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Score, Timings};

/// One stored inference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceResult {
    /// UUID v4.
    pub inference_id: String,
    /// The batch it came in, if any.
    pub batch_id: Option<String>,
    /// The model's id.
    pub model_id: String,
    /// The model's version.
    pub model_version: String,
    /// Keyed pseudonym of the patient (`PT-` + 24 hex), never a raw identifier.
    pub patient_id: Option<String>,
    /// Label → score, highest first.
    #[serde(with = "label_scores")]
    pub predictions: Vec<Score>,
    /// The best label.
    pub top_label: String,
    /// Its score, 0..=1.
    pub confidence_score: f32,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// Milliseconds per stage.
    pub timing_ms: Timings,
    /// SHA-256 (hex) of this record's compact JSON without `record_hash`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub record_hash: String,
}

impl InferenceResult {
    /// The hash of the record without its `record_hash`.
    pub fn compute_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.record_hash.clear();
        hex::encode(Sha256::digest(serde_json::to_vec(&unhashed).unwrap_or_default()))
    }

    /// Sets `record_hash`.
    pub fn seal(mut self) -> InferenceResult {
        self.record_hash = self.compute_hash();
        self
    }
}

/// `predictions` as a JSON object in score order (`{"Effusion":0.91,"Mass":0.12}`).
mod label_scores {
    use std::fmt;

    use crate::Score;
    use serde::de::{MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(scores: &[Score], s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(scores.len()))?;
        for score in scores {
            map.serialize_entry(&score.label, &score.score)?;
        }
        map.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Score>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Score>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of label to score")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Score>, A::Error> {
                let mut out = Vec::new();
                while let Some((label, score)) = map.next_entry::<String, f32>()? {
                    out.push(Score { label, score });
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Rounds stage timings to microseconds for display.
pub fn round_timings(t: Timings) -> Timings {
    let r = |v: f64| (v * 1000.0).round() / 1000.0;
    Timings {
        decode_ms: r(t.decode_ms),
        preprocess_ms: r(t.preprocess_ms),
        infer_ms: r(t.infer_ms),
        total_ms: r(t.total_ms),
    }
}

/// A UUID v4 (RFC 9562) from 16 random bytes.
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
