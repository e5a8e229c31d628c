//! Retention's batch on a shared database ([`crate::engine::retention`]):
//! one instance at a time deletes (a transaction-scoped advisory lock).

use uuid::Uuid;

use super::{DbError, SharedDb};

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
            .query(
                &tx.prepare_cached(crate::storage::postgres::DELETE_ENDED)
                    .await?,
                &[&before, &limit],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            &tx.prepare_cached(crate::storage::postgres::DELETE_ENDED_REST)
                .await?,
            &[&ids],
        )
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
