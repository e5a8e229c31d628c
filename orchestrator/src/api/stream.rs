//! `GET /api/<v>/jobs/stream[?ids=a,b,…]`: Server-Sent Events, one `job`
//! event per change of the caller's jobs (all of them, or the ids listed),
//! for clients following many jobs without polling each. A client that falls
//! more than [`UPDATES_BUFFER`] changes behind gets a `lagged` event with the
//! number it missed (then it should re-read the jobs it follows). Streams
//! end when the server stops. With several instances on one database, a
//! stream carries the changes made through its instance.
//!
//! [`UPDATES_BUFFER`]: crate::engine::UPDATES_BUFFER

use std::collections::HashSet;
use std::convert::Infallible;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::session::Caller;
use crate::engine::MAX_UPDATE_STREAMS;

/// Most job ids one stream may follow by name.
pub const MAX_STREAM_IDS: usize = 1000;

#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    ids: Option<String>,
}

/// Most update streams (this one's and [`super::stats`]') one client may
/// have open at once.
pub const MAX_STREAMS_PER_CLIENT: usize = 16;

/// Streams open per client.
#[derive(Default)]
pub struct ClientStreams(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// A place among the open update streams: one of the
/// [`MAX_UPDATE_STREAMS`] of the server and of the
/// [`MAX_STREAMS_PER_CLIENT`] of its client; given back when dropped.
pub(super) struct StreamSlot {
    _global: tokio::sync::OwnedSemaphorePermit,
    state: AppState,
    owner: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self
            .state
            .client_streams
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.owner);
            }
        }
    }
}

/// A stream slot for `owner`, or a 429 (with `Retry-After`) naming the
/// bound that is full.
pub(super) fn stream_permit(state: &AppState, owner: &str) -> Result<StreamSlot, ApiError> {
    let global = state.engine.stream_permit().ok_or_else(|| {
        ApiError::Saturated(
            format!(
                "Too many update streams are open (at most {MAX_UPDATE_STREAMS}); poll the jobs instead or try later"
            ),
            5,
        )
    })?;
    let mut open = state
        .client_streams
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let n = open.entry(owner.to_string()).or_default();
    if *n >= MAX_STREAMS_PER_CLIENT {
        return Err(ApiError::Saturated(
            format!(
                "client {owner} has {n} update streams open, the most one client may ({MAX_STREAMS_PER_CLIENT}); close one or poll the jobs instead"
            ),
            5,
        ));
    }
    *n += 1;
    Ok(StreamSlot {
        _global: global,
        state: state.clone(),
        owner: owner.to_string(),
    })
}

#[utoipa::path(get, path = "/api/v1/jobs/stream", tag = "jobs",
    summary = "Server-Sent Events: every change of your jobs (`event: job`)",
    params(("ids" = Option<String>, Query, description = "Only these job ids (comma-separated, at most 1000)")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
              (status = 503, description = "Too many streams open", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn job_updates(
    State(state): State<AppState>,
    Caller(owner): Caller,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let ids = match query.ids.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(list) => {
            let ids: Vec<&str> = list.split(',').collect();
            if ids.len() > MAX_STREAM_IDS {
                return Err(ApiError::BadRequest(format!(
                    "`ids` lists {} jobs; a stream follows at most {MAX_STREAM_IDS}",
                    ids.len()
                )));
            }
            let parsed: Result<HashSet<Uuid>, _> =
                ids.iter().map(|s| Uuid::parse_str(s.trim())).collect();
            Some(parsed.map_err(|_| {
                ApiError::BadRequest("`ids` must be job ids separated by commas".into())
            })?)
        }
    };
    let permit = stream_permit(&state, &owner)?;
    let updates = state.engine.subscribe_updates();
    let stopping = state.engine.stopping();
    let stream = futures_util::stream::unfold((updates, permit), move |(mut updates, permit)| {
        let (owner, ids, stopping) = (owner.clone(), ids.clone(), stopping.clone());
        async move {
            loop {
                let next = tokio::select! {
                    n = updates.recv() => n,
                    _ = stopping.cancelled() => return None,
                };
                let event = match next {
                    Ok(u)
                        if u.owner == owner
                            && ids.as_ref().is_none_or(|s| s.contains(&u.job_id)) =>
                    {
                        Event::default().event("job").json_data(&u).ok()?
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        Event::default().event("lagged").data(n.to_string())
                    }
                    Err(RecvError::Closed) => return None,
                };
                return Some((Ok::<_, Infallible>(event), (updates, permit)));
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
