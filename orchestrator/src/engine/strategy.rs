//! Dispatch strategies in a pull model: which of several workers waiting
//! for a task gets it (a dispatch's `strategy`, avtomatika's names).
//!
//! Workers take tasks when they have a free slot; a task with a strategy
//! is the asking worker's only if no worker waiting for a task on this
//! instance right now (a long-poll or a channel with a free slot, in
//! [`Pollers`]) ranks better by the strategy and serves the task's type
//! and meets what it requires. Otherwise the asker passes it over and the
//! better one is woken to take it. A task held so for [`STRATEGY_HOLD`]
//! goes to whoever asks next (the better worker may have taken other work
//! meanwhile), so a strategy never strands a task. Workers wait in
//! [`Pollers`] only once a blueprint names a strategy
//! (`Catalog::uses_strategies`): until then a take spends nothing on it.
//!
//! The ranks, lowest first:
//! - `default`: workers holding the task's skill warm (the poll's
//!   `hot_skills`) first, then the cheapest;
//! - `round_robin`: the worker that has waited longest (so each in turn);
//! - `least_connections`: the fewest tasks in flight;
//! - `cheapest`: the lowest `capabilities.cost_per_skill` for the task's
//!   type (none named: the most expensive);
//! - `best_value`: cost over reputation; every worker's reputation is 1.0
//!   here (none is kept), so it ranks as `cheapest`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::matching::Requirements;
use super::workers::WorkerRecord;

/// Longest a task waits for the worker its strategy prefers while others
/// ask for it.
pub const STRATEGY_HOLD: Duration = Duration::from_secs(1);

/// Most `hot_skills` a poll may name, and longest name.
pub const MAX_HOT_SKILLS: usize = 64;
pub const MAX_HOT_SKILL_CHARS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Default,
    RoundRobin,
    LeastConnections,
    Cheapest,
    BestValue,
}

impl Strategy {
    pub const NAMES: &'static str =
        "default, round_robin, least_connections, cheapest or best_value";

    pub fn parse(name: &str) -> Result<Self, String> {
        Ok(match name {
            "default" => Self::Default,
            "round_robin" => Self::RoundRobin,
            "least_connections" => Self::LeastConnections,
            "cheapest" => Self::Cheapest,
            "best_value" => Self::BestValue,
            other => {
                return Err(format!("strategy must be {}, not {other:?}", Self::NAMES));
            }
        })
    }

    /// Whether `a` ranks strictly before `b` for a task of `task_type`.
    fn prefers(self, task_type: &str, a: &Standing, b: &Standing) -> bool {
        let cost = |s: &Standing| s.cost(task_type);
        match self {
            Self::Default => {
                let (ha, hb) = (a.hot(task_type), b.hot(task_type));
                ha && !hb || ha == hb && cost(a) < cost(b)
            }
            Self::RoundRobin => a.waiting_since < b.waiting_since,
            Self::LeastConnections => a.in_flight < b.in_flight,
            Self::Cheapest | Self::BestValue => cost(a) < cost(b),
        }
    }
}

/// What the strategies rank one worker by.
#[derive(Debug, Clone)]
pub struct Standing {
    /// Its registration (without its tasks), to check a task's `requires`.
    record: WorkerRecord,
    hot: Hot,
    in_flight: usize,
    waiting_since: Instant,
}

impl Standing {
    /// `worker` as it is now (`hot`: the skills it holds warm).
    pub fn of(worker: &WorkerRecord, hot: Hot) -> Self {
        let mut record = worker.clone();
        let in_flight = std::mem::take(&mut record.in_flight).len();
        Self {
            record,
            hot,
            in_flight,
            waiting_since: Instant::now(),
        }
    }

    fn hot(&self, task_type: &str) -> bool {
        match &self.hot {
            Hot::All => true,
            Hot::Named(names) => names.iter().any(|s| s == task_type),
        }
    }

    fn cost(&self, task_type: &str) -> f64 {
        self.record
            .capabilities
            .as_ref()
            .and_then(|c| c.get("cost_per_skill"))
            .and_then(|c| c.get(task_type))
            .and_then(Value::as_f64)
            .unwrap_or(f64::INFINITY)
    }

    fn may_run(&self, task_type: &str, requires: Option<&Requirements>) -> bool {
        self.record.serves(task_type)
            && requires.is_none_or(|r| r.unmet(&self.record, task_type).is_none())
    }
}

/// The skills a worker holds warm.
#[derive(Debug, Clone)]
pub enum Hot {
    /// Every skill it serves (a worker host on the task channel: its
    /// plugins are compiled and instantiated ahead).
    All,
    /// Those its last poll named (`hot_skills`; none when it never did).
    Named(Arc<[String]>),
}

/// A worker's poll waiting for a task on this instance.
struct Poller {
    worker: String,
    standing: Standing,
    /// Wakes its wait (to take a task left to it).
    wake: Arc<Notify>,
}

/// The workers waiting for a task on this instance, and the skills each
/// last named warm.
#[derive(Default)]
pub struct Pollers {
    /// By a number per wait (a worker may have several polls waiting).
    waiting: Mutex<HashMap<u64, Poller>>,
    next: std::sync::atomic::AtomicU64,
    hot: Mutex<HashMap<String, Hot>>,
}

/// Most workers whose warm skills are remembered (past it, the memory
/// starts again: a poll names them anew).
const KEPT_HOT: usize = 10_000;

impl Pollers {
    /// The skills `worker` holds warm, as last told.
    pub fn hot_of(&self, worker: &str) -> Hot {
        let hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        hot.get(worker)
            .cloned()
            .unwrap_or_else(|| Hot::Named(Arc::from([])))
    }

    /// `worker` holds `skills` warm (kept as they are when unchanged).
    pub fn set_hot(&self, worker: &str, skills: Hot) {
        let mut hot = self.hot.lock().unwrap_or_else(|p| p.into_inner());
        match (hot.get(worker), &skills) {
            (Some(Hot::All), Hot::All) => return,
            (Some(Hot::Named(a)), Hot::Named(b)) if a == b => return,
            _ => {}
        }
        if hot.len() >= KEPT_HOT && !hot.contains_key(worker) {
            hot.clear();
        }
        hot.insert(worker.to_string(), skills);
    }

    /// `worker` waits for a task; it is woken through `wake` when one is
    /// left to it. The guard ends the wait.
    pub fn wait<'a>(
        &'a self,
        worker: &str,
        standing: Standing,
        wake: Arc<Notify>,
    ) -> WaitGuard<'a> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.insert(
            id,
            Poller {
                worker: worker.to_string(),
                standing,
                wake,
            },
        );
        WaitGuard { pollers: self, id }
    }

    /// Whether a worker other than `asker` waiting now ranks better for a
    /// task of `task_type` by `strategy`; if so it is woken to take it.
    pub fn leave_to_better(
        &self,
        strategy: Strategy,
        task_type: &str,
        requires: Option<&Requirements>,
        asker: &str,
        standing: &Standing,
    ) -> bool {
        let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        // An asker that waits here already is ranked as it stands there
        // (the one order all waiting workers are ranked in, so two of them
        // never leave a task to each other).
        let standing = waiting
            .values()
            .filter(|p| p.worker == asker)
            .map(|p| &p.standing)
            .min_by_key(|s| s.waiting_since)
            .unwrap_or(standing);
        let best = waiting
            .values()
            .filter(|p| p.worker != asker && p.standing.may_run(task_type, requires))
            .fold(None::<&Poller>, |best, p| match best {
                Some(b) if !strategy.prefers(task_type, &p.standing, &b.standing) => Some(b),
                _ => Some(p),
            });
        match best {
            Some(p) if strategy.prefers(task_type, &p.standing, standing) => {
                p.wake.notify_one();
                true
            }
            _ => false,
        }
    }
}

/// Removes its worker from the waiting when dropped.
pub struct WaitGuard<'a> {
    pollers: &'a Pollers,
    id: u64,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .pollers
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        waiting.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn worker(id: &str, cost: f64) -> WorkerRecord {
        WorkerRecord {
            worker_id: id.into(),
            worker_type: "t".into(),
            skills: vec![serde_json::from_value(json!({"name": "render"})).unwrap()],
            status: "idle".into(),
            capabilities: Some(json!({"cost_per_skill": {"render": cost}})),
            resources: None,
            installed_software: None,
            registered_at: chrono::Utc::now(),
            last_heartbeat_at: chrono::Utc::now(),
            last_seen: Instant::now(),
            ttl: Duration::from_secs(30),
            instance_id: None,
            channel_lost: false,
            in_flight: Default::default(),
            wake: Arc::new(Notify::new()),
            plugins: Vec::new(),
            usage: None,
        }
    }

    #[test]
    fn a_cheaper_waiting_worker_is_left_the_task_and_woken() {
        let pollers = Pollers::default();
        let wake = Arc::new(Notify::new());
        let _g = pollers.wait(
            "cheap",
            Standing::of(&worker("cheap", 1.0), Hot::Named(Arc::from([]))),
            wake.clone(),
        );
        let dear = Standing::of(&worker("dear", 5.0), Hot::Named(Arc::from([])));
        assert!(pollers.leave_to_better(Strategy::Cheapest, "render", None, "dear", &dear));
        // The asker is the cheapest: it takes the task.
        let cheapest = Standing::of(&worker("cheapest", 0.5), Hot::Named(Arc::from([])));
        assert!(!pollers.leave_to_better(Strategy::Cheapest, "render", None, "x", &cheapest));
        // A type the waiting worker does not serve is not left to it.
        assert!(!pollers.leave_to_better(Strategy::Cheapest, "other", None, "dear", &dear));
    }

    #[test]
    fn hot_goes_before_cheap_by_default_and_the_guard_ends_the_wait() {
        let pollers = Pollers::default();
        let g = pollers.wait(
            "warm",
            Standing::of(
                &worker("warm", 9.0),
                Hot::Named(Arc::from(["render".to_string()])),
            ),
            Arc::new(Notify::new()),
        );
        let cold = Standing::of(&worker("cold", 1.0), Hot::Named(Arc::from([])));
        assert!(pollers.leave_to_better(Strategy::Default, "render", None, "cold", &cold));
        assert!(!pollers.leave_to_better(Strategy::Cheapest, "render", None, "cold", &cold));
        drop(g);
        assert!(!pollers.leave_to_better(Strategy::Default, "render", None, "cold", &cold));
    }

    #[test]
    fn round_robin_leaves_the_task_to_the_longest_waiting() {
        let pollers = Pollers::default();
        let _g = pollers.wait(
            "idle",
            Standing::of(&worker("idle", 1.0), Hot::Named(Arc::from([]))),
            Arc::new(Notify::new()),
        );
        let asker = Standing::of(&worker("asker", 1.0), Hot::Named(Arc::from([])));
        assert!(pollers.leave_to_better(Strategy::RoundRobin, "render", None, "asker", &asker));
        // Once the asker waits too, it ranks by when it began: the first
        // to wait gets the task, whichever of the two asks.
        let _h = pollers.wait("asker", asker.clone(), Arc::new(Notify::new()));
        assert!(pollers.leave_to_better(Strategy::RoundRobin, "render", None, "asker", &asker));
        let idle = Standing::of(&worker("idle", 1.0), Hot::Named(Arc::from([])));
        assert!(!pollers.leave_to_better(Strategy::RoundRobin, "render", None, "idle", &idle));
        assert!(Strategy::parse("overflow").is_err());
    }
}
