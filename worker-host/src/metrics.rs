//! Prometheus metrics of the worker host, served at `GET /metrics` on
//! `--metrics-listen` (off unless given; text format, no token: listen on an
//! address only your scraper reaches).
//!
//! | series | labels |
//! |---|---|
//! | `worker_tasks_total` | plugin, skill, outcome (`success` or the status, an error code, `cancelled`) |
//! | `worker_task_duration_seconds` (histogram) | plugin, skill |
//! | `worker_sandbox_instantiate_seconds` (histogram: fresh instance of the plugin) | |
//! | `worker_plugin_loads_total` | outcome (`compiled`, `cached`, `failed`) |
//! | `worker_tasks_in_flight` | |
//! | `worker_task_channel_open` (1 while the task channel is open) | |

use std::net::SocketAddr;

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

/// The label of a plugin: its registry name, else its file name.
pub fn plugin_label(plugin: &crate::plugin_store::Plugin) -> String {
    match &plugin.registry {
        Some(r) => r.name.clone(),
        None => plugin
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let Some(handle) = install() else {
        anyhow::bail!("cannot serve metrics: another metrics recorder is installed");
    };
    let app = axum::Router::new().route(
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
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    tracing::info!("metrics at http://{addr}/metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
