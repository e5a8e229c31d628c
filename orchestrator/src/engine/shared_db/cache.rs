//! Job reads answered from this instance's memory on a shared database.
//!
//! Clients poll `GET /jobs/{id}` many times per job; each poll was a query.
//! An instance now keeps the jobs it wrote or read, and forgets one as soon
//! as another instance says it changed it (the `jobs` notification carries
//! the ids each instance changed, see [`super::SharedDb::notifier`]). Three
//! bounds keep a missed notification harmless: an entry is served for at
//! most [`FRESH_FOR`]; the whole cache is dropped when the listening
//! connection is lost (notifications may have been missed); a read that
//! raced with a change elsewhere is not kept ([`JobCache::epoch`]).
//!
//! One instance alone never evicts: its own writes replace its entries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::job::Job;

/// Longest an entry is served without a read of the database.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(2);

struct Entry {
    job: Job,
    at: Instant,
}

pub(super) struct JobCache {
    entries: Mutex<HashMap<Uuid, Entry>>,
    /// Counts evictions: a read made across one may be stale, and is not
    /// kept.
    evictions: AtomicU64,
    /// Most entries.
    cap: usize,
}

impl JobCache {
    pub fn new(cap: usize) -> Self {
        Self {
            entries: Mutex::default(),
            evictions: AtomicU64::new(0),
            cap: cap.max(16),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job as last written or read here, if fresh.
    pub fn get(&self, id: Uuid) -> Option<Job> {
        let entries = self.entries();
        let entry = entries.get(&id)?;
        (entry.at.elapsed() < FRESH_FOR).then(|| entry.job.clone())
    }

    /// To pass to [`Self::read`]: taken before the database is read.
    pub fn epoch(&self) -> u64 {
        self.evictions.load(Ordering::Acquire)
    }

    /// Keeps a job read from the database at `epoch`, unless something was
    /// evicted since (the read may predate that change).
    pub fn read(&self, job: &Job, epoch: u64) {
        let mut entries = self.entries();
        if self.evictions.load(Ordering::Acquire) != epoch {
            return;
        }
        self.keep(&mut entries, job.clone());
    }

    /// Keeps jobs this instance just committed.
    pub fn wrote(&self, jobs: Vec<Job>) {
        let mut entries = self.entries();
        for job in jobs {
            self.keep(&mut entries, job);
        }
    }

    fn keep(&self, entries: &mut HashMap<Uuid, Entry>, job: Job) {
        if entries
            .get(&job.id)
            .is_some_and(|e| e.job.version > job.version)
        {
            return;
        }
        if entries.len() >= self.cap && !entries.contains_key(&job.id) {
            entries.retain(|_, e| e.at.elapsed() < FRESH_FOR);
            if entries.len() >= self.cap {
                entries.clear();
            }
        }
        entries.insert(
            job.id,
            Entry {
                job,
                at: Instant::now(),
            },
        );
    }

    /// Another instance changed these jobs.
    pub fn evict(&self, ids: impl IntoIterator<Item = Uuid>) {
        let mut entries = self.entries();
        self.evictions.fetch_add(1, Ordering::AcqRel);
        for id in ids {
            entries.remove(&id);
        }
    }

    /// Everything (notifications may have been missed).
    pub fn clear(&self) {
        let mut entries = self.entries();
        self.evictions.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(version: u64) -> Job {
        let mut job: Job = serde_json::from_value(serde_json::json!({
            "id": "0192f0c4-0000-7000-8000-000000000001",
            "blueprint": "b", "blueprint_version": 1, "owner": "o",
            "status": "pending", "current_state": "s", "initial_data": {}, "results": {},
            "state_history": [], "transitions": 0, "version": 0,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
        }))
        .unwrap();
        job.version = version;
        job
    }

    #[test]
    fn a_newer_version_is_never_replaced_by_an_older_one() {
        let cache = JobCache::new(100);
        let id = job(0).id;
        cache.wrote(vec![job(3)]);
        cache.wrote(vec![job(2)]);
        assert_eq!(cache.get(id).unwrap().version, 3);
        cache.read(&job(1), cache.epoch());
        assert_eq!(cache.get(id).unwrap().version, 3);
    }

    #[test]
    fn a_read_across_an_eviction_is_not_kept() {
        let cache = JobCache::new(100);
        let id = job(0).id;
        let epoch = cache.epoch();
        cache.evict([id]);
        cache.read(&job(1), epoch);
        assert!(cache.get(id).is_none());
        cache.read(&job(1), cache.epoch());
        assert_eq!(cache.get(id).unwrap().version, 1);
        cache.clear();
        assert!(cache.get(id).is_none());
    }
}
