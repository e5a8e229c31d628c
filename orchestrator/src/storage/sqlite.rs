//! SQLite storage: one file, WAL mode, every write batch in one transaction.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::list::Arg;
use super::{JobFilter, JobWrite, PendingWebhook, Storage, StorageError};

mod keys;
mod readers;
mod registry;
mod schedules;
mod usage;
use crate::job::{Job, JobEvent};

/// `job_events.seq` orders the history of a job. It is the rowid, so a new
/// entry takes the largest one + 1; without AUTOINCREMENT, SQLite does not
/// update `sqlite_sequence` on every insert (one page fewer in each commit,
/// ~5 % of the orchestrator's CPU per job when measured). Databases
/// created before keep AUTOINCREMENT, which orders the same way.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    blueprint   TEXT NOT NULL,
    owner       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    version     INTEGER NOT NULL,
    body        TEXT NOT NULL
);
-- One index per filter of the job list (owner; owner + status; owner +
-- blueprint), each in the list's order, so a page reads only its rows. Each
-- of the last two also holds the other filter's column: a list filtered by
-- both skips non-matching jobs without reading them, whichever is used.
CREATE INDEX IF NOT EXISTS jobs_owner_created_id ON jobs (owner, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_owner_status_created ON jobs (owner, status, created_at, id, blueprint);
CREATE INDEX IF NOT EXISTS jobs_owner_blueprint_created ON jobs (owner, blueprint, created_at, id, status);
DROP INDEX IF EXISTS jobs_owner_created;
-- Jobs that have not ended, for the start (a few, out of millions).
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (created_at)
    WHERE status NOT IN ('finished', 'failed', 'quarantined', 'cancelled');
DROP INDEX IF EXISTS jobs_status;
-- Ended jobs by when they last changed, for retention.
CREATE INDEX IF NOT EXISTS jobs_ended_updated ON jobs (updated_at)
    WHERE status IN ('finished', 'failed', 'cancelled');
CREATE TABLE IF NOT EXISTS job_events (
    job_id  TEXT NOT NULL,
    seq     INTEGER PRIMARY KEY,
    at      TEXT NOT NULL,
    event   TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_events_job ON job_events (job_id, seq);
CREATE TABLE IF NOT EXISTS webhooks (
    job_id     TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS plugin_components (
    sha256 TEXT PRIMARY KEY,
    bytes  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS plugin_versions (
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    manifest    TEXT,
    uploaded_at TEXT NOT NULL,
    uploaded_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS plugin_current (
    name    TEXT PRIMARY KEY,
    version INTEGER
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    owner      TEXT NOT NULL,
    key        TEXT NOT NULL,
    job_id     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE TABLE IF NOT EXISTS client_usage (
    owner  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    period TEXT NOT NULL,
    used   INTEGER NOT NULL,
    PRIMARY KEY (owner, kind, period)
);
CREATE TABLE IF NOT EXISTS schedule_state (
    name      TEXT PRIMARY KEY,
    last_slot TEXT NOT NULL,
    last_job  TEXT,
    paused    INTEGER NOT NULL DEFAULT 0,
    pending   INTEGER NOT NULL DEFAULT 0,
    source    TEXT
);
CREATE TABLE IF NOT EXISTS blueprint_versions (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    text       TEXT NOT NULL,
    origin     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
"#;

pub struct SqliteStorage {
    /// The one writer.
    conn: Mutex<Connection>,
    /// Reads of jobs and their history, never on the writer's connection.
    readers: readers::Readers,
    path: String,
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

impl SqliteStorage {
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| backend(format!("cannot create {}: {e}", parent.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
        // `auto_vacuum` takes effect only in a new file (before its first
        // table): space freed by retention then goes back to the file system.
        conn.execute_batch(
            "PRAGMA auto_vacuum = INCREMENTAL; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;",
        )
        .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        // Added after the first release: history entries name their task.
        let has_task: bool = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('job_events') WHERE name = 'task'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(backend)?
            > 0;
        if !has_task {
            conn.execute_batch("ALTER TABLE job_events ADD COLUMN task TEXT")
                .map_err(backend)?;
        }
        // Added later: schedules deployed through the API keep their text.
        let has_source: bool = conn
            .query_row(
                "SELECT count(*) FROM pragma_table_info('schedule_state') WHERE name = 'source'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(backend)?
            > 0;
        if !has_source {
            conn.execute_batch("ALTER TABLE schedule_state ADD COLUMN source TEXT")
                .map_err(backend)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
            readers: readers::Readers::new(path.to_path_buf()),
            path: path.display().to_string(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn decode(body: String) -> Result<Job, StorageError> {
    serde_json::from_str(&body).map_err(|e| StorageError::Corrupt(e.to_string()))
}

impl Storage for SqliteStorage {
    fn write(&self, writes: &[JobWrite], delivered: &[Uuid]) -> Result<(), StorageError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(backend)?;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO jobs (id, blueprint, owner, status, created_at, updated_at, version, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated_at = excluded.updated_at,
                         version = excluded.version, body = excluded.body
                     WHERE excluded.version > jobs.version",
                )
                .map_err(backend)?;
            let mut event = tx
                .prepare_cached(
                    "INSERT INTO job_events (job_id, at, event, message, task) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(backend)?;
            let mut hook = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO webhooks (job_id, url, body, created_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(backend)?;
            let mut done = tx
                .prepare_cached("DELETE FROM webhooks WHERE job_id = ?1")
                .map_err(backend)?;
            for w in writes {
                if let Some(h) = &w.webhook {
                    hook.execute(params![
                        h.job_id.to_string(),
                        h.url,
                        h.body,
                        chrono::Utc::now().to_rfc3339()
                    ])
                    .map_err(backend)?;
                }
                let job = &w.job;
                let body = serde_json::to_string(job).map_err(backend)?;
                upsert
                    .execute(params![
                        job.id.to_string(),
                        job.blueprint,
                        job.owner,
                        job.status.as_str(),
                        job.created_at.to_rfc3339(),
                        job.updated_at.to_rfc3339(),
                        job.version as i64,
                        body
                    ])
                    .map_err(backend)?;
                for e in &w.events {
                    event
                        .execute(params![
                            job.id.to_string(),
                            e.at.to_rfc3339(),
                            e.event,
                            e.message,
                            JobEvent::task_json(e)
                        ])
                        .map_err(backend)?;
                }
            }
            for id in delivered {
                done.execute([id.to_string()]).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)
    }

    fn pending_webhooks(&self) -> Result<Vec<PendingWebhook>, StorageError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT job_id, url, body FROM webhooks ORDER BY created_at")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(backend)?;
        rows.map(|r| {
            let (id, url, body) = r.map_err(backend)?;
            let job_id = Uuid::parse_str(&id).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            Ok(PendingWebhook { job_id, url, body })
        })
        .collect()
    }

    fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        let body: Option<String> = self.readers.read(|conn| {
            conn.prepare_cached("SELECT body FROM jobs WHERE id = ?1")
                .map_err(backend)?
                .query_row([id.to_string()], |r| r.get(0))
                .optional()
                .map_err(backend)
        })?;
        body.map(decode).transpose()
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StorageError> {
        let (sql, args) = super::list::list_query(filter, super::list::Dialect::Sqlite);
        let args: Vec<rusqlite::types::Value> = args
            .into_iter()
            .map(|arg| match arg {
                Arg::Text(s) => s.into(),
                Arg::Int(n) => n.into(),
                // As the columns hold them.
                Arg::Time(t) => t.to_rfc3339().into(),
                Arg::Id(id) => id.to_string().into(),
            })
            .collect();
        self.readers.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                    r.get::<_, String>(0)
                })
                .map_err(backend)?;
            rows.map(|r| r.map_err(backend).and_then(decode)).collect()
        })
    }

    fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, StorageError> {
        self.readers.read(|conn| events_on(conn, id))
    }

    fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, StorageError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(backend)?;
        let ids: Vec<String> = tx
            .prepare_cached(
                "SELECT id FROM jobs WHERE status IN ('finished', 'failed', 'cancelled')
                 AND updated_at < ?1 ORDER BY updated_at LIMIT ?2",
            )
            .map_err(backend)?
            .query_map(params![before.to_rfc3339(), super::sql_count(limit)], |r| {
                r.get(0)
            })
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        for sql in [
            "DELETE FROM job_events WHERE job_id = ?1",
            "DELETE FROM webhooks WHERE job_id = ?1",
            "DELETE FROM jobs WHERE id = ?1",
        ] {
            let mut stmt = tx.prepare_cached(sql).map_err(backend)?;
            for id in &ids {
                stmt.execute([id]).map_err(backend)?;
            }
        }
        tx.commit().map_err(backend)?;
        if !ids.is_empty() {
            // Gives freed pages back to the file system, a little at a time
            // (databases created with `auto_vacuum = INCREMENTAL`; others
            // reuse them for new jobs).
            conn.execute_batch("PRAGMA incremental_vacuum(512)")
                .map_err(backend)?;
        }
        ids.iter()
            .map(|id| Uuid::parse_str(id).map_err(|e| StorageError::Corrupt(e.to_string())))
            .collect()
    }

    fn unfinished_jobs(&self) -> Result<Vec<Job>, StorageError> {
        let conn = self.lock();
        let rows: Vec<(String, String)> = conn
            .prepare_cached(
                "SELECT id, body FROM jobs WHERE status NOT IN ('finished', 'failed', 'quarantined', 'cancelled')
                 ORDER BY created_at",
            )
            .map_err(backend)?
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        let mut jobs = Vec::with_capacity(rows.len());
        for (id, body) in rows {
            match decode(body) {
                Ok(job) => jobs.push(job),
                // An unreadable job cannot run: mark it failed so it is not
                // tried again at every start, and say so.
                Err(e) => {
                    tracing::error!("stored job {id} is unreadable and is marked failed: {e}");
                    conn.execute("UPDATE jobs SET status = 'failed' WHERE id = ?1", [&id])
                        .map_err(backend)?;
                    conn.execute(
                        "INSERT INTO job_events (job_id, at, event, message) VALUES (?1, ?2, 'failed', ?3)",
                        params![id, chrono::Utc::now().to_rfc3339(), format!("INVALID_JOB: the stored job is unreadable: {e}")],
                    )
                    .map_err(backend)?;
                }
            }
        }
        Ok(jobs)
    }

    fn describe(&self) -> String {
        format!("SQLite storage at {}", self.path)
    }
}

/// A job's history, oldest first.
fn events_on(conn: &Connection, id: Uuid) -> Result<Vec<JobEvent>, StorageError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT at, event, message, task FROM job_events WHERE job_id = ?1 ORDER BY seq",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map([id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(backend)?;
    rows.map(|r| {
        let (at, event, message, task) = r.map_err(backend)?;
        let at = chrono::DateTime::parse_from_rfc3339(&at)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?
            .with_timezone(&chrono::Utc);
        Ok(JobEvent {
            at,
            event,
            message,
            task: JobEvent::task_from_json(task),
        })
    })
    .collect()
}
