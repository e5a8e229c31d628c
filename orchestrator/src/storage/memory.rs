//! In-memory storage: fast, and gone when the process stops.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    BlueprintRow, JobFilter, JobWrite, PendingWebhook, PluginVersionRow, RegistryRows,
    RegistryStorage, Storage, StorageError,
};
use crate::job::{Job, JobEvent};

#[derive(Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    jobs: HashMap<Uuid, Job>,
    events: HashMap<Uuid, Vec<JobEvent>>,
    webhooks: Vec<PendingWebhook>,
    registry: RegistryRows,
    components: HashMap<String, Vec<u8>>,
    schedules: std::collections::BTreeMap<String, super::ScheduleRow>,
    keys: super::idempotency::KeyMap,
    usage: super::usage::UsageMap,
}

impl MemoryStorage {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn write(&self, writes: &[JobWrite], delivered: &[Uuid]) -> Result<(), StorageError> {
        let mut inner = self.lock();
        for w in writes {
            if let Some(hook) = &w.webhook {
                inner.webhooks.push(hook.clone());
            }
            let newer = inner
                .jobs
                .get(&w.job.id)
                .is_none_or(|old| old.version < w.job.version);
            if newer {
                inner.jobs.insert(w.job.id, w.job.clone());
            }
            inner
                .events
                .entry(w.job.id)
                .or_default()
                .extend(w.events.iter().cloned());
        }
        inner.webhooks.retain(|h| !delivered.contains(&h.job_id));
        Ok(())
    }

    fn pending_webhooks(&self) -> Result<Vec<PendingWebhook>, StorageError> {
        Ok(self.lock().webhooks.clone())
    }

    fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        Ok(self.lock().jobs.get(&id).cloned())
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StorageError> {
        let inner = self.lock();
        let mut jobs: Vec<&Job> = inner
            .jobs
            .values()
            .filter(|j| filter.owner.as_ref().is_none_or(|o| &j.owner == o))
            .filter(|j| filter.status.is_none_or(|s| j.status == s))
            .filter(|j| filter.blueprint.as_ref().is_none_or(|b| &j.blueprint == b))
            .filter(|j| filter.after.is_none_or(|c| c.has_below(j)))
            .collect();
        jobs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        Ok(jobs
            .into_iter()
            .skip(filter.offset)
            .take(filter.limit)
            .cloned()
            .collect())
    }

    fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, StorageError> {
        Ok(self.lock().events.get(&id).cloned().unwrap_or_default())
    }

    fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Uuid>, StorageError> {
        let mut inner = self.lock();
        let ids: Vec<Uuid> = inner
            .jobs
            .values()
            .filter(|j| j.status.is_terminal() && j.status != crate::job::JobStatus::Quarantined)
            .filter(|j| j.updated_at < before)
            .map(|j| j.id)
            .take(limit)
            .collect();
        for id in &ids {
            inner.jobs.remove(id);
            inner.events.remove(id);
        }
        inner.webhooks.retain(|h| !ids.contains(&h.job_id));
        Ok(ids)
    }

    fn unfinished_jobs(&self) -> Result<Vec<Job>, StorageError> {
        let inner = self.lock();
        let mut jobs: Vec<Job> = inner
            .jobs
            .values()
            .filter(|j| !j.status.is_terminal())
            .cloned()
            .collect();
        jobs.sort_by_key(|j| j.created_at);
        Ok(jobs)
    }

    fn describe(&self) -> String {
        "in-memory storage (nothing survives a restart)".into()
    }
}

impl super::UsageStorage for MemoryStorage {
    fn add_usage(
        &self,
        deltas: &[(super::UsageKey, u64)],
    ) -> Result<Vec<(super::UsageKey, u64)>, StorageError> {
        Ok(super::usage::add_in(&mut self.lock().usage, deltas))
    }
}

impl super::KeyStorage for MemoryStorage {
    fn claim_key(
        &self,
        owner: &str,
        key: &str,
        job: Uuid,
        now: DateTime<Utc>,
        expired: DateTime<Utc>,
    ) -> Result<Option<super::HeldKey>, StorageError> {
        let keys = &mut self.lock().keys;
        Ok(super::idempotency::claim_in(
            keys, owner, key, job, now, expired,
        ))
    }

    fn release_key(&self, owner: &str, key: &str, job: Uuid) -> Result<(), StorageError> {
        let keys = &mut self.lock().keys;
        let k = (owner.to_string(), key.to_string());
        if keys.get(&k).is_some_and(|h| h.job == job) {
            keys.remove(&k);
        }
        Ok(())
    }

    fn replace_key(
        &self,
        owner: &str,
        key: &str,
        old: Uuid,
        new: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let keys = &mut self.lock().keys;
        Ok(super::idempotency::replace_in(
            keys, owner, key, old, new, now,
        ))
    }

    fn prune_keys(&self, expired: DateTime<Utc>) -> Result<usize, StorageError> {
        let keys = &mut self.lock().keys;
        let before = keys.len();
        keys.retain(|_, h| h.at >= expired);
        Ok(before - keys.len())
    }
}

impl super::ScheduleStorage for MemoryStorage {
    fn schedule_rows(&self) -> Result<Vec<super::ScheduleRow>, StorageError> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    fn change_schedule(
        &self,
        name: &str,
        change: &super::ScheduleChange,
    ) -> Result<bool, StorageError> {
        Ok(super::schedules::apply(
            &mut self.lock().schedules,
            name,
            change,
        ))
    }
}

impl RegistryStorage for MemoryStorage {
    fn registry_rows(&self) -> Result<RegistryRows, StorageError> {
        Ok(self.lock().registry.clone())
    }

    fn put_plugin(&self, row: &PluginVersionRow, component: &[u8]) -> Result<u32, StorageError> {
        let mut inner = self.lock();
        inner
            .components
            .entry(row.sha256.clone())
            .or_insert_with(|| component.to_vec());
        let version = 1 + inner
            .registry
            .plugins
            .iter()
            .filter(|p| p.name == row.name)
            .map(|p| p.version)
            .max()
            .unwrap_or(0);
        inner.registry.plugins.push(PluginVersionRow {
            version,
            ..row.clone()
        });
        drop(inner);
        self.set_plugin_current(&row.name, Some(version))?;
        Ok(version)
    }

    fn set_plugin_current(&self, name: &str, version: Option<u32>) -> Result<(), StorageError> {
        let current = &mut self.lock().registry.current;
        current.retain(|(n, _)| n != name);
        current.push((name.to_string(), version));
        Ok(())
    }

    fn plugin_component(&self, sha256: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().components.get(sha256).cloned())
    }

    fn put_blueprint(&self, row: &BlueprintRow) -> Result<u32, StorageError> {
        let blueprints = &mut self.lock().registry.blueprints;
        let latest = blueprints
            .iter()
            .filter(|b| b.name == row.name)
            .max_by_key(|b| b.version);
        let version = match latest {
            Some(b) if b.text == row.text => return Ok(b.version),
            Some(b) => b.version + 1,
            None => 1,
        };
        blueprints.push(BlueprintRow {
            version,
            ..row.clone()
        });
        Ok(version)
    }
}
