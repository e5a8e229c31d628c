//! Rate keys: at most `per_second` tasks with one key value are handed out
//! per second, up to `burst` at once after a quiet spell (a dispatch's
//! `rate = { key, per_second, burst }`).
//!
//! A key's bucket is one instant, its *theoretical arrival time* (the
//! generic cell rate algorithm): a task may go when that time is at most
//! `burst - 1` intervals ahead of now, and each task that goes moves it one
//! interval on (from now, when it had fallen behind). A key without an
//! instant, or with one in the past, has its whole burst free. On one
//! instance the instants live in [`super::EngineState::rates`] (a restart
//! starts every key with its burst free); on PostgreSQL in the
//! `rate_buckets` table, read and written with the take under a lock per
//! key, so every instance shares one bucket per key.

use std::time::Duration;

use tokio::time::Instant;

use crate::job::TaskRate;

/// Most buckets one instance keeps in memory; past it, those with their
/// whole burst free (no information in them) are dropped.
pub const KEPT_BUCKETS: usize = 100_000;

/// The time between two tasks of the rate.
fn interval(rate: &TaskRate) -> Duration {
    Duration::from_secs_f64(1.0 / rate.per_second)
}

/// When a task of `rate` may go, if not now, given its key's instant.
pub fn ready_at(tat: Option<Instant>, rate: &TaskRate, now: Instant) -> Option<Instant> {
    let tolerance = interval(rate).saturating_mul(rate.burst.saturating_sub(1));
    let from = tat?.checked_sub(tolerance)?;
    (from > now).then_some(from)
}

/// The key's instant once a task of `rate` went at `now`.
pub fn after_one(tat: Option<Instant>, rate: &TaskRate, now: Instant) -> Instant {
    tat.map_or(now, |t| t.max(now)) + interval(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: f64, burst: u32) -> TaskRate {
        TaskRate {
            key: "k".into(),
            per_second,
            burst,
        }
    }

    #[test]
    fn a_burst_goes_at_once_then_one_per_interval() {
        let r = rate(2.0, 3);
        let now = Instant::now();
        let mut tat = None;
        for _ in 0..3 {
            assert_eq!(ready_at(tat, &r, now), None);
            tat = Some(after_one(tat, &r, now));
        }
        // The fourth waits half a second (one interval).
        let at = ready_at(tat, &r, now).expect("the burst is spent");
        assert_eq!(at - now, Duration::from_millis(500));
        assert_eq!(ready_at(tat, &r, at), None);
    }

    #[test]
    fn a_quiet_spell_frees_the_burst_and_no_more() {
        let r = rate(10.0, 2);
        let now = Instant::now();
        let tat = Some(after_one(None, &r, now));
        let later = now + Duration::from_secs(60);
        // Two go at once after a minute, not 600.
        let tat = after_one(tat, &r, later);
        assert_eq!(ready_at(Some(tat), &r, later), None);
        let tat = after_one(Some(tat), &r, later);
        assert!(ready_at(Some(tat), &r, later).is_some());
    }

    #[test]
    fn without_a_burst_one_goes_per_interval() {
        let r = rate(1.0, 1);
        let now = Instant::now();
        let tat = after_one(None, &r, now);
        assert_eq!(
            ready_at(Some(tat), &r, now),
            Some(now + Duration::from_secs(1))
        );
    }
}
