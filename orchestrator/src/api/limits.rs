//! Per-client limits from the client's config or its plan: a request rate
//! (a token bucket per client, in each instance: 429 with `Retry-After`
//! past it), its own `max_active_jobs`, and monthly quotas of requests
//! (`monthly_attempts`, avtomatika's name) and of jobs created
//! (`monthly_jobs`).
//!
//! Quotas count per calendar month (UTC) in storage, shared by every
//! instance: each instance counts in memory and adds its counts to storage
//! about once a second ([`FLUSH_EVERY`]), learning every instance's totals
//! back. A client is refused once the total it knows (plus its own counts
//! not yet added) reaches the quota, so several instances (or a restart)
//! may together admit what they admit within that second past it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use chrono::{Datelike, TimeZone, Utc};

use super::error::ApiError;
use crate::storage::{UsageKey, UsageKind};

/// How often each instance adds its quota counts to storage.
pub const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// API requests per calendar month.
    pub monthly_attempts: Option<u64>,
    /// Jobs created per calendar month.
    pub monthly_jobs: Option<u64>,
}

impl ClientLimits {
    fn quota(&self, kind: UsageKind) -> Option<u64> {
        match kind {
            UsageKind::Attempts => self.monthly_attempts,
            UsageKind::Jobs => self.monthly_jobs,
        }
    }

    fn plan_note(&self) -> String {
        self.plan
            .as_deref()
            .map(|p| format!(" (plan {p})"))
            .unwrap_or_default()
    }
}

/// One client's count of one kind in this month, as this instance knows it.
#[derive(Debug, Default)]
struct Count {
    period: String,
    /// `known` was read from storage (at the first request of the month
    /// this instance saw, then at each adding).
    read: bool,
    /// The total in storage when last added to.
    known: u64,
    /// Counted here and not yet added.
    pending: u64,
    /// Being added now.
    adding: u64,
}

/// `client`'s count of `kind` in `period`: a count of an earlier month
/// starts again.
fn this_month<'a>(
    counts: &'a mut HashMap<(String, UsageKind), Count>,
    client: &str,
    kind: UsageKind,
    period: &str,
) -> &'a mut Count {
    let c = counts.entry((client.to_string(), kind)).or_default();
    if c.period != period {
        *c = Count {
            period: period.to_string(),
            ..Count::default()
        };
    }
    c
}

/// The month `now` is in (`YYYY-MM`) and the seconds until the next.
fn month_of(now: chrono::DateTime<Utc>) -> (String, u64) {
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let next = Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(now);
    let left = (next - now).num_seconds().max(1) as u64;
    (format!("{:04}-{:02}", now.year(), now.month()), left)
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
    counts: Mutex<HashMap<(String, UsageKind), Count>>,
}

impl Limits {
    pub fn new(by_client: HashMap<String, ClientLimits>) -> Self {
        Self {
            by_client,
            buckets: Mutex::default(),
            counts: Mutex::default(),
        }
    }

    /// Whether any client has a monthly quota (storage is then added to).
    pub fn has_quotas(&self) -> bool {
        self.by_client
            .values()
            .any(|l| l.monthly_attempts.is_some() || l.monthly_jobs.is_some())
    }

    /// A 429 when `client` has reached its quota of `kind` this month;
    /// else one more is counted when `count` says so. The first time this
    /// instance sees the client in a month, the count so far is read from
    /// `engine`'s storage.
    async fn quota(
        &self,
        engine: Option<&crate::engine::Engine>,
        client: &str,
        kind: UsageKind,
        count: bool,
    ) -> Result<(), ApiError> {
        let Some(limits) = self.of(client) else {
            return Ok(());
        };
        let Some(quota) = limits.quota(kind) else {
            return Ok(());
        };
        let (period, left) = month_of(Utc::now());
        let unread = {
            let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts
                .get(&(client.to_string(), kind))
                .is_none_or(|c| c.period != period || !c.read)
        };
        let mut stored = None;
        if let (true, Some(engine)) = (unread, engine) {
            let key = UsageKey {
                owner: client.to_string(),
                kind,
                period: period.clone(),
            };
            match engine.add_usage(vec![(key, 0)]).await {
                Ok(totals) => stored = totals.first().map(|(_, n)| *n),
                Err(e) => tracing::warn!("cannot read client {client}'s quota count: {e}"),
            }
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = this_month(&mut counts, client, kind, &period);
        if let Some(n) = stored {
            c.known = c.known.max(n);
            c.read = true;
        }
        if c.known + c.pending + c.adding >= quota {
            let what = match kind {
                UsageKind::Attempts => "requests",
                UsageKind::Jobs => "jobs created",
            };
            return Err(ApiError::Saturated(
                format!(
                    "Quota exceeded: client {client}{} may make {quota} {what} a month and has made them in {period} (UTC); retry in {left} s, when the month ends",
                    limits.plan_note()
                ),
                left,
            ));
        }
        if count {
            c.pending += 1;
        }
        Ok(())
    }

    /// Before a create: a 429 when `client` has created its monthly jobs.
    pub async fn may_create(
        &self,
        engine: Option<&crate::engine::Engine>,
        client: &str,
    ) -> Result<(), ApiError> {
        self.quota(engine, client, UsageKind::Jobs, false).await
    }

    /// A job of `client`'s was created: it counts, even when creates
    /// racing it reached the quota meanwhile.
    pub fn created(&self, client: &str) {
        if self
            .of(client)
            .and_then(|l| l.quota(UsageKind::Jobs))
            .is_none()
        {
            return;
        }
        let (period, _) = month_of(Utc::now());
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        this_month(&mut counts, client, UsageKind::Jobs, &period).pending += 1;
    }

    /// Adds this instance's counts to storage, and learns the totals
    /// (every instance's) back. Counts that could not be added are kept
    /// for the next time.
    pub async fn flush(&self, engine: &crate::engine::Engine) {
        let deltas: Vec<(UsageKey, u64)> = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            counts
                .iter_mut()
                .map(|((owner, kind), c)| {
                    c.adding += std::mem::take(&mut c.pending);
                    let key = UsageKey {
                        owner: owner.clone(),
                        kind: *kind,
                        period: c.period.clone(),
                    };
                    (key, c.adding)
                })
                .collect()
        };
        if deltas.is_empty() {
            return;
        }
        let totals = engine.add_usage(deltas.clone()).await;
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match totals {
            Ok(totals) => {
                for (key, total) in totals {
                    if let Some(c) = counts.get_mut(&(key.owner, key.kind))
                        && c.period == key.period
                    {
                        c.known = total;
                        c.read = true;
                        c.adding = 0;
                    }
                }
            }
            Err(e) => {
                tracing::warn!("cannot add the clients' quota counts to storage: {e}");
                for (key, _) in deltas {
                    if let Some(c) = counts.get_mut(&(key.owner, key.kind)) {
                        c.pending += std::mem::take(&mut c.adding);
                    }
                }
            }
        }
        // Past months are done with.
        let (period, _) = month_of(Utc::now());
        counts.retain(|_, c| c.period == period);
    }

    pub fn of(&self, client: &str) -> Option<&ClientLimits> {
        self.by_client.get(client)
    }

    /// Takes one request from `client`'s bucket (a 429 with the seconds
    /// until the next token when it is empty) and counts it against its
    /// monthly attempts (a 429 until the month ends past them).
    pub async fn admit(
        &self,
        engine: Option<&crate::engine::Engine>,
        client: &str,
    ) -> Result<(), ApiError> {
        self.take_token(client)?;
        self.quota(engine, client, UsageKind::Attempts, true).await
    }

    fn take_token(&self, client: &str) -> Result<(), ApiError> {
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
        let plan = self.of(client).map(|l| l.plan_note()).unwrap_or_default();
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

    #[tokio::test]
    async fn a_burst_then_the_rate_then_429_with_the_wait() {
        let limits = Limits::new(HashMap::from([(
            "c".to_string(),
            ClientLimits {
                plan: Some("free".into()),
                rate: Some((1.0, 3)),
                ..ClientLimits::default()
            },
        )]));
        for _ in 0..3 {
            limits.admit(None, "c").await.unwrap();
        }
        match limits.admit(None, "c").await {
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
        limits.admit(None, "other").await.unwrap();
    }

    #[tokio::test]
    async fn a_monthly_quota_refuses_until_the_month_ends() {
        let limits = Limits::new(HashMap::from([(
            "c".to_string(),
            ClientLimits {
                monthly_attempts: Some(2),
                monthly_jobs: Some(1),
                ..ClientLimits::default()
            },
        )]));
        limits.admit(None, "c").await.unwrap();
        limits.admit(None, "c").await.unwrap();
        match limits.admit(None, "c").await {
            Err(ApiError::Saturated(msg, wait)) => {
                assert!((1..=31 * 86_400).contains(&wait), "{wait}");
                assert!(msg.contains("may make 2 requests a month"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        limits.may_create(None, "c").await.unwrap();
        limits.created("c");
        assert!(limits.may_create(None, "c").await.is_err());
        // A create that raced past the check still counts.
        limits.created("c");
        let pending = limits.counts.lock().unwrap()[&("c".to_string(), UsageKind::Jobs)].pending;
        assert_eq!(pending, 2);
        limits.admit(None, "other").await.unwrap();
    }

    #[test]
    fn the_month_and_the_seconds_to_the_next() {
        let at = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 0).unwrap();
        assert_eq!(month_of(at), ("2026-12".to_string(), 60));
        let at = Utc.with_ymd_and_hms(2027, 2, 1, 0, 0, 0).unwrap();
        assert_eq!(month_of(at), ("2027-02".to_string(), 28 * 86_400));
    }
}
