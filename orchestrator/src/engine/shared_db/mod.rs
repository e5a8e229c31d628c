//! Several orchestrator instances on one PostgreSQL database: the database
//! is the source of truth for jobs, the task queue, timers, task leases,
//! worker registrations and replay nonces, and any instance serves any
//! client or worker.
//!
//! - Every event (create, take, result, heartbeat, timer, cancel…) is one
//!   transaction that locks the rows it touches, runs the same state machine
//!   as the in-memory engine over them ([`scratch`]), and writes back what
//!   changed; a job is written as a compare-and-set on its version.
//! - Workers claim queue entries with `FOR UPDATE SKIP LOCKED`; timers are
//!   claimed the same way by whichever instance sees them due first (the
//!   database's clock decides); expired workers likewise.
//! - `LISTEN/NOTIFY` wakes long-polls and `?wait=` on every instance; they
//!   wait on nothing else. Each instance's maintenance loop looks at the
//!   database once per [`glance::GLANCE_EVERY`] and wakes them if a
//!   notification was missed.

mod cache;
mod glance;
mod reads;
mod retention;
mod scratch;
mod sessions;
mod unreadable;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::effects::Wake;
use super::workers::WorkerView;
use super::{Engine, EngineError, EngineState, Shared, machine};
use crate::job::Job;
use scratch::{Scratch, StoredWorker};
pub(crate) use sessions::StoredSession;

/// The longest a deploy made through another instance goes unseen here if
/// its change was missed.
const DEPLOYS_FALLBACK: Duration = Duration::from_secs(30);
/// Notifications of events this close together go out as one.
const NOTIFY_COALESCE: Duration = Duration::from_millis(2);
/// How long one count of the queues, leases and workers serves scrapes.
const METRICS_TTL: Duration = Duration::from_secs(2);
/// Most time a request waits for a pooled connection.
const POOL_WAIT: Duration = Duration::from_secs(10);
/// Attempts of one event that meets a conflict or a deadlock.
const ATTEMPTS: usize = 8;
/// How long the worker list read to say why a job waits is reused: polls of
/// queued jobs would otherwise read every worker at every poll (the reason
/// is informational; a worker that came or went shows within this time).
const REASON_WORKERS_TTL: Duration = Duration::from_secs(1);
/// A worker's `last_seen` is written at most this often by one instance
/// (at every task taken and every result it was a row update, i.e. a new
/// row version and WAL, twice per job); worker time-outs are many seconds.
const TOUCH_EVERY: Duration = Duration::from_millis(500);
/// How long a count of a client's active jobs serves this instance's
/// creates (each adds one to it), unless the count is near the limit.
const ACTIVE_COUNT_FOR: Duration = Duration::from_secs(1);
/// Workers whose last touch this instance remembers before forgetting the
/// stale ones (a bound on what worker ids can make it keep).
const TOUCHED_KEPT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DbError {
    #[error("database: {0}")]
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
}

impl SharedDb {
    pub(crate) async fn connect(url: &str, keep_jobs: usize) -> Result<Arc<Self>, DbError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| DbError::Pool(e.to_string()))?;
        config.connect_timeout(crate::storage::postgres::CONNECT_TIMEOUT);
        // The engine's statements find rows by key. A plan made while a
        // table was small (a new database) would keep scanning it whole as
        // it grows, for as long as the connection keeps the statement:
        // sequential scans are left for when no index serves. No JIT: it
        // never pays for statements this short, and the cost a sequential
        // scan is then given (one no index can avoid, over a table of a few
        // rows) would make every such statement compile (~300 ms).
        config.options("-c enable_seqscan=off -c jit=off");
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
            .create_timeout(Some(crate::storage::postgres::CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))?;
        let (notices, requests) = tokio::sync::mpsc::unbounded_channel();
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
            reason_workers: Default::default(),
            metrics_cache: Default::default(),
            clock_offset_us: Default::default(),
            touched: Default::default(),
            active_counts: Default::default(),
        });
        tokio::spawn(db.clone().notifier(requests));
        Ok(db)
    }

    /// Sends `NOTIFY` for what events asked, coalesced: one statement per
    /// [`NOTIFY_COALESCE`], from outside the events' transactions (a `NOTIFY`
    /// in a transaction serializes commits on the server). The jobs changed
    /// go first (`changed`, with this instance's id), so an instance woken
    /// by `jobs` has already forgotten what it held of them.
    async fn notifier(self: Arc<Self>, mut requests: tokio::sync::mpsc::UnboundedReceiver<Notice>) {
        while let Some(first) = requests.recv().await {
            tokio::time::sleep(NOTIFY_COALESCE).await;
            let (mut tasks, mut jobs) = (false, false);
            let mut changed: Vec<Uuid> = Vec::new();
            for notice in
                std::iter::once(first).chain(std::iter::from_fn(|| requests.try_recv().ok()))
            {
                match notice {
                    Notice::Tasks => tasks = true,
                    Notice::Jobs => jobs = true,
                    Notice::Changed(ids) => changed.extend(ids),
                }
            }
            changed.sort_unstable();
            changed.dedup();
            let mut sql = String::new();
            for chunk in changed.chunks(CHANGED_PER_NOTIFY) {
                // Ids and the instance id: hex only, safe in a literal.
                let ids: Vec<String> = chunk.iter().map(|id| id.simple().to_string()).collect();
                sql.push_str(&format!(
                    "NOTIFY changed, '{}:{}';",
                    self.instance.simple(),
                    ids.join(",")
                ));
            }
            if tasks {
                sql.push_str("NOTIFY tasks;");
            }
            if jobs {
                sql.push_str("NOTIFY jobs;");
            }
            match self.pool.get().await {
                Ok(client) => {
                    if let Err(e) = client.batch_execute(&sql).await {
                        tracing::debug!("NOTIFY failed: {e}");
                    }
                }
                Err(e) => tracing::debug!("NOTIFY failed: {e}"),
            }
        }
    }

    /// A `changed` notification: forget what another instance changed.
    fn on_changed(&self, payload: &str) {
        let Some((from, ids)) = payload.split_once(':') else {
            return self.cache.clear();
        };
        if Uuid::try_parse(from).is_ok_and(|from| from == self.instance) {
            return;
        }
        self.cache
            .evict(ids.split(',').filter_map(|id| Uuid::try_parse(id).ok()));
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

    /// Listens for notifications; reconnects when the connection drops.
    pub(crate) async fn listen(self: Arc<Self>) {
        loop {
            match tokio_postgres::connect(&self.url, NoTls).await {
                Ok((client, mut connection)) => {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    // The connection must be polled for the LISTEN to complete.
                    let listened = {
                        let listen =
                            client.batch_execute("LISTEN tasks; LISTEN jobs; LISTEN changed");
                        let mut listen = std::pin::pin!(listen);
                        loop {
                            tokio::select! {
                                r = &mut listen => break r.is_ok(),
                                m = messages.next() => if m.is_none() { break false },
                            }
                        }
                    };
                    if !listened {
                        tracing::warn!("cannot LISTEN for notifications; retrying");
                    }
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => match n.channel() {
                                "tasks" => self.tasks.notify_waiters(),
                                "jobs" => {
                                    self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
                                    self.jobs.notify_waiters()
                                }
                                "changed" => {
                                    self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
                                    self.on_changed(n.payload())
                                }
                                _ => {}
                            },
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!("LISTEN connection lost: {e}");
                                break;
                            }
                        }
                    }
                    drop(client);
                    // Changes may have gone unheard meanwhile.
                    self.cache.clear();
                }
                Err(e) => tracing::warn!("cannot open the LISTEN connection: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs one event: `f` over the scratch state of `jobs` and `workers`,
    /// retried on conflicts. `pre` runs first in the same transaction (to
    /// claim a row) and returns the jobs to lock.
    async fn event<R: Send>(
        &self,
        shared: &Arc<Shared>,
        jobs: &[Uuid],
        workers: &[String],
        mut f: impl FnMut(&mut EngineState) -> R + Send,
    ) -> Result<R, DbError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_event(shared, jobs, workers, None, &mut f).await {
                Err(DbError::UnreadableJob(id, why)) if attempt < ATTEMPTS => {
                    self.set_aside(id, &why).await?;
                }
                Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                    tracing::debug!("retrying an engine event: {e}");
                    tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_event<R: Send>(
        &self,
        shared: &Arc<Shared>,
        jobs: &[Uuid],
        workers: &[String],
        fired: Option<i64>,
        f: &mut (impl FnMut(&mut EngineState) -> R + Send),
    ) -> Result<R, DbError> {
        let mut client = self.client().await?;
        if jobs.is_empty() && workers.is_empty() && fired.is_none() {
            // Nothing to read or lock (a job created): its writes are one
            // statement, atomic without a transaction around it.
            let mut scratch = Scratch::empty(shared.settings.finished_jobs_in_memory, self.now());
            let r = f(&mut scratch.st);
            let applied = scratch.apply(&client).await?;
            drop(client);
            self.committed(shared, applied);
            return Ok(r);
        }
        let tx = client.transaction().await?;
        let mut scratch = Scratch::load(
            &tx,
            jobs,
            workers,
            fired,
            shared.settings.finished_jobs_in_memory,
            self.now(),
        )
        .await?;
        let r = f(&mut scratch.st);
        let applied = scratch.apply(&tx).await?;
        tx.commit().await?;
        // Back to the pool before taking another for the notification.
        drop(client);
        self.committed(shared, applied);
        Ok(r)
    }

    /// Wakes waiters here at once, and other instances through the
    /// database (see [`Self::notifier`]).
    pub(crate) fn announce(&self, queued: bool, ended: bool) {
        if queued {
            self.tasks.notify_waiters();
            let _ = self.notices.send(Notice::Tasks);
        }
        if ended {
            self.jobs.notify_waiters();
            let _ = self.notices.send(Notice::Jobs);
        }
    }

    /// Starts the notification listener, the maintenance loop and the
    /// watch for deploys made through other instances.
    pub(crate) fn start(self: &Arc<Self>, engine: &Engine) {
        tracing::info!(
            "several instances may share this database: the queue, timers, leases and workers live in it"
        );
        tokio::spawn(self.clone().listen());
        tokio::spawn(self.clone().maintenance_loop(engine.shared.clone()));
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
    fn committed(
        &self,
        shared: &Arc<Shared>,
        (after, written): (super::effects::AfterCommit, Vec<Job>),
    ) {
        if !written.is_empty() {
            let ids = written.iter().map(|j| j.id).collect();
            self.cache.wrote(written);
            let _ = self.notices.send(Notice::Changed(ids));
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
        let max = shared.settings.max_active_jobs_per_client;
        if self.active_jobs(&new.owner, max).await? >= max {
            return Err(EngineError::too_many_active_jobs(max, &new.owner));
        }
        self.event(shared, &[], &[], |st| {
            machine::create(shared, st, id, bp, new.clone());
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

    /// Claims the oldest queued task this worker can run, if any.
    pub(crate) async fn take(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
    ) -> Result<Option<rxon::TaskPayload>, EngineError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_take(shared, worker_id).await {
                Err(TakeError::Db(DbError::UnreadableJob(id, why))) if attempt < ATTEMPTS => {
                    self.set_aside(id, &why).await?;
                }
                Err(TakeError::Db(e)) if e.is_retryable() && attempt < ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(2 * attempt as u64)).await;
                }
                Err(TakeError::Db(e)) => return Err(e.into()),
                Err(TakeError::Engine(e)) => return Err(e),
                Ok(Some(Some(payload))) => return Ok(Some(payload)),
                // A stale entry (the job moved on): take the next one.
                Ok(Some(None)) => continue,
                Ok(None) => return Ok(None),
            }
        }
    }

    async fn try_take(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
    ) -> Result<Option<Option<rxon::TaskPayload>>, TakeError> {
        let mut client = self.client().await?;
        // The worker's record, and whether a task it can run is queued at
        // all: woken pollers that find the queue empty stop at this one
        // statement instead of a transaction.
        let sql = if self.due_for_touch(worker_id) {
            "UPDATE workers w SET last_seen = now() WHERE id = $1
             RETURNING record, EXISTS (SELECT 1 FROM task_queue q WHERE q.task_type IN
                 (SELECT s->>'name' FROM jsonb_array_elements(w.record->'skills') s))"
        } else {
            "SELECT record, EXISTS (SELECT 1 FROM task_queue q WHERE q.task_type IN
                 (SELECT s->>'name' FROM jsonb_array_elements(w.record->'skills') s))
             FROM workers w WHERE id = $1"
        };
        let row = client
            .query_opt(&client.prepare_cached(sql).await?, &[&worker_id])
            .await
            .map_err(DbError::from)?;
        let Some(row) = row else {
            return Err(TakeError::Engine(EngineError::UnknownWorker(
                worker_id.to_string(),
            )));
        };
        let stored: StoredWorker =
            serde_json::from_value(row.get(0)).map_err(|e| DbError::Corrupt(e.to_string()))?;
        if stored.status == "offline" || !row.get::<_, bool>(1) {
            return Ok(None);
        }
        let skills: Vec<String> = stored.skills.iter().map(|s| s.name.clone()).collect();
        let tx = client.transaction().await.map_err(DbError::from)?;
        let Some((mut scratch, _claimed)) = Scratch::claim(
            &tx,
            worker_id,
            &skills,
            shared.settings.finished_jobs_in_memory,
            self.now(),
        )
        .await?
        else {
            tx.commit().await.map_err(DbError::from)?;
            return Ok(None);
        };
        // The worker expired or left since it was read above (another
        // instance dropped it): undo the claim, so the task stays queued for
        // another worker instead of being consumed without an owner.
        let usable = scratch
            .st
            .workers
            .get(worker_id)
            .is_some_and(|w| w.status != "offline");
        if !usable {
            tx.rollback().await.map_err(DbError::from)?;
            return Err(TakeError::Engine(EngineError::UnknownWorker(
                worker_id.to_string(),
            )));
        }
        let payload = machine::take_task(shared, &mut scratch.st, worker_id);
        // A stale entry is consumed, not put back.
        scratch.st.queues.clear();
        let applied = scratch.apply(&tx).await?;
        tx.commit().await.map_err(DbError::from)?;
        drop(client);
        self.committed(shared, applied);
        Ok(Some(payload))
    }

    /// The job of a task result (to lock it first).
    pub(crate) async fn apply_result(
        &self,
        shared: &Arc<Shared>,
        worker_id: &str,
        result: &rxon::TaskResult,
    ) -> Result<rxon::ResultResponse, DbError> {
        let jobs: Vec<Uuid> = Uuid::parse_str(&result.job_id).into_iter().collect();
        self.touch(worker_id).await?;
        self.event(shared, &jobs, &[worker_id.to_string()], |st| {
            machine::apply_result(shared, st, worker_id, result)
        })
        .await
    }

    /// Whether `worker_id`'s `last_seen` is due to be written (at most once
    /// per [`TOUCH_EVERY`]); counts it as written.
    fn due_for_touch(&self, worker_id: &str) -> bool {
        let mut touched = self.touched.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if touched
            .get(worker_id)
            .is_some_and(|at| now.duration_since(*at) < TOUCH_EVERY)
        {
            return false;
        }
        if touched.len() >= TOUCHED_KEPT {
            touched.retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
        }
        touched.insert(worker_id.to_string(), now);
        true
    }

    /// The worker was heard from (outside any event's transaction).
    async fn touch(&self, worker_id: &str) -> Result<(), DbError> {
        if !self.due_for_touch(worker_id) {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached("UPDATE workers SET last_seen = now() WHERE id = $1")
                    .await?,
                &[&worker_id],
            )
            .await?;
        Ok(())
    }

    /// The task channel of `worker_id` (to this instance) closed: it is gone
    /// `grace` from now unless heard from (any instance's sweep drops it).
    pub async fn channel_lost(&self, worker_id: &str, grace: Duration) -> Result<(), DbError> {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(worker_id);
        let client = self.client().await?;
        client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE workers SET last_seen = LEAST(last_seen, now() + ($2::bigint - ttl_ms) * interval '1 millisecond') WHERE id = $1",
                    )
                    .await?,
                &[&worker_id, &(grace.as_millis() as i64)],
            )
            .await?;
        Ok(())
    }

    /// Whether `worker_id` is registered, and how many workers are.
    async fn registered(&self, worker_id: &str) -> Result<(bool, usize), DbError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM workers WHERE id = $1), count(*) FROM workers",
                    )
                    .await?,
                &[&worker_id],
            )
            .await?;
        Ok((row.get(0), row.get::<_, i64>(1).max(0) as usize))
    }

    /// The jobs a worker's leases point at.
    async fn jobs_of(&self, worker_id: &str) -> Result<Vec<Uuid>, DbError> {
        let client = self.client().await?;
        Ok(client
            .query(
                &client
                    .prepare_cached("SELECT DISTINCT job_id FROM task_leases WHERE worker_id = $1")
                    .await?,
                &[&worker_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
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
            machine::worker_event(st, worker_id, event)
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

    pub(crate) async fn workers(&self) -> Result<Vec<super::workers::WorkerRecord>, DbError> {
        let client = self.client().await?;
        let now = chrono::Utc::now();
        let mono = Instant::now();
        let mut out = Vec::new();
        for row in client
            .query(
                &client
                    .prepare_cached("SELECT record, last_seen FROM workers ORDER BY id")
                    .await?,
                &[],
            )
            .await?
        {
            if let Ok(stored) = serde_json::from_value::<StoredWorker>(row.get(0)) {
                out.push(stored.record(scratch::instant_of(row.get(1), now, mono)));
            }
        }
        Ok(out)
    }

    /// The queues, leases and workers for a scrape, counted at most once
    /// per [`METRICS_TTL`] however many scrape (concurrent scrapes wait for
    /// one count).
    pub(crate) async fn metrics_snapshot(&self) -> Result<crate::metrics::Snapshot, DbError> {
        let mut cached = self.metrics_cache.lock().await;
        if let Some((at, snapshot)) = cached.as_ref()
            && at.elapsed() < METRICS_TTL
        {
            return Ok(snapshot.clone());
        }
        let snapshot = self.count_for_metrics().await?;
        *cached = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    async fn count_for_metrics(&self) -> Result<crate::metrics::Snapshot, DbError> {
        let client = self.client().await?;
        let queues = client
            .query(
                "SELECT task_type, count(*) FROM task_queue GROUP BY task_type",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as usize, None))
            .collect();
        let count = |sql: &'static str| async {
            client
                .query_one(sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0) as usize)
        };
        Ok(crate::metrics::Snapshot {
            queues,
            in_flight: count("SELECT count(*) FROM task_leases").await?,
            workers: count("SELECT count(*) FROM workers").await?,
        })
    }

    pub(crate) async fn worker_views(&self) -> Result<Vec<WorkerView>, DbError> {
        Ok(self.workers().await?.iter().map(|w| w.view()).collect())
    }

    /// Records a message nonce; false when it was seen already.
    pub(crate) async fn remember_nonce(&self, key: &str) -> Result<bool, DbError> {
        let client = self.client().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO seen_nonces (key) VALUES ($1) ON CONFLICT DO NOTHING",
                    )
                    .await?,
                &[&key],
            )
            .await?;
        Ok(n == 1)
    }

    /// Fires due timers and drops expired workers, on every instance (each
    /// row is claimed by exactly one), wakes waiters whose notification was
    /// missed, and tells the engine of deploys made elsewhere: one look at
    /// the database per [`glance::GLANCE_EVERY`] when nothing is due.
    pub(crate) async fn maintenance_loop(self: Arc<Self>, shared: Arc<Shared>) {
        let mut last_prune = Instant::now();
        let lease = shared.settings.webhook_lease;
        let takeover_every = (lease / 4).clamp(Duration::from_secs(1), Duration::from_secs(10));
        // The start took over what was owed already.
        let mut last_takeover = Instant::now();
        let mut seen: Option<glance::Glance> = None;
        let mut pause = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shared.stopping.cancelled() => return,
            }
            pause = glance::GLANCE_EVERY;
            let now = match self.glance().await {
                Ok(now) => now,
                Err(e) => {
                    tracing::warn!("cannot look at the shared database: {e}");
                    continue;
                }
            };
            if now.next_timer_in.is_some_and(|due_in| due_in <= 0.0) {
                loop {
                    match self.fire_one(&shared).await {
                        Ok(true) => continue,
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!("firing a timer failed: {e}");
                            break;
                        }
                    }
                }
            } else if let Some(due_in) = now.next_timer_in {
                // Look again when the next timer is due.
                pause = pause.min(Duration::from_secs_f64(due_in));
            }
            if now.worker_expired
                && let Err(e) = self.expire_workers(&shared).await
            {
                tracing::warn!("expiring workers failed: {e}");
            }
            if let Some(before) = &seen {
                if before.queued_mark != now.queued_mark {
                    self.tasks.notify_waiters();
                }
                let heard = self.heard.swap(false, std::sync::atomic::Ordering::Relaxed);
                if before.ended_mark != now.ended_mark {
                    if !heard {
                        // Jobs ended and no notification came: what this
                        // instance holds of them may be stale.
                        self.cache.clear();
                    }
                    self.jobs.notify_waiters();
                }
                if before.deploys_mark != now.deploys_mark {
                    self.deploys.notify_one();
                }
            }
            seen = Some(now);
            if last_takeover.elapsed() >= takeover_every {
                last_takeover = Instant::now();
                match self.orphaned_webhooks(lease).await {
                    Ok(orphans) => {
                        if !orphans.is_empty() {
                            tracing::info!(
                                "delivering {} webhook(s) owed by an instance that stopped (lease of {lease:?} ran out)",
                                orphans.len()
                            );
                        }
                        for pending in orphans {
                            let hook = super::webhook::Webhook::from_pending(pending);
                            tokio::spawn(hook.deliver(shared.clone()));
                        }
                    }
                    Err(e) => tracing::warn!("looking for orphaned webhooks failed: {e}"),
                }
            }
            if last_prune.elapsed() > Duration::from_secs(10) {
                last_prune = Instant::now();
                if let Ok(client) = self.pool.get().await {
                    let _ = client
                        .batch_execute(
                            "DELETE FROM seen_nonces WHERE seen_at < now() - interval '130 seconds';
                             DELETE FROM dashboard_sessions WHERE expires_at <= now();",
                        )
                        .await;
                }
            }
        }
    }

    /// Fires one due timer; false when none is due.
    async fn fire_one(&self, shared: &Arc<Shared>) -> Result<bool, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id, kind, job_id, task_id FROM timers WHERE due_at <= now()
                 ORDER BY due_at LIMIT 1 FOR UPDATE SKIP LOCKED",
                )
                .await?,
                &[],
            )
            .await?
        else {
            return Ok(false);
        };
        let (id, kind, job, task_id): (i64, String, Uuid, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let loaded = Scratch::load(
            &tx,
            &[job],
            &[],
            Some(id),
            shared.settings.finished_jobs_in_memory,
            self.now(),
        )
        .await;
        let mut scratch = match loaded {
            Err(DbError::UnreadableJob(job, why)) => {
                // Its timers go with it; the next one is fired next.
                tx.rollback().await?;
                drop(client);
                self.set_aside(job, &why).await?;
                return Ok(true);
            }
            other => other?,
        };
        if let Some(timer) = scratch::timer_of(&kind, job, task_id) {
            machine::fire(shared, &mut scratch.st, timer);
        }
        let applied = scratch.apply(&tx).await?;
        tx.execute(
            &tx.prepare_cached("DELETE FROM timers WHERE id = $1")
                .await?,
            &[&id],
        )
        .await?;
        tx.commit().await?;
        // Back to the pool before taking another for the notification.
        drop(client);
        self.committed(shared, applied);
        Ok(true)
    }

    /// Drops workers not heard from within their time to live, requeueing
    /// what they held.
    async fn expire_workers(&self, shared: &Arc<Shared>) -> Result<(), DbError> {
        let client = self.client().await?;
        let expired: Vec<String> = client
            .query(
                &client.prepare_cached("SELECT id FROM workers WHERE last_seen < now() - ttl_ms * interval '1 millisecond'").await?,
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        drop(client);
        for worker_id in expired {
            let jobs = self.jobs_of(&worker_id).await?;
            self.event(shared, &jobs, std::slice::from_ref(&worker_id), |st| {
                machine::sweep_workers(shared, st);
            })
            .await?;
        }
        Ok(())
    }

    /// Why a waiting job waits (no worker offers its task type).
    /// The workers are read at most once per [`REASON_WORKERS_TTL`].
    pub(crate) async fn waiting_reason(&self, job: &Job) -> Result<Option<String>, DbError> {
        let cached = {
            let cache = self
                .reason_workers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            cache
                .as_ref()
                .filter(|(at, _)| at.elapsed() < REASON_WORKERS_TTL)
                .map(|(_, st)| st.clone())
        };
        let st = match cached {
            Some(st) => st,
            None => {
                let mut st = EngineState::default();
                for w in self.workers().await? {
                    st.workers.insert(w.worker_id.clone(), w);
                }
                let st = Arc::new(st);
                *self
                    .reason_workers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), st.clone()));
                st
            }
        };
        Ok(machine::waiting_reason(&st, job))
    }
}

/// What the notifier is asked to tell the other instances.
enum Notice {
    /// A task was queued.
    Tasks,
    /// A job ended.
    Jobs,
    /// These jobs changed.
    Changed(Vec<Uuid>),
}

/// Job ids per `changed` notification (a payload holds < 8,000 bytes).
const CHANGED_PER_NOTIFY: usize = 200;

enum TakeError {
    Db(DbError),
    Engine(EngineError),
}

impl From<DbError> for TakeError {
    fn from(e: DbError) -> Self {
        Self::Db(e)
    }
}

impl From<tokio_postgres::Error> for TakeError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}
