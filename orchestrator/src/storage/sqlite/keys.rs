//! The idempotency keys of [`SqliteStorage`] (one instance: each change is
//! one statement under the connection's lock).

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::{SqliteStorage, backend};
use crate::storage::{HeldKey, KeyStorage, StorageError};

/// Times are stored as RFC 3339 with a fixed width (nanoseconds, `Z`), so
/// they compare as text.
fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

impl KeyStorage for SqliteStorage {
    fn claim_key(
        &self,
        owner: &str,
        key: &str,
        job: Uuid,
        now: DateTime<Utc>,
        expired: DateTime<Utc>,
    ) -> Result<Option<HeldKey>, StorageError> {
        let conn = self.lock();
        let held: Option<(String, String)> = conn
            .query_row(
                "SELECT job_id, created_at FROM idempotency_keys WHERE owner = ?1 AND key = ?2",
                params![owner, key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        if let Some((held, at)) = held
            && at >= stamp(expired)
        {
            let at = DateTime::parse_from_rfc3339(&at)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| StorageError::Corrupt(format!("key time {at:?}: {e}")))?;
            let job = Uuid::parse_str(&held)
                .map_err(|e| StorageError::Corrupt(format!("key job {held:?}: {e}")))?;
            return Ok(Some(HeldKey { job, at }));
        }
        conn.execute(
            "INSERT INTO idempotency_keys (owner, key, job_id, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (owner, key) DO UPDATE SET job_id = ?3, created_at = ?4",
            params![owner, key, job.to_string(), stamp(now)],
        )
        .map_err(backend)?;
        Ok(None)
    }

    fn release_key(&self, owner: &str, key: &str, job: Uuid) -> Result<(), StorageError> {
        self.lock()
            .execute(
                "DELETE FROM idempotency_keys WHERE owner = ?1 AND key = ?2 AND job_id = ?3",
                params![owner, key, job.to_string()],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn replace_key(
        &self,
        owner: &str,
        key: &str,
        old: Uuid,
        new: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let n = self
            .lock()
            .execute(
                "UPDATE idempotency_keys SET job_id = ?4, created_at = ?5
                 WHERE owner = ?1 AND key = ?2 AND job_id = ?3",
                params![owner, key, old.to_string(), new.to_string(), stamp(now)],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }

    fn prune_keys(&self, expired: DateTime<Utc>) -> Result<usize, StorageError> {
        self.lock()
            .execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?1",
                params![stamp(expired)],
            )
            .map_err(backend)
    }
}
