//! Each instance's maintenance loop: fires due timers, drops expired
//! workers, takes over orphaned webhooks, prunes nonces, sessions and past
//! rate buckets, and wakes waiters whose notification was missed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::scratch::{self, Scratch};
use super::{DbError, SharedDb, glance};
use crate::engine::{Shared, machine};

impl SharedDb {
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
            // The regular pause, shortened when a timer added here is due
            // sooner (other instances' timers: at their regular look).
            let mut until = Instant::now() + pause;
            loop {
                if let Some(at) = self.take_early_look() {
                    until = until.min(at);
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = self.look_wake.notified() => {}
                    _ = shared.stopping.cancelled() => return,
                }
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
                            let hook = crate::engine::webhook::Webhook::from_pending(pending);
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
                             DELETE FROM dashboard_sessions WHERE expires_at <= now();
                             DELETE FROM rate_buckets WHERE tat < now();",
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
            &[],
            Some(id),
            shared.settings.finished_jobs_in_memory,
            self.now(),
        )
        .await;
        let (mut scratch, _) = match loaded {
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
        let applied = scratch.apply(&tx, shared).await?;
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

    /// Asks the maintenance loop to look at `at` (when a timer added here
    /// is due), if that is before its next look.
    pub(super) fn look_at(&self, at: Instant) {
        let mut early = self.look_early.lock().unwrap_or_else(|p| p.into_inner());
        if early.is_none_or(|e| at < e) {
            *early = Some(at);
            self.look_wake.notify_one();
        }
    }

    fn take_early_look(&self) -> Option<Instant> {
        self.look_early
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
