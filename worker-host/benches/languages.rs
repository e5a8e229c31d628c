//! The echo plugin in each language (Rust, Python, JavaScript): component
//! size, first compile, load from the compiled-code cache, and a fresh
//! sandboxed instance + one call. Python and JavaScript components are built
//! by `scripts/build-lang-plugins.sh` into `target/lang-plugins/`; a missing
//! one is reported and skipped.
//!
//! Run: `cargo bench -p worker-host --bench languages`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use worker_host::plugin_store::PluginLoader;
use worker_host::sandbox::{RunOptions, Sandbox, SandboxConfig, Task};

fn components() -> Vec<(&'static str, PathBuf)> {
    let lang = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lang-plugins");
    let all = [
        ("rust", PathBuf::from(plugin_fixtures::ECHO_TASK)),
        ("python", lang.join("echo_task_py.wasm")),
        ("javascript", lang.join("echo_task_js.wasm")),
    ];
    all.into_iter()
        .filter(|(name, path)| {
            let there = path.exists();
            if !there {
                eprintln!(
                    "{name}: {} is missing (run scripts/build-lang-plugins.sh); skipped",
                    path.display()
                );
            }
            there
        })
        .collect()
}

fn engine(cache: Option<&Path>) -> Sandbox {
    Sandbox::new(SandboxConfig {
        compile_cache: cache.map(Path::to_path_buf),
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn per_language(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (lang, path) in components() {
        let size = std::fs::metadata(&path).unwrap().len();
        let cache = tempfile::tempdir().unwrap();
        // First compile: once (it takes seconds), into an empty cache.
        let loader = PluginLoader::new(engine(Some(cache.path()))).unwrap();
        let started = Instant::now();
        rt.block_on(loader.load_file(&path)).unwrap();
        let compile = started.elapsed();
        eprintln!(
            "{lang}: component {:.1} MB, first compile {compile:.2?}",
            size as f64 / 1e6
        );

        let mut group = c.benchmark_group(format!("{lang} echo"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(10));
        // A new engine each time, as at a worker host's start.
        group.bench_function("load from the compiled-code cache", |b| {
            b.to_async(&rt).iter(|| async {
                let loader = PluginLoader::new(engine(Some(cache.path()))).unwrap();
                loader.load_file(&path).await.unwrap()
            })
        });
        let engine = loader.sandbox().clone();
        let plugin = rt.block_on(loader.load_file(&path)).unwrap();
        let input = Task {
            task_id: "bench".into(),
            job_id: "bench".into(),
            task_type: "echo_task".into(),
            params: r#"{"message":"Hello World","multiply":3}"#.into(),
        };
        group.bench_function("fresh instance + call", |b| {
            b.to_async(&rt)
                .iter(|| async { plugin.run(&engine, &input, RunOptions::default()).await })
        });
        group.finish();
    }
}

criterion_group!(benches, per_language);
criterion_main!(benches);
