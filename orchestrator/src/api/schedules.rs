//! Schedules over HTTP: list them with their next runs (any client);
//! deploy, replace or remove one, and pause, resume or trigger one
//! (clients that may deploy).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::session::Caller;
use super::{AppState, body};
use crate::schedule::ScheduleApiError;

impl From<ScheduleApiError> for ApiError {
    fn from(e: ScheduleApiError) -> Self {
        match e {
            ScheduleApiError::Unknown(_) => Self::NotFound(e.to_string()),
            ScheduleApiError::NotReady(_) => Self::Conflict(e.to_string()),
            ScheduleApiError::Storage(s) => Self::Internal(s.to_string()),
            ScheduleApiError::Job(j) => j.into(),
            ScheduleApiError::Invalid(_) => Self::BadRequest(e.to_string()),
            ScheduleApiError::FromFile(_) => Self::Conflict(e.to_string()),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules",
    summary = "The schedules: when each runs, its policies, whether it is paused, its last run and next runs",
    responses((status = 200, description = "`{\"schedules\": [...]}`", body = Object),
              (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn list(State(state): State<AppState>, _: Caller) -> Result<Response, ApiError> {
    let views = match &state.scheduler {
        Some(s) => s
            .views()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?,
        None => Vec::new(),
    };
    Ok(axum::Json(json!({"schedules": views})).into_response())
}

fn scheduler(
    state: &AppState,
    name: &str,
) -> Result<std::sync::Arc<crate::schedule::Scheduler>, ApiError> {
    state
        .scheduler
        .clone()
        .ok_or_else(|| ScheduleApiError::Unknown(name.to_string()).into())
}

#[utoipa::path(post, path = "/api/v1/schedules/{name}/{action}", tag = "schedules",
    summary = "Pause, resume or trigger a schedule (clients that may deploy)",
    params(("name" = String, Path, description = "The schedule"),
           ("action" = String, Path, description = "`pause`, `resume` or `trigger` (start its job now)")),
    responses((status = 200, description = "`{\"name\", \"paused\"}`, or `{\"name\", \"job_id\"}` for trigger", body = Object),
              (status = 404, description = "No such schedule or action", body = super::openapi::ErrorBody),
              (status = 409, description = "The schedule has not started yet", body = super::openapi::ErrorBody),
              (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "A client that may not deploy", body = super::openapi::ErrorBody)))]
pub async fn act(
    State(state): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    state.auth.may_deploy(caller)?;
    // Under `/api/{version}` too: the params by name.
    let name = params.get("name").cloned().unwrap_or_default();
    let action = params.get("action").cloned().unwrap_or_default();
    let s = scheduler(&state, &name)?;
    let body = match action.as_str() {
        "pause" | "resume" => {
            let paused = action == "pause";
            s.set_paused(&name, paused).await?;
            json!({"name": name, "paused": paused})
        }
        "trigger" => json!({"name": name, "job_id": s.trigger(&name).await?}),
        other => {
            return Err(ApiError::NotFound(format!(
                "Not found: schedules have no action {other:?} (pause, resume, trigger)"
            )));
        }
    };
    Ok(axum::Json(body).into_response())
}

#[utoipa::path(put, path = "/api/v1/schedules/{name}", tag = "schedules",
    summary = "Deploy or replace a schedule (a table of avtomatika's schedules.toml, without its header); clients that may deploy",
    params(("name" = String, Path, description = "The schedule: 1 to 64 letters, digits, `_` or `-`")),
    request_body(content = String, content_type = "application/toml"),
    responses((status = 201, description = "Deployed: `{\"name\", \"deployed\": true}`; every instance runs it from its next tick", body = Object),
              (status = 200, description = "Replaced (its progress kept)", body = Object),
              (status = 400, description = "Not a valid schedule (the error names the field), or its blueprint is not deployed", body = super::openapi::ErrorBody),
              (status = 409, description = "The schedules file defines that name", body = super::openapi::ErrorBody),
              (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "A client that may not deploy", body = super::openapi::ErrorBody)))]
pub async fn deploy(
    State(state): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    Caller(caller): Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let by = state.auth.may_deploy(caller)?;
    let name = params.get("name").cloned().unwrap_or_default();
    let raw = body::bytes(raw)?;
    let text = std::str::from_utf8(&raw)
        .map_err(|_| ApiError::BadRequest("The schedule is not UTF-8 text".into()))?;
    let s = scheduler(&state, &name)?;
    let new = s.deploy(&name, text, &by).await?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({"name": name, "deployed": true}))).into_response())
}

#[utoipa::path(delete, path = "/api/v1/schedules/{name}", tag = "schedules",
    summary = "Remove a deployed schedule (clients that may deploy)",
    params(("name" = String, Path, description = "The schedule")),
    responses((status = 200, description = "`{\"name\", \"removed\": true}`", body = Object),
              (status = 404, description = "No deployed schedule of that name", body = super::openapi::ErrorBody),
              (status = 409, description = "The schedules file defines that name", body = super::openapi::ErrorBody),
              (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "A client that may not deploy", body = super::openapi::ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    state.auth.may_deploy(caller)?;
    let name = params.get("name").cloned().unwrap_or_default();
    scheduler(&state, &name)?.remove(&name).await?;
    Ok(axum::Json(json!({"name": name, "removed": true})).into_response())
}
