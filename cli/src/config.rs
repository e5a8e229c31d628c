//! Where the orchestrator is and which token to use: flags, then the
//! environment (`TASKCTL_URL`, `TASKCTL_TOKEN`), then the config file
//! (`$TASKCTL_CONFIG`, else `$XDG_CONFIG_HOME/taskctl/config.toml`, else
//! `~/.config/taskctl/config.toml`), then `http://localhost:8080`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The config file: `url = "…"` and `token = "…"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub url: Option<String>,
    pub token: Option<String>,
}

/// The resolved connection settings.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub token: String,
}

pub const DEFAULT_URL: &str = "http://localhost:8080";

/// The config file's path, if one can be named.
pub fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TASKCTL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("taskctl").join("config.toml"))
}

fn read_file() -> anyhow::Result<FileConfig> {
    let Some(path) = config_path() else {
        return Ok(FileConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("invalid {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `url`/`token`: from the flags or the environment (clap reads both).
pub fn resolve(url: Option<String>, token: Option<String>) -> anyhow::Result<Target> {
    let file = read_file()?;
    let url = url.or(file.url).unwrap_or_else(|| DEFAULT_URL.to_string());
    let Some(token) = token.or(file.token) else {
        bail!(
            "no client token: pass --token, set TASKCTL_TOKEN, or put token = \"…\" in {}",
            config_path()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "the config file".into())
        );
    };
    Ok(Target {
        url: url.trim_end_matches('/').to_string(),
        token,
    })
}
