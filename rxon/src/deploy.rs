//! Plugin deployment between our orchestrator and our worker host: an
//! extension beside RXON that stock avtomatika workers never see.
//!
//! - Every answer of our orchestrator under `/_worker` carries
//!   [`HEADER_PLUGINS_REVISION`], a digest of the plugins the fleet should
//!   run. A worker host that sees it change fetches [`DesiredPlugins`] from
//!   [`PLUGINS_PATH`] and the components it lacks from [`blob_path`].
//! - The worker host reports what it runs in its registration, under
//!   `metadata.plugins` ([`PluginReport`]).

use serde::{Deserialize, Serialize};

/// Response header: the revision of the desired plugin set.
pub const HEADER_PLUGINS_REVISION: &str = "x-plugins-revision";

/// `GET`: the desired plugin set ([`DesiredPlugins`]).
pub const PLUGINS_PATH: &str = "/_worker/plugins";

/// Registration metadata key holding the worker's [`PluginReport`]s.
pub const METADATA_PLUGINS: &str = "plugins";

/// Most plugins a desired set or a report may hold.
pub const MAX_PLUGINS: usize = 256;

/// Longest error text in a [`PluginReport`].
pub const MAX_REPORT_ERROR: usize = 1024;

/// `GET`: one component, by its SHA-256 (lowercase hex).
pub fn blob_path(sha256: &str) -> String {
    format!("{PLUGINS_PATH}/{sha256}")
}

/// The plugins every worker host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPlugins {
    pub revision: String,
    pub plugins: Vec<DesiredPlugin>,
}

/// One plugin version a worker host should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPlugin {
    /// The plugin's name (unique in the registry).
    pub name: String,
    pub version: u32,
    /// SHA-256 of the component, lowercase hex.
    pub sha256: String,
    /// Size of the component in bytes.
    pub size: u64,
    /// The plugin's manifest (TOML), when it was uploaded with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// Whether a worker host runs a plugin version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginState {
    /// In service.
    Running,
    /// Could not be loaded; `error` says why (the previous version, if
    /// any, stays in service).
    Failed,
}

/// What a worker host reports about one registry plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginReport {
    pub name: String,
    /// The version this report is about.
    pub version: u32,
    pub sha256: String,
    pub state: PluginState,
    /// The version in service when `state` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// True for a plugin name: 1 to 64 letters, digits, `_` or `-`.
pub fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// True for a lowercase hex SHA-256.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hashes_are_checked() {
        assert!(is_plugin_name("echo_task"));
        assert!(!is_plugin_name("../x"));
        assert!(!is_plugin_name(""));
        assert!(!is_plugin_name(&"a".repeat(65)));
        let h = sha256_hex(b"abc");
        assert!(is_sha256_hex(&h));
        assert!(!is_sha256_hex(&h.to_uppercase()));
        assert!(!is_sha256_hex("../../etc/passwd"));
    }

    #[test]
    fn reports_round_trip_with_snake_case_states() {
        let r = PluginReport {
            name: "echo".into(),
            version: 2,
            sha256: sha256_hex(b""),
            state: PluginState::Failed,
            running_version: Some(1),
            error: Some("no".into()),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["state"], "failed");
        assert_eq!(serde_json::from_value::<PluginReport>(v).unwrap(), r);
    }
}
