//! Dashboard sessions in the shared database, so that any instance serves a
//! signed-in dashboard and a sign-out on one ends the session on all.

use std::time::Duration;

use super::{DbError, SharedDb};

/// A stored session: who it signs in and the digest of the token it was
/// opened with (a rotated or removed token ends it).
pub(crate) struct StoredSession {
    pub client: String,
    pub token: [u8; 32],
}

impl SharedDb {
    /// Stores a new session (`id` and `token` are digests) and drops the
    /// client's oldest beyond `per_client`, in one transaction.
    pub(crate) async fn start_session(
        &self,
        id: &[u8; 32],
        session: &StoredSession,
        ttl: Duration,
        per_client: usize,
    ) -> Result<(), DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let ttl_secs = ttl.as_secs_f64();
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO dashboard_sessions (id, client, token, expires_at)
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4))",
            )
            .await?,
            &[
                &id.as_slice(),
                &session.client,
                &session.token.as_slice(),
                &ttl_secs,
            ],
        )
        .await?;
        tx.execute(
            &tx.prepare_cached(
                "DELETE FROM dashboard_sessions WHERE client = $1 AND id NOT IN (
                     SELECT id FROM dashboard_sessions WHERE client = $1
                     ORDER BY created_at DESC LIMIT $2)",
            )
            .await?,
            &[&session.client, &(per_client as i64)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session `id` (a digest) opens, unless it ended or expired.
    pub(crate) async fn session(&self, id: &[u8; 32]) -> Result<Option<StoredSession>, DbError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT client, token FROM dashboard_sessions
                         WHERE id = $1 AND expires_at > now()",
                    )
                    .await?,
                &[&id.as_slice()],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let token: Vec<u8> = row.get(1);
        let token = token
            .try_into()
            .map_err(|_| DbError::Corrupt("a dashboard session's token digest".into()))?;
        Ok(Some(StoredSession {
            client: row.get(0),
            token,
        }))
    }

    /// Ends the session `id` (a digest) on every instance.
    pub(crate) async fn end_session(&self, id: &[u8; 32]) -> Result<(), DbError> {
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("DELETE FROM dashboard_sessions WHERE id = $1")
                    .await?,
                &[&id.as_slice()],
            )
            .await?;
        Ok(())
    }
}
