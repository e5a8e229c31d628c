//! Prometheus metrics of the worker host, served at `GET /metrics` on
//! `--metrics-listen` (off unless given; text format, no token: listen on an
//! address only your scraper reaches).
//!
//! | series | labels |
//! |---|---|
//! | `worker_tasks_total` | plugin, skill, outcome (`success`, `cancelled`, an RXON error code, or one of the first 32 other statuses seen) |
//! | `worker_task_duration_seconds` (histogram) | plugin, skill |
//! | `worker_sandbox_instantiate_seconds` (histogram: fresh instance of the plugin) | |
//! | `worker_plugin_loads_total` | outcome (`compiled`, `cached`, `failed`) |
//! | `worker_tasks_in_flight` | |
//! | `worker_task_channel_open` (1 while the task channel is open) | |

//!
//! Label values a plugin chooses are bounded: a task's outcome as above,
//! plugin names and skills to the first [`MAX_PLUGIN_LABELS`] and
//! [`MAX_SKILL_LABELS`] seen; the rest are `other`.

use std::net::SocketAddr;
use std::sync::LazyLock;

use metrics_recorder::Vocabulary;

use metrics_exporter_prometheus::PrometheusHandle;

pub use metrics::{counter, gauge, histogram};

/// Histogram buckets, in seconds: 10 µs to 5 min.
const BUCKETS: [f64; 18] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0, 5.0, 60.0, 300.0,
];

/// Installs the process-wide recorder (once; later calls return the same
/// handle), histogram upkeep included. `None` if another recorder was
/// installed first.
pub fn install() -> Option<&'static PrometheusHandle> {
    metrics_recorder::install(&BUCKETS, &[])
}

/// Plugin names with a series of their own.
pub const MAX_PLUGIN_LABELS: usize = 64;
/// Skills with a series of their own.
pub const MAX_SKILL_LABELS: usize = 256;
/// Statuses (besides the fixed ones) with a series of their own.
pub const MAX_OUTCOME_LABELS: usize = 32;

static PLUGINS: LazyLock<Vocabulary> = LazyLock::new(|| Vocabulary::new(&[], MAX_PLUGIN_LABELS));
static SKILLS: LazyLock<Vocabulary> = LazyLock::new(|| Vocabulary::new(&[], MAX_SKILL_LABELS));
static OUTCOMES: LazyLock<Vocabulary> =
    LazyLock::new(|| Vocabulary::new(rxon::FIXED_OUTCOMES, MAX_OUTCOME_LABELS));

/// The label of a plugin's name (see `Plugin::label`).
pub fn plugin_label(name: &str) -> String {
    PLUGINS.label(name)
}

/// The label of a skill.
pub fn skill_label(skill: &str) -> String {
    SKILLS.label(skill)
}

/// The label of a task's outcome.
pub fn outcome_label(outcome: &str) -> String {
    OUTCOMES.label(outcome)
}

/// Serves `GET /metrics` and `GET /health` ([`crate::health`]) on `addr`
/// until the process ends.
pub async fn serve(addr: SocketAddr, worker_id: String) -> anyhow::Result<()> {
    let Some(handle) = install() else {
        anyhow::bail!("cannot serve metrics: another metrics recorder is installed");
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move {
                handle.run_upkeep();
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }),
        )
        .route(
            "/health",
            axum::routing::get(move || async move {
                let (ready, body) = crate::health::report(&worker_id);
                let status = if ready {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                };
                (status, axum::Json(body))
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    tracing::info!("metrics at http://{addr}/metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
