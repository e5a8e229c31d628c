//! An event's transaction in two round trips instead of four: its `BEGIN`
//! travels with the load ([`Scratch::load`](super::scratch::Scratch::load))
//! and its `COMMIT` with the write ([`Writes::run_and_commit`]); the connection
//! sends each pair without waiting in between.
//!
//! [`Open`] holds the pooled connection while the transaction may be open.
//! Should the event's future be dropped midway (a client that hung up, for
//! an event made alone), the connection is closed rather than returned to
//! the pool inside a transaction; the server rolls back what it held.

use deadpool_postgres::{Client, GenericClient};

use super::DbError;
use super::writes::{CommitFailed, Writes};

/// A pooled connection with a transaction that may be open.
pub(super) struct Open {
    client: Option<Client>,
}

impl Open {
    /// Sends `BEGIN` and, right behind it, the first statement (`first`,
    /// given the connection); both answers in one round trip. On failure
    /// the transaction is rolled back.
    pub async fn begin<T>(
        client: Client,
        first: impl AsyncFnOnce(&Client) -> Result<T, DbError>,
    ) -> Result<(Self, T), DbError> {
        // Held by the guard from the BEGIN on.
        let open = Self {
            client: Some(client),
        };
        let (began, loaded) = match open.client.as_ref() {
            Some(c) => tokio::join!(c.batch_execute("BEGIN"), first(c)),
            None => return Err(DbError::Pool("the transaction's connection is gone".into())),
        };
        match (began, loaded) {
            (Ok(()), Ok(t)) => Ok((open, t)),
            (Err(e), _) => {
                open.rollback().await;
                Err(e.into())
            }
            (_, Err(e)) => {
                open.rollback().await;
                Err(e)
            }
        }
    }

    /// Writes `writes` and commits, in one round trip. Once the server
    /// has answered, the transaction is over (committed, or rolled back
    /// after a failed write) and the connection goes back to the pool.
    pub async fn commit(mut self, writes: &Writes) -> Result<(), DbError> {
        let Some(c) = self.client.as_ref() else {
            return Err(DbError::Pool("the transaction's connection is gone".into()));
        };
        match writes.run_and_commit(c).await {
            Ok(()) => {
                drop(self.client.take());
                Ok(())
            }
            Err(CommitFailed::After(e)) => {
                // Ended by the server (a broken connection is dropped by
                // the pool's recycling check).
                drop(self.client.take());
                Err(e)
            }
            Err(CommitFailed::Before(e)) => {
                self.rollback().await;
                Err(e)
            }
        }
    }

    /// Rolls back; a connection that cannot is closed.
    pub async fn rollback(mut self) {
        if let Some(c) = self.client.take()
            && c.batch_execute("ROLLBACK").await.is_err()
        {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            // Out of the pool: closing the connection ends the transaction.
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

#[cfg(test)]
#[path = "../../../../tests/tests/e2e/support/pg.rs"]
mod pg;

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::super::SharedDb;
    use super::super::writes::Writes;
    use super::*;

    /// A job row at version 1, and an event's writes moving it to version
    /// 2 from `expected`, with one history row.
    async fn job_and_writes(db: &SharedDb, expected: i64) -> (Uuid, Writes) {
        let id = Uuid::new_v4();
        let c = db.client().await.unwrap();
        c.execute(
            "INSERT INTO jobs (id, blueprint, owner, status, created_at, updated_at, version, body)
             VALUES ($1, 'flow', 'o', 'pending', now(), now(), 1, '{}')",
            &[&id],
        )
        .await
        .unwrap();
        let w = Writes {
            upd_ids: vec![id],
            upd_statuses: vec!["running"],
            upd_ats: vec![Utc::now()],
            upd_versions: vec![2],
            upd_bodies: vec!["{}".into()],
            upd_expected: vec![expected],
            event_jobs: vec![id],
            event_ats: vec![Utc::now()],
            event_kinds: vec!["dispatched".into()],
            event_messages: vec![String::new()],
            event_tasks: vec![None],
            ..Writes::default()
        };
        (id, w)
    }

    /// The job's version and its history rows, read on a fresh connection.
    async fn stored(db: &SharedDb, id: Uuid) -> (i64, i64) {
        let c = db.client().await.unwrap();
        let row = c
            .query_one(
                "SELECT version, (SELECT count(*) FROM job_events WHERE job_id = $1) FROM jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// No connection to the database is left inside a transaction.
    async fn no_transaction_left_open(db: &SharedDb) {
        let c = db.client().await.unwrap();
        let row = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            0,
            "a connection was left inside a transaction"
        );
    }

    async fn begin(db: &SharedDb) -> Open {
        let client = db.client().await.unwrap();
        let (open, one) = Open::begin(client, async |c| {
            Ok(c.query_one("SELECT 1::int4", &[]).await?.get::<_, i32>(0))
        })
        .await
        .unwrap();
        assert_eq!(one, 1);
        open
    }

    #[tokio::test]
    async fn a_write_and_its_commit_go_together_and_a_missed_version_commits_nothing() {
        let test_db = pg::TestDatabase::create().await;
        let db = SharedDb::connect(&test_db.url, 10).await.unwrap();

        // The version moved meanwhile: the write raises, the COMMIT behind
        // it rolls back the history row with it, and the error is retried.
        let (id, writes) = job_and_writes(&db, 7).await;
        let err = begin(&db).await.commit(&writes).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("changed meanwhile"), "{err}");
        assert_eq!(stored(&db, id).await, (1, 0));
        no_transaction_left_open(&db).await;

        // At the version loaded: both rows committed.
        let (id, writes) = job_and_writes(&db, 1).await;
        begin(&db).await.commit(&writes).await.unwrap();
        assert_eq!(stored(&db, id).await, (2, 1));
        no_transaction_left_open(&db).await;
    }

    #[tokio::test]
    async fn a_transaction_dropped_midway_holds_no_lock_and_leaves_no_connection_inside_it() {
        let test_db = pg::TestDatabase::create().await;
        let db = SharedDb::connect(&test_db.url, 10).await.unwrap();
        let (id, writes) = job_and_writes(&db, 1).await;
        let client = db.client().await.unwrap();
        let (open, ()) = Open::begin(client, async |c| {
            c.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&id])
                .await?;
            Ok(())
        })
        .await
        .unwrap();
        // An event whose caller went away.
        drop(open);
        no_transaction_left_open(&db).await;
        // The row lock went with the connection: a write gets through.
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            begin(&db).await.commit(&writes),
        )
        .await
        .expect("the dropped transaction's lock was still held");
        done.unwrap();
        assert_eq!(stored(&db, id).await, (2, 1));
    }
}
