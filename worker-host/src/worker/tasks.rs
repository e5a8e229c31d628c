//! One task, from the poll to the submitted result: sandboxed execution,
//! progress events while it runs, and result delivery with retries.

use std::time::Duration;

use rxon::{TaskPayload, WorkerEventPayload};
use tokio::sync::watch;

use super::{Backoff, Worker, lock};
use crate::client::ClientError;
use crate::outcome::TaskOutcome;
use crate::sandbox::state::Progress;
use crate::sandbox::{SandboxEngine, TaskInput, task};

impl Worker {
    /// Executes one task and submits its result.
    pub(super) async fn handle_task(&self, payload: TaskPayload) {
        let inner = &self.inner;
        let params = serde_json::Value::Object(payload.params.clone()).to_string();
        tracing::info!(
            task_id = %payload.task_id,
            job_id = %payload.job_id,
            "received task {} ({}) for job {} with params {params}",
            payload.task_id,
            payload.task_type,
            payload.job_id
        );
        lock(&inner.in_flight).insert(payload.task_id.clone());
        let started = std::time::Instant::now();
        let outcome = self.execute(&payload, params).await;
        let elapsed = started.elapsed();
        match &outcome {
            TaskOutcome::Completed { status, data } => tracing::info!(
                task_id = %payload.task_id,
                "task {} done in {elapsed:.1?}: {status} {}",
                payload.task_id,
                serde_json::Value::Object(data.clone())
            ),
            TaskOutcome::Failed { code, message } => tracing::warn!(
                task_id = %payload.task_id,
                "task {} failed in {elapsed:.1?}: {code}: {message}",
                payload.task_id
            ),
        }
        let mut result =
            outcome.into_result(&payload.job_id, &payload.task_id, inner.client.worker_id());
        result.costs = Some(
            [(
                "execution_time_seconds".to_string(),
                serde_json::json!(elapsed.as_secs_f64()),
            )]
            .into_iter()
            .collect(),
        );
        self.submit_with_retries(&result).await;
        lock(&inner.in_flight).remove(&payload.task_id);
    }

    async fn execute(&self, payload: &TaskPayload, params: String) -> TaskOutcome {
        let inner = &self.inner;
        let plugins = self.plugins();
        let Some(plugin) = plugins.get(&payload.task_type) else {
            return TaskOutcome::failed(
                rxon::error_code::PERMANENT,
                format!(
                    "this worker has no plugin for task type {}",
                    payload.task_type
                ),
            );
        };
        let input = TaskInput {
            task_id: payload.task_id.clone(),
            job_id: payload.job_id.clone(),
            task_type: payload.task_type.clone(),
            params,
        };
        let (progress_tx, progress_rx) = watch::channel(None);
        let forwarder = tokio::spawn(self.clone().forward_progress(payload.clone(), progress_rx));
        let outcome = task::run_task(&inner.engine, &plugin.pre, &input, progress_tx).await;
        forwarder.abort();
        outcome
    }

    /// Sends the task's latest progress as an RXON `progress` event at most
    /// once a second while it runs; fast tasks send none.
    async fn forward_progress(
        self,
        payload: TaskPayload,
        mut rx: watch::Receiver<Option<Progress>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tick.tick().await;
            if !rx.has_changed().unwrap_or(false) {
                continue;
            }
            let Some((fraction, message)) = rx.borrow_and_update().clone() else {
                continue;
            };
            let worker_id = self.inner.client.worker_id().to_string();
            let event = WorkerEventPayload {
                event_id: uuid::Uuid::new_v4().to_string(),
                worker_id: worker_id.clone(),
                origin_worker_id: worker_id,
                event_type: "progress".into(),
                payload: serde_json::json!({"progress": fraction, "message": message})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                target_job_id: Some(payload.job_id.clone()),
                target_task_id: Some(payload.task_id.clone()),
                origin_task_id: Some(payload.task_id.clone()),
                security: None,
                timestamp: None,
            };
            if let Err(e) = self.inner.client.send_event(&event).await {
                tracing::debug!(task_id = %payload.task_id, "progress event not delivered: {e}");
            }
        }
    }

    async fn submit_with_retries(&self, result: &rxon::TaskResult) {
        let mut backoff = Backoff {
            next: Duration::from_secs(1),
            min: Duration::from_secs(1),
            max: Duration::from_secs(16),
        };
        for attempt in 1..=6 {
            match self.inner.client.submit_result(result).await {
                Ok(response) if response.status == "ignored" => {
                    tracing::warn!(
                        task_id = %result.task_id,
                        "orchestrator ignored the result of task {}: {} {}",
                        result.task_id,
                        response.reason.unwrap_or_default(),
                        response.message.unwrap_or_default()
                    );
                    return;
                }
                Ok(_) => {
                    tracing::info!(task_id = %result.task_id, "result of task {} accepted", result.task_id);
                    return;
                }
                Err(e @ (ClientError::Unreachable { .. } | ClientError::Http { .. }))
                    if attempt < 6 =>
                {
                    let delay = backoff.next_delay();
                    tracing::warn!(task_id = %result.task_id, "submitting the result failed: {e}; retry {attempt} in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(task_id = %result.task_id, "result of task {} lost: {e}", result.task_id);
                    return;
                }
            }
        }
    }
}

/// Runs one task locally (the `run` subcommand); no orchestrator involved.
pub async fn run_local(
    engine: &SandboxEngine,
    plugin: &crate::plugin_store::Plugin,
    task_type: &str,
    params: &str,
) -> TaskOutcome {
    let input = TaskInput {
        task_id: format!("local-{}", uuid::Uuid::new_v4()),
        job_id: "local".into(),
        task_type: task_type.into(),
        params: params.into(),
    };
    let (progress, _) = watch::channel(None);
    task::run_task(engine, &plugin.pre, &input, progress).await
}
