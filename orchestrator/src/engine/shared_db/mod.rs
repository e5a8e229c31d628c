//! Several orchestrator instances on one PostgreSQL database: the database
//! is the source of truth for jobs, the task queue, timers, task leases,
//! worker registrations and replay nonces, and any instance serves any
//! client or worker.
//!
//! - Every event (create, take, result, heartbeat, timer, cancel…) is one
//!   transaction that locks the rows it touches, runs the same state machine
//!   as the in-memory engine over them, and writes back what changed
//!   ([`scratch`]: one call of `engine_load`, one write statement); a job is
//!   written as a compare-and-set on its version. This file: the events.
//! - [`take`]: workers claim queue entries (`FOR UPDATE SKIP LOCKED`).
//! - [`maintenance`]: timers are claimed the same way by whichever instance
//!   sees them due first (the database's clock decides), expired workers
//!   likewise; [`glance`] is its one look per tick.
//! - [`notify`]: `LISTEN/NOTIFY` wakes long-polls and `?wait=` on every
//!   instance (they wait on nothing else) and names changed jobs, which
//!   [`cache`] then forgets; reads of jobs come from [`cache`] or [`reads`].
//! - [`workers`], [`webhooks`], [`sessions`], [`retention`], [`unreadable`]:
//!   the rest of what instances share.

mod batch;
mod cache;
mod glance;
mod keys;
mod maintenance;
mod migrate;
mod notify;
mod pipeline;
mod reads;
mod registry;
mod retention;
mod schedules;
mod scratch;
mod sessions;
mod take;
mod unreadable;
mod usage;
mod webhooks;
mod workers;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::effects::Wake;
use super::{Engine, EngineError, EngineState, Shared, machine};
use crate::job::Job;
use notify::Notice;
use pipeline::Open;
use scratch::Scratch;
pub(crate) use sessions::StoredSession;

/// The longest a deploy made through another instance goes unseen here if
/// its change was missed.
const DEPLOYS_FALLBACK: Duration = Duration::from_secs(30);
/// Most time a request waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Most time a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts of one event that meets a conflict or a deadlock.
const ATTEMPTS: usize = 8;
/// How long a count of a client's active jobs serves this instance's
/// creates (each adds one to it), unless the count is near the limit.
const ACTIVE_COUNT_FOR: Duration = Duration::from_secs(1);
/// Workers whose last touch this instance remembers before forgetting the
/// stale ones (a bound on what worker ids can make it keep).
const TOUCHED_KEPT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("database: {}", described(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// A stored job that does not parse (see [`unreadable`]).
    #[error("stored job {0} is unreadable: {1}")]
    UnreadableJob(Uuid, String),
}

/// A driver error with what the server said (its own `Display` is only
/// "db error") or what it came from.
fn described(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({}): {}", db.severity(), db.code().code(), db.message());
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

impl DbError {
    /// Worth running the event again: a concurrent writer won.
    fn is_retryable(&self) -> bool {
        match self {
            Self::Conflict(_) => true,
            Self::Db(e) => e.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                    || *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            }),
            _ => false,
        }
    }
}

impl From<DbError> for crate::storage::StorageError {
    fn from(e: DbError) -> Self {
        crate::storage::StorageError::Backend(e.to_string())
    }
}

impl From<DbError> for EngineError {
    fn from(e: DbError) -> Self {
        EngineError::Storage(e.to_string())
    }
}

/// The shared-database side of an engine.
pub(crate) struct SharedDb {
    pool: Pool,
    /// Woken by `NOTIFY tasks` (a task was queued somewhere).
    pub tasks: Arc<Notify>,
    /// Woken by `NOTIFY jobs` (a job ended somewhere).
    pub jobs: Arc<Notify>,
    /// Given a permit when a deploy made through another instance is seen.
    pub deploys: Notify,
    url: String,
    /// Asks the notifier to tell the other instances (`tasks`, `jobs`).
    notices: tokio::sync::mpsc::UnboundedSender<Notice>,
    /// Jobs as last written or read here ([`cache`]).
    cache: cache::JobCache,
    /// Names this instance in the `changed` notifications it sends.
    instance: Uuid,
    /// The maintenance loop's next look, when a timer added here is due
    /// before its regular one ([`Self::look_at`]).
    look_early: std::sync::Mutex<Option<Instant>>,
    look_wake: Notify,
    /// Set when a `jobs` or `changed` notification arrives; the glance
    /// clears the cache when jobs ended unheard (the `LISTEN` was down).
    heard: std::sync::atomic::AtomicBool,
    /// The workers as last read for waiting reasons, and when.
    reason_workers: std::sync::Mutex<Option<(Instant, Arc<EngineState>)>>,
    /// The database's clock minus this instance's, in microseconds, as the
    /// last glance measured it ([`Self::now`]).
    clock_offset_us: std::sync::atomic::AtomicI64,
    /// The last metrics counts, and when they were made.
    metrics_cache: tokio::sync::Mutex<Option<(Instant, crate::metrics::Snapshot)>>,
    /// Per client: its active jobs as last counted here plus those created
    /// here since, and when counted ([`Self::active_jobs`]).
    active_counts: std::sync::Mutex<std::collections::HashMap<String, (Instant, usize)>>,
    /// When this instance last wrote each worker's `last_seen`.
    touched: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    /// Events for the next batch ([`batch`]).
    batch: tokio::sync::mpsc::UnboundedSender<batch::Pending>,
    /// Their receiving end, until the batchers start.
    batch_queue: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<batch::Pending>>>,
}
impl SharedDb {
    pub(crate) async fn connect(url: &str, keep_jobs: usize) -> Result<Arc<Self>, DbError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| DbError::Pool(e.to_string()))?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // The engine's statements find rows by key. A plan made while a
        // table was small (a new database) would keep scanning it whole as
        // it grows, for as long as the connection keeps the statement:
        // sequential scans are left for when no index serves. No JIT: it
        // never pays for statements this short, and the cost a sequential
        // scan is then given (one no index can avoid, over a table of a few
        // rows) would make every such statement compile (~300 ms). Generic
        // plans: the engine's statements take arrays, whose values do not
        // change the best plan, and planning them again at every execution
        // (what the default does when a custom plan looks no dearer) cost
        // more server CPU than running them.
        config.options("-c enable_seqscan=off -c jit=off -c plan_cache_mode=force_generic_plan");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Waiting for a pooled connection, and opening one, are bounded: a
        // database that does not answer fails the request (and the next one
        // tries again) instead of holding it for ever.
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        let (notices, requests) = tokio::sync::mpsc::unbounded_channel();
        let (batch, batch_queue) = tokio::sync::mpsc::unbounded_channel();
        let db = Arc::new(Self {
            pool,
            tasks: Default::default(),
            jobs: Default::default(),
            deploys: Notify::new(),
            url: url.to_string(),
            notices,
            cache: cache::JobCache::new(keep_jobs),
            instance: Uuid::new_v4(),
            heard: Default::default(),
            look_early: Default::default(),
            look_wake: Notify::new(),
            reason_workers: Default::default(),
            metrics_cache: Default::default(),
            clock_offset_us: Default::default(),
            touched: Default::default(),
            active_counts: Default::default(),
            batch,
            batch_queue: std::sync::Mutex::new(Some(batch_queue)),
        });
        let shown = without_password(url);
        let mut client = db
            .client()
            .await
            .map_err(|e| DbError::Pool(format!("cannot connect to {shown}: {e}")))?;
        migrate::migrate(&mut client)
            .await
            .map_err(|e| DbError::Pool(format!("migrating {shown}: {e}")))?;
        drop(client);
        tracing::info!("storage: PostgreSQL at {shown}, shared with any other instance on it");
        tokio::spawn(db.clone().notifier(requests));
        Ok(db)
    }

    /// Now on the database's clock: every deadline instances share (timers,
    /// worker liveness, leases) is written and read on it, so an instance
    /// whose own clock is off neither fires timers late nor keeps a dead
    /// worker alive.
    pub(crate) fn now(&self) -> chrono::DateTime<chrono::Utc> {
        let offset = self
            .clock_offset_us
            .load(std::sync::atomic::Ordering::Relaxed);
        chrono::Utc::now() + chrono::Duration::microseconds(offset)
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool
            .get()
            .await
            .map_err(|e| DbError::Pool(e.to_string()))
    }

    /// After attempt number `made` of an event or a take failed with `e`:
    /// `Ok` to make the next one, `Err` to give up. The one retry policy:
    /// a job that cannot be read is set aside (the next attempt goes on
    /// without it); a conflict or a deadlock is tried again after a short
    /// pause; at most [`ATTEMPTS`] attempts; anything else is final.
    async fn again(&self, made: usize, e: DbError) -> Result<(), DbError> {
        match e {
            DbError::UnreadableJob(id, why) if made < ATTEMPTS => self.set_aside(id, &why).await,
            e if e.is_retryable() && made < ATTEMPTS => {
                tracing::debug!("retrying an engine event: {e}");
                tokio::time::sleep(Duration::from_millis(2 * made as u64)).await;
                Ok(())
            }
            e => Err(e),
        }
    }

    /// Runs one event: `f` over the scratch state of `jobs` and `workers`,
    /// made again as [`Self::again`] says.
    async fn event<R: Send>(
        &self,
        shared: &Arc<Shared>,
        jobs: &[Uuid],
        workers: &[String],
        mut f: impl FnMut(&mut EngineState) -> R + Send,
    ) -> Result<R, DbError> {
        self.event_claiming(shared, jobs, workers, &[], |st, _| f(st))
            .await
    }

    /// [`Self::event`], claiming a task for each worker `claim_for` names
    /// (see [`Scratch::load`]); `f` is told whom a task was claimed for.
    async fn event_claiming<R: Send>(
        &self,
        shared: &Arc<Shared>,
        jobs: &[Uuid],
        workers: &[String],
        claim_for: &[String],
        mut f: impl FnMut(&mut EngineState, &[String]) -> R + Send,
    ) -> Result<R, DbError> {
        let mut made = 0;
        loop {
            made += 1;
            match self
                .try_event(shared, jobs, workers, claim_for, &mut f)
                .await
            {
                Err(e) => self.again(made, e).await?,
                done => return done,
            }
        }
    }

    /// One attempt at an event: load, `f`, write, commit, then what follows
    /// a commit.
    async fn try_event<R: Send>(
        &self,
        shared: &Arc<Shared>,
        jobs: &[Uuid],
        workers: &[String],
        claim_for: &[String],
        f: &mut (impl FnMut(&mut EngineState, &[String]) -> R + Send),
    ) -> Result<R, DbError> {
        let client = self.client().await?;
        if jobs.is_empty() && workers.is_empty() && claim_for.is_empty() {
            // Nothing to read or lock (a job created): its writes are one
            // statement, atomic without a transaction around it.
            let mut scratch = Scratch::empty(shared.settings.finished_jobs_in_memory, self.now());
            let r = f(&mut scratch.st, &[]);
            let applied = scratch.apply(&client, shared).await?;
            drop(client);
            self.committed(shared, applied);
            return Ok(r);
        }
        let (open, (mut scratch, claimed_for)) = Open::begin(client, async |c| {
            Scratch::load(
                c,
                jobs,
                workers,
                claim_for,
                None,
                shared.settings.finished_jobs_in_memory,
                self.now(),
            )
            .await
        })
        .await?;
        let r = f(&mut scratch.st, &claimed_for);
        let (writes, applied) = match scratch.writes(shared) {
            Ok(w) => w,
            Err(e) => {
                open.rollback().await;
                return Err(e);
            }
        };
        // The connection goes back to the pool before the notification.
        open.commit(&writes).await?;
        self.committed(shared, applied);
        Ok(r)
    }

    /// Starts the notification listener, the maintenance loop and the
    /// watch for deploys made through other instances.
    pub(crate) fn start(self: &Arc<Self>, engine: &Engine) {
        tracing::info!(
            "several instances may share this database: the queue, timers, leases and workers live in it"
        );
        tokio::spawn(self.clone().listen());
        tokio::spawn(self.clone().maintenance_loop(engine.shared.clone()));
        self.start_batchers(&engine.shared);
        // Deploys made through another instance take effect here within a
        // second (the maintenance loop sees them), or at the latest after
        // [`DEPLOYS_FALLBACK`].
        let refresher = engine.clone();
        let seen = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = seen.deploys.notified() => {}
                    _ = tokio::time::sleep(DEPLOYS_FALLBACK) => {}
                    _ = refresher.shared.stopping.cancelled() => return,
                }
                if let Err(e) = refresher.refresh_deploys().await {
                    tracing::warn!("cannot read deploys from the database: {e}");
                }
            }
        });
    }

    /// After an event's commit: its jobs kept here and named to the other
    /// instances, then the effects every backend has.
    fn committed(&self, shared: &Arc<Shared>, applied: scratch::Applied) {
        let scratch::Applied {
            after,
            written,
            first_timer,
        } = applied;
        if !written.is_empty() {
            let ids = written.iter().map(|j| j.id).collect();
            self.cache.wrote(written);
            let _ = self.notices.send(Notice::Changed(ids));
        }
        if let Some(at) = first_timer {
            self.look_at(at);
        }
        after.apply(shared);
    }

    /// A wake-up for when job `id` ends; `None` once it has (or when it
    /// cannot be read).
    pub(crate) async fn end_of(&self, id: Uuid) -> Option<Wake> {
        // Registered before looking, so an end meanwhile is not missed.
        let wake = Wake::armed(self.jobs.clone());
        match self.get_job(id).await {
            Ok(Some(job)) if !job.status.is_terminal() => Some(wake),
            _ => None,
        }
    }

    pub(crate) async fn create(
        &self,
        shared: &Arc<Shared>,
        id: Uuid,
        bp: &Arc<crate::blueprint::Blueprint>,
        new: super::NewJob,
    ) -> Result<(), EngineError> {
        let max = new
            .max_active
            .unwrap_or(shared.settings.max_active_jobs_per_client);
        if self.active_jobs(&new.owner, max).await? >= max {
            return Err(EngineError::too_many_active_jobs(max, &new.owner));
        }
        let (on, bp) = (shared.clone(), bp.clone());
        self.batched(shared, Vec::new(), Vec::new(), move |st| {
            machine::create(&on, st, id, &bp, new.clone());
        })
        .await?;
        Ok(())
    }

    /// How many jobs of `owner` have not ended, for the
    /// `max_active_jobs_per_client` check of a create about to happen. A
    /// count is reused for [`ACTIVE_COUNT_FOR`], plus one per create here
    /// (jobs that ended meanwhile still count; creates through other
    /// instances show at the next count); below nine tenths of `max` only:
    /// near the limit every create counts again.
    pub(crate) async fn active_jobs(&self, owner: &str, max: usize) -> Result<usize, DbError> {
        {
            let mut counts = self.active_counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, n)) = counts.get_mut(owner)
                && at.elapsed() < ACTIVE_COUNT_FOR
                && *n < max / 10 * 9
            {
                *n += 1;
                return Ok(*n - 1);
            }
        }
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT count(*) FROM jobs WHERE owner = $1 AND status NOT IN ('finished', 'failed', 'quarantined', 'cancelled')",
                    )
                    .await?,
                &[&owner],
            )
            .await?;
        let n = row.get::<_, i64>(0).max(0) as usize;
        let mut counts = self.active_counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= TOUCHED_KEPT {
            counts.retain(|_, (at, _)| at.elapsed() < ACTIVE_COUNT_FOR);
            if counts.len() >= TOUCHED_KEPT {
                counts.clear();
            }
        }
        counts.insert(owner.to_string(), (Instant::now(), n + 1));
        Ok(n)
    }

    /// A task result, in the next batch (its job locked and loaded there).
    pub(crate) async fn apply_result(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        result: rxon::TaskResult,
    ) -> Result<rxon::ResultResponse, DbError> {
        let jobs: Vec<Uuid> = Uuid::parse_str(&result.job_id).into_iter().collect();
        self.touch(worker_id).await?;
        let (on, worker) = (shared.clone(), worker_id.to_string());
        self.batched(shared, jobs, vec![worker_id.to_string()], move |st| {
            machine::apply_result(&on, st, &worker, &result)
        })
        .await
    }

    pub(crate) async fn heartbeat(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        hb: Option<&rxon::Heartbeat>,
    ) -> Result<Option<rxon::HeartbeatResponse>, DbError> {
        let jobs = self.jobs_of(worker_id).await?;
        self.event(shared, &jobs, &[worker_id.to_string()], |st| {
            machine::heartbeat(shared, st, worker_id, hb)
        })
        .await
    }

    pub(crate) async fn register(
        &self,
        shared: &Arc<Shared>,
        reg: &rxon::WorkerRegistration,
    ) -> Result<(), EngineError> {
        let max = shared.settings.max_workers;
        let (known, count) = self.registered(&reg.worker_id).await?;
        if !known && count >= max {
            return Err(EngineError::too_many_workers(max, &reg.worker_id));
        }
        let jobs = self.jobs_of(&reg.worker_id).await?;
        self.event(shared, &jobs, std::slice::from_ref(&reg.worker_id), |st| {
            machine::register_worker(shared, st, reg)
        })
        .await?;
        // Waiting reasons read here see it at once.
        *self
            .reason_workers
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    pub(crate) async fn cancel(
        &self,
        shared: &Arc<Shared>,
        id: Uuid,
        owner: &str,
    ) -> Result<(), EngineError> {
        self.event(shared, &[id], &[], |st| machine::cancel(st, id, owner))
            .await?
    }

    pub(crate) async fn signal(
        &self,
        shared: &Arc<Shared>,
        signal: machine::Signal,
    ) -> Result<(), EngineError> {
        let id = signal.job;
        self.event(shared, &[id], &[], |st| {
            machine::signal(shared, st, &signal)
        })
        .await?
    }

    pub(crate) async fn worker_event(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        event: &rxon::WorkerEventPayload,
    ) -> Result<(), EngineError> {
        let jobs: Vec<Uuid> = event
            .target_job_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
            .into_iter()
            .collect();
        self.event(shared, &jobs, &[worker_id.to_string()], |st| {
            machine::worker_event(shared, st, worker_id, event)
        })
        .await?
    }

    /// A job: from this instance's cache ([`cache`]) or the database.
    pub(crate) async fn get_job(&self, id: Uuid) -> Result<Option<Job>, DbError> {
        if let Some(job) = self.cache.get(id) {
            return Ok(Some(job));
        }
        let epoch = self.cache.epoch();
        let client = self.client().await?;
        let row = client
            .query_opt(
                &client
                    .prepare_cached("SELECT body FROM jobs WHERE id = $1")
                    .await?,
                &[&id],
            )
            .await?;
        let job: Option<Job> = row
            .map(|r| {
                serde_json::from_str(r.get::<_, &str>(0))
                    .map_err(|e| DbError::Corrupt(e.to_string()))
            })
            .transpose()?;
        if let Some(job) = &job {
            self.cache.read(job, epoch);
        }
        Ok(job)
    }
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`, for logs.
fn without_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            super::without_password("postgres://u:secret@h:5432/db"),
            "postgres://u@h:5432/db"
        );
        assert_eq!(
            super::without_password("postgres://h/db"),
            "postgres://h/db"
        );
    }
}
