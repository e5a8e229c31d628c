//! Prometheus metrics, served at `GET /metrics` (text format, no token: bind
//! the orchestrator where only your scraper reaches it, or put it behind your
//! proxy). avtomatika 1.0b30 has no such endpoint (it pushes metrics by
//! OTLP); `/_public/metrics`, where its older fork served them, answers too.
//!
//! Where the series come from:
//! - job and task counters and histograms: the engine's history entries,
//!   read in one place from each change the engine makes
//!   ([`observations`]; recorded as the engine releases its lock, or once
//!   the transaction commits on a shared database): the same
//!   typed events the job history shows, so the two cannot disagree;
//! - queue depth, oldest queued task, tasks in flight, workers: read from the
//!   engine when scraped ([`render`]);
//! - HTTP request durations by route: the API's front middleware ([`HttpTimer`]).
//!
//! Every label value comes from a bounded set, so no peer can add series at
//! will: routes are the API's patterns or a blueprint's create path
//! (`unmatched` for the rest); methods the standard ones (`other` for the
//! rest); blueprints and task types those of the catalog; a task's outcome
//! `success`, `failure`, `cancelled`, an RXON error code, or a status some
//! blueprint's transitions name (`other` for the rest).
//!
//! | series | labels |
//! |---|---|
//! | `orchestrator_jobs_created_total` | blueprint |
//! | `orchestrator_jobs_ended_total` | blueprint, status |
//! | `orchestrator_job_duration_seconds` (histogram) | blueprint, status |
//! | `orchestrator_tasks_dispatched_total` | task_type |
//! | `orchestrator_task_results_total` | task_type, outcome |
//! | `orchestrator_task_duration_seconds` (histogram, dispatch → result) | task_type |
//! | `orchestrator_tasks_requeued_total` | task_type |
//! | `orchestrator_queue_depth` | task_type |
//! | `orchestrator_queue_oldest_seconds` (single instance only) | task_type |
//! | `orchestrator_tasks_in_flight` | |
//! | `orchestrator_workers` | |
//! | `orchestrator_http_request_duration_seconds` (histogram) | route, method, status |
//! | `orchestrator_storage_batch_writes` (histogram: job writes per transaction of one instance's writer; on PostgreSQL, events per batch) | |
//! | `orchestrator_storage_commit_seconds` (histogram: one transaction of the storage writer, or one batch on PostgreSQL) | |

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use metrics_recorder::Vocabulary;

use crate::engine::EventKind;
use crate::storage::JobWrite;

/// The methods a request is labelled by (`other` for the rest).
static METHODS: LazyLock<Vocabulary> = LazyLock::new(|| {
    Vocabulary::new(
        &[
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE",
        ],
        0,
    )
});

/// The outcomes a task result is labelled by: the RXON statuses and error
/// codes, and the statuses blueprints name ([`declare_status`]).
static OUTCOMES: LazyLock<Vocabulary> = LazyLock::new(|| Vocabulary::new(rxon::FIXED_OUTCOMES, 0));

/// A status a blueprint's transitions name: results with it keep it as
/// their `outcome` label.
pub fn declare_status(status: &str) {
    OUTCOMES.declare(status);
}

/// Histogram buckets, in seconds: 0.5 ms to 5 min.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
    300.0,
];

/// Buckets of `orchestrator_storage_batch_writes` (job writes).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0];

/// Installs the process-wide recorder (once; later calls return the same
/// handle), histogram upkeep included. `None` if another recorder was
/// installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    metrics_recorder::install(
        &BUCKETS,
        &[("orchestrator_storage_batch_writes", &BATCH_BUCKETS)],
    )
}

/// What one job change adds to the series (computed where the change is
/// made, recorded once it is committed).
#[derive(Debug, Clone)]
pub(crate) enum Observation {
    Created {
        blueprint: String,
    },
    Ended {
        blueprint: String,
        status: &'static str,
        seconds: f64,
    },
    Dispatched {
        task_type: String,
    },
    TaskDone {
        task_type: String,
        outcome: String,
        seconds: Option<f64>,
    },
    Requeued {
        task_type: String,
    },
}

/// The observations of one job change: its history entries, read by kind.
pub(crate) fn observations(write: &JobWrite, into: &mut Vec<Observation>) {
    let job = &write.job;
    for event in &write.events {
        let Some(kind) = EventKind::parse(&event.event) else {
            continue;
        };
        let task_type = || {
            event
                .task
                .as_ref()
                .map(|t| t.task_type.clone())
                .unwrap_or_default()
        };
        into.push(match kind {
            EventKind::Created => Observation::Created {
                blueprint: job.blueprint.clone(),
            },
            EventKind::Finished
            | EventKind::Failed
            | EventKind::Quarantined
            | EventKind::Cancelled
                if job.status.is_terminal() =>
            {
                Observation::Ended {
                    blueprint: job.blueprint.clone(),
                    status: job.status.as_str(),
                    seconds: (event.at - job.created_at).num_milliseconds().max(0) as f64 / 1e3,
                }
            }
            EventKind::TaskDispatched => Observation::Dispatched {
                task_type: task_type(),
            },
            EventKind::TaskResult | EventKind::TaskFailed => {
                let Some(task) = &event.task else { continue };
                Observation::TaskDone {
                    task_type: task.task_type.clone(),
                    outcome: task.outcome.clone().unwrap_or_default(),
                    seconds: task.duration_ms.map(|ms| ms as f64 / 1e3),
                }
            }
            EventKind::TaskRequeued => Observation::Requeued {
                task_type: task_type(),
            },
            _ => continue,
        });
    }
}

/// Adds observations to the series.
pub(crate) fn record(observed: impl IntoIterator<Item = Observation>) {
    for o in observed {
        match o {
            Observation::Created { blueprint } => {
                counter!("orchestrator_jobs_created_total", "blueprint" => blueprint).increment(1);
            }
            Observation::Ended {
                blueprint,
                status,
                seconds,
            } => {
                let labels = [("blueprint", blueprint), ("status", status.to_string())];
                counter!("orchestrator_jobs_ended_total", &labels).increment(1);
                histogram!("orchestrator_job_duration_seconds", &labels).record(seconds);
            }
            Observation::Dispatched { task_type } => {
                counter!("orchestrator_tasks_dispatched_total", "task_type" => task_type)
                    .increment(1);
            }
            Observation::TaskDone {
                task_type,
                outcome,
                seconds,
            } => {
                let outcome = OUTCOMES.label(&outcome);
                counter!("orchestrator_task_results_total", "task_type" => task_type.clone(), "outcome" => outcome)
                    .increment(1);
                if let Some(s) = seconds {
                    histogram!("orchestrator_task_duration_seconds", "task_type" => task_type)
                        .record(s);
                }
            }
            Observation::Requeued { task_type } => {
                counter!("orchestrator_tasks_requeued_total", "task_type" => task_type)
                    .increment(1);
            }
        }
    }
}

/// One transaction of the storage writer: how many job writes it held
/// (several changes of one job in a batch are one write) and how long it took.
pub(crate) fn storage_batch(writes: usize, took: std::time::Duration) {
    histogram!("orchestrator_storage_batch_writes").record(writes as f64);
    histogram!("orchestrator_storage_commit_seconds").record(took.as_secs_f64());
}

/// The engine's state at the moment of a scrape.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// Task type → (queued, age of the oldest in seconds when known).
    pub queues: Vec<(String, usize, Option<f64>)>,
    pub in_flight: usize,
    pub workers: usize,
}

/// The text a scrape gets.
pub fn render(snapshot: Snapshot) -> String {
    let Some(handle) = install() else {
        return "# metrics are not available: another recorder is installed\n".into();
    };
    for (task_type, depth, oldest) in snapshot.queues {
        gauge!("orchestrator_queue_depth", "task_type" => task_type.clone()).set(depth as f64);
        if let Some(age) = oldest {
            gauge!("orchestrator_queue_oldest_seconds", "task_type" => task_type).set(age);
        }
    }
    gauge!("orchestrator_tasks_in_flight").set(snapshot.in_flight as f64);
    gauge!("orchestrator_workers").set(snapshot.workers as f64);
    handle.run_upkeep();
    handle.render()
}

/// The route a fallback-served answer reports for the request metrics.
#[derive(Debug, Clone)]
pub struct RouteLabel(pub String);

/// Times a request, labelled by its route pattern (not the raw path, so
/// job ids do not make a series each); started and finished by
/// [`crate::api`]'s front middleware.
pub struct HttpTimer {
    matched: Option<MatchedPath>,
    method: axum::http::Method,
    started: Instant,
}

impl HttpTimer {
    pub fn start(request: &Request) -> Self {
        Self {
            matched: request.extensions().get::<MatchedPath>().cloned(),
            method: request.method().clone(),
            started: Instant::now(),
        }
    }

    pub fn finish(self, response: &Response) {
        // Create-job endpoints are served by the fallbacks (their path may
        // also match another method's route); they name their blueprint's
        // path. Anything else unmatched is one series.
        let route = match (response.extensions().get::<RouteLabel>(), &self.matched) {
            (Some(label), _) => label.0.clone(),
            (None, Some(matched)) => matched.as_str().to_string(),
            (None, None) => "unmatched".into(),
        };
        histogram!(
            "orchestrator_http_request_duration_seconds",
            "route" => route,
            "method" => METHODS.label(self.method.as_str()),
            "status" => response.status().as_u16().to_string()
        )
        .record(self.started.elapsed().as_secs_f64());
    }
}
