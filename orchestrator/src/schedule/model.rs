//! Schedules as written: avtomatika's `schedules.toml`, as it is, plus cron
//! expressions, time zones and the policies for overlap and catch-up.
//!
//! ```toml
//! [nightly_report]                 # the schedule's name
//! blueprint = "report_flow"
//! input_data = { kind = "daily" }
//! daily_at = "02:30"               # or interval_seconds = 60, or cron = "*/5 * * * *",
//!                                  # or weekly_days = ["mon", "fri"] / monthly_dates = [1, 15] with time = "09:00"
//! timezone = "Europe/Moscow"       # ours; default: the orchestrator's schedule_timezone (UTC)
//! dispatch_timeout = 30            # avtomatika's, passed to the job
//! result_timeout = 60
//! metadata = { team = "ops" }
//! security = { … }
//! overlap = "skip"                 # ours: skip | queue_one | allow (default)
//! catch_up = "last"                # ours: none (default) | last | all
//! catch_up_limit = 10              # ours: with `all`, at most this many missed runs
//! client = "reports"               # ours: the client the jobs belong to
//! ```

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Most schedules one file may hold.
pub const MAX_SCHEDULES: usize = 1000;
/// Largest `catch_up_limit`.
pub const MAX_CATCH_UP: u32 = 1000;
/// Largest schedules file.
pub const MAX_SCHEDULES_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    blueprint: String,
    #[serde(default)]
    input_data: Option<toml::Table>,
    #[serde(default)]
    interval_seconds: Option<u64>,
    #[serde(default)]
    daily_at: Option<String>,
    #[serde(default)]
    weekly_days: Option<Vec<String>>,
    #[serde(default)]
    monthly_dates: Option<Vec<u32>>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    dispatch_timeout: Option<f64>,
    #[serde(default)]
    result_timeout: Option<f64>,
    #[serde(default)]
    security: Option<toml::Table>,
    #[serde(default)]
    metadata: Option<toml::Table>,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    overlap: Option<String>,
    #[serde(default)]
    catch_up: Option<String>,
    #[serde(default)]
    catch_up_limit: Option<u32>,
    #[serde(default)]
    client: Option<String>,
}

/// When a schedule runs.
#[derive(Debug, Clone)]
pub enum When {
    /// Every `n` seconds, at multiples of `n` since the Unix epoch (so every
    /// instance computes the same slots).
    Interval(u64),
    /// A cron pattern (5 fields, or 6 with seconds), in the schedule's zone.
    Cron(Box<croner::Cron>, String),
}

/// What happens to a slot while the schedule's previous job still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The slot is skipped.
    Skip,
    /// One run waits for the running job to end; further slots are skipped.
    QueueOne,
    /// The job starts anyway.
    Allow,
}

/// What happens to slots missed while no orchestrator ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// None runs; the schedule goes on from now.
    None,
    /// The latest missed slot runs.
    Last,
    /// Every missed slot runs, the latest `catch_up_limit` of them.
    All,
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub blueprint: String,
    pub input_data: Map<String, Value>,
    pub when: When,
    pub timezone: Tz,
    pub dispatch_timeout: Option<f64>,
    pub result_timeout: Option<f64>,
    pub security: Option<Map<String, Value>>,
    pub metadata: Option<Map<String, Value>>,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub catch_up_limit: u32,
    /// The client its jobs belong to.
    pub client: String,
}

impl Schedule {
    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Interval(n) => {
                let n = *n as i64;
                let next = (t.timestamp().div_euclid(n) + 1) * n;
                Utc.timestamp_opt(next, 0).single()
            }
            When::Cron(cron, _) => cron
                .find_next_occurrence(&t.with_timezone(&self.timezone), false)
                .ok()
                .map(|at| at.with_timezone(&Utc)),
        }
    }

    /// The latest slot at or before `t`.
    pub fn latest_at(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            When::Interval(n) => {
                let n = *n as i64;
                Utc.timestamp_opt(t.timestamp().div_euclid(n) * n, 0)
                    .single()
            }
            When::Cron(cron, _) => cron
                .find_previous_occurrence(&t.with_timezone(&self.timezone), true)
                .ok()
                .map(|at| at.with_timezone(&Utc)),
        }
    }

    /// Slots in `(after, upto]`, oldest first, at most the latest `limit`.
    pub fn slots_between(
        &self,
        after: DateTime<Utc>,
        upto: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut at = upto;
        // Backwards from `upto`, so a long downtime costs `limit` steps.
        while out.len() < limit {
            let Some(slot) = self.latest_at(at) else {
                break;
            };
            if slot <= after {
                break;
            }
            out.push(slot);
            at = slot - chrono::Duration::seconds(1);
        }
        out.reverse();
        out
    }

    /// The schedule in words, for the API and logs.
    pub fn describe(&self) -> String {
        match &self.when {
            When::Interval(n) => format!("every {n} s"),
            When::Cron(_, pattern) => format!("cron `{pattern}` ({})", self.timezone),
        }
    }
}

/// A schedules file problem, naming the schedule.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ScheduleError {
    pub file: String,
    pub problem: String,
}

fn json_object(t: Option<toml::Table>) -> Result<Option<Map<String, Value>>, String> {
    t.map(|t| match serde_json::to_value(t) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("not a table".to_string()),
        Err(e) => Err(e.to_string()),
    })
    .transpose()
}

/// "HH:MM" → (hour, minute).
fn clock(text: &str) -> Result<(u32, u32), String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not a time of day (HH:MM)"))?;
    match (h.parse::<u32>(), m.parse::<u32>()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 => Ok((h, m)),
        _ => Err(format!("{text:?} is not a time of day (HH:MM)")),
    }
}

fn cron_of(pattern: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        // avtomatika's weekly_days and monthly_dates must both hold.
        .dom_and_dow(true)
        .build()
        .parse(pattern)
        .map_err(|e| format!("cron {pattern:?}: {e}"))
}

const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn compile(
    name: &str,
    f: ScheduleFile,
    default_tz: Tz,
    default_client: &str,
) -> Result<Schedule, String> {
    if f.blueprint.trim().is_empty() {
        return Err("`blueprint` is empty".into());
    }
    let calendar = f.daily_at.is_some()
        || f.time.is_some()
        || f.weekly_days.is_some()
        || f.monthly_dates.is_some();
    let kinds = [f.interval_seconds.is_some(), f.cron.is_some(), calendar];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err("give exactly one of `interval_seconds`, `cron`, or `daily_at`/`time` (with `weekly_days` or `monthly_dates`)".into());
    }
    let when = if let Some(n) = f.interval_seconds {
        if n == 0 || n > 366 * 86400 {
            return Err(format!(
                "interval_seconds must be between 1 and {}; got {n}",
                366 * 86400
            ));
        }
        When::Interval(n)
    } else if let Some(pattern) = &f.cron {
        When::Cron(Box::new(cron_of(pattern)?), pattern.clone())
    } else {
        let at = f
            .daily_at
            .as_deref()
            .or(f.time.as_deref())
            .ok_or("`weekly_days` and `monthly_dates` need `time` (or `daily_at`), HH:MM")?;
        let (h, m) = clock(at)?;
        let days = match &f.weekly_days {
            None => "*".to_string(),
            Some(days) => {
                let mut nums = Vec::new();
                for d in days {
                    let d3 = d.to_ascii_lowercase();
                    let n = WEEKDAYS
                        .iter()
                        .position(|w| d3.starts_with(w))
                        .ok_or_else(|| format!("weekly_days: {d:?} is not a day (mon … sun)"))?;
                    nums.push(n.to_string());
                }
                if nums.is_empty() {
                    return Err("weekly_days is empty".into());
                }
                nums.join(",")
            }
        };
        let dates = match &f.monthly_dates {
            None => "*".to_string(),
            Some(dates) => {
                if dates.is_empty() || dates.iter().any(|d| !(1..=31).contains(d)) {
                    return Err("monthly_dates must list days 1 to 31".into());
                }
                dates
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            }
        };
        let pattern = format!("{m} {h} {dates} * {days}");
        When::Cron(Box::new(cron_of(&pattern)?), pattern)
    };
    let timezone = match &f.timezone {
        None => default_tz,
        Some(z) => Tz::from_str(z).map_err(|_| format!("timezone {z:?} is not a known zone"))?,
    };
    let overlap = match f.overlap.as_deref() {
        None | Some("allow") => Overlap::Allow,
        Some("skip") => Overlap::Skip,
        Some("queue_one") => Overlap::QueueOne,
        Some(o) => {
            return Err(format!(
                "overlap must be skip, queue_one or allow, not {o:?}"
            ));
        }
    };
    let catch_up = match f.catch_up.as_deref() {
        None | Some("none") => CatchUp::None,
        Some("last") => CatchUp::Last,
        Some("all") => CatchUp::All,
        Some(c) => return Err(format!("catch_up must be none, last or all, not {c:?}")),
    };
    let catch_up_limit = f.catch_up_limit.unwrap_or(10);
    if !(1..=MAX_CATCH_UP).contains(&catch_up_limit) {
        return Err(format!(
            "catch_up_limit must be between 1 and {MAX_CATCH_UP}; got {catch_up_limit}"
        ));
    }
    for (what, v) in [
        ("dispatch_timeout", f.dispatch_timeout),
        ("result_timeout", f.result_timeout),
    ] {
        if let Some(v) = v {
            crate::secs::timeout(what, v).map_err(|e| e.to_string())?;
        }
    }
    Ok(Schedule {
        name: name.to_string(),
        blueprint: f.blueprint,
        input_data: json_object(f.input_data)
            .map_err(|e| format!("input_data: {e}"))?
            .unwrap_or_default(),
        when,
        timezone,
        dispatch_timeout: f.dispatch_timeout,
        result_timeout: f.result_timeout,
        security: json_object(f.security).map_err(|e| format!("security: {e}"))?,
        metadata: json_object(f.metadata).map_err(|e| format!("metadata: {e}"))?,
        overlap,
        catch_up,
        catch_up_limit,
        client: f.client.unwrap_or_else(|| default_client.to_string()),
    })
}

/// One schedule's table (of a schedules file, or deployed).
pub fn parse_one(
    name: &str,
    table: toml::Value,
    default_tz: Tz,
    default_client: &str,
) -> Result<Schedule, String> {
    let file: ScheduleFile = table
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    compile(name, file, default_tz, default_client)
}

/// Parses a schedules file; `source` names it in errors.
pub fn parse(
    source: &str,
    text: &str,
    default_tz: Tz,
    default_client: &str,
) -> Result<Vec<Schedule>, ScheduleError> {
    let err = |problem: String| ScheduleError {
        file: source.to_string(),
        problem,
    };
    if text.len() > MAX_SCHEDULES_BYTES {
        return Err(err(format!(
            "{} bytes; at most {MAX_SCHEDULES_BYTES} are read",
            text.len()
        )));
    }
    let tables: BTreeMap<String, toml::Value> =
        toml::from_str(text).map_err(|e| err(format!("not valid TOML: {}", e.message())))?;
    if tables.len() > MAX_SCHEDULES {
        return Err(err(format!(
            "{} schedules; at most {MAX_SCHEDULES} are allowed",
            tables.len()
        )));
    }
    let mut out = Vec::new();
    for (name, value) in tables {
        // avtomatika skips top-level values that are not tables.
        if !value.is_table() {
            continue;
        }
        let schedule = parse_one(&name, value, default_tz, default_client)
            .map_err(|p| err(format!("schedule `{name}`: {p}")))?;
        out.push(schedule);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Schedule {
        parse("s.toml", text, Tz::UTC, "default").unwrap().remove(0)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn avtomatikas_forms_become_slots() {
        let every = one("[a]\nblueprint = \"b\"\ninterval_seconds = 10\n");
        assert_eq!(
            every.next_after(at("2026-01-01T00:00:03Z")),
            Some(at("2026-01-01T00:00:10Z"))
        );
        let daily = one("[a]\nblueprint = \"b\"\ndaily_at = \"02:30\"\n");
        assert_eq!(
            daily.next_after(at("2026-01-01T03:00:00Z")),
            Some(at("2026-01-02T02:30:00Z"))
        );
        // Weekdays and dates must both hold, as avtomatika checks them.
        let both = one(
            "[a]\nblueprint = \"b\"\ntime = \"09:00\"\nweekly_days = [\"fri\"]\nmonthly_dates = [13]\n",
        );
        assert_eq!(
            both.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-02-13T09:00:00Z"))
        );
        let zoned =
            one("[a]\nblueprint = \"b\"\ndaily_at = \"09:00\"\ntimezone = \"Europe/Moscow\"\n");
        assert_eq!(
            zoned.next_after(at("2026-01-01T00:00:00Z")),
            Some(at("2026-01-01T06:00:00Z"))
        );
        let cron = one("[a]\nblueprint = \"b\"\ncron = \"*/5 * * * *\"\n");
        assert_eq!(
            cron.slots_between(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:17:00Z"), 10),
            vec![
                at("2026-01-01T00:05:00Z"),
                at("2026-01-01T00:10:00Z"),
                at("2026-01-01T00:15:00Z")
            ]
        );
        assert_eq!(
            cron.slots_between(at("2026-01-01T00:00:00Z"), at("2026-01-01T01:00:00Z"), 2),
            vec![at("2026-01-01T00:55:00Z"), at("2026-01-01T01:00:00Z")]
        );
    }

    #[test]
    fn mistakes_name_the_schedule_and_the_field() {
        let err = |text: &str| {
            parse("s.toml", text, Tz::UTC, "default")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("[a]\nblueprint = \"b\"\n"),
            "s.toml: schedule `a`: give exactly one of `interval_seconds`, `cron`, or `daily_at`/`time` (with `weekly_days` or `monthly_dates`)"
        );
        assert!(
            err("[a]\nblueprint = \"b\"\ndaily_at = \"25:00\"\n").contains("not a time of day")
        );
        assert!(
            err("[a]\nblueprint = \"b\"\ncron = \"* * *\"\n")
                .starts_with("s.toml: schedule `a`: cron")
        );
        assert!(
            err("[a]\nblueprint = \"b\"\ninterval_seconds = 5\ntimezone = \"Mars/Base\"\n")
                .contains("not a known zone")
        );
        assert!(
            err("[a]\nblueprint = \"b\"\ninterval_seconds = 5\noverlap = \"maybe\"\n")
                .contains("overlap must be")
        );
    }
}
