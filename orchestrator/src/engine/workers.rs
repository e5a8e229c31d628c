//! Registered workers, as the orchestrator sees them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use uuid::Uuid;

/// A task a worker took and has not answered yet.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub job: Uuid,
    /// When it was handed out.
    pub since: Instant,
    /// Key of its result-timeout timer.
    pub lease: Option<(Instant, u64)>,
    /// The task has a concurrency key: its end makes room for another.
    pub keyed: bool,
}

/// One registered worker.
#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub worker_id: String,
    pub worker_type: String,
    pub skills: Vec<rxon::SkillInfo>,
    /// Last status the worker reported (`idle`, `busy`, `offline`, …).
    pub status: String,
    pub capabilities: Option<Value>,
    /// What it registered as its hardware (RXON `resources`: `devices`,
    /// `properties`), for tasks that require some ([`super::matching`]).
    pub resources: Option<Value>,
    /// Software name → version, as registered.
    pub installed_software: Option<Value>,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    /// When it was last heard from (heartbeat, poll or result); drives expiry.
    pub last_seen: Instant,
    /// Not heard from for this long, it is dropped and its tasks run again.
    pub ttl: Duration,
    /// The process behind this id (`metadata.instance_id` of its
    /// registration, when it sends one): a new one holds none of the old
    /// one's tasks.
    pub instance_id: Option<String>,
    /// Its task channel closed and it has not been heard from since (it is
    /// then gone after the channel grace, not its `ttl`).
    pub channel_lost: bool,
    /// Tasks it took and has not answered yet, by task id.
    pub in_flight: BTreeMap<String, Held>,
    /// Wakes this worker's long-polls when a task it can run is queued.
    pub wake: Arc<Notify>,
    /// Registry plugins it runs or could not load (from its registration).
    pub plugins: Vec<rxon::deploy::PluginReport>,
    /// Its last heartbeat's `usage` (one instance only; at most
    /// [`MAX_USAGE_BYTES`] as JSON).
    pub usage: Option<Value>,
}

/// Largest heartbeat `usage` kept.
pub const MAX_USAGE_BYTES: usize = 4096;

/// The plugin reports in a registration's metadata, bounded: at most
/// [`rxon::deploy::MAX_PLUGINS`], error texts cut; malformed ones are dropped.
pub fn plugin_reports(metadata: Option<&rxon::Object>) -> Vec<rxon::deploy::PluginReport> {
    let Some(Value::Array(items)) = metadata.and_then(|m| m.get(rxon::deploy::METADATA_PLUGINS))
    else {
        return Vec::new();
    };
    items
        .iter()
        .take(rxon::deploy::MAX_PLUGINS)
        .filter_map(|v| serde_json::from_value::<rxon::deploy::PluginReport>(v.clone()).ok())
        .filter(|r| rxon::deploy::is_plugin_name(&r.name))
        .map(|mut r| {
            r.sha256 = rxon::text::clip(&r.sha256, 64).into_owned();
            r.error = r
                .error
                .map(|e| rxon::text::clip(&e, rxon::deploy::MAX_REPORT_ERROR).into_owned());
            r
        })
        .collect()
}

impl WorkerRecord {
    pub fn serves(&self, task_type: &str) -> bool {
        self.skills.iter().any(|s| s.name == task_type)
    }

    pub fn view(&self) -> WorkerView {
        WorkerView {
            worker_id: self.worker_id.clone(),
            worker_type: self.worker_type.clone(),
            supported_skills: self.skills.iter().map(|s| s.name.clone()).collect(),
            skills: self.skills.clone(),
            status: self.status.clone(),
            registered_at: self.registered_at,
            last_heartbeat_at: self.last_heartbeat_at,
            in_flight_tasks: self.in_flight.keys().cloned().collect(),
            capabilities: self.capabilities.clone(),
            resources: self.resources.clone(),
            installed_software: self.installed_software.clone(),
            plugins: self.plugins.clone(),
            usage: self.usage.clone(),
        }
    }

    /// A worker offering `skills`, for unit tests.
    #[cfg(test)]
    pub fn test(id: &str, skills: &[&str]) -> Self {
        Self {
            worker_id: id.into(),
            worker_type: "test".into(),
            skills: skills
                .iter()
                .map(|s| rxon::SkillInfo {
                    name: s.to_string(),
                    ..Default::default()
                })
                .collect(),
            status: "idle".into(),
            capabilities: None,
            resources: None,
            installed_software: None,
            registered_at: Utc::now(),
            last_heartbeat_at: Utc::now(),
            last_seen: Instant::now(),
            ttl: Duration::from_secs(60),
            instance_id: None,
            channel_lost: false,
            in_flight: BTreeMap::new(),
            wake: Arc::new(Notify::new()),
            plugins: Vec::new(),
            usage: None,
        }
    }
}

/// A worker as `GET /api/<v>/workers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    pub worker_id: String,
    pub worker_type: String,
    /// Skill names, for a quick look.
    pub supported_skills: Vec<String>,
    pub skills: Vec<rxon::SkillInfo>,
    pub status: String,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub in_flight_tasks: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_software: Option<Value>,
    /// Registry plugins it runs or could not load.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<rxon::deploy::PluginReport>,
    /// Its last heartbeat's `usage` (`cpu_load_percent`, `ram_used_gb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Value>,
}
