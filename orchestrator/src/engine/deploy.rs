//! Blueprint versions: read from storage at start, deployed from files and
//! from the API, each stored before it takes effect.

use std::sync::Arc;

use chrono::Utc;

use super::Engine;
use crate::blueprint::{self, Blueprint, BlueprintError};
use crate::storage::{BlueprintRow, Deploys, StorageError};

/// Why a blueprint deploy was refused.
#[derive(Debug, thiserror::Error)]
pub enum BlueprintDeployError {
    #[error("{0}")]
    Invalid(#[from] BlueprintError),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

impl Engine {
    /// At start: the stored versions, then those of the files that differ
    /// from every stored version of their name.
    pub(super) async fn install_blueprints(
        &self,
        stored: &[BlueprintRow],
        files: Vec<Blueprint>,
    ) -> Result<(), StorageError> {
        let catalog = &self.shared.catalog;
        for row in stored {
            if let Some(bp) = stored_version(row) {
                catalog.install(bp);
            }
        }
        for bp in files {
            if catalog.has_text(&bp.name, &bp.text) {
                continue;
            }
            match self.deploy_blueprint(bp).await {
                Ok(bp) if bp.version > 1 => tracing::info!(
                    "blueprint {} changed on disk since it was stored: now version {}",
                    bp.name,
                    bp.version
                ),
                Ok(_) => {}
                Err(BlueprintDeployError::Storage(e)) => return Err(e),
                Err(e) => tracing::error!("blueprint not loaded: {e}"),
            }
        }
        Ok(())
    }

    /// Takes what other instances sharing the database deployed: plugin
    /// versions and which is offered, and blueprint versions not here yet.
    pub(super) async fn refresh_deploys(&self) -> Result<(), StorageError> {
        let rows = self.shared.backend.registry_rows().await?;
        self.shared.registry.reload(&rows);
        let catalog = &self.shared.catalog;
        let _one_at_a_time = catalog.deploys.lock().await;
        for row in &rows.blueprints {
            if catalog.has_version(&row.name, row.version) {
                continue;
            }
            if let Some(bp) = stored_version(row) {
                let bp = catalog.install(bp);
                tracing::info!(
                    "blueprint {} v{} deployed through another instance; now in service here",
                    bp.name,
                    bp.version
                );
            }
        }
        Ok(())
    }

    /// Stores `bp` as the next version of its name and makes it the one new
    /// jobs use. A refused blueprint changes nothing.
    pub async fn deploy_blueprint(
        &self,
        bp: Blueprint,
    ) -> Result<Arc<Blueprint>, BlueprintDeployError> {
        let catalog = &self.shared.catalog;
        let _one_at_a_time = catalog.deploys.lock().await;
        let mut bp = catalog.prepare(bp)?;
        bp.created_at = Utc::now();
        let row = BlueprintRow {
            name: bp.name.clone(),
            version: bp.version,
            text: bp.text.clone(),
            origin: bp.origin.clone(),
            created_at: bp.created_at,
        };
        // The number the database gave it (another instance may have taken
        // the one this catalog would give).
        bp.version = self.shared.backend.put_blueprint(row).await?;
        let bp = catalog.install(bp);
        tracing::info!(
            "blueprint {} v{} in service ({}), from {}",
            bp.name,
            bp.version,
            bp.endpoint_text(),
            bp.origin
        );
        Ok(bp)
    }
}

/// A stored version as a blueprint (its number, origin and time kept); a
/// version that no longer loads is logged and skipped.
fn stored_version(row: &BlueprintRow) -> Option<Blueprint> {
    let source = format!("{} v{} (stored)", row.name, row.version);
    match blueprint::parse(&source, &row.text) {
        Ok(mut bp) => {
            bp.version = row.version;
            bp.origin = row.origin.clone();
            bp.created_at = row.created_at;
            Some(bp)
        }
        Err(e) => {
            tracing::error!("a stored blueprint does not load: {e}");
            None
        }
    }
}
