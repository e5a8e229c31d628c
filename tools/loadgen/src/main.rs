//! `loadgen`: creates N `test_flow` jobs with C in flight through the client
//! API of any orchestrator, follows each to a terminal status and reports
//! jobs/s, create→terminal latency percentiles and every outcome.
//!
//! Following a job: with `--follow wait` (our orchestrator) one
//! `GET /jobs/{id}?wait=30` per job; with `--follow poll` (any orchestrator,
//! the same way for both systems) GETs with a backoff from 0.5 ms doubling
//! to `--poll-ms`.
//!
//! CPU per job: with `--orchestrator-pid` and `--worker-pids`, the user +
//! system time those processes spent during the run (from `/proc/<pid>/stat`,
//! all threads), divided by the jobs finished; the load generator's own CPU
//! per job is reported beside them (it shares the machine with the servers).
//! It runs on `--client-threads` runtime threads (default 1: the least CPU
//! per request, so the servers get the rest of the machine). `--pickup` also reads each
//! job's history and reports how long its first task waited between the
//! job's creation and its dispatch to a worker (server timestamps).
//! `--database-cpu` adds the CPU of the PostgreSQL server's processes on
//! this machine (every process named `postgres`); `--statements-file` reads
//! a `tools/pgcount` report and adds the statements sent per job.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --token test-client-token --jobs 2000 --concurrency 50
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The same allocator as the servers': the client's own cost per request
/// stays small next to theirs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Follow {
    /// Server-side wait (`?wait=`), our orchestrator.
    Wait,
    /// Client-side polling, the same for any orchestrator.
    Poll,
    /// Create and wait in one request (`POST …?wait=30`), our orchestrator;
    /// a job not done by then is followed with `?wait=`.
    CreateWait,
}

#[derive(Debug, Parser)]
#[command(
    about = "Drives test_flow jobs through an orchestrator and reports throughput and latency"
)]
struct Args {
    /// Orchestrator base URL; several, comma-separated, for instances
    /// sharing a database (job n goes to URL n mod count).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    url: Vec<String>,
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
    /// The orchestrator's process id(s), for CPU per job (comma-separated).
    #[arg(long, value_delimiter = ',')]
    orchestrator_pid: Vec<u32>,
    /// The workers' process ids, for CPU per job (comma-separated).
    #[arg(long, value_delimiter = ',')]
    worker_pids: Vec<u32>,
    /// Count the CPU of the PostgreSQL server's processes on this machine
    /// (every process named `postgres`) per job, besides ours.
    #[arg(long)]
    database_cpu: bool,
    /// A `pgcount` report (the orchestrator connects through `pgcount`):
    /// statements sent to PostgreSQL per job.
    #[arg(long)]
    statements_file: Option<std::path::PathBuf>,
    /// Report the pickup latency: job created → first task dispatched.
    #[arg(long)]
    pickup: bool,
    /// Jobs run first and not counted (same concurrency, one continuous
    /// stream): the figures are of a warm system, not of its first burst.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Runtime threads of the load generator itself.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Write each measured finished job as a line `latency_ms requests
    /// create_ms` (requests: the create and every GET that followed it;
    /// create_ms: until the create was answered) to this file, to see the
    /// latency distribution behind the percentiles.
    #[arg(long)]
    latencies: Option<std::path::PathBuf>,
}

/// CPU time (user + system, all threads) of `pids` so far, in µs; `None`
/// when a process cannot be read.
fn cpu_micros(pids: &[u32]) -> Option<f64> {
    // USER_HZ: 100 on every Linux this runs on (the kernel's ABI for /proc).
    const TICK_MICROS: f64 = 10_000.0;
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        total += (utime + stime) * TICK_MICROS;
    }
    Some(total)
}

/// Processes whose command is `name` (read from `/proc`).
fn pids_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// The `statements` total of a `pgcount` report.
fn statements(path: &std::path::Path) -> Option<f64> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    report["statements"].as_f64()
}

/// The one field of a job the client needs; the rest is skipped unparsed.
#[derive(serde::Deserialize)]
struct Polled {
    status: Option<String>,
}

struct Outcome {
    status: String,
    latency: Duration,
    /// Creation → first task dispatched (with `--pickup`).
    pickup: Option<Duration>,
    /// HTTP requests made for the job (the create and the GETs).
    requests: u32,
    /// Until the create was answered.
    create: Duration,
}

/// From a job's history: the time between `created` and the first
/// `task_dispatched`.
async fn pickup_of(
    http: &reqwest::Client,
    args: &Args,
    base: &str,
    prefix: &str,
    id: &str,
) -> Option<Duration> {
    let history: Value = http
        .get(format!("{base}{prefix}/jobs/{id}/history"))
        .header("X-Client-Token", &args.token)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    // Ours: {"events": [...]}; a bare list otherwise.
    let events = history.get("events").unwrap_or(&history);
    let at = |kind: &str| {
        events
            .as_array()?
            .iter()
            .find(|e| e["event"] == kind)
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e["at"].as_str()?).ok())
    };
    let (created, dispatched) = (at("created")?, at("task_dispatched")?);
    (dispatched - created).to_std().ok()
}

async fn run_job(http: &reqwest::Client, args: &Args, n: usize) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let base = args.url[n % args.url.len()].trim_end_matches('/');
    let body = json!({"initial_data": {"message": "bench", "multiply": (n % 5) + 1, "work_ms": 0}});
    let resp = http
        .post(match args.follow {
            Follow::CreateWait => format!("{base}{}?wait=30", args.endpoint),
            _ => format!("{base}{}", args.endpoint),
        })
        .header("X-Client-Token", &args.token)
        .json(&body)
        .send()
        .await
        .context("create")?;
    let status = resp.status();
    let created: Value = resp.json().await.context("create body")?;
    let create = started.elapsed();
    if status.as_u16() == 200
        && let Follow::CreateWait = args.follow
    {
        return Ok(Outcome {
            status: created["status"].as_str().unwrap_or("unknown").to_string(),
            latency: started.elapsed(),
            pickup: None,
            requests: 1,
            create,
        });
    }
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
    let mut backoff = Duration::from_micros(500);
    // Parsed once per job, not once per request.
    let url = reqwest::Url::parse(&match args.follow {
        Follow::Wait | Follow::CreateWait => format!("{base}{prefix}/jobs/{id}?wait=30"),
        Follow::Poll => format!("{base}{prefix}/jobs/{id}"),
    })?;
    let mut requests = 1;
    loop {
        requests += 1;
        let job: Polled = http
            .get(url.clone())
            .header("X-Client-Token", &args.token)
            .send()
            .await?
            .json()
            .await?;
        let st = job.status.unwrap_or_else(|| "unknown".into());
        if ["finished", "failed", "quarantined", "cancelled"].contains(&st.as_str()) {
            let latency = started.elapsed();
            let pickup = match args.pickup {
                true => pickup_of(http, args, base, prefix, &id).await,
                false => None,
            };
            return Ok(Outcome {
                status: st,
                latency,
                pickup,
                requests,
                create,
            });
        }
        if Instant::now() > deadline {
            return Ok(Outcome {
                status: format!("timed_out({st})"),
                latency: started.elapsed(),
                pickup: None,
                requests,
                create,
            });
        }
        if let Follow::Poll = args.follow {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(args.poll_ms.max(1)));
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

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let runtime = match args.client_threads {
        0 | 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(drive(args))
}

async fn drive(args: Arc<Args>) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let own = [std::process::id()];
    let cpu_now = || {
        (
            cpu_micros(&args.orchestrator_pid),
            cpu_micros(&args.worker_pids),
            cpu_micros(&own),
            // A server process that ends meanwhile is not counted at all;
            // one that starts is counted whole.
            args.database_cpu
                .then(|| pids_named("postgres"))
                .map(|pids| {
                    pids.iter()
                        .filter_map(|pid| cpu_micros(&[*pid]).map(|c| (*pid, c)))
                        .collect::<BTreeMap<u32, f64>>()
                }),
            args.statements_file.as_deref().and_then(statements),
        )
    };
    // One stream of jobs: the first `--warmup` keep C in flight while the
    // servers warm up and are not counted; the clock and the CPU counters
    // start as the first measured job is created.
    let mut cpu_before = cpu_now();
    let mut started = Instant::now();
    let mut handles = Vec::with_capacity(args.jobs);
    let mut warming = Vec::with_capacity(args.warmup);
    for n in 0..args.warmup + args.jobs {
        let permit = gate.clone().acquire_owned().await?;
        if n == args.warmup {
            cpu_before = cpu_now();
            started = Instant::now();
        }
        let (http, job_args) = (http.clone(), args.clone());
        let job = tokio::spawn(async move {
            let outcome = run_job(&http, &job_args, n).await;
            drop(permit);
            outcome
        });
        match n < args.warmup {
            true => warming.push(job),
            false => handles.push(job),
        }
    }
    // (latency, requests, create answered) of each finished job.
    let mut per_job = Vec::new();
    let mut pickups = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for h in handles {
        match h.await? {
            Ok(o) => {
                if o.status == "finished" {
                    per_job.push((o.latency, o.requests, o.create));
                    pickups.extend(o.pickup);
                }
                *outcomes.entry(o.status).or_default() += 1;
            }
            Err(e) => *outcomes.entry(format!("error: {e:#}")).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    let cpu_after = cpu_now();
    for job in warming {
        if let Ok(Err(e)) = job.await {
            eprintln!("warning: a warm-up job failed: {e:#}");
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if let Some(path) = &args.latencies {
        let lines: String = per_job
            .iter()
            .map(|&(latency, requests, create)| {
                format!("{:.3} {requests} {:.3}\n", ms(latency), ms(create))
            })
            .collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let requests_per_job = match per_job.len() {
        0 => 0.0,
        n => per_job.iter().map(|(_, r, _)| *r as f64).sum::<f64>() / n as f64,
    };
    let mut latencies: Vec<Duration> = per_job.iter().map(|&(latency, _, _)| latency).collect();
    latencies.sort();
    pickups.sort();
    let finished = latencies.len();
    let rate = finished as f64 / elapsed.as_secs_f64();
    let (p50, p95, p99) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99),
    );
    let per_job = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) if finished > 0 => Some((a - b) / finished as f64),
        _ => None,
    };
    let cpu_orchestrator = per_job(cpu_before.0, cpu_after.0);
    let cpu_workers = per_job(cpu_before.1, cpu_after.1);
    let cpu_client = per_job(cpu_before.2, cpu_after.2);
    let cpu_database = match (&cpu_before.3, &cpu_after.3) {
        (Some(before), Some(after)) if finished > 0 => Some(
            after
                .iter()
                .map(|(pid, a)| a - before.get(pid).copied().unwrap_or(0.0))
                .sum::<f64>()
                / finished as f64,
        ),
        _ => None,
    };
    let statements_per_job = per_job(cpu_before.4, cpu_after.4);
    let pickup = (!pickups.is_empty()).then(|| {
        (
            ms(percentile(&pickups, 0.50)),
            ms(percentile(&pickups, 0.99)),
        )
    });
    if let (Some(o), Some(w)) = (cpu_orchestrator, cpu_workers) {
        println!(
            "{:<28} CPU per job: orchestrator {o:.0} µs, workers {w:.0} µs, total {:.0} µs (load generator {:.0} µs)",
            args.label,
            o + w,
            cpu_client.unwrap_or_default()
        );
    }
    if let Some(d) = cpu_database {
        println!(
            "{:<28} CPU per job: PostgreSQL server {d:.0} µs",
            args.label
        );
    }
    if let Some(n) = statements_per_job {
        println!("{:<28} statements per job: {n:.1}", args.label);
    }
    if let Some((p50, p99)) = pickup {
        println!(
            "{:<28} pickup (created → dispatched): p50={p50:.2}ms p99={p99:.2}ms",
            args.label
        );
    }
    println!(
        "{:<28} jobs={} concurrency={} finished={} elapsed={:.2}s rate={:.1} jobs/s p50={:.1}ms p95={:.1}ms p99={:.1}ms requests/job={requests_per_job:.2} outcomes={:?}",
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
                   "p99_ms": ms(p99), "outcomes": outcomes, "cpu_us_orchestrator": cpu_orchestrator,
                   "cpu_us_workers": cpu_workers, "cpu_us_client": cpu_client, "pickup_p50_ms": pickup.map(|p| p.0),
                   "pickup_p99_ms": pickup.map(|p| p.1), "requests_per_job": requests_per_job,
                   "cpu_us_database": cpu_database, "statements_per_job": statements_per_job})
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
