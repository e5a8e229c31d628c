//! Idempotency keys on the shared database: a claim is one statement that
//! inserts the key, or takes over one past the retention, and otherwise
//! returns its holder.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::storage::HeldKey;

use super::{DbError, SharedDb};

/// Statements a claim may take (each sees what the one before could not).
const CLAIM_TRIES: usize = 5;

impl SharedDb {
    pub(crate) async fn claim_key(
        &self,
        owner: &str,
        key: &str,
        job: Uuid,
        expired: DateTime<Utc>,
    ) -> Result<Option<HeldKey>, DbError> {
        let client = self.client().await?;
        // Inserted or taken over: the row names `job`. Otherwise the
        // holder comes back from the second branch, unless it was committed
        // after this statement's snapshot began (then the next one sees it).
        for _ in 0..CLAIM_TRIES {
            let row = client
                .query_opt(
                    "WITH claimed AS (
                     INSERT INTO idempotency_keys (owner, key, job_id, created_at)
                     VALUES ($1, $2, $3, now())
                     ON CONFLICT (owner, key) DO UPDATE
                         SET job_id = excluded.job_id, created_at = excluded.created_at
                         WHERE idempotency_keys.created_at < $4
                     RETURNING job_id, created_at
                 )
                 SELECT job_id, created_at FROM claimed
                 UNION ALL
                 SELECT job_id, created_at FROM idempotency_keys
                 WHERE owner = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM claimed)
                 LIMIT 1",
                    &[&owner, &key, &job, &expired],
                )
                .await?;
            if let Some(row) = row {
                let (held, at): (Uuid, DateTime<Utc>) = (row.get(0), row.get(1));
                return Ok((held != job).then_some(HeldKey { job: held, at }));
            }
        }
        Err(DbError::Corrupt(format!(
            "idempotency key {key:?}: neither claimed nor held after {CLAIM_TRIES} tries"
        )))
    }

    pub(crate) async fn release_key(
        &self,
        owner: &str,
        key: &str,
        job: Uuid,
    ) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM idempotency_keys WHERE owner = $1 AND key = $2 AND job_id = $3",
                &[&owner, &key, &job],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn replace_key(
        &self,
        owner: &str,
        key: &str,
        old: Uuid,
        new: Uuid,
    ) -> Result<bool, DbError> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE idempotency_keys SET job_id = $4, created_at = now()
                 WHERE owner = $1 AND key = $2 AND job_id = $3",
                &[&owner, &key, &old, &new],
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn prune_keys(&self, expired: DateTime<Utc>) -> Result<usize, DbError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < $1",
                &[&expired],
            )
            .await?;
        Ok(n as usize)
    }
}
