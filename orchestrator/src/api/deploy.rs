//! Deploys through the client API (a client token with the deploy right):
//!
//! - `POST /api/v1/plugins`: upload a plugin version (multipart: `name`,
//!   `plugin` (the `.wasm`), optional `manifest`; or the raw `.wasm` with
//!   `?name=`).
//! - `GET /api/v1/plugins`: names, versions, hashes, skills, and per worker
//!   the version it runs or why it could not load it (any client token).
//! - `POST /api/v1/plugins/{name}/rollback` (`{"version": N}` or empty for
//!   the previous one) and `DELETE /api/v1/plugins/{name}`.
//! - `PUT /api/v1/blueprints/{name}` (the TOML) and
//!   `GET /api/v1/blueprints/{name}[?version=N]`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::session::Caller;
use super::{AppState, body};
use crate::engine::deploy::BlueprintDeployError;
use crate::registry::{DeployError, MAX_MANIFEST_BYTES};

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Invalid(m) => ApiError::BadRequest(m),
            DeployError::NotFound(m) => ApiError::NotFound(m),
            DeployError::Storage(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<BlueprintDeployError> for ApiError {
    fn from(e: BlueprintDeployError) -> Self {
        match e {
            BlueprintDeployError::Invalid(e) => ApiError::BadRequest(e.to_string()),
            BlueprintDeployError::Storage(e) => ApiError::Internal(e.to_string()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct UploadQuery {
    name: Option<String>,
}

/// An upload, however it was sent.
struct Upload {
    name: Option<String>,
    component: Option<Vec<u8>>,
    manifest: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/plugins", tag = "deploys",
    summary = "Upload a plugin component as its next version (deploy right needed)",
    description = "multipart/form-data with `name`, `plugin` (the .wasm) and optionally `manifest` (TOML); or the raw component with `?name=`.",
    params(("name" = Option<String>, Query, description = "The plugin's name, for a raw upload")),
    request_body(content = Vec<u8>, content_type = "multipart/form-data"),
    responses((status = 201, description = "Stored and offered to the workers", body = Object),
              (status = 413, description = "Larger than max_plugin_bytes", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn upload_plugin(
    State(state): State<AppState>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    Caller(caller): Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let by = state.auth.may_deploy(caller)?;
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let max = state.engine.registry().max_plugin_bytes;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let upload = if multipart {
        let form = Multipart::from_request(request, &state)
            .await
            .map_err(|e| {
                ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
            })?;
        read_form(form, max).await?
    } else {
        let raw = body::bytes(Bytes::from_request(request, &state).await)?;
        Upload {
            name: None,
            component: Some(raw.to_vec()),
            manifest: None,
        }
    };
    let name = upload.name.or(query.name).ok_or_else(|| {
        ApiError::BadRequest(
            "Name the plugin: a multipart field `name`, or `?name=` with a raw body".into(),
        )
    })?;
    let component = upload.component.ok_or_else(|| {
        ApiError::BadRequest("No component: send the .wasm as the multipart field `plugin`".into())
    })?;
    let row = state
        .engine
        .registry()
        .upload(
            state.engine.deploys(),
            &name,
            component,
            upload.manifest,
            &by,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "name": row.name,
            "version": row.version,
            "sha256": row.sha256,
            "size": row.size,
            "uploaded_at": row.uploaded_at,
            "revision": state.engine.registry().revision(),
        })),
    )
        .into_response())
}

/// Reads the form's fields, each within its bound, before anything is parsed.
async fn read_form(mut form: Multipart, max: usize) -> Result<Upload, ApiError> {
    let mut upload = Upload {
        name: None,
        component: None,
        manifest: None,
    };
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::BadRequest(format!("Invalid multipart body: {}", e.body_text()))
    };
    while let Some(mut field) = form.next_field().await.map_err(bad)? {
        let field_name = field.name().unwrap_or_default().to_string();
        let limit = match field_name.as_str() {
            "name" => 256,
            "plugin" | "wasm" => max,
            "manifest" => MAX_MANIFEST_BYTES,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "Unknown multipart field {:?}: send `name`, `plugin` and optionally `manifest`",
                    rxon::text::clip(other, 64)
                )));
            }
        };
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            if data.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(format!(
                    "multipart field `{field_name}` is larger than {limit} bytes"
                )));
            }
            data.extend_from_slice(&chunk);
        }
        let text = |data: Vec<u8>| {
            String::from_utf8(data).map_err(|_| {
                ApiError::BadRequest(format!("multipart field `{field_name}` is not UTF-8"))
            })
        };
        match field_name.as_str() {
            "name" => upload.name = Some(text(data)?.trim().to_string()),
            "manifest" => upload.manifest = Some(text(data)?),
            _ => upload.component = Some(data),
        }
    }
    Ok(upload)
}

#[utoipa::path(get, path = "/api/v1/plugins", tag = "deploys",
    summary = "Plugins: versions, hashes, skills, and what each worker runs",
    responses((status = 200, description = "The plugins", body = Vec<Object>), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn list_plugins(State(state): State<AppState>, _: Caller) -> Result<Response, ApiError> {
    let registry = state.engine.registry();
    let workers = state.engine.workers().await;
    let plugins: Vec<Value> = registry
        .listing()
        .into_iter()
        .map(|p| {
            let current = p
                .current_version
                .and_then(|v| p.versions.iter().find(|r| r.version == v));
            // The skills come from the workers that run the current version.
            let mut skills: Vec<&rxon::SkillInfo> = Vec::new();
            let mut on_workers = Vec::new();
            for w in &workers {
                let Some(report) = w.plugins.iter().find(|r| r.name == p.name) else {
                    continue;
                };
                on_workers.push(json!({
                    "worker_id": w.worker_id,
                    "version": report.version,
                    "sha256": report.sha256,
                    "state": report.state,
                    "running_version": report.running_version,
                    "error": report.error,
                }));
                if report.state == rxon::deploy::PluginState::Running
                    && current.is_some_and(|c| c.sha256 == report.sha256)
                    && skills.is_empty()
                {
                    skills = w.skills.iter().collect();
                }
            }
            json!({
                "name": p.name,
                "current_version": p.current_version,
                "sha256": current.map(|c| &c.sha256),
                "skills": skills,
                "versions": p.versions.iter().map(|r| json!({
                    "version": r.version,
                    "sha256": r.sha256,
                    "size": r.size,
                    "has_manifest": r.manifest.is_some(),
                    "uploaded_at": r.uploaded_at,
                    "uploaded_by": r.uploaded_by,
                })).collect::<Vec<_>>(),
                "workers": on_workers,
            })
        })
        .collect();
    Ok(axum::Json(json!({"revision": registry.revision(), "plugins": plugins})).into_response())
}

#[utoipa::path(post, path = "/api/v1/plugins/{name}/rollback", tag = "deploys",
    summary = "Back to the previous version, or to `{\"version\": N}`",
    params(("name" = String, Path, description = "The plugin")),
    request_body(content = Object, description = "Optional `{\"version\": N}`"),
    responses((status = 200, description = "The version now offered", body = Object),
              (status = 404, description = "No such plugin or version", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn rollback_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Caller(caller): Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    state.auth.may_deploy(caller)?;
    let raw = body::bytes(raw)?;
    let to =
        match body::json_object(&raw)? {
            None => None,
            Some(obj) => match obj.get("version") {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(
                    || ApiError::BadRequest("`version` must be a positive integer".into()),
                )?),
            },
        };
    let registry = state.engine.registry();
    let version = registry.rollback(state.engine.deploys(), &name, to).await?;
    Ok(axum::Json(json!({
        "name": name,
        "current_version": version,
        "revision": registry.revision(),
    }))
    .into_response())
}

#[utoipa::path(delete, path = "/api/v1/plugins/{name}", tag = "deploys",
    summary = "Stop offering a plugin",
    params(("name" = String, Path, description = "The plugin")),
    responses((status = 200, description = "No longer offered", body = Object),
              (status = 404, description = "No such plugin", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn delete_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Caller(caller): Caller,
) -> Result<Response, ApiError> {
    state.auth.may_deploy(caller)?;
    let registry = state.engine.registry();
    registry.remove(state.engine.deploys(), &name).await?;
    Ok(axum::Json(json!({
        "name": name,
        "current_version": null,
        "revision": registry.revision(),
    }))
    .into_response())
}

#[utoipa::path(put, path = "/api/v1/blueprints/{name}", tag = "deploys",
    summary = "Deploy a blueprint (TOML) as its next version; running jobs keep theirs",
    params(("name" = String, Path, description = "The blueprint")),
    request_body(content = String, content_type = "application/toml"),
    responses((status = 201, description = "Stored; new jobs use it", body = Object), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn put_blueprint(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Caller(caller): Caller,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let by = state.auth.may_deploy(caller)?;
    let raw = body::bytes(raw)?;
    let text = std::str::from_utf8(&raw)
        .map_err(|_| ApiError::BadRequest("The blueprint is not UTF-8 text".into()))?;
    let source = format!("blueprint {}", rxon::text::clip(&name, 128));
    let mut bp =
        crate::blueprint::parse(&source, text).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if bp.name != name {
        return Err(ApiError::BadRequest(format!(
            "{source}: the file says name = {:?}; PUT it to /api/v1/blueprints/{}",
            rxon::text::clip(&bp.name, 128),
            rxon::text::clip(&bp.name, 128)
        )));
    }
    bp.origin = format!("api:{by}");
    let bp = state.engine.deploy_blueprint(bp).await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "name": bp.name,
            "version": bp.version,
            "endpoint": bp.create_path,
        })),
    )
        .into_response())
}

#[derive(Debug, Default, Deserialize)]
pub struct VersionQuery {
    version: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/blueprints/{name}", tag = "blueprints",
    summary = "A blueprint's TOML source and version",
    params(("name" = String, Path, description = "The blueprint"),
           ("version" = Option<u32>, Query, description = "That version instead of the current one")),
    responses((status = 200, description = "The blueprint", body = Object),
              (status = 404, description = "No such blueprint or version", body = super::openapi::ErrorBody), (status = 400, description = "Bad request (the error names the field)", body = super::openapi::ErrorBody), (status = 401, description = "No client token", body = super::openapi::ErrorBody), (status = 403, description = "Unknown token", body = super::openapi::ErrorBody)))]
pub async fn get_blueprint(
    State(state): State<AppState>,
    Path(name): Path<String>,
    _: Caller,
    query: Result<Query<VersionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let catalog = state.engine.catalog();
    let bp = match query.version {
        Some(v) => catalog.get(&name, v.max(1)),
        None => catalog.current(&name),
    }
    .ok_or_else(|| {
        ApiError::NotFound(format!("No blueprint {name} (version {:?})", query.version))
    })?;
    Ok(axum::Json(json!({
        "name": bp.name,
        "version": bp.version,
        "current_version": catalog.current(&name).map(|c| c.version),
        "endpoint": bp.create_path,
        "origin": bp.origin,
        "created_at": bp.created_at,
        "text": bp.text,
        "versions": catalog.versions(&name),
    }))
    .into_response())
}
