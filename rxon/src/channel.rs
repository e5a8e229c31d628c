//! The persistent worker channel (our extension of RXON): one WebSocket at
//! `/_worker/ws/{worker_id}` carrying task pushes, results, heartbeats,
//! progress events and cancellations, instead of a long-poll and a `POST`
//! per task.
//!
//! RXON reserves that path and avtomatika serves it (for worker events and
//! cancel commands only), so the channel is negotiated: the worker asks for
//! the subprotocol [`SUBPROTOCOL`], and only an orchestrator that selects it
//! speaks this channel. A worker whose request is answered any other way
//! (avtomatika accepts the socket without the subprotocol; an old
//! orchestrator answers 404) keeps the HTTP long-poll.
//!
//! Every frame is one JSON text message, tagged by `type`:
//!
//! | direction | frame | meaning |
//! |---|---|---|
//! | worker → | `ready {slots}` | `slots` more tasks may be pushed (credit) |
//! | worker → | `result {id, body}` | `body`: the signed `TaskResult`, exactly as `POST /_worker/tasks/result` takes it |
//! | worker → | `heartbeat {id, body}` | `body`: the signed `Heartbeat` of `PATCH /_worker/workers/{id}` |
//! | worker → | `event {id, body}` | `body`: the signed `WorkerEventPayload` of `POST /_worker/events` |
//! | ← orchestrator | `task {task}` | a `TaskPayload`, as a poll answers it (with its `sig`) |
//! | ← orchestrator | `cancel {task_id, job_id}` | stop that task: its job was cancelled or has ended |
//! | ← orchestrator | `reply {id, status, body}` | the answer to request `id`: the HTTP status and body the matching endpoint gives |
//! | ← orchestrator | `plugins {revision}` | the desired plugin set changed (see [`crate::deploy`]) |
//!
//! Bodies are signed as their HTTP counterparts are (timestamp, nonce,
//! HMAC), and the socket is opened with the same credential headers.
//! The orchestrator closes the socket with one of the `CLOSE_*` codes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::TaskPayload;

/// The WebSocket subprotocol of the channel.
pub const SUBPROTOCOL: &str = "taskworker-channel.v1";

/// Path of the channel for a worker.
pub fn path(worker_id: &str) -> String {
    format!("/_worker/ws/{worker_id}")
}

/// Header of the upgrade answer: the largest frame the orchestrator reads
/// (its body limit). A worker answers a larger request itself with a 413,
/// as the HTTP endpoint would, instead of sending it (and losing the channel).
pub const HEADER_MAX_FRAME: &str = "X-Max-Frame-Bytes";

/// Most task credits a worker may hold on one channel.
pub const MAX_CREDITS: u32 = 1024;
/// Most bytes either end reads from the socket at once (the WebSocket read
/// buffer). Frames are usually a few KiB, and tungstenite zeroes this much
/// before every read: its 128 KiB default cost a 128 KiB memset per read.
/// Larger frames are read in several reads.
pub const READ_BUFFER_BYTES: usize = 16 << 10;

/// Closed: the worker is not registered (register, then reconnect).
pub const CLOSE_UNKNOWN_WORKER: u16 = 4404;
/// Closed: a newer channel of the same worker replaced this one.
pub const CLOSE_REPLACED: u16 = 4409;
/// Closed: the worker broke the protocol (the reason names how).
pub const CLOSE_PROTOCOL: u16 = 1008;
/// Closed: the orchestrator is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// What a worker sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerFrame {
    Ready { slots: u32 },
    Result { id: u64, body: Value },
    Heartbeat { id: u64, body: Value },
    Event { id: u64, body: Value },
}

/// What an orchestrator sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrchestratorFrame {
    Task { task: Box<TaskPayload> },
    Cancel { task_id: String, job_id: String },
    Reply { id: u64, status: u16, body: Value },
    Plugins { revision: String },
}

/// A request frame built around a body already encoded as JSON (the
/// worker signs and encodes results off the async threads; they are not
/// parsed again to be framed).
pub fn request_frame(kind: &str, id: u64, body: &[u8]) -> Option<String> {
    let body = std::str::from_utf8(body).ok()?;
    let kind = serde_json::to_string(kind).ok()?;
    Some(format!(r#"{{"type":{kind},"id":{id},"body":{body}}}"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_parse_as_worker_frames() {
        let frame = request_frame("result", 7, br#"{"job_id":"j","status":"success"}"#).unwrap();
        match serde_json::from_str::<WorkerFrame>(&frame).unwrap() {
            WorkerFrame::Result { id, body } => {
                assert_eq!(id, 7);
                assert_eq!(body["job_id"], "j");
            }
            other => panic!("{other:?}"),
        }
        let ready: WorkerFrame = serde_json::from_str(r#"{"type":"ready","slots":5}"#).unwrap();
        assert!(matches!(ready, WorkerFrame::Ready { slots: 5 }));
        assert!(serde_json::from_str::<WorkerFrame>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn orchestrator_frames_are_tagged() {
        let frame = OrchestratorFrame::Plugins {
            revision: "3".into(),
        };
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"plugins","revision":"3"}"#
        );
    }
}
