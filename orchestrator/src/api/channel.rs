//! The persistent worker channel, `GET /_worker/ws/{worker_id}` (WebSocket,
//! subprotocol [`rxon::channel::SUBPROTOCOL`]; the frames are described in
//! [`rxon::channel`]).
//!
//! One session per worker: a newer one replaces the older. A session is
//! three parts:
//! - the reader takes the worker's frames in order: `ready` adds task
//!   credits, requests (`result`, `heartbeat`, `event`) are answered by the
//!   same code as their HTTP endpoints, at most [`MAX_REQUESTS_IN_FLIGHT`] at
//!   once (further frames wait unread);
//! - the dispatcher spends one credit per task, taken as a long-poll would
//!   take it, and pushes stop notices and plugin revisions;
//! - the writer sends what both produce, several frames per flush.
//!
//! Bounds: frames at most the API's body limit; at most
//! [`rxon::channel::MAX_CREDITS`] credits; at most [`MAX_CHANNELS`] open
//! sessions; a session that hears nothing from its worker (not even the
//! answer to a ping) for [`IDLE_LIMIT`] is closed, and so is one whose
//! worker takes no frame for [`WRITE_STALL_LIMIT`] (its replies and tasks
//! cannot be written, so its requests are not read either: nothing waits
//! on it for ever in either direction).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use rxon::channel::{
    CLOSE_GOING_AWAY, CLOSE_PROTOCOL, CLOSE_REPLACED, CLOSE_UNKNOWN_WORKER, MAX_CREDITS,
    OrchestratorFrame, SUBPROTOCOL, WorkerFrame,
};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::{AppState, worker};
use crate::engine::EngineError;

/// Most open channel sessions.
pub const MAX_CHANNELS: usize = 1024;
/// Requests of one session handled at once.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 64;
/// Ping interval of a session.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A session that receives nothing for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Frames queued for the writer of one session.
const OUTBOX: usize = 256;
/// Most time the writer may take to hand a frame to the socket, or a frame
/// may wait for room in the queue: past it the session is closed.
pub const WRITE_STALL_LIMIT: Duration = Duration::from_secs(30);

/// Queues `message` for the writer; false when the session is over or the
/// queue stayed full for [`WRITE_STALL_LIMIT`].
async fn queue(out: &mpsc::Sender<Message>, message: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_STALL_LIMIT, out.send(message)).await,
        Ok(Ok(()))
    )
}

/// The open sessions: one per worker id.
pub struct Sessions {
    open: Mutex<HashMap<String, (u64, CancellationToken)>>,
    permits: Arc<Semaphore>,
    next: std::sync::atomic::AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            open: Mutex::default(),
            permits: Arc::new(Semaphore::new(MAX_CHANNELS)),
            next: Default::default(),
        }
    }
}

impl Sessions {
    /// Registers a session of `worker_id`, ending the one it replaces.
    fn begin(&self, worker_id: &str) -> (u64, CancellationToken) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let token = CancellationToken::new();
        let old = self
            .lock()
            .insert(worker_id.to_string(), (id, token.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        (id, token)
    }

    /// Ends session `id`; whether it was still the worker's current one.
    fn end(&self, worker_id: &str, id: u64) -> bool {
        let mut open = self.lock();
        let current = open
            .get(worker_id)
            .is_some_and(|(current, _)| *current == id);
        if current {
            open.remove(worker_id);
        }
        current
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, CancellationToken)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The upgrade: same credentials as every worker request; the worker must
/// be registered and must ask for the channel's subprotocol.
pub async fn open(
    State(state): State<AppState>,
    Path(worker_id): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    state.auth.worker(&headers, Some(&worker_id), None)?;
    let upgrade = upgrade.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let asked = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !asked {
        return Err(ApiError::BadRequest(format!(
            "this endpoint speaks the WebSocket subprotocol {SUBPROTOCOL} only"
        )));
    }
    if state.engine.heartbeat(&worker_id, None).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "Worker not found: {worker_id} is not registered; register, then open the channel"
        )));
    }
    let permit = state
        .channels
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::Unavailable(format!(
                "{MAX_CHANNELS} worker channels are open (the most this orchestrator keeps); use the HTTP long-poll"
            ))
        })?;
    let max = state.max_body;
    let mut response = upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(rxon::channel::READ_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| async move {
            session(state, headers, worker_id, socket).await;
            drop(permit);
        });
    response.headers_mut().insert(
        rxon::channel::HEADER_MAX_FRAME,
        axum::http::HeaderValue::from(max),
    );
    Ok(response)
}

async fn session(state: AppState, headers: HeaderMap, worker_id: String, socket: WebSocket) {
    let (id, replaced) = state.channels.begin(&worker_id);
    tracing::info!(worker_id = %worker_id, "worker {worker_id} opened its task channel");
    let (sink, stream) = socket.split();
    let (out, outbox) = mpsc::channel::<Message>(OUTBOX);
    let credits = Arc::new(Semaphore::new(0));
    let stop = CancellationToken::new();
    let writer = tokio::spawn(write_frames(sink, outbox, stop.clone()));
    let dispatcher = tokio::spawn(dispatch(
        state.clone(),
        worker_id.clone(),
        credits.clone(),
        out.clone(),
        stop.clone(),
    ));
    let stopping = state.engine.stopping();
    // `lost`: the worker left or its connection broke (not replaced by a
    // newer channel, not our own shutdown).
    let (closing, lost) = tokio::select! {
        close = read_frames(&state, &headers, &worker_id, stream, &credits, &out) => (close, true),
        _ = replaced.cancelled() => (Some((CLOSE_REPLACED, "a newer channel of this worker replaced this one".to_string())), false),
        _ = stopping.cancelled() => (Some((CLOSE_GOING_AWAY, "the orchestrator is shutting down".to_string())), false),
        _ = stop.cancelled() => (None, true),
    };
    stop.cancel();
    let _ = dispatcher.await;
    if let Some((code, reason)) = &closing {
        tracing::info!(worker_id = %worker_id, "closing the task channel of worker {worker_id}: {reason}");
        let _ = queue(&out, close(*code, reason)).await;
    }
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let current = state.channels.end(&worker_id, id);
    tracing::info!(worker_id = %worker_id, "task channel of worker {worker_id} closed");
    if lost && current {
        state.engine.channel_lost(&worker_id).await;
    }
}

/// Reads until the worker leaves or breaks the protocol; `Some` is the
/// close frame to send.
async fn read_frames(
    state: &AppState,
    headers: &HeaderMap,
    worker_id: &str,
    mut stream: futures_util::stream::SplitStream<WebSocket>,
    credits: &Arc<Semaphore>,
    out: &mpsc::Sender<Message>,
) -> Option<(u16, String)> {
    let requests = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
    loop {
        let next = match tokio::time::timeout(IDLE_LIMIT, stream.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                tracing::info!(worker_id, "task channel of worker {worker_id} failed: {e}");
                return None;
            }
            Err(_) => {
                return Some((
                    CLOSE_PROTOCOL,
                    format!("nothing received for {IDLE_LIMIT:?}"),
                ));
            }
        };
        let text = match next {
            Message::Text(text) => text,
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                return Some((
                    CLOSE_PROTOCOL,
                    "binary frames are not part of the channel".into(),
                ));
            }
        };
        if let Err(e) = rxon::check_document(text.as_bytes()) {
            return Some((CLOSE_PROTOCOL, format!("invalid frame: {e}")));
        }
        let frame: WorkerFrame = match serde_json::from_str(text.as_str()) {
            Ok(frame) => frame,
            Err(e) => {
                return Some((
                    CLOSE_PROTOCOL,
                    format!("invalid frame: {}", rxon::text::clip(&e.to_string(), 100)),
                ));
            }
        };
        let (kind, id, body) = match frame {
            WorkerFrame::Ready { slots } => {
                let held = credits.available_permits() as u64;
                if held + u64::from(slots) > u64::from(MAX_CREDITS) {
                    return Some((
                        CLOSE_PROTOCOL,
                        format!("more than {MAX_CREDITS} task credits (max_credits)"),
                    ));
                }
                credits.add_permits(slots as usize);
                continue;
            }
            WorkerFrame::Result { id, body } => (Kind::Result, id, body),
            WorkerFrame::Heartbeat { id, body } => (Kind::Heartbeat, id, body),
            WorkerFrame::Event { id, body } => (Kind::Event, id, body),
        };
        let permit = match tokio::time::timeout(WRITE_STALL_LIMIT, requests.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) => return None,
            Err(_) => {
                return Some((
                    CLOSE_PROTOCOL,
                    format!(
                        "{MAX_REQUESTS_IN_FLIGHT} requests unanswered for {WRITE_STALL_LIMIT:?}: the worker reads no replies"
                    ),
                ));
            }
        };
        let (state, headers, worker_id, out) = (
            state.clone(),
            headers.clone(),
            worker_id.to_string(),
            out.clone(),
        );
        tokio::spawn(async move {
            let reply = answer(&state, &headers, &worker_id, kind, body).await;
            let _ = queue(&out, self::frame(&reply(id))).await;
            drop(permit);
        });
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Result,
    Heartbeat,
    Event,
}

/// The answer to a request frame, as its HTTP endpoint would give it.
async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    worker_id: &str,
    kind: Kind,
    body: Value,
) -> impl FnOnce(u64) -> OrchestratorFrame {
    let obj = match body {
        Value::Object(obj) => Ok(Some(obj)),
        Value::Null => Ok(None),
        _ => Err(ApiError::BadRequest(
            "Invalid JSON body: expected a JSON object".into(),
        )),
    };
    let answered = match obj {
        Err(e) => Err(e),
        Ok(obj) => match kind {
            Kind::Result => worker::accept_result(state, headers, obj)
                .await
                .and_then(to_value),
            Kind::Heartbeat => worker::accept_heartbeat(state, headers, worker_id, obj)
                .await
                .and_then(to_value),
            Kind::Event => worker::accept_event(state, headers, obj).await,
        },
    };
    let (status, body) = match answered {
        Ok(body) => (200, body),
        Err(e) => (
            e.status().as_u16(),
            serde_json::json!({"error": e.public_message()}),
        ),
    };
    move |id| OrchestratorFrame::Reply { id, status, body }
}

fn to_value<T: serde::Serialize>(value: T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Spends credits on tasks; pushes stop notices and plugin revisions.
async fn dispatch(
    state: AppState,
    worker_id: String,
    credits: Arc<Semaphore>,
    out: mpsc::Sender<Message>,
    stop: CancellationToken,
) {
    let mut notices = Notices::new(&state, &worker_id);
    let revision = notices.revisions.borrow_and_update().clone();
    if !send(&out, &OrchestratorFrame::Plugins { revision }).await {
        return;
    }
    let wait = state.engine.settings().max_poll_wait;
    loop {
        let permit = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                permit = credits.acquire() => match permit {
                    Ok(p) => break p,
                    Err(_) => return,
                },
                notice = notices.next() => match notice {
                    Some(message) => if !queue(&out, message).await { stop.cancel(); return },
                    None => return,
                },
            }
        };
        let taken = {
            // A worker host on the channel holds every skill warm.
            let hot = Some(crate::engine::strategy::Hot::All);
            let take = state.engine.next_task_hot(&worker_id, wait, hot);
            tokio::pin!(take);
            loop {
                tokio::select! {
                    biased;
                    taken = &mut take => break taken,
                    _ = stop.cancelled() => return,
                    notice = notices.next() => match notice {
                        Some(message) => if !queue(&out, message).await { stop.cancel(); return },
                        None => return,
                    },
                }
            }
        };
        match taken {
            Ok(Some(task)) => {
                permit.forget();
                if !send(
                    &out,
                    &OrchestratorFrame::Task {
                        task: Box::new(task),
                    },
                )
                .await
                {
                    return;
                }
            }
            // The wait ended empty (or a deploy ended it): the credit stays.
            Ok(None) => drop(permit),
            Err(EngineError::UnknownWorker(_)) => {
                let _ = queue(
                    &out,
                    close(
                        CLOSE_UNKNOWN_WORKER,
                        "this worker is not registered; register, then reconnect",
                    ),
                )
                .await;
                stop.cancel();
                return;
            }
            Err(e) => {
                tracing::error!(worker_id = %worker_id, "taking a task for worker {worker_id} failed: {e}");
                drop(permit);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// What a session tells its worker besides tasks: stop notices, plugin
/// revisions, pings.
struct Notices {
    worker_id: String,
    stops: tokio::sync::broadcast::Receiver<crate::engine::TaskStop>,
    revisions: tokio::sync::watch::Receiver<String>,
    ping: tokio::time::Interval,
}

impl Notices {
    fn new(state: &AppState, worker_id: &str) -> Self {
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        Self {
            worker_id: worker_id.to_string(),
            stops: state.engine.subscribe_stops(),
            revisions: state.engine.registry().subscribe(),
            ping,
        }
    }

    /// The next message to send; `None` when the engine is gone.
    /// Cancel-safe: nothing is lost if the future is dropped.
    async fn next(&mut self) -> Option<Message> {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            tokio::select! {
                notice = self.stops.recv() => match notice {
                    Ok(stop) if stop.worker_id == self.worker_id => {
                        return Some(frame(&OrchestratorFrame::Cancel {
                            task_id: stop.task_id,
                            job_id: stop.job_id.to_string(),
                        }));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => {
                        // Its next heartbeat is answered with what it missed.
                        tracing::warn!(
                            worker_id = %self.worker_id,
                            "the task channel of worker {} missed {n} stop notices; its heartbeats carry them",
                            self.worker_id
                        );
                    }
                    Err(RecvError::Closed) => return None,
                },
                changed = self.revisions.changed() => {
                    changed.ok()?;
                    let revision = self.revisions.borrow_and_update().clone();
                    return Some(frame(&OrchestratorFrame::Plugins { revision }));
                }
                _ = self.ping.tick() => return Some(Message::Ping(Default::default())),
            }
        }
    }
}

/// A frame as a text message (our own types always encode; were one not
/// to, a ping goes instead and the error is logged).
fn frame(frame: &OrchestratorFrame) -> Message {
    match serde_json::to_string(frame) {
        Ok(text) => Message::Text(text.into()),
        Err(e) => {
            tracing::error!("cannot encode a channel frame: {e}");
            Message::Ping(Default::default())
        }
    }
}

async fn send(out: &mpsc::Sender<Message>, message: &OrchestratorFrame) -> bool {
    queue(out, frame(message)).await
}

/// Writes queued frames, flushing once per batch.
async fn write_frames(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outbox: mpsc::Receiver<Message>,
    stop: CancellationToken,
) {
    // Each hand-over to the socket is bounded: a worker that reads nothing
    // ends its session instead of holding this writer.
    let written = |r: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>| {
        if r.is_err() {
            tracing::warn!(
                "a worker's task channel took no frame for {WRITE_STALL_LIMIT:?}; closing it"
            );
        }
        matches!(r, Ok(Ok(())))
    };
    while let Some(first) = outbox.recv().await {
        let closing = matches!(first, Message::Close(_));
        if !written(tokio::time::timeout(WRITE_STALL_LIMIT, sink.feed(first)).await) {
            break;
        }
        // Let the tasks about to answer too (the reply to a result and the
        // next task usually come together) join this write.
        tokio::task::yield_now().await;
        let mut closed = closing;
        while !closed && let Ok(more) = outbox.try_recv() {
            closed = matches!(more, Message::Close(_));
            if !written(tokio::time::timeout(WRITE_STALL_LIMIT, sink.feed(more)).await) {
                stop.cancel();
                return;
            }
        }
        if !written(tokio::time::timeout(WRITE_STALL_LIMIT, sink.flush()).await) || closed {
            break;
        }
    }
    stop.cancel();
    let _ = tokio::time::timeout(WRITE_STALL_LIMIT, sink.close()).await;
}
