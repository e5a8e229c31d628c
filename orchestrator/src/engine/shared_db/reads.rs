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
