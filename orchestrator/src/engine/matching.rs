//! Which workers may take a task: a dispatch's `requires` against what a
//! worker registered (RXON `resources`, `installed_software`, its skills'
//! `version` and `type`, `capabilities.extra` and `cost_per_skill`), with
//! avtomatika's rules (`rxon/models.py` `Resources.matches`,
//! `avtomatika/dispatcher.py` `_check_worker_compliance`):
//!
//! - a number required is a minimum (`vram_gb = 16` takes 16 or more); a
//!   string starting with `>=`, `>`, `<=`, `<` or `==` compares numbers
//!   that way (`">= 16"`); a list needs one element in common with the
//!   worker's (or the worker's one value among it); anything else must be
//!   equal;
//! - each device required needs a device of its own on the worker (same
//!   `type`, `model` contained in the worker's, case aside, same `id`, the
//!   properties as above);
//! - software: installed, and at the version given unless it is `any`;
//! - `skill_version`: equal to the worker's skill version, or, when it has
//!   an operator (`>=1.2, <2`), a semver range the version is in;
//! - `extra`: equal to the worker's `capabilities.extra` values;
//! - `max_cost`: the worker's `capabilities.cost_per_skill` for the task
//!   type is at most this (a worker that names no cost is never cheap
//!   enough, as in avtomatika).
//!
//! The first unmet requirement is the answer, in words, for the job's
//! `waiting_reason`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::workers::WorkerRecord;

/// What a task needs of the worker that takes it (a dispatch's `requires`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Software name → version, or `any`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed_software: BTreeMap<String, String>,
    /// A version (equal) or a semver range (`>=1.2, <2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_type: Option<String>,
    /// Values the worker's `capabilities.extra` must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
    /// Most the worker's `cost_per_skill` for the task type may be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
}

/// Hardware a task needs (RXON `Resources`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, Value>,
}

/// A device a task needs (RXON `HardwareDevice`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, Value>,
}

/// Most devices and properties one `requires` may name, in all.
pub const MAX_REQUIREMENTS: usize = 64;

impl Requirements {
    /// Checks what a blueprint gave (at load): sizes, and that every
    /// comparison and version range parses.
    pub fn validate(&self) -> Result<(), String> {
        let mut count = self.installed_software.len() + self.extra.len();
        if let Some(r) = &self.resources {
            count += r.properties.len() + r.devices.len();
            count += r.devices.iter().map(|d| d.properties.len()).sum::<usize>();
            let props = r
                .properties
                .iter()
                .chain(r.devices.iter().flat_map(|d| d.properties.iter()));
            for (key, want) in props {
                if let Value::String(s) = want
                    && let Some(Err(e)) = comparison(s)
                {
                    return Err(format!("requires: resource {key}: {e}"));
                }
            }
        }
        if count > MAX_REQUIREMENTS {
            return Err(format!(
                "requires: at most {MAX_REQUIREMENTS} resources, devices, software and extra values in all (got {count})"
            ));
        }
        if let Some(v) = &self.skill_version
            && has_operator(v)
        {
            semver::VersionReq::parse(v).map_err(|e| {
                format!("requires: skill_version {v:?} is not a version range: {e}")
            })?;
        }
        if self.max_cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
            return Err("requires: max_cost must be a number of 0 or more".into());
        }
        Ok(())
    }

    /// The first requirement `worker` does not meet for a task of
    /// `task_type`, in words; `None` when it meets them all.
    pub fn unmet(&self, worker: &WorkerRecord, task_type: &str) -> Option<String> {
        if let Some(want) = &self.resources {
            let Some(have) = worker.resources.as_ref() else {
                return Some("the worker declares no resources".into());
            };
            if let Some(why) = resources_unmet(want, have) {
                return Some(why);
            }
        }
        for (name, version) in &self.installed_software {
            match worker.installed_software.as_ref().and_then(|s| s.get(name)) {
                None => return Some(format!("software {name} is not installed")),
                Some(have) if version != "any" && have.as_str() != Some(version.as_str()) => {
                    return Some(format!(
                        "software {name} is at {}, {version} required",
                        shown(have)
                    ));
                }
                Some(_) => {}
            }
        }
        if self.skill_version.is_some() || self.skill_type.is_some() {
            let skill = worker.skills.iter().find(|s| s.name == task_type);
            if let Some(want) = &self.skill_type
                && skill.and_then(|s| s.skill_type.as_deref()) != Some(want.as_str())
            {
                return Some(format!("skill {task_type} is not of type {want}"));
            }
            if let Some(want) = &self.skill_version {
                let have = skill.and_then(|s| s.version.as_deref());
                if !version_meets(have, want) {
                    return Some(format!(
                        "skill {task_type} is at version {}, {want} required",
                        have.unwrap_or("(none)")
                    ));
                }
            }
        }
        let caps = worker.capabilities.as_ref();
        for (key, want) in &self.extra {
            if caps.and_then(|c| c.get("extra")).and_then(|e| e.get(key)) != Some(want) {
                return Some(format!("capability {key} is not {}", shown(want)));
            }
        }
        if let Some(max) = self.max_cost {
            let cost = caps
                .and_then(|c| c.get("cost_per_skill"))
                .and_then(|c| c.get(task_type))
                .and_then(Value::as_f64);
            match cost {
                Some(c) if c <= max => {}
                Some(c) => return Some(format!("costs {c} for {task_type}, at most {max}")),
                None => return Some(format!("names no cost for {task_type} (max_cost {max})")),
            }
        }
        None
    }
}

/// The worker's registered resources, as RXON `Resources`.
fn resources_unmet(want: &Resources, have: &Value) -> Option<String> {
    let mut devices: Vec<&Value> = have
        .get("devices")
        .and_then(Value::as_array)
        .map(|d| d.iter().collect())
        .unwrap_or_default();
    for (n, dev) in want.devices.iter().enumerate() {
        match devices.iter().position(|d| device_meets(d, dev)) {
            Some(i) => {
                devices.remove(i);
            }
            None => {
                return Some(format!(
                    "no device matching required device {} ({})",
                    n + 1,
                    device_words(dev)
                ));
            }
        }
    }
    let props = have.get("properties");
    for (key, want) in &want.properties {
        if let Some(why) = property_unmet(key, want, props.and_then(|p| p.get(key))) {
            return Some(why);
        }
    }
    None
}

fn device_meets(have: &Value, want: &Device) -> bool {
    let text = |k: &str| have.get(k).and_then(Value::as_str);
    if want
        .kind
        .as_deref()
        .is_some_and(|k| text("type") != Some(k))
    {
        return false;
    }
    if let Some(model) = &want.model
        && !text("model").is_some_and(|m| m.to_lowercase().contains(&model.to_lowercase()))
    {
        return false;
    }
    if want.id.as_deref().is_some_and(|id| text("id") != Some(id)) {
        return false;
    }
    let props = have.get("properties");
    want.properties
        .iter()
        .all(|(k, v)| property_unmet(k, v, props.and_then(|p| p.get(k))).is_none())
}

fn device_words(d: &Device) -> String {
    let mut words = Vec::new();
    if let Some(k) = &d.kind {
        words.push(format!("type {k}"));
    }
    if let Some(m) = &d.model {
        words.push(format!("model {m}"));
    }
    for (k, v) in &d.properties {
        words.push(format!("{k} {}", shown(v)));
    }
    words.join(", ")
}

/// Whether value `have` of property `key` meets `want` (the rules above).
fn property_unmet(key: &str, want: &Value, have: Option<&Value>) -> Option<String> {
    let Some(have) = have.filter(|h| !h.is_null()) else {
        return Some(format!("resource {key} is not declared"));
    };
    let met = match (want.as_str().and_then(comparison), want, have) {
        (Some(cmp), _, _) => match (cmp, have.as_f64()) {
            (Ok((op, bound)), Some(h)) => op.holds(h, bound),
            _ => false,
        },
        (None, Value::Number(w), Value::Number(h)) => h.as_f64() >= w.as_f64(),
        (None, Value::Array(w), Value::Array(h)) => h.iter().any(|x| w.contains(x)),
        (None, Value::Array(w), h) => w.contains(h),
        (None, w, Value::Array(h)) => h.contains(w),
        (None, w, h) => w == h,
    };
    (!met).then(|| {
        format!(
            "resource {key} is {}, {} required",
            shown(have),
            shown(want)
        )
    })
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

impl Op {
    fn holds(self, have: f64, bound: f64) -> bool {
        match self {
            Op::Ge => have >= bound,
            Op::Gt => have > bound,
            Op::Le => have <= bound,
            Op::Lt => have < bound,
            Op::Eq => have == bound,
        }
    }
}

/// `">= 16"` → (≥, 16); `None` when the text starts with no operator.
fn comparison(s: &str) -> Option<Result<(Op, f64), String>> {
    let s = s.trim();
    let (op, rest) = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        (">", Op::Gt),
        ("<", Op::Lt),
    ]
    .into_iter()
    .find_map(|(p, op)| s.strip_prefix(p).map(|rest| (op, rest)))?;
    Some(
        rest.trim()
            .parse::<f64>()
            .map(|n| (op, n))
            .map_err(|_| format!("{s:?} compares with something that is not a number")),
    )
}

fn has_operator(v: &str) -> bool {
    v.trim_start().starts_with(['>', '<', '=', '^', '~', '*']) || v.contains(',')
}

fn version_meets(have: Option<&str>, want: &str) -> bool {
    let Some(have) = have else { return false };
    if !has_operator(want) {
        return have == want;
    }
    match (
        semver::VersionReq::parse(want),
        semver::Version::parse(have.trim_start_matches('v')),
    ) {
        (Ok(req), Ok(v)) => req.matches(&v),
        _ => false,
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn worker(resources: Value, software: Value, caps: Value) -> WorkerRecord {
        let mut w = WorkerRecord::test("w", &["render"]);
        w.resources = Some(resources);
        w.installed_software = Some(software);
        w.capabilities = Some(caps);
        w.skills[0].version = Some("1.4.2".into());
        w
    }

    fn req(v: Value) -> Requirements {
        let r: Requirements = serde_json::from_value(v).expect("requirements");
        r.validate().expect("valid");
        r
    }

    #[test]
    fn resources_follow_avtomatika_rules() {
        let w = worker(
            json!({"devices": [{"type": "gpu", "model": "NVIDIA A100", "properties": {"vram_gb": 40}}],
                   "properties": {"cpu_cores": 8, "ram_gb": 32, "zone": "eu", "tags": ["ssd", "avx512"]}}),
            json!({"ffmpeg": "6.1"}),
            json!({"cost_per_skill": {"render": 2.5}, "extra": {"region": "eu"}}),
        );
        let ok = |v: Value| req(v).unmet(&w, "render");
        assert_eq!(
            ok(json!({"resources": {"properties": {"ram_gb": 16}}})),
            None
        );
        assert_eq!(
            ok(json!({"resources": {"properties": {"ram_gb": ">= 32", "cpu_cores": "< 9"}}})),
            None
        );
        assert_eq!(
            ok(
                json!({"resources": {"devices": [{"type": "gpu", "model": "a100", "properties": {"vram_gb": 16}}]}})
            ),
            None
        );
        assert_eq!(
            ok(json!({"resources": {"properties": {"tags": ["avx512"], "zone": ["eu", "us"]}}})),
            None
        );
        assert_eq!(
            ok(
                json!({"installed_software": {"ffmpeg": "any"}, "skill_version": ">=1.2, <2", "extra": {"region": "eu"}, "max_cost": 3})
            ),
            None
        );
        assert_eq!(ok(json!({"skill_version": "1.4.2"})), None);
        assert_eq!(
            ok(json!({"resources": {"properties": {"ram_gb": 64}}})).as_deref(),
            Some("resource ram_gb is 32, 64 required")
        );
        assert_eq!(
            ok(json!({"resources": {"devices": [{"type": "gpu"}, {"type": "gpu"}]}})).as_deref(),
            Some("no device matching required device 2 (type gpu)")
        );
        assert!(ok(json!({"resources": {"properties": {"gpu_vram_gb": ">= 16"}}})).is_some());
        assert!(ok(json!({"installed_software": {"ffmpeg": "5.0"}})).is_some());
        assert!(ok(json!({"installed_software": {"blender": "any"}})).is_some());
        assert!(ok(json!({"skill_version": "^2"})).is_some());
        assert!(ok(json!({"skill_version": "1.4"})).is_some());
        assert!(ok(json!({"max_cost": 2})).is_some());
        assert!(ok(json!({"extra": {"region": "us"}})).is_some());
        assert!(req(json!({"max_cost": 1})).unmet(&w, "other").is_some());
        let bare = WorkerRecord::test("bare", &["render"]);
        assert!(
            req(json!({"resources": {"properties": {"ram_gb": 1}}}))
                .unmet(&bare, "render")
                .is_some()
        );
    }

    #[test]
    fn bad_requirements_are_refused_at_load() {
        let bad = |v: Value| {
            serde_json::from_value::<Requirements>(v)
                .map_err(|e| e.to_string())
                .and_then(|r| r.validate())
        };
        assert!(bad(json!({"resources": {"properties": {"ram_gb": ">= lots"}}})).is_err());
        assert!(bad(json!({"skill_version": ">=one"})).is_err());
        assert!(bad(json!({"max_cost": -1})).is_err());
        assert!(bad(json!({"gpu": true})).is_err());
    }
}
