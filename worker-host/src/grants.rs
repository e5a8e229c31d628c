//! What a plugin may do besides compute: declared per plugin in a manifest
//! beside its `.wasm`, capped by the worker operator's policy, checked when
//! the plugin loads. A plugin without a manifest gets nothing.
//!
//! Manifest (`<plugin>.toml`, every key optional, unknown keys refused):
//!
//! ```toml
//! [limits]                      # tighter than the worker's, never looser
//! timeout_seconds = 30
//! memory_mb = 64
//! max_concurrent_tasks = 2
//!
//! [config]                      # keys read through wasi:config/store
//! keys = ["api_url"]
//! secret_keys = ["api_key"]     # never logged; cut out of host log lines
//!
//! [[files]]                     # read-only directories
//! host = "/srv/models"
//! guest = "/models"
//!
//! [http]                        # outbound HTTP through wasi:http
//! allowed_origins = ["https://api.example.com", "http://127.0.0.1:8081"]
//! max_request_bytes = 1048576   # defaults: 1 MiB, 10 MiB, 10 s, 4
//! max_response_bytes = 10485760
//! timeout_seconds = 10
//! max_connections = 4
//!
//! [objects]                     # the job's files in object storage (the `objects` interface)
//! read = true                   # the job's inputs and earlier outputs
//! write = true                  # the job's outputs (`<job>/<name>`)
//! read_prefixes = ["models/"]   # more keys to read, within the policy's allowed_object_prefixes
//! ```
//!
//! Policy (`--policy worker-policy.toml`; without one, no plugin may have
//! files or config):
//!
//! ```toml
//! allowed_dirs = ["/srv"]       # host directories (and below) manifests may map
//! allowed_origins = ["https://*.example.com", "http://127.0.0.1:*"]
//! allowed_object_prefixes = ["models/"]   # keys manifests may add to read
//! [config.http_fetch_task]      # values per plugin; also PLUGIN_<PLUGIN>_<KEY> env vars
//! api_key = "…"
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sandbox::http::{HttpGrant, Origin};

/// A plugin's manifest, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    #[serde(default)]
    pub limits: ManifestLimits,
    #[serde(default)]
    pub config: ManifestConfig,
    #[serde(default)]
    pub files: Vec<ManifestDir>,
    #[serde(default)]
    pub http: Option<ManifestHttp>,
    #[serde(default)]
    pub objects: Option<ObjectsGrant>,
}

/// `[objects]` of a manifest: what the plugin may read and write through
/// the `objects` interface.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsGrant {
    /// The job's files: the client's uploads (`jobs/<job>/…`) and earlier
    /// tasks' outputs (`<job>/…`).
    #[serde(default)]
    pub read: bool,
    /// The job's outputs (`<job>/<name>`).
    #[serde(default)]
    pub write: bool,
    /// Key prefixes the plugin may also read (each within the policy's
    /// `allowed_object_prefixes`).
    #[serde(default)]
    pub read_prefixes: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestHttp {
    pub allowed_origins: Vec<String>,
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub timeout_seconds: Option<f64>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestLimits {
    pub timeout_seconds: Option<f64>,
    pub memory_mb: Option<usize>,
    pub max_concurrent_tasks: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub secret_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestDir {
    pub host: PathBuf,
    pub guest: String,
}

/// The worker operator's policy.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Host directories (and everything below) a manifest may map read-only.
    #[serde(default)]
    pub allowed_dirs: Vec<PathBuf>,
    /// Config values per plugin name.
    #[serde(default)]
    pub config: BTreeMap<String, BTreeMap<String, String>>,
    /// Origins (patterns) a manifest's outbound HTTP may fall within.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Object key prefixes a manifest's `objects.read_prefixes` may name
    /// (each must start with one of these).
    #[serde(default)]
    pub allowed_object_prefixes: Vec<String>,
}

impl Policy {
    /// Reads a policy file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the policy {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("policy {}: {}", path.display(), e.message()))
    }

    /// The value of `key` for `plugin`: the policy file's, else the
    /// environment's `PLUGIN_<PLUGIN>__<KEY>` ([`env_name`]; none when the
    /// name would be ambiguous).
    fn value(&self, plugin: &str, key: &str) -> Option<String> {
        self.config
            .get(plugin)
            .and_then(|c| c.get(key).cloned())
            .or_else(|| std::env::var(env_name(plugin, key)?).ok())
    }
}

/// `PLUGIN_<PLUGIN>__<KEY>`: upper case, any other character `_`, the two
/// parts apart by `__`. `None` when a part would itself hold `__` (or start
/// or end with `_`): its name could then be another plugin's and key's
/// (`a` + `b__c` and `a__b` + `c`); such a value comes from the policy file
/// only.
pub fn env_name(plugin: &str, key: &str) -> Option<String> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let (plugin, key) = (clean(plugin), clean(key));
    let clear =
        |s: &str| !s.is_empty() && !s.contains("__") && !s.starts_with('_') && !s.ends_with('_');
    (clear(&plugin) && clear(&key)).then(|| format!("PLUGIN_{plugin}__{key}"))
}

/// What one plugin was granted, resolved against the policy.
#[derive(Debug, Default, Clone)]
pub struct Grants {
    /// Config values it may read (only declared keys that have a value).
    pub config: Vec<(String, String)>,
    /// Values never to show in logs.
    pub secrets: Vec<String>,
    /// Read-only directories: (host, guest).
    pub dirs: Vec<(PathBuf, String)>,
    pub timeout: Option<Duration>,
    pub memory_limit: Option<usize>,
    pub max_concurrent_tasks: Option<usize>,
    /// Outbound HTTP, when granted.
    pub http: Option<std::sync::Arc<HttpGrant>>,
    /// Object storage, when granted.
    pub objects: Option<ObjectsGrant>,
    /// The plugin's name (its file name without `.wasm`), for logs.
    pub plugin: String,
}

impl Grants {
    /// Text for a log line or an error message, with secret values cut out.
    pub fn redact(&self, text: &str) -> String {
        redact(&self.secrets, text)
    }
}

/// `text` with every value of `secrets` replaced by `[redacted]`.
pub fn redact(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret.as_str(), "[redacted]");
    }
    out
}

/// Most config keys, directories and key length a manifest may declare.
const MAX_KEYS: usize = 64;
const MAX_DIRS: usize = 16;

/// Checks `manifest` of plugin `name` against `policy` and the worker's own
/// limits; the error names the grant refused.
pub fn resolve(
    name: &str,
    manifest: &Manifest,
    policy: &Policy,
    worker_timeout: Duration,
    worker_memory: usize,
) -> Result<Grants, String> {
    let mut grants = Grants {
        plugin: name.to_string(),
        ..Grants::default()
    };
    if let Some(http) = &manifest.http {
        grants.http = Some(std::sync::Arc::new(resolve_http(http, policy)?));
    }
    if let Some(objects) = &manifest.objects {
        grants.objects = Some(resolve_objects(objects, policy)?);
    }
    let l = &manifest.limits;
    if let Some(t) = l.timeout_seconds {
        if !(t.is_finite() && t > 0.0) || Duration::from_secs_f64(t.min(1e9)) > worker_timeout {
            return Err(format!(
                "limits.timeout_seconds = {t}: must be positive and at most the worker's {worker_timeout:?}"
            ));
        }
        grants.timeout = Some(Duration::from_secs_f64(t));
    }
    if let Some(mb) = l.memory_mb {
        if mb == 0 || mb.saturating_mul(1 << 20) > worker_memory {
            return Err(format!(
                "limits.memory_mb = {mb}: must be 1 to the worker's {} MiB",
                worker_memory >> 20
            ));
        }
        grants.memory_limit = Some(mb << 20);
    }
    if let Some(n) = l.max_concurrent_tasks {
        if n == 0 {
            return Err("limits.max_concurrent_tasks = 0: must be at least 1".into());
        }
        grants.max_concurrent_tasks = Some(n);
    }
    let c = &manifest.config;
    if c.keys.len() + c.secret_keys.len() > MAX_KEYS {
        return Err(format!("config: more than {MAX_KEYS} keys"));
    }
    for (key, secret) in c
        .keys
        .iter()
        .map(|k| (k, false))
        .chain(c.secret_keys.iter().map(|k| (k, true)))
    {
        if key.is_empty() || key.len() > 128 {
            return Err(format!("config key {key:?}: 1 to 128 bytes"));
        }
        match policy.value(name, key) {
            Some(value) => {
                if secret {
                    grants.secrets.push(value.clone());
                }
                grants.config.push((key.clone(), value));
            }
            None => tracing::warn!(
                "plugin {name}: config key {key} has no value (set [config.{name}] {key} in the policy{})",
                env_name(name, key)
                    .map(|env| format!(", or {env}"))
                    .unwrap_or_default()
            ),
        }
    }
    if manifest.files.len() > MAX_DIRS {
        return Err(format!("files: more than {MAX_DIRS} directories"));
    }
    for dir in &manifest.files {
        let host = std::fs::canonicalize(&dir.host).map_err(|e| {
            format!(
                "files: host directory {} cannot be opened: {e}",
                dir.host.display()
            )
        })?;
        let allowed = policy
            .allowed_dirs
            .iter()
            .any(|a| std::fs::canonicalize(a).is_ok_and(|a| host.starts_with(a)));
        if !allowed {
            return Err(format!(
                "files: {} is not under a directory the worker's policy allows (allowed_dirs)",
                host.display()
            ));
        }
        let guest_ok = dir.guest.starts_with('/')
            && !Path::new(&dir.guest)
                .components()
                .any(|c| matches!(c, Component::ParentDir));
        if !guest_ok {
            return Err(format!(
                "files: guest path {:?} must be absolute, without `..`",
                dir.guest
            ));
        }
        grants.dirs.push((host, dir.guest.clone()));
    }
    Ok(grants)
}

/// Most extra prefixes an `[objects]` grant may name.
const MAX_OBJECT_PREFIXES: usize = 16;

fn resolve_objects(objects: &ObjectsGrant, policy: &Policy) -> Result<ObjectsGrant, String> {
    if objects.read_prefixes.len() > MAX_OBJECT_PREFIXES {
        return Err(format!(
            "objects.read_prefixes: more than {MAX_OBJECT_PREFIXES} prefixes"
        ));
    }
    for prefix in &objects.read_prefixes {
        let plain = !prefix.is_empty()
            && prefix.len() <= 512
            && !prefix.starts_with('/')
            && prefix.ends_with('/')
            && !prefix.split('/').any(|s| s == ".." || s == ".");
        if !plain {
            return Err(format!(
                "objects.read_prefixes: {prefix:?} must be a relative key prefix ending in '/', without '.' or '..'"
            ));
        }
        if !policy
            .allowed_object_prefixes
            .iter()
            .any(|allowed| prefix.starts_with(allowed.as_str()))
        {
            return Err(format!(
                "objects.read_prefixes: {prefix:?} is not within a prefix the worker's policy allows (allowed_object_prefixes)"
            ));
        }
    }
    Ok(objects.clone())
}

/// Bounds of outbound HTTP grants.
const MAX_HTTP_BYTES: u64 = 256 << 20;
const MAX_HTTP_CONNECTIONS: usize = 64;

fn resolve_http(http: &ManifestHttp, policy: &Policy) -> Result<HttpGrant, String> {
    let wider: Vec<Origin> = policy
        .allowed_origins
        .iter()
        .map(|o| Origin::parse(o))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the policy's allowed_origins: {e}"))?;
    let mut origins = Vec::new();
    for text in &http.allowed_origins {
        let origin = Origin::parse(text).map_err(|e| format!("http.allowed_origins: {e}"))?;
        if !wider.iter().any(|w| origin.within(w)) {
            return Err(format!(
                "http.allowed_origins: {text} is not within the worker's policy (allowed_origins)"
            ));
        }
        origins.push(origin);
    }
    let bytes = |v: Option<u64>, default: u64, name: &str| match v {
        None => Ok(default),
        Some(n) if (1..=MAX_HTTP_BYTES).contains(&n) => Ok(n),
        Some(n) => Err(format!("http.{name} = {n}: must be 1 to {MAX_HTTP_BYTES}")),
    };
    let timeout = match http.timeout_seconds {
        None => Duration::from_secs(10),
        Some(t) if t.is_finite() && t > 0.0 && t <= 3600.0 => Duration::from_secs_f64(t),
        Some(t) => return Err(format!("http.timeout_seconds = {t}: must be 0 to 3600")),
    };
    let max_connections = http.max_connections.unwrap_or(4);
    if !(1..=MAX_HTTP_CONNECTIONS).contains(&max_connections) {
        return Err(format!(
            "http.max_connections = {max_connections}: must be 1 to {MAX_HTTP_CONNECTIONS}"
        ));
    }
    Ok(HttpGrant {
        origins,
        max_request_bytes: bytes(http.max_request_bytes, 1 << 20, "max_request_bytes")?,
        max_response_bytes: bytes(http.max_response_bytes, 10 << 20, "max_response_bytes")?,
        timeout,
        max_connections,
    })
}

/// The manifest beside `wasm` (`x.wasm` → `x.toml`), if there is one.
pub fn read_manifest(wasm: &Path) -> Result<Option<Manifest>, String> {
    use std::io::Read;
    let path = wasm.with_extension("toml");
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("manifest {}: {e}", path.display())),
    };
    // Read at most one byte past the limit: a larger file is refused unread.
    let mut text = String::new();
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("manifest {}: {e}", path.display()))?;
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "manifest {} is larger than {MAX_MANIFEST_BYTES} bytes",
            path.display()
        ));
    }
    parse_manifest(&text, &path.display().to_string()).map(Some)
}

/// A manifest's text; `source` names it in errors.
pub fn parse_manifest(text: &str, source: &str) -> Result<Manifest, String> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(format!(
            "manifest {source} is larger than {MAX_MANIFEST_BYTES} bytes"
        ));
    }
    toml::from_str(text).map_err(|e| format!("manifest {source}: {}", e.message()))
}

/// Largest manifest read.
const MAX_MANIFEST_BYTES: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_manifest_asking_for_more_than_the_policy_is_refused_naming_the_grant() {
        let policy = Policy::default();
        let big = manifest("[limits]\nmemory_mb = 4096\n");
        let err = resolve("p", &big, &policy, Duration::from_secs(60), 128 << 20).unwrap_err();
        assert!(err.contains("limits.memory_mb"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let files = manifest(&format!(
            "[[files]]\nhost = {:?}\nguest = \"/data\"\n",
            dir.path()
        ));
        let err = resolve("p", &files, &policy, Duration::from_secs(60), 128 << 20).unwrap_err();
        assert!(err.contains("allowed_dirs"), "{err}");
        let ok_policy = Policy {
            allowed_dirs: vec![dir.path().to_path_buf()],
            ..Policy::default()
        };
        let g = resolve("p", &files, &ok_policy, Duration::from_secs(60), 128 << 20).unwrap();
        assert_eq!(g.dirs.len(), 1);
        assert!(toml::from_str::<Manifest>("[net]\nx = 1\n").is_err());
    }

    #[test]
    fn object_prefixes_stay_within_the_policy() {
        let t = Duration::from_secs(60);
        let m = manifest("[objects]\nread = true\nwrite = true\n");
        let g = resolve("p", &m, &Policy::default(), t, 128 << 20).unwrap();
        assert_eq!(
            g.objects.as_ref().map(|o| (o.read, o.write)),
            Some((true, true))
        );
        let m = manifest("[objects]\nread_prefixes = [\"models/v3/\"]\n");
        let err = resolve("p", &m, &Policy::default(), t, 128 << 20).unwrap_err();
        assert!(err.contains("allowed_object_prefixes"), "{err}");
        let policy: Policy = toml::from_str("allowed_object_prefixes = [\"models/\"]\n").unwrap();
        assert!(resolve("p", &m, &policy, t, 128 << 20).is_ok());
        for bad in ["/models/", "models", "models/../jobs/", ""] {
            let m = manifest(&format!("[objects]\nread_prefixes = [{bad:?}]\n"));
            let err = resolve("p", &m, &policy, t, 128 << 20).unwrap_err();
            assert!(err.contains("relative key prefix"), "{bad}: {err}");
        }
        assert!(toml::from_str::<Manifest>("[objects]\ndelete = true\n").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let policy: Policy =
            toml::from_str("[config.p]\napi_key = \"s3cr3t\"\nurl = \"u\"\n").unwrap();
        let m = manifest("[config]\nkeys = [\"url\"]\nsecret_keys = [\"api_key\"]\n");
        let g = resolve("p", &m, &policy, Duration::from_secs(60), 128 << 20).unwrap();
        assert_eq!(g.config.len(), 2);
        assert_eq!(g.redact("key=s3cr3t!"), "key=[redacted]!");
        assert_eq!(
            env_name("http-fetch", "api.key").as_deref(),
            Some("PLUGIN_HTTP_FETCH__API_KEY")
        );
    }

    #[test]
    fn secret_environment_names_of_two_plugins_never_collide() {
        // Once `PLUGIN_A_B_C` for both; now the boundary is unmistakable.
        assert_eq!(env_name("a", "b_c").as_deref(), Some("PLUGIN_A__B_C"));
        assert_eq!(env_name("a_b", "c").as_deref(), Some("PLUGIN_A_B__C"));
        // A part that would hold the separator itself has no name.
        assert_eq!(env_name("a", "b__c"), None);
        assert_eq!(env_name("a__b", "c"), None);
        assert_eq!(env_name("a_", "c"), None);
        assert_eq!(env_name("a", "_c"), None);
    }
}
