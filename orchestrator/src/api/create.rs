//! Creating a job: `POST /api/<version><endpoint>` of a blueprint, its
//! body (flat initial data, or `initial_data` with the options avtomatika
//! clients send, and ours), and `?wait=`.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::client::{MAX_JOB_WAIT, owned_job, view};
use super::error::ApiError;
use super::session::Caller;
use super::{AppState, body};
use crate::blueprint::Blueprint;
use crate::engine::NewJob;
use crate::job::{JobOptions, Object};

/// `POST /api/<version><endpoint>` of one blueprint.
///
/// With `?wait=<seconds>` (at most 60) it answers once the job has ended:
/// `200` with the job as `GET /jobs/{id}` shows it, or, if it has not ended
/// in time, the usual `202` (then follow it as any job).
pub async fn create_job(
    state: AppState,
    blueprint: Arc<Blueprint>,
    Caller(owner): Caller,
    query: Option<&str>,
    raw: axum::body::Body,
) -> Result<Response, ApiError> {
    let wait = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="));
    let wait = crate::secs::wait_query("wait", wait, MAX_JOB_WAIT).map_err(ApiError::BadRequest)?;
    let raw = body::read(raw, state.max_body).await?;
    let body = body::json_object(&raw)?.unwrap_or_default();
    let max_transitions = state.engine.settings().max_transitions;
    let new = parse_create(
        body,
        &blueprint.name,
        owner.clone(),
        state.engine.egress(),
        max_transitions,
    )?;
    let id = state.engine.create_job(new).await?;
    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
        state.engine.wait_for_job(id, wait).await;
        let job = owned_job(&state, id, &owner).await?;
        if job.status.is_terminal() {
            return Ok(axum::Json(view(&job, None)).into_response());
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "accepted", "job_id": id})),
    )
        .into_response())
}

/// `{"initial_data": {...}, options…}`, or a flat body that is the initial data.
fn parse_create(
    mut body: Object,
    blueprint: &str,
    owner: String,
    egress: &crate::egress::EgressPolicy,
    max_transitions: u32,
) -> Result<NewJob, ApiError> {
    let structured = body.contains_key("initial_data");
    let mut new = NewJob {
        blueprint: blueprint.to_string(),
        owner,
        ..NewJob::default()
    };
    if !structured {
        new.initial_data = body;
        return Ok(new);
    }
    new.initial_data = match body.remove("initial_data") {
        Some(Value::Object(o)) => o,
        Some(Value::Null) | None => Object::new(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "'initial_data' must be a JSON object".into(),
            ));
        }
    };
    let seconds = |name: &str, v: Option<Value>| -> Result<Option<f64>, ApiError> {
        crate::secs::timeout_json(name, v.as_ref()).map_err(|e| ApiError::BadRequest(e.to_string()))
    };
    new.options = parse_options(&mut body, max_transitions)?;
    new.dispatch_timeout = seconds("dispatch_timeout", body.remove("dispatch_timeout"))?;
    new.result_timeout = seconds("result_timeout", body.remove("result_timeout"))?;
    new.webhook_url = match body.remove("webhook_url") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            crate::egress::check_webhook_url(&s, egress).map_err(ApiError::BadRequest)?;
            Some(s)
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "'webhook_url' must be an http(s) URL".into(),
            ));
        }
    };
    Ok(new)
}

/// Most bytes of a job's `policy` as JSON (avtomatika's
/// `MAX_POLICY_SIZE_BYTES`).
pub const MAX_POLICY_BYTES: usize = 4096;

/// Most entries of a create's `webhook_events`.
pub const MAX_WEBHOOK_EVENTS: usize = 32;

/// The job options of a structured create body (`metadata`, `security`,
/// `policy`, `max_transitions`), checked as avtomatika checks them.
fn parse_options(given: &mut Object, max_transitions: u32) -> Result<JobOptions, ApiError> {
    let object = |name: &str, v: Option<Value>| -> Result<Option<Object>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(_) => Err(ApiError::BadRequest(format!(
                "'{name}' must be a JSON object"
            ))),
        }
    };
    let metadata = object("metadata", given.remove("metadata"))?;
    let security = object("security", given.remove("security"))?;
    let policy = match given.remove("policy") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => {
            let size = serde_json::to_string(&p)
                .map(|s| s.len())
                .unwrap_or(usize::MAX);
            if size > MAX_POLICY_BYTES {
                return Err(ApiError::BadRequest(format!(
                    "'policy' is {size} bytes as JSON; at most {MAX_POLICY_BYTES} are accepted"
                )));
            }
            if let Some(skills) = p.get("allowed_skills") {
                let ok = skills.as_array().is_some_and(|list| {
                    !list.is_empty()
                        && list
                            .iter()
                            .all(|s| s.as_str().is_some_and(|s| !s.is_empty()))
                });
                if !ok {
                    return Err(ApiError::BadRequest(
                        "'policy.allowed_skills' must be a non-empty list of strings".into(),
                    ));
                }
            }
            Some(p)
        }
        Some(_) => return Err(ApiError::BadRequest("'policy' must be a dictionary".into())),
    };
    let max_transitions = match given.remove("max_transitions") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_u64()
            .filter(|n| (1..=u64::from(max_transitions)).contains(n))
        {
            Some(n) => Some(n as u32),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "'max_transitions' must be an integer between 1 and {max_transitions}"
                )));
            }
        },
    };
    let webhook_events = match given.remove("webhook_events") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) if list.len() <= MAX_WEBHOOK_EVENTS => {
            let names: Option<Vec<String>> = list
                .iter()
                .map(|v| {
                    v.as_str()
                        .filter(|s| *s == "*" || crate::blueprint::signal_name_ok(s))
                        .map(str::to_string)
                })
                .collect();
            names.ok_or_else(|| {
                ApiError::BadRequest(
                    "'webhook_events' must list event types (1 to 64 letters, digits, `_`, `.` or `-`) or \"*\"".into(),
                )
            })?
        }
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "'webhook_events' must be a list of at most {MAX_WEBHOOK_EVENTS} event types"
            )));
        }
    };
    Ok(JobOptions {
        metadata,
        security,
        policy,
        max_transitions,
        webhook_events,
    })
}
