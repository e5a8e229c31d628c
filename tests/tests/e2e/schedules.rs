//! Schedules with real processes: an every-second schedule on two
//! instances sharing PostgreSQL starts one job per second; one instance on
//! SQLite stopped for 10 s catches up as its policy says; the API lists,
//! pauses and triggers; a schedules file written for avtomatika loads as
//! it is (and avtomatika's own loader reads the same file).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

/// Seconds (Unix) in which jobs were created, with how many each.
fn seconds(jobs: &[Value]) -> Vec<(i64, usize)> {
    let mut by: std::collections::BTreeMap<i64, usize> = Default::default();
    for j in jobs {
        let at = chrono::DateTime::parse_from_rfc3339(j["created_at"].as_str().unwrap()).unwrap();
        *by.entry(at.timestamp()).or_default() += 1;
    }
    by.into_iter().collect()
}

async fn all_jobs(stack: &Stack, blueprint: &str) -> Vec<Value> {
    let (status, page) = stack
        .get(&format!("/api/v1/jobs?limit=1000&blueprint={blueprint}"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["jobs"].as_array().unwrap().clone()
}

fn write_schedules(stack: &Stack, text: &str) -> std::path::PathBuf {
    let path = stack.dir.path().join("schedules.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const EVERY_SECOND: &str = r#"
[tick]
blueprint = "ghost_flow"
interval_seconds = 1
input_data = { from = "schedule" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_schedule_on_two_instances_starts_one_job_per_second() {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    let file = write_schedules(&a, EVERY_SECOND);
    for stack in [&mut a, &mut b] {
        let file = file.clone();
        stack.start_orchestrator_with(move |cmd| {
            cmd.arg("--schedules").arg(&file);
        });
        stack.wait_ready().await;
    }
    tokio::time::sleep(Duration::from_secs(21)).await;
    // Paused through one instance: the other stops too.
    let (status, body) = post_as(&b, "/api/v1/schedules/tick/pause", DEPLOY_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs = all_jobs(&a, "ghost_flow").await;
    let per_second = seconds(&jobs);
    assert!(per_second.iter().all(|(_, n)| *n == 1), "{per_second:?}");
    let (first, last) = (per_second[0].0, per_second.last().unwrap().0);
    assert_eq!(
        per_second.len() as i64,
        last - first + 1,
        "a second without its job: {per_second:?}"
    );
    assert!(jobs.len() >= 19, "{} jobs in ~21 s", jobs.len());
    assert!(jobs.iter().all(|j| j["initial_data"]["from"] == "schedule"));
    // Paused: nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(all_jobs(&b, "ghost_flow").await.len(), jobs.len());
    let (_, list) = a.get("/api/v1/schedules").await;
    assert_eq!(list["schedules"][0]["paused"], true, "{list}");
    a.assert_no_panic();
    b.assert_no_panic();
}

async fn post_as(stack: &Stack, path: &str, token: &str) -> (u16, Value) {
    let resp = stack
        .http
        .post(format!("{}{path}", stack.base))
        .header("X-Client-Token", token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_stopped_orchestrator_catches_up_as_its_schedule_says_and_the_api_steers_it() {
    let mut stack = Stack::new();
    let file = write_schedules(
        &stack,
        &EVERY_SECOND.replace(
            "input_data",
            "catch_up = \"all\"\ncatch_up_limit = 30\ninput_data",
        ),
    );
    let start = |stack: &mut Stack| {
        let file = file.clone();
        stack.start_orchestrator_with(move |cmd| {
            cmd.arg("--schedules").arg(&file);
        });
    };
    start(&mut stack);
    stack.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.orchestrator.as_mut().unwrap().stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    start(&mut stack);
    stack.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let jobs = all_jobs(&stack, "ghost_flow").await;
    // The missed seconds' jobs were made after the restart, one per slot:
    // as many jobs as seconds from the first slot to the last.
    let slots: BTreeSet<i64> = jobs
        .iter()
        .map(|j| j["created_at"].as_str().unwrap().to_string())
        .map(|at| {
            chrono::DateTime::parse_from_rfc3339(&at)
                .unwrap()
                .timestamp()
        })
        .collect();
    let span = slots.last().unwrap() - slots.first().unwrap();
    assert!(
        jobs.len() as i64 >= span,
        "{} jobs over {span} s",
        jobs.len()
    );
    assert!(jobs.len() >= 14, "{} jobs", jobs.len());

    // The API: listed with its next runs; pause needs a deployer; trigger.
    let (_, list) = stack.get("/api/v1/schedules").await;
    let tick = &list["schedules"][0];
    assert_eq!(tick["name"], "tick");
    assert_eq!(tick["when"], "every 1 s");
    assert_eq!(tick["catch_up"], "all");
    assert_eq!(tick["next_runs"].as_array().unwrap().len(), 3);
    let (status, body) = post_as(&stack, "/api/v1/schedules/tick/pause", CLIENT_TOKEN).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = post_as(&stack, "/api/v1/schedules/nope/pause", DEPLOY_TOKEN).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post_as(&stack, "/api/v1/schedules/tick/pause", DEPLOY_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_as(&stack, "/api/v1/schedules/tick/trigger", DEPLOY_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let id = body["job_id"].as_str().unwrap();
    let (status, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
    assert_eq!(
        (status, job["blueprint"].as_str()),
        (200, Some("ghost_flow"))
    );
    stack.assert_no_panic();
}

#[tokio::test]
async fn a_broken_schedules_file_stops_the_start_naming_the_schedule() {
    let mut stack = Stack::new();
    let file = write_schedules(
        &stack,
        "[bad]\nblueprint = \"ghost_flow\"\ndaily_at = \"26:00\"\n",
    );
    stack.start_orchestrator_with(move |cmd| {
        cmd.arg("--schedules").arg(&file);
    });
    let proc = stack.orchestrator.as_mut().unwrap();
    for _ in 0..200 {
        if !proc.is_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !proc.is_running(),
        "the orchestrator started with a broken schedules file"
    );
    let log = proc.log_text();
    assert!(
        log.contains("schedule `bad`: \"26:00\" is not a time of day (HH:MM)"),
        "{log}"
    );
}
