//! A job's files (avtomatika's file routes, and a listing):
//!
//! - `GET  …/jobs/{id}/files`: the job's files;
//! - `GET  …/jobs/{id}/files/upload?filename=&expires_in=`: a URL the
//!   client PUTs the file to (the S3 service's presigned URL, or the
//!   orchestrator's own signed one with the local store);
//! - `PUT  …/jobs/{id}/files/content/{name}`: the file through the
//!   orchestrator, streamed to the store (at most `max_upload_bytes`);
//! - `GET  …/jobs/{id}/files/download/{name}`: a redirect to a presigned
//!   URL (S3), or the file streamed (local store);
//! - `GET|PUT /_public/files/{key}?expires=&signature=`: the local store's
//!   signed URLs.
//!
//! Each client route answers only the job's owner (404 for anyone else).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::client::{JobId, owned_job, parse_id};
use super::error::ApiError;
use super::session::Caller;
use crate::objects::{self, Objects};

/// How long a download redirect's presigned URL is valid.
const DOWNLOAD_URL_EXPIRY: Duration = Duration::from_secs(60);
/// Default validity of an upload URL (avtomatika's): an hour.
const DEFAULT_UPLOAD_URL_EXPIRY: u64 = 3600;

/// Whether `path` is a route that streams a file in (its body may take
/// longer than `body_read_timeout_seconds` in all, but must not stall).
pub fn is_file_upload(path: &str) -> bool {
    path.contains("/files/content/") || path.starts_with("/_public/files/")
}

fn store(state: &AppState) -> Result<&Objects, ApiError> {
    state
        .objects
        .as_deref()
        .ok_or_else(|| ApiError::NotImplemented("object storage is not configured".into()))
}

/// Refuses a change to the files of a job that has ended.
fn still_open(job: &crate::job::Job) -> Result<(), ApiError> {
    if job.status.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "job {} has ended ({}); its files can no longer change",
            job.id, job.status
        )));
    }
    Ok(())
}

fn name_of(params: &std::collections::HashMap<String, String>) -> Result<String, ApiError> {
    let name = params.get("name").cloned().unwrap_or_default();
    objects::check_name(&name).map_err(ApiError::BadRequest)?;
    Ok(name)
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/files", tag = "files",
    summary = "The job's files: the client's uploads and the workers' outputs",
    params(("id" = String, Path, description = "The job id")),
    responses((status = 200, description = "`{\"files\": [{name, uri, size, etag?, last_modified}]}`", body = Object),
              (status = 404, description = "No such job of yours", body = super::openapi::ErrorBody),
              (status = 501, description = "No object storage configured", body = super::openapi::ErrorBody),
              (status = 502, description = "The object store failed", body = super::openapi::ErrorBody)))]
pub async fn list_files(
    State(state): State<AppState>,
    JobId(id): JobId,
    Caller(owner): Caller,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    owned_job(&state, id, &owner).await?;
    let files = store(&state)?.list_job(id).await?;
    Ok(axum::Json(json!({ "files": files })).into_response())
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    filename: Option<String>,
    #[serde(default)]
    expires_in: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/files/upload", tag = "files",
    summary = "A URL to PUT a file of the job to, without the client token (avtomatika's presigned upload)",
    params(("id" = String, Path, description = "The job id"),
           ("filename" = String, Query, description = "The file's name in the job (letters, digits, '.', '_', '-', '/')"),
           ("expires_in" = Option<u64>, Query, description = "Seconds the URL is valid (1 to 604800) [default: 3600]")),
    responses((status = 200, description = "`{\"url\", \"expires_in\", \"method\": \"PUT\", \"s3_uri\"}`", body = Object),
              (status = 400, description = "A bad file name or expires_in", body = super::openapi::ErrorBody),
              (status = 404, description = "No such job of yours", body = super::openapi::ErrorBody),
              (status = 409, description = "The job has ended", body = super::openapi::ErrorBody),
              (status = 501, description = "No object storage configured", body = super::openapi::ErrorBody)))]
pub async fn file_upload_url(
    State(state): State<AppState>,
    JobId(id): JobId,
    Caller(owner): Caller,
    headers: HeaderMap,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let id = parse_id(&id)?;
    let job = owned_job(&state, id, &owner).await?;
    let objects = store(&state)?;
    let name = query
        .filename
        .ok_or_else(|| ApiError::BadRequest("filename (query parameter) is required".into()))?;
    objects::check_name(&name).map_err(ApiError::BadRequest)?;
    let max = objects::store::MAX_URL_EXPIRY.as_secs();
    let expires_in = match query.expires_in.as_deref() {
        None => DEFAULT_UPLOAD_URL_EXPIRY,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|s| (1..=max).contains(s))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("expires_in must be an integer from 1 to {max}"))
            })?,
    };
    still_open(&job)?;
    let key = format!("{}{name}", objects::client_prefix(id));
    let url = match objects
        .presigned(reqwest::Method::PUT, &key, Duration::from_secs(expires_in))
        .await?
    {
        Some(url) => url,
        None => local_url(objects, &headers, "PUT", &key, expires_in),
    };
    Ok(axum::Json(json!({
        "url": url,
        "expires_in": expires_in,
        "method": "PUT",
        "s3_uri": objects.uri(&key),
    }))
    .into_response())
}

/// The orchestrator's own signed URL for `key` (the local store), on the
/// host the client reached.
fn local_url(
    objects: &Objects,
    headers: &HeaderMap,
    method: &str,
    key: &str,
    expires_in: u64,
) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let expires = chrono::Utc::now().timestamp() + expires_in as i64;
    let signature = objects.local_signature(method, key, expires);
    format!("http://{host}/_public/files/{key}?expires={expires}&signature={signature}")
}

#[utoipa::path(put, path = "/api/v1/jobs/{id}/files/content/{name}", tag = "files",
    summary = "Upload a file of the job through the orchestrator (streamed to the store)",
    params(("id" = String, Path, description = "The job id"),
           ("name" = String, Path, description = "The file's name in the job")),
    request_body(content = Vec<u8>, description = "The file's bytes (at most max_upload_bytes)", content_type = "application/octet-stream"),
    responses((status = 200, description = "`{\"status\": \"uploaded\", \"s3_uri\", \"size\", \"etag\"}`", body = Object),
              (status = 400, description = "A bad file name, or the upload broke off", body = super::openapi::ErrorBody),
              (status = 404, description = "No such job of yours", body = super::openapi::ErrorBody),
              (status = 409, description = "The job has ended", body = super::openapi::ErrorBody),
              (status = 413, description = "Larger than max_upload_bytes (nothing is kept)", body = super::openapi::ErrorBody),
              (status = 501, description = "No object storage configured", body = super::openapi::ErrorBody),
              (status = 502, description = "The object store failed", body = super::openapi::ErrorBody)))]
pub async fn upload_file(
    State(state): State<AppState>,
    JobId(id): JobId,
    Path(params): Path<std::collections::HashMap<String, String>>,
    Caller(owner): Caller,
    request: Request,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let job = owned_job(&state, id, &owner).await?;
    let objects = store(&state)?;
    let name = name_of(&params)?;
    still_open(&job)?;
    let key = format!("{}{name}", objects::client_prefix(id));
    let stored = put(objects, &key, request).await?;
    tracing::info!(job_id = %id, "job {id}: file {name} uploaded ({} bytes)", stored.size);
    Ok(axum::Json(json!({
        "status": "uploaded",
        "s3_uri": stored.uri,
        "size": stored.size,
        "etag": stored.etag,
    }))
    .into_response())
}

/// Streams `request`'s body to `key`, refusing at once a declared length
/// over the limit.
async fn put(
    objects: &Objects,
    key: &str,
    request: Request,
) -> Result<objects::store::Stored, ApiError> {
    let limit = objects.config().max_upload_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(objects::ObjectsError::TooLarge(limit).into());
    }
    let body = request
        .into_body()
        .into_data_stream()
        .map_err(|e| match super::idle::body_timeout(&e) {
            Some(timeout) => timeout.to_string(),
            None => e.to_string(),
        });
    Ok(objects.put_stream(key, body).await?)
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/files/download/{name}", tag = "files",
    summary = "Download a file of the job: a redirect to a presigned URL (S3), or the file itself (local store)",
    params(("id" = String, Path, description = "The job id"),
           ("name" = String, Path, description = "The file's name in the job (a client upload, or a worker's output)")),
    responses((status = 200, description = "The file (local store)", content_type = "application/octet-stream", body = Vec<u8>),
              (status = 302, description = "Location: a presigned URL valid for 60 s (S3)"),
              (status = 404, description = "No such job of yours, or no such file", body = super::openapi::ErrorBody),
              (status = 501, description = "No object storage configured", body = super::openapi::ErrorBody)))]
pub async fn download_file(
    State(state): State<AppState>,
    JobId(id): JobId,
    Path(params): Path<std::collections::HashMap<String, String>>,
    Caller(owner): Caller,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    owned_job(&state, id, &owner).await?;
    let objects = store(&state)?;
    let name = name_of(&params)?;
    let key = objects.find(id, &name).await?;
    if let Some(url) = objects
        .presigned(reqwest::Method::GET, &key, DOWNLOAD_URL_EXPIRY)
        .await?
    {
        let location = HeaderValue::from_str(&url)
            .map_err(|e| ApiError::Internal(format!("presigned URL: {e}")))?;
        return Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response());
    }
    stream_file(objects, &key).await
}

async fn stream_file(objects: &Objects, key: &str) -> Result<Response, ApiError> {
    let file = objects.get(key).await?;
    let base = key.rsplit('/').next().unwrap_or(key);
    let mut response = Response::new(Body::from_stream(file.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.size));
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{base}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    if let Some(etag) = file
        .etag
        .and_then(|e| HeaderValue::from_str(&format!("\"{e}\"")).ok())
    {
        headers.insert(header::ETAG, etag);
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct SignedQuery {
    #[serde(default)]
    expires: Option<i64>,
    #[serde(default)]
    signature: Option<String>,
}

/// `GET|PUT /_public/files/{key}?expires=&signature=`: the local store's
/// signed URLs (no client token: the signature is the credential).
pub async fn signed(
    State(state): State<AppState>,
    Path(key): Path<String>,
    query: Result<Query<SignedQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let objects = store(&state)?;
    let method = request.method().as_str().to_string();
    let (Some(expires), Some(signature)) = (query.expires, query.signature.as_deref()) else {
        return Err(ApiError::Forbidden(
            "a signed file URL needs expires and signature".into(),
        ));
    };
    if !objects.local_signature_ok(&method, &key, expires, signature) {
        return Err(ApiError::Forbidden(
            "the file URL's signature does not match".into(),
        ));
    }
    if expires < chrono::Utc::now().timestamp() {
        return Err(ApiError::Forbidden("the file URL has expired".into()));
    }
    match method.as_str() {
        "PUT" => {
            let stored = put(objects, &key, request).await?;
            tracing::info!(
                "file {key} uploaded by a signed URL ({} bytes)",
                stored.size
            );
            Ok(StatusCode::OK.into_response())
        }
        _ => stream_file(objects, &key).await,
    }
}
