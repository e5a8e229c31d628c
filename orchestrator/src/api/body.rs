//! Request bodies: read within the size limit, parsed as JSON, errors in the
//! API's shape (413 for too large, 400 for anything unparsable).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// The raw body or the right error for why it could not be read (408 for
/// one that did not arrive within `body_read_timeout_seconds`).
pub fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if let Some(timeout) = super::idle::body_timeout(&rejection) {
            return ApiError::BodyTimeout(format!("Request timeout: {timeout}"));
        }
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("Request body is too large".into())
            }
            _ => ApiError::BadRequest(format!(
                "Cannot read the request body: {}",
                rejection.body_text()
            )),
        }
    })
}

/// Reads `body` (at most `limit` bytes, within `body_read_timeout_seconds`):
/// for handlers that check something before they read.
pub async fn read(body: axum::body::Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if let Some(timeout) = super::idle::body_timeout(&e) {
            return ApiError::BodyTimeout(format!("Request timeout: {timeout}"));
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<http_body_util::LengthLimitError>() {
                return ApiError::PayloadTooLarge("Request body is too large".into());
            }
            source = err.source();
        }
        ApiError::BadRequest(format!("Cannot read the request body: {e}"))
    })
}

/// The body as a JSON object (an empty body is `None`).
pub fn json_object(body: &Bytes) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    rxon::check_document(body)
        .map_err(|e| ApiError::BadRequest(format!("Invalid JSON body: {e}")))?;
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ApiError::BadRequest(
            "Invalid JSON body: expected a JSON object".into(),
        )),
        Err(e) => Err(ApiError::BadRequest(format!("Invalid JSON body: {e}"))),
    }
}

/// A JSON value as `T`, with the type's name in the error.
pub fn typed<T: DeserializeOwned>(value: Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("Invalid {what} payload: {e}")))
}
