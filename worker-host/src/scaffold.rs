//! `worker-host new --lang rust|python|js NAME`: a new plugin project from a
//! template, which tests and builds as generated. The templates live in
//! `worker-host/templates/`; the SDK files, the WIT and the JavaScript build
//! script are the repository's own, compiled into the binary, so a project
//! is complete wherever it is created. A Rust project depends on the guest
//! SDK by path: the checkout this binary was built from, or `--sdk`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// Longest plugin name.
const MAX_NAME: usize = 64;

const WIT: &str = include_str!("../../wit/plugin.wit");

/// (path in the project, contents); `{{name}}` and `{{sdk}}` are filled in.
fn files(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/lib.rs")),
            ("README.md", include_str!("../templates/rust/README.md")),
        ],
        Lang::Python => vec![
            ("app.py", include_str!("../templates/python/app.py")),
            (
                "test_app.py",
                include_str!("../templates/python/test_app.py"),
            ),
            ("build.sh", include_str!("../templates/python/build.sh")),
            ("README.md", include_str!("../templates/python/README.md")),
            (
                "taskworker.py",
                include_str!("../../plugins/python/sdk/taskworker.py"),
            ),
            ("wit/plugin.wit", WIT),
        ],
        Lang::Js => vec![
            ("app.js", include_str!("../templates/js/app.js")),
            ("app.test.mjs", include_str!("../templates/js/app.test.mjs")),
            ("build.sh", include_str!("../templates/js/build.sh")),
            ("README.md", include_str!("../templates/js/README.md")),
            (
                "package.json",
                include_str!("../../plugins/js/package.json"),
            ),
            ("build.mjs", include_str!("../../plugins/js/build.mjs")),
            (
                "sdk/test-host.mjs",
                include_str!("../../plugins/js/sdk/test-host.mjs"),
            ),
            (
                "sdk/host-hooks.mjs",
                include_str!("../../plugins/js/sdk/host-hooks.mjs"),
            ),
            ("wit/plugin.wit", WIT),
        ],
    }
}

/// The guest SDK of the checkout this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/sdk")
}

/// Creates `dir/name` for a plugin named `name`; returns the directory.
pub fn create(lang: Lang, name: &str, dir: &Path, sdk: &Path) -> anyhow::Result<PathBuf> {
    ensure!(
        !name.is_empty()
            && name.len() <= MAX_NAME
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "invalid plugin name {name:?}: use 1-{MAX_NAME} lower-case letters, digits or `_`, starting with a letter (it is also the skill's name)"
    );
    let root = dir.join(name);
    if root.exists() && std::fs::read_dir(&root)?.next().is_some() {
        bail!("{} exists and is not empty", root.display());
    }
    let sdk = if lang == Lang::Rust {
        let sdk = sdk.canonicalize().with_context(|| {
            format!(
                "the Rust guest SDK is not at {} (pass --sdk <path to plugins/sdk>)",
                sdk.display()
            )
        })?;
        ensure!(
            sdk.join("Cargo.toml").exists(),
            "{} is not the guest SDK (no Cargo.toml; pass --sdk <path to plugins/sdk>)",
            sdk.display()
        );
        sdk.display().to_string()
    } else {
        String::new()
    };
    for (path, text) in files(lang) {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text.replace("{{name}}", name).replace("{{sdk}}", &sdk);
        std::fs::write(&target, text)
            .with_context(|| format!("cannot write {}", target.display()))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_an_existing_project_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            "",
            "Upper",
            "9lives",
            "has-dash",
            "has space",
            &"x".repeat(65),
        ] {
            assert!(
                create(Lang::Python, bad, dir.path(), Path::new(".")).is_err(),
                "{bad:?}"
            );
        }
        let root = create(Lang::Python, "my_task", dir.path(), Path::new(".")).unwrap();
        let app = std::fs::read_to_string(root.join("app.py")).unwrap();
        assert!(app.contains("\"my_task\"") && !app.contains("{{name}}"));
        assert!(root.join("wit/plugin.wit").exists());
        let again = create(Lang::Python, "my_task", dir.path(), Path::new(".")).unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again}");
        let rust = create(Lang::Rust, "r_task", dir.path(), &default_sdk()).unwrap();
        let manifest = std::fs::read_to_string(rust.join("Cargo.toml")).unwrap();
        assert!(manifest.contains("name = \"r_task\"") && manifest.contains("plugins/sdk"));
    }
}
