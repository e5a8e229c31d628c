//! A stored job the engine cannot read (a hand edit, a body nested deeper
//! than the parser allows, a bug) must not stop the platform: every event
//! that meets it would roll back and leave its queue entry or timer at the
//! head of the table, stopping dispatch or timers on every instance. It is
//! failed with `INVALID_JOB` and moved aside instead: a readable body that
//! says so replaces the stored one, and its queue entries, timers and leases
//! go, in one transaction. Then the event that met it runs again.

use uuid::Uuid;

use super::{DbError, SharedDb};

impl SharedDb {
    pub(crate) async fn set_aside(&self, id: Uuid, why: &str) -> Result<(), DbError> {
        tracing::error!("stored job {id} is unreadable and is marked failed: {why}");
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "SELECT blueprint, owner, created_at, version FROM jobs WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
        else {
            return Ok(());
        };
        let (blueprint, owner, created_at, version): (
            String,
            String,
            chrono::DateTime<chrono::Utc>,
            i64,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3));
        let message = format!(
            "INVALID_JOB: the stored job is unreadable: {}",
            rxon::text::clip(why, 512)
        );
        let now = self.now();
        let body = serde_json::json!({
            "id": id, "blueprint": blueprint, "owner": owner, "status": "failed",
            "current_state": "unreadable", "initial_data": {}, "results": {},
            "state_history": [], "transitions": 0,
            "error": {"code": "INVALID_JOB", "message": message},
            "created_at": created_at, "updated_at": now, "finished_at": now,
            "version": version + 1,
        })
        .to_string();
        tx.execute(
            "UPDATE jobs SET status = 'failed', updated_at = $2, version = $3, body = $4 WHERE id = $1",
            &[&id, &now, &(version + 1), &body],
        )
        .await?;
        tx.batch_execute(&format!(
            "DELETE FROM task_queue WHERE job_id = '{id}';
             DELETE FROM timers WHERE job_id = '{id}';
             DELETE FROM task_leases WHERE job_id = '{id}';"
        ))
        .await?;
        tx.execute(
            "INSERT INTO job_events (job_id, at, event, message) VALUES ($1, $2, 'failed', $3)",
            &[&id, &now, &message],
        )
        .await?;
        tx.commit().await?;
        self.jobs.notify_waiters();
        self.cache.evict([id]);
        let _ = self.notices.send(super::notify::Notice::Changed(vec![id]));
        let _ = self.notices.send(super::notify::Notice::Jobs);
        Ok(())
    }
}
