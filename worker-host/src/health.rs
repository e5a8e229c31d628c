//! What `GET /health` answers (on `--metrics-listen`, beside `/metrics`):
//! ready once the worker registered and while its heartbeats are accepted,
//! as a Kubernetes readiness or liveness probe needs; and the worker's own
//! usage, sent in every heartbeat (`usage`, avtomatika's shape).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::LazyLock;

struct State {
    start: Instant,
    registered: AtomicBool,
    /// Milliseconds after `start` of the last accepted heartbeat (0: none).
    last_beat_ms: AtomicU64,
    /// Milliseconds of the heartbeat interval.
    interval_ms: AtomicU64,
}

static STATE: LazyLock<State> = LazyLock::new(|| State {
    start: Instant::now(),
    registered: AtomicBool::new(false),
    last_beat_ms: AtomicU64::new(0),
    interval_ms: AtomicU64::new(15_000),
});

/// Heartbeats missed before `/health` says unhealthy.
const MISSED_BEATS: u64 = 3;

/// The heartbeat interval (for the staleness bound).
pub fn set_interval(interval: Duration) {
    STATE
        .interval_ms
        .store(interval.as_millis() as u64, Ordering::Relaxed);
}

/// The orchestrator accepted a registration.
pub fn registered() {
    STATE.registered.store(true, Ordering::Relaxed);
    beat();
}

/// The orchestrator accepted a heartbeat.
pub fn beat() {
    let ms = STATE.start.elapsed().as_millis() as u64;
    STATE.last_beat_ms.store(ms.max(1), Ordering::Relaxed);
}

/// `(ready, body)` for `GET /health`.
pub fn report(worker_id: &str) -> (bool, serde_json::Value) {
    let s = &*STATE;
    if !s.registered.load(Ordering::Relaxed) {
        return (
            false,
            serde_json::json!({"status": "starting", "worker_id": worker_id,
                               "reason": "not registered with the orchestrator yet"}),
        );
    }
    let now = s.start.elapsed().as_millis() as u64;
    let since = now.saturating_sub(s.last_beat_ms.load(Ordering::Relaxed));
    let bound = s.interval_ms.load(Ordering::Relaxed) * MISSED_BEATS;
    if since > bound {
        return (
            false,
            serde_json::json!({"status": "unhealthy", "worker_id": worker_id,
                               "reason": format!("no heartbeat accepted for {} s", since / 1000)}),
        );
    }
    (
        true,
        serde_json::json!({"status": "ok", "worker_id": worker_id}),
    )
}

/// The process's CPU time (user + system) and resident memory, from
/// `/proc/self` (Linux); `None` elsewhere.
fn sample() -> Option<(Duration, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux the worker runs on.
    let cpu = Duration::from_millis(ticks * 10);
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((cpu, rss_kb * 1024))
}

/// Usage since the previous call: `{"cpu_load_percent", "ram_used_gb"}`.
pub struct Usage {
    last: Option<(Instant, Duration)>,
}

impl Usage {
    pub fn new() -> Self {
        Self { last: None }
    }

    pub fn sample(&mut self) -> Option<serde_json::Value> {
        let (cpu, rss) = sample()?;
        let now = Instant::now();
        let load = match self.last {
            Some((at, before)) => {
                let wall = now.duration_since(at).as_secs_f64();
                if wall > 0.0 {
                    (cpu.saturating_sub(before).as_secs_f64() / wall * 100.0).min(10_000.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, cpu));
        let gb = rss as f64 / (1u64 << 30) as f64;
        Some(serde_json::json!({
            "cpu_load_percent": (load * 10.0).round() / 10.0,
            "ram_used_gb": (gb * 1000.0).round() / 1000.0,
        }))
    }
}

impl Default for Usage {
    fn default() -> Self {
        Self::new()
    }
}
