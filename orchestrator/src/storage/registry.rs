//! What deploys store: plugin versions (components kept by SHA-256, so a
//! component uploaded twice is stored once) and blueprint versions.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::StorageError;

/// One uploaded version of a plugin (the component itself is stored apart,
/// by its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginVersionRow {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub size: u64,
    #[serde(skip)]
    pub manifest: Option<String>,
    pub uploaded_at: DateTime<Utc>,
    /// The client that uploaded it.
    pub uploaded_by: String,
}

/// One version of a blueprint, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueprintRow {
    pub name: String,
    pub version: u32,
    /// The TOML.
    pub text: String,
    /// Where it came from: `api:<client>` or `file:<path>`.
    pub origin: String,
    pub created_at: DateTime<Utc>,
}

/// Everything deploys stored, as read at start.
#[derive(Debug, Clone, Default)]
pub struct RegistryRows {
    pub plugins: Vec<PluginVersionRow>,
    /// Plugin name → the version offered (`None`: deleted, offered no more).
    pub current: Vec<(String, Option<u32>)>,
    pub blueprints: Vec<BlueprintRow>,
}

/// Bytes of one chunk of a component download.
pub const COMPONENT_CHUNK: usize = 256 << 10;

/// Where deploys are stored, as the registry and the catalog reach it: the
/// engine's backend answers (one instance: its [`super::Storage`] on a
/// blocking thread; several: the shared PostgreSQL database).
#[async_trait::async_trait]
pub trait Deploys: Send + Sync {
    async fn registry_rows(&self) -> Result<RegistryRows, StorageError>;
    /// See [`RegistryStorage::put_plugin`].
    async fn put_plugin(
        &self,
        row: PluginVersionRow,
        component: Vec<u8>,
    ) -> Result<u32, StorageError>;
    async fn set_plugin_current(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(), StorageError>;
    /// Sends a component to `out` in chunks of at most [`COMPONENT_CHUNK`]
    /// bytes; `false` if there is no such component. Memory per download is
    /// a few chunks, whatever the component's size.
    async fn stream_plugin_component(
        &self,
        sha256: &str,
        out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<bool, StorageError>;
    /// See [`RegistryStorage::put_blueprint`].
    async fn put_blueprint(&self, row: BlueprintRow) -> Result<u32, StorageError>;
}

/// Durable deploys of one instance's storage (memory, SQLite); implemented
/// by every [`super::Storage`]. Blocking.
pub trait RegistryStorage {
    fn registry_rows(&self) -> Result<RegistryRows, StorageError>;
    /// Stores a new version (and its component, unless a version with the
    /// same hash has it already) and makes it the one offered. The number is
    /// allocated here, one more than the largest stored (`row.version` is
    /// ignored), atomically among instances sharing the database; returned.
    fn put_plugin(&self, row: &PluginVersionRow, component: &[u8]) -> Result<u32, StorageError>;
    /// Which version of `name` is offered (`None`: none).
    fn set_plugin_current(&self, name: &str, version: Option<u32>) -> Result<(), StorageError>;
    fn plugin_component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Sends a component to `out` in chunks of at most [`COMPONENT_CHUNK`]
    /// bytes, from a blocking thread, without holding the connection the
    /// job writer uses; `false` if there is no such component. The default
    /// reads it whole, then sends it in chunks.
    fn stream_plugin_component(
        &self,
        sha256: &str,
        out: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<bool, StorageError> {
        let Some(whole) = self.plugin_component(sha256)? else {
            return Ok(false);
        };
        let whole = bytes::Bytes::from(whole);
        for start in (0..whole.len()).step_by(COMPONENT_CHUNK) {
            let end = (start + COMPONENT_CHUNK).min(whole.len());
            if out.blocking_send(whole.slice(start..end)).is_err() {
                break;
            }
        }
        Ok(true)
    }
    /// Stores `row.text` as the next version of `row.name` and returns its
    /// number, allocated here atomically among instances sharing the
    /// database (`row.version` is ignored); when the latest stored version
    /// has the same text, stores nothing and returns that version's number.
    fn put_blueprint(&self, row: &BlueprintRow) -> Result<u32, StorageError>;
}
