//! Every version of every blueprint, and which one new jobs use.
//!
//! A blueprint deployed again (through `PUT /api/v1/blueprints/{name}` or by
//! changing its file) becomes a new version: new jobs use the newest, and a
//! job keeps the version it was created with to its end. Create-job
//! endpoints are looked up here on each request, so a new `api_endpoint`
//! serves at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use super::{Blueprint, BlueprintError};

/// Most versions one blueprint may have.
pub const MAX_VERSIONS: usize = 1000;

/// Largest blueprint file accepted.
pub const MAX_BLUEPRINT_BYTES: usize = 256 << 10;

/// A version as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct VersionInfo {
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub origin: String,
}

#[derive(Default)]
struct Versions {
    all: BTreeMap<u32, Arc<Blueprint>>,
}

impl Versions {
    fn current(&self) -> Option<&Arc<Blueprint>> {
        self.all.last_key_value().map(|(_, b)| b)
    }
}

#[derive(Default)]
struct Inner {
    by_name: HashMap<String, Versions>,
    /// Create-job path → blueprint name (current versions only).
    by_path: HashMap<String, String>,
}

/// The blueprints, shared by the engine and the API.
#[derive(Default)]
pub struct Catalog {
    inner: RwLock<Inner>,
    /// One deploy at a time (number, store, install).
    pub deploys: tokio::sync::Mutex<()>,
    /// A blueprint with a dispatch `strategy` was installed (waiting
    /// workers are then ranked; until then a take spends nothing on it).
    strategies: std::sync::atomic::AtomicBool,
}

impl Catalog {
    /// Whether any blueprint installed names a dispatch strategy.
    pub fn uses_strategies(&self) -> bool {
        self.strategies.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The version new jobs of `name` use.
    pub fn current(&self, name: &str) -> Option<Arc<Blueprint>> {
        self.read().by_name.get(name)?.current().cloned()
    }

    /// Version `version` of `name`; version 0 (jobs stored before versions
    /// existed) is the current one.
    pub fn get(&self, name: &str, version: u32) -> Option<Arc<Blueprint>> {
        let inner = self.read();
        let versions = inner.by_name.get(name)?;
        if version == 0 {
            return versions.current().cloned();
        }
        versions.all.get(&version).cloned()
    }

    /// The blueprint whose create-job endpoint is `path`.
    pub fn by_path(&self, path: &str) -> Option<Arc<Blueprint>> {
        let inner = self.read();
        let name = inner.by_path.get(path)?;
        inner.by_name.get(name)?.current().cloned()
    }

    /// The current version of every blueprint, by name.
    pub fn all_current(&self) -> Vec<Arc<Blueprint>> {
        let inner = self.read();
        let mut all: Vec<_> = inner
            .by_name
            .values()
            .filter_map(|v| v.current().cloned())
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Whether some blueprint's current version is mounted under `/api/{version}`.
    pub fn serves_api_version(&self, version: &str) -> bool {
        self.read()
            .by_name
            .values()
            .filter_map(Versions::current)
            .any(|b| b.api_version.as_deref() == Some(version))
    }

    pub fn versions(&self, name: &str) -> Vec<VersionInfo> {
        self.read()
            .by_name
            .get(name)
            .map(|v| {
                v.all
                    .values()
                    .map(|b| VersionInfo {
                        version: b.version,
                        created_at: b.created_at,
                        origin: b.origin.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether version `version` of `name` is here.
    pub fn has_version(&self, name: &str, version: u32) -> bool {
        self.read()
            .by_name
            .get(name)
            .is_some_and(|v| v.all.contains_key(&version))
    }

    /// Whether some version of `name` was written exactly as `text`.
    pub fn has_text(&self, name: &str, text: &str) -> bool {
        self.read()
            .by_name
            .get(name)
            .is_some_and(|v| v.all.values().any(|b| b.text == text))
    }

    /// Checks that `bp` may become the next version of its name, and numbers
    /// it; nothing changes until [`Self::install`].
    pub fn prepare(&self, mut bp: Blueprint) -> Result<Blueprint, BlueprintError> {
        let inner = self.read();
        let err = |problem: String| BlueprintError {
            file: bp.source.clone(),
            problem,
        };
        if let Some(path) = &bp.create_path
            && let Some(owner) = inner.by_path.get(path)
            && owner != &bp.name
        {
            return Err(err(format!(
                "its endpoint POST {path} is already served by blueprint `{owner}`"
            )));
        }
        let existing = inner.by_name.get(&bp.name);
        let count = existing.map_or(0, |v| v.all.len());
        if count >= MAX_VERSIONS {
            return Err(err(format!(
                "blueprint `{}` already has {MAX_VERSIONS} versions (MAX_VERSIONS)",
                bp.name
            )));
        }
        bp.version = existing
            .and_then(|v| v.all.last_key_value())
            .map_or(1, |(v, _)| v + 1);
        Ok(bp)
    }

    /// Puts a version in (a version already numbered, e.g. read from storage).
    /// The newest version of a name is its current one.
    pub fn install(&self, bp: Blueprint) -> Arc<Blueprint> {
        if bp.states.values().any(|s| s.action.uses_strategy()) {
            self.strategies
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for state in bp.states.values() {
            if let super::Action::Dispatch { on, .. } = &state.action {
                on.keys()
                    .for_each(|status| crate::metrics::declare_status(status));
            }
        }
        let bp = Arc::new(bp);
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let versions = inner.by_name.entry(bp.name.clone()).or_default();
        versions.all.insert(bp.version, bp.clone());
        let current = versions.current().cloned();
        if let Some(current) = current {
            inner.by_path.retain(|_, name| name != &current.name);
            if let Some(path) = &current.create_path {
                inner.by_path.insert(path.clone(), current.name.clone());
            }
        }
        bp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bp(name: &str, endpoint: &str, end: &str) -> Blueprint {
        let text = format!(
            "name = \"{name}\"\napi_endpoint = \"{endpoint}\"\napi_version = \"v1\"\n[states.s]\nstart = true\ngoto = [{{ to = \"e\" }}]\n[states.e]\nend = \"{end}\"\n"
        );
        super::super::parse("test", &text).unwrap()
    }

    #[test]
    fn new_versions_take_over_new_jobs_and_old_ones_stay_readable() {
        let c = Catalog::default();
        c.install(c.prepare(bp("a", "/jobs/a", "finished")).unwrap());
        let v2 = c.prepare(bp("a", "/jobs/a2", "failed")).unwrap();
        assert_eq!(v2.version, 2);
        c.install(v2);
        assert_eq!(c.current("a").unwrap().version, 2);
        assert_eq!(
            c.get("a", 1).unwrap().create_path.as_deref(),
            Some("/api/v1/jobs/a")
        );
        assert_eq!(c.get("a", 0).unwrap().version, 2);
        assert!(
            c.by_path("/api/v1/jobs/a").is_none(),
            "the old endpoint is retired"
        );
        assert_eq!(c.by_path("/api/v1/jobs/a2").unwrap().version, 2);
        assert_eq!(c.versions("a").len(), 2);
        let clash = c.prepare(bp("b", "/jobs/a2", "finished")).unwrap_err();
        assert!(
            clash.problem.contains("already served by blueprint `a`"),
            "{clash}"
        );
    }
}
