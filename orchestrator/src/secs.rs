//! Durations that clients, blueprints, workers and config files supply,
//! parsed once at the edge into bounded values, so nothing further in can
//! overflow a clock or panic on a conversion.
//!
//! A timeout is a positive, finite number of seconds of at most
//! [`MAX_TIMEOUT_SECS`] (30 days). A wait (`?wait=`, a poll's `?timeout=`) is
//! a finite number of seconds ≥ 0, capped by the endpoint's own maximum.

use std::time::Duration;

use serde_json::Value;

/// Longest timeout anything may set: 30 days.
pub const MAX_TIMEOUT_SECS: f64 = 30.0 * 86_400.0;

/// Why a duration was refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{field}' must be a positive number of seconds, at most {max} (30 days); got {got}",
    max = MAX_TIMEOUT_SECS
)]
pub struct TimeoutError {
    pub field: String,
    pub got: String,
}

/// A timeout in seconds, checked: positive, finite, at most 30 days.
pub fn timeout(field: &str, secs: f64) -> Result<Duration, TimeoutError> {
    if secs.is_finite() && secs > 0.0 && secs <= MAX_TIMEOUT_SECS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(TimeoutError {
            field: field.into(),
            got: secs.to_string(),
        })
    }
}

/// A timeout given as JSON: a number within bounds, or null/absent.
pub fn timeout_json(field: &str, value: Option<&Value>) -> Result<Option<f64>, TimeoutError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            timeout(field, secs).map(|_| Some(secs))
        }
        Some(other) => Err(TimeoutError {
            field: field.into(),
            got: rxon::text::clip(&other.to_string(), 40).into_owned(),
        }),
    }
}

/// A stored timeout (from a job saved earlier) as a duration, if in bounds.
pub fn stored(secs: Option<f64>) -> Option<Duration> {
    secs.and_then(|s| timeout("stored", s).ok())
}

/// A wait from a query string: finite and ≥ 0, capped at `max`. `None` when absent.
pub fn wait_query(
    field: &str,
    raw: Option<&str>,
    max: Duration,
) -> Result<Option<Duration>, String> {
    let Some(raw) = raw else { return Ok(None) };
    let secs: f64 = raw.trim().parse().map_err(|_| {
        format!(
            "'{field}' must be a number of seconds, got {:?}",
            rxon::text::clip(raw, 40)
        )
    })?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "'{field}' must be a non-negative number of seconds, got {raw}"
        ));
    }
    Ok(Some(if secs >= max.as_secs_f64() {
        max
    } else {
        Duration::from_secs_f64(secs)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timeouts_out_of_range_are_refused_with_the_field_name() {
        for bad in [json!(1e20), json!(-1), json!(0), json!("x"), json!([1])] {
            let err = timeout_json("result_timeout", Some(&bad)).unwrap_err();
            assert!(
                err.to_string().starts_with("'result_timeout' must be"),
                "{err}"
            );
        }
        assert_eq!(timeout_json("t", Some(&json!(1.5))).unwrap(), Some(1.5));
        assert!(timeout("t", f64::NAN).is_err());
        assert!(timeout("t", f64::INFINITY).is_err());
        assert_eq!(stored(Some(1e20)), None);
    }

    #[test]
    fn waits_are_capped_and_checked() {
        let max = Duration::from_secs(60);
        assert_eq!(wait_query("wait", Some("1e20"), max).unwrap(), Some(max));
        assert_eq!(
            wait_query("wait", Some("2"), max).unwrap(),
            Some(Duration::from_secs(2))
        );
        for bad in ["-1", "NaN", "x", "inf"] {
            let err = wait_query("wait", Some(bad), max).unwrap_err();
            assert!(err.starts_with("'wait' must be"), "{err}");
        }
    }
}
