//! The web dashboard, served by the orchestrator itself at `/`.
//!
//! Three static assets compiled into the binary (no build step, no CDN): a
//! page shell, a script and a style sheet. The script reads everything
//! through the client API, signed in by a cookie:
//!
//! - `POST /ui/session` `{"token": "..."}` checks a client token, opens a
//!   server-side session and answers with a `taskworker_session` cookie
//!   that carries the session's id, never the token (`HttpOnly`,
//!   `SameSite=Strict`, 12 h; see [`crate::api::session`]); from then on
//!   the API accepts the cookie in place of `X-Client-Token`, so the
//!   dashboard shows exactly what that token may see. Without it the page
//!   shows only the sign-in form.
//! - `GET /ui/session` names the signed-in client (401 otherwise).
//! - `DELETE /ui/session` signs out: the session ends on the server (on
//!   every instance sharing the database) and the cookie is cleared.
//!
//! Changes made with the cookie alone (cancel, sign-in, sign-out) must carry
//! `X-Requested-With: taskworker-dashboard` (see `api::guard`).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::AppState;
use crate::api::auth::{MAX_TOKEN_BYTES, SESSION_COOKIE};
use crate::api::error::ApiError;
use crate::api::guard::sent_by_the_dashboard;
use crate::api::session::SESSION_TTL;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// No script, style or connection from anywhere else; never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/session",
            get(who_is_signed_in).post(sign_in).delete(sign_out),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn who_is_signed_in(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if crate::api::auth::session_cookie(&headers).is_none() {
        return Err(ApiError::Unauthorized("Not signed in".into()));
    }
    let client = state.caller(&Default::default(), &headers).await?.0;
    Ok(axum::Json(json!({"client": client})).into_response())
}

/// Most bytes of a sign-in body: a token of [`MAX_TOKEN_BYTES`], escaped.
const MAX_SIGN_IN_BYTES: usize = 2 * MAX_TOKEN_BYTES + 256;

async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // Checked before the body is read; the body is small and timed.
    sent_by_the_dashboard(&headers, "sign-in and sign-out")?;
    let raw = crate::api::body::read(body, MAX_SIGN_IN_BYTES).await?;
    let body = crate::api::body::json_object(&raw)?.unwrap_or_default();
    let token = match body.get("token") {
        Some(serde_json::Value::String(t)) if !t.is_empty() && t.len() <= MAX_TOKEN_BYTES => t,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "'token' must be a client token (a string of 1 to {MAX_TOKEN_BYTES} bytes)"
            )));
        }
    };
    let (client, session) = state.sign_in(token).await.inspect_err(|_| {
        tracing::warn!("dashboard sign-in refused: unknown token");
    })?;
    tracing::info!(client, "signed in to the dashboard");
    let cookie = cookie(&headers, &session, SESSION_TTL.as_secs());
    Ok((
        [(header::SET_COOKIE, cookie)],
        axum::Json(json!({"client": client})),
    )
        .into_response())
}

async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    sent_by_the_dashboard(&headers, "sign-in and sign-out")?;
    state.sign_out(&headers).await?;
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, cookie(&headers, "", 0))],
        axum::Json(json!({"status": "signed out"})),
    )
        .into_response())
}

/// The session cookie; `Secure` when a proxy in front says the page came
/// over HTTPS.
fn cookie(headers: &HeaderMap, value: &str, max_age: u64) -> HeaderValue {
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let secure = if https { "; Secure" } else { "" };
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}
