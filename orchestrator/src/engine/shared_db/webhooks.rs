//! Webhooks owed on a shared database survive the instance that owed them.
//!
//! A webhook row is stored with the job change that ended its job; its
//! `created_at` is the delivering instance's lease (fresh when the row is
//! stored or taken over), renewed before each later attempt, and deleted when the delivery is done with. A row whose lease is
//! older than [`super::super::EngineSettings::webhook_lease`] belongs to an
//! instance that died (or a delivery stuck that long): any instance takes it
//! over (one, by `FOR UPDATE SKIP LOCKED`) and delivers it. Delivery is at
//! least once: a receiver may see a webhook twice after a crash.

use std::time::Duration;

use uuid::Uuid;

use super::{DbError, SharedDb};
use crate::storage::PendingWebhook;

/// Most webhooks one instance takes over per maintenance pass.
const TAKEN_PER_PASS: i64 = 32;

impl SharedDb {
    /// Takes over webhooks whose lease ran out (their owner is gone).
    pub(crate) async fn orphaned_webhooks(
        &self,
        lease: Duration,
    ) -> Result<Vec<PendingWebhook>, DbError> {
        let client = self.client().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "UPDATE webhooks SET created_at = now() WHERE job_id IN (
                             SELECT job_id FROM webhooks
                             WHERE created_at < now() - make_interval(secs => $1)
                             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
                         RETURNING job_id, url, body",
                    )
                    .await?,
                &[&lease.as_secs_f64(), &TAKEN_PER_PASS],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| PendingWebhook {
                job_id: r.get(0),
                url: r.get(1),
                body: r.get(2),
            })
            .collect())
    }

    /// Renews this instance's lease on a webhook it is delivering.
    pub(crate) async fn renew_webhook(&self, job_id: Uuid) -> Result<(), DbError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("UPDATE webhooks SET created_at = now() WHERE job_id = $1")
                    .await?,
                &[&job_id],
            )
            .await?;
        Ok(())
    }

    /// A webhook is done with (delivered or given up): its row goes.
    pub(crate) async fn webhook_done(&self, job_id: Uuid) -> Result<(), DbError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("DELETE FROM webhooks WHERE job_id = $1")
                    .await?,
                &[&job_id],
            )
            .await?;
        Ok(())
    }
}
