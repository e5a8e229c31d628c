//! The process-wide Prometheus recorder of the orchestrator and of the
//! worker host: installed once, with a thread that folds histogram samples
//! into their buckets every [`UPKEEP_EVERY`].
//!
//! The recorder keeps every histogram sample it is given until an upkeep
//! runs; without the thread, a process nobody scrapes would grow by every
//! request and task it times.

mod vocabulary;

pub use vocabulary::{OTHER, Vocabulary};

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder once: histogram `buckets` (in seconds), and
/// `per_metric` buckets for the histograms named there (counts, sizes).
/// Later calls return the same handle whatever their buckets. `None` if
/// another recorder was installed first (or some buckets are empty).
pub fn install(
    buckets: &[f64],
    per_metric: &[(&str, &[f64])],
) -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new().set_buckets(buckets).ok()?;
            for (name, buckets) in per_metric {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).to_string()), buckets)
                    .ok()?;
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            spawn_upkeep(handle.clone());
            Some(handle)
        })
        .as_ref()
}

fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(
            "cannot start the metrics upkeep thread: {e}; histogram samples are folded only when /metrics is scraped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                    .map(|name| name.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn installing_starts_the_upkeep_thread_once() {
        let handle = install(&[0.001, 1.0], &[("probe_items", &[1.0, 10.0])])
            .expect("the first recorder of this process");
        let again = install(&[5.0], &[]).expect("the same recorder");
        assert!(std::ptr::eq(handle, again));
        // The new thread names itself once it runs: give it a moment.
        let upkeeps = || {
            thread_names()
                .iter()
                .filter(|n| *n == "metrics-upkeep")
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while upkeeps() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(upkeeps(), 1, "threads: {:?}", thread_names());
        metrics::histogram!("upkeep_probe_seconds").record(0.0005);
        metrics::histogram!("probe_items").record(7.0);
        let text = handle.render();
        assert!(text.contains("upkeep_probe_seconds_count 1"), "{text}");
        assert!(
            text.contains(r#"upkeep_probe_seconds_bucket{le="0.001"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"probe_items_bucket{le="10"} 1"#), "{text}");
        assert!(text.contains(r#"probe_items_bucket{le="1"} 0"#), "{text}");
    }
}
