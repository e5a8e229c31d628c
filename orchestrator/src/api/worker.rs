//! The worker API (`/_worker/...`), wire-compatible with RXON 1.0b17.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Replay;
use super::error::ApiError;
use super::{AppState, body};

/// Reads, authenticates and verifies a signed worker message.
async fn signed_body(
    state: &AppState,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
    path_id: Option<&str>,
    exclude: &[&str],
    replay: Replay,
) -> Result<Option<(String, Value)>, ApiError> {
    let raw = body::bytes(raw)?;
    let obj = body::json_object(&raw)?;
    signed_object(state, headers, obj, path_id, exclude, replay).await
}

/// Authenticates and verifies a signed worker message already parsed (an
/// HTTP body, or the body of a channel frame).
pub(super) async fn signed_object(
    state: &AppState,
    headers: &HeaderMap,
    obj: Option<serde_json::Map<String, Value>>,
    path_id: Option<&str>,
    exclude: &[&str],
    replay: Replay,
) -> Result<Option<(String, Value)>, ApiError> {
    let Some(obj) = obj else {
        return Ok(None);
    };
    let body_id = obj.get("worker_id").and_then(Value::as_str);
    let (worker_id, secret) = state.auth.worker(headers, path_id, body_id)?;
    let value = Value::Object(obj);
    let key = state
        .auth
        .verify_message(&value, &worker_id, &secret, exclude, replay)?;
    if let Some(key) = key
        && !state.engine.remember_nonce(&key).await?
    {
        return Err(ApiError::Forbidden(
            "Duplicate message detected (replay attack)".into(),
        ));
    }
    Ok(Some((worker_id, value)))
}

/// Logs a worker whose `capabilities.s3_config_hash` names another S3
/// store than ours (it would read and write other files), as avtomatika does.
fn warn_on_other_store(state: &AppState, reg: &rxon::WorkerRegistration) {
    let ours = state.objects.as_deref().and_then(|o| o.config_hash());
    let theirs = reg
        .capabilities
        .as_ref()
        .and_then(|c| c.get("s3_config_hash"))
        .and_then(Value::as_str);
    if let (Some(ours), Some(theirs)) = (ours, theirs)
        && ours != theirs
    {
        tracing::warn!(
            "worker {} uses another S3 configuration (s3_config_hash {}, ours {ours}): the files it reads and writes are not this orchestrator's",
            reg.worker_id,
            rxon::text::for_log(theirs)
        );
    }
}

pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (worker_id, value) = signed_body(&state, &headers, raw, None, &[], Replay::Rejected)
        .await?
        .ok_or_else(|| {
            ApiError::BadRequest("Invalid WorkerRegistration payload: empty body".into())
        })?;
    let reg: rxon::WorkerRegistration = body::typed(value, "WorkerRegistration")?;
    if reg.worker_id != worker_id {
        return Err(ApiError::Forbidden("Immediate sender ID mismatch".into()));
    }
    if !rxon::is_valid_worker_id(&reg.worker_id) {
        return Err(ApiError::BadRequest(format!(
            "Invalid worker_id {:?}: use 1-128 letters, digits, `_` or `-`",
            reg.worker_id
        )));
    }
    let n = reg.supported_skills.len();
    at_most(
        "WorkerRegistration",
        n,
        state.engine.settings().max_skills_per_worker,
        &format!("{n} skills declared"),
        " (max_skills_per_worker)",
    )?;
    token_has_room(&state, &reg.worker_id).await?;
    state.engine.register_worker(&reg).await?;
    warn_on_other_store(&state, &reg);
    let warning = headers
        .get(rxon::HEADER_RXON_VERSION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v != rxon::PROTOCOL_VERSION)
        .map(|v| {
            format!(
                "Protocol version mismatch! Orchestrator speaks {}, worker {v}",
                rxon::PROTOCOL_VERSION
            )
        });
    Ok(axum::Json(rxon::RegisterResponse {
        status: "registered".into(),
        version: Some(rxon::PROTOCOL_VERSION.into()),
        warning,
    })
    .into_response())
}

/// A new worker id registered with a shared token (the global one, or a
/// pattern's) must leave that token within `max_workers_per_token`: one
/// holder cannot fill `max_workers` with made-up ids.
async fn token_has_room(state: &AppState, worker_id: &str) -> Result<(), ApiError> {
    let Some((which, _)) = state.auth.token_of(worker_id) else {
        return Ok(());
    };
    if state.auth.worker_tokens.contains_key(worker_id) {
        return Ok(());
    }
    let workers = state.engine.workers().await;
    if workers.iter().any(|w| w.worker_id == worker_id) {
        return Ok(());
    }
    let max = state.auth.max_workers_per_token;
    let same = workers
        .iter()
        .filter(|w| {
            !state.auth.worker_tokens.contains_key(&w.worker_id)
                && state.auth.token_of(&w.worker_id).map(|(t, _)| t) == Some(which.clone())
        })
        .count();
    if same >= max {
        return Err(ApiError::TooMany(format!(
            "{which} has {same} workers registered, the most one token may (max_workers_per_token = {max}); give this worker a token of its own"
        )));
    }
    Ok(())
}

pub async fn heartbeat(
    State(state): State<AppState>,
    Path(worker_id): Path<String>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body::bytes(raw)?;
    let obj = body::json_object(&raw)?;
    let response = accept_heartbeat(&state, &headers, &worker_id, obj).await?;
    Ok(axum::Json(response).into_response())
}

/// A heartbeat (`None`: an empty body, which only refreshes the TTL).
pub(super) async fn accept_heartbeat(
    state: &AppState,
    headers: &HeaderMap,
    worker_id: &str,
    obj: Option<serde_json::Map<String, Value>>,
) -> Result<rxon::HeartbeatResponse, ApiError> {
    let signed = signed_object(state, headers, obj, Some(worker_id), &[], Replay::Allowed).await?;
    let hb = match signed {
        Some((_, value)) => Some(body::typed::<rxon::Heartbeat>(value, "Heartbeat")?),
        None => {
            state.auth.worker(headers, Some(worker_id), None)?;
            None
        }
    };
    if let Some(hb) = &hb {
        if let Some(n) = hb.supported_skills.as_ref().map(Vec::len) {
            at_most(
                "Heartbeat",
                n,
                state.engine.settings().max_skills_per_worker,
                &format!("{n} skills declared"),
                " (max_skills_per_worker)",
            )?;
        }
        if let Some(n) = hb.current_tasks.as_ref().map(Vec::len) {
            at_most(
                "Heartbeat",
                n,
                crate::engine::MAX_HEARTBEAT_TASKS,
                &format!("current_tasks lists {n} ids"),
                "",
            )?;
        }
    }
    if let Some(hb) = &hb
        && hb.worker_id != worker_id
    {
        return Err(ApiError::Forbidden(format!(
            "Message signer ID '{}' does not match worker ID '{worker_id}'",
            hb.worker_id
        )));
    }
    state
        .engine
        .heartbeat(worker_id, hb.as_ref())
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Worker not found: {worker_id} is not registered; register again"
            ))
        })
}

#[derive(Debug, Deserialize)]
pub struct PollQuery {
    /// Seconds to wait for a task (capped by the server).
    #[serde(default)]
    timeout: Option<String>,
    /// Skills the worker holds warm, comma-separated (avtomatika's SDK
    /// sends it on every poll, empty when none).
    #[serde(default)]
    hot_skills: Option<String>,
}

/// A poll's `hot_skills`, bounded.
fn hot_skills(given: Option<&str>) -> Result<Option<crate::engine::strategy::Hot>, ApiError> {
    use crate::engine::strategy::{MAX_HOT_SKILL_CHARS, MAX_HOT_SKILLS};
    let Some(given) = given else { return Ok(None) };
    let bound = || {
        ApiError::BadRequest(format!(
            "hot_skills: at most {MAX_HOT_SKILLS} names of at most {MAX_HOT_SKILL_CHARS} bytes each"
        ))
    };
    // Checked on the text before it is split.
    if given.len() > MAX_HOT_SKILLS * (MAX_HOT_SKILL_CHARS + 1) {
        return Err(bound());
    }
    let names: Vec<String> = given
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if names.len() > MAX_HOT_SKILLS || names.iter().any(|n| n.len() > MAX_HOT_SKILL_CHARS) {
        return Err(bound());
    }
    Ok(Some(crate::engine::strategy::Hot::Named(names.into())))
}

pub async fn next_task(
    State(state): State<AppState>,
    Path(worker_id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<PollQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    state.auth.worker(&headers, Some(&worker_id), None)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let max = state.engine.settings().max_poll_wait;
    let wait = crate::secs::wait_query("timeout", query.timeout.as_deref(), max)
        .map_err(ApiError::BadRequest)?
        .unwrap_or(max);
    let hot = hot_skills(query.hot_skills.as_deref())?;
    match state.engine.next_task_hot(&worker_id, wait, hot).await? {
        Some(task) => Ok(axum::Json(task).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

pub async fn result(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body::bytes(raw)?;
    let obj = body::json_object(&raw)?;
    Ok(axum::Json(accept_result(&state, &headers, obj).await?).into_response())
}

/// A task result (`TaskResult`).
pub(super) async fn accept_result(
    state: &AppState,
    headers: &HeaderMap,
    obj: Option<serde_json::Map<String, Value>>,
) -> Result<rxon::ResultResponse, ApiError> {
    let (worker_id, value) = signed_object(state, headers, obj, None, &[], Replay::Rejected)
        .await?
        .ok_or_else(|| ApiError::BadRequest("Invalid TaskResult payload: empty body".into()))?;
    let result: rxon::TaskResult = body::typed(value, "TaskResult")?;
    crate::objects::check_result_files(result.data_metadata.as_ref())
        .map_err(|e| ApiError::BadRequest(format!("Invalid TaskResult payload: {e}")))?;
    if let Some(claimed) = &result.worker_id
        && claimed != &worker_id
    {
        return Err(ApiError::Forbidden(format!(
            "Forbidden: Authenticated worker '{worker_id}' cannot submit results for another worker '{claimed}'."
        )));
    }
    Ok(state.engine.submit_result(&worker_id, result).await?)
}

pub async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let raw = body::bytes(raw)?;
    let obj = body::json_object(&raw)?;
    Ok(axum::Json(accept_event(&state, &headers, obj).await?).into_response())
}

/// A worker event (`WorkerEventPayload`, e.g. progress).
pub(super) async fn accept_event(
    state: &AppState,
    headers: &HeaderMap,
    obj: Option<serde_json::Map<String, Value>>,
) -> Result<Value, ApiError> {
    let (worker_id, value) = signed_object(
        state,
        headers,
        obj,
        None,
        &["bubbling_chain"],
        Replay::Rejected,
    )
    .await?
    .ok_or_else(|| ApiError::BadRequest("Invalid event payload: empty body".into()))?;
    let event: rxon::WorkerEventPayload = body::typed(value, "event")?;
    if event.worker_id != worker_id {
        return Err(ApiError::Forbidden(format!(
            "Forbidden: Authenticated worker '{worker_id}' cannot send events as '{}'",
            event.worker_id
        )));
    }
    state.engine.worker_event(&worker_id, &event).await?;
    Ok(json!({"status": "event_accepted"}))
}

/// A 400 when a worker message lists more than `max` items.
fn at_most(
    payload: &str,
    n: usize,
    max: usize,
    counted: &str,
    setting: &str,
) -> Result<(), ApiError> {
    if n <= max {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "Invalid {payload} payload: {counted}; at most {max} are accepted{setting}"
    )))
}
