//! Two orchestrator processes on one PostgreSQL database, two worker hosts
//! that know both: jobs created through both instances finish exactly once,
//! and kill -9 of one instance in the middle loses none and strands none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

/// The last lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn db(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Waits (up to 240 s) until no job of the database at `url` is open, then
/// checks that every job finished, every `accepted` one among them, none
/// twice, and nothing is left queued; returns how many jobs there are.
/// `logs` says what to show when a job is stuck.
async fn every_job_finishes_once(
    url: &str,
    accepted: &[String],
    logs: impl Fn() -> String,
) -> usize {
    let client = db(url).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let open: i64 = client
            .query_one(
                "SELECT count(*) FROM jobs WHERE status NOT IN ('finished', 'failed', 'quarantined', 'cancelled')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} jobs are stuck\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rows = client
        .query("SELECT id::text, status FROM jobs", &[])
        .await
        .unwrap();
    let finished: BTreeSet<String> = rows
        .iter()
        .filter(|r| r.get::<_, &str>(1) == "finished")
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        finished.len(),
        rows.len(),
        "every job (accepted or not answered) finished"
    );
    for id in accepted {
        assert!(finished.contains(id), "accepted job {id} did not finish");
    }
    let twice: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT job_id FROM job_events WHERE event = 'finished'
             GROUP BY job_id HAVING count(*) > 1) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "no job finished twice");
    let left = client
        .query_one("SELECT count(*) FROM task_queue", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(left, 0, "nothing left in the queue");
    rows.len()
}

/// Two orchestrators on one new PostgreSQL database, both answering.
async fn two_instances() -> (Stack, Stack) {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator();
    b.wait_ready().await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_finish_every_job_once_even_when_one_is_killed() {
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    let url = a.storage.clone();
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator();
    b.wait_ready().await;
    let both = format!("{},{}", a.base, b.base);
    let both_reversed = format!("{},{}", b.base, a.base);
    let mut w1 = a.spawn_worker("cluster-w1", "w1.log", |c| {
        c.env("ORCHESTRATOR_URL", &both);
    });
    let mut w2 = a.spawn_worker("cluster-w2", "w2.log", |c| {
        c.env("ORCHESTRATOR_URL", &both_reversed);
    });
    // Registered through one instance, seen by the other.
    wait_until(
        "both workers, seen from B",
        Duration::from_secs(60),
        || async {
            let (_, workers) = b.get("/api/v1/workers").await;
            let ids: BTreeSet<String> = workers
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|w| w["worker_id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            ids.contains("cluster-w1") && ids.contains("cluster-w2")
        },
    )
    .await;

    // 2,000 jobs through both instances' client APIs, 20 at a time.
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bases = Arc::new([a.base.clone(), b.base.clone()]);
    let mut creators = Vec::new();
    for _ in 0..20 {
        let (accepted, next, bases) = (accepted.clone(), next.clone(), bases.clone());
        creators.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= 2000 {
                    return;
                }
                // Alternate instances; when one is down, the other.
                let first = n % 2;
                for base in [&bases[first], &bases[1 - first]] {
                    if let Some(id) = try_create_echo(&http, base, n).await {
                        accepted.lock().unwrap().push(id);
                        break;
                    }
                }
            }
        }));
    }
    wait_until("600 accepted jobs", Duration::from_secs(120), || async {
        accepted.lock().unwrap().len() >= 600
    })
    .await;
    a.orchestrator.as_mut().unwrap().kill9();
    for c in creators {
        c.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert!(
        accepted.len() >= 1900,
        "only {} jobs accepted\nB log:\n{}",
        accepted.len(),
        tail(&b.logs().0)
    );

    // Every accepted job ends, through the surviving instance.
    let rows = every_job_finishes_once(&url, &accepted, || {
        format!(
            "B log:\n{}\nw1 log:\n{}",
            tail(&b.logs().0),
            tail(&w1.log_text())
        )
    })
    .await;
    // The result is the job's own.
    let (status, job) = b.get(&format!("/api/v1/jobs/{}", accepted[0])).await;
    assert_eq!(status, 200);
    assert!(
        job["result"]["processed_message"]
            .as_str()
            .unwrap()
            .starts_with("job"),
        "{job}"
    );
    // The worker that used the dead instance went on through the other.
    let w1_log = w1.log_text();
    assert!(
        w1_log.contains(&format!(
            "cannot reach the orchestrator at {}; trying {} next",
            a.base, b.base
        )),
        "{}",
        tail(&w1_log)
    );
    eprintln!(
        "{} jobs accepted ({} in all), every one finished once",
        accepted.len(),
        rows
    );
    w1.stop();
    w2.stop();
    for log in [w1.log_text(), w2.log_text(), b.logs().0] {
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_through_one_instance_reach_workers_of_the_other() {
    let (a, b) = two_instances().await;
    // A worker that only knows B, with no plugins of its own.
    for entry in std::fs::read_dir(b.dir.path().join("plugins")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let mut worker = b.spawn_worker("only-b", "only-b.log", |_| {});
    // A plugin and a blueprint deployed through A.
    let echo = std::fs::read(plugin_fixtures::ECHO_TASK).unwrap();
    let resp = a
        .http
        .post(format!("{}/api/v1/plugins?name=echo_task", a.base))
        .header("X-Client-Token", DEPLOY_TOKEN)
        .header("Content-Type", "application/wasm")
        .body(echo)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let flow = one_task_flow("echo_task")
        .replace("one_echo_task", "via_a")
        .replace("/jobs/one/echo_task", "/jobs/via-a")
        .replace(
            "dispatch.params.bytes = \"initial.bytes\"",
            "dispatch.params.message = \"'from A'\"",
        )
        .replace("dispatch.params.ms = \"initial.ms\"\n", "");
    let resp = a
        .http
        .put(format!("{}/api/v1/blueprints/via_a", a.base))
        .header("X-Client-Token", DEPLOY_TOKEN)
        .body(flow)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    wait_until(
        "the worker of B to serve echo_task",
        Duration::from_secs(30),
        || async {
            b.worker_view("only-b")
                .await
                .is_some_and(|w| w["supported_skills"] == serde_json::json!(["echo_task"]))
        },
    )
    .await;
    // Within about a second B takes the blueprint from the database.
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let (status, v) = b.try_create("/jobs/via-a", serde_json::json!({})).await;
        if status == 202 {
            break v["job_id"].as_str().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "B does not serve /jobs/via-a: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let job = b.finished(&id).await;
    assert_eq!(job["result"]["processed_message"], "from A", "{job}");
    worker.stop();
    assert!(!worker.log_text().contains("panicked"));
}

/// A dashboard session opened on one instance serves on the other, and a
/// sign-out on either ends it on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_sign_out_on_one_instance_ends_the_session_on_all() {
    let (a, b) = two_instances().await;
    let sign_in = || async {
        let resp = a
            .http
            .post(format!("{}/ui/session", a.base))
            .header("X-Requested-With", "taskworker-dashboard")
            .json(&serde_json::json!({"token": crate::support::CLIENT_TOKEN}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let cookie = resp.headers()["set-cookie"].to_str().unwrap();
        cookie.split(';').next().unwrap().to_string()
    };
    let who = |stack: &Stack, cookie: &str| {
        let request = stack
            .http
            .get(format!("{}/ui/session", stack.base))
            .header("Cookie", cookie);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let first = sign_in().await;
    let second = sign_in().await;
    assert_eq!(who(&a, &first).await, 200);
    assert_eq!(who(&b, &first).await, 200, "B serves A's session");
    let out = b
        .http
        .delete(format!("{}/ui/session", b.base))
        .header("X-Requested-With", "taskworker-dashboard")
        .header("Cookie", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 200);
    assert_eq!(who(&a, &first).await, 401, "signed out on B, refused on A");
    assert_eq!(who(&b, &first).await, 401);
    let jobs = a
        .http
        .get(format!("{}/api/v1/jobs", a.base))
        .header("Cookie", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(jobs.status().as_u16(), 401);
    assert_eq!(who(&a, &second).await, 200, "the other session stays");
    for log in [a.logs().0, b.logs().0] {
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// The job list on PostgreSQL: filters and cursor pages read through
/// either instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_list_pages_by_cursor_on_postgres() {
    let (a, b) = two_instances().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(a.create("/jobs/test", echo_body(&format!("{i}"), 1)).await);
    }
    created.reverse();
    let mut seen = Vec::new();
    let mut query = "/api/v1/jobs?limit=2&blueprint=test_flow".to_string();
    loop {
        let (status, page) = b.get(&query).await;
        assert_eq!(status, 200, "{page}");
        for job in page["jobs"].as_array().unwrap() {
            seen.push(job["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => query = format!("/api/v1/jobs?limit=2&blueprint=test_flow&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, created);
    let (status, page) = b.get("/api/v1/jobs?status=finished").await;
    assert_eq!(status, 200);
    assert_eq!(page["jobs"], serde_json::json!([]), "none finished: {page}");
    for log in [a.logs().0, b.logs().0] {
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// A webhook owed by an instance killed before it could deliver it is
/// delivered by another instance once its lease runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_owed_by_a_killed_instance_is_delivered_by_another() {
    let config = "webhook_allowed_hosts = [\"127.0.0.1\"]\nwebhook_lease_seconds = 3\n";
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    a.start_configured(config, |_| {});
    a.wait_ready().await;
    a.start_worker();
    a.wait_worker().await;
    // Nothing listens at the receiver's port yet: A's attempts fail.
    let receiver_port = free_port();
    let (status, body) = a
        .try_create(
            "/jobs/test",
            serde_json::json!({"initial_data": {"message": "m", "multiply": 1},
                   "webhook_url": format!("http://127.0.0.1:{receiver_port}/hook")}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    assert_eq!(a.finished(&id).await["status"], "finished");
    wait_until(
        "A to fail a delivery attempt",
        Duration::from_secs(10),
        || async { a.logs().0.contains("(attempt 1 of 5)") },
    )
    .await;
    a.orchestrator.as_mut().unwrap().kill9();
    let got = webhook_receiver(receiver_port).await;
    b.start_configured(config, |_| {});
    b.wait_ready().await;
    wait_until(
        "B to deliver A's webhook",
        Duration::from_secs(20),
        || async { !got.lock().unwrap().is_empty() },
    )
    .await;
    let hooks = got.lock().unwrap().clone();
    assert_eq!(hooks[0]["job_id"], id.as_str(), "{hooks:?}");
    assert_eq!(hooks[0]["status"], "finished", "{hooks:?}");
    let log = b.logs().0;
    assert!(log.contains("owed by an instance that stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Two different blueprint texts put through two instances at the same
/// moment become two versions, and each instance serves the same text for
/// each version number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_through_two_instances_get_distinct_versions() {
    let (a, b) = two_instances().await;
    let flow = |word: &str| {
        one_task_flow("echo_task")
            .replace("one_echo_task", "raced")
            .replace("/jobs/one/echo_task", "/jobs/raced")
            .replace(
                "dispatch.params.bytes = \"initial.bytes\"",
                &format!("dispatch.params.message = \"'{word}'\""),
            )
            .replace("dispatch.params.ms = \"initial.ms\"\n", "")
    };
    let put = |stack: &Stack, text: String| {
        let request = stack
            .http
            .put(format!("{}/api/v1/blueprints/raced", stack.base))
            .header("X-Client-Token", DEPLOY_TOKEN)
            .body(text);
        async move {
            let resp = request.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    for round in 0..5 {
        let (through_a, through_b) = tokio::join!(
            put(&a, flow(&format!("a{round}"))),
            put(&b, flow(&format!("b{round}")))
        );
        assert_eq!(through_a.0, 201, "{through_a:?}");
        assert_eq!(through_b.0, 201, "{through_b:?}");
        assert_ne!(
            through_a.1["version"], through_b.1["version"],
            "round {round}: {through_a:?} {through_b:?}"
        );
    }
    // Every version, read through either instance, is the same text.
    wait_until(
        "both instances to know all ten versions",
        Duration::from_secs(10),
        || async {
            let mut all = true;
            for version in 1..=10 {
                let path = format!("/api/v1/blueprints/raced?version={version}");
                all &= a.get(&path).await.0 == 200 && b.get(&path).await.0 == 200;
            }
            all
        },
    )
    .await;
    let mut words = BTreeSet::new();
    for version in 1..=10 {
        let path = format!("/api/v1/blueprints/raced?version={version}");
        let (_, from_a) = a.get(&path).await;
        let (_, from_b) = b.get(&path).await;
        assert_eq!(from_a["text"], from_b["text"], "version {version}");
        words.insert(from_a["text"].as_str().unwrap().to_string());
    }
    assert_eq!(words.len(), 10, "ten different texts");
    for log in [a.logs().0, b.logs().0] {
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// Every session the orchestrator has with the database is ended by the
/// server (as a restart of PostgreSQL does): it reconnects by itself, and
/// reads, jobs and deploys work again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrator_reconnects_when_the_database_ends_its_sessions() {
    let mut stack = Stack::on_postgres().await;
    stack.start().await;
    let first = stack.create("/jobs/test", echo_body("before", 1)).await;
    assert_eq!(stack.finished(&first).await["status"], "finished");
    let name = stack.storage.rsplit('/').next().unwrap().to_string();
    let admin = db(&crate::support::pg::admin_url()).await;
    let ended = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    assert!(ended.len() >= 2, "the orchestrator had sessions open");
    wait_until(
        "the job list to answer again",
        Duration::from_secs(15),
        || async { stack.get("/api/v1/jobs").await.0 == 200 },
    )
    .await;
    let after = stack.create("/jobs/test", echo_body("after", 2)).await;
    let job = stack.finished(&after).await;
    assert_eq!(job["status"], "finished", "{job}");
    // Deploys use the registry's connection.
    wait_until(
        "a blueprint deploy to work again",
        Duration::from_secs(15),
        || async {
            stack
                .http
                .put(format!("{}/api/v1/blueprints/after_reconnect", stack.base))
                .header("X-Client-Token", DEPLOY_TOKEN)
                .body(
                    one_task_flow("echo_task")
                        .replace("one_echo_task", "after_reconnect")
                        .replace("/jobs/one/echo_task", "/jobs/after-reconnect"),
                )
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 201)
        },
    )
    .await;
    let (orchestrator, worker) = stack.logs();
    assert!(!orchestrator.contains("panicked") && !worker.contains("panicked"));
}

/// Scrapes of `/metrics` share one count of the queues, leases and workers
/// (at most one per 2 s), however many scrape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_scrapes_do_not_count_the_tables_each_time() {
    let mut stack = Stack::on_postgres().await;
    stack.start_orchestrator();
    stack.wait_ready().await;
    let name = stack.storage.rsplit('/').next().unwrap().to_string();
    let watcher = db(&stack.storage).await;
    // Statistics reach the views when a session flushes them (within ~10 s
    // of going idle): read them once every session has.
    let scans = || async {
        tokio::time::sleep(Duration::from_secs(12)).await;
        watcher
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        let row = watcher
            .query_one(
                "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables
                 WHERE relname = 'task_leases'",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    assert!(!name.is_empty());
    let before = scans().await;
    for _ in 0..40 {
        let resp = stack
            .http
            .get(format!("{}/metrics", stack.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.text().await.unwrap().contains("workers"));
    }
    let after = scans().await;
    assert!(
        after - before <= 3,
        "40 scrapes read task_leases {} times",
        after - before
    );
    let (orchestrator, _) = stack.logs();
    assert!(!orchestrator.contains("panicked"));
}

/// 500 idle long-polls against two instances cost the database a few
/// transactions per second: the waiters wait on NOTIFY, and each instance
/// looks at the database once per half second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_long_polls_cost_the_database_a_few_transactions_per_second() {
    let (a, b) = two_instances().await;
    let name = a.storage.rsplit('/').next().unwrap().to_string();
    let mut polls = Vec::new();
    for w in 0..50 {
        let stack = if w % 2 == 0 { &a } else { &b };
        let worker = format!("idle-{w}");
        let (status, body) = worker_post(
            stack,
            reqwest::Method::POST,
            "/_worker/workers/register",
            &worker,
            serde_json::json!({"worker_id": worker, "worker_type": "t",
                               "supported_skills": [{"name": "nothing_queued"}]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        for _ in 0..10 {
            let request = stack
                .http
                .get(format!(
                    "{}/_worker/workers/{worker}/tasks/next?timeout=30",
                    stack.base
                ))
                .header("X-Worker-Token", WORKER_TOKEN)
                .header("X-Worker-Id", &worker)
                .send();
            polls.push(tokio::spawn(async move {
                request.await.map(|r| r.status().as_u16())
            }));
        }
    }
    let started = Instant::now();
    let watcher = db(&crate::support::pg::admin_url()).await;
    let commits = || async {
        watcher
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        watcher
            .query_one(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // The polls' first looks are flushed to the statistics within ~10 s.
    tokio::time::sleep(Duration::from_secs(12).saturating_sub(started.elapsed())).await;
    let (before, from) = (commits().await, Instant::now());
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (after, window) = (commits().await, from.elapsed().as_secs_f64());
    let per_second = (after - before) as f64 / window;
    eprintln!("500 idle long-polls on two instances: {per_second:.1} transactions per second");
    assert!(
        per_second <= 10.0,
        "500 idle long-polls: {per_second:.1} transactions per second"
    );
    for poll in polls {
        let status = poll.await.unwrap().unwrap();
        assert!(status == 204 || status == 200, "a poll answered {status}");
    }
    for log in [a.logs().0, b.logs().0] {
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// A worker dropped (by another instance) while its poll was claiming a task:
/// the claim is undone and the task stays queued for the next worker,
/// instead of being consumed with no one to run it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_by_a_worker_dropped_meanwhile_leaves_the_task_queued() {
    let mut stack = Stack::on_postgres().await;
    stack.start_orchestrator();
    stack.wait_ready().await;
    let id = stack.create("/jobs/test", echo_body("claimed", 1)).await;
    let (status, body) = worker_post(
        &stack,
        reqwest::Method::POST,
        "/_worker/workers/register",
        "doomed",
        serde_json::json!({"worker_id": "doomed", "worker_type": "t",
                           "supported_skills": [{"name": "echo_task"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Hold the job's row: the claim below stops right after taking the
    // queue entry, before it reads the worker again.
    let mut holder = db(&stack.storage).await;
    let hold = holder.transaction().await.unwrap();
    let job_id = uuid::Uuid::parse_str(&id).unwrap();
    hold.query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", &[&job_id])
        .await
        .unwrap();
    let poll = stack
        .http
        .get(format!(
            "{}/_worker/workers/doomed/tasks/next?timeout=5",
            stack.base
        ))
        .header("X-Worker-Token", WORKER_TOKEN)
        .header("X-Worker-Id", "doomed")
        .send();
    let poll = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Meanwhile the worker is gone (as another instance expiring it would
    // leave it), then the job's row is free again.
    db(&stack.storage)
        .await
        .execute("DELETE FROM workers WHERE id = 'doomed'", &[])
        .await
        .unwrap();
    hold.commit().await.unwrap();
    let answered = poll.await.unwrap().unwrap();
    assert_ne!(
        answered.status().as_u16(),
        200,
        "a task went to a dropped worker"
    );
    // A real worker comes: the job still has its task, and finishes.
    stack.start_worker();
    stack.wait_worker().await;
    let job = stack.finished(&id).await;
    assert_eq!(job["status"], "finished", "{job}");
    let (orchestrator, worker) = stack.logs();
    assert!(!orchestrator.contains("panicked") && !worker.contains("panicked"));
}

/// A stored job that no longer parses is failed with INVALID_JOB and moved
/// aside when a timer or a claim meets it; the timers and tasks behind it
/// go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_job_is_set_aside_and_stops_neither_timers_nor_dispatch() {
    let mut stack = Stack::on_postgres().await;
    stack.start_orchestrator();
    stack.wait_ready().await;
    let create = |timeout: Option<u64>| {
        let mut body = serde_json::json!({"initial_data": echo_body("x", 1)});
        if let Some(t) = timeout {
            body["dispatch_timeout"] = serde_json::json!(t);
        }
        let request = stack.try_create("/jobs/test", body);
        async move {
            let (status, v) = request.await;
            assert_eq!(status, 202, "{v}");
            v["job_id"].as_str().unwrap().to_string()
        }
    };
    let database = db(&stack.storage).await;
    let corrupt = |id: String| {
        let database = &database;
        async move {
            let id = uuid::Uuid::parse_str(&id).unwrap();
            let n = database
                .execute(
                    "UPDATE jobs SET body = '{\"not a job\": ' WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
        }
    };
    // Timers: the unreadable job's comes first, the next is still fired.
    let broken_timer = create(Some(1)).await;
    let timed = create(Some(2)).await;
    corrupt(broken_timer.clone()).await;
    let job = stack.finished(&timed).await;
    assert_eq!(job["status"], "failed", "{job}");
    // Dispatch: the unreadable job's task is at the head of the queue.
    let broken_task = create(None).await;
    let queued = create(None).await;
    corrupt(broken_task.clone()).await;
    stack.start_worker();
    stack.wait_worker().await;
    let job = stack.finished(&queued).await;
    assert_eq!(job["status"], "finished", "{job}");
    for id in [broken_timer, broken_task] {
        let (status, job) = stack.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], "INVALID_JOB", "{job}");
        let (_, history) = stack.get(&format!("/api/v1/jobs/{id}/history")).await;
        assert!(history.to_string().contains("INVALID_JOB"), "{history}");
    }
    let (orchestrator, worker) = stack.logs();
    assert!(orchestrator.contains("is unreadable and is marked failed"));
    assert!(!orchestrator.contains("panicked") && !worker.contains("panicked"));
}

/// Debian's libfaketime (`scripts/setup.sh --with-faketime`).
fn libfaketime() -> String {
    glob_one("/usr/lib", "faketime/libfaketime.so.1")
        .expect("libfaketime is not installed: run scripts/setup.sh --with-faketime")
}

/// `<root>/<arch dir>/<tail>`, the first that exists.
fn glob_one(root: &str, tail: &str) -> Option<String> {
    std::fs::read_dir(root)
        .ok()?
        .filter_map(Result::ok)
        .map(|dir| dir.path().join(tail))
        .find(|path| path.exists())
        .map(|path| path.display().to_string())
}

/// An instance whose clock is an hour ahead writes shared deadlines on the
/// database's clock: a job's dispatch timeout set through it fires on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_a_wrong_clock_keeps_shared_deadlines_on_the_database_clock() {
    let lib = libfaketime();
    let mut a = Stack::on_postgres().await;
    let mut b = Stack::new();
    b.storage = a.storage.clone();
    a.start_orchestrator();
    a.wait_ready().await;
    b.start_orchestrator_with(|cmd| {
        cmd.env("LD_PRELOAD", &lib)
            .env("FAKETIME", "+1h")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    });
    b.wait_ready().await;
    wait_until(
        "B to see that its clock is off",
        Duration::from_secs(10),
        || async { b.logs().0.contains("off the database's") },
    )
    .await;
    // No worker serves echo_task: the job fails when its dispatch timeout
    // (2 s) runs out, fired by whichever instance.
    let (status, body) = b
        .try_create(
            "/jobs/test",
            serde_json::json!({"initial_data": echo_body("late?", 1), "dispatch_timeout": 2}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().unwrap().to_string();
    let started = Instant::now();
    wait_until(
        "the dispatch timeout to fire",
        Duration::from_secs(15),
        || async { a.get(&format!("/api/v1/jobs/{id}")).await.1["status"] == "failed" },
    )
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1), "fired early");
    for log in [a.logs().0, b.logs().0] {
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// The database ends every session of both instances twice while jobs flow
/// (as a restart of PostgreSQL would): the instances recover by themselves,
/// and every accepted job finishes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_the_database_ending_every_session_under_load() {
    let (a, b) = two_instances().await;
    let name = a.storage.rsplit('/').next().unwrap().to_string();
    let both = format!("{},{}", a.base, b.base);
    let mut w1 = a.spawn_worker("restart-w1", "w1.log", |c| {
        c.env("ORCHESTRATOR_URL", &both);
    });
    wait_until("the worker", Duration::from_secs(60), || async {
        b.worker_view("restart-w1").await.is_some()
    })
    .await;
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bases = Arc::new([a.base.clone(), b.base.clone()]);
    let mut creators = Vec::new();
    for _ in 0..10 {
        let (accepted, next, bases) = (accepted.clone(), next.clone(), bases.clone());
        creators.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n >= 600 {
                    return;
                }
                if let Some(id) = try_create_echo(&http, &bases[n % 2], n).await {
                    accepted.lock().unwrap().push(id);
                }
            }
        }));
    }
    let admin = db(&crate::support::pg::admin_url()).await;
    for round in [150, 350] {
        wait_until("jobs to flow", Duration::from_secs(120), || async {
            accepted.lock().unwrap().len() >= round
        })
        .await;
        let ended = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            .unwrap();
        assert!(!ended.is_empty());
    }
    for c in creators {
        c.await.unwrap();
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= 400, "only {} accepted", accepted.len());
    every_job_finishes_once(&a.storage, &accepted, || {
        format!(
            "A log:\n{}\nB log:\n{}\nw1 log:\n{}",
            tail(&a.logs().0),
            tail(&b.logs().0),
            tail(&w1.log_text())
        )
    })
    .await;
    // Deploys (the registry's own connection) work again on both (the one
    // call that meets a closed connection may fail; the next works).
    for (n, stack) in [&a, &b].into_iter().enumerate() {
        let name = format!("after_restart_{n}");
        let text = one_task_flow("echo_task")
            .replace("one_echo_task", &name)
            .replace("/jobs/one/echo_task", &format!("/jobs/{name}"));
        wait_until(
            "a deploy to work again",
            Duration::from_secs(15),
            || async {
                stack
                    .http
                    .put(format!("{}/api/v1/blueprints/{name}", stack.base))
                    .header("X-Client-Token", DEPLOY_TOKEN)
                    .body(text.clone())
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 201)
            },
        )
        .await;
    }
    w1.stop();
    for log in [w1.log_text(), a.logs().0, b.logs().0] {
        assert!(!log.contains("panicked"), "{log}");
    }
}
