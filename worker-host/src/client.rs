//! HTTP client of the RXON worker API.
//!
//! Every message with a body is stamped with `timestamp` and a random `nonce`
//! (so two messages are never byte-identical, which replay protection would
//! reject) and signed with the worker token, as rxon 1.0b17 requires.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use rxon::{
    HEADER_RXON_VERSION, HEADER_WORKER_ID, HEADER_WORKER_TOKEN, Heartbeat, HeartbeatResponse,
    PROTOCOL_VERSION, RegisterResponse, ResultResponse, TaskPayload, WorkerEventPayload,
    WorkerRegistration, path,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// What went wrong talking to the orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the orchestrator at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// No answer within the call's bound ([`CALL_TIMEOUT`], longer for a
    /// long-poll or a component download).
    #[error("the orchestrator at {url} did not answer within {after:?}")]
    TimedOut { url: String, after: Duration },
    #[error("the orchestrator refused our credentials ({status}): {message}")]
    Unauthorized { status: StatusCode, message: String },
    #[error("the orchestrator does not know this worker ({message}); re-registering")]
    UnknownWorker { message: String },
    #[error("the orchestrator refused a {bytes}-byte message as too large (413): {message}")]
    PayloadTooLarge { bytes: usize, message: String },
    #[error("the orchestrator answered {status}: {message}")]
    Http { status: StatusCode, message: String },
    /// 429 or 503 with `Retry-After`: the next try waits that long.
    #[error("the orchestrator answered {status} (retry after {retry_after:?}): {message}")]
    Throttled {
        status: StatusCode,
        retry_after: Duration,
        message: String,
    },
    #[error("unexpected answer from the orchestrator: {0}")]
    Decode(String),
}

impl ClientError {
    /// Whether the worker should register again before going on.
    pub fn needs_registration(&self) -> bool {
        matches!(self, Self::UnknownWorker { .. })
    }

    /// How long the orchestrator asked to wait before the next try.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Longest `Retry-After` honoured (a larger one waits this long).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// A 429's or 503's `Retry-After` in seconds (the HTTP-date form is rare
/// from an orchestrator and read as absent), at most [`MAX_RETRY_AFTER`].
fn retry_after(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    let secs: f64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs).min(MAX_RETRY_AFTER))
}

/// A task as polled: typed, plus the JSON as received (what its `sig`
/// covers), kept when the worker checks signatures.
#[derive(Debug, Clone)]
pub struct PolledTask {
    pub payload: TaskPayload,
    pub raw: Option<Value>,
}

/// The error for an answer with `status` and `message` (`sent`: the size
/// of the request's body, for the 413 message).
fn answer_error(
    status: StatusCode,
    message: String,
    sent: usize,
    retry_after: Option<Duration>,
) -> ClientError {
    let message = crate::limits::for_log(&message).into_owned();
    if let Some(retry_after) = retry_after {
        return ClientError::Throttled {
            status,
            retry_after,
            message,
        };
    }
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ClientError::PayloadTooLarge {
            bytes: sent,
            message,
        },
        StatusCode::NOT_FOUND if message.to_lowercase().contains("not found") => {
            ClientError::UnknownWorker { message }
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            ClientError::Unauthorized { status, message }
        }
        _ => ClientError::Http { status, message },
    }
}

/// Most bytes of an orchestrator answer we read (errors are cut for logs).
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Default most time one call to the orchestrator (register, heartbeat,
/// result, event, the plugin list) may take, answer included
/// (`--call-timeout`); a long-poll waits its own timeout plus 10 s, a
/// component download 300 s.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Talks to one orchestrator as one worker.
#[derive(Clone)]
pub struct OrchestratorClient {
    http: reqwest::Client,
    /// The orchestrator URLs (several instances sharing a database); the
    /// one in use is `bases[current]`, and an unreachable one hands over to
    /// the next.
    bases: std::sync::Arc<[String]>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    worker_id: String,
    token: String,
    /// The last plugins revision the orchestrator announced (our
    /// orchestrator only; see [`rxon::deploy`]), shared by every clone.
    revision: std::sync::Arc<tokio::sync::watch::Sender<Option<String>>>,
    /// The task channel while it is open (shared by every clone): results,
    /// heartbeats and events go through it, else over HTTP.
    link: std::sync::Arc<std::sync::RwLock<Option<crate::channel::Link>>>,
    /// Most time one call may take ([`CALL_TIMEOUT`] unless configured).
    call_timeout: Duration,
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl OrchestratorClient {
    /// `base_url`: one orchestrator URL, or several separated by commas
    /// (instances sharing one database; tried in turn when one is down).
    pub fn new(base_url: &str, worker_id: &str, token: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            base_url.split(',').any(|b| !b.trim().is_empty()),
            "no orchestrator URL given"
        );
        Ok(Self {
            http: Self::http(CALL_TIMEOUT)?,
            call_timeout: CALL_TIMEOUT,
            bases: base_url
                .split(',')
                .map(|b| b.trim().trim_end_matches('/').to_string())
                .filter(|b| !b.is_empty())
                .collect(),
            current: Default::default(),
            worker_id: worker_id.to_string(),
            token: token.to_string(),
            revision: std::sync::Arc::new(tokio::sync::watch::Sender::new(None)),
            link: Default::default(),
        })
    }

    /// The URL in use, after moving on to the next orchestrator URL (when
    /// there are several): called when the one in use cannot be reached.
    pub(crate) fn failed_over(&self) -> String {
        let failed = self.base_url().to_string();
        if self.bases.len() > 1 {
            let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
            if self
                .current
                .compare_exchange(
                    i,
                    (i + 1) % self.bases.len(),
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
            {
                tracing::warn!(
                    "cannot reach the orchestrator at {failed}; trying {} next",
                    self.base_url()
                );
            }
        }
        failed
    }

    /// Follows the plugins revision the orchestrator announces (stays `None`
    /// against an orchestrator without a plugin registry, e.g. avtomatika).
    pub fn plugin_revisions(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.revision.subscribe()
    }

    fn note_revision(&self, response: &reqwest::Response) {
        if let Some(value) = response
            .headers()
            .get(rxon::deploy::HEADER_PLUGINS_REVISION)
            .and_then(|v| v.to_str().ok())
        {
            self.note_revision_value(value);
        }
    }

    /// A plugins revision announced by the orchestrator (an answer's header
    /// or a channel frame).
    pub fn note_revision_value(&self, value: &str) {
        let value: &str = &crate::limits::clip(value, 64);
        self.revision.send_if_modified(|r| {
            let changed = r.as_deref() != Some(value);
            if changed {
                *r = Some(value.to_string());
            }
            changed
        });
    }

    /// The same client with another bound on each call
    /// (`--call-timeout`).
    pub fn with_call_timeout(self, call_timeout: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            http: Self::http(call_timeout)?,
            call_timeout,
            ..self
        })
    }

    fn http(call_timeout: Duration) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Every call is bounded (a long-poll and a download set longer).
            .timeout(call_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()?)
    }

    /// The same client with connections of its own, for use on another
    /// runtime (the heartbeat thread).
    pub fn detached(&self) -> anyhow::Result<Self> {
        Ok(Self {
            http: Self::http(self.call_timeout)?,
            ..self.clone()
        })
    }

    pub fn base_url(&self) -> &str {
        &self.bases[self.current.load(std::sync::atomic::Ordering::Relaxed) % self.bases.len()]
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Routes results, heartbeats and events through `link` (or, with
    /// `None`, over HTTP again).
    pub fn set_link(&self, link: Option<crate::channel::Link>) {
        *self.link.write().unwrap_or_else(|p| p.into_inner()) = link;
    }

    /// Sends request `kind` through the task channel when it is open;
    /// `None` when it is not (or closed before answering): send over HTTP.
    async fn via_link<R: DeserializeOwned>(
        &self,
        kind: &str,
        body: &[u8],
    ) -> Option<Result<R, ClientError>> {
        let link = self
            .link
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let (status, value) = link.request(kind, body).await?;
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        if status.is_success() {
            return Some(R::deserialize(&value).map_err(|e| {
                ClientError::Decode(format!(
                    "{e}: {}",
                    crate::limits::for_log(&value.to_string())
                ))
            }));
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        // A reply over the channel carries no headers.
        Some(Err(answer_error(status, message, body.len(), None)))
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base_url(), path))
            .header(HEADER_WORKER_TOKEN, &self.token)
            .header(HEADER_WORKER_ID, &self.worker_id)
            .header(HEADER_RXON_VERSION, PROTOCOL_VERSION)
    }

    /// Serializes, stamps and signs a message body.
    pub fn sign<T: Serialize>(&self, message: &T) -> Result<Value, ClientError> {
        let mut value =
            serde_json::to_value(message).map_err(|e| ClientError::Decode(e.to_string()))?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "nonce".into(),
                Value::String(uuid::Uuid::new_v4().simple().to_string()),
            );
            obj.insert("timestamp".into(), Value::from(unix_now()));
        }
        rxon::seal(&mut value, &self.worker_id, &self.token, unix_now());
        Ok(value)
    }

    /// Sends; an orchestrator that cannot be reached hands over to the
    /// next URL (see [`Self::failed_over`]).
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let (client, request) = request.build_split();
        let request = request.map_err(|source| self.failed(source, self.call_timeout))?;
        let after = request.timeout().copied().unwrap_or(self.call_timeout);
        client
            .execute(request)
            .await
            .map_err(|source| self.failed(source, after))
    }

    /// The error of a call that failed: timed out after `after`, or could
    /// not reach the orchestrator (the next URL is tried next time).
    fn failed(&self, source: reqwest::Error, after: Duration) -> ClientError {
        if source.is_timeout() {
            ClientError::TimedOut {
                url: self.base_url().to_string(),
                after,
            }
        } else {
            ClientError::Unreachable {
                url: self.failed_over(),
                source,
            }
        }
    }

    /// Sends; a success is decoded as `R` (and also returned as JSON), an
    /// error becomes the matching [`ClientError`]. `sent` is the body size,
    /// for the 413 message.
    async fn send_raw<R: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        sent: usize,
    ) -> Result<Option<(R, Value)>, ClientError> {
        let response = self.send(request).await?;
        self.note_revision(&response);
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let wait = retry_after(status, response.headers());
        let body = self.read_bounded(response, MAX_ANSWER_BYTES).await?;
        if status.is_success() {
            let decode_error = |e: serde_json::Error| {
                ClientError::Decode(format!(
                    "{e}: {}",
                    crate::limits::for_log(&String::from_utf8_lossy(&body))
                ))
            };
            let value: Value = serde_json::from_slice(&body).map_err(decode_error)?;
            let typed = R::deserialize(&value).map_err(decode_error)?;
            return Ok(Some((typed, value)));
        }
        let message = serde_json::from_slice::<rxon::ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        Err(answer_error(status, message, sent, wait))
    }

    /// The answer's body, refused (before it is read whole) when it is
    /// larger than `max` bytes.
    async fn read_bounded(
        &self,
        mut response: reqwest::Response,
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let too_large = |n: u64| {
            ClientError::Decode(format!(
                "the answer is at least {n} bytes; at most {max} are accepted"
            ))
        };
        if let Some(n) = response.content_length()
            && n > max as u64
        {
            return Err(too_large(n));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|source| self.failed(source, self.call_timeout))?
        {
            if body.len() + chunk.len() > max {
                return Err(too_large((body.len() + chunk.len()) as u64));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Signs and sends a message: through the task channel as `kind` when
    /// one is given and the channel is open, else by HTTP to `path`.
    async fn deliver_signed<T: Serialize, R: DeserializeOwned>(
        &self,
        kind: Option<&str>,
        method: Method,
        path: &str,
        message: &T,
    ) -> Result<R, ClientError> {
        let body = serde_json::to_vec(&self.sign(message)?)
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if let Some(kind) = kind
            && let Some(answer) = self.via_link(kind, &body).await
        {
            return answer;
        }
        self.post_body(method, path, body).await
    }

    /// Posts an encoded body (see [`Self::encode_signed`]).
    pub async fn post_body<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<R, ClientError> {
        let sent = body.len();
        let request = self
            .request(method, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send_raw(request, sent)
            .await?
            .map(|(value, _)| value)
            .ok_or_else(|| ClientError::Decode("empty answer".into()))
    }

    /// Stamps, signs and encodes a message on the caller's thread (small
    /// ones; [`Self::encode_signed`] takes large ones off the runtime).
    pub fn encode_signed_here<T: Serialize>(&self, message: &T) -> Result<Vec<u8>, ClientError> {
        serde_json::to_vec(&self.sign(message)?).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Stamps, signs and encodes a large message (such as a large result)
    /// off the async runtime's threads.
    pub async fn encode_signed<T: Serialize + Send + 'static>(
        &self,
        message: T,
    ) -> Result<Vec<u8>, ClientError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.encode_signed_here(&message))
            .await
            .map_err(|e| ClientError::Decode(format!("encoding failed: {e}")))?
    }

    pub async fn register(
        &self,
        registration: &WorkerRegistration,
    ) -> Result<RegisterResponse, ClientError> {
        self.deliver_signed(None, Method::POST, path::REGISTER, registration)
            .await
    }

    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatResponse, ClientError> {
        let response: Value = self
            .deliver_signed(
                Some("heartbeat"),
                Method::PATCH,
                &path::heartbeat(&self.worker_id),
                heartbeat,
            )
            .await?;
        // avtomatika answers `null` for a worker it does not know.
        if response.is_null() {
            return Err(ClientError::UnknownWorker {
                message: "heartbeat answered null".into(),
            });
        }
        serde_json::from_value(response).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// Long-polls for the next task; `None` when none came within `wait`.
    /// `hot` names the skills held warm (comma-separated, as avtomatika's
    /// SDK sends them): every plugin's, as they are compiled ahead.
    pub async fn next_task(
        &self,
        wait: Duration,
        hot: &str,
    ) -> Result<Option<PolledTask>, ClientError> {
        let request = self
            .request(Method::GET, &path::next_task(&self.worker_id))
            .query(&[
                ("timeout", wait.as_secs_f64().to_string().as_str()),
                ("hot_skills", hot),
            ])
            // The server may hold the request for `wait` (avtomatika: always 30 s).
            .timeout(wait.max(Duration::from_secs(30)) + Duration::from_secs(10));
        Ok(self
            .send_raw(request, 0)
            .await?
            .map(|(payload, raw)| PolledTask {
                payload,
                raw: Some(raw),
            }))
    }

    /// Submits a result encoded with [`Self::encode_signed`].
    pub async fn submit_encoded_result(
        &self,
        body: Vec<u8>,
    ) -> Result<ResultResponse, ClientError> {
        if let Some(answer) = self.via_link("result", &body).await {
            return answer;
        }
        self.post_body(Method::POST, path::RESULT, body).await
    }

    pub async fn send_event(&self, event: &WorkerEventPayload) -> Result<Value, ClientError> {
        self.deliver_signed(Some("event"), Method::POST, path::EVENTS, event)
            .await
    }

    /// The plugins the orchestrator wants this worker host to run.
    pub async fn desired_plugins(&self) -> Result<rxon::deploy::DesiredPlugins, ClientError> {
        let request = self
            .request(Method::GET, rxon::deploy::PLUGINS_PATH)
            .timeout(Duration::from_secs(30));
        self.send_raw(request, 0)
            .await?
            .map(|(desired, _)| desired)
            .ok_or_else(|| ClientError::Decode("empty answer".into()))
    }

    /// Downloads a component of `size` bytes (as listed; at most `max`).
    pub async fn download_plugin(
        &self,
        sha256: &str,
        size: u64,
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        let response = self
            .send(
                self.request(Method::GET, &rxon::deploy::blob_path(sha256))
                    .timeout(Duration::from_secs(300)),
            )
            .await?;
        let status = response.status();
        if !status.is_success() {
            let body = self
                .read_bounded(response, 64 << 10)
                .await
                .unwrap_or_default();
            return Err(ClientError::Http {
                status,
                message: crate::limits::for_log(&String::from_utf8_lossy(&body)).into_owned(),
            });
        }
        let limit = usize::try_from(size).unwrap_or(usize::MAX).min(max);
        self.read_bounded(response, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_or_503_waits_its_retry_after_bounded_and_other_answers_do_not() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        let throttled =
            |status| answer_error(status, "slow down".into(), 0, retry_after(status, &headers));
        for status in [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ] {
            assert_eq!(
                throttled(status).retry_after(),
                Some(Duration::from_secs(7))
            );
        }
        assert_eq!(throttled(StatusCode::BAD_GATEWAY).retry_after(), None);
        headers.insert(reqwest::header::RETRY_AFTER, "86400".parse().unwrap());
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &headers),
            Some(MAX_RETRY_AFTER)
        );
        headers.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(StatusCode::TOO_MANY_REQUESTS, &headers), None);
    }
}
