//! Plugin deployment for our worker hosts (see [`rxon::deploy`]): the
//! desired set and the components, for any authenticated worker.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

pub async fn desired(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.auth.worker(&headers, None, None)?;
    Ok(axum::Json(state.engine.registry().desired()).into_response())
}

pub async fn component(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.auth.worker(&headers, None, None)?;
    if !rxon::deploy::is_sha256_hex(&sha256) || !state.engine.registry().knows(&sha256) {
        return Err(ApiError::NotFound(format!(
            "No plugin component with sha256 {}",
            rxon::text::clip(&sha256, 64)
        )));
    }
    let storage = state.engine.storage();
    let sha = sha256.clone();
    let bytes = tokio::task::spawn_blocking(move || storage.plugin_component(&sha))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or_else(|| ApiError::NotFound(format!("No plugin component with sha256 {sha256}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/wasm"),
        )],
        Body::from(bytes),
    )
        .into_response())
}
