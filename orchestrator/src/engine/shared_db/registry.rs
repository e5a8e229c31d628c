//! What deploys store, shared by every instance: plugin versions (their
//! components kept once per SHA-256), which version is offered, blueprint
//! versions. Version numbers are allocated here, one name at a time across
//! instances (a transaction-scoped advisory lock).

use crate::storage::{BlueprintRow, COMPONENT_CHUNK, PluginVersionRow, RegistryRows};

use super::{DbError, SharedDb};

impl SharedDb {
    pub(crate) async fn registry_rows(&self) -> Result<RegistryRows, DbError> {
        let client = self.client().await?;
        let mut rows = RegistryRows::default();
        for r in client
            .query(
                "SELECT name, version, sha256, size, manifest, uploaded_at, uploaded_by
                 FROM plugin_versions ORDER BY name, version",
                &[],
            )
            .await?
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
            .await?
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
            .await?
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

    /// Stores a new version of `row.name` (its component once per hash),
    /// numbered one more than the largest stored, and offers it.
    pub(crate) async fn put_plugin(
        &self,
        row: &PluginVersionRow,
        component: &[u8],
    ) -> Result<u32, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('plugin:' || $1))",
            &[&row.name],
        )
        .await?;
        let version: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) + 1 FROM plugin_versions WHERE name = $1",
                &[&row.name],
            )
            .await?
            .get(0);
        tx.execute(
            "INSERT INTO plugin_components (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&row.sha256, &component],
        )
        .await?;
        tx.execute(
            "INSERT INTO plugin_versions (name, version, sha256, size, manifest, uploaded_at, uploaded_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &row.name,
                &version,
                &row.sha256,
                &(row.size.min(i64::MAX as u64) as i64),
                &row.manifest,
                &row.uploaded_at,
                &row.uploaded_by,
            ],
        )
        .await?;
        tx.execute(SET_CURRENT, &[&row.name, &version]).await?;
        tx.commit().await?;
        Ok(version.max(0) as u32)
    }

    pub(crate) async fn set_plugin_current(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(), DbError> {
        let version = version.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
        self.client()
            .await?
            .execute(SET_CURRENT, &[&name, &version])
            .await?;
        Ok(())
    }

    /// A chunk at a time (`substring`: stored uncompressed out of line
    /// since migration 0007, each chunk reads only its own pages), a pooled
    /// connection taken for one chunk at a time.
    pub(crate) async fn stream_plugin_component(
        &self,
        sha256: &str,
        out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<bool, DbError> {
        let Some(size) = self
            .client()
            .await?
            .query_opt(
                "SELECT octet_length(bytes) FROM plugin_components WHERE sha256 = $1",
                &[&sha256],
            )
            .await?
            .map(|r| i64::from(r.get::<_, i32>(0).max(0)))
        else {
            return Ok(false);
        };
        let chunk = COMPONENT_CHUNK as i32;
        let mut at = 0i64;
        while at < size {
            let piece: Vec<u8> = self
                .client()
                .await?
                .query_one(
                    // SQL substrings count from 1.
                    "SELECT substring(bytes FROM $2 FOR $3) FROM plugin_components WHERE sha256 = $1",
                    &[&sha256, &((at + 1) as i32), &chunk],
                )
                .await?
                .get(0);
            if piece.is_empty() {
                break;
            }
            at += piece.len() as i64;
            if out.send(bytes::Bytes::from(piece)).await.is_err() {
                break;
            }
        }
        Ok(true)
    }

    /// Stores `row.text` as the next version of `row.name`, or returns the
    /// latest version's number when its text is the same (instances
    /// starting together from the same files store it once).
    pub(crate) async fn put_blueprint(&self, row: &BlueprintRow) -> Result<u32, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('blueprint:' || $1))",
            &[&row.name],
        )
        .await?;
        let latest = tx
            .query_opt(
                "SELECT version, text FROM blueprint_versions WHERE name = $1
                 ORDER BY version DESC LIMIT 1",
                &[&row.name],
            )
            .await?
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
        .await?;
        tx.commit().await?;
        Ok(version.max(0) as u32)
    }
}

/// Offers version `$2` of plugin `$1` (`NULL`: none).
const SET_CURRENT: &str = "INSERT INTO plugin_current (name, version) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET version = excluded.version";
