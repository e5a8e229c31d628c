//! An event's transaction in two round trips instead of four: its `BEGIN`
//! travels with the load ([`Scratch::load`](super::scratch::Scratch::load))
//! and its `COMMIT` with the write ([`super::writes`]); the connection
//! sends each pair without waiting in between.
//!
//! [`Open`] holds the pooled connection while the transaction may be open.
//! Should the event's future be dropped midway (a client that hung up, for
//! an event made alone), the connection is closed rather than returned to
//! the pool inside a transaction; the server rolls back what it held.

use deadpool_postgres::{Client, GenericClient};

use super::DbError;

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
        let (began, loaded) = tokio::join!(client.batch_execute("BEGIN"), first(&client));
        let open = Self {
            client: Some(client),
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

    /// Sends the last statement (`last`, given the connection), which
    /// sends the `COMMIT` with it ([`super::writes::Writes::run`]). Once
    /// it has answered the transaction is over (committed, or rolled back
    /// by the server after an error) and the connection goes back to the
    /// pool; should `last` fail before its `COMMIT` went, it is rolled back.
    pub async fn commit_with<R>(
        mut self,
        last: impl AsyncFnOnce(&Client) -> Result<R, DbError>,
    ) -> Result<R, DbError> {
        let Some(c) = self.client.as_ref() else {
            return Err(DbError::Pool("the transaction's connection is gone".into()));
        };
        match last(c).await {
            Ok(r) => {
                // Back to the pool.
                drop(self.client.take());
                Ok(r)
            }
            Err(e) => {
                // A ROLLBACK after a COMMIT is only a warning.
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
