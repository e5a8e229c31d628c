//! The job state machine: retries with backoff, quarantine, timeouts, lease
//! expiry, fan-out/fan-in, conditions, custom statuses. Each test runs on
//! both backends ([`on_both!`]): one instance in memory under paused tokio
//! time, and the shared-database backend on PostgreSQL in real time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use orchestrator::engine::{Engine, EngineSettings};
use orchestrator::job::JobStatus;
use serde_json::json;

const ECHO_FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.params.message = "initial.message | default('hi')"
dispatch.params.n = "initial.n | default(2)"
dispatch.on = { success = "done", failure = "failed", needs_review = "review" }
dispatch.retry = { max_attempts = 3, initial_backoff_ms = 1000, max_backoff_ms = 10000 }
[states.review]
end = "finished"
[states.done]
end = "finished"
[states.failed]
end = "failed"
"#;

on_both!(params_are_built_with_types_and_defaults_and_the_result_finishes_the_job);
async fn params_are_built_with_types_and_defaults_and_the_result_finishes_the_job(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({"message": "yo"})).await;
    let task = poll(&engine, "w1").await.unwrap();
    assert_eq!(task.job_id, id.to_string());
    assert!(task.task_id.starts_with("task-"));
    assert_eq!(
        serde_json::Value::Object(task.params.clone()),
        json!({"message": "yo", "n": 2})
    );
    let r = engine
        .submit_result("w1", success(&task, "success", json!({"out": "yo yo"})))
        .await
        .unwrap();
    assert_eq!(r.status, "accepted");
    let job = job(&engine, id).await;
    assert_eq!(job.status, JobStatus::Finished);
    assert_eq!(job.current_state, "done");
    assert_eq!(job.result.unwrap()["out"], "yo yo");
    assert_eq!(job.task_worker_id.as_deref(), Some("w1"));
}

on_both!(transient_failures_retry_with_exponential_backoff_then_take_the_failure_path);
async fn transient_failures_retry_with_exponential_backoff_then_take_the_failure_path(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let first = poll(&engine, "w1").await.unwrap();
    engine
        .submit_result("w1", failure(&first, "TRANSIENT_ERROR", "flaky"))
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::AwaitingRetry);
    // Backoff 1 s: nothing before, the retry after.
    tokio::time::sleep(Duration::from_millis(990)).await;
    assert!(poll(&engine, "w1").await.is_none());
    let second = poll_within(&engine, "w1", Duration::from_secs(1))
        .await
        .expect("retry after 1 s");
    assert_ne!(second.task_id, first.task_id, "a retry gets a new task id");
    engine
        .submit_result("w1", failure(&second, "TIMEOUT_ERROR", "slow"))
        .await
        .unwrap();
    // Backoff doubles: 2 s.
    tokio::time::sleep(Duration::from_millis(1990)).await;
    assert!(poll(&engine, "w1").await.is_none());
    let third = poll_within(&engine, "w1", Duration::from_secs(1))
        .await
        .expect("retry after 2 s");
    let j = job(&engine, id).await;
    assert_eq!(j.tasks[0].attempt, 3);
    engine
        .submit_result("w1", failure(&third, "TRANSIENT_ERROR", "still flaky"))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.current_state, "failed");
    let error = j.error.unwrap();
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("TRANSIENT_ERROR", "still flaky")
    );
    assert_eq!(j.attempts, 3);
    // The stale first task's late result changes nothing.
    let r = engine
        .submit_result("w1", success(&first, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, "ignored");
}

on_both!(
    exhausted_retries_without_a_failure_path_quarantine_and_permanent_errors_quarantine_at_once
);
async fn exhausted_retries_without_a_failure_path_quarantine_and_permanent_errors_quarantine_at_once(
    h: Holder,
) {
    let states = r#"
[states.start]
start = true
dispatch.task = "t"
dispatch.on = { success = "done" }
dispatch.retry = { max_attempts = 2, initial_backoff_ms = 10 }
[states.done]
end = "finished"
"#;
    let engine = h.engine(states).await;
    register(&engine, "w", &["t"]).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "w").await.unwrap();
    engine
        .submit_result("w", failure(&t, "TRANSIENT_ERROR", "boom"))
        .await
        .unwrap();
    let t = poll_within(&engine, "w", Duration::from_secs(1))
        .await
        .unwrap();
    engine
        .submit_result("w", failure(&t, "TRANSIENT_ERROR", "boom"))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Quarantined);
    assert!(
        j.error
            .unwrap()
            .message
            .contains("gave up after 2 attempts")
    );

    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "w").await.unwrap();
    engine
        .submit_result("w", failure(&t, "PERMANENT_ERROR", "broken"))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Quarantined);
    assert_eq!(j.error.unwrap().code, "PERMANENT_ERROR");
}

on_both!(invalid_input_takes_the_failure_path_without_retrying);
async fn invalid_input_takes_the_failure_path_without_retrying(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register(&engine, "w", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "w").await.unwrap();
    engine
        .submit_result(
            "w",
            failure(&t, "INVALID_INPUT_ERROR", "n must be a number"),
        )
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.current_state, "failed");
    assert_eq!(j.attempts, 1);
}

on_both!(custom_statuses_follow_their_transition_and_unknown_ones_fail_clearly);
async fn custom_statuses_follow_their_transition_and_unknown_ones_fail_clearly(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register(&engine, "w", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "w").await.unwrap();
    engine
        .submit_result("w", success(&t, "needs_review", json!({"score": 3})))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Finished, "review")
    );

    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "w").await.unwrap();
    engine
        .submit_result("w", success(&t, "weird", json!({})))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.code, "UNHANDLED_STATUS");
    assert!(e.message.contains("`weird`"), "{}", e.message);
}

on_both!(a_job_waits_for_a_worker_and_says_why_then_runs_when_one_registers);
async fn a_job_waits_for_a_worker_and_says_why_then_runs_when_one_registers(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    let id = create(&engine, json!({})).await;
    // No dispatch timeout: it waits (10 minutes of paused time).
    tokio::time::sleep(h.pick(Duration::from_secs(600), Duration::from_secs(1))).await;
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::WaitingForWorker);
    assert_eq!(
        engine.waiting_reason(&j).await.unwrap(),
        "no registered worker offers task type echo"
    );
    register(&engine, "w", &["other"]).await;
    assert_eq!(
        engine.waiting_reason(&j).await.unwrap(),
        "no registered worker offers task type echo"
    );
    register(&engine, "w2", &["echo"]).await;
    let t = poll(&engine, "w2").await.unwrap();
    engine
        .submit_result("w2", success(&t, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::Finished);
}

on_both!(the_dispatch_timeout_fails_a_job_nobody_picks_up);
async fn the_dispatch_timeout_fails_a_job_nobody_picks_up(h: Holder) {
    let states = r#"
[states.start]
start = true
dispatch.task = "nobody"
dispatch.dispatch_timeout = 5
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;
    let engine = h.engine(states).await;
    let id = create(&engine, json!({})).await;
    tokio::time::sleep(Duration::from_millis(4900)).await;
    assert_eq!(job(&engine, id).await.status, JobStatus::WaitingForWorker);
    let j = job_reaches(&engine, id, JobStatus::Failed, Duration::from_secs(1)).await;
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.code, "DISPATCH_TIMEOUT");
    assert!(
        e.message.contains("(nobody) before its dispatch timeout"),
        "{}",
        e.message
    );
}

on_both!(the_result_timeout_counts_as_a_transient_failure);
async fn the_result_timeout_counts_as_a_transient_failure(h: Holder) {
    let states = r#"
[states.start]
start = true
dispatch.task = "t"
dispatch.result_timeout = 3
dispatch.retry = { max_attempts = 2, initial_backoff_ms = 100 }
dispatch.on = { success = "done", failure = "failed" }
[states.done]
end = "finished"
[states.failed]
end = "failed"
"#;
    let engine = h.engine(states).await;
    register(&engine, "w", &["t"]).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "w").await.unwrap();
    assert!(
        t.deadline.as_ref().unwrap().is_i64(),
        "deadline is an integer"
    );
    tokio::time::sleep(Duration::from_millis(2950)).await;
    assert_eq!(job(&engine, id).await.status, JobStatus::WaitingForWorker);
    let j = job_reaches(
        &engine,
        id,
        JobStatus::AwaitingRetry,
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(j.status, JobStatus::AwaitingRetry);
    let t2 = poll_within(&engine, "w", Duration::from_secs(1))
        .await
        .expect("retried");
    // The late answer to the first attempt is stale.
    assert_eq!(
        engine
            .submit_result("w", success(&t, "success", json!({})))
            .await
            .unwrap()
            .reason
            .as_deref(),
        Some("stale_task")
    );
    engine
        .submit_result("w", success(&t2, "success", json!({"ok": true})))
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::Finished);
}

on_both!(a_silent_worker_loses_its_lease_and_the_task_goes_to_another);
async fn a_silent_worker_loses_its_lease_and_the_task_goes_to_another(h: Holder) {
    let settings = EngineSettings {
        worker_ttl: Duration::from_secs(3),
        sweep_interval: Duration::from_secs(1),
        ..EngineSettings::default()
    };
    let engine = h.engine_with(ECHO_FLOW, settings).await;
    register(&engine, "dies", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let lost = poll(&engine, "dies").await.unwrap();
    register(&engine, "lives", &["echo"]).await;
    // "lives" keeps heartbeating; "dies" does not.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        engine.heartbeat("lives", None).await.unwrap().unwrap();
    }
    assert!(
        eventually(Duration::from_secs(1), async || !registered(
            &engine, "dies"
        )
        .await)
        .await,
        "dropped after its time to live"
    );
    assert!(registered(&engine, "lives").await);
    let again = poll_within(&engine, "lives", Duration::from_secs(1))
        .await
        .expect("requeued");
    assert_eq!(again.job_id, lost.job_id);
    assert_ne!(again.task_id, lost.task_id);
    let r = engine
        .submit_result("dies", success(&lost, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, "ignored");
    engine
        .submit_result("lives", success(&again, "success", json!({})))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Finished);
    assert_eq!(j.task_worker_id.as_deref(), Some("lives"));
}

on_both!(only_the_assigned_worker_may_complete_a_task);
async fn only_the_assigned_worker_may_complete_a_task(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register(&engine, "a", &["echo"]).await;
    register(&engine, "b", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "a").await.unwrap();
    let r = engine
        .submit_result("b", success(&t, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_str(), r.reason.as_deref()),
        ("ignored", Some("worker_mismatch"))
    );
    assert_eq!(job(&engine, id).await.status, JobStatus::WaitingForWorker);
}

on_both!(cancelled_jobs_ignore_late_results);
async fn cancelled_jobs_ignore_late_results(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register(&engine, "a", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "a").await.unwrap();
    engine.cancel_job(id, "default").await.unwrap();
    let r = engine
        .submit_result("a", success(&t, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(r.reason.as_deref(), Some("job_cancelled"));
    assert_eq!(job(&engine, id).await.status, JobStatus::Cancelled);
    let hb: rxon::Heartbeat = serde_json::from_value(
        json!({"worker_id": "a", "status": "busy", "current_tasks": [t.task_id]}),
    )
    .unwrap();
    let resp = engine.heartbeat("a", Some(&hb)).await.unwrap().unwrap();
    assert_eq!(resp.cancel_task_ids, Some(vec![t.task_id.clone()]));
}

on_both!(parallel_branches_fan_out_and_fan_in_then_conditions_choose_the_path);
async fn parallel_branches_fan_out_and_fan_in_then_conditions_choose_the_path(h: Holder) {
    let states = r#"
[states.start]
start = true
parallel.next = "check"
parallel.on_failure = "failed"
parallel.branches.left = { task = "l", params = { x = "initial.x" } }
parallel.branches.right = { task = "r", params = { y = 5 } }
[states.check]
goto = [{ when = "results.start.left.v + results.start.right.v > 10", to = "big" }, { to = "small" }]
[states.big]
end = "finished"
[states.small]
end = "finished"
[states.failed]
end = "failed"
"#;
    let engine = h.engine(states).await;
    register(&engine, "wl", &["l"]).await;
    register(&engine, "wr", &["r"]).await;
    for (x, expected) in [(3, "small"), (30, "big")] {
        let id = create(&engine, json!({"x": x})).await;
        assert_eq!(
            job(&engine, id).await.status,
            JobStatus::WaitingForParallelTasks
        );
        let l = poll(&engine, "wl").await.unwrap();
        let r = poll(&engine, "wr").await.unwrap();
        assert_eq!(l.params["x"], x);
        assert_eq!(r.params["y"], 5);
        let resp = engine
            .submit_result("wl", success(&l, "success", json!({"v": x})))
            .await
            .unwrap();
        assert_eq!(resp.transition.as_deref(), Some("parallel_branch_accepted"));
        assert_eq!(
            job(&engine, id).await.status,
            JobStatus::WaitingForParallelTasks
        );
        engine
            .submit_result("wr", success(&r, "success", json!({"v": 5})))
            .await
            .unwrap();
        let j = job(&engine, id).await;
        assert_eq!(
            (j.status, j.current_state.as_str()),
            (JobStatus::Finished, expected)
        );
        assert_eq!(
            j.results["start"],
            json!({"left": {"v": x}, "right": {"v": 5}})
        );
    }
}

on_both!(ended_jobs_leave_memory_but_stay_readable_from_storage);
async fn ended_jobs_leave_memory_but_stay_readable_from_storage(h: Holder) {
    let settings = EngineSettings {
        finished_jobs_in_memory: 2,
        ..EngineSettings::default()
    };
    let engine = h.engine_with(ECHO_FLOW, settings).await;
    register(&engine, "w", &["echo"]).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let id = create(&engine, json!({"n": n})).await;
        let t = poll(&engine, "w").await.unwrap();
        engine
            .submit_result("w", success(&t, "success", json!({"n": n})))
            .await
            .unwrap();
        ids.push(id);
    }
    let in_memory: Vec<bool> = ids
        .iter()
        .map(|id| engine.with_job_in_memory(*id, |_, _| ()).is_some())
        .collect();
    // A shared database holds no job in memory: every read goes to it.
    let expected = match h {
        Holder::Memory => [false, false, false, true, true],
        Holder::Postgres => [false; 5],
    };
    assert_eq!(
        in_memory, expected,
        "only the 2 newest ended jobs stay in memory"
    );
    engine.sync_storage().await;
    for (n, id) in ids.iter().enumerate() {
        let j = job(&engine, *id).await;
        assert_eq!(j.status, JobStatus::Finished);
        assert_eq!(j.result.unwrap()["n"], n);
    }
}

async fn register_instance(engine: &Engine, worker: &str, instance: &str, interval_secs: f64) {
    let reg: rxon::WorkerRegistration = serde_json::from_value(json!({
        "worker_id": worker,
        "worker_type": "test",
        "supported_skills": [{"name": "echo"}],
        "metadata": {"instance_id": instance, "heartbeat_interval_seconds": interval_secs},
    }))
    .unwrap();
    engine.register_worker(&reg).await.unwrap();
}

async fn heartbeat(
    engine: &Engine,
    worker: &str,
    status: &str,
    tasks: &[&str],
) -> rxon::HeartbeatResponse {
    let hb: rxon::Heartbeat = serde_json::from_value(
        json!({"worker_id": worker, "status": status, "current_tasks": tasks}),
    )
    .unwrap();
    engine.heartbeat(worker, Some(&hb)).await.unwrap().unwrap()
}

on_both!(a_cancelled_jobs_queued_task_is_never_handed_out);
async fn a_cancelled_jobs_queued_task_is_never_handed_out(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    let id = create(&engine, json!({})).await;
    engine.cancel_job(id, "default").await.unwrap();
    register(&engine, "a", &["echo"]).await;
    assert!(poll(&engine, "a").await.is_none());
    assert_eq!(job(&engine, id).await.status, JobStatus::Cancelled);
}

on_both!(a_new_instance_of_a_worker_gets_none_of_the_old_ones_tasks);
async fn a_new_instance_of_a_worker_gets_none_of_the_old_ones_tasks(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register_instance(&engine, "w", "first", 15.0).await;
    let id = create(&engine, json!({})).await;
    let old = poll(&engine, "w").await.unwrap();
    // The same id, a new process: the task goes back to the queue at once.
    register_instance(&engine, "w", "second", 15.0).await;
    let again = poll(&engine, "w").await.unwrap();
    assert_ne!(again.task_id, old.task_id);
    let r = engine
        .submit_result("w", success(&old, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(r.reason.as_deref(), Some("stale_task"));
    engine
        .submit_result("w", success(&again, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::Finished);
    // Re-registering as the same instance (a plugin reload) keeps its tasks.
    let id2 = create(&engine, json!({})).await;
    let held = poll(&engine, "w").await.unwrap();
    register_instance(&engine, "w", "second", 15.0).await;
    assert!(poll(&engine, "w").await.is_none());
    engine
        .submit_result("w", success(&held, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(job(&engine, id2).await.status, JobStatus::Finished);
}

on_both!(
    a_task_the_worker_stops_listing_is_a_failed_attempt_after_the_grace_and_requeued_on_goodbye
);
async fn a_task_the_worker_stops_listing_is_a_failed_attempt_after_the_grace_and_requeued_on_goodbye(
    h: Holder,
) {
    let settings = EngineSettings {
        unlisted_task_grace: Duration::from_secs(1),
        ..EngineSettings::default()
    };
    let engine = h.engine_with(ECHO_FLOW, settings).await;
    register_instance(&engine, "w", "i", 1.0).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "w").await.unwrap();
    // Just handed out: not listed yet is fine.
    heartbeat(&engine, "w", "busy", &[]).await;
    assert!(poll(&engine, "w").await.is_none());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Past the grace, a task it does not list (it could not read it, or its
    // result was lost) is a failed attempt: retried after the backoff (1 s).
    heartbeat(&engine, "w", "idle", &[]).await;
    assert_eq!(job(&engine, id).await.status, JobStatus::AwaitingRetry);
    assert!(poll(&engine, "w").await.is_none());
    let again = poll_within(&engine, "w", Duration::from_secs(2))
        .await
        .unwrap();
    assert_ne!(again.task_id, t.task_id);
    assert_eq!(job(&engine, id).await.tasks[0].attempt, 2);
    // A goodbye returns what it does not list at once; nothing more is handed out.
    create(&engine, json!({})).await;
    heartbeat(&engine, "w", "offline", &[]).await;
    assert!(poll(&engine, "w").await.is_none());
    register(&engine, "other", &["echo"]).await;
    assert!(poll(&engine, "other").await.is_some());
    assert!(poll(&engine, "other").await.is_some());
}

on_both!(a_worker_declaring_its_heartbeat_interval_is_dropped_after_two_of_them);
async fn a_worker_declaring_its_heartbeat_interval_is_dropped_after_two_of_them(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register_instance(&engine, "w", "i", 0.5).await;
    create(&engine, json!({})).await;
    poll(&engine, "w").await.unwrap();
    // 2 × 0.5 s + 5 s = 6 s; checked every second.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert!(registered(&engine, "w").await);
    assert!(
        eventually(Duration::from_secs(2), async || !registered(&engine, "w")
            .await)
        .await,
        "dropped after two intervals and the margin"
    );
    register(&engine, "other", &["echo"]).await;
    assert!(poll(&engine, "other").await.is_some());
}

on_both!(a_task_without_a_result_timeout_still_has_a_lease);
async fn a_task_without_a_result_timeout_still_has_a_lease(h: Holder) {
    let settings = EngineSettings {
        default_result_timeout: Duration::from_secs(2),
        worker_ttl: Duration::from_secs(3600),
        ..EngineSettings::default()
    };
    let engine = h.engine_with(ECHO_FLOW, settings).await;
    register(&engine, "a", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let t = poll(&engine, "a").await.unwrap();
    assert!(
        t.deadline.is_none(),
        "no deadline is sent for the default lease"
    );
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert!(job(&engine, id).await.tasks[0].last_error.is_none());
    let j = job_reaches(
        &engine,
        id,
        JobStatus::AwaitingRetry,
        Duration::from_secs(1),
    )
    .await;
    let last = j.tasks[0].last_error.clone().unwrap();
    assert_eq!(last.code, "TIMEOUT_ERROR", "{j:?}");
}

on_both!(a_worker_whose_channel_closed_is_gone_after_the_grace_unless_heard_from);
async fn a_worker_whose_channel_closed_is_gone_after_the_grace_unless_heard_from(h: Holder) {
    let settings = EngineSettings {
        channel_grace: Duration::from_secs(1),
        ..EngineSettings::default()
    };
    let engine = h.engine_with(ECHO_FLOW, settings).await;
    register(&engine, "w1", &["echo"]).await;
    register(&engine, "w2", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let first = poll(&engine, "w1").await.unwrap();
    // Back within the grace (a reconnect): it keeps its task.
    engine.channel_lost("w1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine.heartbeat("w1", None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        poll(&engine, "w2").await.is_none(),
        "the task stayed with w1"
    );
    // Not back: its task goes to w2 after the grace (and the sweep), long
    // before its 35 s liveness.
    engine.channel_lost("w1").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(poll(&engine, "w2").await.is_none(), "not before the grace");
    let again = poll_within(&engine, "w2", Duration::from_secs(2))
        .await
        .expect("requeued after the grace");
    assert_eq!(again.job_id, id.to_string());
    assert_ne!(again.task_id, first.task_id);
    // A late result from w1 for the old task is not taken.
    let late = engine
        .submit_result("w1", success(&first, "success", json!({})))
        .await;
    assert!(
        late.as_ref().map_or(true, |r| r.status != "accepted"),
        "{late:?}"
    );
    assert_ne!(job(&engine, id).await.status, JobStatus::Finished);
    engine
        .submit_result("w2", success(&again, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::Finished);
}

on_both!(progress_on_a_job_that_ended_is_refused_and_changes_nothing);
async fn progress_on_a_job_that_ended_is_refused_and_changes_nothing(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let task = poll(&engine, "w1").await.unwrap();
    let progress = |n: f64| -> rxon::WorkerEventPayload {
        serde_json::from_value(json!({
            "event_id": format!("e{n}"), "worker_id": "w1", "origin_worker_id": "w1",
            "event_type": "progress", "payload": {"progress": n},
            "target_job_id": id.to_string(), "target_task_id": task.task_id,
        }))
        .unwrap()
    };
    engine.worker_event("w1", &progress(0.5)).await.unwrap();
    engine
        .submit_result("w1", success(&task, "success", json!({})))
        .await
        .unwrap();
    let ended = job(&engine, id).await;
    assert_eq!(ended.status, JobStatus::Finished);
    let refused = engine.worker_event("w1", &progress(0.9)).await;
    assert!(
        matches!(
            refused,
            Err(orchestrator::engine::EngineError::AlreadyEnded(_))
        ),
        "{refused:?}"
    );
    let after = job(&engine, id).await;
    assert_eq!(after.progress, ended.progress);
    assert_eq!(after.version, ended.version);
}

const SLEEP_FLOW: &str = r#"
[states.start]
start = true
sleep = { seconds = "initial.secs", next = "work" }
[states.work]
dispatch.task = "echo"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

const UNTIL_FLOW: &str = r#"
[states.start]
start = true
sleep = { until = "initial.at", next = "done" }
[states.done]
end = "finished"
"#;

on_both!(a_sleep_state_waits_without_a_worker_then_goes_on);
async fn a_sleep_state_waits_without_a_worker_then_goes_on(h: Holder) {
    let engine = h.engine(SLEEP_FLOW).await;
    let id = create(&engine, json!({"secs": 2})).await;
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Sleeping);
    assert!(j.wake_at.is_some());
    let why = engine.waiting_reason(&j).await.unwrap();
    assert!(why.starts_with("sleeping in state start until "), "{why}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(job(&engine, id).await.status, JobStatus::Sleeping);
    let j = job_reaches(
        &engine,
        id,
        JobStatus::WaitingForWorker,
        h.pick(Duration::from_secs(1), Duration::from_secs(3)),
    )
    .await;
    assert_eq!(j.status, JobStatus::WaitingForWorker);
    assert_eq!(j.current_state, "work");
    assert!(j.wake_at.is_none());
    register(&engine, "w", &["echo"]).await;
    let task = poll(&engine, "w").await.unwrap();
    engine
        .submit_result("w", success(&task, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::Finished);
    let history = engine.job_events(id).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.event.as_str()).collect();
    assert!(kinds.contains(&"sleeping"), "{kinds:?}");
    assert!(
        history
            .iter()
            .any(|e| e.event == "transition" && e.message.contains("start → work on woken")),
        "{history:?}"
    );
}

on_both!(a_zero_or_past_sleep_goes_on_at_once_and_a_bad_one_fails_the_job);
async fn a_zero_or_past_sleep_goes_on_at_once_and_a_bad_one_fails_the_job(h: Holder) {
    let engine = h.engine(SLEEP_FLOW).await;
    let now = create(&engine, json!({"secs": 0})).await;
    assert_eq!(job(&engine, now).await.status, JobStatus::WaitingForWorker);
    for (data, message) in [
        (
            json!({"secs": "soon"}),
            "sleep.seconds must give a number of seconds",
        ),
        (
            json!({"secs": -3}),
            "'sleep.seconds' must be a positive number",
        ),
    ] {
        let id = create(&engine, data).await;
        let j = job(&engine, id).await;
        assert_eq!(j.status, JobStatus::Failed);
        let e = j.error.unwrap();
        assert!(e.message.contains(message), "{}", e.message);
    }
    let until = h.engine(UNTIL_FLOW).await;
    let past = create(&until, json!({"at": "2020-01-01T00:00:00Z"})).await;
    assert_eq!(job(&until, past).await.status, JobStatus::Finished);
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let later = create(&until, json!({ "at": soon })).await;
    let j = job(&until, later).await;
    assert_eq!(j.status, JobStatus::Sleeping);
    assert_eq!(j.wake_at.unwrap().to_rfc3339(), soon);
    for (at, message) in [
        ("tomorrow", "is not an RFC 3339 time"),
        ("2999-01-01T00:00:00Z", "more than 30 days away"),
    ] {
        let id = create(&until, json!({ "at": at })).await;
        let e = job(&until, id).await.error.unwrap();
        assert!(e.message.contains(message), "{}", e.message);
    }
}

on_both!(a_cancelled_sleeping_job_stays_cancelled_when_its_time_comes);
async fn a_cancelled_sleeping_job_stays_cancelled_when_its_time_comes(h: Holder) {
    let engine = h.engine(SLEEP_FLOW).await;
    let id = create(&engine, json!({"secs": 1})).await;
    engine.cancel_job(id, "default").await.unwrap();
    tokio::time::sleep(h.pick(Duration::from_secs(2), Duration::from_secs(2))).await;
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::Cancelled);
    assert_eq!(j.current_state, "start");
}

const LOOP_FLOW: &str = r#"
[states.start]
start = true
goto = [{ to = "again" }]
[states.again]
goto = [{ when = "initial.forever", to = "start" }, { to = "work" }]
[states.work]
dispatch.task = "echo"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

on_both!(a_jobs_own_options_bound_its_transitions_and_the_skills_it_may_dispatch);
async fn a_jobs_own_options_bound_its_transitions_and_the_skills_it_may_dispatch(h: Holder) {
    let engine = h.engine(LOOP_FLOW).await;
    // A loop stops at the job's own bound, below the engine's.
    let looping = try_create(
        &engine,
        json!({"forever": true}),
        json!({"max_transitions": 5}),
    )
    .await
    .unwrap();
    let j = job(&engine, looping).await;
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.unwrap();
    assert!(
        e.message.contains("more than 5 transitions"),
        "{}",
        e.message
    );
    // A skill outside the job's policy fails it at dispatch, naming both.
    let barred = try_create(
        &engine,
        json!({}),
        json!({"policy": {"allowed_skills": ["other"]}}),
    )
    .await
    .unwrap();
    let e = job(&engine, barred).await.error.unwrap();
    assert_eq!(e.code, "POLICY_VIOLATION");
    assert!(
        e.message.contains("state work dispatches task type echo") && e.message.contains("other"),
        "{}",
        e.message
    );
    // An allowed one runs, and its payload carries the job's options.
    let allowed = try_create(
        &engine,
        json!({}),
        json!({"policy": {"allowed_skills": ["echo"]}, "metadata": {"k": 1}}),
    )
    .await
    .unwrap();
    register(&engine, "w", &["echo"]).await;
    let task = poll(&engine, "w").await.unwrap();
    assert_eq!(task.job_id, allowed.to_string());
    assert_eq!(
        serde_json::Value::Object(task.metadata.unwrap()),
        json!({"k": 1})
    );
    assert_eq!(
        serde_json::Value::Object(task.policy.unwrap()),
        json!({"allowed_skills": ["echo"]})
    );
}

const CONTRACT_FLOW: &str = r#"
[input_schema]
type = "object"
required = ["n"]
properties.n = { type = "integer", minimum = 1 }

[output_schema]
type = "object"
required = ["total"]

[states.start]
start = true
dispatch.task = "echo"
dispatch.params.n = "initial.n"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

on_both!(a_blueprints_input_and_output_schemas_are_its_contract);
async fn a_blueprints_input_and_output_schemas_are_its_contract(h: Holder) {
    let engine = h.engine(CONTRACT_FLOW).await;
    // Bad input: refused at create, naming the place; nothing is created.
    for (data, place) in [
        (json!({}), "(root)"),
        (json!({"n": 0}), "/n"),
        (json!({"n": "three"}), "/n"),
    ] {
        let e = try_create(&engine, data, json!({}))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Input validation failed for blueprint 'flow': ") && e.contains(place),
            "{e}"
        );
    }
    // Good input runs; a result without `total` breaks the output contract.
    register(&engine, "w", &["echo"]).await;
    let bad = create(&engine, json!({"n": 2})).await;
    let task = poll(&engine, "w").await.unwrap();
    engine
        .submit_result("w", success(&task, "success", json!({"sum": 3})))
        .await
        .unwrap();
    let j = job(&engine, bad).await;
    assert_eq!(j.status, JobStatus::Failed);
    let e = j.error.unwrap();
    assert_eq!(e.code, "CONTRACT_VIOLATION_ERROR");
    assert!(
        e.message.contains("output_schema of blueprint flow") && e.message.contains("total"),
        "{}",
        e.message
    );
    let good = create(&engine, json!({"n": 2})).await;
    let task = poll(&engine, "w").await.unwrap();
    engine
        .submit_result("w", success(&task, "success", json!({"total": 3})))
        .await
        .unwrap();
    assert_eq!(job(&engine, good).await.status, JobStatus::Finished);
}

on_both!(params_a_worker_declares_it_cannot_accept_fail_without_reaching_it);
async fn params_a_worker_declares_it_cannot_accept_fail_without_reaching_it(h: Holder) {
    let engine = h.engine(ECHO_FLOW).await;
    let reg: rxon::WorkerRegistration = serde_json::from_value(json!({
        "worker_id": "w",
        "worker_type": "test",
        "supported_skills": [{
            "name": "echo",
            "input_schema": {
                "type": "object",
                "required": ["n"],
                "properties": {"n": {"type": "integer"}, "message": {"type": "string"}}
            }
        }],
    }))
    .unwrap();
    engine.register_worker(&reg).await.unwrap();
    let bad = create(&engine, json!({"n": "two"})).await;
    let good = create(&engine, json!({"n": 3})).await;
    // The worker is handed the good one; the bad one never reaches it.
    let task = poll(&engine, "w").await.unwrap();
    assert_eq!(task.job_id, good.to_string());
    assert!(poll(&engine, "w").await.is_none());
    let j = job(&engine, bad).await;
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.current_state, "failed");
    engine.sync_storage().await;
    let history = engine.job_events(bad).await.unwrap();
    let failed = history.iter().find(|e| e.event == "task_failed").unwrap();
    assert!(
        failed
            .message
            .contains("failed: INVALID_INPUT_ERROR: the params of task")
            && failed
                .message
                .contains("input schema worker w declares for echo: /n: "),
        "{}",
        failed.message
    );
}

const MAP_FLOW: &str = r#"
[states.each]
start = true
map.over = "initial.words"
map.task = "echo"
map.params.word = "item"
map.params.at = "index"
map.params.tag = "initial.tag | default('t')"
map.max_in_flight = 2
map.on_item_failure = "continue"
map.next = "check"
[states.check]
goto = [{ when = "results.each.failures | length > 0", to = "partial" }, { to = "done" }]
[states.done]
end = "finished"
[states.partial]
end = "finished"
"#;

on_both!(a_map_runs_one_task_per_element_at_most_max_in_flight_and_keeps_input_order);
async fn a_map_runs_one_task_per_element_at_most_max_in_flight_and_keeps_input_order(h: Holder) {
    let engine = h.engine(MAP_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({"words": ["a", "b", "c", "d", "e"]})).await;
    assert_eq!(
        job(&engine, id).await.status,
        JobStatus::WaitingForParallelTasks
    );
    // Two out at once, no more.
    let first = poll(&engine, "w1").await.unwrap();
    let second = poll(&engine, "w1").await.unwrap();
    assert!(poll(&engine, "w1").await.is_none(), "a third in flight");
    assert_eq!(
        serde_json::Value::Object(first.params.clone()),
        json!({"word": "a", "at": 0, "tag": "t"})
    );
    assert_eq!(second.params["word"], "b");
    // Results out of order still land in input order.
    let r = engine
        .submit_result("w1", success(&second, "success", json!({"up": "B"})))
        .await
        .unwrap();
    assert_eq!(r.transition.as_deref(), Some("map_element_accepted"));
    let mut out = vec![first];
    while let Some(task) = out.pop() {
        let word = task.params["word"].as_str().unwrap().to_uppercase();
        engine
            .submit_result("w1", success(&task, "success", json!({"up": word})))
            .await
            .unwrap();
        out.extend(poll(&engine, "w1").await);
        out.extend(poll(&engine, "w1").await);
        assert!(out.len() <= 2, "more than max_in_flight out");
    }
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Finished, "done")
    );
    let ups: Vec<_> = ["A", "B", "C", "D", "E"]
        .iter()
        .map(|u| json!({"up": u}))
        .collect();
    assert_eq!(j.results["each"], json!({"items": ups, "failures": []}));
    assert!(j.map.is_none() && j.tasks.is_empty());
}

on_both!(a_map_that_continues_lists_its_failed_elements);
async fn a_map_that_continues_lists_its_failed_elements(h: Holder) {
    let engine = h.engine(MAP_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({"words": ["ok", "bad", "ok2"]})).await;
    let a = poll(&engine, "w1").await.unwrap();
    let b = poll(&engine, "w1").await.unwrap();
    engine
        .submit_result("w1", failure(&b, "INVALID_INPUT_ERROR", "not a word"))
        .await
        .unwrap();
    engine
        .submit_result("w1", success(&a, "success", json!({"n": 0})))
        .await
        .unwrap();
    let c = poll(&engine, "w1").await.unwrap();
    assert_eq!(c.params["at"], 2);
    engine
        .submit_result("w1", success(&c, "success", json!({"n": 2})))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Finished, "partial")
    );
    assert_eq!(
        j.results["each"],
        json!({"items": [{"n": 0}, null, {"n": 2}],
               "failures": [{"index": 1, "code": "INVALID_INPUT_ERROR", "message": "not a word"}]})
    );
}

on_both!(a_fail_fast_map_stops_at_the_first_element_that_fails_for_good);
async fn a_fail_fast_map_stops_at_the_first_element_that_fails_for_good(h: Holder) {
    let fail_fast = MAP_FLOW
        .replace(
            "map.on_item_failure = \"continue\"",
            "map.on_failure = \"stopped\"",
        )
        .replace(
            "[states.done]",
            "[states.stopped]\nend = \"failed\"\n[states.done]",
        );
    let engine = h.engine(&fail_fast).await;
    register(&engine, "w2", &["echo"]).await;
    let id = create(&engine, json!({"words": ["x", "y", "z"]})).await;
    let x = poll(&engine, "w2").await.unwrap();
    let _y = poll(&engine, "w2").await.unwrap();
    engine
        .submit_result("w2", failure(&x, "INVALID_INPUT_ERROR", "no x"))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Failed, "stopped")
    );
    assert!(
        poll(&engine, "w2").await.is_none(),
        "z dispatched after the failure"
    );
}

on_both!(a_map_over_nothing_goes_on_and_a_bad_or_long_list_fails_clearly);
async fn a_map_over_nothing_goes_on_and_a_bad_or_long_list_fails_clearly(h: Holder) {
    let settings = EngineSettings {
        max_map_items: 3,
        ..EngineSettings::default()
    };
    let engine = h.engine_with(MAP_FLOW, settings).await;
    let empty = create(&engine, json!({"words": []})).await;
    let j = job(&engine, empty).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Finished, "done")
    );
    assert_eq!(j.results["each"], json!({"items": [], "failures": []}));

    let not_list = create(&engine, json!({"words": "abc"})).await;
    let e = job(&engine, not_list).await.error.unwrap();
    assert_eq!(e.code, "BLUEPRINT_ERROR");
    assert!(e.message.contains("must give a list"), "{}", e.message);

    let long = create(&engine, json!({"words": [1, 2, 3, 4]})).await;
    let e = job(&engine, long).await.error.unwrap();
    assert_eq!(e.code, "MAP_LIMIT_EXCEEDED");
    assert!(
        e.message.contains("4 elements") && e.message.contains("max_map_items"),
        "{}",
        e.message
    );
}

const EVENT_FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.on = { success = "slow" }
dispatch.events = { ready = "early" }
[states.early]
goto = [{ when = "results.start.score > 5", to = "high" }, { to = "low" }]
[states.high]
end = "finished"
[states.low]
end = "finished"
[states.slow]
end = "finished"
"#;

fn worker_event(
    id: uuid::Uuid,
    task_id: &str,
    kind: &str,
    payload: serde_json::Value,
) -> rxon::WorkerEventPayload {
    serde_json::from_value(json!({
        "event_id": uuid::Uuid::new_v4().to_string(), "worker_id": "w1", "origin_worker_id": "w1",
        "event_type": kind, "payload": payload,
        "target_job_id": id.to_string(), "target_task_id": task_id,
    }))
    .unwrap()
}

on_both!(a_mapped_worker_event_moves_the_job_before_its_task_ends);
async fn a_mapped_worker_event_moves_the_job_before_its_task_ends(h: Holder) {
    let engine = h.engine(EVENT_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let task = poll(&engine, "w1").await.unwrap();
    // An event the state does not map is history, nothing more.
    engine
        .worker_event(
            "w1",
            &worker_event(id, &task.task_id, "note", json!({"n": 1})),
        )
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::WaitingForWorker);
    // A mapped event about another task (an old attempt) moves nothing.
    engine
        .worker_event(
            "w1",
            &worker_event(id, "task-old", "ready", json!({"score": 1})),
        )
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::WaitingForWorker);
    // The running task's mapped event moves the job on with its payload.
    engine
        .worker_event(
            "w1",
            &worker_event(id, &task.task_id, "ready", json!({"score": 9})),
        )
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Finished, "high")
    );
    assert_eq!(j.results["start"], json!({"score": 9}));
    assert_eq!(j.state_history[0].outcome.as_deref(), Some("event ready"));
    // The task's own result comes too late.
    let r = engine
        .submit_result("w1", success(&task, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, "ignored");
    engine.sync_storage().await;
    let history = engine.job_events(id).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "worker_event").count(),
        3,
        "{kinds:?}"
    );
    assert!(
        history
            .iter()
            .any(|e| e.event == "worker_event" && e.message.contains("event note")),
        "{history:?}"
    );
    // The worker's slot was given back when the event moved the job.
    assert!(engine.workers().await[0].in_flight_tasks.is_empty());
}

const APPROVAL_FLOW: &str = r#"
[states.review]
start = true
wait = { approval = true, on = { approved = "publish", rejected = "dropped" }, timeout = 3600, on_timeout = "expired" }
[states.publish]
end = "finished"
[states.dropped]
end = "failed"
[states.expired]
end = "failed"
"#;

fn decision(
    id: uuid::Uuid,
    name: &str,
    by: orchestrator::engine::SignalAuth,
    approval: bool,
) -> orchestrator::engine::Signal {
    orchestrator::engine::Signal {
        job: id,
        name: name.into(),
        payload: json!({"decision": name, "by": "ann"})
            .as_object()
            .cloned()
            .unwrap(),
        by,
        approval,
    }
}

on_both!(an_approval_waits_for_a_decision_by_token_or_owner_and_a_used_token_is_refused);
async fn an_approval_waits_for_a_decision_by_token_or_owner_and_a_used_token_is_refused(h: Holder) {
    use orchestrator::engine::{EngineError, SignalAuth};
    let engine = h.engine(APPROVAL_FLOW).await;
    let id = create(&engine, json!({})).await;
    let j = job(&engine, id).await;
    assert_eq!(j.status, JobStatus::WaitingForHuman);
    let token = j.approval_token.clone().expect("an approval token");
    assert!(j.wake_at.is_some());
    // A wrong token, someone else's job, a decision the state does not list.
    let wrong = SignalAuth::ApprovalToken("nope".into());
    assert_eq!(
        engine
            .signal_job(decision(id, "approved", wrong, true))
            .await,
        Err(EngineError::BadApprovalToken)
    );
    let other = SignalAuth::Owner("someone-else".into());
    assert_eq!(
        engine
            .signal_job(decision(id, "approved", other, true))
            .await,
        Err(EngineError::JobNotFound)
    );
    let unknown = engine
        .signal_job(decision(
            id,
            "maybe",
            SignalAuth::ApprovalToken(token.clone()),
            true,
        ))
        .await;
    assert!(
        matches!(&unknown, Err(EngineError::UnknownSignal(m)) if m.contains("approved, rejected")),
        "{unknown:?}"
    );
    // The token's holder decides; the payload is the state's result.
    engine
        .signal_job(decision(
            id,
            "approved",
            SignalAuth::ApprovalToken(token.clone()),
            true,
        ))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Finished, "publish")
    );
    assert_eq!(
        j.results["review"],
        json!({"decision": "approved", "by": "ann"})
    );
    assert!(j.approval_token.is_none());
    // Used: a second decision is refused.
    let again = engine
        .signal_job(decision(
            id,
            "rejected",
            SignalAuth::ApprovalToken(token),
            true,
        ))
        .await;
    assert_eq!(again, Err(EngineError::BadApprovalToken));
    // The owner may decide without the token.
    let id = create(&engine, json!({})).await;
    engine
        .signal_job(decision(
            id,
            "rejected",
            SignalAuth::Owner("default".into()),
            true,
        ))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::Failed, "dropped")
    );
}

const SIGNAL_FLOW: &str = r#"
[states.first]
start = true
wait = { on = { go = "second" }, timeout = 60, on_timeout = "late" }
[states.second]
wait = { on = { go = "done" }, timeout = 120, on_timeout = "late" }
[states.done]
end = "finished"
[states.late]
end = "failed"
"#;

on_both!(a_signal_wait_times_out_on_its_own_timer_only);
async fn a_signal_wait_times_out_on_its_own_timer_only(h: Holder) {
    use orchestrator::engine::SignalAuth;
    let engine = h
        .engine(
            &SIGNAL_FLOW
                .replace("60", &h.pick_secs(60, 1))
                .replace("120", &h.pick_secs(120, 3)),
        )
        .await;
    let id = create(&engine, json!({})).await;
    assert_eq!(job(&engine, id).await.status, JobStatus::WaitingForSignal);
    // A signal is only for a wait state that lists it; not for approvals.
    let owner = || SignalAuth::Owner("default".into());
    let as_approval = engine.signal_job(decision(id, "go", owner(), true)).await;
    assert!(
        matches!(
            as_approval,
            Err(orchestrator::engine::EngineError::NotWaiting(_))
        ),
        "{as_approval:?}"
    );
    engine
        .signal_job(decision(id, "go", owner(), false))
        .await
        .unwrap();
    let j = job(&engine, id).await;
    assert_eq!(
        (j.status, j.current_state.as_str()),
        (JobStatus::WaitingForSignal, "second")
    );
    // The first state's timer fires in the second state and does nothing.
    let first_timeout = h.pick(Duration::from_secs(61), Duration::from_millis(1500));
    tokio::time::sleep(first_timeout).await;
    settle().await;
    assert_eq!(job(&engine, id).await.current_state, "second");
    // The second state's own timeout takes its path.
    let j = job_reaches(
        &engine,
        id,
        JobStatus::Failed,
        h.pick(Duration::from_secs(120), Duration::from_secs(10)),
    )
    .await;
    assert_eq!(j.current_state, "late");
    assert_eq!(j.state_history[1].outcome.as_deref(), Some("timeout"));
}

/// `flow` runs `middle`, which runs `leaf` (internal blueprints), which
/// dispatches `echo`: a chain three deep.
const CHAIN: &str = r#"
[states.start]
start = true
run = { blueprint = "middle", data = { word = "initial.word" }, on = { success = "done", failure = "failed" } }
[states.done]
end = "finished"
[states.failed]
end = "failed"

### another blueprint
name = "middle"
[states.start]
start = true
run = { blueprint = "leaf", data = { word = "initial.word ~ '!'" }, on = { success = "done" } }
[states.done]
end = "finished"

### another blueprint
name = "leaf"
[states.work]
start = true
dispatch.task = "echo"
dispatch.params.word = "initial.word"
dispatch.on = { success = "done" }
dispatch.retry = { max_attempts = 1 }
[states.done]
end = "finished"
"#;

/// The job's child, once it has one.
async fn child_of(engine: &Engine, id: uuid::Uuid) -> uuid::Uuid {
    let mut child = None;
    for _ in 0..200 {
        child = job(engine, id).await.child;
        if child.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.expect("a child job")
}

on_both!(a_chain_of_child_jobs_three_deep_finishes_with_each_result_in_its_parent);
async fn a_chain_of_child_jobs_three_deep_finishes_with_each_result_in_its_parent(h: Holder) {
    let engine = h.engine(CHAIN).await;
    register(&engine, "w1", &["echo"]).await;
    let top = create(&engine, json!({"word": "hi"})).await;
    let j = job(&engine, top).await;
    assert_eq!(j.status, JobStatus::WaitingForSubJob);
    let middle = child_of(&engine, top).await;
    let leaf = child_of(&engine, middle).await;
    let leaf_job = job(&engine, leaf).await;
    assert_eq!((leaf_job.blueprint.as_str(), leaf_job.depth), ("leaf", 2));
    assert_eq!(leaf_job.owner, "default");
    assert_eq!(leaf_job.parent.as_ref().unwrap().job, middle);
    let task = poll(&engine, "w1").await.unwrap();
    assert_eq!(task.params["word"], "hi!");
    engine
        .submit_result("w1", success(&task, "success", json!({"echo": "hi!"})))
        .await
        .unwrap();
    let j = job_reaches(&engine, top, JobStatus::Finished, Duration::from_secs(10)).await;
    assert_eq!(j.current_state, "done");
    assert_eq!(j.results["start"], json!({"echo": "hi!"}));
    assert_eq!(job(&engine, middle).await.status, JobStatus::Finished);
    assert!(j.child.is_none());
}

on_both!(cancelling_the_top_job_cancels_every_child_down_the_chain);
async fn cancelling_the_top_job_cancels_every_child_down_the_chain(h: Holder) {
    let engine = h.engine(CHAIN).await;
    register(&engine, "w1", &["echo"]).await;
    let top = create(&engine, json!({"word": "x"})).await;
    let middle = child_of(&engine, top).await;
    let leaf = child_of(&engine, middle).await;
    let task = poll(&engine, "w1").await.unwrap();
    engine.cancel_job(top, "default").await.unwrap();
    for id in [middle, leaf] {
        let j = job_reaches(&engine, id, JobStatus::Cancelled, Duration::from_secs(10)).await;
        assert!(
            j.error
                .unwrap()
                .message
                .starts_with("cancelled with its parent job"),
            "{id}"
        );
    }
    // The leaf's task result comes too late to revive anything.
    let r = engine
        .submit_result("w1", success(&task, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, "ignored");
    assert_eq!(job(&engine, top).await.status, JobStatus::Cancelled);
}

on_both!(a_failed_child_takes_the_failure_path_and_depth_is_bounded);
async fn a_failed_child_takes_the_failure_path_and_depth_is_bounded(h: Holder) {
    let settings = EngineSettings {
        max_job_depth: 1,
        ..EngineSettings::default()
    };
    let flat = CHAIN.replacen(r#"blueprint = "middle""#, r#"blueprint = "leaf""#, 1);
    let engine = h.engine_with(&flat, settings.clone()).await;
    register(&engine, "w1", &["echo"]).await;
    let top = create(&engine, json!({"word": "x"})).await;
    let _leaf = child_of(&engine, top).await;
    let task = poll(&engine, "w1").await.unwrap();
    engine
        .submit_result("w1", failure(&task, "INVALID_INPUT_ERROR", "no x"))
        .await
        .unwrap();
    let j = job_reaches(&engine, top, JobStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(j.current_state, "failed");
    let e = j.error.unwrap();
    assert_eq!(e.code, "CHILD_JOB_FAILED");
    assert!(
        e.message
            .contains("ended failed: INVALID_INPUT_ERROR: no x"),
        "{}",
        e.message
    );
    drop(engine);

    // A chain deeper than max_job_depth stops where it would cross it.
    let engine = h.engine_with(CHAIN, settings).await;
    let top = create(&engine, json!({"word": "x"})).await;
    let j = job_reaches(&engine, top, JobStatus::Failed, Duration::from_secs(10)).await;
    assert_eq!(j.error.unwrap().code, "CHILD_JOB_FAILED");
    engine.sync_storage().await;
    let started = engine.job_events(top).await.unwrap();
    let started = started.iter().find(|e| e.event == "child_started").unwrap();
    let middle: uuid::Uuid = started.message.split(' ').nth(2).unwrap().parse().unwrap();
    let m = job(&engine, middle).await;
    assert_eq!(m.error.unwrap().code, "DEPTH_LIMIT_EXCEEDED");
}

const PRIORITY_FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.params.n = "initial.n"
dispatch.priority = "initial.p"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

on_both!(a_high_priority_task_overtakes_a_hundred_queued_low_ones);
async fn a_high_priority_task_overtakes_a_hundred_queued_low_ones(h: Holder) {
    let engine = h.engine(PRIORITY_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    for n in 0..100 {
        create(&engine, json!({"n": n})).await;
    }
    // By the blueprint's expression, and by the create's option.
    let by_data = create(&engine, json!({"n": 100, "p": 5})).await;
    let first = poll(&engine, "w1").await.unwrap();
    assert_eq!(first.job_id, by_data.to_string());
    assert_eq!(first.priority, Some(5.0));
    let by_option = try_create(&engine, json!({"n": 101}), json!({"priority": 3}))
        .await
        .unwrap();
    let second = poll(&engine, "w1").await.unwrap();
    assert_eq!(second.job_id, by_option.to_string());
    // Then the low ones, oldest first.
    let third = poll(&engine, "w1").await.unwrap();
    assert_eq!(third.params["n"], 0);
    assert_eq!(third.priority, Some(0.0));
}

on_both!(an_old_low_priority_task_goes_before_a_newer_slightly_higher_one);
async fn an_old_low_priority_task_goes_before_a_newer_slightly_higher_one(h: Holder) {
    let engine = h.engine(PRIORITY_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let old = create(&engine, json!({"n": 0})).await;
    // Wall-clock time passes (the queue's order is by wall clock).
    std::thread::sleep(Duration::from_millis(1500));
    // 0.02 × 60 s = 1.2 s earlier: still after the one queued 1.5 s before.
    create(&engine, json!({"n": 1, "p": 0.02})).await;
    // 0.05 × 60 s = 3 s earlier: before it.
    let urgent = create(&engine, json!({"n": 2, "p": 0.05})).await;
    let order: Vec<String> = [
        poll(&engine, "w1").await.unwrap(),
        poll(&engine, "w1").await.unwrap(),
    ]
    .iter()
    .map(|t| t.job_id.clone())
    .collect();
    assert_eq!(order, [urgent.to_string(), old.to_string()]);
}

on_both!(a_worker_flooding_events_about_its_task_gets_a_hundred_kept);
async fn a_worker_flooding_events_about_its_task_gets_a_hundred_kept(h: Holder) {
    let engine = h.engine(EVENT_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let task = poll(&engine, "w1").await.unwrap();
    for n in 0..110 {
        engine
            .worker_event(
                "w1",
                &worker_event(id, &task.task_id, "note", json!({"n": n})),
            )
            .await
            .unwrap();
    }
    engine.sync_storage().await;
    let history = engine.job_events(id).await.unwrap();
    let kept = history.iter().filter(|e| e.event == "worker_event").count();
    assert_eq!(kept, 100);
    // The task still runs and its result still counts.
    engine
        .submit_result("w1", success(&task, "success", json!({})))
        .await
        .unwrap();
    assert_eq!(job(&engine, id).await.status, JobStatus::Finished);
}

on_both!(progress_reports_closer_than_half_a_second_are_dropped);
async fn progress_reports_closer_than_half_a_second_are_dropped(h: Holder) {
    let engine = h.engine(EVENT_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    let id = create(&engine, json!({})).await;
    let task = poll(&engine, "w1").await.unwrap();
    for n in 0..20 {
        let p = worker_event(id, &task.task_id, "progress", json!({"progress": n}));
        engine.worker_event("w1", &p).await.unwrap();
    }
    engine.sync_storage().await;
    let history = engine.job_events(id).await.unwrap();
    assert_eq!(history.iter().filter(|e| e.event == "progress").count(), 1);
    assert_eq!(
        job(&engine, id).await.progress,
        Some(json!({"progress": 0}))
    );
    // Half a second later, the next one is kept.
    std::thread::sleep(Duration::from_millis(550));
    let p = worker_event(id, &task.task_id, "progress", json!({"progress": 0.5}));
    engine.worker_event("w1", &p).await.unwrap();
    assert_eq!(
        job(&engine, id).await.progress,
        Some(json!({"progress": 0.5}))
    );
}

const GPU_FLOW: &str = r#"
[states.start]
start = true
goto = [{ when = "initial.gpu | default(true)", to = "gpu" }, { to = "plain" }]
[states.gpu]
dispatch.task = "render"
dispatch.params.n = "initial.n"
dispatch.requires = { resources = { devices = [{ type = "gpu", properties = { vram_gb = 16 } }] }, installed_software = { ffmpeg = "any" } }
dispatch.on = { success = "done" }
[states.plain]
dispatch.task = "render"
dispatch.params.n = "initial.n"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

async fn register_with(engine: &Engine, worker: &str, resources: serde_json::Value) {
    let reg: rxon::WorkerRegistration = serde_json::from_value(json!({
        "worker_id": worker,
        "worker_type": "test",
        "supported_skills": [{"name": "render"}],
        "resources": resources,
        "installed_software": {"ffmpeg": "6.1"},
    }))
    .unwrap();
    engine.register_worker(&reg).await.expect("registered");
}

on_both!(a_task_requiring_a_gpu_waits_for_a_worker_declaring_one);
async fn a_task_requiring_a_gpu_waits_for_a_worker_declaring_one(h: Holder) {
    let engine = h.engine(GPU_FLOW).await;
    register_with(&engine, "cpu", json!({"properties": {"cpu_cores": 8}})).await;
    register_with(
        &engine,
        "small-gpu",
        json!({"devices": [{"type": "gpu", "model": "T4", "properties": {"vram_gb": 8}}]}),
    )
    .await;
    let gpu_job = create(&engine, json!({"n": 1})).await;
    // Neither worker meets it: it waits, and says why.
    assert!(poll(&engine, "cpu").await.is_none());
    assert!(poll(&engine, "small-gpu").await.is_none());
    let waiting = job(&engine, gpu_job).await;
    let why = engine.waiting_reason(&waiting).await.unwrap();
    assert!(
        why.contains("no registered worker meets what task")
            && why.contains("render")
            && why.contains("required device 1"),
        "{why}"
    );
    // A worker that declares the GPU takes it.
    register_with(
        &engine,
        "big-gpu",
        json!({"devices": [{"type": "gpu", "model": "A100", "properties": {"vram_gb": 40}}]}),
    )
    .await;
    let why = engine
        .waiting_reason(&job(&engine, gpu_job).await)
        .await
        .unwrap();
    assert!(why.contains("1 registered meet it"), "{why}");
    assert!(poll(&engine, "cpu").await.is_none());
    let task = poll(&engine, "big-gpu").await.unwrap();
    assert_eq!(task.job_id, gpu_job.to_string());
}

on_both!(tasks_behind_one_no_worker_meets_still_go_to_others);
async fn tasks_behind_one_no_worker_meets_still_go_to_others(h: Holder) {
    let engine = h.engine(GPU_FLOW).await;
    register_with(&engine, "cpu", json!({"properties": {"cpu_cores": 8}})).await;
    // A GPU task queued first, then tasks of the same type needing nothing.
    let gpu_job = create(&engine, json!({"n": 0})).await;
    let mut plain = Vec::new();
    for n in 1..4 {
        plain.push(create(&engine, json!({"n": n, "gpu": false})).await);
    }
    for want in &plain {
        let task = poll(&engine, "cpu").await.expect("a plain task");
        assert_eq!(task.job_id, want.to_string());
    }
    assert!(poll(&engine, "cpu").await.is_none());
    assert_eq!(
        job(&engine, gpu_job).await.status,
        JobStatus::WaitingForWorker
    );
}

/// The `waiting_reason` of the first job waiting for a worker (other than
/// `except`).
async fn first_waiting_reason(engine: &Engine, except: Option<uuid::Uuid>) -> String {
    let waiting = engine
        .list_jobs(orchestrator::storage::JobFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .find(|j| j.status == JobStatus::WaitingForWorker && Some(j.id) != except)
        .unwrap();
    engine.waiting_reason(&waiting).await.unwrap()
}

const KEYED_FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.params.n = "initial.n"
dispatch.concurrency = { key = "initial.customer", max = 2 }
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

on_both!(a_concurrency_key_bounds_the_tasks_in_flight_per_customer);
async fn a_concurrency_key_bounds_the_tasks_in_flight_per_customer(h: Holder) {
    let engine = h.engine(KEYED_FLOW).await;
    register(&engine, "w1", &["echo"]).await;
    register(&engine, "w2", &["echo"]).await;
    for n in 0..10 {
        for customer in ["acme", "globex"] {
            create(&engine, json!({"n": n, "customer": customer})).await;
        }
    }
    // Two workers polling as fast as they can get two tasks per customer.
    let mut held = Vec::new();
    for worker in ["w1", "w2", "w1", "w2", "w1", "w2"] {
        if let Some(t) = poll(&engine, worker).await {
            held.push((worker, t));
        }
    }
    assert_eq!(held.len(), 4, "two per customer");
    let why = first_waiting_reason(&engine, None).await;
    assert!(
        why.contains("at most 2 tasks with concurrency key"),
        "{why}"
    );
    // One ends: one more of that customer may go.
    let (worker, done) = held.remove(0);
    let done_job = job(&engine, done.job_id.parse().unwrap()).await;
    let customer = done_job.initial_data["customer"].clone();
    engine
        .submit_result(worker, success(&done, "success", json!({})))
        .await
        .unwrap();
    let next = poll(&engine, "w2").await.expect("room for one more");
    let next_job = job(&engine, next.job_id.parse().unwrap()).await;
    assert_eq!(next_job.initial_data["customer"], customer);
    assert!(poll(&engine, "w1").await.is_none());
}

on_both!(a_waiting_taker_is_woken_when_a_key_has_room_again);
async fn a_waiting_taker_is_woken_when_a_key_has_room_again(h: Holder) {
    let engine = h.engine(&KEYED_FLOW.replace("max = 2", "max = 1")).await;
    register(&engine, "w1", &["echo"]).await;
    register(&engine, "w2", &["echo"]).await;
    create(&engine, json!({"n": 1, "customer": "acme"})).await;
    let second = create(&engine, json!({"n": 2, "customer": "acme"})).await;
    let first = poll(&engine, "w1").await.unwrap();
    // w2 waits: the key is full. Nothing is queued meanwhile; the first
    // task's end alone must wake it.
    let waiting = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.next_task("w2", Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    engine
        .submit_result("w1", success(&first, "success", json!({})))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let task = waiting.await.unwrap().unwrap().expect("the second task");
    assert_eq!(task.job_id, second.to_string());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken, not timed out"
    );
}

const RATED_FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.params.n = "initial.n"
dispatch.rate = { key = "initial.customer", per_second = 2, burst = 2 }
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

on_both!(a_rate_key_hands_out_its_burst_then_one_task_per_interval);
async fn a_rate_key_hands_out_its_burst_then_one_task_per_interval(h: Holder) {
    let engine = h.engine(RATED_FLOW).await;
    for w in ["w1", "w2", "w3", "w4"] {
        register(&engine, w, &["echo"]).await;
    }
    for n in 0..4 {
        create(&engine, json!({"n": n, "customer": "acme"})).await;
    }
    let other = create(&engine, json!({"n": 9, "customer": "globex"})).await;
    // Free workers: acme's burst of two goes, its third waits; globex's
    // own bucket is full.
    let mut customers = Vec::new();
    for w in ["w1", "w2", "w3"] {
        let t = poll(&engine, w).await.expect("a task");
        let j = job(&engine, t.job_id.parse().unwrap()).await;
        customers.push(j.initial_data["customer"].as_str().unwrap().to_string());
    }
    customers.sort();
    assert_eq!(customers, ["acme", "acme", "globex"]);
    assert!(poll(&engine, "w4").await.is_none(), "acme's burst is spent");
    let why = first_waiting_reason(&engine, Some(other)).await;
    assert!(
        why.contains("at most 2 tasks per second with rate key acme"),
        "{why}"
    );
    // A long-poll gets the next one when the bucket has room again (half
    // a second on), not before and without any other event waking it.
    let started = tokio::time::Instant::now();
    let third = engine
        .next_task("w4", Duration::from_secs(20))
        .await
        .unwrap()
        .expect("the third of acme");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(10),
        "waited {waited:?}"
    );
    let j = job(&engine, third.job_id.parse().unwrap()).await;
    assert_eq!(j.initial_data["customer"], "acme");
    assert!(poll(&engine, "w4").await.is_none(), "one per interval");
}

const CHEAPEST_FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "echo"
dispatch.strategy = "cheapest"
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

async fn register_costing(engine: &Engine, worker: &str, cost: f64) {
    let reg: rxon::WorkerRegistration = serde_json::from_value(json!({
        "worker_id": worker,
        "worker_type": "test",
        "supported_skills": [{"name": "echo"}],
        "capabilities": {"cost_per_skill": {"echo": cost}},
    }))
    .unwrap();
    engine.register_worker(&reg).await.expect("registered");
}

on_both!(a_cheapest_task_goes_to_the_cheaper_of_two_waiting_workers);
async fn a_cheapest_task_goes_to_the_cheaper_of_two_waiting_workers(h: Holder) {
    let engine = h.engine(CHEAPEST_FLOW).await;
    register_costing(&engine, "thrifty", 1.0).await;
    register_costing(&engine, "pricey", 5.0).await;
    for n in 0..3 {
        // Both wait; whichever the new task wakes first, the cheap one
        // gets it.
        let wait = |w: &'static str| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.next_task(w, Duration::from_secs(3)).await })
        };
        // (The dear one waits first and sorts first: without a strategy
        // the wake-up order would give it the task.)
        let dear = wait("pricey");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cheap = wait("thrifty");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let id = create(&engine, json!({"n": n})).await;
        let task = cheap.await.unwrap().unwrap().expect("the cheap worker's");
        assert_eq!(task.job_id, id.to_string());
        assert!(dear.await.unwrap().unwrap().is_none(), "not the dear one's");
        engine
            .submit_result("thrifty", success(&task, "success", json!({})))
            .await
            .unwrap();
    }
    // Alone, the dear one takes it: a strategy chooses among the waiting.
    let id = create(&engine, json!({"n": 9})).await;
    let task = poll(&engine, "pricey").await.expect("nobody better waits");
    assert_eq!(task.job_id, id.to_string());
}

const FILES_FLOW: &str = r#"
[states.start]
start = true
dispatch.task = "make"
dispatch.on = { success = "use" }
[states.use]
dispatch.task = "use"
dispatch.params.image = "results.start.image"
dispatch.params.n = 1
dispatch.on = { success = "done" }
[states.done]
end = "finished"
"#;

on_both!(files_a_result_names_travel_with_the_job_to_the_tasks_that_name_them);
async fn files_a_result_names_travel_with_the_job_to_the_tasks_that_name_them(h: Holder) {
    let engine = h.engine(FILES_FLOW).await;
    register(&engine, "w1", &["make", "use"]).await;
    let id = create(&engine, json!({})).await;
    let first = poll(&engine, "w1").await.unwrap();
    assert_eq!(first.params_metadata, None, "no files yet");
    let uri = format!("s3://b/{id}/image.png");
    let mut result = success(
        &first,
        "success",
        json!({"image": uri, "log": "s3://b/x/log.txt"}),
    );
    result.data_metadata = Some(
        serde_json::from_value(json!({
            "image": {"uri": uri, "size": 10, "etag": "e1"},
            "log": {"uri": "s3://b/x/log.txt", "size": 3}
        }))
        .unwrap(),
    );
    engine.submit_result("w1", result).await.unwrap();
    let second = poll(&engine, "w1").await.unwrap();
    // Only the file its params name, by key (as avtomatika filters).
    let sent = serde_json::to_value(&second.params_metadata).unwrap();
    assert_eq!(
        sent,
        json!({"image": {"uri": uri, "size": 10, "etag": "e1"}})
    );
    engine
        .submit_result("w1", success(&second, "success", json!({})))
        .await
        .unwrap();
    let job = job(&engine, id).await;
    assert_eq!(job.status, JobStatus::Finished);
    let kept = serde_json::to_value(job.data_metadata.as_deref()).unwrap();
    assert_eq!(kept["image"]["etag"], "e1");
    assert_eq!(kept["log"]["size"], 3);
}
