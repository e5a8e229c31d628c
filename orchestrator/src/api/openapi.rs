//! The client API as an OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the response types, at
//! `GET /api/openapi.json`; `GET /api/docs` renders it (a page with no
//! external assets). Both are public: they describe the API, not its data.
//!
//! Create-job endpoints come from the blueprints, so they are added to the
//! document when it is served: one `POST` per blueprint's endpoint.

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, Required, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::AppState;
use super::client::JobView;
use crate::job::{JobError, JobEvent, JobStatus, StateVisit, TaskRef};

/// The body of every error: `{"error": "..."}`.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
}

/// `GET /api/v1/jobs`.
#[derive(ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobView<'static>>,
    pub limit: usize,
    pub offset: usize,
    /// Give it as `?after=` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// `GET /api/v1/jobs/{id}/history`.
#[derive(ToSchema)]
pub struct JobHistory {
    pub job_id: uuid::Uuid,
    pub events: Vec<JobEvent>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Task orchestrator: client API",
        description = "Jobs, workers, blueprints and deploys. Every path is also served under `/api/` without the version, and under `/api/<version>/` for every version a blueprint uses. Authenticate with a client token in `X-Client-Token` (or `X-Avtomatika-Token`); deploy verbs need a token with the deploy right."
    ),
    paths(
        super::client::list_jobs,
        super::client::get_job,
        super::client::cancel_job,
        super::signals::signal_job,
        super::signals::approval,
        super::files::list_files,
        super::files::file_upload_url,
        super::files::upload_file,
        super::files::download_file,
        super::schedules::list,
        super::schedules::act,
        super::schedules::deploy,
        super::schedules::remove,
        super::client::job_history,
        super::client::list_workers,
        super::client::list_blueprints,
        super::stream::job_updates,
        super::stats::job_stats,
        super::deploy::upload_plugin,
        super::deploy::list_plugins,
        super::deploy::rollback_plugin,
        super::deploy::delete_plugin,
        super::deploy::put_blueprint,
        super::deploy::get_blueprint,
    ),
    components(schemas(ErrorBody, JobList, JobHistory, JobView, JobStatus, JobError, StateVisit, JobEvent, TaskRef)),
    modifiers(&ClientToken),
    security(("client_token" = [])),
    tags(
        (name = "jobs", description = "Create, follow and cancel jobs"),
        (name = "files", description = "A job's files in object storage (S3-compatible, or a local directory)"),
        (name = "workers", description = "The worker fleet"),
        (name = "blueprints", description = "The state machines jobs run on"),
        (name = "deploys", description = "Plugins and blueprints, deployed at run time"),
    )
)]
struct ApiDoc;

struct ClientToken;

impl Modify for ClientToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "client_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Client-Token"))),
        );
    }
}

/// The document, with a create operation for each blueprint served now.
pub fn document(state: &AppState) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for bp in state.engine.blueprints() {
        let operation = OperationBuilder::new()
            .tag("jobs")
            .operation_id(Some(format!("create_{}", bp.name)))
            .summary(Some(format!("Create a job of blueprint {}", bp.name)))
            .description(Some(
                "The body is the job's data: a JSON object (or `{\"initial_data\": {...}}` with options such as `webhook_url`, `dispatch_timeout`, `result_timeout`).",
            ))
            .parameter(
                ParameterBuilder::new()
                    .name("wait")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(
                        "Seconds (at most 60) to wait for the job to end: 200 with the finished job, else 202",
                    ))
                    .schema(Some(ObjectBuilder::new().schema_type(utoipa::openapi::Type::Number))),
            )
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(utoipa::openapi::Type::Object)))
                            .build(),
                    )
                    .required(Some(Required::True))
                    .build(),
            ))
            .response(
                "202",
                ResponseBuilder::new()
                    .description("Accepted: `{\"status\": \"accepted\", \"job_id\": …}`")
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(ObjectBuilder::new().schema_type(utoipa::openapi::Type::Object)))
                            .build(),
                    )
                    .build(),
            )
            .response(
                "200",
                ResponseBuilder::new()
                    .description("With `?wait=`: the job, finished in time")
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("JobView")))
                            .build(),
                    )
                    .build(),
            )
            .response("400", error("Invalid job data or option"))
            .response("401", error("No client token"))
            .response("403", error("Unknown token"))
            .security(SecurityRequirement::new("client_token", Vec::<String>::new()))
            .build();
        if let Some(path) = &bp.create_path {
            doc.paths
                .add_path_operation(path.clone(), vec![HttpMethod::Post], operation);
        }
    }
    doc
}

/// `GET /api/openapi.json`.
pub async fn json(State(state): State<AppState>) -> Response {
    axum::Json(document(&state)).into_response()
}

/// `GET /api/docs`: the document, rendered by the page itself.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("openapi.html"))
}
