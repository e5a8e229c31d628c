//! The orchestrator's client API, as the CLI uses it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::config::Target;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The orchestrator answered with an error (`{"error": "..."}`).
    #[error("{status}: {message}")]
    Refused { status: StatusCode, message: String },
    /// No answer at all.
    #[error("cannot reach the orchestrator at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// An answer that is not the JSON expected.
    #[error("unexpected answer: {0}")]
    Garbled(String),
}

pub struct Api {
    http: reqwest::Client,
    target: Target,
}

/// An answer: its status and JSON body.
pub type Answer = (StatusCode, Value);

impl Api {
    pub fn new(target: Target) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { http, target })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.target.url))
            .header("X-Client-Token", &self.target.token)
            .timeout(Duration::from_secs(120))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, ApiError> {
        let response = request
            .send()
            .await
            .map_err(|source| ApiError::Unreachable {
                url: self.target.url.clone(),
                source,
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|source| ApiError::Unreachable {
                url: self.target.url.clone(),
                source,
            })?;
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| {
                ApiError::Garbled(format!(
                    "{status}: {e}: {}",
                    text.chars().take(200).collect::<String>()
                ))
            })?
        };
        if status.is_success() {
            return Ok((status, body));
        }
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        Err(ApiError::Refused { status, message })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ApiError> {
        Ok(self.send(self.request(Method::GET, path)).await?.1)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Answer, ApiError> {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn post_empty(&self, path: &str) -> Result<Value, ApiError> {
        Ok(self.send(self.request(Method::POST, path)).await?.1)
    }

    pub async fn put_text(&self, path: &str, body: String) -> Result<Value, ApiError> {
        let request = self
            .request(Method::PUT, path)
            .header("Content-Type", "application/toml")
            .body(body);
        Ok(self.send(request).await?.1)
    }

    pub async fn delete(&self, path: &str) -> Result<Value, ApiError> {
        Ok(self.send(self.request(Method::DELETE, path)).await?.1)
    }

    pub async fn post_multipart(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
    ) -> Result<Value, ApiError> {
        let request = self
            .request(Method::POST, path)
            .multipart(form)
            .timeout(Duration::from_secs(600));
        Ok(self.send(request).await?.1)
    }

    /// The create endpoint of blueprint `name` (from `GET /api/v1/blueprints`):
    /// the blueprint of that name, else the one whose endpoint ends with
    /// `/name` (`test` for `test_flow` at `/api/v1/jobs/test`).
    pub async fn endpoint_of(&self, name: &str) -> anyhow::Result<String> {
        let list = self.get("/api/v1/blueprints").await?;
        let all: Vec<&Value> = list
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let endpoint = |b: &&Value| b["endpoint"].as_str().map(str::to_string);
        if let Some(found) = all.iter().find(|b| b["name"] == name).and_then(endpoint) {
            return Ok(found);
        }
        let by_path: Vec<String> = all
            .iter()
            .filter_map(endpoint)
            .filter(|e| e.rsplit('/').next() == Some(name))
            .collect();
        if let [only] = by_path.as_slice() {
            return Ok(only.clone());
        }
        let names: Vec<&str> = all.iter().filter_map(|b| b["name"].as_str()).collect();
        anyhow::bail!(
            "no blueprint named {name:?}; the orchestrator serves: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )
    }
}
