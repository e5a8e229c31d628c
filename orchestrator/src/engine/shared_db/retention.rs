//! Retention's batch on a shared database ([`crate::engine::retention`]):
//! one instance at a time deletes (a transaction-scoped advisory lock).

use uuid::Uuid;

use super::{DbError, SharedDb};

/// The first step: deletes a batch of ended jobs (`$1`: last changed
/// before, `$2`: most) and returns their ids; rows another transaction
/// holds are skipped.
const DELETE_ENDED: &str = "DELETE FROM jobs WHERE id IN (
     SELECT id FROM jobs WHERE status IN ('finished', 'failed', 'cancelled') AND updated_at < $1
     ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
     RETURNING id";
/// The second step: the history and webhooks of those jobs (`$1`).
const DELETE_ENDED_REST: &str = "WITH gone AS (DELETE FROM job_events WHERE job_id = ANY($1))
     DELETE FROM webhooks WHERE job_id = ANY($1)";

/// Key of the advisory lock that lets one instance at a time run retention.
const RETENTION_LOCK: i64 = 0x7461_736b_7265_7400; // "taskret\0"

impl SharedDb {
    /// Retention's batch ([`crate::engine::retention`]); nothing when
    /// another instance is running one.
    pub(crate) async fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mine: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&RETENTION_LOCK])
            .await?
            .get(0);
        if !mine {
            return Ok(Vec::new());
        }
        let limit = crate::storage::sql_count(limit);
        let ids: Vec<Uuid> = tx
            .query(&tx.prepare_cached(DELETE_ENDED).await?, &[&before, &limit])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(&tx.prepare_cached(DELETE_ENDED_REST).await?, &[&ids])
            .await?;
        tx.commit().await?;
        // Deleted here: read as gone here at once (elsewhere once the
        // cached copy is stale, within `cache::FRESH_FOR`).
        if !ids.is_empty() {
            self.cache.evict(ids.iter().copied());
        }
        Ok(ids)
    }
}
