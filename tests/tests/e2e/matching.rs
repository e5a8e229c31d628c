//! Tasks that require something of their worker, with real worker hosts
//! declaring what they have (`GPU_MODEL`, `GPU_VRAM_GB`,
//! `INSTALLED_SOFTWARE`): a GPU task waits, saying why, until a worker
//! declaring the GPU registers, and is never given to the others, while
//! tasks needing nothing keep flowing to every worker; on SQLite, and on
//! PostgreSQL with the two workers on two instances.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};

const GPU_FLOW: &str = r#"
name = "gpu_echo"
api_endpoint = "/jobs/gpu_echo"
api_version = "v1"
[states.start]
start = true
dispatch.task = "echo_task"
dispatch.params.message = "initial.message"
dispatch.params.multiply = 1
dispatch.requires = { resources = { devices = [{ type = "gpu", properties = { vram_gb = ">= 16" } }] }, installed_software = { ffmpeg = "any" } }
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

/// A worker host declaring a 40 GB GPU and ffmpeg.
fn gpu_worker(stack: &Stack, urls: Option<&str>) -> Proc {
    stack.spawn_worker("gpu-worker", "gpu-worker.log", |cmd| {
        cmd.env("GPU_MODEL", "NVIDIA A100")
            .env("GPU_VRAM_GB", "40")
            .env("INSTALLED_SOFTWARE", r#"{"ffmpeg": "6.1"}"#);
        if let Some(urls) = urls {
            cmd.env("ORCHESTRATOR_URL", urls);
        }
    })
}

async fn job(stack: &Stack, id: &str) -> Value {
    stack.get(&format!("/api/v1/jobs/{id}")).await.1
}

/// `creator` takes the jobs; the plain worker is already running, and
/// `start_gpu` starts the GPU worker.
async fn gpu_tasks_wait_for_the_gpu_worker(creator: &Stack, start_gpu: impl FnOnce()) {
    let gpu_jobs: Vec<String> = {
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(
                creator
                    .create("/jobs/gpu_echo", json!({"message": format!("gpu{n}")}))
                    .await,
            );
        }
        ids
    };
    // Plain jobs go past them to the worker without a GPU.
    for n in 0..20 {
        let id = creator
            .create("/jobs/test", echo_body(&format!("plain{n}"), 1))
            .await;
        let done = creator.finished(&id).await;
        assert_eq!(done["status"], "finished", "{done}");
        assert_eq!(done["task_worker_id"], WORKER_ID);
    }
    let waiting = job(creator, &gpu_jobs[0]).await;
    assert_eq!(waiting["status"], "waiting_for_worker", "{waiting}");
    let why = waiting["waiting_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("no registered worker meets what task")
            && why.contains(&format!(
                "{WORKER_ID}: no device matching required device 1"
            )),
        "{why}"
    );
    start_gpu();
    for id in &gpu_jobs {
        let done = creator.finished(id).await;
        assert_eq!(done["status"], "finished", "{done}");
        assert_eq!(done["task_worker_id"], "gpu-worker", "{done}");
    }
}

#[tokio::test]
async fn a_gpu_task_waits_for_the_worker_declaring_the_gpu_and_goes_to_no_other() {
    let mut stack = Stack::new();
    stack.add_blueprint("gpu_echo", GPU_FLOW);
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.start_worker();
    stack.wait_worker().await;
    let mut gpu = None;
    gpu_tasks_wait_for_the_gpu_worker(&stack, || gpu = Some(gpu_worker(&stack, None))).await;
    // What the GPU worker declared, as the orchestrator shows it.
    let view = stack.worker_view("gpu-worker").await.expect("registered");
    assert_eq!(view["resources"]["devices"][0]["model"], "NVIDIA A100");
    assert_eq!(view["installed_software"]["ffmpeg"], "6.1");
    let mut gpu = gpu.unwrap();
    assert!(!gpu.log_text().contains("panicked"));
    gpu.stop();
    stack.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_the_gpu_worker_on_one_instance_gets_the_gpu_tasks_created_on_the_other() {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    for stack in [&a, &b] {
        stack.add_blueprint("gpu_echo", GPU_FLOW);
    }
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator();
    b.wait_ready().await;
    // The plain worker on A, the GPU worker on B, jobs created through A.
    a.start_worker();
    a.wait_worker().await;
    let b_url = format!("http://localhost:{}", b.port);
    let mut gpu = None;
    gpu_tasks_wait_for_the_gpu_worker(&a, || gpu = Some(gpu_worker(&b, Some(&b_url)))).await;
    wait_until(
        "the GPU worker, seen from A",
        Duration::from_secs(30),
        || async { a.worker_view("gpu-worker").await.is_some() },
    )
    .await;
    gpu.unwrap().stop();
    a.assert_no_panic();
    b.assert_no_panic();
}
