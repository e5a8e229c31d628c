//! Schedules on both backends, with the time set by the test: each slot
//! starts one job however many instances tick, missed slots follow the
//! catch-up policy, a running job the overlap policy, and a pause holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use common::*;
use orchestrator::engine::Engine;
use orchestrator::job::JobStatus;
use orchestrator::schedule::{Scheduler, model};
use orchestrator::storage::JobFilter;

/// `flow` dispatches a task nobody serves: its jobs stay running.
const FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "nobody"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

fn schedules(extra: &str) -> Vec<model::Schedule> {
    let text = format!(
        "[every]\nblueprint = \"flow\"\ninterval_seconds = 1\ninput_data = {{ n = 1 }}\n{extra}"
    );
    model::parse("s.toml", &text, chrono_tz::Tz::UTC, "default").unwrap()
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_900_000_000 + secs, 0).unwrap()
}

async fn jobs(engine: &Engine) -> Vec<orchestrator::job::Job> {
    engine.sync_storage().await;
    engine
        .list_jobs(JobFilter {
            owner: Some("default".into()),
            limit: 1000,
            ..JobFilter::default()
        })
        .await
        .unwrap()
}

/// Two schedulers (two instances on PostgreSQL; two on one engine in
/// memory) ticking the same times.
async fn pair(h: Holder, extra: &str) -> (Held, Arc<Scheduler>, Arc<Scheduler>) {
    let first = h.engine(FLOW).await;
    let other = match h {
        Holder::Postgres => Holder::second(&first, FLOW).await,
        Holder::Memory => (*first).clone(),
    };
    let a = Scheduler::new((*first).clone(), schedules(extra), chrono_tz::Tz::UTC);
    let b = Scheduler::new(other, schedules(extra), chrono_tz::Tz::UTC);
    (first, a, b)
}

on_both!(each_slot_starts_one_job_however_many_instances_tick);
async fn each_slot_starts_one_job_however_many_instances_tick(h: Holder) {
    let (engine, a, b) = pair(h, "").await;
    a.tick(t(0)).await.unwrap();
    for ms in (250..=20_000).step_by(250) {
        let now = t(0) + Duration::milliseconds(ms);
        let (x, y) = tokio::join!(a.tick(now), b.tick(now));
        x.unwrap();
        y.unwrap();
    }
    let jobs = jobs(&engine).await;
    assert_eq!(jobs.len(), 20, "one job per second for 20 s");
    assert!(jobs.iter().all(|j| j.initial_data["n"] == 1));
    let views = a.views().await.unwrap();
    assert_eq!(views[0].last_slot, Some(t(20)));
}

on_both!(missed_slots_follow_the_catch_up_policy);
async fn missed_slots_follow_the_catch_up_policy(h: Holder) {
    for (policy, expected) in [("none", 1), ("last", 1), ("all", 10)] {
        let (engine, a, _) = pair(h, &format!("catch_up = \"{policy}\"\n")).await;
        a.tick(t(0)).await.unwrap();
        a.tick(t(1)).await.unwrap();
        assert_eq!(jobs(&engine).await.len(), 1, "{policy}");
        // Ten seconds with no orchestrator.
        a.tick(t(11)).await.unwrap();
        assert_eq!(jobs(&engine).await.len(), 1 + expected, "{policy}");
        drop(engine);
    }
}

on_both!(a_running_job_makes_later_slots_skip_or_queue_one_and_a_pause_holds);
async fn a_running_job_makes_later_slots_skip_or_queue_one_and_a_pause_holds(h: Holder) {
    let (engine, a, _) = pair(h, "overlap = \"skip\"\n").await;
    for s in 0..=5 {
        a.tick(t(s)).await.unwrap();
    }
    assert_eq!(
        jobs(&engine).await.len(),
        1,
        "skip: the first job still runs"
    );
    drop(engine);

    let (engine, a, _) = pair(h, "overlap = \"queue_one\"\n").await;
    for s in 0..=5 {
        a.tick(t(s)).await.unwrap();
    }
    let first = jobs(&engine).await;
    assert_eq!(first.len(), 1);
    assert!(a.views().await.unwrap()[0].pending);
    engine.cancel_job(first[0].id, "default").await.unwrap();
    a.tick(t(5) + Duration::milliseconds(500)).await.unwrap();
    let now = jobs(&engine).await;
    assert_eq!(now.len(), 2, "the queued run starts once the first ended");
    assert!(!a.views().await.unwrap()[0].pending);

    // Paused: no runs; resumed: runs again from the next slot.
    a.set_paused("every", true).await.unwrap();
    for s in 6..=9 {
        a.tick(t(s)).await.unwrap();
    }
    assert_eq!(jobs(&engine).await.len(), 2);
    assert!(a.views().await.unwrap()[0].paused);
    a.set_paused("every", false).await.unwrap();
    let running = jobs(&engine).await;
    for j in &running {
        if !j.status.is_terminal() {
            engine.cancel_job(j.id, "default").await.unwrap();
        }
    }
    a.tick(t(10)).await.unwrap();
    let after = jobs(&engine).await;
    assert_eq!(
        after.len(),
        3,
        "{:?}",
        after.iter().map(|j| j.status).collect::<Vec<_>>()
    );
    assert!(
        after
            .iter()
            .any(|j| j.status == JobStatus::WaitingForWorker)
    );
    // By hand, and an unknown name.
    a.trigger("every").await.unwrap();
    assert_eq!(jobs(&engine).await.len(), 4);
    assert!(a.trigger("nope").await.is_err());
}

on_both!(a_deployed_schedule_runs_on_every_instance_until_it_is_removed);
async fn a_deployed_schedule_runs_on_every_instance_until_it_is_removed(h: Holder) {
    let engine = h.engine(FLOW).await;
    let other = match h {
        Holder::Postgres => Holder::second(&engine, FLOW).await,
        Holder::Memory => (*engine).clone(),
    };
    let a = Scheduler::new((*engine).clone(), Vec::new(), chrono_tz::Tz::UTC);
    let b = Scheduler::new(other, Vec::new(), chrono_tz::Tz::UTC);
    let text = "blueprint = \"flow\"\ninterval_seconds = 1\ninput_data = { n = 2 }\n";
    assert!(a.deploy("deployed", text, "default").await.unwrap(), "new");
    // Refused: a bad one, one naming no deployed blueprint, a bad name.
    for (name, bad, why) in [
        ("x", "blueprint = \"flow\"\n", "one of"),
        (
            "x",
            "blueprint = \"nope\"\ninterval_seconds = 1\n",
            "no blueprint named",
        ),
        ("a b", text, "letters, digits"),
    ] {
        let err = a
            .deploy(name, bad, "default")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
    }
    // The other instance reads it at its tick; the two start one job a
    // second between them.
    let (x, y) = tokio::join!(a.tick(t(0)), b.tick(t(0)));
    x.unwrap();
    y.unwrap();
    for ms in (250..=10_000).step_by(250) {
        let now = t(0) + Duration::milliseconds(ms);
        let (x, y) = tokio::join!(a.tick(now), b.tick(now));
        x.unwrap();
        y.unwrap();
    }
    let made = jobs(&engine).await;
    assert_eq!(made.len(), 11, "one a second, from t(0) to t(10)");
    assert!(made.iter().all(|j| j.initial_data["n"] == 2));
    let views = b.views().await.unwrap();
    assert_eq!(
        (views[0].name.as_str(), views[0].origin),
        ("deployed", "api")
    );
    // Replaced: its progress kept, its data new.
    let replaced = text.replace("n = 2", "n = 3");
    assert!(!b.deploy("deployed", &replaced, "default").await.unwrap());
    for s in 11..=12 {
        let (x, y) = tokio::join!(a.tick(t(s)), b.tick(t(s)));
        x.unwrap();
        y.unwrap();
    }
    let made = jobs(&engine).await;
    assert_eq!(made.len(), 13);
    assert_eq!(made.iter().filter(|j| j.initial_data["n"] == 3).count(), 2);
    // Removed through one: neither starts more.
    b.remove("deployed").await.unwrap();
    for s in 13..=15 {
        let (x, y) = tokio::join!(a.tick(t(s)), b.tick(t(s)));
        x.unwrap();
        y.unwrap();
    }
    assert_eq!(jobs(&engine).await.len(), 13);
    assert!(a.views().await.unwrap().is_empty());
    assert!(a.remove("deployed").await.is_err(), "gone");
}
