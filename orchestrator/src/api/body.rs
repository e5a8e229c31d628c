//! Request bodies: read within the size limit, parsed as JSON, errors in the
//! API's shape (413 for too large, 400 for anything unparsable).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;

/// The raw body or the right error for why it could not be read.
pub fn bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("Request body is too large".into())
        }
        _ => ApiError::BadRequest(format!(
            "Cannot read the request body: {}",
            rejection.body_text()
        )),
    })
}

/// The body as a JSON object (an empty body is `None`).
pub fn json_object(body: &Bytes) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
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
