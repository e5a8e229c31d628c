//! The job store of every backend (memory, SQLite, PostgreSQL) against a
//! reference: each filter combination of the job list, paged by offset and
//! by cursor, and retention deleting exactly the expired ended jobs with
//! their history.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use orchestrator::job::{Job, JobEvent, JobStatus};
use orchestrator::storage::memory::MemoryStorage;
use orchestrator::storage::postgres::PostgresStorage;
use orchestrator::storage::sqlite::SqliteStorage;
use orchestrator::storage::{JobCursor, JobFilter, JobWrite, Storage};
use serde_json::json;
use uuid::Uuid;

/// A database of its own on the machine's PostgreSQL, dropped at the end.
struct PgDatabase {
    name: String,
}

fn admin_url() -> String {
    std::env::var("E2E_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

impl PgDatabase {
    fn create() -> (Self, String) {
        let name = format!("store_{}", Uuid::new_v4().simple());
        let mut admin = postgres::Client::connect(&admin_url(), postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let base = admin_url();
        let url = format!("{}/{name}", &base[..base.rfind('/').unwrap()]);
        (Self { name }, url)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = postgres::Client::connect(&admin_url(), postgres::NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// A backend's name, the store, and what keeps it alive (its directory or
/// database).
type Backend = (&'static str, Arc<dyn Storage>, Box<dyn std::any::Any>);

fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(SqliteStorage::open(&dir.path().join("jobs.db")).unwrap());
    let (pg, url) = PgDatabase::create();
    let postgres = Arc::new(PostgresStorage::open(&url).unwrap());
    vec![
        ("memory", Arc::new(MemoryStorage::default()), Box::new(())),
        ("sqlite", sqlite, Box::new(dir)),
        ("postgres", postgres, Box::new(pg)),
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

fn save(storage: &dyn Storage, jobs: &[Job]) {
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

fn ids(jobs: &[Job]) -> Vec<Uuid> {
    jobs.iter().map(|j| j.id).collect()
}

#[test]
fn every_filter_combination_pages_like_the_reference() {
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
    for (name, storage, _keep) in backends() {
        save(storage.as_ref(), &jobs);
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
                    let all = storage.list_jobs(&filter).unwrap();
                    assert_eq!(ids(&all), want, "{what}: one page");
                    let by_offset = storage
                        .list_jobs(&JobFilter {
                            offset: 3,
                            limit: 5,
                            ..filter.clone()
                        })
                        .unwrap();
                    assert_eq!(ids(&by_offset), want[3..8.min(want.len())], "{what}");
                    // Pages of 7 by cursor: every job once, in order.
                    let mut walked = Vec::new();
                    let mut after = None;
                    loop {
                        let page = storage
                            .list_jobs(&JobFilter {
                                limit: 7,
                                after,
                                ..filter.clone()
                            })
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

#[test]
fn retention_deletes_exactly_the_expired_ended_jobs_and_their_history() {
    let now = Utc::now();
    let old = now - Duration::hours(2);
    let recent = now - Duration::minutes(10);
    let cutoff = now - Duration::hours(1);
    for (name, storage, _keep) in backends() {
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
        save(storage.as_ref(), &expired);
        save(storage.as_ref(), &kept);
        // Batches of 4: three passes, the last one short.
        let mut deleted = Vec::new();
        loop {
            let batch = storage.delete_ended(cutoff, 4).unwrap();
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
            assert!(storage.get_job(j.id).unwrap().is_none(), "{name}");
            assert!(storage.job_events(j.id).unwrap().is_empty(), "{name}");
        }
        for j in &kept {
            assert!(storage.get_job(j.id).unwrap().is_some(), "{name}");
            assert_eq!(storage.job_events(j.id).unwrap().len(), 2, "{name}");
        }
        assert!(
            storage.delete_ended(cutoff, 4).unwrap().is_empty(),
            "{name}"
        );
    }
}
