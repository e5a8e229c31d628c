//! Authenticate before reading: a request to `/api` or `/_worker` whose
//! headers carry no credential we know is answered 401/403 at once, before
//! its body is read (an unauthenticated client cannot make the server buffer
//! bodies). The handlers then check fully (worker id, signature).
//!
//! A client request signed in only by the dashboard's session cookie that
//! changes something (any method but `GET`/`HEAD`) must also carry
//! `X-Requested-With: taskworker-dashboard`, which a page of another origin
//! cannot send without a CORS preflight we never grant (on top of the
//! cookie's `SameSite=Strict`).

use axum::extract::Request;
use axum::http::{HeaderMap, Method};

use super::AppState;
use super::error::ApiError;

/// The refusal of a request whose headers carry no credential we know for
/// its path, or `None` to go on (the handler then checks fully). A client
/// request's [`super::session::Caller`] is resolved here once and kept in its extensions.
pub async fn refused_before_the_body(state: &AppState, request: &mut Request) -> Option<ApiError> {
    let path = request.uri().path();
    let public = matches!(path, "/api/openapi.json" | "/api/docs");
    let checked = if public {
        Ok(())
    } else if path.starts_with("/api/") || path == "/api" {
        match state.caller(request.extensions(), request.headers()).await {
            Ok(caller) => {
                let admitted = state.limits.admit(Some(&state.engine), &caller.0).await;
                request.extensions_mut().insert(caller);
                admitted.and_then(|()| from_the_dashboard(request.method(), request.headers()))
            }
            Err(e) => Err(e),
        }
    } else if path.starts_with("/_worker/") {
        state.auth.known_worker_token(request.headers())
    } else {
        Ok(())
    };
    checked.err()
}

/// The header the dashboard sends with every request that changes something.
pub const HEADER_REQUESTED_WITH: &str = "x-requested-with";
pub const DASHBOARD: &str = "taskworker-dashboard";

/// A change asked for with only the session cookie must come from the
/// dashboard's own page (see the module's documentation).
fn from_the_dashboard(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    let safe = matches!(*method, Method::GET | Method::HEAD);
    if safe || super::auth::has_token_header(headers) {
        return Ok(());
    }
    sent_by_the_dashboard(
        headers,
        "a change signed in by the dashboard cookie (scripts send X-Client-Token instead)",
    )
}

/// `what` must carry the dashboard's `X-Requested-With` header (a 403
/// naming `what` otherwise).
pub fn sent_by_the_dashboard(headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    match headers.get(HEADER_REQUESTED_WITH) {
        Some(v) if v.as_bytes() == DASHBOARD.as_bytes() => Ok(()),
        _ => Err(ApiError::Forbidden(format!(
            "Forbidden: {what} must carry `X-Requested-With: {DASHBOARD}`"
        ))),
    }
}
