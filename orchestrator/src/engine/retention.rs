//! Retention: finished, failed and cancelled jobs that last changed longer
//! ago than `finished_job_retention` are deleted with their history and
//! webhooks, a small batch per transaction with a pause between batches, so
//! the writer is never held for long. Quarantined jobs are kept until
//! someone handles them. On a shared PostgreSQL database one instance at a
//! time deletes (a transaction-scoped advisory lock); the others skip.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::Shared;

/// Jobs deleted per transaction.
pub const BATCH: usize = 256;
/// Pause between two batches of one pass: the writer's turn.
const BETWEEN_BATCHES: Duration = Duration::from_millis(20);
/// Longest time between two passes.
const MAX_TICK: Duration = Duration::from_secs(60);

/// Runs passes until the engine stops: every minute, or twice per
/// retention when it is shorter.
pub(crate) async fn run(shared: Arc<Shared>, keep: Duration) {
    let tick = (keep / 2).clamp(Duration::from_secs(1), MAX_TICK);
    tracing::info!(
        "ended jobs are deleted {} after they last changed (finished_job_retention)",
        humantime::format_duration(keep)
    );
    let Ok(keep) = chrono::Duration::from_std(keep) else {
        tracing::error!("finished_job_retention is too long to compute with; jobs are kept");
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shared.stopping.cancelled() => return,
        }
        let before = Utc::now() - keep;
        let mut deleted = 0usize;
        loop {
            match delete_batch(&shared, before).await {
                Ok(ids) => {
                    deleted += ids.len();
                    if ids.len() < BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!("deleting expired jobs failed (tried again in {tick:?}): {e}");
                    break;
                }
            }
            tokio::time::sleep(BETWEEN_BATCHES).await;
        }
        if deleted > 0 {
            tracing::info!("deleted {deleted} ended job(s) past finished_job_retention");
        }
    }
}

/// Deletes idempotency keys past `idempotency_retention`, every minute.
pub(crate) async fn prune_keys(shared: Arc<Shared>) {
    let keep = chrono::Duration::from_std(shared.settings.idempotency_retention)
        .unwrap_or(chrono::Duration::days(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MAX_TICK) => {}
            _ = shared.stopping.cancelled() => return,
        }
        let keys: &dyn crate::storage::Keys = &shared.backend;
        match keys.prune_keys(Utc::now() - keep).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!("deleted {n} idempotency key(s) past idempotency_retention"),
            Err(e) => tracing::warn!("deleting expired idempotency keys failed: {e}"),
        }
    }
}

async fn delete_batch(
    shared: &Arc<Shared>,
    before: chrono::DateTime<Utc>,
) -> Result<Vec<Uuid>, String> {
    shared
        .backend
        .delete_ended(before, BATCH)
        .await
        .map_err(|e| e.to_string())
}
