//! The web dashboard in a real Chromium (WebDriver): sign-in, a job that
//! appears and ends without a reload, its page with the timeline, a long
//! job cancelled from its page, the workers and blueprints pages, and that
//! a wrong token or no sign-in shows nothing. Plus the cookie's rules,
//! checked over plain HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::*;
use serde_json::{Value, json};

async fn dashboard_stack() -> Stack {
    let mut stack = Stack::new();
    stack.add_plugin(plugin_fixtures::CHAOS_TASK);
    stack.add_blueprint("one_progress_sleep", &one_task_flow("progress_sleep"));
    stack.start_orchestrator();
    stack.wait_ready().await;
    stack.worker = Some(stack.spawn_worker(WORKER_ID, "worker.log", |cmd| {
        cmd.args(["--max-concurrent-tasks", "3"]);
    }));
    stack.wait_worker().await;
    stack
}

#[tokio::test]
async fn the_dashboard_follows_jobs_live_and_cancels_one_from_its_page() {
    let stack = dashboard_stack().await;
    let browser = Browser::start(stack.dir.path()).await;
    let b = &browser;
    browser
        .steps("dashboard", async {
            b.client.goto(&format!("{}/", stack.base)).await.unwrap();

            // A wrong token: an error, and nothing else.
            b.find("#token")
                .await
                .send_keys("not-a-token")
                .await
                .unwrap();
            b.click("#sign-in").await;
            b.wait_text("#sign-in-error", "Unknown token").await;
            assert!(!b.has("#jobs").await, "a wrong token shows no jobs");
            assert_eq!(
                b.run("return document.getElementById('nav').hidden").await,
                json!(true)
            );
            assert_eq!(b.page_fetch_status("/api/v1/jobs").await, 401);
            b.screenshot("sign-in").await;

            // The right one: the jobs page.
            let token = b.find("#token").await;
            token.clear().await.unwrap();
            token.send_keys(CLIENT_TOKEN).await.unwrap();
            b.click("#sign-in").await;
            b.find("#jobs").await;
            b.wait_text("#who", "signed in as").await;
            // Marks this page load: a reload would lose it.
            b.run("window.__sameLoad = true").await;

            // A job created through the API appears, then ends, live.
            let id = stack
                .create(
                    "/jobs/test",
                    json!({"message": "Hello World", "multiply": 3, "work_ms": 1500}),
                )
                .await;
            let row = format!("tr[data-job-id='{id}']");
            b.find(&row).await;
            b.find(&format!("{row} .status[data-status='finished']"))
                .await;
            for n in 0..4 {
                stack
                    .create("/jobs/test", echo_body(&format!("job {n}"), 1))
                    .await;
            }
            // The live chart counted the five ended jobs (one event a second).
            wait_until(
                "the throughput chart to count 5 jobs",
                Duration::from_secs(15),
                || async {
                    let total = b
                        .find("#chart-throughput")
                        .await
                        .attr("data-total-finished")
                        .await
                        .unwrap();
                    total.and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) >= 5
                },
            )
            .await;
            assert!(b.has("#chart-throughput polyline.s-finished").await);
            assert!(b.has("#chart-latency circle.s-latency_p50_ms").await);
            assert_eq!(
                b.run("return window.__sameLoad === true").await,
                json!(true),
                "the page was reloaded"
            );
            b.screenshot("jobs").await;

            // Its page: data, result, and the attempt on the timeline.
            b.click(&format!("{row} a")).await;
            b.wait_text("#job-status", "finished").await;
            b.wait_text("#result", "Hello World Hello World Hello World")
                .await;
            b.wait_text("#initial-data", "\"multiply\": 3").await;
            let attempt = b
                .wait_text("#timeline li[data-event='task_result'] .attempt", WORKER_ID)
                .await;
            assert!(
                attempt.contains("attempt 1") && attempt.contains("echo_task"),
                "{attempt}"
            );
            assert!(
                !b.has("#cancel:not([hidden])").await,
                "an ended job has no cancel button"
            );
            b.screenshot("job").await;

            // A long job: its progress shows, and the page cancels it.
            let long = stack
                .create("/jobs/one/progress_sleep", json!({"ms": 120000}))
                .await;
            b.client
                .goto(&format!("{}/#/jobs/{long}", stack.base))
                .await
                .unwrap();
            b.wait_text("#progress", "50 %").await;
            b.wait_text("#progress", "halfway").await;
            b.screenshot("job-running").await;
            b.click("#cancel").await;
            b.wait_text("#job-status", "cancelled").await;
            let (_, job) = stack.get(&format!("/api/v1/jobs/{long}")).await;
            assert_eq!(job["status"], "cancelled", "{job}");
            b.wait_text("#timeline", "cancelled").await;

            // Workers: slots and heartbeat age.
            b.client
                .goto(&format!("{}/#/workers", stack.base))
                .await
                .unwrap();
            let worker = format!("tr[data-worker-id='{WORKER_ID}']");
            b.wait_text(&format!("{worker} .cell-slots"), "/ 3").await;
            b.wait_text(&format!("{worker} .cell-heartbeat"), "s ago")
                .await;
            b.wait_text(&worker, "echo_task").await;
            b.screenshot("workers").await;

            // Blueprints: the states and transitions as a graph.
            b.client
                .goto(&format!("{}/#/blueprints", stack.base))
                .await
                .unwrap();
            let flow = "[data-blueprint='test_flow']";
            b.find(&format!("{flow} g.node.start[data-state='start']"))
                .await;
            b.find(&format!(
                "{flow} g.edge[data-from='start'][data-to='completed']"
            ))
            .await;
            b.find(&format!("{flow} g.node.end-failed[data-state='failed']"))
                .await;
            b.wait_text(&format!("{flow} g.edge[data-to='failed']"), "failure")
                .await;
            b.screenshot("blueprints").await;

            // Signing out leaves nothing to see.
            b.click("#sign-out").await;
            b.find("#sign-in-form").await;
            assert_eq!(b.page_fetch_status("/api/v1/jobs").await, 401);
            b.client
                .goto(&format!("{}/#/jobs", stack.base))
                .await
                .unwrap();
            b.find("#sign-in-form").await;
            assert!(!b.has("#jobs").await);
        })
        .await;
    browser.client.clone().close().await.unwrap();
    let (orchestrator, worker) = stack.logs();
    assert!(!orchestrator.contains("panicked") && !worker.contains("panicked"));
}

/// The session cookie and the rules around it, over plain HTTP.
#[tokio::test]
async fn the_sign_in_cookie_is_http_only_strict_and_guards_changes() {
    let mut stack = Stack::new();
    stack.start_orchestrator();
    stack.wait_ready().await;
    let http = &stack.http;
    let session = format!("{}/ui/session", stack.base);
    let from_page = ("X-Requested-With", "taskworker-dashboard");

    // The page and its assets are public; the data is not.
    let page = http.get(format!("{}/", stack.base)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("/ui/app.js"));
    let who = http.get(&session).send().await.unwrap();
    assert_eq!(who.status().as_u16(), 401);

    // Sign-in needs the page's header, and a known token.
    let no_header = http
        .post(&session)
        .json(&json!({"token": CLIENT_TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_header.status().as_u16(), 403);
    let wrong = http
        .post(&session)
        .header(from_page.0, from_page.1)
        .json(&json!({"token": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let body: Value = wrong.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");

    let sign_in = || {
        http.post(&session)
            .header(from_page.0, from_page.1)
            .json(&json!({"token": CLIENT_TOKEN}))
            .send()
    };
    let ok = sign_in().await.unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in [
        "taskworker_session=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
    ] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    let pair = cookie.split(';').next().unwrap().to_string();
    let hex_token: String = CLIENT_TOKEN.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(
        !pair.contains(CLIENT_TOKEN) && !pair.contains(&hex_token),
        "the cookie carries a session id, not the token: {pair}"
    );

    // The cookie reads what the token reads.
    let jobs = http
        .get(format!("{}/api/v1/jobs", stack.base))
        .header("Cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(jobs.status().as_u16(), 200);
    let id = stack
        .create("/jobs/test", json!({"message": "x", "work_ms": 60000}))
        .await;
    // A change by cookie alone must come from the page.
    let cancel = format!("{}/api/v1/jobs/{id}/cancel", stack.base);
    let forged = http
        .post(&cancel)
        .header("Cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let body: Value = forged.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("X-Requested-With"),
        "{body}"
    );
    let cancelled = http
        .post(&cancel)
        .header("Cookie", &pair)
        .header(from_page.0, from_page.1)
        .send()
        .await
        .unwrap();
    assert_eq!(cancelled.status().as_u16(), 200);
    // A cookie with an unknown token reads nothing.
    let bad = http
        .get(format!("{}/api/v1/jobs", stack.base))
        .header("Cookie", "taskworker_session=6e6f7065")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    // A second sign-in (another browser) is a session of its own.
    let second = sign_in().await.unwrap();
    let second = second.headers()["set-cookie"].to_str().unwrap();
    let second = second.split(';').next().unwrap().to_string();
    assert_ne!(second, pair);
    // Signing out clears the cookie and ends the session on the server: a
    // copy of the cookie kept from before reads nothing.
    let out = http
        .delete(&session)
        .header(from_page.0, from_page.1)
        .header("Cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status().as_u16(), 200);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    for url in [format!("{}/api/v1/jobs", stack.base), session.clone()] {
        let after = http.get(&url).header("Cookie", &pair).send().await.unwrap();
        assert_eq!(after.status().as_u16(), 401, "{url} after sign-out");
        let body: Value = after.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("session has ended"),
            "{body}"
        );
    }
    // The other session is not affected.
    let still = http
        .get(&session)
        .header("Cookie", &second)
        .send()
        .await
        .unwrap();
    assert_eq!(still.status().as_u16(), 200);
    let (orchestrator, _) = stack.logs();
    assert!(!orchestrator.contains("panicked"));
}
