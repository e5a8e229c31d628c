//! Reads of jobs and their history on the pool, never on a writer's
//! connection and never one at a time behind a lock.

use uuid::Uuid;

use super::{DbError, SharedDb};
use crate::job::{Job, JobEvent};
use crate::storage::JobFilter;
use crate::storage::list::{Arg, Dialect, list_query};

/// A job's history, oldest first (`$1`: its id); rows for [`event_of`].
const EVENTS_OF_JOB: &str =
    "SELECT at, event, message, task FROM job_events WHERE job_id = $1 ORDER BY seq";

/// A history entry from a row of [`EVENTS_OF_JOB`].
fn event_of(r: &tokio_postgres::Row) -> JobEvent {
    JobEvent {
        at: r.get::<_, chrono::DateTime<chrono::Utc>>(0),
        event: r.get(1),
        message: r.get(2),
        task: JobEvent::task_from_json(r.get(3)),
    }
}

/// The parameters of a list statement, as the driver takes them.
fn list_params(args: &[Arg]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|arg| -> &(dyn tokio_postgres::types::ToSql + Sync) {
            match arg {
                Arg::Text(s) => s,
                Arg::Int(n) => n,
                Arg::Time(t) => t,
                Arg::Id(id) => id,
            }
        })
        .collect()
}

impl SharedDb {
    /// A page of jobs ([`crate::storage::list`]).
    pub(crate) async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, DbError> {
        let (sql, args) = list_query(filter, Dialect::Postgres);
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
