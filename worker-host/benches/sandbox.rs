//! Per-task cost of the sandbox: a fresh instance of `echo_task` plus one call,
//! and plugin load from `.wasm` (compile) vs from wasmtime's compilation cache.
//!
//! Run: `cargo bench -p worker-host --bench sandbox`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use worker_host::plugin_store::PluginLoader;
use worker_host::sandbox::{RunOptions, Sandbox, SandboxConfig, Task};

fn fresh_instance_and_call(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Sandbox::new(SandboxConfig::default()).unwrap();
    let loader = PluginLoader::new(engine.clone()).unwrap();
    let plugin = rt
        .block_on(loader.load_file(Path::new(plugin_fixtures::ECHO_TASK)))
        .unwrap();
    let input = Task {
        task_id: "bench".into(),
        job_id: "bench".into(),
        task_type: "echo_task".into(),
        params: r#"{"message":"Hello World","multiply":3}"#.into(),
    };
    eprintln!("pooling allocator in use: {}", engine.pooling);
    c.bench_function("echo_task: fresh sandboxed instance + call", |b| {
        b.to_async(&rt)
            .iter(|| async { plugin.run(&engine, &input, RunOptions::default()).await })
    });
}

fn plugin_load(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("plugin load");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    let cache_dir = tempfile::tempdir().unwrap();
    for (name, cache) in [
        ("compile from .wasm", None),
        (
            "from compilation cache",
            Some(cache_dir.path().to_path_buf()),
        ),
    ] {
        let engine = Sandbox::new(SandboxConfig {
            compile_cache: cache,
            ..SandboxConfig::default()
        })
        .unwrap();
        let loader = PluginLoader::new(engine).unwrap();
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                loader
                    .load_file(Path::new(plugin_fixtures::ECHO_TASK))
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fresh_instance_and_call, plugin_load);
criterion_main!(benches);
