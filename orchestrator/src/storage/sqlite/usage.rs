//! Clients' usage counts of [`SqliteStorage`] (one instance: one statement
//! per count under the connection's lock).

use rusqlite::params;

use super::{SqliteStorage, backend};
use crate::storage::{StorageError, UsageKey, UsageStorage};

impl UsageStorage for SqliteStorage {
    fn add_usage(&self, deltas: &[(UsageKey, u64)]) -> Result<Vec<(UsageKey, u64)>, StorageError> {
        let conn = self.lock();
        let mut add = conn
            .prepare_cached(
                "INSERT INTO client_usage (owner, kind, period, used) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (owner, kind, period) DO UPDATE SET used = used + ?4
                 RETURNING used",
            )
            .map_err(backend)?;
        let mut out = Vec::with_capacity(deltas.len());
        for (key, delta) in deltas {
            let used: i64 = add
                .query_row(
                    params![
                        key.owner,
                        key.kind.as_str(),
                        key.period,
                        i64::try_from(*delta).unwrap_or(i64::MAX)
                    ],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            out.push((key.clone(), u64::try_from(used).unwrap_or(0)));
        }
        Ok(out)
    }
}
