//! The [`TaskRunner`]: one task, from the poll to the submitted result
//! (signature check, sandboxed execution through `Plugin::run`, progress
//! events while it runs, result delivery with retries), and the worker's
//! slots and tasks in flight.

use std::time::Duration;

use rxon::{TaskPayload, WorkerEventPayload, error_code};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, Semaphore};

use super::{Backoff, RESULTS_IN_DELIVERY_PER_SLOT, Worker, WorkerSettings, lock};
use crate::client::{ClientError, OrchestratorClient, PolledTask};
use crate::limits::{RESULT_ENVELOPE_BYTES, for_log};
use crate::outcome::TaskOutcome;
use crate::plugin_store::Plugin;
use crate::sandbox::state::EVENT_BACKLOG;
use crate::sandbox::{PluginEvent, Progress, RunOptions, Sandbox, Task};

/// The task slot a channel task holds, given back once the task has run,
/// before its result is sent (see [`super::RESULTS_IN_DELIVERY_PER_SLOT`]).
pub(super) struct Slot {
    permit: tokio::sync::OwnedSemaphorePermit,
    deliveries: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Slot {
    pub(super) fn early(
        permit: tokio::sync::OwnedSemaphorePermit,
        deliveries: &std::sync::Arc<tokio::sync::Semaphore>,
    ) -> Self {
        Self {
            permit,
            deliveries: deliveries.clone(),
        }
    }

    /// Gives the slot back if a delivery permit is free, and returns the
    /// permit to hold until the result is answered: that delivery permit,
    /// or else the slot itself.
    fn release(self, freed: &tokio::sync::Notify) -> tokio::sync::OwnedSemaphorePermit {
        match self.deliveries.try_acquire_owned() {
            Ok(delivery) => {
                drop(self.permit);
                freed.notify_one();
                delivery
            }
            Err(_) => self.permit,
        }
    }
}

/// Runs the tasks a worker takes: its slots, the tasks in flight (with the
/// tokens that stop them), and results in delivery. One per worker.
pub(super) struct TaskRunner {
    sandbox: Sandbox,
    client: OrchestratorClient,
    /// The orchestrator's `ORCHESTRATOR_SECRET_KEY`, when tasks must be signed.
    task_secret: Option<String>,
    /// The object store, for plugins granted `[objects]`.
    objects: Option<Arc<crate::objects::WorkerObjects>>,
    /// The tasks running now (reported in heartbeats), each with the token
    /// that stops it when the orchestrator asks.
    pub(super) in_flight: Mutex<BTreeMap<String, CancellationToken>>,
    /// Wakes the heartbeat loop when the worker goes from idle to busy (it
    /// beats faster while tasks run).
    pub(super) task_started: Notify,
    /// One permit per task slot (tasks taken over the channel hold one).
    pub(super) slots: Arc<Semaphore>,
    /// A slot became free (the channel offers it again).
    pub(super) slot_freed: Notify,
    /// Results being delivered after their task gave its slot back (see
    /// [`RESULTS_IN_DELIVERY_PER_SLOT`]).
    pub(super) deliveries: Arc<Semaphore>,
}

impl Worker {
    /// Runs one task taken from the orchestrator on the plugin that serves
    /// its type, and submits its result. A channel task passes its `slot`,
    /// given back as soon as the task has run.
    pub(super) async fn handle_task(&self, task: PolledTask, slot: Option<Slot>) {
        let plugin = self.plugin_for(&task.payload.task_type);
        self.inner.tasks.handle(task, plugin, slot).await;
    }
}

impl TaskRunner {
    pub(super) fn new(
        sandbox: Sandbox,
        client: OrchestratorClient,
        settings: &WorkerSettings,
    ) -> Self {
        let slots = settings.max_concurrent_tasks.max(1);
        Self {
            sandbox,
            client,
            task_secret: settings.task_secret.clone(),
            objects: settings.objects.clone(),
            in_flight: Mutex::new(BTreeMap::new()),
            task_started: Notify::new(),
            slots: Arc::new(Semaphore::new(slots)),
            slot_freed: Notify::new(),
            deliveries: Arc::new(Semaphore::new(slots * RESULTS_IN_DELIVERY_PER_SLOT)),
        }
    }

    /// The tasks running now.
    pub(super) fn running(&self) -> Vec<String> {
        lock(&self.in_flight).keys().cloned().collect()
    }

    /// Whether a task runs now.
    pub(super) fn busy(&self) -> bool {
        !lock(&self.in_flight).is_empty()
    }

    /// Stops task `task_id`, as the orchestrator asked, if it runs here.
    pub(super) fn cancel(&self, task_id: &str) {
        if let Some(token) = lock(&self.in_flight).get(task_id) {
            tracing::warn!(
                task_id = %task_id,
                "the orchestrator no longer needs task {task_id} (its job was cancelled or moved on); stopping it"
            );
            token.cancel();
        }
    }

    /// Executes one task on `plugin` and submits its result.
    async fn handle(&self, task: PolledTask, plugin: Option<Arc<Plugin>>, slot: Option<Slot>) {
        let PolledTask { payload, raw } = task;
        let params = serde_json::to_string(&payload.params).unwrap_or_else(|_| "{}".into());
        tracing::info!(
            task_id = %payload.task_id,
            job_id = %payload.job_id,
            "received task {} ({}) for job {} with params {}",
            payload.task_id,
            for_log(&payload.task_type),
            payload.job_id,
            rxon::text::preview(&params)
        );
        tracing::debug!(task_id = %payload.task_id, "params of task {}: {params}", payload.task_id);
        if let Some(problem) = self.signature_problem(&payload, raw.as_ref()) {
            tracing::error!(
                task_id = %payload.task_id,
                "refusing task {}: {problem}",
                payload.task_id
            );
            let outcome = TaskOutcome::failed(
                error_code::SECURITY,
                format!("the worker refused the task: {problem}"),
            );
            self.submit(&payload, outcome, None, Duration::ZERO).await;
            return;
        }
        let Some(plugin) = plugin else {
            // Not ours (any more): leave it unreported; the orchestrator puts
            // a task a worker does not list in its heartbeats back in the queue.
            tracing::warn!(
                task_id = %payload.task_id,
                "this worker has no plugin for task type {}; not running task {} and leaving it to the orchestrator to hand to another worker",
                for_log(&payload.task_type),
                payload.task_id
            );
            return;
        };
        let cancel = CancellationToken::new();
        let running = {
            let mut in_flight = lock(&self.in_flight);
            in_flight.insert(payload.task_id.clone(), cancel.clone());
            in_flight.len()
        };
        crate::metrics::gauge!("worker_tasks_in_flight").set(running as f64);
        // The heartbeat loop (a thread of its own) only needs to hear that the
        // worker went from idle to busy: it beats faster while tasks run.
        if running == 1 {
            self.task_started.notify_one();
        }
        let started = std::time::Instant::now();
        let written = crate::sandbox::objects::Written::default();
        let outcome = self
            .execute(&payload, &plugin, params, &cancel, &written)
            .await;
        let elapsed = started.elapsed();
        let labels = [
            ("plugin", plugin.label()),
            ("skill", crate::metrics::skill_label(&payload.task_type)),
        ];
        crate::metrics::histogram!("worker_task_duration_seconds", &labels)
            .record(elapsed.as_secs_f64());
        let outcome_label = crate::metrics::outcome_label(match &outcome {
            TaskOutcome::Cancelled => rxon::status::CANCELLED,
            TaskOutcome::Completed { status, .. } => status,
            TaskOutcome::Failed { code, .. } => code,
        });
        crate::metrics::counter!(
            "worker_tasks_total",
            "plugin" => labels[0].1.clone(),
            "skill" => labels[1].1.clone(),
            "outcome" => outcome_label
        )
        .increment(1);
        match &outcome {
            TaskOutcome::Cancelled => {
                // The job was cancelled: the orchestrator ignores any result.
                tracing::warn!(
                    task_id = %payload.task_id,
                    "task {} stopped after {elapsed:.1?}: its job was cancelled or moved on; its slot is free",
                    payload.task_id
                );
                self.task_ended(&payload.task_id);
                return;
            }
            TaskOutcome::Completed { status, data } => {
                tracing::info!(
                    task_id = %payload.task_id,
                    "task {} done in {elapsed:.1?}: {status} {}",
                    payload.task_id,
                    rxon::text::json_preview(data)
                );
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let data = serde_json::to_string(data).unwrap_or_default();
                    tracing::debug!(task_id = %payload.task_id, "data of task {}: {data}", payload.task_id);
                }
            }
            TaskOutcome::Failed { code, message, .. } => tracing::warn!(
                task_id = %payload.task_id,
                "task {} failed in {elapsed:.1?}: {code}: {}",
                payload.task_id,
                for_log(message)
            ),
        }
        let held = slot.map(|slot| slot.release(&self.slot_freed));
        let files = match &outcome {
            TaskOutcome::Completed { data, .. } => written
                .lock()
                .ok()
                .and_then(|w| crate::sandbox::objects::files_named(data, &w)),
            _ => None,
        };
        self.submit(&payload, outcome, files, elapsed).await;
        self.task_ended(&payload.task_id);
        drop(held);
    }

    fn task_ended(&self, task_id: &str) {
        let running = {
            let mut in_flight = lock(&self.in_flight);
            in_flight.remove(task_id);
            in_flight.len()
        };
        crate::metrics::gauge!("worker_tasks_in_flight").set(running as f64);
    }

    /// Whether tasks must carry the orchestrator's signature (this worker
    /// was given its secret); only then is a task's JSON kept as received.
    pub(super) fn checks_signatures(&self) -> bool {
        self.task_secret.is_some()
    }

    /// Why the task's `sig` is not acceptable, when this worker was given
    /// the orchestrator's secret.
    fn signature_problem(
        &self,
        payload: &TaskPayload,
        raw: Option<&serde_json::Value>,
    ) -> Option<String> {
        let secret = self.task_secret.as_deref()?;
        let Some(raw) = raw else {
            return Some("the task's JSON as received was not kept to check its `sig`".into());
        };
        match rxon::verify_task(raw, secret) {
            Ok(()) => None,
            Err(rxon::SignError::MissingSignature) => Some(
                "it carries no orchestrator signature (`sig`), and this worker requires one (ORCHESTRATOR_SECRET_KEY is set)"
                    .into(),
            ),
            Err(_) => Some(format!(
                "its orchestrator signature (`sig` {:?}) does not match; is ORCHESTRATOR_SECRET_KEY the same on both sides?",
                for_log(payload.sig.as_deref().unwrap_or_default())
            )),
        }
    }

    async fn execute(
        &self,
        payload: &TaskPayload,
        plugin: &Plugin,
        params: String,
        cancel: &CancellationToken,
        written: &crate::sandbox::objects::Written,
    ) -> TaskOutcome {
        let task = Task {
            task_id: payload.task_id.clone(),
            job_id: payload.job_id.clone(),
            task_type: payload.task_type.clone(),
            params,
        };
        let (progress_tx, progress_rx) = watch::channel(None);
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(EVENT_BACKLOG);
        let options = RunOptions {
            progress: Some(progress_tx),
            events: Some(events_tx),
            cancel: Some(cancel.clone()),
            objects: self.objects.clone().map(|o| (o, written.clone())),
        };
        // Events go out in order while the task runs, and all of them
        // before its result: the run ends when both the task and the event
        // forwarder have (the forwarder ends once the task's instance,
        // which holds the sender, is gone).
        let run = async {
            let (outcome, ()) = tokio::join!(
                plugin.run(&self.sandbox, &task, options),
                self.forward_events(payload, events_rx)
            );
            outcome
        };
        // The progress forwarder never ends; it is polled alongside the
        // task (no task of its own to spawn) and dropped with it.
        let forward = self.forward_progress(payload, progress_rx);
        tokio::select! {
            biased;
            outcome = run => outcome,
            _ = forward => unreachable_outcome(),
        }
    }

    /// Sends each event the plugin emits as an RXON worker event about its
    /// task, in order, until the task's instance is gone.
    async fn forward_events(
        &self,
        payload: &TaskPayload,
        mut rx: tokio::sync::mpsc::Receiver<PluginEvent>,
    ) {
        while let Some(ev) = rx.recv().await {
            let event = self.event_about(payload, ev.event_type, ev.payload);
            if let Err(e) = self.client.send_event(&event).await {
                tracing::warn!(task_id = %payload.task_id, "event {} not delivered: {e}", event.event_type);
            }
        }
    }

    /// An RXON event from this worker about `payload`'s task.
    fn event_about(
        &self,
        payload: &TaskPayload,
        event_type: String,
        body: serde_json::Map<String, serde_json::Value>,
    ) -> WorkerEventPayload {
        let worker_id = self.client.worker_id().to_string();
        WorkerEventPayload {
            event_id: uuid::Uuid::new_v4().to_string(),
            worker_id: worker_id.clone(),
            origin_worker_id: worker_id,
            event_type,
            payload: body,
            target_job_id: Some(payload.job_id.clone()),
            target_task_id: Some(payload.task_id.clone()),
            origin_task_id: Some(payload.task_id.clone()),
            security: None,
            timestamp: None,
        }
    }

    /// Sends the task's latest progress as an RXON `progress` event at most
    /// once a second while it runs; fast tasks send none. Never returns.
    async fn forward_progress(
        &self,
        payload: &TaskPayload,
        mut rx: watch::Receiver<Option<Progress>>,
    ) {
        // First look after a second (no timer is armed before that).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if !rx.has_changed().unwrap_or(false) {
                continue;
            }
            let Some((fraction, message)) = rx.borrow_and_update().clone() else {
                continue;
            };
            let body = serde_json::json!({"progress": fraction, "message": message})
                .as_object()
                .cloned()
                .unwrap_or_default();
            let event = self.event_about(payload, rxon::EVENT_PROGRESS.into(), body);
            if let Err(e) = self.client.send_event(&event).await {
                tracing::debug!(task_id = %payload.task_id, "progress event not delivered: {e}");
            }
        }
    }

    /// Turns an outcome into a signed result and submits it, retrying while
    /// the orchestrator is unreachable. A result too large to send becomes a
    /// `RESOURCE_EXHAUSTED_ERROR` failure that names the sizes.
    async fn submit(
        &self,
        payload: &TaskPayload,
        outcome: TaskOutcome,
        files: Option<rxon::FilesByKey>,
        elapsed: Duration,
    ) {
        let worker_id = self.client.worker_id().to_string();
        let limit = self.sandbox.config.max_result_bytes + RESULT_ENVELOPE_BYTES;
        let build = |outcome: TaskOutcome| {
            let mut result = result_of(outcome, &payload.job_id, &payload.task_id, &worker_id);
            result.data_metadata = files.clone();
            result.costs = Some(
                [(
                    "execution_time_seconds".to_string(),
                    serde_json::json!(elapsed.as_secs_f64()),
                )]
                .into_iter()
                .collect(),
            );
            result
        };
        let mut result = build(outcome);
        let mut replaced = false;
        let mut backoff = Backoff::between(Duration::from_secs(1), Duration::from_secs(16));
        let task_id = payload.task_id.as_str();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let small = result
                .data
                .as_ref()
                .is_none_or(|d| crate::limits::json_within(d, crate::limits::INLINE_JSON_BYTES));
            let encoded = match small {
                // No copy of the result for one encoded where it is.
                true => self.client.encode_signed_here(&result),
                false => self.client.encode_signed(result.clone()).await,
            };
            let body = match encoded {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(task_id, "result of task {task_id} cannot be encoded: {e}");
                    return;
                }
            };
            if body.len() > limit && !replaced {
                let why = format!(
                    "the task's result is {} bytes once encoded; results may take at most {limit} bytes \
                     (the plugin may hand the host {} bytes, plus room for the envelope)",
                    body.len(),
                    self.sandbox.config.max_result_bytes
                );
                tracing::error!(
                    task_id,
                    "task {task_id}: {why}; reporting a failure instead"
                );
                result = build(TaskOutcome::failed(error_code::RESOURCE_EXHAUSTED, why));
                replaced = true;
                continue;
            }
            match self.client.submit_encoded_result(body).await {
                Ok(response) if response.status == "ignored" => {
                    tracing::warn!(
                        task_id,
                        "orchestrator ignored the result of task {task_id}: {} {}",
                        response.reason.unwrap_or_default(),
                        for_log(&response.message.unwrap_or_default())
                    );
                    return;
                }
                Ok(_) => {
                    tracing::info!(task_id, "result of task {task_id} accepted");
                    return;
                }
                // Retrying the same body cannot help: report why instead.
                Err(ClientError::PayloadTooLarge { bytes, message }) if !replaced => {
                    let why = format!(
                        "the orchestrator refused the task's {bytes}-byte result as too large (413: {message}); \
                         make the result smaller, or raise the orchestrator's body limit and lower this worker's --max-result-bytes to match"
                    );
                    tracing::error!(
                        task_id,
                        "task {task_id}: {why}; reporting a failure instead"
                    );
                    result = build(TaskOutcome::failed(error_code::RESOURCE_EXHAUSTED, why));
                    replaced = true;
                }
                Err(
                    e @ (ClientError::Unreachable { .. }
                    | ClientError::Http { .. }
                    | ClientError::Throttled { .. }),
                ) if attempt < 6 => {
                    let delay = backoff.after(&e);
                    tracing::warn!(
                        task_id,
                        "submitting the result failed: {e}; retry {attempt} in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(
                        task_id,
                        "result of task {task_id} not delivered: {e}; the orchestrator will hand the task out again once this worker stops listing it"
                    );
                    return;
                }
            }
        }
    }
}

/// The forwarder "ending" (it cannot): a permanent failure, so a future
/// change that lets it end is noticed.
fn unreachable_outcome() -> TaskOutcome {
    TaskOutcome::failed(
        error_code::PERMANENT,
        "internal error: the progress forwarder stopped",
    )
}

/// The RXON result of an outcome (without costs or signature).
fn result_of(
    outcome: TaskOutcome,
    job_id: &str,
    task_id: &str,
    worker_id: &str,
) -> rxon::TaskResult {
    let (status, data, error) = match outcome {
        TaskOutcome::Cancelled => (rxon::status::CANCELLED.to_string(), None, None),
        TaskOutcome::Completed { status, data } => (status, Some(data), None),
        TaskOutcome::Failed {
            code,
            message,
            details,
        } => (
            rxon::status::FAILURE.to_string(),
            Some(serde_json::Map::new()),
            Some(rxon::TaskErrorInfo {
                code,
                message,
                details: details.as_deref().map(crate::outcome::details_json),
            }),
        ),
    };
    rxon::TaskResult {
        job_id: job_id.into(),
        task_id: task_id.into(),
        worker_id: Some(worker_id.into()),
        origin_worker_id: Some(worker_id.into()),
        status: Some(status),
        data,
        error,
        data_metadata: None,
        costs: None,
        metadata: None,
        security: None,
        timestamp: None,
    }
}
