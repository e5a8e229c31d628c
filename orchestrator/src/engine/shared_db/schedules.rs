//! Schedules' progress on the shared database: each change is one
//! statement, the claims a compare-and-set on `last_slot`, so two instances
//! claiming the same slot start one job between them.

use crate::storage::{ScheduleChange, ScheduleRow};

use super::{DbError, SharedDb};

impl SharedDb {
    pub(crate) async fn schedule_rows(&self) -> Result<Vec<ScheduleRow>, DbError> {
        let client = self.client().await?;
        Ok(client
            .query(
                "SELECT name, last_slot, last_job, paused, pending, source FROM schedule_state ORDER BY name",
                &[],
            )
            .await?
            .iter()
            .map(|r| ScheduleRow {
                name: r.get(0),
                last_slot: r.get(1),
                last_job: r.get(2),
                paused: r.get(3),
                pending: r.get(4),
                source: r.get(5),
            })
            .collect())
    }

    pub(crate) async fn change_schedule(
        &self,
        name: &str,
        change: &ScheduleChange,
    ) -> Result<bool, DbError> {
        let client = self.client().await?;
        let n = match change {
            ScheduleChange::Init { slot } => {
                client
                    .execute(
                        "INSERT INTO schedule_state (name, last_slot) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                        &[&name, slot],
                    )
                    .await?
            }
            ScheduleChange::Advance { from, to } => {
                client
                    .execute(
                        "UPDATE schedule_state SET last_slot = $3 WHERE name = $1 AND last_slot = $2",
                        &[&name, from, to],
                    )
                    .await?
            }
            ScheduleChange::Job(job) => {
                client
                    .execute(
                        "UPDATE schedule_state SET last_job = $2 WHERE name = $1",
                        &[&name, job],
                    )
                    .await?
            }
            ScheduleChange::Paused(paused) => {
                client
                    .execute(
                        "UPDATE schedule_state SET paused = $2 WHERE name = $1",
                        &[&name, paused],
                    )
                    .await?
            }
            ScheduleChange::Pending { from, to } => {
                client
                    .execute(
                        "UPDATE schedule_state SET pending = $3 WHERE name = $1 AND pending = $2",
                        &[&name, from, to],
                    )
                    .await?
            }
            ScheduleChange::Deploy { slot, source } => {
                client
                    .execute(
                        "INSERT INTO schedule_state (name, last_slot, source) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO UPDATE SET source = excluded.source
                         WHERE schedule_state.source IS NOT NULL",
                        &[&name, slot, source],
                    )
                    .await?
            }
            ScheduleChange::Remove => {
                client
                    .execute(
                        "DELETE FROM schedule_state WHERE name = $1 AND source IS NOT NULL",
                        &[&name],
                    )
                    .await?
            }
        };
        Ok(n == 1)
    }
}
