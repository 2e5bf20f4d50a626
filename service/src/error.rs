//! API errors: an HTTP status and the `{"error":{"code","message","field"}}` body.
//!
//! Messages are written here or come from core's errors, which never quote input values, so
//! no identifier from a request can reach a client, a log line or the store through them.

use http::StatusCode;

use crate::kv::StoreError;

/// An error the API answers with.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable dotted code clients match on.
    pub code: &'static str,
    /// A human sentence (no PHI).
    pub message: String,
    /// The request field it concerns, when there is one.
    pub field: Option<&'static str>,
}

impl ApiError {
    /// An error with no field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None }
    }

    /// The same error about `field`.
    pub fn with_field(mut self, field: &'static str) -> ApiError {
        self.field = Some(field);
        self
    }

    /// 400 for bodies that are not JSON at all; 422 for JSON of the wrong shape.
    pub fn from_json(e: &serde_json::Error) -> ApiError {
        use serde_json::error::Category;
        // serde's messages name types and positions, never values of strings it saw... except
        // for unknown enum variants and such; keep only the category and position.
        let at = format!("line {} column {}", e.line(), e.column());
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "request.malformed_json",
                format!("the body is not valid JSON ({at})"),
            ),
            Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "input.invalid_json",
                format!("the JSON does not match the expected shape ({at}): {}", data_reason(e)),
            ),
        }
    }

    /// The store failed: 503, details only in logs.
    pub fn store(e: &StoreError) -> ApiError {
        let _ = e;
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store.unavailable",
            "the result store is unavailable; retry later",
        )
    }

    /// The JSON body of this error.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(field) = self.field {
            error["field"] = field.into();
        }
        serde_json::json!({ "error": error })
    }
}

/// serde's explanation without quoted input: "missing field `width`" and "invalid type:
/// string, expected u64" are kept; anything quoting a value is reduced to its kind.
fn data_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let reason = text.split(" at line ").next().unwrap_or("").to_string();
    if reason.starts_with("missing field") || reason.starts_with("unknown field") {
        return reason;
    }
    if let Some(rest) = reason.strip_prefix("invalid type: ") {
        // "string \"Jane\", expected u64" → "string, expected u64"
        let kind = rest.split([' ', ',']).next().unwrap_or("value");
        let expected = rest.rsplit("expected ").next().unwrap_or("another type");
        return format!("invalid type: {kind}, expected {expected}");
    }
    if reason.starts_with("invalid value") || reason.starts_with("invalid length") {
        let expected = reason.rsplit("expected ").next().unwrap_or("another value");
        return format!("invalid value, expected {expected}");
    }
    "a value has the wrong type".into()
}

impl From<medinfer_core::Error> for ApiError {
    fn from(e: medinfer_core::Error) -> ApiError {
        let code = e.code();
        let status = match code {
            "input.too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "input.unsupported_format" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "input.empty" => StatusCode::BAD_REQUEST,
            "model.not_found" => StatusCode::NOT_FOUND,
            c if c.starts_with("input.") || c.starts_with("decode.") || c.starts_with("dicom.") => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, code, message: e.to_string(), field: e.field() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_never_quote_values() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            width: u64,
        }
        let e = serde_json::from_str::<T>(r#"{"width":"Jane Doe"}"#).unwrap_err();
        let api = ApiError::from_json(&e);
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!api.message.contains("Jane"), "{}", api.message);
        assert!(api.message.contains("expected u64"), "{}", api.message);
        let e = serde_json::from_str::<T>(r#"{"width": 1"#).unwrap_err();
        assert_eq!(ApiError::from_json(&e).code, "request.malformed_json");
    }
}
