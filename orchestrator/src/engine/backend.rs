//! Where the engine keeps its state: the only place that looks at which
//! backend runs, one `match` per operation.
//!
//! - [`Local`]: one instance; memory plus the ordered writer over SQLite or
//!   memory storage.
//! - [`SharedDb`]: several instances on one PostgreSQL database, the source
//!   of truth.
//!
//! Both run the same state machine ([`super::machine`]) and hand its
//! effects to the same [`super::effects::AfterCommit::apply`].

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::effects::{Take, Wake};
use super::local::Local;
use super::shared_db::SharedDb;
use super::workers::WorkerView;
use super::{Engine, EngineError, NewJob, Shared, machine};
use crate::blueprint::Blueprint;
use crate::job::{Job, JobEvent};
use crate::storage::{
    BlueprintRow, Deploys, HeldKey, JobFilter, Keys, PendingWebhook, PluginVersionRow,
    RegistryRows, ScheduleChange, ScheduleRow, Schedules, StorageError,
};

// One per engine: the size of the local variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    Local(Local),
    Shared(Arc<SharedDb>),
}

impl Backend {
    pub(crate) fn local(&self) -> Option<&Local> {
        match self {
            Self::Local(local) => Some(local),
            Self::Shared(_) => None,
        }
    }

    /// The shared database, when instances share one.
    pub(crate) fn shared_db(&self) -> Option<&Arc<SharedDb>> {
        match self {
            Self::Local(_) => None,
            Self::Shared(db) => Some(db),
        }
    }

    /// Webhooks owed from before this instance started: all those stored
    /// (one instance), or those whose deliverer's lease ran out (shared).
    pub(crate) async fn pending_webhooks(
        &self,
        shared: &Shared,
    ) -> Result<Vec<PendingWebhook>, StorageError> {
        match self {
            Self::Local(local) => local.blocking(|s| s.pending_webhooks()).await,
            Self::Shared(db) => Ok(db.orphaned_webhooks(shared.settings.webhook_lease).await?),
        }
    }

    /// Starts what runs in the background: the timer loop (one instance),
    /// or the notification listener and the maintenance loop (shared).
    pub(crate) async fn start(&self, engine: &Engine) -> Result<(), StorageError> {
        match self {
            Self::Local(local) => local.start(&engine.shared).await,
            Self::Shared(db) => {
                db.start(engine);
                Ok(())
            }
        }
    }

    /// Tells other instances what an event did (shared only: one instance's
    /// waiters are woken by the machine).
    pub(crate) fn announce(&self, queued: bool, ended: bool) {
        if let Self::Shared(db) = self {
            db.announce(queued, ended);
        }
    }

    pub(crate) async fn create(
        &self,
        shared: &Arc<Shared>,
        id: Uuid,
        bp: &Arc<Blueprint>,
        new: NewJob,
    ) -> Result<(), EngineError> {
        match self {
            Self::Local(local) => local.create(shared, id, bp, new).await,
            Self::Shared(db) => db.create(shared, id, bp, new).await,
        }
    }

    /// Waits until every change made so far is durable.
    pub(crate) async fn sync(&self) {
        match self {
            Self::Local(local) => local.sync().await,
            // Each change is committed before it is answered.
            Self::Shared(_) => {}
        }
    }

    pub(crate) async fn get_job(&self, id: Uuid) -> Result<Option<Job>, StorageError> {
        match self {
            Self::Local(local) => local.get_job(id).await,
            Self::Shared(db) => Ok(db.get_job(id).await?),
        }
    }

    pub(crate) fn with_job_in_memory<T>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Job, Option<String>) -> T,
    ) -> Option<T> {
        match self {
            Self::Local(local) => local.with_job_in_memory(id, f),
            Self::Shared(_) => None,
        }
    }

    /// A wake-up for when job `id` ends; `None` if it has ended (or does
    /// not exist).
    pub(crate) async fn end_of(&self, id: Uuid) -> Option<Wake> {
        match self {
            Self::Local(local) => local.end_of(id),
            Self::Shared(db) => db.end_of(id).await,
        }
    }

    pub(crate) async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<Job>, StorageError> {
        match self {
            Self::Local(local) => local.blocking(move |s| s.list_jobs(&filter)).await,
            Self::Shared(db) => Ok(db.list_jobs(&filter).await?),
        }
    }

    pub(crate) async fn job_events(&self, id: Uuid) -> Result<Vec<JobEvent>, StorageError> {
        match self {
            Self::Local(local) => local.blocking(move |s| s.job_events(id)).await,
            Self::Shared(db) => Ok(db.job_events(id).await?),
        }
    }

    pub(crate) async fn cancel(
        &self,
        shared: &Arc<Shared>,
        id: Uuid,
        owner: &str,
    ) -> Result<(), EngineError> {
        match self {
            Self::Local(local) => machine::cancel(&mut local.tx(shared), id, owner),
            Self::Shared(db) => db.cancel(shared, id, owner).await,
        }
    }

    pub(crate) async fn signal(
        &self,
        shared: &Arc<Shared>,
        signal: machine::Signal,
    ) -> Result<(), EngineError> {
        match self {
            Self::Local(local) => machine::signal(shared, &mut local.tx(shared), &signal),
            Self::Shared(db) => db.signal(shared, signal).await,
        }
    }

    /// Why `job`, which waits for a worker, waits.
    pub(crate) async fn waiting_reason(&self, job: &Job) -> Option<String> {
        match self {
            Self::Local(local) => machine::waiting_reason(&local.lock(), job),
            Self::Shared(db) => db.waiting_reason(job).await.ok().flatten(),
        }
    }

    pub(crate) async fn register(
        &self,
        shared: &Arc<Shared>,
        reg: &rxon::WorkerRegistration,
    ) -> Result<(), EngineError> {
        match self {
            Self::Local(local) => local.register(shared, reg),
            Self::Shared(db) => db.register(shared, reg).await,
        }
    }

    /// Records a replay key; false when seen already by another instance
    /// (one instance alone checks in memory, in [`crate::api::auth::Auth`]).
    pub(crate) async fn remember_nonce(&self, key: &str) -> Result<bool, EngineError> {
        match self {
            Self::Local(_) => Ok(true),
            Self::Shared(db) => Ok(db.remember_nonce(key).await?),
        }
    }

    pub(crate) async fn heartbeat(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        hb: Option<&rxon::Heartbeat>,
    ) -> Result<Option<rxon::HeartbeatResponse>, EngineError> {
        match self {
            Self::Local(local) => Ok(machine::heartbeat(
                shared,
                &mut local.tx(shared),
                worker_id,
                hb,
            )),
            Self::Shared(db) => Ok(db.heartbeat(shared, worker_id, hb).await?),
        }
    }

    pub(crate) async fn channel_lost(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        grace: Duration,
    ) -> Result<(), EngineError> {
        match self {
            Self::Local(local) => {
                machine::channel_lost(&mut local.tx(shared), worker_id, grace);
                Ok(())
            }
            Self::Shared(db) => Ok(db.channel_lost(worker_id, grace).await?),
        }
    }

    pub(crate) async fn workers(&self) -> Result<Vec<WorkerView>, EngineError> {
        match self {
            Self::Local(local) => Ok(local.workers()),
            Self::Shared(db) => Ok(db.worker_views().await?),
        }
    }

    pub(crate) async fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot, EngineError> {
        match self {
            Self::Local(local) => Ok(local.metrics_snapshot()),
            Self::Shared(db) => Ok(db.metrics_snapshot().await?),
        }
    }

    /// The next task `worker_id` can run, if one is queued, and the
    /// wake-up for when one is (registered before looking).
    pub(crate) async fn take(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
    ) -> Result<Take, EngineError> {
        match self {
            Self::Local(local) => local.take(shared, worker_id),
            Self::Shared(db) => {
                let wake = Wake::armed(db.tasks.clone());
                let (task, again_at, standing) = db.take(shared, worker_id).await?;
                Ok(Take {
                    task,
                    wake,
                    again_at,
                    standing,
                })
            }
        }
    }

    pub(crate) async fn apply_result(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        result: rxon::TaskResult,
    ) -> Result<rxon::ResultResponse, EngineError> {
        match self {
            Self::Local(local) => Ok(machine::apply_result(
                shared,
                &mut local.tx(shared),
                worker_id,
                &result,
            )),
            Self::Shared(db) => Ok(db.apply_result(shared, worker_id, result).await?),
        }
    }

    pub(crate) async fn worker_event(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        event: &rxon::WorkerEventPayload,
    ) -> Result<(), EngineError> {
        match self {
            Self::Local(local) => {
                machine::worker_event(shared, &mut local.tx(shared), worker_id, event)
            }
            Self::Shared(db) => db.worker_event(shared, worker_id, event).await,
        }
    }

    /// Before a webhook's next attempt: still this instance's to deliver.
    pub(crate) async fn renew_webhook(&self, job_id: Uuid) -> Result<(), EngineError> {
        match self {
            Self::Local(_) => Ok(()),
            Self::Shared(db) => Ok(db.renew_webhook(job_id).await?),
        }
    }

    /// A webhook is done with (delivered or given up): its row goes.
    pub(crate) async fn webhook_done(&self, job_id: Uuid) -> Result<(), EngineError> {
        match self {
            Self::Local(local) => {
                local.webhook_done(job_id);
                Ok(())
            }
            Self::Shared(db) => Ok(db.webhook_done(job_id).await?),
        }
    }

    /// Deletes up to `batch` jobs that ended before `before`, with their
    /// history; their ids.
    pub(crate) async fn delete_ended(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        batch: usize,
    ) -> Result<Vec<Uuid>, StorageError> {
        match self {
            Self::Local(local) => {
                let ids = local
                    .blocking(move |s| s.delete_ended(before, batch))
                    .await?;
                local.forget(&ids);
                Ok(ids)
            }
            Self::Shared(db) => Ok(db.delete_ended(before, batch).await?),
        }
    }
}

#[async_trait::async_trait]
impl Keys for Backend {
    async fn claim_key(
        &self,
        owner: &str,
        key: &str,
        job: Uuid,
        expired: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<HeldKey>, StorageError> {
        match self {
            Self::Local(local) => {
                let (owner, key) = (owner.to_string(), key.to_string());
                let now = chrono::Utc::now();
                local
                    .blocking(move |s| s.claim_key(&owner, &key, job, now, expired))
                    .await
            }
            Self::Shared(db) => Ok(db.claim_key(owner, key, job, expired).await?),
        }
    }

    async fn release_key(&self, owner: &str, key: &str, job: Uuid) -> Result<(), StorageError> {
        match self {
            Self::Local(local) => {
                let (owner, key) = (owner.to_string(), key.to_string());
                local
                    .blocking(move |s| s.release_key(&owner, &key, job))
                    .await
            }
            Self::Shared(db) => Ok(db.release_key(owner, key, job).await?),
        }
    }

    async fn replace_key(
        &self,
        owner: &str,
        key: &str,
        old: Uuid,
        new: Uuid,
    ) -> Result<bool, StorageError> {
        match self {
            Self::Local(local) => {
                let (owner, key) = (owner.to_string(), key.to_string());
                let now = chrono::Utc::now();
                local
                    .blocking(move |s| s.replace_key(&owner, &key, old, new, now))
                    .await
            }
            Self::Shared(db) => Ok(db.replace_key(owner, key, old, new).await?),
        }
    }

    async fn prune_keys(
        &self,
        expired: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, StorageError> {
        match self {
            Self::Local(local) => local.blocking(move |s| s.prune_keys(expired)).await,
            Self::Shared(db) => Ok(db.prune_keys(expired).await?),
        }
    }
}

impl Backend {
    /// Adds clients' usage counts; the totals after (every instance's).
    pub(crate) async fn add_usage(
        &self,
        deltas: Vec<(crate::storage::UsageKey, u64)>,
    ) -> Result<Vec<(crate::storage::UsageKey, u64)>, StorageError> {
        match self {
            Self::Local(local) => local.blocking(move |s| s.add_usage(&deltas)).await,
            Self::Shared(db) => Ok(db.add_usage(&deltas).await?),
        }
    }
}

#[async_trait::async_trait]
impl Schedules for Backend {
    async fn schedule_rows(&self) -> Result<Vec<ScheduleRow>, StorageError> {
        match self {
            Self::Local(local) => local.blocking(|s| s.schedule_rows()).await,
            Self::Shared(db) => Ok(db.schedule_rows().await?),
        }
    }

    async fn change_schedule(
        &self,
        name: &str,
        change: ScheduleChange,
    ) -> Result<bool, StorageError> {
        match self {
            Self::Local(local) => {
                let name = name.to_string();
                local
                    .blocking(move |s| s.change_schedule(&name, &change))
                    .await
            }
            Self::Shared(db) => Ok(db.change_schedule(name, &change).await?),
        }
    }
}

#[async_trait::async_trait]
impl Deploys for Backend {
    async fn registry_rows(&self) -> Result<RegistryRows, StorageError> {
        match self {
            Self::Local(local) => local.blocking(|s| s.registry_rows()).await,
            Self::Shared(db) => Ok(db.registry_rows().await?),
        }
    }

    async fn put_plugin(
        &self,
        row: PluginVersionRow,
        component: Vec<u8>,
    ) -> Result<u32, StorageError> {
        match self {
            Self::Local(local) => {
                local
                    .blocking(move |s| s.put_plugin(&row, &component))
                    .await
            }
            Self::Shared(db) => Ok(db.put_plugin(&row, &component).await?),
        }
    }

    async fn set_plugin_current(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<(), StorageError> {
        match self {
            Self::Local(local) => {
                let name = name.to_string();
                local
                    .blocking(move |s| s.set_plugin_current(&name, version))
                    .await
            }
            Self::Shared(db) => Ok(db.set_plugin_current(name, version).await?),
        }
    }

    async fn stream_plugin_component(
        &self,
        sha256: &str,
        out: tokio::sync::mpsc::Sender<bytes::Bytes>,
    ) -> Result<bool, StorageError> {
        match self {
            Self::Local(local) => {
                let sha256 = sha256.to_string();
                local
                    .blocking(move |s| s.stream_plugin_component(&sha256, &out))
                    .await
            }
            Self::Shared(db) => Ok(db.stream_plugin_component(sha256, out).await?),
        }
    }

    async fn put_blueprint(&self, row: BlueprintRow) -> Result<u32, StorageError> {
        match self {
            Self::Local(local) => local.blocking(move |s| s.put_blueprint(&row)).await,
            Self::Shared(db) => Ok(db.put_blueprint(&row).await?),
        }
    }
}
