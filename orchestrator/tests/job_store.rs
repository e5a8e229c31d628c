//! The job store of every backend (memory, SQLite, PostgreSQL), read
//! through the engine, against a reference: each filter combination of the
//! job list, paged by offset and by cursor, and retention deleting exactly
//! the expired ended jobs with their history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../tests/tests/e2e/support/pg.rs"]
mod pg;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use orchestrator::blueprint;
use orchestrator::engine::{Engine, EngineSettings, Store};
use orchestrator::job::{Job, JobEvent, JobStatus};
use orchestrator::storage::memory::MemoryStorage;
use orchestrator::storage::sqlite::SqliteStorage;
use orchestrator::storage::{JobCursor, JobFilter, JobWrite, Storage};
use serde_json::json;
use uuid::Uuid;

/// How a test puts jobs in a backend's store, beside the engine: the
/// storage's own write (one instance), or rows as the engine writes them
/// (PostgreSQL).
enum Seed {
    Local(Arc<dyn Storage>),
    Postgres(tokio_postgres::Client),
}

impl Seed {
    async fn save(&self, jobs: &[Job]) {
        match self {
            Self::Local(storage) => {
                let writes: Vec<JobWrite> = jobs
                    .iter()
                    .map(|j| JobWrite {
                        job: j.clone(),
                        events: vec![event("created"), event("ended")],
                        webhook: None,
                    })
                    .collect();
                storage.write(&writes, &[]).unwrap();
            }
            Self::Postgres(client) => {
                for j in jobs {
                    client
                        .execute(
                            "INSERT INTO jobs (id, blueprint, owner, status, created_at, updated_at, version, body)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                            &[
                                &j.id,
                                &j.blueprint,
                                &j.owner,
                                &j.status.as_str(),
                                &j.created_at,
                                &j.updated_at,
                                &(j.version as i64),
                                &serde_json::to_string(j).unwrap(),
                            ],
                        )
                        .await
                        .unwrap();
                    for e in [event("created"), event("ended")] {
                        client
                            .execute(
                                "INSERT INTO job_events (job_id, at, event, message) VALUES ($1, $2, $3, $4)",
                                &[&j.id, &e.at, &e.event, &e.message],
                            )
                            .await
                            .unwrap();
                    }
                }
            }
        }
    }
}

/// A backend: its name, its engine, how to seed it, and what keeps it
/// alive (its directory or database).
struct Backend {
    name: &'static str,
    engine: Engine,
    seed: Seed,
    _keep: Box<dyn std::any::Any>,
}

async fn engine(store: Store) -> Engine {
    let bp = blueprint::parse(
        "x.toml",
        "name = \"x\"\napi_endpoint = \"/jobs/x\"\n[states.start]\nstart = true\nend = \"finished\"\n",
    )
    .unwrap();
    Engine::start(vec![bp], store, EngineSettings::default())
        .await
        .unwrap()
}

async fn backends() -> Vec<Backend> {
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::default());
    let dir = tempfile::tempdir().unwrap();
    let sqlite: Arc<dyn Storage> =
        Arc::new(SqliteStorage::open(&dir.path().join("jobs.db")).unwrap());
    let db = pg::TestDatabase::create().await;
    let pg_engine = engine(Store::Postgres(db.url.clone())).await;
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    vec![
        Backend {
            name: "memory",
            engine: engine(Store::Local(memory.clone())).await,
            seed: Seed::Local(memory),
            _keep: Box::new(()),
        },
        Backend {
            name: "sqlite",
            engine: engine(Store::Local(sqlite.clone())).await,
            seed: Seed::Local(sqlite),
            _keep: Box::new(dir),
        },
        Backend {
            name: "postgres",
            engine: pg_engine,
            seed: Seed::Postgres(client),
            _keep: Box::new(db),
        },
    ]
}

fn job(owner: &str, status: JobStatus, blueprint: &str, created: DateTime<Utc>) -> Job {
    serde_json::from_value(json!({
        "id": Uuid::new_v4(), "blueprint": blueprint, "owner": owner, "status": status,
        "current_state": "start", "initial_data": {"n": 1}, "results": {}, "state_history": [],
        "transitions": 0, "created_at": created, "updated_at": created, "version": 1
    }))
    .unwrap()
}

fn event(text: &str) -> JobEvent {
    JobEvent {
        at: Utc::now(),
        event: text.into(),
        message: format!("{text} happened"),
        task: None,
    }
}

fn ids(jobs: &[Job]) -> Vec<Uuid> {
    jobs.iter().map(|j| j.id).collect()
}

#[tokio::test]
async fn every_filter_combination_pages_like_the_reference() {
    // Whole milliseconds (PostgreSQL keeps microseconds), three jobs per
    // instant so ties are ordered by id.
    let base = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123Z")
        .unwrap()
        .with_timezone(&Utc);
    let statuses = [
        JobStatus::Finished,
        JobStatus::Failed,
        JobStatus::Running,
        JobStatus::Cancelled,
    ];
    let jobs: Vec<Job> = (0..240)
        .map(|i| {
            job(
                ["alice", "bob"][i % 2],
                statuses[(i / 2) % 4],
                ["x", "y", "z"][i % 3],
                base + Duration::milliseconds((i / 3) as i64),
            )
        })
        .collect();
    for Backend {
        name, engine, seed, ..
    } in backends().await
    {
        seed.save(&jobs).await;
        for owner in [None, Some("alice")] {
            for status in [None, Some(JobStatus::Finished)] {
                for blueprint in [None, Some("x")] {
                    let mut want: Vec<&Job> = jobs
                        .iter()
                        .filter(|j| owner.is_none_or(|o| j.owner == o))
                        .filter(|j| status.is_none_or(|s| j.status == s))
                        .filter(|j| blueprint.is_none_or(|b| j.blueprint == b))
                        .collect();
                    want.sort_by_key(|j| std::cmp::Reverse((j.created_at, j.id)));
                    let want: Vec<Uuid> = want.iter().map(|j| j.id).collect();
                    let filter = JobFilter {
                        owner: owner.map(str::to_string),
                        status,
                        blueprint: blueprint.map(str::to_string),
                        limit: 1000,
                        ..Default::default()
                    };
                    let what = format!("{name}: {owner:?} {status:?} {blueprint:?}");
                    assert!(!want.is_empty(), "{what}");
                    let all = engine.list_jobs(filter.clone()).await.unwrap();
                    assert_eq!(ids(&all), want, "{what}: one page");
                    let by_offset = engine
                        .list_jobs(JobFilter {
                            offset: 3,
                            limit: 5,
                            ..filter.clone()
                        })
                        .await
                        .unwrap();
                    assert_eq!(ids(&by_offset), want[3..8.min(want.len())], "{what}");
                    // Pages of 7 by cursor: every job once, in order.
                    let mut walked = Vec::new();
                    let mut after = None;
                    loop {
                        let page = engine
                            .list_jobs(JobFilter {
                                limit: 7,
                                after,
                                ..filter.clone()
                            })
                            .await
                            .unwrap();
                        walked.extend(ids(&page));
                        match page.last() {
                            Some(last) if page.len() == 7 => after = Some(JobCursor::of(last)),
                            _ => break,
                        }
                    }
                    assert_eq!(walked, want, "{what}: by cursor");
                }
            }
        }
    }
}

#[test]
fn a_cursor_survives_its_text_form() {
    let cursor = JobCursor {
        created_at: Utc::now(),
        id: Uuid::new_v4(),
    };
    let text = cursor.to_string();
    assert_eq!(text.parse::<JobCursor>().unwrap(), cursor);
    for bad in ["", "x", "12", "12-nothex", "-", "1.5-0123"] {
        assert!(bad.parse::<JobCursor>().is_err(), "{bad}");
    }
}

#[tokio::test]
async fn retention_deletes_exactly_the_expired_ended_jobs_and_their_history() {
    let now = Utc::now();
    let old = now - Duration::hours(2);
    let recent = now - Duration::minutes(10);
    let cutoff = now - Duration::hours(1);
    for Backend {
        name, engine, seed, ..
    } in backends().await
    {
        let mut expired = Vec::new();
        let mut kept = Vec::new();
        for status in [JobStatus::Finished, JobStatus::Failed, JobStatus::Cancelled] {
            for _ in 0..3 {
                expired.push(job("alice", status, "x", old));
            }
            kept.push(job("alice", status, "x", recent));
        }
        // Old, but quarantined (kept until handled) or still running.
        kept.push(job("alice", JobStatus::Quarantined, "x", old));
        kept.push(job("alice", JobStatus::Running, "x", old));
        seed.save(&expired).await;
        seed.save(&kept).await;
        // Batches of 4: three passes, the last one short.
        let mut deleted = Vec::new();
        loop {
            let batch = engine.delete_ended(cutoff, 4).await.unwrap();
            let done = batch.len() < 4;
            deleted.extend(batch);
            if done {
                break;
            }
        }
        deleted.sort();
        let mut want = ids(&expired);
        want.sort();
        assert_eq!(deleted, want, "{name}");
        for j in &expired {
            assert!(engine.get_job(j.id).await.unwrap().is_none(), "{name}");
            assert!(engine.job_events(j.id).await.unwrap().is_empty(), "{name}");
        }
        for j in &kept {
            assert!(engine.get_job(j.id).await.unwrap().is_some(), "{name}");
            assert_eq!(engine.job_events(j.id).await.unwrap().len(), 2, "{name}");
        }
        assert!(
            engine.delete_ended(cutoff, 4).await.unwrap().is_empty(),
            "{name}"
        );
    }
}
