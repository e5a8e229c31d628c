//! Jobs: status, the task in flight, history. Serialized as-is into storage.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

pub type Object = Map<String, Value>;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Created with a later start (`run_at`, `delay_seconds`): it starts at
    /// its `wake_at`.
    Scheduled,
    Pending,
    WaitingForWorker,
    Running,
    AwaitingRetry,
    WaitingForParallelTasks,
    /// In a `sleep` state until `wake_at`.
    Sleeping,
    /// In a `wait` state with `approval`: a human's decision moves it.
    WaitingForHuman,
    /// In a `wait` state: a client's signal moves it.
    WaitingForSignal,
    /// In a `run` state: its child job runs.
    WaitingForSubJob,
    Finished,
    Failed,
    Quarantined,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 14] = [
        Self::Scheduled,
        Self::Pending,
        Self::WaitingForWorker,
        Self::Running,
        Self::AwaitingRetry,
        Self::WaitingForParallelTasks,
        Self::Sleeping,
        Self::WaitingForHuman,
        Self::WaitingForSignal,
        Self::WaitingForSubJob,
        Self::Finished,
        Self::Failed,
        Self::Quarantined,
        Self::Cancelled,
    ];

    /// The statuses a job ends in.
    pub const TERMINAL: [JobStatus; 4] = [
        Self::Finished,
        Self::Failed,
        Self::Quarantined,
        Self::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Pending => "pending",
            Self::WaitingForWorker => "waiting_for_worker",
            Self::Running => "running",
            Self::AwaitingRetry => "awaiting_retry",
            Self::WaitingForParallelTasks => "waiting_for_parallel_tasks",
            Self::Sleeping => "sleeping",
            Self::WaitingForHuman => "waiting_for_human",
            Self::WaitingForSignal => "waiting_for_signal",
            Self::WaitingForSubJob => "waiting_for_sub_job",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Quarantined => "quarantined",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Self::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown status {s:?}; use one of {}", all.join(", "))
            })
    }
}

/// What a client may attach to a job besides its data, as avtomatika
/// clients send them: `metadata` and `security` (opaque objects, passed in
/// every task payload and returned on the job and in its webhook),
/// `policy` (`allowed_skills`: the task types the job may dispatch) and
/// `max_transitions` (its own bound on state changes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub security: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub policy: Option<Object>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_transitions: Option<u32>,
    /// Its tasks' priority unless a blueprint state gives one (higher
    /// first; -1000 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<f64>,
    /// Worker event types also sent to the job's `webhook_url` as
    /// `worker_event:<type>` (`"*"`: every type but `progress`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_events: Vec<String>,
}

impl JobOptions {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether worker events of `event_type` go to the job's webhook.
    pub fn forwards_event(&self, event_type: &str) -> bool {
        self.webhook_events
            .iter()
            .any(|t| t == "*" || t == event_type)
    }

    /// The task types `policy.allowed_skills` allows (`None`: any).
    pub fn allowed_skills(&self) -> Option<Vec<&str>> {
        let list = self.policy.as_ref()?.get("allowed_skills")?.as_array()?;
        Some(list.iter().filter_map(Value::as_str).collect())
    }
}

/// A `map` state under way: its list, what is dispatched, what came back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MapRun {
    /// The list, as `over` gave it on entering the state.
    pub items: Vec<Value>,
    /// Index of the next element to dispatch.
    pub next: u32,
    /// Elements done (succeeded or failed for good).
    pub done: u32,
    /// Each element's result, in input order (`null` until it succeeds).
    pub results: Vec<Value>,
    /// Elements that failed for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<MapFailure>,
    /// Bytes of the results collected so far (bounded per job).
    #[serde(default)]
    pub result_bytes: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskRecord {
    /// Whether a take must check it against the worker before handing it
    /// out (it has a `requires`, a concurrency key, a rate key or a
    /// strategy).
    pub fn constrained(&self) -> bool {
        self.requires.is_some()
            || self.concurrency.is_some()
            || self.rate.is_some()
            || self.strategy.is_some()
    }
}

fn is_zero_f64(n: &f64) -> bool {
    *n == 0.0
}

/// Where a child job reports its end: its parent, in the state (and the
/// step: the parent's transition count) that started it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ParentRef {
    pub job: Uuid,
    pub state: String,
    pub step: u32,
}

/// An element of a `map` that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapFailure {
    pub index: u32,
    pub code: String,
    pub message: String,
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

/// A task's concurrency key: at most `max` tasks with this `key` are in
/// flight at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskKey {
    pub key: String,
    pub max: u32,
}

/// A task's rate key: at most `per_second` tasks with this `key` are
/// handed out per second, up to `burst` at once after a quiet spell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRate {
    pub key: String,
    pub per_second: f64,
    pub burst: u32,
}

/// One task of a job, dispatched or waiting to be.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub task_type: String,
    pub params: Object,
    /// Parallel branch name; `None` for a plain dispatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Position of its element in a `map` state's list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Higher goes first among tasks of its type (see `PRIORITY_AGING`).
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub priority: f64,
    /// What the worker that takes it must have (from its dispatch's
    /// `requires`, kept as dispatched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requires: Option<Arc<crate::engine::matching::Requirements>>,
    /// Its concurrency key and that key's bound (from its dispatch's
    /// `concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<TaskKey>,
    /// Its rate key and that key's rate (from its dispatch's `rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<TaskRate>,
    /// Which waiting worker it goes to (from its dispatch's `strategy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<crate::engine::strategy::Strategy>,
    /// Worker events (other than progress) received about this attempt.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events: u32,
    /// When its last progress report was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<DateTime<Utc>>,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The worker that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    pub queued_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picked_up_at: Option<DateTime<Utc>>,
    /// Set when this branch is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Arc<Object>>,
    /// Last failure of this task, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<JobError>,
}

/// One state the job went through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateVisit {
    pub state: String,
    pub entered_at: DateTime<Utc>,
    /// Result status that led out of this state, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// Something that happened to a job (its history).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub at: DateTime<Utc>,
    pub event: String,
    pub message: String,
    /// The task attempt the event is about (queued, dispatched, result,
    /// failure, requeue), for timelines and metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskRef>,
}

impl JobEvent {
    /// The task reference as stored (a JSON text column).
    pub fn task_json(&self) -> Option<String> {
        self.task
            .as_ref()
            .and_then(|t| serde_json::to_string(t).ok())
    }

    /// The stored task reference (an unreadable one is left out).
    pub fn task_from_json(text: Option<String>) -> Option<TaskRef> {
        text.and_then(|t| serde_json::from_str(&t).ok())
    }
}

/// A task attempt as a history entry names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskRef {
    pub task_id: String,
    pub task_type: String,
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// From dispatch to this event (results and failures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `success` (or the status the task returned), or the error code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl TaskRef {
    /// `task` as it is now; with an outcome, its duration since dispatch.
    pub fn of(task: &TaskRecord, outcome: Option<&str>) -> Self {
        let duration_ms = outcome
            .and(task.picked_up_at)
            .map(|at| (Utc::now() - at).num_milliseconds().max(0) as u64);
        Self {
            task_id: task.task_id.clone(),
            task_type: task.task_type.clone(),
            attempt: task.attempt,
            worker_id: task.worker_id.clone(),
            duration_ms,
            outcome: outcome.map(str::to_string),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub blueprint: String,
    /// The blueprint version the job runs on to its end (0: stored before
    /// versions existed; the current one is used).
    #[serde(default)]
    pub blueprint_version: u32,
    /// Name of the client that created it; only that client sees it.
    pub owner: String,
    pub status: JobStatus,
    pub current_state: String,
    /// Shared, like `results` and `result`: a job change copies the job
    /// under the engine's lock for the writer, and these (the client's and
    /// the workers' data, up to a request body each) are copied by
    /// reference, not byte by byte.
    pub initial_data: Arc<Object>,
    /// Data of each state's task, by state name.
    pub results: Arc<Object>,
    /// Data of the most recent task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Arc<Object>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// The files results named, by data key (merged from each result's
    /// `data_metadata`; see [`crate::objects`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_metadata: Option<Arc<rxon::FilesByKey>>,
    /// Tasks of the current state (one, or one per parallel branch).
    #[serde(default)]
    pub tasks: Vec<TaskRecord>,
    pub state_history: Vec<StateVisit>,
    /// The worker that ran the most recent task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_worker_id: Option<String>,
    /// Transitions taken, to stop runaway loops.
    pub transitions: u32,
    /// Attempts the most recent finished task took.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Job-level defaults for tasks without their own, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_timeout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_timeout: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// While waiting for a human's decision: the single-use token an
    /// approver may use instead of the client's (avtomatika's
    /// `approval_token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_token: Option<String>,
    /// When a sleeping job (a `sleep` state) goes on, or a waiting one (a
    /// `wait` state with a timeout) times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
    /// The job whose `run` state started this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// Set once the parent has been told this (child) job ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parent_told: bool,
    /// The child job this one waits for (in a `run` state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<Uuid>,
    /// Parents above this job (0 for a job a client created).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub depth: u32,
    /// Progress of the `map` state the job is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<Box<MapRun>>,
    /// The client's options, kept and passed to every task (see
    /// [`JobOptions`]).
    #[serde(default, skip_serializing_if = "JobOptions::is_empty")]
    pub options: JobOptions,
    /// Bumped on every change; storage keeps the highest.
    pub version: u64,
    /// Set once the end-of-job webhook has been queued.
    #[serde(default)]
    pub webhook_sent: bool,
    /// Set once the ended job is counted for eviction from memory.
    #[serde(skip)]
    pub retired: bool,
    /// Set while the job counts among its owner's active jobs.
    #[serde(skip)]
    pub counted_active: bool,
    /// The worker event this change records (type, payload), for the
    /// update stream; never stored.
    #[serde(skip)]
    pub worker_event: Option<(String, Object)>,
}

impl Job {
    /// The context expressions see: `{initial, results, last, client}`
    /// (`clients`: each configured client's `{plan, params}`).
    pub fn expr_context(
        &self,
        clients: &std::collections::HashMap<String, serde_json::Value>,
    ) -> crate::blueprint::expr::Context {
        let client = crate::blueprint::expr::Client {
            name: &self.owner,
            info: clients.get(&self.owner),
        };
        crate::blueprint::expr::context(
            &self.initial_data,
            &self.results,
            self.result.as_deref(),
            client,
        )
    }
}
