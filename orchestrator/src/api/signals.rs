//! Decisions and signals for jobs in a `wait` state: a client's signal
//! (`POST /api/v1/jobs/{id}/signal/{name}`) and avtomatika's approval
//! endpoint (`POST /_public/webhooks/approval/{job_id}`), which an approver
//! without a client token reaches with the job's single-use approval token.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::client::{JobId, parse_id};
use super::error::ApiError;
use super::session::Caller;
use super::{AppState, body};
use crate::engine::{Signal, SignalAuth};

#[utoipa::path(post, path = "/api/v1/jobs/{id}/signal/{name}", tag = "jobs",
    summary = "Send a signal (or decision) to a job in a `wait` state: it goes on to the state the name leads to, with the JSON body as that state's result",
    params(("id" = String, Path, description = "The job id"),
           ("name" = String, Path, description = "A decision or signal name the job's wait state lists")),
    request_body(content = Object, description = "Any JSON object (may be empty); lands in results.<state>"),
    responses((status = 200, description = "`{\"status\": \"signal_received\", \"job_id\": …}`", body = Object),
              (status = 400, description = "A name the state does not wait for, or a body that is not a JSON object", body = super::openapi::ErrorBody),
              (status = 404, description = "No such job of yours", body = super::openapi::ErrorBody),
              (status = 409, description = "The job is not waiting", body = super::openapi::ErrorBody),
              (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn signal_job(
    State(state): State<AppState>,
    JobId(id): JobId,
    Path(params): Path<std::collections::HashMap<String, String>>,
    Caller(owner): Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let name = params.get("name").cloned().unwrap_or_default();
    let raw = body::bytes(raw)?;
    let payload = body::json_object(&raw)?.unwrap_or_default();
    let signal = Signal {
        job: id,
        name,
        payload,
        by: SignalAuth::Owner(owner),
        approval: false,
    };
    state.engine.signal_job(signal).await?;
    Ok(axum::Json(json!({"status": "signal_received", "job_id": id})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ApprovalQuery {
    #[serde(default)]
    token: Option<String>,
}

/// `POST /_public/webhooks/approval/{job_id}` with `{"decision": "...",
/// "token"?: "..."}` (or `?token=`): the decision of a job waiting for a
/// human. The caller is the job's client (`X-Client-Token`) or holds the
/// job's approval token, which the decision uses up. Everything in the body
/// but the token lands in `results.<state>`.
#[utoipa::path(post, path = "/_public/webhooks/approval/{job_id}", tag = "jobs",
    summary = "avtomatika's approval endpoint: a human's decision for a job in a `wait` state with `approval = true`",
    params(("job_id" = String, Path, description = "The job id"),
           ("token" = Option<String>, Query, description = "The job's approval token (or in the body, or send X-Client-Token)")),
    request_body(content = Object, description = "`{\"decision\": \"approved\", \"token\"?: …, …}`"),
    responses((status = 200, description = "`{\"status\": \"approval_received\", \"job_id\": …}`", body = Object),
              (status = 400, description = "No decision, or one the state does not list", body = super::openapi::ErrorBody),
              (status = 401, description = "Neither an approval token nor a client token", body = super::openapi::ErrorBody),
              (status = 403, description = "A wrong or used approval token", body = super::openapi::ErrorBody),
              (status = 404, description = "No such job", body = super::openapi::ErrorBody),
              (status = 409, description = "The job is not waiting for a decision", body = super::openapi::ErrorBody)))]
pub async fn approval(
    State(state): State<AppState>,
    Path(job): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ApprovalQuery>, axum::extract::rejection::QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let id = parse_id(&job)?;
    let raw = body::bytes(raw)?;
    let mut payload = body::json_object(&raw)?.unwrap_or_default();
    let body_token = match payload.remove("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t),
        Some(_) => return Err(ApiError::BadRequest("'token' must be a string".into())),
    };
    let decision = match payload.get("decision") {
        Some(Value::String(d)) if !d.is_empty() => d.clone(),
        _ => {
            return Err(ApiError::BadRequest(
                "'decision' is required: a string the job's wait state lists".into(),
            ));
        }
    };
    let by = if super::auth::has_token_header(&headers) {
        let caller = state
            .caller(&axum::http::Extensions::new(), &headers)
            .await?;
        SignalAuth::Owner(caller.0)
    } else {
        match body_token.or(query.token) {
            Some(token) => SignalAuth::ApprovalToken(token),
            None => {
                return Err(ApiError::Unauthorized(
                    "Unauthorized: send the job's approval token (`token`) or X-Client-Token"
                        .into(),
                ));
            }
        }
    };
    let signal = Signal {
        job: id,
        name: decision,
        payload,
        by,
        approval: true,
    };
    state.engine.signal_job(signal).await?;
    Ok(axum::Json(json!({"status": "approval_received", "job_id": id})).into_response())
}
