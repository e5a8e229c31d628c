//! Schedules with real processes: an every-second schedule on two
//! instances sharing PostgreSQL starts one job per second; one instance on
//! SQLite stopped for 10 s catches up as its policy says; the API lists,
//! pauses and triggers; a schedules file written for avtomatika loads as
//! it is (and avtomatika's own loader reads the same file); a schedule
//! deployed through one instance's API runs on both and stops when removed.

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
    all_jobs_as(stack, blueprint, CLIENT_TOKEN).await
}

/// The jobs of `blueprint` of the client of `token`.
async fn all_jobs_as(stack: &Stack, blueprint: &str, token: &str) -> Vec<Value> {
    let (status, page) = stack
        .get_as(
            &format!("/api/v1/jobs?limit=1000&blueprint={blueprint}"),
            token,
        )
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

/// Two orchestrators sharing a PostgreSQL database, both with the
/// every-second schedule in their file.
async fn two_with_every_second() -> (Stack, Stack) {
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
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_every_second_schedule_on_two_instances_starts_one_job_per_second() {
    let (a, b) = two_with_every_second().await;
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

/// `PUT /api/v1/schedules/{name}` of `body` as the client of `token`.
async fn put_schedule(stack: &Stack, name: &str, token: &str, body: &str) -> (u16, Value) {
    let path = format!("/api/v1/schedules/{name}");
    send(stack, reqwest::Method::PUT, &path, token, body).await
}

async fn post_as(stack: &Stack, path: &str, token: &str) -> (u16, Value) {
    send(stack, reqwest::Method::POST, path, token, "").await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_deployed_through_the_api_runs_on_two_instances_until_removed() {
    let (a, b) = two_with_every_second().await;
    let text =
        "blueprint = \"ghost_flow\"\ninterval_seconds = 1\ninput_data = { from = \"api\" }\n";
    // Refusals: a client that may not deploy, bad TOML, a file schedule.
    assert_eq!(
        put_schedule(&a, "api_tick", CLIENT_TOKEN, text).await.0,
        403
    );
    let (status, body) = put_schedule(&a, "api_tick", DEPLOY_TOKEN, "interval_seconds = ").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = put_schedule(&a, "tick", DEPLOY_TOKEN, text).await;
    assert_eq!(status, 409, "{body}");
    // Deployed through A; B lists it and both run it, one job a second.
    let (status, body) = put_schedule(&a, "api_tick", DEPLOY_TOKEN, text).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post_as(&a, "/api/v1/schedules/tick/pause", DEPLOY_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    wait_until(
        "B to list the deployed schedule",
        Duration::from_secs(10),
        || async {
            let (_, list) = b.get("/api/v1/schedules").await;
            list["schedules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "api_tick" && s["origin"] == "api")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, body) = send(
        &b,
        reqwest::Method::DELETE,
        "/api/v1/schedules/api_tick",
        DEPLOY_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let from_api = |jobs: Vec<Value>| {
        jobs.into_iter()
            .filter(|j| j["initial_data"]["from"] == "api")
            .collect::<Vec<_>>()
    };
    // Its jobs belong to the client that deployed it (it names none).
    let jobs = from_api(all_jobs_as(&a, "ghost_flow", DEPLOY_TOKEN).await);
    let per_second = seconds(&jobs);
    assert!(per_second.iter().all(|(_, n)| *n == 1), "{per_second:?}");
    assert!(jobs.len() >= 4, "{} jobs in ~6 s", jobs.len());
    // Removed: neither instance starts more, and it is gone from the list.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        from_api(all_jobs_as(&b, "ghost_flow", DEPLOY_TOKEN).await).len(),
        jobs.len()
    );
    let (_, list) = a.get("/api/v1/schedules").await;
    assert!(
        list["schedules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["name"] != "api_tick"),
        "{list}"
    );
    let (status, _) = send(
        &a,
        reqwest::Method::DELETE,
        "/api/v1/schedules/api_tick",
        DEPLOY_TOKEN,
        "",
    )
    .await;
    assert_eq!(status, 404);
    a.assert_no_panic();
    b.assert_no_panic();
}
