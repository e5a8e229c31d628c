//! `loadgen`: creates N `test_flow` jobs with C in flight through the client
//! API of any orchestrator, follows each to a terminal status and reports
//! jobs/s, create→terminal latency percentiles and every outcome.
//!
//! Following a job: with `--follow wait` (our orchestrator) one
//! `GET /jobs/{id}?wait=30` per job; with `--follow poll` (avtomatika, which
//! has no server-side wait) a GET every `--poll-ms`.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --token test-client-token --jobs 2000 --concurrency 50
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Follow {
    /// Server-side wait (`?wait=`), our orchestrator.
    Wait,
    /// Client-side polling, for avtomatika.
    Poll,
}

#[derive(Debug, Parser)]
#[command(
    about = "Drives test_flow jobs through an orchestrator and reports throughput and latency"
)]
struct Args {
    /// Orchestrator base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Client token (sent as X-Client-Token).
    #[arg(long, default_value = "test-client-token")]
    token: String,
    /// Create-job path.
    #[arg(long, default_value = "/api/v1/jobs/test")]
    endpoint: String,
    /// Jobs in all.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Jobs in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    #[arg(long, value_enum, default_value = "wait")]
    follow: Follow,
    /// Polling interval with `--follow poll`.
    #[arg(long, default_value_t = 20)]
    poll_ms: u64,
    /// Give up on a job after this many seconds.
    #[arg(long, default_value_t = 120)]
    job_timeout: u64,
    /// A label for the report line.
    #[arg(long, default_value = "run")]
    label: String,
    /// Print the report as one JSON line too.
    #[arg(long)]
    json: bool,
}

struct Outcome {
    status: String,
    latency: Duration,
}

async fn run_job(http: &reqwest::Client, args: &Args, n: usize) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let body = json!({"initial_data": {"message": "bench", "multiply": (n % 5) + 1, "work_ms": 0}});
    let resp = http
        .post(format!("{}{}", args.url, args.endpoint))
        .header("X-Client-Token", &args.token)
        .json(&body)
        .send()
        .await
        .context("create")?;
    let status = resp.status();
    let created: Value = resp.json().await.context("create body")?;
    if status.as_u16() != 202 {
        bail!("create answered {status}: {created}");
    }
    let id = created["job_id"].as_str().context("no job_id")?.to_string();
    let deadline = started + Duration::from_secs(args.job_timeout);
    let prefix = args
        .endpoint
        .rsplit_once("/jobs/")
        .map(|(p, _)| p)
        .unwrap_or("/api/v1");
    loop {
        let url = match args.follow {
            Follow::Wait => format!("{}{prefix}/jobs/{id}?wait=30", args.url),
            Follow::Poll => format!("{}{prefix}/jobs/{id}", args.url),
        };
        let job: Value = http
            .get(url)
            .header("X-Client-Token", &args.token)
            .send()
            .await?
            .json()
            .await?;
        let st = job["status"].as_str().unwrap_or("unknown").to_string();
        if ["finished", "failed", "quarantined", "cancelled"].contains(&st.as_str()) {
            return Ok(Outcome {
                status: st,
                latency: started.elapsed(),
            });
        }
        if Instant::now() > deadline {
            return Ok(Outcome {
                status: format!("timed_out({st})"),
                latency: started.elapsed(),
            });
        }
        if let Follow::Poll = args.follow {
            tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .build()?;
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(args.jobs);
    for n in 0..args.jobs {
        let permit = gate.clone().acquire_owned().await?;
        let (http, args) = (http.clone(), args.clone());
        handles.push(tokio::spawn(async move {
            let outcome = run_job(&http, &args, n).await;
            drop(permit);
            outcome
        }));
    }
    let mut latencies = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for h in handles {
        match h.await? {
            Ok(o) => {
                if o.status == "finished" {
                    latencies.push(o.latency);
                }
                *outcomes.entry(o.status).or_default() += 1;
            }
            Err(e) => *outcomes.entry(format!("error: {e:#}")).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let finished = latencies.len();
    let rate = finished as f64 / elapsed.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p95, p99) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
    );
    println!(
        "{:<28} jobs={} concurrency={} finished={} elapsed={:.2}s rate={:.1} jobs/s p50={:.1}ms p95={:.1}ms p99={:.1}ms outcomes={:?}",
        args.label,
        args.jobs,
        args.concurrency,
        finished,
        elapsed.as_secs_f64(),
        rate,
        ms(p50),
        ms(p95),
        ms(p99),
        outcomes
    );
    if args.json {
        println!(
            "{}",
            json!({"label": args.label, "jobs": args.jobs, "concurrency": args.concurrency, "finished": finished,
                   "elapsed_s": elapsed.as_secs_f64(), "jobs_per_s": rate, "p50_ms": ms(p50), "p95_ms": ms(p95),
                   "p99_ms": ms(p99), "outcomes": outcomes})
        );
    }
    if finished != args.jobs {
        eprintln!(
            "warning: {} of {} jobs did not finish: {outcomes:?}",
            args.jobs - finished,
            args.jobs
        );
    }
    Ok(())
}
