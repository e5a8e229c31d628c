//! `http_fetch_task`: fetches `params.url` (GET) through `wasi:http` and
//! returns the status, content type, byte count and SHA-256 of the body.
//! It can only reach the origins its manifest (`http_fetch_task.toml`)
//! grants, within the worker's policy.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, IncomingBody, OutgoingBody, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

wit_bindgen::generate!({ path: "../../../wit", world: "task-plugin" });

use exports::taskworker::plugin::handler::{Guest, Skill, Task, TaskError, TaskOutput};
use taskworker::plugin::types::ErrorKind;

struct HttpFetchTask;

fn failure(kind: ErrorKind, message: String) -> TaskError {
    TaskError {
        kind,
        message,
        details: None,
    }
}

/// A denial is for a human to fix; anything else may pass on a retry.
fn from_code(what: &str, code: ErrorCode) -> TaskError {
    let kind = match code {
        ErrorCode::HttpRequestDenied
        | ErrorCode::DestinationIpProhibited
        | ErrorCode::HttpResponseBodySize(_)
        | ErrorCode::HttpRequestBodySize(_) => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    };
    failure(kind, format!("{what}: {code:?}"))
}

fn fetch(url: &str) -> Result<Value, TaskError> {
    let invalid = || {
        failure(
            ErrorKind::InvalidInput,
            format!("not an http(s) URL: {url}"),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(invalid)?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err(invalid()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(&scheme)).map_err(|()| invalid())?;
    request
        .set_authority(Some(authority))
        .map_err(|()| invalid())?;
    request
        .set_path_with_query(Some(path))
        .map_err(|()| invalid())?;
    let body = request.body().map_err(|()| invalid())?;
    let pending =
        outgoing_handler::handle(request, None).map_err(|e| from_code("request refused", e))?;
    OutgoingBody::finish(body, None).map_err(|e| from_code("sending the request failed", e))?;
    let response = loop {
        match pending.get() {
            Some(result) => break result,
            None => pending.subscribe().block(),
        }
    };
    let response = response
        .map_err(|()| failure(ErrorKind::Permanent, "response taken twice".into()))?
        .map_err(|e| from_code("request failed", e))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let body = response
        .consume()
        .map_err(|()| failure(ErrorKind::Permanent, "no response body".into()))?;
    let stream = body
        .stream()
        .map_err(|()| failure(ErrorKind::Permanent, "no response body stream".into()))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(match wasip2::http::types::http_error_code(&e) {
                    Some(code) => from_code("reading the body failed", code),
                    None => failure(
                        ErrorKind::Transient,
                        format!("reading the body failed: {}", e.to_debug_string()),
                    ),
                });
            }
        }
    }
    drop(stream);
    drop(IncomingBody::finish(body));
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(json!({
        "status": status,
        "content_type": content_type,
        "bytes": bytes,
        "sha256": digest,
    }))
}

impl Guest for HttpFetchTask {
    fn describe() -> Vec<Skill> {
        vec![Skill {
            name: "http_fetch_task".into(),
            version: "1.0.0".into(),
            description: "GETs params.url; returns status, content type, size and SHA-256 of the body"
                .into(),
            input_schema: Some(
                json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}})
                    .to_string(),
            ),
            output_schema: None,
            output_statuses: vec![],
        }]
    }

    fn execute(task: Task) -> Result<TaskOutput, TaskError> {
        let params: Value = serde_json::from_str(&task.params)
            .map_err(|e| failure(ErrorKind::InvalidInput, format!("params are not JSON: {e}")))?;
        let url = params["url"]
            .as_str()
            .ok_or_else(|| failure(ErrorKind::InvalidInput, "params.url is required".into()))?;
        Ok(TaskOutput {
            status: "success".into(),
            data: fetch(url)?.to_string(),
        })
    }
}

export!(HttpFetchTask);
