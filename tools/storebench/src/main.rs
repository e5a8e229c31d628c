//! `storebench`: the job store at a million jobs (`scripts/bench-store.sh`).
//!
//! - `fill`: copies the one job a SQLite store holds (a real echo job, with
//!   its history) into N finished jobs of the same owner and blueprint, a
//!   millisecond apart, straight into the file (the orchestrator stopped).
//! - `reads`: times what clients and the dashboard read from a running
//!   orchestrator on that store: the first page and a deep page of the job
//!   list with each filter, an old job by id, the dashboard's jobs page.
//! - `listers`: C clients listing jobs in a loop for S seconds (run beside
//!   `loadgen` to see what reads cost the job flow).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use orchestrator::job::{Job, JobEvent};
use orchestrator::storage::sqlite::SqliteStorage;
use orchestrator::storage::{JobCursor, JobWrite, Storage};
use uuid::Uuid;

#[derive(Parser)]
#[command(about = "The job store at a million jobs")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fills the store with copies of the job it holds.
    Fill {
        #[arg(long)]
        db: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        jobs: u64,
    },
    /// Times the reads clients and the dashboard make.
    Reads {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value = "test-client-token")]
        token: String,
        /// As `fill` was given (the deep page's cursor is computed from it).
        #[arg(long, default_value_t = 1_000_000)]
        jobs: u64,
        /// Requests per measurement.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
    /// Clients listing jobs in a loop.
    Listers {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, default_value = "test-client-token")]
        token: String,
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
}

/// When the first copy was created; copy i is i ms later.
fn base() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// The id of copy i (so `reads` can name old jobs).
fn copy_id(i: u64) -> Uuid {
    Uuid::from_u128(0x5354_4f52_4542_454e_4348_0000_0000_0000 | u128::from(i))
}

fn fill(db: &PathBuf, jobs: u64) -> anyhow::Result<()> {
    let (body, events) = {
        let conn = rusqlite::Connection::open(db)?;
        let (id, body): (String, String) = conn
            .query_row(
                "SELECT id, body FROM jobs WHERE status = 'finished' LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .context("the store holds no finished job to copy: run one echo job first")?;
        let storage = SqliteStorage::open(db)?;
        let events = storage.job_events(Uuid::parse_str(&id)?)?;
        (body, events)
    };
    let template: Job = serde_json::from_str(&body)?;
    let storage = SqliteStorage::open(db)?;
    let started = Instant::now();
    let mut i = 0;
    while i < jobs {
        let writes: Vec<JobWrite> = (i..jobs.min(i + 5000))
            .map(|n| {
                let mut job = template.clone();
                job.id = copy_id(n);
                let at = base() + chrono::Duration::milliseconds(n as i64);
                job.created_at = at;
                job.updated_at = at + chrono::Duration::milliseconds(3);
                let events = events
                    .iter()
                    .map(|e| JobEvent { at, ..e.clone() })
                    .collect();
                JobWrite {
                    job,
                    events,
                    webhook: None,
                }
            })
            .collect();
        i += writes.len() as u64;
        storage.write(&writes, &[])?;
    }
    println!(
        "filled {jobs} jobs in {:.1} s (template: {} bytes of body, {} history entries)",
        started.elapsed().as_secs_f64(),
        body.len(),
        events.len()
    );
    Ok(())
}

/// Percentiles of `samples` requests of `path`, in ms.
async fn time(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    paths: &[String],
    samples: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut took = Vec::with_capacity(samples);
    for n in 0..samples {
        let path = &paths[n % paths.len()];
        let started = Instant::now();
        let resp = http
            .get(format!("{url}{path}"))
            .header("X-Client-Token", token)
            .send()
            .await?;
        let status = resp.status();
        resp.bytes().await?;
        if !status.is_success() {
            bail!("{path}: {status}");
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    Ok((at(0.5), at(0.99)))
}

async fn reads(url: &str, token: &str, jobs: u64, samples: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let middle = JobCursor {
        created_at: base() + chrono::Duration::milliseconds((jobs / 2) as i64),
        id: copy_id(jobs / 2),
    };
    println!("| read | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (filter, query) in [
        ("no filter", ""),
        ("status", "&status=finished"),
        ("blueprint", "&blueprint=test_flow"),
        ("status + blueprint", "&status=finished&blueprint=test_flow"),
    ] {
        for (page, extra) in [
            ("first page", String::new()),
            ("offset 10,000", "&offset=10000".to_string()),
            ("page at the middle (cursor)", format!("&after={middle}")),
        ] {
            let path = vec![format!("/api/v1/jobs?limit=20{query}{extra}")];
            let (p50, p99) = time(&http, url, token, &path, samples).await?;
            println!("| list, {filter}, {page} | {p50:.2} | {p99:.2} |");
        }
    }
    let old: Vec<String> = (0..samples as u64)
        .map(|n| {
            format!(
                "/api/v1/jobs/{}",
                copy_id(n * (jobs / samples as u64).max(1))
            )
        })
        .collect();
    let (p50, p99) = time(&http, url, token, &old, samples).await?;
    println!("| an old job by id | {p50:.2} | {p99:.2} |");
    // The dashboard's jobs page: its list and the blueprints for the filter.
    let mut took = Vec::new();
    for _ in 0..samples.min(50) {
        let started = Instant::now();
        for path in ["/api/v1/jobs?limit=25", "/api/v1/blueprints"] {
            time(&http, url, token, &[path.to_string()], 1).await?;
        }
        took.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    took.sort_by(f64::total_cmp);
    println!(
        "| the dashboard's jobs page (list + blueprints) | {:.2} | {:.2} |",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    Ok(())
}

async fn listers(url: &str, token: &str, clients: usize, seconds: u64) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, url, token) = (http.clone(), url.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let pages = ["", "&status=finished", "&blueprint=test_flow"];
            while Instant::now() < until {
                let path = format!("{url}/api/v1/jobs?limit=20{}", pages[(c + n as usize) % 3]);
                let ok = http
                    .get(&path)
                    .header("X-Client-Token", &token)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    println!(
        "{clients} clients listed jobs {total} times in {seconds} s ({:.0}/s)",
        total as f64 / seconds as f64
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Fill { db, jobs } => fill(&db, jobs),
        Command::Reads {
            url,
            token,
            jobs,
            samples,
        } => reads(&url, &token, jobs, samples).await,
        Command::Listers {
            url,
            token,
            clients,
            seconds,
        } => listers(&url, &token, clients, seconds).await,
    }
}
