//! End-of-job webhooks: `POST <webhook_url>` with the job's outcome, retried
//! with backoff (3 tries: now, +2 s, +4 s), each bounded to 10 s.

use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::job::{Job, JobError, Object};

/// The body we send; `event` is `job_finished`, `job_failed`,
/// `job_quarantined` or `job_cancelled`, as avtomatika names them.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookBody {
    pub event: String,
    pub job_id: Uuid,
    pub blueprint: String,
    pub status: String,
    pub current_state: String,
    pub result: Option<Object>,
    pub error: Option<JobError>,
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub body: WebhookBody,
}

impl Webhook {
    pub fn for_job(url: &str, job: &Job) -> Self {
        Self {
            url: url.to_string(),
            body: WebhookBody {
                event: format!("job_{}", job.status),
                job_id: job.id,
                blueprint: job.blueprint.clone(),
                status: job.status.to_string(),
                current_state: job.current_state.clone(),
                result: job.result.clone(),
                error: job.error.clone(),
                timestamp: chrono::Utc::now().timestamp(),
            },
        }
    }

    pub async fn deliver(self, http: reqwest::Client) {
        let mut delay = Duration::from_secs(2);
        for attempt in 1..=3 {
            match http.post(&self.url).json(&self.body).send().await {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(job_id = %self.body.job_id, "webhook {} delivered to {}", self.body.event, self.url);
                    return;
                }
                Ok(resp) => tracing::warn!(
                    job_id = %self.body.job_id,
                    "webhook to {} answered {} (attempt {attempt} of 3)",
                    self.url,
                    resp.status()
                ),
                Err(e) => {
                    tracing::warn!(job_id = %self.body.job_id, "webhook to {} failed: {e} (attempt {attempt} of 3)", self.url)
                }
            }
            if attempt < 3 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        tracing::error!(job_id = %self.body.job_id, "webhook {} to {} not delivered; giving up", self.body.event, self.url);
    }
}
