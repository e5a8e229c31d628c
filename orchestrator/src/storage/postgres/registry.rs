//! The deploy tables of [`PostgresStorage`].

use super::{PostgresStorage, backend};
use crate::storage::{BlueprintRow, PluginVersionRow, RegistryRows, RegistryStorage, StorageError};

impl RegistryStorage for PostgresStorage {
    fn registry_rows(&self) -> Result<RegistryRows, StorageError> {
        let mut client = self.lock();
        let mut rows = RegistryRows::default();
        for r in client
            .query(
                "SELECT name, version, sha256, size, manifest, uploaded_at, uploaded_by
                 FROM plugin_versions ORDER BY name, version",
                &[],
            )
            .map_err(backend)?
        {
            rows.plugins.push(PluginVersionRow {
                name: r.get(0),
                version: r.get::<_, i32>(1).max(0) as u32,
                sha256: r.get(2),
                size: r.get::<_, i64>(3).max(0) as u64,
                manifest: r.get(4),
                uploaded_at: r.get(5),
                uploaded_by: r.get(6),
            });
        }
        rows.current = client
            .query(
                "SELECT name, version FROM plugin_current ORDER BY name",
                &[],
            )
            .map_err(backend)?
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get::<_, Option<i32>>(1).map(|v| v.max(0) as u32),
                )
            })
            .collect();
        for r in client
            .query(
                "SELECT name, version, text, origin, created_at FROM blueprint_versions
                 ORDER BY name, version",
                &[],
            )
            .map_err(backend)?
        {
            rows.blueprints.push(BlueprintRow {
                name: r.get(0),
                version: r.get::<_, i32>(1).max(0) as u32,
                text: r.get(2),
                origin: r.get(3),
                created_at: r.get(4),
            });
        }
        Ok(rows)
    }

    fn put_plugin(&self, row: &PluginVersionRow, component: &[u8]) -> Result<u32, StorageError> {
        let mut client = self.lock();
        let mut tx = client.transaction().map_err(backend)?;
        // One upload of a name at a time across instances: each takes the
        // next number.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('plugin:' || $1))",
            &[&row.name],
        )
        .map_err(backend)?;
        let version: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) + 1 FROM plugin_versions WHERE name = $1",
                &[&row.name],
            )
            .map_err(backend)?
            .get(0);
        tx.execute(
            "INSERT INTO plugin_components (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&row.sha256, &component],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO plugin_versions (name, version, sha256, size, manifest, uploaded_at, uploaded_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &row.name,
                &version,
                &row.sha256,
                &(row.size as i64),
                &row.manifest,
                &row.uploaded_at,
                &row.uploaded_by,
            ],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO plugin_current (name, version) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            &[&row.name, &version],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(version.max(0) as u32)
    }

    fn set_plugin_current(&self, name: &str, version: Option<u32>) -> Result<(), StorageError> {
        self.lock()
            .execute(
                "INSERT INTO plugin_current (name, version) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET version = excluded.version",
                &[&name, &version.map(|v| v as i32)],
            )
            .map(|_| ())
            .map_err(backend)
    }

    fn plugin_component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .lock()
            .query_opt(
                "SELECT bytes FROM plugin_components WHERE sha256 = $1",
                &[&sha256],
            )
            .map_err(backend)?
            .map(|r| r.get(0)))
    }

    /// A chunk at a time (`substring`; stored uncompressed out of line
    /// since migration 0007, so each chunk reads only its own pages), the
    /// connection taken for one chunk at a time: memory per download is a
    /// chunk, whatever the component's size.
    fn stream_plugin_component(
        &self,
        sha256: &str,
        out: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<bool, StorageError> {
        let Some(size) = self
            .lock()
            .query_opt(
                "SELECT octet_length(bytes) FROM plugin_components WHERE sha256 = $1",
                &[&sha256],
            )
            .map_err(backend)?
            .map(|r| i64::from(r.get::<_, i32>(0).max(0)))
        else {
            return Ok(false);
        };
        let chunk = crate::storage::registry::COMPONENT_CHUNK as i32;
        let mut at = 0i64;
        while at < size {
            let row = self
                .lock()
                .query_one(
                    // SQL substrings count from 1.
                    "SELECT substring(bytes FROM $2 FOR $3) FROM plugin_components WHERE sha256 = $1",
                    &[&sha256, &((at + 1) as i32), &chunk],
                )
                .map_err(backend)?;
            let piece: Vec<u8> = row.get(0);
            if piece.is_empty() {
                break;
            }
            at += piece.len() as i64;
            if out.blocking_send(bytes::Bytes::from(piece)).is_err() {
                break;
            }
        }
        Ok(true)
    }

    fn put_blueprint(&self, row: &BlueprintRow) -> Result<u32, StorageError> {
        let mut client = self.lock();
        let mut tx = client.transaction().map_err(backend)?;
        // One deploy of a name at a time across instances: two different
        // texts get two numbers; the same text as the latest (instances
        // starting together from the same files) is stored once.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('blueprint:' || $1))",
            &[&row.name],
        )
        .map_err(backend)?;
        let latest = tx
            .query_opt(
                "SELECT version, text FROM blueprint_versions WHERE name = $1
                 ORDER BY version DESC LIMIT 1",
                &[&row.name],
            )
            .map_err(backend)?
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)));
        let version = match latest {
            Some((version, text)) if text == row.text => return Ok(version.max(0) as u32),
            Some((version, _)) => version + 1,
            None => 1,
        };
        tx.execute(
            "INSERT INTO blueprint_versions (name, version, text, origin, created_at)
             VALUES ($1, $2, $3, $4, $5)",
            &[&row.name, &version, &row.text, &row.origin, &row.created_at],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(version.max(0) as u32)
    }
}
