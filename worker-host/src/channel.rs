//! The worker's end of the persistent task channel (see [`rxon::channel`]):
//! opening it, and the [`Link`] through which results, heartbeats and
//! progress events travel while it is open.
//!
//! An orchestrator that does not select the channel's subprotocol (the real
//! avtomatika accepts the socket without it; others answer 404 or 405) is
//! [`ConnectError::NotOffered`]: the worker then polls over HTTP as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rxon::channel::SUBPROTOCOL;
use rxon::{HEADER_RXON_VERSION, HEADER_WORKER_ID, HEADER_WORKER_TOKEN, PROTOCOL_VERSION};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::limits::for_log;

/// An open channel.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Most bytes of one frame from the orchestrator.
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// How long a request waits for its reply before the worker gives up on
/// the channel for it (and sends it over HTTP).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// The orchestrator pings every 15 s: silence this long means the
/// connection is gone.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(45);
/// Most time a frame may wait to be written (queued, or the socket not
/// taking it): past it the channel is given up as lost.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);
/// Time to open the channel.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The orchestrator does not speak the channel: poll over HTTP.
    #[error("the orchestrator offers no task channel ({0})")]
    NotOffered(String),
    /// The orchestrator does not know this worker: register first.
    #[error("the orchestrator does not know this worker ({0})")]
    UnknownWorker(String),
    /// The orchestrator could not be reached (try the next URL, if any).
    #[error("{0}")]
    Unreachable(String),
    /// Anything else (refused, broken answer): retry later.
    #[error("{0}")]
    Failed(String),
}

/// Opens the channel at `base_url` (`http[s]://…`) as `worker_id`.
/// `Ok`: the socket, and the largest frame the orchestrator reads.
pub async fn connect(
    base_url: &str,
    worker_id: &str,
    token: &str,
) -> Result<(Socket, usize), ConnectError> {
    let url = format!(
        "{}{}",
        base_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1),
        rxon::channel::path(worker_id)
    );
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Failed(format!("bad channel URL {url}: {e}")))?;
    let headers = request.headers_mut();
    let value = |v: &str| {
        HeaderValue::from_str(v).map_err(|_| ConnectError::Failed("unusable header value".into()))
    };
    headers.insert(HEADER_WORKER_TOKEN, value(token)?);
    headers.insert(HEADER_WORKER_ID, value(worker_id)?);
    headers.insert(HEADER_RXON_VERSION, value(PROTOCOL_VERSION)?);
    headers.insert("Sec-WebSocket-Protocol", value(SUBPROTOCOL)?);
    let config = WebSocketConfig::default()
        .read_buffer_size(rxon::channel::READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(ConnectError::Unreachable(format!(
            "opening {url} timed out after {CONNECT_TIMEOUT:?}"
        ))),
        Ok(Ok((socket, response))) => {
            let max = response
                .headers()
                .get(rxon::channel::HEADER_MAX_FRAME)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(MAX_FRAME_BYTES);
            Ok((socket, max))
        }
        Ok(Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(e),
        ))) => Err(ConnectError::NotOffered(format!(
            "it answered without the {SUBPROTOCOL} subprotocol: {e}"
        ))),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let message = serde_json::from_str::<rxon::ErrorBody>(&body)
                .map(|b| b.error)
                .unwrap_or_else(|_| body.to_string());
            let message = for_log(&message).into_owned();
            Err(refusal(status.as_u16(), message))
        }
        Ok(Err(e @ (tungstenite::Error::Io(_) | tungstenite::Error::Tls(_)))) => Err(
            ConnectError::Unreachable(format!("cannot reach {url}: {e}")),
        ),
        Ok(Err(e)) => Err(ConnectError::Failed(format!("cannot open {url}: {e}"))),
    }
}

/// What an answer other than the upgrade means.
fn refusal(status: u16, message: String) -> ConnectError {
    match status {
        404 if message.contains("Worker not found") => ConnectError::UnknownWorker(message),
        // Passing trouble (credentials fail the long-poll too): retry.
        401 | 403 | 429 | 502 | 503 | 504 => ConnectError::Failed(format!("{status}: {message}")),
        // Anything else (404, 405, 400, 426, or a proxy answering the
        // upgrade with a page) means no channel here.
        _ => ConnectError::NotOffered(format!("{status}: {message}")),
    }
}

/// A reply to a request: the HTTP status and body its endpoint would give.
pub type Reply = (u16, Value);

/// Sends requests over the open channel and matches their replies; cheap
/// to clone. Dropped requests (the channel closed) come back as `None`, and
/// the caller sends them over HTTP instead.
#[derive(Clone)]
pub struct Link {
    out: mpsc::Sender<Message>,
    /// The largest frame the orchestrator reads.
    max_frame: usize,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    next: Arc<AtomicU64>,
}

impl Link {
    pub fn new(out: mpsc::Sender<Message>, max_frame: usize) -> Self {
        Self {
            out,
            max_frame,
            pending: Default::default(),
            next: Default::default(),
        }
    }

    /// Sends request `kind` with an encoded body; `None` if the channel
    /// closed before the reply (or it took longer than [`REPLY_TIMEOUT`]).
    pub async fn request(&self, kind: &str, body: &[u8]) -> Option<Reply> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let frame = rxon::channel::request_frame(kind, id, body)?;
        if frame.len() > self.max_frame {
            // What the HTTP endpoint would answer; the channel stays open.
            return Some((
                413,
                serde_json::json!({"error": format!(
                    "Request body is too large: a {}-byte frame, and the orchestrator reads at most {} bytes",
                    frame.len(),
                    self.max_frame
                )}),
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        // A writer that cannot write (the orchestrator stopped reading) must
        // not hold the request: it goes over HTTP instead.
        let queued =
            tokio::time::timeout(REPLY_TIMEOUT, self.out.send(Message::Text(frame.into())));
        if !matches!(queued.await, Ok(Ok(()))) {
            self.lock().remove(&id);
            tracing::warn!(
                "the task channel did not take a {kind} within {REPLY_TIMEOUT:?}; sending it over HTTP"
            );
            return None;
        }
        let reply = tokio::time::timeout(REPLY_TIMEOUT, rx).await;
        self.lock().remove(&id);
        reply.ok()?.ok()
    }

    /// Hands a reply to the request waiting for it.
    pub fn complete(&self, id: u64, reply: Reply) {
        if let Some(waiting) = self.lock().remove(&id) {
            let _ = waiting.send(reply);
        }
    }

    /// Sends a frame that needs no reply; false when the channel is closed
    /// or its writer took nothing for [`WRITE_STALL_LIMIT`].
    pub async fn send(&self, text: String) -> bool {
        let queued =
            tokio::time::timeout(WRITE_STALL_LIMIT, self.out.send(Message::Text(text.into())));
        matches!(queued.await, Ok(Ok(())))
    }

    /// The channel closed: every request waiting gets `None`.
    pub fn close(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnectError, refusal};

    #[test]
    fn refusals_say_whether_to_retry_register_or_poll_instead() {
        let is = |status, message: &str| refusal(status, message.to_string());
        assert!(matches!(
            is(404, "Worker not found: w1 is not registered"),
            ConnectError::UnknownWorker(_)
        ));
        for status in [404, 405, 400, 426, 200, 501] {
            assert!(
                matches!(is(status, "nope"), ConnectError::NotOffered(_)),
                "{status}"
            );
        }
        for status in [401, 403, 429, 502, 503, 504] {
            assert!(
                matches!(is(status, "later"), ConnectError::Failed(_)),
                "{status}"
            );
        }
    }
}
