//! The deploy tables of [`SqliteStorage`].

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::{SqliteStorage, backend};
use crate::storage::{BlueprintRow, PluginVersionRow, RegistryRows, RegistryStorage, StorageError};

fn time(s: String) -> Result<DateTime<Utc>, StorageError> {
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StorageError::Corrupt(format!("timestamp {s:?}: {e}")))
}

impl RegistryStorage for SqliteStorage {
    fn registry_rows(&self) -> Result<RegistryRows, StorageError> {
        let conn = self.lock();
        let mut rows = RegistryRows::default();
        let mut stmt = conn
            .prepare(
                "SELECT name, version, sha256, size, manifest, uploaded_at, uploaded_by
                 FROM plugin_versions ORDER BY name, version",
            )
            .map_err(backend)?;
        let plugins = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })
            .map_err(backend)?;
        for p in plugins {
            let (name, version, sha256, size, manifest, at, by) = p.map_err(backend)?;
            rows.plugins.push(PluginVersionRow {
                name,
                version,
                sha256,
                size: size.max(0) as u64,
                manifest,
                uploaded_at: time(at)?,
                uploaded_by: by,
            });
        }
        let mut stmt = conn
            .prepare("SELECT name, version FROM plugin_current ORDER BY name")
            .map_err(backend)?;
        rows.current = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        let mut stmt = conn
            .prepare(
                "SELECT name, version, text, origin, created_at FROM blueprint_versions
                 ORDER BY name, version",
            )
            .map_err(backend)?;
        let blueprints = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(backend)?;
        for b in blueprints {
            let (name, version, text, origin, at) = b.map_err(backend)?;
            rows.blueprints.push(BlueprintRow {
                name,
                version,
                text,
                origin,
                created_at: time(at)?,
            });
        }
        Ok(rows)
    }

    fn put_plugin(&self, row: &PluginVersionRow, component: &[u8]) -> Result<u32, StorageError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(backend)?;
        let version: u32 = tx
            .query_row(
                "SELECT coalesce(max(version), 0) + 1 FROM plugin_versions WHERE name = ?1",
                params![row.name],
                |r| r.get(0),
            )
            .map_err(backend)?;
        tx.execute(
            "INSERT OR IGNORE INTO plugin_components (sha256, bytes) VALUES (?1, ?2)",
            params![row.sha256, component],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO plugin_versions (name, version, sha256, size, manifest, uploaded_at, uploaded_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                row.name,
                version,
                row.sha256,
                row.size as i64,
                row.manifest,
                row.uploaded_at.to_rfc3339(),
                row.uploaded_by
            ],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT OR REPLACE INTO plugin_current (name, version) VALUES (?1, ?2)",
            params![row.name, version],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(version)
    }

    fn set_plugin_current(&self, name: &str, version: Option<u32>) -> Result<(), StorageError> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO plugin_current (name, version) VALUES (?1, ?2)",
                params![name, version],
            )
            .map(|_| ())
            .map_err(backend)
    }

    fn plugin_component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.lock()
            .query_row(
                "SELECT bytes FROM plugin_components WHERE sha256 = ?1",
                params![sha256],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)
    }

    /// From a read-only connection of its own, by incremental blob I/O: the
    /// job writer's connection is not held, and a chunk at a time is in
    /// memory.
    fn stream_plugin_component(
        &self,
        sha256: &str,
        out: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<bool, StorageError> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        let Some((rowid, size)) = conn
            .query_row(
                "SELECT rowid, length(bytes) FROM plugin_components WHERE sha256 = ?1",
                params![sha256],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(backend)?
        else {
            return Ok(false);
        };
        let blob = conn
            .blob_open(rusqlite::MAIN_DB, "plugin_components", "bytes", rowid, true)
            .map_err(backend)?;
        let size = usize::try_from(size).unwrap_or(0);
        let mut at = 0;
        while at < size {
            let mut chunk = vec![0u8; super::super::registry::COMPONENT_CHUNK.min(size - at)];
            blob.read_at_exact(&mut chunk, at).map_err(backend)?;
            at += chunk.len();
            if out.blocking_send(bytes::Bytes::from(chunk)).is_err() {
                break;
            }
        }
        Ok(true)
    }

    fn put_blueprint(&self, row: &BlueprintRow) -> Result<u32, StorageError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(backend)?;
        let latest: Option<(u32, String)> = tx
            .query_row(
                "SELECT version, text FROM blueprint_versions WHERE name = ?1
                 ORDER BY version DESC LIMIT 1",
                params![row.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?;
        let version = match latest {
            Some((version, text)) if text == row.text => return Ok(version),
            Some((version, _)) => version + 1,
            None => 1,
        };
        tx.execute(
            "INSERT INTO blueprint_versions (name, version, text, origin, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                row.name,
                version,
                row.text,
                row.origin,
                row.created_at.to_rfc3339()
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(version)
    }
}
