//! The HTTP API.
//!
//! - [`client`]: `/api[/<version>]/...` for clients (token in `X-Client-Token`).
//! - [`worker`]: `/_worker/...` for workers (RXON).
//! - [`auth`], [`body`], [`error`]: credentials, request bodies, the error shape.
//! - [`serve`]: the server loop (connection cap, header and idle timeouts).

pub mod auth;
pub mod body;
pub mod channel;
pub mod client;
pub mod create;
pub mod deploy;
pub mod error;
pub mod files;
mod front;
pub mod guard;
pub mod idle;
pub mod limits;
pub mod openapi;
pub mod schedules;
pub mod serve;
pub mod session;
pub mod signals;
pub mod stats;
pub mod stream;
pub mod throttle;
pub mod worker;
pub mod worker_plugins;

pub use serve::ServeLimits;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::Method;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{delete, get, patch, post, put};

use crate::engine::Engine;
use auth::Auth;
use error::ApiError;

/// Shared by every handler; one reference count (each middleware layer and
/// extractor clones it per request).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub engine: Engine,
    pub auth: Auth,
    /// The open worker channels.
    pub channels: channel::Sessions,
    /// Largest request body (and channel frame).
    pub max_body: usize,
    /// Wrong credentials counted per peer address.
    pub auth_failures: throttle::AuthFailures,
    /// Update streams open per client.
    pub client_streams: stream::ClientStreams,
    /// Dashboard sessions ([`session`]).
    pub(crate) sessions: session::Sessions,
    /// The schedules, when a schedules file is configured.
    pub scheduler: Option<Arc<crate::schedule::Scheduler>>,
    /// Per-client rates and bounds ([`limits`]).
    pub limits: limits::Limits,
    /// Where jobs' files are kept ([`files`]); `None` answers 501.
    pub objects: Option<Arc<crate::objects::Objects>>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// `max_body`: the largest request body (and channel frame) accepted;
    /// `auth_failures`: wrong credentials counted per peer address
    /// ([`throttle`]).
    pub fn new(
        engine: Engine,
        auth: Auth,
        max_body: usize,
        auth_failures: throttle::AuthFailures,
    ) -> Self {
        Self(Arc::new(Shared {
            auth,
            channels: Default::default(),
            max_body,
            auth_failures,
            client_streams: Default::default(),
            sessions: session::Sessions::of(&engine),
            engine,
            scheduler: None,
            limits: limits::Limits::default(),
            objects: None,
        }))
    }

    /// The same state with per-client limits (before it is shared).
    pub fn with_client_limits(
        mut self,
        by_client: std::collections::HashMap<String, limits::ClientLimits>,
    ) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.0) {
            shared.limits = limits::Limits::new(by_client);
        }
        if self.limits.has_quotas() {
            tokio::spawn(flush_quota_counts(Arc::downgrade(&self.0)));
        }
        self
    }

    /// The same state keeping jobs' files in `objects` (before it is shared).
    pub fn with_objects(mut self, objects: Arc<crate::objects::Objects>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.0) {
            shared.objects = Some(objects);
        }
        self
    }

    /// The same state serving `scheduler`'s schedules (before it is shared).
    pub fn with_scheduler(mut self, scheduler: Arc<crate::schedule::Scheduler>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.0) {
            shared.scheduler = Some(scheduler);
        }
        self
    }
}

/// Default largest request body: 1 MiB.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// The whole API as a router (used by `main` and by in-process tests).
///
/// Client routes are served under `/api` and `/api/<version>` for every
/// version some blueprint is mounted under; create-job endpoints are looked
/// up in the blueprint catalog on each request (see [`create_job`]), so a
/// blueprint deployed at run time serves at once.
pub fn router(state: AppState) -> Router {
    let max_body = state.max_body;
    let max_upload = state.engine.registry().max_plugin_bytes + (256 << 10);
    let mut app = Router::new();
    for prefix in ["/api", "/api/{version}"] {
        let client = Router::new()
            .route(&format!("{prefix}/jobs"), get(client::list_jobs))
            .route(&format!("{prefix}/jobs/{{id}}"), get(client::get_job))
            .route(&format!("{prefix}/jobs/stream"), get(stream::job_updates))
            .route(&format!("{prefix}/stats/stream"), get(stats::job_stats))
            .route(
                &format!("{prefix}/jobs/{{id}}/cancel"),
                post(client::cancel_job),
            )
            .route(
                &format!("{prefix}/jobs/{{id}}/history"),
                get(client::job_history),
            )
            .route(
                &format!("{prefix}/jobs/{{id}}/signal/{{name}}"),
                post(signals::signal_job),
            )
            .route(
                &format!("{prefix}/jobs/{{id}}/files"),
                get(files::list_files),
            )
            .route(
                &format!("{prefix}/jobs/{{id}}/files/upload"),
                get(files::file_upload_url),
            )
            .route(
                &format!("{prefix}/jobs/{{id}}/files/content/{{*name}}"),
                put(files::upload_file).layer(DefaultBodyLimit::disable()),
            )
            .route(
                &format!("{prefix}/jobs/{{id}}/files/download/{{*name}}"),
                get(files::download_file),
            )
            .route(&format!("{prefix}/workers"), get(client::list_workers))
            .route(&format!("{prefix}/schedules"), get(schedules::list))
            .route(
                &format!("{prefix}/schedules/{{name}}"),
                put(schedules::deploy).delete(schedules::remove),
            )
            .route(
                &format!("{prefix}/schedules/{{name}}/{{action}}"),
                post(schedules::act),
            )
            .route(
                &format!("{prefix}/blueprints"),
                get(client::list_blueprints),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                known_api_version,
            ));
        app = app.merge(client);
    }
    app.route(
        "/api/v1/plugins",
        post(deploy::upload_plugin)
            .get(deploy::list_plugins)
            .layer(DefaultBodyLimit::max(max_upload)),
    )
    .route("/api/v1/plugins/{name}", delete(deploy::delete_plugin))
    .route(
        "/api/v1/plugins/{name}/rollback",
        post(deploy::rollback_plugin),
    )
    .route(
        "/api/v1/blueprints/{name}",
        put(deploy::put_blueprint)
            .get(deploy::get_blueprint)
            .layer(DefaultBodyLimit::max(
                crate::blueprint::catalog::MAX_BLUEPRINT_BYTES,
            )),
    )
    .route(
        "/_public/files/{*key}",
        get(files::signed)
            .put(files::signed)
            .layer(DefaultBodyLimit::disable()),
    )
    .route("/_worker/workers/register", post(worker::register))
    .route("/_worker/workers/{worker_id}", patch(worker::heartbeat))
    .route(
        "/_worker/workers/{worker_id}/tasks/next",
        get(worker::next_task),
    )
    .route("/_worker/tasks/result", post(worker::result))
    .route("/_worker/events", post(worker::events))
    .route("/_worker/ws/{worker_id}", get(channel::open))
    .route(rxon::deploy::PLUGINS_PATH, get(worker_plugins::desired))
    .route(
        &format!("{}/{{sha256}}", rxon::deploy::PLUGINS_PATH),
        get(worker_plugins::component),
    )
    .route(
        "/_public/status",
        get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    )
    .route(
        "/_public/webhooks/approval/{job_id}",
        post(signals::approval),
    )
    .route("/api/openapi.json", get(openapi::json))
    .route("/api/docs", get(openapi::page))
    .route("/metrics", get(metrics))
    .route("/_public/metrics", get(metrics))
    .merge(crate::ui::routes())
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
    .layer(DefaultBodyLimit::max(max_body))
    // Credentials are checked from the headers before any body is read.
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        front::front,
    ))
    .with_state(state)
}

/// `/api/<version>/...` answers only for versions some blueprint uses (and
/// `v1`, where the deploy endpoints live).
async fn known_api_version(
    State(state): State<AppState>,
    params: axum::extract::RawPathParams,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let unknown = params.iter().find(|(k, v)| {
        *k == "version" && *v != "v1" && !state.engine.catalog().serves_api_version(v)
    });
    match unknown {
        Some(_) => {
            ApiError::NotFound(format!("Not found: {}", request.uri().path())).into_response()
        }
        None => next.run(request).await,
    }
}

/// Requests no fixed route serves: `POST` to a blueprint's create-job
/// endpoint (looked up now, so new blueprints serve at once), else 404.
/// No body is read before the endpoint is known and its client checked.
async fn not_found(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    match create_job(&state, request).await {
        Ok(created) => created,
        Err(_) => Err(ApiError::NotFound(format!("Not found: {path}"))),
    }
}

/// A fixed route with another method; a create-job endpoint may share its
/// path (e.g. `/api/v1/jobs/test` and `GET /api/v1/jobs/{id}`).
async fn method_not_allowed(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    match create_job(&state, request).await {
        Ok(created) => created,
        Err(_) => Err(ApiError::MethodNotAllowed(format!(
            "Method {method} is not allowed on {path}"
        ))),
    }
}

/// `POST` to a create-job endpoint: the job is created (`Ok`); a `POST`
/// under `/api/` that no blueprint serves is a 404 naming the list; any
/// other request is given back unread (`Err`).
async fn create_job(
    state: &AppState,
    request: Request,
) -> Result<Result<Response, ApiError>, Request> {
    if request.method() != Method::POST {
        return Err(request);
    }
    let Some(bp) = state.engine.catalog().by_path(request.uri().path()) else {
        if request.uri().path().starts_with("/api/") {
            return Ok(Err(ApiError::NotFound(format!(
                "Not found: no blueprint serves POST {}; GET /api/<version>/blueprints lists them",
                request.uri().path()
            ))));
        }
        return Err(request);
    };
    let label = crate::metrics::RouteLabel(bp.create_path.clone().unwrap_or_default());
    let (parts, body) = request.into_parts();
    let mut answer = match state.caller(&parts.extensions, &parts.headers).await {
        Ok(caller) => {
            let request = create::CreateRequest {
                query: parts.uri.query(),
                headers: &parts.headers,
            };
            create::create_job(state.clone(), bp, caller, request, body).await
        }
        Err(e) => Err(e),
    };
    if let Ok(response) = &mut answer {
        response.extensions_mut().insert(label);
    }
    Ok(answer)
}

/// `GET /metrics` (and `/_public/metrics`, the path the older avtomatika
/// fork served; 1.0b30 pushes its metrics by OTLP instead): Prometheus text
/// format; see [`crate::metrics`].
async fn metrics(State(state): State<AppState>) -> Response {
    let text = crate::metrics::render(state.engine.metrics_snapshot().await);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
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

/// Adds the quota counts to storage every [`limits::FLUSH_EVERY`] while
/// the state lives.
async fn flush_quota_counts(state: std::sync::Weak<Shared>) {
    loop {
        tokio::time::sleep(limits::FLUSH_EVERY).await;
        let Some(state) = state.upgrade() else { return };
        state.limits.flush(&state.engine).await;
    }
}
