//! Request bodies → images: the seed's JSON arrays, base64 JSON and raw files.

use base64::Engine;
use http::{HeaderMap, StatusCode};
use medinfer_core::ArrayInput;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// One image as a request describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRequest {
    /// The pixels or the file.
    pub source: Source,
    /// The caller's patient identifier (pseudonymised before use).
    pub patient_id: Option<String>,
    /// The model to use (else the default).
    pub model_id: Option<String>,
    /// For multi-frame DICOM: which frame.
    pub frame: Option<u32>,
}

/// Where the pixels are.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The seed's float array.
    Array(ArrayInput),
    /// A PNG, JPEG or DICOM file (sniffed by magic bytes).
    File(Vec<u8>),
}

/// The JSON form of one image (single `/infer` body or a batch item).
#[derive(Debug, Deserialize)]
struct JsonImage {
    #[serde(default)]
    data: Option<Vec<f64>>,
    #[serde(default)]
    width: Option<u64>,
    #[serde(default)]
    height: Option<u64>,
    #[serde(default)]
    channels: Option<u64>,
    #[serde(default)]
    dtype: Option<String>,
    #[serde(default)]
    image_base64: Option<String>,
    #[serde(default)]
    patient_id: Option<String>,
    #[serde(default)]
    model_id: Option<String>,
    #[serde(default)]
    frame: Option<u32>,
}

fn unprocessable(code: &'static str, message: &str, field: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
}

impl JsonImage {
    fn into_request(self) -> Result<ImageRequest, ApiError> {
        let source = match (self.data, self.image_base64) {
            (Some(_), Some(_)) => {
                return Err(unprocessable(
                    "input.ambiguous",
                    "send either data (a float array) or image_base64, not both",
                    "data",
                ));
            }
            (None, None) => {
                return Err(unprocessable(
                    "input.missing_field",
                    "the image needs data (with width and height) or image_base64",
                    "data",
                ));
            }
            (Some(data), None) => {
                let width = self.width.ok_or_else(|| {
                    unprocessable("input.missing_field", "width is required with data", "width")
                })?;
                let height = self.height.ok_or_else(|| {
                    unprocessable("input.missing_field", "height is required with data", "height")
                })?;
                Source::Array(ArrayInput {
                    data,
                    width,
                    height,
                    channels: self.channels,
                    dtype: self.dtype,
                })
            }
            (None, Some(b64)) => Source::File(decode_base64(&b64)?),
        };
        Ok(ImageRequest {
            source,
            patient_id: self.patient_id,
            model_id: self.model_id,
            frame: self.frame,
        })
    }
}

fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    // Accept data URLs (`data:image/png;base64,...`) as browsers produce them.
    let text = match text.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => text,
    };
    let cleaned: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(cleaned.as_bytes()))
        .map_err(|_| {
            unprocessable("input.invalid_base64", "image_base64 is not base64", "image_base64")
        })
}

/// The media type of a request, without parameters, lowercased.
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Query parameters that may accompany an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageQuery {
    /// `model_id`.
    pub model_id: Option<String>,
    /// `patient_id`.
    pub patient_id: Option<String>,
    /// `frame`.
    pub frame: Option<u32>,
}

/// Parses a single `/infer` body by its `Content-Type`.
pub fn parse_single(
    headers: &HeaderMap,
    body: Vec<u8>,
    query: &ImageQuery,
) -> Result<ImageRequest, ApiError> {
    let media = media_type(headers);
    let mut request = match media.as_deref() {
        Some("application/json") => {
            let image: JsonImage =
                serde_json::from_slice(&body).map_err(|e| ApiError::from_json(&e))?;
            image.into_request()?
        }
        Some(
            "image/png"
            | "image/jpeg"
            | "image/jpg"
            | "application/dicom"
            | "application/octet-stream",
        ) => ImageRequest {
            source: Source::File(body),
            patient_id: None,
            model_id: None,
            frame: None,
        },
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "request.unsupported_media_type",
                "send application/json, image/png, image/jpeg or application/dicom",
            ));
        }
    };
    // Query parameters fill what the body did not say.
    request.model_id = request.model_id.or_else(|| query.model_id.clone());
    request.patient_id = request.patient_id.or_else(|| query.patient_id.clone());
    request.frame = request.frame.or(query.frame);
    Ok(request)
}

/// A batch body: `{"images": [...], "priority"?: "low"|"normal"|"high", "model_id"?: "…"}`.
#[derive(Debug, Deserialize)]
struct JsonBatch<'a> {
    #[serde(borrow)]
    images: Vec<&'a RawValue>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    model_id: Option<String>,
}

/// A parsed batch: each item parsed on its own, so one bad item fails alone.
#[derive(Debug)]
pub struct Batch {
    /// `low`, `normal` (default) or `high`.
    pub priority: String,
    /// One entry per image, in order.
    pub items: Vec<Result<ImageRequest, ApiError>>,
}

/// Batch priorities accepted.
pub const PRIORITIES: &[&str] = &["low", "normal", "high"];

/// Parses an `/infer/batch` body.
pub fn parse_batch(headers: &HeaderMap, body: &[u8], max_items: usize) -> Result<Batch, ApiError> {
    if media_type(headers).as_deref() != Some("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request.unsupported_media_type",
            "a batch is a JSON body (application/json)",
        ));
    }
    let batch: JsonBatch<'_> = serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e))?;
    let priority = batch.priority.unwrap_or_else(|| "normal".into());
    if !PRIORITIES.contains(&priority.as_str()) {
        return Err(unprocessable(
            "batch.invalid_priority",
            "priority must be low, normal or high",
            "priority",
        ));
    }
    if batch.images.is_empty() {
        return Err(unprocessable("batch.empty", "images must hold at least one image", "images"));
    }
    if batch.images.len() > max_items {
        return Err(unprocessable(
            "batch.too_many_images",
            &format!("a batch holds at most {max_items} images"),
            "images",
        ));
    }
    let items = batch
        .images
        .into_iter()
        .map(|raw| {
            let image: JsonImage =
                serde_json::from_str(raw.get()).map_err(|e| ApiError::from_json(&e))?;
            let mut request = image.into_request()?;
            request.model_id = request.model_id.or_else(|| batch.model_id.clone());
            Ok(request)
        })
        .collect();
    Ok(Batch { priority, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        h
    }

    #[test]
    fn the_seed_body_parses() {
        let body =
            br#"{"data":[0.0,0.5,1.0,0.25],"width":2,"height":2,"patient_id":"PT-DEIDENTIFIED"}"#;
        let r = parse_single(&json_headers(), body.to_vec(), &ImageQuery::default()).unwrap();
        assert_eq!(r.patient_id.as_deref(), Some("PT-DEIDENTIFIED"));
        assert!(matches!(r.source, Source::Array(ref a) if a.width == 2 && a.data.len() == 4));
    }

    #[test]
    fn base64_and_data_urls_decode() {
        let body = br#"{"image_base64":"data:image/png;base64,iVBORw0KGgo="}"#;
        let r = parse_single(&json_headers(), body.to_vec(), &ImageQuery::default()).unwrap();
        assert_eq!(r.source, Source::File(b"\x89PNG\r\n\x1a\n".to_vec()));
        let bad = br#"{"image_base64":"***"}"#;
        let e = parse_single(&json_headers(), bad.to_vec(), &ImageQuery::default()).unwrap_err();
        assert_eq!(e.code, "input.invalid_base64");
    }

    #[test]
    fn one_bad_batch_item_fails_alone() {
        let body = br#"{"images":[{"data":[0.5],"width":1,"height":1},{"width":"x"},{"image_base64":"AAAA"}],"priority":"high"}"#;
        let b = parse_batch(&json_headers(), body, 100).unwrap();
        assert_eq!(b.priority, "high");
        assert!(b.items[0].is_ok());
        assert_eq!(b.items[1].as_ref().unwrap_err().code, "input.invalid_json");
        assert!(b.items[2].is_ok());
        let e = parse_batch(&json_headers(), body, 2).unwrap_err();
        assert_eq!(e.code, "batch.too_many_images");
    }

    #[test]
    fn unknown_media_types_are_415() {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, "text/plain".parse().unwrap());
        let e = parse_single(&h, b"hi".to_vec(), &ImageQuery::default()).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
