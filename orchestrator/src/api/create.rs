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
    request: CreateRequest<'_>,
    raw: axum::body::Body,
) -> Result<Response, ApiError> {
    let wait = request
        .query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("wait="));
    let wait = crate::secs::wait_query("wait", wait, MAX_JOB_WAIT).map_err(ApiError::BadRequest)?;
    let raw = body::read(raw, state.max_body).await?;
    let body = body::json_object(&raw)?.unwrap_or_default();
    let max_transitions = state.engine.settings().max_transitions;
    let (new, key_field) = parse_create(
        body,
        &blueprint.name,
        owner.clone(),
        state.engine.egress(),
        max_transitions,
    )?;
    let key = idempotency_key(request.headers, key_field)?;
    let mut new = new;
    new.max_active = state.limits.of(&owner).and_then(|l| l.max_active_jobs);
    state.limits.may_create(Some(&state.engine), &owner).await?;
    let (id, replayed) = match &key {
        Some(key) => state.engine.create_job_once(new, key).await?,
        None => (state.engine.create_job(new).await?, false),
    };
    if !replayed {
        state.limits.created(&owner);
    }
    if let Some(wait) = wait.filter(|w| !w.is_zero()) {
        state.engine.wait_for_job(id, wait).await;
        let job = owned_job(&state, id, &owner).await?;
        if job.status.is_terminal() {
            return Ok(axum::Json(view(&job, None)).into_response());
        }
    }
    let mut response = (
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "accepted", "job_id": id})),
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            HEADER_REPLAYED,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// What a create request carries besides its caller and body.
pub struct CreateRequest<'a> {
    pub query: Option<&'a str>,
    pub headers: &'a axum::http::HeaderMap,
}

/// The header (and body field `idempotency_key`) naming a create.
pub const HEADER_IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on the answer to a create whose key named an earlier job.
pub const HEADER_REPLAYED: &str = "idempotent-replayed";
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The create's idempotency key: the header, or the body's field (both:
/// they must agree).
fn idempotency_key(
    headers: &axum::http::HeaderMap,
    field: Option<String>,
) -> Result<Option<String>, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "'Idempotency-Key' must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))
    };
    let header = match headers.get(HEADER_IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| bad())?.to_string()),
    };
    let key = match (header, field) {
        (Some(h), Some(f)) if h != f => {
            return Err(ApiError::BadRequest(
                "the Idempotency-Key header and 'idempotency_key' differ".into(),
            ));
        }
        (h, f) => h.or(f),
    };
    match key {
        Some(k)
            if k.is_empty()
                || k.len() > MAX_IDEMPOTENCY_KEY
                || !k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Err(bad())
        }
        k => Ok(k),
    }
}

/// `{"initial_data": {...}, options…}`, or a flat body that is the initial data.
fn parse_create(
    mut body: Object,
    blueprint: &str,
    owner: String,
    egress: &crate::egress::EgressPolicy,
    max_transitions: u32,
) -> Result<(NewJob, Option<String>), ApiError> {
    let structured = body.contains_key("initial_data");
    let mut new = NewJob {
        blueprint: blueprint.to_string(),
        owner,
        ..NewJob::default()
    };
    if !structured {
        new.initial_data = body;
        return Ok((new, None));
    }
    let key = match body.remove("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "'idempotency_key' must be a string".into(),
            ));
        }
    };
    new.start_at = start_at(body.remove("run_at"), body.remove("delay_seconds"))?;
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
    Ok((new, key))
}

/// When a job asked to start later starts: `run_at` (RFC 3339) or
/// `delay_seconds`, at most 30 days ahead; a time past starts it at once.
fn start_at(
    run_at: Option<Value>,
    delay: Option<Value>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    let now = chrono::Utc::now();
    let longest = chrono::Duration::seconds(crate::secs::MAX_TIMEOUT_SECS as i64);
    match (
        run_at.filter(|v| !v.is_null()),
        delay.filter(|v| !v.is_null()),
    ) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "give one of 'run_at' and 'delay_seconds', not both".into(),
        )),
        (Some(at), None) => {
            let at = at
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "'run_at' must be an RFC 3339 time, e.g. 2026-12-24T09:00:00Z".into(),
                    )
                })?
                .with_timezone(&chrono::Utc);
            if at - now > longest {
                return Err(ApiError::BadRequest(
                    "'run_at' is more than 30 days away".into(),
                ));
            }
            Ok(Some(at))
        }
        (None, Some(delay)) => {
            let secs = crate::secs::timeout_json("delay_seconds", Some(&delay))
                .map_err(|e| ApiError::BadRequest(e.to_string()))?
                .unwrap_or_default();
            let delay = chrono::Duration::milliseconds((secs * 1000.0) as i64);
            Ok(Some(now + delay))
        }
    }
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
    let priority = match given.remove("priority") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_f64()
            .filter(|p| p.abs() <= crate::blueprint::MAX_PRIORITY)
        {
            Some(p) => Some(p),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "'priority' must be a number from -{0} to {0}",
                    crate::blueprint::MAX_PRIORITY
                )));
            }
        },
    };
    Ok(JobOptions {
        priority,
        metadata,
        security,
        policy,
        max_transitions,
        webhook_events,
    })
}
