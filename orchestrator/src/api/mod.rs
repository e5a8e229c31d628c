//! The HTTP API.
//!
//! - [`client`]: `/api[/<version>]/...` for clients (token in `X-Client-Token`).
//! - [`worker`]: `/_worker/...` for workers (RXON).
//! - [`auth`], [`body`], [`error`]: credentials, request bodies, the error shape.
//! - [`serve`]: the server loop (connection cap, header and idle timeouts).

pub mod auth;
pub mod body;
pub mod client;
pub mod error;
mod guard;
pub mod serve;
pub mod worker;

pub use serve::ServeLimits;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::Response;
use axum::routing::{get, patch, post};

use crate::engine::Engine;
use auth::Auth;
use error::ApiError;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub auth: Arc<Auth>,
}

/// Default largest request body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The whole API as a router (used by `main` and by in-process tests).
pub fn router(state: AppState, max_body: usize) -> Router {
    let mut versions: BTreeSet<String> = BTreeSet::new();
    let mut app = Router::new();
    for bp in state.engine.blueprints() {
        versions.insert(
            bp.api_version
                .clone()
                .map(|v| format!("/api/{v}"))
                .unwrap_or_else(|| "/api".into()),
        );
        let path = bp.create_path.clone();
        app = app.route(
            &path,
            post(
                move |State(s): State<AppState>,
                      headers: HeaderMap,
                      raw: Result<Bytes, BytesRejection>| {
                    let bp = bp.clone();
                    async move { client::create_job(s, bp, headers, raw).await }
                },
            ),
        );
    }
    versions.insert("/api".into());
    for prefix in versions {
        app = app
            .route(&format!("{prefix}/jobs"), get(client::list_jobs))
            .route(&format!("{prefix}/jobs/{{id}}"), get(client::get_job))
            .route(
                &format!("{prefix}/jobs/{{id}}/cancel"),
                post(client::cancel_job),
            )
            .route(
                &format!("{prefix}/jobs/{{id}}/history"),
                get(client::job_history),
            )
            .route(&format!("{prefix}/workers"), get(client::list_workers))
            .route(
                &format!("{prefix}/blueprints"),
                get(client::list_blueprints),
            );
    }
    app.route("/_worker/workers/register", post(worker::register))
        .route("/_worker/workers/{worker_id}", patch(worker::heartbeat))
        .route(
            "/_worker/workers/{worker_id}/tasks/next",
            get(worker::next_task),
        )
        .route("/_worker/tasks/result", post(worker::result))
        .route("/_worker/events", post(worker::events))
        .route(
            "/_public/status",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        // Credentials are checked from the headers before any body is read.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::authenticate_first,
        ))
        .layer(axum::middleware::map_response(add_version_header))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("Not found: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    if method == Method::POST && uri.path().starts_with("/api/") {
        return ApiError::NotFound(format!(
            "Not found: no blueprint serves POST {}; GET /api/<version>/blueprints lists them",
            uri.path()
        ));
    }
    ApiError::MethodNotAllowed(format!("Method {method} is not allowed on {}", uri.path()))
}

async fn add_version_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        rxon::HEADER_RXON_VERSION,
        HeaderValue::from_static(rxon::PROTOCOL_VERSION),
    );
    response
}

/// Serves the API on `listener` until `shutdown` resolves.
/// Serves the API on `listener` with the default [`ServeLimits`] until
/// `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve::serve(listener, app, ServeLimits::default(), shutdown).await
}
