//! Plugin deployment for our worker hosts (see [`rxon::deploy`]): the
//! desired set and the components, for any authenticated worker.
//!
//! A component is streamed from storage a chunk at a time
//! ([`crate::storage::Deploys::stream_plugin_component`]: on SQLite from a
//! read-only connection of its own, so the job writer's is never held; on
//! PostgreSQL a pooled connection per chunk), at most [`MAX_DOWNLOADS`] at once; a download waits up to
//! [`DOWNLOAD_WAIT`] for its turn, then gets 503 with `Retry-After`.

use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// Components sent at once.
pub const MAX_DOWNLOADS: usize = 8;
/// How long a download waits for one of the [`MAX_DOWNLOADS`] places.
pub const DOWNLOAD_WAIT: Duration = Duration::from_secs(10);
/// Chunks of one download read ahead of the socket.
const READ_AHEAD: usize = 4;

static DOWNLOADS: LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_DOWNLOADS)));

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
    let place = match tokio::time::timeout(DOWNLOAD_WAIT, DOWNLOADS.clone().acquire_owned()).await {
        Ok(Ok(place)) => place,
        _ => {
            return Err(ApiError::Saturated(
                format!("{MAX_DOWNLOADS} plugin components are being sent; retry in a few seconds"),
                5,
            ));
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(READ_AHEAD);
    let sha = sha256.clone();
    let engine = state.engine.clone();
    let reading =
        tokio::spawn(async move { engine.deploys().stream_plugin_component(&sha, tx).await });
    // The first chunk (or the end) says whether the component is there.
    let first = rx.recv().await;
    if first.is_none() {
        let found = reading
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !found {
            return Err(ApiError::NotFound(format!(
                "No plugin component with sha256 {sha256}"
            )));
        }
    } else {
        // A read that fails half way ends the body short (the worker checks
        // the hash); say why in the log.
        tokio::spawn(async move {
            if let Ok(Err(e)) = reading.await {
                tracing::error!("sending plugin component {sha256} failed: {e}");
            }
        });
    }
    // The place is held until the last chunk is sent.
    let chunks = futures_util::stream::unfold(
        (first, rx, Some(place)),
        |(next, mut rx, mut place)| async move {
            let chunk = next?;
            let after = rx.recv().await;
            if after.is_none() {
                place.take();
            }
            Some((Ok::<_, std::convert::Infallible>(chunk), (after, rx, place)))
        },
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/wasm"),
        )],
        Body::from_stream(chunks),
    )
        .into_response())
}
