//! Reads of jobs and their history on the pool, never on a writer's
//! connection and never one at a time behind a lock.

use uuid::Uuid;

use super::{DbError, SharedDb};
use crate::job::{Job, JobEvent};
use crate::storage::JobFilter;
use crate::storage::postgres::{EVENTS_OF_JOB, event_of, list_params, list_query};

impl SharedDb {
    /// A page of jobs ([`crate::storage::list`]).
    pub(crate) async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, DbError> {
        let (sql, args) = list_query(filter);
        let client = self.client().await?;
        let rows = client
            .query(&client.prepare_cached(&sql).await?, &list_params(&args))
            .await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0))
                    .map_err(|e| DbError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// A job's history, oldest first.
    pub(crate) async fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, DbError> {
        let client = self.client().await?;
        let rows = client
            .query(&client.prepare_cached(EVENTS_OF_JOB).await?, &[&id])
            .await?;
        Ok(rows.iter().map(event_of).collect())
    }
}

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
        let limit = limit.min(i64::MAX as usize) as i64;
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
        Ok(ids)
    }
}
