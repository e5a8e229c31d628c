//! Taking tasks over the persistent task channel ([`crate::channel`]).
//!
//! The worker opens the channel, offers its free slots as credits, runs
//! each pushed task on a slot of its own and offers the slot again when the
//! task is done. Results, heartbeats and progress go through the channel
//! while it is open ([`crate::client`] routes them), and over HTTP when it
//! is not. A lost channel is reopened with a growing delay; tasks running
//! meanwhile carry on and deliver their results over HTTP. An orchestrator
//! that does not offer the channel (e.g. avtomatika) is polled over HTTP.

use futures_util::{SinkExt, StreamExt};
use rxon::channel::{CLOSE_UNKNOWN_WORKER, OrchestratorFrame};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Worker};
use crate::channel::{ConnectError, Link, SILENCE_LIMIT, Socket, WRITE_STALL_LIMIT};
use crate::client::PolledTask;
use crate::limits::for_log;

/// Frames queued for the channel's writer.
const OUTBOX: usize = 256;
/// Most time without a frame from this end (the orchestrator closes a
/// channel silent for 60 s).
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(20);

/// How a channel session ended.
enum Ended {
    Shutdown,
    /// The orchestrator forgot this worker: register, then reopen.
    Unregistered,
    Lost,
}

impl Worker {
    /// Serves tasks over the channel (reopened when lost) until `shutdown`,
    /// or by HTTP long-poll if the orchestrator does not offer it. Returns
    /// once every task taken has finished.
    pub(super) async fn serve_channel(&self, shutdown: &CancellationToken) {
        let inner = &self.inner;
        let mut backoff = Backoff::new(&inner.settings);
        loop {
            let seen = inner.registrations.done();
            let client = &inner.client;
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                opened = crate::channel::connect(client.base_url(), client.worker_id(), client.token()) => opened,
            };
            let ended = match opened {
                Ok((socket, max_frame)) => {
                    backoff.reset();
                    tracing::info!(
                        "task channel open to {}; polling for tasks started ({} concurrent, pushed over the channel)",
                        client.base_url(),
                        inner.settings.max_concurrent_tasks
                    );
                    self.channel_session(socket, max_frame, shutdown).await
                }
                Err(e @ ConnectError::NotOffered(_)) => {
                    tracing::info!("{e}; taking tasks by HTTP long-poll instead");
                    self.poll_over_http(shutdown).await;
                    break;
                }
                Err(ConnectError::UnknownWorker(_)) => Ended::Unregistered,
                Err(e @ (ConnectError::Failed(_) | ConnectError::Unreachable(_))) => {
                    if matches!(e, ConnectError::Unreachable(_)) {
                        client.failed_over();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!("cannot open the task channel: {e}; retrying in {delay:?}");
                    if !pause(delay, shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            match ended {
                Ended::Shutdown => break,
                Ended::Unregistered => {
                    tracing::warn!(
                        "the orchestrator does not know this worker any more; registering before reopening the task channel"
                    );
                    inner.registrations.request(seen);
                    if !inner.registrations.wait_newer(seen, shutdown).await {
                        break;
                    }
                }
                Ended::Lost => {
                    let delay = backoff.next_delay();
                    tracing::warn!("task channel lost; reopening in {delay:?}");
                    if !pause(delay, shutdown).await {
                        break;
                    }
                }
            }
        }
        // Every slot back and every delivery done: the tasks taken have
        // finished and reported.
        let all = inner.settings.max_concurrent_tasks.max(1) as u32;
        let _ = inner.tasks.slots.acquire_many(all).await;
        let _ = inner
            .tasks
            .deliveries
            .acquire_many(all * super::RESULTS_IN_DELIVERY_PER_SLOT as u32)
            .await;
    }

    async fn channel_session(
        &self,
        socket: Socket,
        max_frame: usize,
        shutdown: &CancellationToken,
    ) -> Ended {
        let inner = &self.inner;
        let (sink, mut stream) = socket.split();
        let (out, outbox) = mpsc::channel::<Message>(OUTBOX);
        let link = Link::new(out.clone(), max_frame);
        inner.client.set_link(Some(link.clone()));
        crate::metrics::gauge!("worker_task_channel_open").set(1.0);
        let writer = tokio::spawn(write_frames(sink, outbox));
        // Credits the orchestrator holds and has not spent.
        let mut offered: usize = 0;
        // An unsolicited pong now and then tells the orchestrator this end is
        // alive however long the heartbeat interval (it closes silent channels).
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.reset();
        let ended = loop {
            let free = inner.tasks.slots.available_permits();
            if free > offered {
                let frame = format!(r#"{{"type":"ready","slots":{}}}"#, free - offered);
                if !link.send(frame).await {
                    break Ended::Lost;
                }
                offered = free;
            }
            let message = tokio::select! {
                _ = shutdown.cancelled() => break Ended::Shutdown,
                _ = inner.tasks.slot_freed.notified() => continue,
                _ = keepalive.tick() => {
                    let queued = tokio::time::timeout(WRITE_STALL_LIMIT, out.send(Message::Pong(Default::default())));
                    if !matches!(queued.await, Ok(Ok(()))) {
                        tracing::warn!("the task channel took no frame for {WRITE_STALL_LIMIT:?}; reopening it");
                        break Ended::Lost;
                    }
                    continue;
                }
                message = tokio::time::timeout(SILENCE_LIMIT, stream.next()) => message,
            };
            let text = match message {
                Err(_) => {
                    tracing::warn!("nothing heard on the task channel for {SILENCE_LIMIT:?}");
                    break Ended::Lost;
                }
                Ok(None) => break Ended::Lost,
                Ok(Some(Err(e))) => {
                    tracing::warn!("the task channel failed: {e}");
                    break Ended::Lost;
                }
                Ok(Some(Ok(Message::Text(text)))) => text,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or_default();
                    tracing::info!(
                        "the orchestrator closed the task channel ({code}: {})",
                        for_log(&reason)
                    );
                    break if code == CLOSE_UNKNOWN_WORKER {
                        Ended::Unregistered
                    } else {
                        Ended::Lost
                    };
                }
                Ok(Some(Ok(_))) => continue,
            };
            match self.take_frame(text.as_str(), &link, offered) {
                Ok(Some(())) => offered -= 1,
                Ok(None) => {}
                Err(why) => {
                    tracing::error!("unusable frame on the task channel ({why}); reopening it");
                    break Ended::Lost;
                }
            }
        };
        inner.client.set_link(None);
        crate::metrics::gauge!("worker_task_channel_open").set(0.0);
        link.close();
        if matches!(ended, Ended::Shutdown) {
            let _ = out.send(Message::Close(None)).await;
        }
        drop(out);
        drop(link);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
        ended
    }

    /// Acts on one frame; `Some` when it was a task.
    /// A task when no credit is outstanding (`offered` is 0) breaks the
    /// protocol: the channel is given up rather than the task queued, so a
    /// peer cannot make this worker hold tasks without bound.
    fn take_frame(&self, text: &str, link: &Link, offered: usize) -> Result<Option<()>, String> {
        let past_credits =
            || Err("the orchestrator pushed a task past the slots this worker offered".to_string());
        let frame = match self.inner.tasks.checks_signatures() {
            // The task's JSON as received is what its `sig` covers.
            true => {
                let mut value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
                if value.get("type").and_then(Value::as_str) == Some("task") {
                    let raw = value
                        .get_mut("task")
                        .map(Value::take)
                        .ok_or("a task frame without its task")?;
                    let payload = serde::Deserialize::deserialize(&raw)
                        .map_err(|e: serde_json::Error| e.to_string())?;
                    if offered == 0 {
                        return past_credits();
                    }
                    self.start_task(PolledTask {
                        payload,
                        raw: Some(raw),
                    });
                    return Ok(Some(()));
                }
                serde_json::from_value::<OrchestratorFrame>(value)
            }
            // Nothing to check: typed in one pass, nothing kept.
            false => serde_json::from_str::<OrchestratorFrame>(text),
        };
        match frame.map_err(|e| e.to_string())? {
            OrchestratorFrame::Reply { id, status, body } => link.complete(id, (status, body)),
            OrchestratorFrame::Cancel { task_id, .. } => {
                self.inner.tasks.cancel(&task_id);
            }
            OrchestratorFrame::Plugins { revision } => {
                self.inner.client.note_revision_value(&revision)
            }
            OrchestratorFrame::Task { task } => {
                if offered == 0 {
                    return past_credits();
                }
                self.start_task(PolledTask {
                    payload: *task,
                    raw: None,
                });
                return Ok(Some(()));
            }
        }
        Ok(None)
    }

    /// Runs a pushed task on a slot of its own.
    fn start_task(&self, task: PolledTask) {
        let slots = self.inner.tasks.slots.clone();
        let permit = slots.clone().try_acquire_owned();
        let worker = self.clone();
        tokio::spawn(async move {
            // A credit was outstanding, so a slot is free or about to be
            // (a task that just ended returns its slot as it reports).
            let _permit = match permit {
                Ok(p) => p,
                Err(_) => match slots.acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let slot = super::tasks::Slot::early(_permit, &worker.inner.tasks.deliveries);
            worker.handle_task(task, Some(slot)).await;
            worker.inner.tasks.slot_freed.notify_one();
        });
    }
}

/// Waits `delay`; false when `shutdown` came first.
async fn pause(delay: std::time::Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Writes queued frames, flushing once per batch (results that finish
/// together leave in one write).
async fn write_frames(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    mut outbox: mpsc::Receiver<Message>,
) {
    // A socket that takes nothing for WRITE_STALL_LIMIT is given up (the
    // session then ends; requests waiting go over HTTP).
    let stalled = |what: &str| {
        tracing::warn!("the task channel took no {what} for {WRITE_STALL_LIMIT:?}; giving it up");
    };
    while let Some(first) = outbox.recv().await {
        match tokio::time::timeout(WRITE_STALL_LIMIT, sink.feed(first)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return stalled("frame"),
        }
        // Let the frames about to follow (a result's slot offered again)
        // join this write.
        tokio::task::yield_now().await;
        while let Ok(more) = outbox.try_recv() {
            match tokio::time::timeout(WRITE_STALL_LIMIT, sink.feed(more)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => return stalled("frame"),
            }
        }
        match tokio::time::timeout(WRITE_STALL_LIMIT, sink.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => return stalled("flush"),
        }
    }
    let _ = sink.close().await;
}
