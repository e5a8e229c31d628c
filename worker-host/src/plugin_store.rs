//! Loads plugin components, checks them against the `task-plugin` world and
//! learns their skills from the plugins themselves.
//!
//! Work done here happens once per plugin: compile, link, pre-instantiate.
//! A file that is not a usable plugin is logged with the reason and skipped;
//! it never stops the others from loading.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use wasmtime::component::Component;

use crate::grants::{self, Grants, Policy};
use crate::limits;
use crate::outcome::TaskOutcome;
use crate::sandbox::bindings::{Skill, TaskPluginPre};
use crate::sandbox::state::TaskState;
use crate::sandbox::{RunOptions, Sandbox, Task, task};

/// Why a file could not be loaded as a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a WebAssembly file (bad magic number)")]
    NotWasm { path: PathBuf },
    #[error(
        "{path} is a core WebAssembly module, not a component; build it with `cargo build --target wasm32-wasip2` or `cargo component build`"
    )]
    CoreModule { path: PathBuf },
    #[error("{path} is not a valid component: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path} does not fit the task-plugin world: {reason}")]
    WrongWorld { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Describe { path: PathBuf, reason: String },
    #[error("{path} declares more than a plugin may: {reason}")]
    OverLimit { path: PathBuf, reason: String },
    #[error("{path}: its manifest asks for more than this worker grants: {reason}")]
    Grant { path: PathBuf, reason: String },
}

/// One loaded plugin.
pub struct Plugin {
    /// The file it came from.
    pub path: PathBuf,
    /// What its manifest was granted (nothing without one).
    pub grants: Grants,
    /// Its own cap on concurrent tasks, when its manifest sets one.
    pub slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Linked and type-checked, ready for a fresh instance per task.
    pub pre: TaskPluginPre<TaskState>,
    /// What the plugin says it serves.
    pub skills: Vec<Skill>,
    /// Which registry version it is, when the orchestrator deployed it.
    pub registry: Option<RegistryRef>,
}

impl Plugin {
    /// Runs `task` in a fresh instance of this plugin, under its grants and
    /// the sandbox's bounds, after waiting for one of its own slots when its
    /// manifest caps its concurrent tasks: the one way a task runs (the
    /// worker and the local `run` command alike).
    pub async fn run(&self, sandbox: &Sandbox, task: &Task, options: RunOptions) -> TaskOutcome {
        let _slot = match &self.slots {
            Some(slots) => match &options.cancel {
                Some(cancel) => tokio::select! {
                    permit = slots.clone().acquire_owned() => permit.ok(),
                    _ = cancel.cancelled() => return TaskOutcome::Cancelled,
                },
                None => slots.clone().acquire_owned().await.ok(),
            },
            None => None,
        };
        task::run(sandbox, &self.pre, task, options, &self.grants).await
    }

    /// The name its metrics carry: its registry name, else its file name.
    pub fn label(&self) -> String {
        let name = match &self.registry {
            Some(r) => r.name.clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        crate::metrics::plugin_label(&name)
    }
}

/// A plugin version from the orchestrator's registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub name: String,
    pub version: u32,
    pub sha256: String,
}

/// Every loaded plugin, by the skill names they serve.
#[derive(Default, Clone)]
pub struct PluginSet {
    by_skill: BTreeMap<String, Arc<Plugin>>,
    /// Bytes the skills take in a registration (bounded by
    /// [`limits::MAX_ADVERTISED_BYTES`]).
    advertised_bytes: usize,
}

impl PluginSet {
    /// The plugin serving `task_type`, if any.
    pub fn get(&self, task_type: &str) -> Option<&Arc<Plugin>> {
        self.by_skill.get(task_type)
    }

    /// Skill names, sorted.
    pub fn skill_names(&self) -> Vec<String> {
        self.by_skill.keys().cloned().collect()
    }

    /// Every skill with its plugin, sorted by name.
    pub fn skills(&self) -> impl Iterator<Item = (&Skill, &Plugin)> {
        self.by_skill.iter().filter_map(|(name, plugin)| {
            plugin
                .skills
                .iter()
                .find(|s| &s.name == name)
                .map(|s| (s, plugin.as_ref()))
        })
    }

    /// Each plugin once, in skill order.
    pub fn plugins(&self) -> Vec<Arc<Plugin>> {
        let mut out: Vec<Arc<Plugin>> = Vec::new();
        for p in self.by_skill.values() {
            if !out.iter().any(|o| Arc::ptr_eq(o, p)) {
                out.push(p.clone());
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.by_skill.is_empty()
    }

    /// Whether the plugin file at `path` serves a skill in this set.
    pub fn serves_from(&self, path: &Path) -> bool {
        self.by_skill.values().any(|p| p.path == path)
    }

    /// Adds a plugin, or says why not: one of its skills is already served
    /// by another plugin (the first one keeps it), or its skills would push
    /// the registration over [`limits::MAX_ADVERTISED_BYTES`]. A refused
    /// plugin adds none of its skills.
    pub fn insert(&mut self, plugin: Plugin) -> Result<(), String> {
        self.insert_shared(Arc::new(plugin))
    }

    /// [`Self::insert`] for a plugin already shared (e.g. with another set).
    pub fn insert_shared(&mut self, plugin: Arc<Plugin>) -> Result<(), String> {
        for skill in &plugin.skills {
            if let Some(existing) = self.by_skill.get(&skill.name) {
                return Err(format!(
                    "skill {} is already served by {}; the plugin that serves a skill first keeps it (remove {} to hand the skill over)",
                    skill.name,
                    existing.path.display(),
                    existing.path.display()
                ));
            }
        }
        let bytes: usize = plugin
            .skills
            .iter()
            .map(|s| serde_json::to_vec(&skill_info(s)).map_or(0, |v| v.len()))
            .sum();
        if self.advertised_bytes + bytes > limits::MAX_ADVERTISED_BYTES {
            return Err(format!(
                "its skills take {bytes} bytes and the worker already advertises {}; \
                 all skills of a worker may take at most {} bytes (MAX_ADVERTISED_BYTES)",
                self.advertised_bytes,
                limits::MAX_ADVERTISED_BYTES
            ));
        }
        self.advertised_bytes += bytes;
        for skill in &plugin.skills {
            self.by_skill.insert(skill.name.clone(), plugin.clone());
        }
        Ok(())
    }
}

/// Compiles and checks plugins for one engine, under one policy.
pub struct PluginLoader {
    sandbox: Sandbox,
    policy: Policy,
    /// Held while compiling.
    compiling: tokio::sync::Mutex<()>,
}

impl PluginLoader {
    /// A loader granting nothing beyond the sandbox (no policy).
    pub fn new(sandbox: Sandbox) -> anyhow::Result<Self> {
        Self::with_policy(sandbox, Policy::default())
    }

    /// A loader whose plugins may get what `policy` allows their manifests.
    pub fn with_policy(sandbox: Sandbox, policy: Policy) -> anyhow::Result<Self> {
        Ok(Self {
            sandbox,
            policy,
            compiling: tokio::sync::Mutex::new(()),
        })
    }

    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Loads one `.wasm` file (and its manifest, `<name>.toml`, if any).
    pub async fn load_file(&self, path: &Path) -> Result<Plugin, PluginError> {
        let refused = |reason: String| PluginError::Grant {
            path: path.to_owned(),
            reason,
        };
        let manifest = grants::read_manifest(path).map_err(refused)?;
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| PluginError::Read {
                path: path.to_owned(),
                source,
            })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.load_bytes(path, &name, bytes, manifest.as_ref(), None)
            .await
    }

    /// Loads a component: checks, compiles (or takes the compiled code from
    /// the cache), links, describes. `path` names it in messages; `name`
    /// keys its configuration in the policy.
    pub async fn load_bytes(
        &self,
        path: &Path,
        name: &str,
        bytes: Vec<u8>,
        manifest: Option<&grants::Manifest>,
        registry: Option<RegistryRef>,
    ) -> Result<Plugin, PluginError> {
        let loaded = self
            .load_checked(path, name, bytes, manifest, registry)
            .await;
        if loaded.is_err() {
            crate::metrics::counter!("worker_plugin_loads_total", "outcome" => "failed")
                .increment(1);
        }
        loaded
    }

    async fn load_checked(
        &self,
        path: &Path,
        name: &str,
        bytes: Vec<u8>,
        manifest: Option<&grants::Manifest>,
        registry: Option<RegistryRef>,
    ) -> Result<Plugin, PluginError> {
        let path_buf = path.to_owned();
        let grants = self.grants_for(path, name, manifest)?;
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(PluginError::NotWasm { path: path_buf });
        }
        // Bytes 4..8: version and layer; a core module is `01 00 00 00`.
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(PluginError::CoreModule { path: path_buf });
        }
        let component = self.compile(path, bytes).await?;
        let instance_pre = self
            .sandbox
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::WrongWorld {
                path: path_buf.clone(),
                reason: format!("{e:#}"),
            })?;
        let pre = TaskPluginPre::new(instance_pre).map_err(|e| PluginError::WrongWorld {
            path: path_buf.clone(),
            reason: format!("{e:#}"),
        })?;
        let skills =
            task::describe(&self.sandbox, &pre)
                .await
                .map_err(|e| PluginError::Describe {
                    path: path_buf.clone(),
                    reason: format!("{e:#}"),
                })?;
        validate_skills(&skills).map_err(|reason| PluginError::OverLimit {
            path: path_buf.clone(),
            reason,
        })?;
        let slots = grants
            .max_concurrent_tasks
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        Ok(Plugin {
            path: path_buf,
            grants,
            slots,
            pre,
            skills,
            registry,
        })
    }

    /// Compiles off the async threads, one component at a time (so the
    /// cache's counters say whether this one came from the cache), and says
    /// in the log which it was.
    async fn compile(&self, path: &Path, bytes: Vec<u8>) -> Result<Component, PluginError> {
        let _one_at_a_time = self.compiling.lock().await;
        let engine = self.sandbox.engine.clone();
        let cache = self.sandbox.cache.clone();
        let hits_before = cache.as_ref().map(|c| c.cache_hits());
        let size = bytes.len();
        let started = std::time::Instant::now();
        let component = tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
            .await
            .map_err(|e| PluginError::Invalid {
                path: path.to_owned(),
                reason: e.to_string(),
            })?
            .map_err(|e| PluginError::Invalid {
                path: path.to_owned(),
                reason: format!("{e:#}"),
            })?;
        let took = started.elapsed();
        let from_cache = match (&cache, hits_before) {
            (Some(c), Some(before)) => c.cache_hits() > before,
            _ => false,
        };
        crate::metrics::counter!(
            "worker_plugin_loads_total",
            "outcome" => if from_cache { "cached" } else { "compiled" }
        )
        .increment(1);
        if from_cache {
            tracing::info!(
                "{}: compiled code loaded from the cache in {took:.1?}, no compile ({size} bytes)",
                path.display()
            );
        } else {
            tracing::info!(
                "{}: compiled in {took:.1?} ({size} bytes){}",
                path.display(),
                if cache.is_some() {
                    "; cached for the next start"
                } else {
                    ""
                }
            );
        }
        Ok(component)
    }

    /// The manifest's grants, resolved against the policy.
    fn grants_for(
        &self,
        path: &Path,
        name: &str,
        manifest: Option<&grants::Manifest>,
    ) -> Result<Grants, PluginError> {
        let Some(manifest) = manifest else {
            return Ok(Grants::default());
        };
        let config = &self.sandbox.config;
        grants::resolve(
            name,
            manifest,
            &self.policy,
            config.task_timeout,
            config.memory_limit,
        )
        .map_err(|reason| PluginError::Grant {
            path: path.to_owned(),
            reason,
        })
    }

    /// Loads every `*.wasm` in `dir`; broken files are logged and skipped.
    ///
    /// Plugins that serve skills in `incumbent` (the set in service) are
    /// loaded first, then the others, each group in file name order: when two
    /// files declare the same skill, the one already serving it keeps it and
    /// the newcomer is refused with a log line naming both. A file that
    /// cannot be loaded (a copy still in progress, a broken build) whose
    /// path serves in `incumbent` leaves that version in service: its skills
    /// are not dropped.
    pub async fn load_dir(&self, dir: &Path, incumbent: &PluginSet) -> anyhow::Result<PluginSet> {
        let mut files = Vec::new();
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .with_context(|| format!("cannot read the plugins directory {}", dir.display()))?;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "wasm") && path.is_file() {
                files.push(path);
            }
        }
        files.sort_by_key(|p| (!incumbent.serves_from(p), p.clone()));
        let mut set = PluginSet::default();
        for path in files {
            match self.load_file(&path).await {
                Ok(plugin) => {
                    let names: Vec<String> = plugin.skills.iter().map(|s| s.name.clone()).collect();
                    match set.insert(plugin) {
                        Ok(()) => tracing::info!(
                            "loaded plugin {} serving {}",
                            path.display(),
                            names.join(", ")
                        ),
                        Err(why) => {
                            tracing::error!("refusing plugin {}: {why}", path.display())
                        }
                    }
                }
                Err(e) => {
                    let serving = incumbent.plugins().into_iter().find(|p| p.path == path);
                    match serving {
                        Some(previous) => {
                            tracing::error!(
                                "skipping plugin: {e}; the version loaded before from {} stays in service",
                                path.display()
                            );
                            if let Err(why) = set.insert_shared(previous) {
                                tracing::error!("refusing plugin {}: {why}", path.display());
                            }
                        }
                        None => tracing::error!("skipping plugin: {e}"),
                    }
                }
            }
        }
        Ok(set)
    }
}

/// Checks a plugin's self-description against [`limits`]; the error names
/// the limit crossed.
pub fn validate_skills(skills: &[Skill]) -> Result<(), String> {
    if skills.is_empty() {
        return Err("describe() returned no skills".into());
    }
    if skills.len() > limits::MAX_SKILLS_PER_PLUGIN {
        return Err(format!(
            "{} skills; the limit is {} (MAX_SKILLS_PER_PLUGIN)",
            skills.len(),
            limits::MAX_SKILLS_PER_PLUGIN
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for skill in skills {
        let name = limits::clip(&skill.name, 80);
        if !limits::is_skill_name(&skill.name) {
            return Err(format!(
                "skill name {name:?} must be 1 to {} bytes of letters, digits, `_`, `-` or `.` (MAX_SKILL_NAME)",
                limits::MAX_SKILL_NAME
            ));
        }
        if !seen.insert(skill.name.as_str()) {
            return Err(format!("skill {name} is declared twice"));
        }
        let over = |what: &str, len: usize, max: usize, limit: &str| {
            (len > max).then(|| {
                format!("skill {name}: its {what} is {len} bytes; the limit is {max} ({limit})")
            })
        };
        let checks = [
            over(
                "version",
                skill.version.len(),
                limits::MAX_SKILL_VERSION,
                "MAX_SKILL_VERSION",
            ),
            over(
                "description",
                skill.description.len(),
                limits::MAX_SKILL_DESCRIPTION,
                "MAX_SKILL_DESCRIPTION",
            ),
            over(
                "input schema",
                skill.input_schema.as_ref().map_or(0, String::len),
                limits::MAX_SCHEMA_BYTES,
                "MAX_SCHEMA_BYTES",
            ),
            over(
                "output schema",
                skill.output_schema.as_ref().map_or(0, String::len),
                limits::MAX_SCHEMA_BYTES,
                "MAX_SCHEMA_BYTES",
            ),
            over(
                "list of output statuses",
                skill.output_statuses.len(),
                limits::MAX_OUTPUT_STATUSES,
                "MAX_OUTPUT_STATUSES",
            ),
        ];
        if let Some(problem) = checks.into_iter().flatten().next() {
            return Err(problem);
        }
        if let Some(bad) = skill
            .output_statuses
            .iter()
            .find(|s| !limits::is_status_name(s))
        {
            return Err(format!(
                "skill {name}: output status {:?} must be 1 to {} bytes of letters, digits, `_`, `-`, `.` or `:` (MAX_STATUS_NAME)",
                limits::clip(bad, 80),
                limits::MAX_STATUS_NAME
            ));
        }
        for (what, schema) in [
            ("input", &skill.input_schema),
            ("output", &skill.output_schema),
        ] {
            if let Some(schema) = schema {
                serde_json::from_str::<serde_json::Value>(schema)
                    .map_err(|e| format!("skill {name}: {what} schema is not valid JSON: {e}"))?;
            }
        }
    }
    Ok(())
}

/// The RXON description of a skill.
pub fn skill_info(skill: &Skill) -> rxon::SkillInfo {
    let schema = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str(s).ok());
    rxon::SkillInfo {
        name: skill.name.clone(),
        skill_type: Some(skill.name.clone()),
        description: Some(skill.description.clone()).filter(|d| !d.is_empty()),
        version: Some(skill.version.clone()).filter(|v| !v.is_empty()),
        input_schema: schema(&skill.input_schema),
        output_schema: schema(&skill.output_schema),
        output_statuses: Some(skill.output_statuses.clone()).filter(|s| !s.is_empty()),
    }
}
