//! Per-client limits from the client's config or its plan: a request rate
//! (a token bucket per client, in each instance: 429 with `Retry-After`
//! past it) and its own `max_active_jobs`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::error::ApiError;

/// One client's limits, resolved from `[clients.<name>]` over its
/// `[plans.<plan>]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientLimits {
    /// The plan it is on, for messages.
    pub plan: Option<String>,
    /// Requests per second and the burst above it.
    pub rate: Option<(f64, u32)>,
    /// Jobs it may have that have not ended (else the server's
    /// `max_active_jobs_per_client`).
    pub max_active_jobs: Option<usize>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every client's limits, and the buckets of those with a rate.
#[derive(Default)]
pub struct Limits {
    by_client: HashMap<String, ClientLimits>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limits {
    pub fn new(by_client: HashMap<String, ClientLimits>) -> Self {
        Self {
            by_client,
            buckets: Mutex::default(),
        }
    }

    pub fn of(&self, client: &str) -> Option<&ClientLimits> {
        self.by_client.get(client)
    }

    /// Takes one request from `client`'s bucket; a 429 with the seconds
    /// until the next token when it is empty.
    pub fn admit(&self, client: &str) -> Result<(), ApiError> {
        let Some((per_second, burst)) = self.of(client).and_then(|l| l.rate) else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(client.to_string()).or_insert(Bucket {
            tokens: f64::from(burst),
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(burst));
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = ((1.0 - bucket.tokens) / per_second).ceil().max(1.0) as u64;
        let plan = self
            .of(client)
            .and_then(|l| l.plan.as_deref())
            .map(|p| format!(" (plan {p})"))
            .unwrap_or_default();
        Err(ApiError::Saturated(
            format!(
                "Too many requests: client {client}{plan} may make {per_second} per second (burst {burst}); retry in {wait} s"
            ),
            wait,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_429_with_the_wait() {
        let limits = Limits::new(HashMap::from([(
            "c".to_string(),
            ClientLimits {
                plan: Some("free".into()),
                rate: Some((1.0, 3)),
                max_active_jobs: None,
            },
        )]));
        for _ in 0..3 {
            limits.admit("c").unwrap();
        }
        match limits.admit("c") {
            Err(ApiError::Saturated(msg, wait)) => {
                assert_eq!(wait, 1);
                assert!(
                    msg.contains("client c (plan free) may make 1 per second (burst 3)"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Others are untouched; a client without a rate is not counted.
        limits.admit("other").unwrap();
    }
}
