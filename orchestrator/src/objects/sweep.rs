//! Deletes the files of ended jobs (finished, failed, cancelled; not
//! quarantined ones) once `object_retention` has passed, and of jobs that
//! no longer exist (deleted by `finished_job_retention`).
//!
//! The sweep lists the jobs that have files (the first level of both
//! prefixes) rather than keeping a list of its own, so it needs nothing
//! stored and survives restarts; every instance of a cluster may run it
//! (deleting twice is harmless). The bucket or directory therefore belongs
//! to one deployment: a first-level name that is a UUID but not one of its
//! jobs is taken for a deleted job's files.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{Objects, ObjectsError};
use crate::engine::Engine;
use crate::job::JobStatus;

/// Most jobs one sweep looks at (the rest wait for the next).
pub const JOBS_PER_SWEEP: usize = 1000;

/// Runs the sweep every `sweep_interval` until `stop`; does nothing when
/// files are kept for ever.
pub async fn run(objects: Arc<Objects>, engine: Engine, stop: tokio_util::sync::CancellationToken) {
    let Some(retention) = objects.config().retention else {
        tracing::info!("objects: files are kept after their jobs end (auto cleanup off)");
        return;
    };
    let mut tick = tokio::time::interval(objects.config().sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep_once(&objects, &engine, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("objects: deleted the files of {n} ended jobs"),
            Err(e) => tracing::warn!("objects: the sweep of ended jobs' files failed: {e}"),
        }
    }
}

/// One sweep; how many jobs' files it deleted.
pub async fn sweep_once(
    objects: &Objects,
    engine: &Engine,
    retention: Duration,
) -> Result<usize, ObjectsError> {
    let now = Utc::now();
    let mut swept = 0;
    for id in objects.jobs_with_files(JOBS_PER_SWEEP).await? {
        let due = match engine.get_job(id).await {
            Ok(None) => true,
            // A quarantined job waits for a human, with its files.
            Ok(Some(job)) if job.status.is_terminal() && job.status != JobStatus::Quarantined => {
                let ended = job.finished_at.unwrap_or(job.updated_at);
                (now - ended).to_std().unwrap_or_default() >= retention
            }
            Ok(Some(_)) => false,
            Err(e) => {
                tracing::warn!("objects: cannot read job {id} to decide on its files: {e}");
                false
            }
        };
        if due {
            let deleted = objects.delete_job(id).await?;
            tracing::info!(job_id = %id, "job {id}: {deleted} files deleted (the job ended more than object_retention ago, or is gone)");
            swept += 1;
        }
    }
    Ok(swept)
}
