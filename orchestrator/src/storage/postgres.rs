//! PostgreSQL storage (`--storage postgres://…`): the same tables as SQLite,
//! created by the migrations in `orchestrator/migrations/postgres/`, applied
//! at start in one transaction each and recorded in `schema_migrations`.
//!
//! One connection, used by the engine's ordered writer and by reads; every
//! write batch is one transaction.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use postgres::{Client, NoTls};
use uuid::Uuid;

use super::list::Arg;
use super::{JobFilter, JobWrite, PendingWebhook, Storage, StorageError};
use crate::job::{Job, JobEvent};

mod registry;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_shared_engine.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_event_task.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_active_jobs.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_dashboard_sessions.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_job_lists.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_component_storage.sql"),
    ),
    (
        8,
        include_str!("../../migrations/postgres/0008_engine_load.sql"),
    ),
    (
        9,
        include_str!("../../migrations/postgres/0009_unlogged_nonces.sql"),
    ),
];

pub struct PostgresStorage {
    /// Never dropped: the blocking client owns a small runtime that may not
    /// be dropped inside the async runtime (at exit the OS closes the socket).
    client: Mutex<std::mem::ManuallyDrop<Client>>,
    url: String,
    /// The URL without its password, for logs.
    shown: String,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn decode(body: &str) -> Result<Job, StorageError> {
    serde_json::from_str(body).map_err(|e| StorageError::Corrupt(e.to_string()))
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A job's history, oldest first (`$1`: its id); rows for [`event_of`].
pub(crate) const EVENTS_OF_JOB: &str =
    "SELECT at, event, message, task FROM job_events WHERE job_id = $1 ORDER BY seq";

/// A stored webhook from a row of `job_id, url, body`.
pub(crate) fn pending_of(r: &postgres::Row) -> PendingWebhook {
    PendingWebhook {
        job_id: r.get(0),
        url: r.get(1),
        body: r.get(2),
    }
}

/// A history entry from a row of [`EVENTS_OF_JOB`].
pub(crate) fn event_of(r: &postgres::Row) -> JobEvent {
    JobEvent {
        at: r.get::<_, DateTime<Utc>>(0),
        event: r.get(1),
        message: r.get(2),
        task: JobEvent::task_from_json(r.get(3)),
    }
}

/// Retention's first step: deletes a batch of ended jobs (`$1`: last
/// changed before, `$2`: most) and returns their ids; rows another
/// transaction holds are skipped.
pub(crate) const DELETE_ENDED: &str = "DELETE FROM jobs WHERE id IN (
     SELECT id FROM jobs WHERE status IN ('finished', 'failed', 'cancelled') AND updated_at < $1
     ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
     RETURNING id";
/// Retention's second step: the history and webhooks of those jobs (`$1`).
pub(crate) const DELETE_ENDED_REST: &str =
    "WITH gone AS (DELETE FROM job_events WHERE job_id = ANY($1))
     DELETE FROM webhooks WHERE job_id = ANY($1)";

/// The job list's statement for `filter` ([`super::list`]).
pub(crate) fn list_query(filter: &JobFilter) -> (String, Vec<Arg>) {
    super::list::list_query(filter, super::list::Dialect::Postgres)
}

/// The parameters of [`list_query`], as the driver takes them.
pub(crate) fn list_params(args: &[Arg]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    args.iter()
        .map(|arg| -> &(dyn postgres::types::ToSql + Sync) {
            match arg {
                Arg::Text(s) => s,
                Arg::Int(n) => n,
                Arg::Time(t) => t,
                Arg::Id(id) => id,
            }
        })
        .collect()
}

impl PostgresStorage {
    /// Connects and applies the migrations not applied yet. Blocking: call
    /// it, like every method, outside the async runtime's threads
    /// (`spawn_blocking`), as the engine does.
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let shown = without_password(url);
        let mut client =
            connect(url).map_err(|e| backend(format!("cannot connect to {shown}: {e}")))?;
        migrate(&mut client).map_err(|e| backend(format!("migrating {shown}: {e}")))?;
        Ok(Self {
            client: Mutex::new(std::mem::ManuallyDrop::new(client)),
            url: url.to_string(),
            shown,
        })
    }

    /// The connection; a new one first when the last was closed (the server
    /// restarted, or ended our session): the call that met the closed
    /// connection failed, the next one works.
    fn lock(&self) -> std::sync::MutexGuard<'_, std::mem::ManuallyDrop<Client>> {
        let mut client = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if client.is_closed() {
            match connect(&self.url) {
                Ok(fresh) => {
                    let old = std::mem::replace(&mut *client, std::mem::ManuallyDrop::new(fresh));
                    // Its runtime may not be dropped on an async thread.
                    std::thread::spawn(move || drop(std::mem::ManuallyDrop::into_inner(old)));
                    tracing::warn!("the connection to {} was closed; reconnected", self.shown);
                }
                Err(e) => tracing::warn!("cannot reconnect to {}: {e}", self.shown),
            }
        }
        client
    }
}

/// Most time a connection may take to open.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.connect(NoTls)
}

fn migrate(client: &mut Client) -> Result<(), postgres::Error> {
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )?;
    for (version, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        // Two instances starting together: one migrates, the other waits.
        tx.batch_execute("LOCK TABLE schema_migrations IN EXCLUSIVE MODE")?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )?
            .is_some();
        if !done {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )?;
            tracing::info!("applied database migration {version}");
        }
        tx.commit()?;
    }
    Ok(())
}

impl Storage for PostgresStorage {
    fn write(&self, writes: &[JobWrite], delivered: &[Uuid]) -> Result<(), StorageError> {
        let mut client = self.lock();
        let mut tx = client.transaction().map_err(backend)?;
        let upsert = tx
            .prepare(
                "INSERT INTO jobs (id, blueprint, owner, status, created_at, updated_at, version, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at,
                     version = excluded.version, body = excluded.body
                 WHERE excluded.version > jobs.version",
            )
            .map_err(backend)?;
        let event = tx
            .prepare("INSERT INTO job_events (job_id, at, event, message, task) VALUES ($1, $2, $3, $4, $5)")
            .map_err(backend)?;
        let hook = tx
            .prepare(
                "INSERT INTO webhooks (job_id, url, body, created_at) VALUES ($1, $2, $3, now())
                 ON CONFLICT (job_id) DO UPDATE SET url = excluded.url, body = excluded.body",
            )
            .map_err(backend)?;
        for w in writes {
            if let Some(h) = &w.webhook {
                tx.execute(&hook, &[&h.job_id, &h.url, &h.body])
                    .map_err(backend)?;
            }
            let job = &w.job;
            let body = serde_json::to_string(job).map_err(backend)?;
            tx.execute(
                &upsert,
                &[
                    &job.id,
                    &job.blueprint,
                    &job.owner,
                    &job.status.as_str(),
                    &job.created_at,
                    &job.updated_at,
                    &(job.version as i64),
                    &body,
                ],
            )
            .map_err(backend)?;
            for e in &w.events {
                let task = crate::job::JobEvent::task_json(e);
                tx.execute(&event, &[&job.id, &e.at, &e.event, &e.message, &task])
                    .map_err(backend)?;
            }
        }
        if !delivered.is_empty() {
            tx.execute("DELETE FROM webhooks WHERE job_id = ANY($1)", &[&delivered])
                .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }

    fn pending_webhooks(&self) -> Result<Vec<PendingWebhook>, StorageError> {
        let rows = self
            .lock()
            .query(
                "SELECT job_id, url, body FROM webhooks ORDER BY created_at",
                &[],
            )
            .map_err(backend)?;
        Ok(rows.iter().map(pending_of).collect())
    }

    fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        let row = self
            .lock()
            .query_opt("SELECT body FROM jobs WHERE id = $1", &[&id])
            .map_err(backend)?;
        row.map(|r| decode(r.get(0))).transpose()
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StorageError> {
        let (sql, args) = list_query(filter);
        let rows = self
            .lock()
            .query(&sql, &list_params(&args))
            .map_err(backend)?;
        rows.iter().map(|r| decode(r.get(0))).collect()
    }

    fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, StorageError> {
        let rows = self.lock().query(EVENTS_OF_JOB, &[&id]).map_err(backend)?;
        Ok(rows.iter().map(event_of).collect())
    }

    fn delete_ended(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<Uuid>, StorageError> {
        let mut client = self.lock();
        let mut tx = client.transaction().map_err(backend)?;
        let ids: Vec<Uuid> = tx
            .query(DELETE_ENDED, &[&before, &super::sql_count(limit)])
            .map_err(backend)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(DELETE_ENDED_REST, &[&ids]).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(ids)
    }

    fn unfinished_jobs(&self) -> Result<Vec<Job>, StorageError> {
        let mut client = self.lock();
        // Written out, so the partial index of active jobs serves it.
        let rows = client
            .query(
                "SELECT id, body FROM jobs
                 WHERE status NOT IN ('finished', 'failed', 'quarantined', 'cancelled')
                 ORDER BY created_at",
                &[],
            )
            .map_err(backend)?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let id: Uuid = row.get(0);
            match decode(row.get(1)) {
                Ok(job) => jobs.push(job),
                // An unreadable job cannot run: mark it failed so it is not
                // tried again at every start, and say so.
                Err(e) => {
                    tracing::error!("stored job {id} is unreadable and is marked failed: {e}");
                    client
                        .execute("UPDATE jobs SET status = 'failed' WHERE id = $1", &[&id])
                        .map_err(backend)?;
                    client
                        .execute(
                            "INSERT INTO job_events (job_id, at, event, message) VALUES ($1, now(), 'failed', $2)",
                            &[&id, &format!("INVALID_JOB: the stored job is unreadable: {e}")],
                        )
                        .map_err(backend)?;
                }
            }
        }
        Ok(jobs)
    }

    fn describe(&self) -> String {
        format!("PostgreSQL storage at {}", self.shown)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::without_password("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            super::without_password("postgres://h/db"),
            "postgres://h/db"
        );
    }
}
