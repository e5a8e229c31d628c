//! An event's writes in one statement: each table's rows come as arrays, one
//! data-modifying part per kind of row, and the count of jobs updated tells
//! whether each job was still at the version loaded.
//!
//! Only the parts with rows are in the statement. Every part of a
//! data-modifying `WITH` runs, even over empty arrays, and each costs the
//! server an executor start-up and a table's locks; an echo task's take
//! writes five kinds of row out of thirteen. The statement's text names the
//! parts it holds, so each shape is prepared once per connection (a handful
//! of shapes in practice: a create, a take, a result, a retry...).
//!
//! No two parts touch one row (a task leased anew is not also unleased).
//! Rows to change are found by `= ANY(<ids>)` (an index scan) before they
//! are joined with their arrays: a join alone lets the planner, which
//! cannot see an array's length in a generic plan, scan the whole table.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::DbError;

/// Every row an event writes, by table.
#[derive(Default)]
pub(super) struct Writes {
    pub upd_ids: Vec<Uuid>,
    pub upd_statuses: Vec<&'static str>,
    pub upd_ats: Vec<DateTime<Utc>>,
    pub upd_versions: Vec<i64>,
    pub upd_bodies: Vec<String>,
    pub upd_expected: Vec<i64>,
    pub ins_ids: Vec<Uuid>,
    pub ins_blueprints: Vec<String>,
    pub ins_owners: Vec<String>,
    pub ins_statuses: Vec<&'static str>,
    pub ins_created: Vec<DateTime<Utc>>,
    pub ins_updated: Vec<DateTime<Utc>>,
    pub ins_versions: Vec<i64>,
    pub ins_bodies: Vec<String>,
    pub event_jobs: Vec<Uuid>,
    pub event_ats: Vec<DateTime<Utc>>,
    pub event_kinds: Vec<String>,
    pub event_messages: Vec<String>,
    pub event_tasks: Vec<Option<String>>,
    pub queue_jobs: Vec<Uuid>,
    pub queue_tasks: Vec<String>,
    pub queue_types: Vec<String>,
    pub queue_ranks: Vec<i64>,
    pub queue_constrained: Vec<bool>,
    pub queue_keys: Vec<Option<String>>,
    /// Queue rows (seq) taken out.
    pub queue_taken: Vec<i64>,
    pub timer_due: Vec<DateTime<Utc>>,
    pub timer_jobs: Vec<Uuid>,
    pub timer_kinds: Vec<&'static str>,
    pub timer_tasks: Vec<String>,
    pub timers_dropped: Vec<i64>,
    pub lease_tasks: Vec<String>,
    pub lease_jobs: Vec<Uuid>,
    pub lease_workers: Vec<String>,
    pub lease_since: Vec<DateTime<Utc>>,
    pub lease_keys: Vec<Option<String>>,
    pub unlease_tasks: Vec<String>,
    pub unlease_workers: Vec<String>,
    pub worker_ids: Vec<String>,
    pub worker_records: Vec<serde_json::Value>,
    pub worker_seen: Vec<DateTime<Utc>>,
    pub worker_ttls: Vec<i64>,
    pub workers_dropped: Vec<String>,
    pub hook_jobs: Vec<Uuid>,
    pub hook_urls: Vec<String>,
    pub hook_bodies: Vec<String>,
    pub rate_keys: Vec<String>,
    pub rate_ahead: Vec<i64>,
}

/// How a write sent with its transaction's `COMMIT` failed.
pub(super) enum CommitFailed {
    /// Before the `COMMIT` went: the transaction is still open.
    Before(DbError),
    /// After: the transaction is over (the server rolled back whatever
    /// failed), or the connection is gone.
    After(DbError),
}

/// The statement being built: the parts with rows and their parameters,
/// in order.
#[derive(Default)]
struct Statement<'a> {
    /// One bit per part offered, set for those in: the text depends on
    /// nothing else.
    shape: u32,
    /// Parts offered so far.
    offered: u32,
    /// Each part in: its name, its text, and how many parameters come
    /// before its own.
    parts: Vec<(&'static str, &'static str, usize)>,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

/// Each shape's text, made once per process (at most one per subset of
/// the thirteen parts; a handful in practice).
static TEXTS: std::sync::LazyLock<std::sync::Mutex<HashMap<u32, Arc<str>>>> =
    std::sync::LazyLock::new(Default::default);

impl<'a> Statement<'a> {
    /// Adds the part `name AS (sql)` when `present`. In `sql`, `@1`..`@9`
    /// are the part's own parameters, `args` in that order.
    fn part(
        &mut self,
        present: bool,
        name: &'static str,
        sql: &'static str,
        args: &[&'a (dyn ToSql + Sync)],
    ) {
        let bit = 1 << self.offered;
        self.offered += 1;
        if !present {
            return;
        }
        self.shape |= bit;
        self.parts.push((name, sql, self.params.len()));
        self.params.extend_from_slice(args);
    }

    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The text. With an `upd` part (always the first, so its ids are
    /// `$1`) it ends with the check that every job was still at the
    /// version loaded.
    fn text(&self) -> Arc<str> {
        let mut texts = TEXTS.lock().unwrap_or_else(|p| p.into_inner());
        texts
            .entry(self.shape)
            .or_insert_with(|| {
                let parts: Vec<String> = self
                    .parts
                    .iter()
                    .map(|(name, sql, base)| {
                        let mut text = sql.to_string();
                        for k in 1..=9 {
                            text = text.replace(&format!("@{k}"), &format!("${}", base + k));
                        }
                        format!("{name} AS ({text})")
                    })
                    .collect();
                let last = match self.parts.first() {
                    Some(("upd", ..)) => {
                        "SELECT engine_updated(count(*), cardinality($1::uuid[])) FROM upd"
                    }
                    _ => "SELECT 0::bigint",
                };
                format!("WITH {} {last}", parts.join(",\n  ")).into()
            })
            .clone()
    }
}

impl Writes {
    /// The statement for these rows: only the parts that have some.
    fn statement(&self) -> Statement<'_> {
        let mut s = Statement::default();
        s.part(
            !self.upd_ids.is_empty(),
            "upd",
            "UPDATE jobs j SET status = u.status, updated_at = u.updated_at, version = u.version, body = u.body
             FROM unnest(@1::uuid[], @2::text[], @3::timestamptz[], @4::bigint[], @5::text[], @6::bigint[])
                  AS u(id, status, updated_at, version, body, expected)
             WHERE j.id = ANY(@1) AND j.id = u.id AND j.version = u.expected RETURNING 1",
            &[
                &self.upd_ids,
                &self.upd_statuses,
                &self.upd_ats,
                &self.upd_versions,
                &self.upd_bodies,
                &self.upd_expected,
            ],
        );
        s.part(
            !self.ins_ids.is_empty(),
            "ins",
            "INSERT INTO jobs (id, blueprint, owner, status, created_at, updated_at, version, body)
             SELECT * FROM unnest(@1::uuid[], @2::text[], @3::text[], @4::text[], @5::timestamptz[],
                                  @6::timestamptz[], @7::bigint[], @8::text[])",
            &[
                &self.ins_ids,
                &self.ins_blueprints,
                &self.ins_owners,
                &self.ins_statuses,
                &self.ins_created,
                &self.ins_updated,
                &self.ins_versions,
                &self.ins_bodies,
            ],
        );
        s.part(
            !self.event_jobs.is_empty(),
            "ev",
            "INSERT INTO job_events (job_id, at, event, message, task)
             SELECT job_id, at, event, message, task
             FROM unnest(@1::uuid[], @2::timestamptz[], @3::text[], @4::text[], @5::text[])
                  WITH ORDINALITY AS e(job_id, at, event, message, task, n)
             ORDER BY n",
            &[
                &self.event_jobs,
                &self.event_ats,
                &self.event_kinds,
                &self.event_messages,
                &self.event_tasks,
            ],
        );
        s.part(
            !self.queue_jobs.is_empty(),
            "q",
            "INSERT INTO task_queue (job_id, task_id, task_type, rank, constrained, ckey)
             SELECT job_id, task_id, task_type, rank, constrained, ckey
             FROM unnest(@1::uuid[], @2::text[], @3::text[], @4::bigint[], @5::bool[], @6::text[])
                  WITH ORDINALITY AS q(job_id, task_id, task_type, rank, constrained, ckey, n)
             ORDER BY n",
            &[
                &self.queue_jobs,
                &self.queue_tasks,
                &self.queue_types,
                &self.queue_ranks,
                &self.queue_constrained,
                &self.queue_keys,
            ],
        );
        s.part(
            !self.queue_taken.is_empty(),
            "qd",
            "DELETE FROM task_queue WHERE seq = ANY(@1::bigint[])",
            &[&self.queue_taken],
        );
        s.part(
            !self.timer_jobs.is_empty(),
            "ti",
            "INSERT INTO timers (due_at, job_id, kind, task_id)
             SELECT * FROM unnest(@1::timestamptz[], @2::uuid[], @3::text[], @4::text[])",
            &[
                &self.timer_due,
                &self.timer_jobs,
                &self.timer_kinds,
                &self.timer_tasks,
            ],
        );
        s.part(
            !self.timers_dropped.is_empty(),
            "td",
            "DELETE FROM timers WHERE id = ANY(@1::bigint[])",
            &[&self.timers_dropped],
        );
        s.part(
            !self.lease_tasks.is_empty(),
            "li",
            "INSERT INTO task_leases (task_id, job_id, worker_id, since, ckey)
             SELECT * FROM unnest(@1::text[], @2::uuid[], @3::text[], @4::timestamptz[], @5::text[])
             ON CONFLICT (task_id) DO UPDATE SET job_id = excluded.job_id,
                 worker_id = excluded.worker_id, since = excluded.since, ckey = excluded.ckey",
            &[
                &self.lease_tasks,
                &self.lease_jobs,
                &self.lease_workers,
                &self.lease_since,
                &self.lease_keys,
            ],
        );
        s.part(
            !self.unlease_tasks.is_empty(),
            "ld",
            "DELETE FROM task_leases l USING unnest(@1::text[], @2::text[]) AS d(task_id, worker_id)
             WHERE l.task_id = ANY(@1) AND l.task_id = d.task_id AND l.worker_id = d.worker_id",
            &[&self.unlease_tasks, &self.unlease_workers],
        );
        s.part(
            !self.worker_ids.is_empty(),
            "wu",
            "INSERT INTO workers (id, record, last_seen, ttl_ms)
             SELECT * FROM unnest(@1::text[], @2::jsonb[], @3::timestamptz[], @4::bigint[])
             ON CONFLICT (id) DO UPDATE SET record = excluded.record,
                 last_seen = GREATEST(workers.last_seen, excluded.last_seen), ttl_ms = excluded.ttl_ms",
            &[
                &self.worker_ids,
                &self.worker_records,
                &self.worker_seen,
                &self.worker_ttls,
            ],
        );
        s.part(
            !self.workers_dropped.is_empty(),
            "wd",
            "DELETE FROM workers WHERE id = ANY(@1::text[])",
            &[&self.workers_dropped],
        );
        s.part(
            !self.hook_jobs.is_empty(),
            "wh",
            "INSERT INTO webhooks (job_id, url, body, created_at)
             SELECT j, u, b, now() FROM unnest(@1::uuid[], @2::text[], @3::text[]) AS w(j, u, b)
             ON CONFLICT (job_id) DO UPDATE SET url = excluded.url, body = excluded.body",
            &[&self.hook_jobs, &self.hook_urls, &self.hook_bodies],
        );
        s.part(
            !self.rate_keys.is_empty(),
            "rb",
            "INSERT INTO rate_buckets (key, tat)
             SELECT k, now() + u * interval '1 microsecond' FROM unnest(@1::text[], @2::bigint[]) AS r(k, u)
             ON CONFLICT (key) DO UPDATE SET tat = excluded.tat",
            &[&self.rate_keys, &self.rate_ahead],
        );
        s
    }

    /// Writes the rows (nothing when there are none). Fails with a
    /// serialization failure (`engine_updated`, migration 0016) when a job
    /// was no longer at the version loaded.
    pub async fn run(&self, tx: &impl GenericClient) -> Result<(), DbError> {
        let statement = self.statement();
        if statement.is_empty() {
            return Ok(());
        }
        let row = tx
            .query_one(
                &tx.prepare_cached(&statement.text()).await?,
                &statement.params,
            )
            .await?;
        self.check(row.get(0))
    }

    /// [`Self::run`] with the transaction's `COMMIT` sent right behind the
    /// write, in the same round trip: after a failed write the server
    /// rolls back instead.
    pub async fn run_and_commit(&self, tx: &impl GenericClient) -> Result<(), CommitFailed> {
        let statement = self.statement();
        if statement.is_empty() {
            return tx
                .batch_execute("COMMIT")
                .await
                .map_err(|e| CommitFailed::After(e.into()));
        }
        // Prepared first: the write must reach the server before the
        // COMMIT, and a statement not yet prepared would take a round
        // trip of its own while the COMMIT went ahead.
        let prepared = tx
            .prepare_cached(&statement.text())
            .await
            .map_err(|e| CommitFailed::Before(e.into()))?;
        let (row, committed) = tokio::join!(
            tx.query_one(&prepared, &statement.params),
            tx.batch_execute("COMMIT")
        );
        let row = row.map_err(|e| CommitFailed::After(e.into()))?;
        committed.map_err(|e| CommitFailed::After(e.into()))?;
        self.check(row.get(0)).map_err(CommitFailed::After)
    }

    /// The jobs updated, against those that had to be (`engine_updated`
    /// raised already when they differed: this holds when it did not run).
    fn check(&self, updated: i64) -> Result<(), DbError> {
        if updated as usize != self.upd_ids.len() {
            return Err(DbError::Conflict(format!(
                "{} of {} job(s) changed meanwhile",
                self.upd_ids.len() as i64 - updated,
                self.upd_ids.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parts_with_rows_are_written_and_numbered_in_order() {
        let w = Writes {
            queue_taken: vec![7],
            lease_tasks: vec!["t".into()],
            lease_jobs: vec![Uuid::nil()],
            lease_workers: vec!["w".into()],
            lease_since: vec![Utc::now()],
            lease_keys: vec![None],
            ..Writes::default()
        };
        let s = w.statement();
        let text = s.text();
        assert_eq!(s.params.len(), 6);
        assert!(
            text.starts_with("WITH qd AS (DELETE FROM task_queue WHERE seq = ANY($1::bigint[]))")
        );
        assert!(
            text.contains(
                "unnest($2::text[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[])"
            )
        );
        assert!(!text.contains('@'));
        assert!(!text.contains("upd AS"));
        assert!(text.ends_with("SELECT 0::bigint"));
    }

    #[test]
    fn an_update_ends_with_the_check_of_the_jobs_updated() {
        let w = Writes {
            upd_ids: vec![Uuid::nil()],
            upd_statuses: vec!["running"],
            upd_ats: vec![Utc::now()],
            upd_versions: vec![2],
            upd_bodies: vec!["{}".into()],
            upd_expected: vec![1],
            ..Writes::default()
        };
        let s = w.statement();
        let text = s.text();
        assert_eq!(s.params.len(), 6);
        assert!(
            text.ends_with("SELECT engine_updated(count(*), cardinality($1::uuid[])) FROM upd")
        );
    }

    #[test]
    fn nothing_to_write_is_an_empty_statement() {
        assert!(Writes::default().statement().is_empty());
    }
}
