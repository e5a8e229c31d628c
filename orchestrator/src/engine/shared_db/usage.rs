//! Clients' usage counts on the shared database: one statement adds every
//! instance's deltas and returns the totals.

use super::{DbError, SharedDb};
use crate::storage::{UsageKey, UsageKind};

impl SharedDb {
    pub(crate) async fn add_usage(
        &self,
        deltas: &[(UsageKey, u64)],
    ) -> Result<Vec<(UsageKey, u64)>, DbError> {
        let owners: Vec<&str> = deltas.iter().map(|(k, _)| k.owner.as_str()).collect();
        let kinds: Vec<&str> = deltas.iter().map(|(k, _)| k.kind.as_str()).collect();
        let periods: Vec<&str> = deltas.iter().map(|(k, _)| k.period.as_str()).collect();
        let adds: Vec<i64> = deltas
            .iter()
            .map(|(_, d)| i64::try_from(*d).unwrap_or(i64::MAX))
            .collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "INSERT INTO client_usage (owner, kind, period, used)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                 ON CONFLICT (owner, kind, period) DO UPDATE SET used = client_usage.used + excluded.used
                 RETURNING owner, kind, period, used",
                &[&owners, &kinds, &periods, &adds],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let kind = match r.get::<_, &str>(1) {
                    "attempts" => UsageKind::Attempts,
                    "jobs" => UsageKind::Jobs,
                    _ => return None,
                };
                let key = UsageKey {
                    owner: r.get(0),
                    kind,
                    period: r.get(2),
                };
                Some((key, u64::try_from(r.get::<_, i64>(3)).unwrap_or(0)))
            })
            .collect())
    }
}
