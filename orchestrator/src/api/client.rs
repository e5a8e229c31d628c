//! The client API (`/api[/<version>]/...`): create, read, list and cancel
//! jobs; list workers.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::session::Caller;
use crate::engine::EngineError;
use crate::job::{Job, JobError, JobOptions, JobStatus, Object, StateVisit};
use crate::storage::{JobCursor, JobFilter};

/// Largest poll answer serialized under the engine's lock (see [`get_job`]).
const INLINE_VIEW_BYTES: usize = 64 << 10;

/// Longest `?wait=` a client may ask for on `GET /jobs/{id}`.
pub(super) const MAX_JOB_WAIT: Duration = Duration::from_secs(60);

/// A job as clients see it, borrowed from the job (a poll answered from
/// memory is serialized under the engine's lock, without copying the job).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView<'a> {
    pub id: Uuid,
    pub job_id: Uuid,
    pub blueprint: &'a str,
    pub blueprint_name: &'a str,
    /// The blueprint version the job runs on (it keeps it to its end).
    pub blueprint_version: u32,
    pub status: JobStatus,
    pub current_state: &'a str,
    #[schema(value_type = Object)]
    pub initial_data: &'a Object,
    /// Data of the most recent task.
    #[schema(value_type = Option<Object>)]
    pub result: Option<&'a Object>,
    /// Data of each state's task.
    #[schema(value_type = Object)]
    pub results: &'a Object,
    pub error: Option<&'a JobError>,
    /// Error message alone, as avtomatika names it.
    pub error_message: Option<&'a str>,
    #[schema(value_type = Vec<StateVisit>)]
    pub state_history: &'a [StateVisit],
    pub task_worker_id: Option<&'a str>,
    /// Attempts of the current task so far (0 before the first dispatch).
    pub attempts: u32,
    pub current_task_id: Option<&'a str>,
    pub current_task_type: Option<&'a str>,
    /// The task's last progress report: `{"progress": 0..1, "message": …}`.
    #[schema(value_type = Option<Object>)]
    pub progress: Option<&'a Value>,
    /// Why the job is waiting, while it waits.
    pub waiting_reason: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// While the job is `sleeping`: when it goes on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<chrono::DateTime<chrono::Utc>>,
    /// While the job waits for a human's decision: the single-use token an
    /// approver may send to `/_public/webhooks/approval/{job_id}` instead
    /// of a client token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<&'a str>,
    /// The job whose `run` state started this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_job_id: Option<Uuid>,
    /// The child job this one waits for (in a `run` state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_job_id: Option<Uuid>,
    /// While the job is in a `map` state: how far it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<MapProgress>,
    /// The files results named, by data key: `{uri, size, etag?}` (the
    /// workers' `data_metadata`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data_metadata: Option<&'a rxon::FilesByKey>,
    /// `metadata`, `security`, `policy`, `max_transitions`, as created.
    #[serde(flatten)]
    pub options: &'a JobOptions,
}

/// A `map` state under way, as a job shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MapProgress {
    /// Elements in the list.
    pub total: usize,
    /// Elements done (succeeded or failed for good).
    pub done: u32,
    /// Element tasks queued or running now.
    pub in_flight: usize,
    /// Elements that failed for good.
    pub failed: usize,
}

pub fn view(job: &Job, waiting_reason: Option<String>) -> JobView<'_> {
    let current = job.tasks.first();
    JobView {
        id: job.id,
        job_id: job.id,
        blueprint_name: &job.blueprint,
        blueprint_version: job.blueprint_version,
        attempts: current.map(|t| t.attempt).unwrap_or(job.attempts),
        current_task_id: current.map(|t| t.task_id.as_str()),
        current_task_type: current.map(|t| t.task_type.as_str()),
        blueprint: &job.blueprint,
        status: job.status,
        current_state: &job.current_state,
        initial_data: &job.initial_data,
        result: job.result.as_deref(),
        results: &job.results,
        error_message: job.error.as_ref().map(|e| e.message.as_str()),
        error: job.error.as_ref(),
        state_history: &job.state_history,
        task_worker_id: job.task_worker_id.as_deref(),
        progress: job.progress.as_ref(),
        waiting_reason,
        created_at: job.created_at,
        updated_at: job.updated_at,
        finished_at: job.finished_at,
        wake_at: job.wake_at,
        approval_token: job.approval_token.as_deref(),
        parent_job_id: job.parent.as_ref().map(|p| p.job),
        child_job_id: job.child,
        map: job.map.as_deref().map(|m| MapProgress {
            total: m.items.len(),
            done: m.done,
            in_flight: job.tasks.len(),
            failed: m.failures.len(),
        }),
        data_metadata: job.data_metadata.as_deref(),
        options: &job.options,
    }
}

/// A job id from a path (one that does not parse names no job: 404).
pub(super) fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::NotFound("Job not found".into()))
}

/// The job if it exists and belongs to `owner` (someone else's job is
/// reported as not found, so ids cannot be probed).
pub(super) async fn owned_job(state: &AppState, id: Uuid, owner: &str) -> Result<Job, ApiError> {
    match state.engine.get_job(id).await? {
        Some(job) if job.owner == owner => Ok(job),
        _ => Err(ApiError::NotFound("Job not found".into())),
    }
}

#[derive(Debug, Deserialize)]
pub struct GetQuery {
    /// Seconds to wait for the job to end before answering (parsed by
    /// [`crate::secs::wait_query`], so a bad value names the field).
    #[serde(default)]
    wait: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    summary = "One of your jobs",
    params(("id" = String, Path, description = "The job id"),
           ("wait" = Option<f64>, Query, description = "Seconds (at most 60) to wait for the job to end before answering")),
    responses((status = 200, description = "The job", body = JobView),
              (status = 404, description = "No such job of yours", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    JobId(id): JobId,
    Caller(owner): Caller,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let id = parse_id(&id)?;
    let wait = match crate::secs::wait_query("wait", query.wait.as_deref(), MAX_JOB_WAIT) {
        Ok(wait) => wait.filter(|w| !w.is_zero()),
        Err(e) => {
            // Someone else's or no job: 404 before the bad parameter.
            owned_job(&state, id, &owner).await?;
            return Err(ApiError::BadRequest(e));
        }
    };
    if let Some(wait) = wait {
        let job = owned_job(&state, id, &owner).await?;
        if !job.status.is_terminal() {
            state.engine.wait_for_job(id, wait).await;
        }
    }
    // A job in memory is answered from there, serialized under the engine's
    // lock without a copy, unless its answer is large (then it is copied
    // out, as from storage, so the lock is held briefly).
    let answer = state.engine.with_job_in_memory(id, |job, reason| {
        if job.owner != owner {
            return Err(ApiError::NotFound("Job not found".into()));
        }
        Ok(rxon::text::json_capped(
            &view(job, reason),
            INLINE_VIEW_BYTES,
        ))
    });
    if let Some(answer) = answer
        && let Some(body) = answer?
    {
        let json = [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )];
        return Ok((json, body).into_response());
    }
    let job = owned_job(&state, id, &owner).await?;
    let reason = state.engine.waiting_reason(&job).await;
    Ok(axum::Json(view(&job, reason)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    /// Only jobs of this blueprint.
    #[serde(default)]
    blueprint: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    offset: Option<usize>,
    /// The `next` cursor of the previous page.
    #[serde(default)]
    after: Option<String>,
}

/// The deepest `?offset=` served: deeper pages cost the database a walk
/// over every job skipped, so they are paged by cursor (`?after=`).
pub const MAX_LIST_OFFSET: usize = 10_000;

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs",
    summary = "Your jobs, newest first",
    params(("status" = Option<String>, Query, description = "Only jobs with this status"),
           ("blueprint" = Option<String>, Query, description = "Only jobs of this blueprint"),
           ("limit" = Option<usize>, Query, description = "At most this many (1-1000, default 50)"),
           ("offset" = Option<usize>, Query, description = "Skip this many (at most 10,000; page deeper with `after`)"),
           ("after" = Option<String>, Query, description = "The `next` cursor of the previous page: the jobs created before its last one (stable while new jobs arrive)")),
    responses((status = 200, description = "`{\"jobs\": [...], \"limit\": n, \"offset\": n, \"next\": cursor or null}`", body = super::openapi::JobList), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    Caller(owner): Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::BadRequest("Invalid limit/offset parameter".into()))?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let limit = query.limit.unwrap_or(50).clamp(1, 1000);
    let offset = query.offset.unwrap_or(0);
    if offset > MAX_LIST_OFFSET {
        return Err(ApiError::BadRequest(format!(
            "'offset' may be at most {MAX_LIST_OFFSET}: page deeper with ?after=<the `next` of the previous page>"
        )));
    }
    let after = query
        .after
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(str::parse::<JobCursor>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    let jobs = state
        .engine
        .list_jobs(JobFilter {
            owner: Some(owner),
            status,
            blueprint: query.blueprint.filter(|b| !b.is_empty()),
            limit,
            offset,
            after,
        })
        .await?;
    // A full page may have more below it; a short one is the last.
    let next = (jobs.len() == limit)
        .then(|| jobs.last().map(|j| JobCursor::of(j).to_string()))
        .flatten();
    // Written straight from the views (no JSON tree built in between).
    let page = JobPage {
        jobs: jobs.iter().map(|j| view(j, None)).collect(),
        limit,
        offset,
        next,
    };
    Ok(axum::Json(page).into_response())
}

/// `GET /jobs`: a page of jobs, newest first.
#[derive(Serialize)]
struct JobPage<'a> {
    jobs: Vec<JobView<'a>>,
    limit: usize,
    offset: usize,
    next: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    summary = "Cancel a job that has not ended (its running task is stopped)",
    params(("id" = String, Path, description = "The job id")),
    responses((status = 200, description = "Cancelled", body = Object),
              (status = 404, description = "No such job of yours", body = super::openapi::ErrorBody),
              (status = 409, description = "The job already ended", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn cancel_job(
    State(state): State<AppState>,
    JobId(id): JobId,
    Caller(owner): Caller,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    match state.engine.cancel_job(id, &owner).await {
        Ok(()) => Ok(axum::Json(json!({"status": "cancelled", "job_id": id})).into_response()),
        Err(EngineError::JobNotFound) => {
            // Ended jobs leave memory eventually; look in storage too.
            let job = owned_job(&state, id, &owner).await?;
            Err(ApiError::Conflict(format!(
                "Job already ended with status {}",
                job.status
            )))
        }
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/history", tag = "jobs",
    summary = "A job's history: every event, with the task attempt it is about",
    params(("id" = String, Path, description = "The job id")),
    responses((status = 200, description = "`{\"job_id\": …, \"events\": [...]}`", body = super::openapi::JobHistory),
              (status = 404, description = "No such job of yours", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn job_history(
    State(state): State<AppState>,
    JobId(id): JobId,
    Caller(owner): Caller,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    owned_job(&state, id, &owner).await?;
    // Make sure the newest events are stored before reading them.
    state.engine.sync_storage().await;
    let events = state.engine.job_events(id).await?;
    Ok(axum::Json(json!({"job_id": id, "events": events})).into_response())
}

#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    summary = "Registered workers: skills, status, heartbeat, tasks in flight, plugin versions",
    responses((status = 200, description = "The workers", body = Vec<Object>), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn list_workers(State(state): State<AppState>, _: Caller) -> Result<Response, ApiError> {
    Ok(axum::Json(state.engine.workers().await).into_response())
}

#[utoipa::path(get, path = "/api/v1/blueprints", tag = "blueprints",
    summary = "The blueprints served: name, create endpoint, states, task types, version, graph (states and transitions)",
    responses((status = 200, description = "The blueprints", body = Vec<Object>), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn list_blueprints(
    State(state): State<AppState>,
    _: Caller,
) -> Result<Response, ApiError> {
    let list: Vec<Value> = state
        .engine
        .blueprints()
        .iter()
        .map(|b| {
            json!({
                "name": b.name,
                "endpoint": b.create_path,
                "start": b.start,
                "states": b.states.keys().collect::<Vec<_>>(),
                "task_types": b.task_types(),
                "version": b.version,
                "graph": b.graph(),
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

/// The `{id}` of a job route, whether or not the route also has `{version}`.
pub struct JobId(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let Path(mut params) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        params
            .remove("id")
            .map(JobId)
            .ok_or_else(|| ApiError::NotFound("Job not found".into()))
    }
}
