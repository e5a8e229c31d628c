//! The schedule table of [`SqliteStorage`]: one instance, so a change is
//! read, applied ([`crate::storage::schedules::apply`]) and written back
//! under the connection's lock.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::{SqliteStorage, backend};
use crate::storage::{ScheduleChange, ScheduleRow, ScheduleStorage, StorageError};

fn rows(conn: &rusqlite::Connection, name: Option<&str>) -> Result<Vec<ScheduleRow>, StorageError> {
    let mut stmt = conn
        .prepare(
            "SELECT name, last_slot, last_job, paused, pending, source FROM schedule_state
             WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )
        .map_err(backend)?;
    let found = stmt
        .query_map(params![name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, bool>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in found {
        let (name, slot, job, paused, pending, source) = row.map_err(backend)?;
        out.push(ScheduleRow {
            name,
            last_slot: DateTime::parse_from_rfc3339(&slot)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| StorageError::Corrupt(format!("schedule slot {slot:?}: {e}")))?,
            last_job: job.and_then(|j| uuid::Uuid::parse_str(&j).ok()),
            paused,
            pending,
            source,
        });
    }
    Ok(out)
}

impl ScheduleStorage for SqliteStorage {
    fn schedule_rows(&self) -> Result<Vec<ScheduleRow>, StorageError> {
        rows(&self.lock(), None)
    }

    fn change_schedule(&self, name: &str, change: &ScheduleChange) -> Result<bool, StorageError> {
        let conn = self.lock();
        let mut map: BTreeMap<String, ScheduleRow> = rows(&conn, Some(name))?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        if !crate::storage::schedules::apply(&mut map, name, change) {
            return Ok(false);
        }
        let Some(row) = map.get(name) else {
            conn.execute("DELETE FROM schedule_state WHERE name = ?1", params![name])
                .map_err(backend)?;
            return Ok(true);
        };
        conn.execute(
            "INSERT INTO schedule_state (name, last_slot, last_job, paused, pending, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET last_slot = ?2, last_job = ?3, paused = ?4,
                 pending = ?5, source = ?6",
            params![
                row.name,
                row.last_slot.to_rfc3339(),
                row.last_job.map(|j| j.to_string()),
                row.paused,
                row.pending,
                row.source
            ],
        )
        .map_err(backend)?;
        Ok(true)
    }
}
