//! End-of-job webhooks: `POST <webhook_url>` with the job's outcome.
//!
//! A webhook is stored with the job change that ended the job (see
//! `machine::put`) and removed once delivered or given up, so one pending
//! when the orchestrator stops (even by kill -9) is sent after the restart.
//! Schedule: up to [`ATTEMPTS`] tries, at once and then after 2, 4, 8 and
//! 16 s (about 30 s in all), each bounded to 10 s; a restart starts the
//! schedule again. Delivery is at least once: a receiver may see a webhook
//! twice if the orchestrator stopped right after delivering it.
//!
//! Capacity is shared fairly: each try holds a place among the
//! `max_concurrent_webhooks` of the server, among the
//! `max_webhooks_per_client` of the job's client and among the
//! `max_webhooks_per_host` of its target host ([`Lanes`]), so one client's
//! slow receiver, or one slow host, cannot hold every place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::Shared;
use crate::job::{Job, JobError, Object};
use crate::storage::PendingWebhook;

/// Tries per delivery.
pub const ATTEMPTS: u32 = 5;
/// Bound of one try (connect, send, answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before the second try; doubled for each further one.
const FIRST_RETRY: Duration = Duration::from_secs(2);

/// The body we send; `event` is `job_finished`, `job_failed`,
/// `job_quarantined` or `job_cancelled`, as avtomatika names them.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookBody {
    pub event: String,
    pub job_id: Uuid,
    pub blueprint: String,
    pub status: String,
    pub current_state: String,
    pub result: Option<std::sync::Arc<Object>>,
    pub error: Option<JobError>,
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Object>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<Object>,
    /// A worker event's payload (`worker_event:<type>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Object>,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub job_id: Uuid,
    /// The job's client (empty for a webhook stored before a restart).
    pub owner: String,
    pub url: String,
    /// The JSON body.
    pub body: String,
    /// `job_finished`, … (for logs).
    pub event: String,
    /// Stored until delivered (end-of-job webhooks); a worker event's is
    /// sent from memory only.
    pub durable: bool,
}

impl Webhook {
    pub fn for_job(url: &str, job: &Job) -> Self {
        let body = WebhookBody {
            event: format!("job_{}", job.status),
            job_id: job.id,
            blueprint: job.blueprint.clone(),
            status: job.status.to_string(),
            current_state: job.current_state.clone(),
            result: job.result.clone(),
            error: job.error.clone(),
            timestamp: chrono::Utc::now().timestamp(),
            metadata: job.options.metadata.clone(),
            security: job.options.security.clone(),
            payload: None,
        };
        Self {
            job_id: job.id,
            owner: job.owner.clone(),
            url: url.to_string(),
            body: serde_json::to_string(&body).unwrap_or_default(),
            event: body.event,
            durable: true,
        }
    }

    /// A worker event forwarded to the job's webhook, as avtomatika sends
    /// it (`worker_event:<type>`); not stored (a restart loses one not yet
    /// delivered).
    pub fn for_event(url: &str, job: &Job, event_type: &str, payload: &Object) -> Self {
        let body = WebhookBody {
            event: format!("worker_event:{event_type}"),
            job_id: job.id,
            blueprint: job.blueprint.clone(),
            status: job.status.to_string(),
            current_state: job.current_state.clone(),
            result: None,
            error: None,
            timestamp: chrono::Utc::now().timestamp(),
            metadata: job.options.metadata.clone(),
            security: job.options.security.clone(),
            payload: Some(payload.clone()),
        };
        Self {
            job_id: job.id,
            owner: job.owner.clone(),
            url: url.to_string(),
            body: serde_json::to_string(&body).unwrap_or_default(),
            event: body.event,
            durable: false,
        }
    }

    /// What is stored until the webhook is delivered.
    pub fn pending(&self) -> PendingWebhook {
        PendingWebhook {
            job_id: self.job_id,
            url: self.url.clone(),
            body: self.body.clone(),
        }
    }

    /// A webhook stored before a restart.
    pub fn from_pending(p: PendingWebhook) -> Self {
        let event = serde_json::from_str::<serde_json::Value>(&p.body)
            .ok()
            .and_then(|v| v["event"].as_str().map(str::to_string))
            .unwrap_or_else(|| "job_ended".into());
        Self {
            job_id: p.job_id,
            owner: String::new(),
            url: p.url,
            body: p.body,
            event,
            durable: true,
        }
    }

    /// Delivers with retries (at most `max_concurrent_webhooks` requests in
    /// flight), then tells the writer it is done with. A target the egress
    /// policy refuses is given up at once, with a log line saying why.
    pub(crate) async fn deliver(self, shared: std::sync::Arc<Shared>) {
        let job_id = self.job_id;
        let mut delay = FIRST_RETRY;
        let mut delivered = false;
        // Checked again (the policy may have changed since a stored webhook
        // was accepted); names are checked when resolved.
        if let Err(why) = crate::egress::check_webhook_url(&self.url, &shared.egress) {
            tracing::error!(%job_id, "webhook {} to {} refused: {why}", self.event, self.url);
            return self.done(&shared).await;
        }
        let host = reqwest::Url::parse(&self.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        for attempt in 1..=ATTEMPTS {
            // On a shared database: still ours (see `shared_db::webhooks`).
            // The first attempt's lease is fresh: the row was just stored
            // with the job's end, or just taken over.
            if attempt > 1
                && self.durable
                && let Err(e) = shared.backend.renew_webhook(job_id).await
            {
                tracing::warn!(%job_id, "cannot renew the lease of a webhook: {e}");
            }
            // The client's place, then the host's, then the server's: a try
            // waiting for its client or host holds none of the server's.
            let Some(_client) = shared.webhook_clients.acquire(&self.owner).await else {
                return;
            };
            let Some(_host) = shared.webhook_hosts.acquire(&host).await else {
                return;
            };
            let Ok(_permit) = shared.webhook_permits.acquire().await else {
                return;
            };
            let sent = shared
                .http
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(self.body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(%job_id, "webhook {} delivered to {}", self.event, self.url);
                    delivered = true;
                    break;
                }
                Ok(resp) => tracing::warn!(
                    %job_id,
                    "webhook to {} answered {} (attempt {attempt} of {ATTEMPTS})",
                    self.url,
                    resp.status()
                ),
                Err(e) => {
                    // The whole chain: an egress refusal sits a few levels down.
                    let mut cause = String::new();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        cause.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    tracing::warn!(%job_id, "webhook to {} failed: {e}{cause} (attempt {attempt} of {ATTEMPTS})", self.url)
                }
            }
            drop((_permit, _host, _client));
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        if !delivered {
            tracing::error!(%job_id, "webhook {} to {} not delivered after {ATTEMPTS} attempts; giving up", self.event, self.url);
        }
        self.done(&shared).await;
    }

    /// Its stored row goes: done with (delivered or given up).
    async fn done(&self, shared: &Shared) {
        if !self.durable {
            return;
        }
        if let Err(e) = shared.backend.webhook_done(self.job_id).await {
            // Delivered again by the next start (one instance) or when its
            // lease runs out (shared): at least once.
            tracing::warn!(job_id = %self.job_id, "cannot mark a webhook done: {e}");
        }
    }
}

/// At most `cap` deliveries per key (a client, a target host) at once.
/// Keys without a delivery in flight or waiting are forgotten, so the map
/// holds only keys in use.
pub struct Lanes {
    cap: usize,
    open: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Lanes {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            open: Mutex::default(),
        })
    }

    /// A place in `key`'s lane (waits while it is full); `None` if closed.
    pub async fn acquire(self: &Arc<Self>, key: &str) -> Option<Lane> {
        let lane = self
            .lock()
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.cap)))
            .clone();
        let permit = lane.clone().acquire_owned().await.ok()?;
        Some(Lane {
            permit: Some(permit),
            lane,
            key: key.to_string(),
            lanes: self.clone(),
        })
    }

    /// Keys with a lane now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A place in a lane, given back when dropped.
pub struct Lane {
    permit: Option<OwnedSemaphorePermit>,
    lane: Arc<Semaphore>,
    key: String,
    lanes: Arc<Lanes>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut open = self.lanes.lock();
        // Only the map and this guard hold it: nobody in it, nobody waiting.
        if Arc::strong_count(&self.lane) == 2 {
            open.remove(&self.key);
        }
    }
}

/// The client webhooks are sent with: each attempt bounded, no redirects
/// followed, only addresses the egress policy allows (checked after
/// resolution), and never through HTTP(S)_PROXY (a proxy would connect to
/// addresses the check never saw).
pub(crate) fn client(
    egress: &Arc<crate::egress::EgressPolicy>,
) -> Result<reqwest::Client, crate::storage::StorageError> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(ATTEMPT_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(crate::egress::PolicyResolver(egress.clone())))
        .build()
        .map_err(|e| {
            crate::storage::StorageError::Backend(format!(
                "cannot build the webhook HTTP client: {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lane_holds_at_most_its_cap_and_is_forgotten_when_idle() {
        let lanes = Lanes::new(2);
        let a1 = lanes.acquire("a").await.unwrap();
        let a2 = lanes.acquire("a").await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(50), lanes.acquire("a")).await;
        assert!(waiting.is_err(), "a third place in a lane of two");
        // Another key is not held up.
        let b = lanes.acquire("b").await.unwrap();
        assert_eq!(lanes.len(), 2);
        drop((a1, a2, b));
        assert!(lanes.is_empty());
    }
}
