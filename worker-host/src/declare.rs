//! What this worker tells the orchestrator it has, for tasks that require
//! something of their worker (a blueprint's `requires`): its resources
//! (cores, memory, devices, other properties), installed software, what
//! each skill costs and extra capabilities. The settings and their
//! environment variables are avtomatika-worker's (`CPU_CORES`, `RAM_GB`,
//! `GPU_MODEL`, `GPU_VRAM_GB`, `GPU_ID`, `WORKER_DEVICES`,
//! `INSTALLED_SOFTWARE`, `COST_PER_SKILL`, `WORKER_EXTRA_<NAME>`), plus
//! `WORKER_PROPERTIES` for properties of one's own.

use clap::Args;
use serde_json::{Map, Value, json};

/// Largest JSON text any one of these settings may be.
pub const MAX_DECLARED_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Default, Args)]
pub struct DeclareArgs {
    /// CPU cores declared [default: the cores this process may use].
    #[arg(long, env = "CPU_CORES")]
    pub cpu_cores: Option<u32>,
    /// Memory declared, in GB [default: the machine's, from /proc/meminfo].
    #[arg(long, env = "RAM_GB")]
    pub ram_gb: Option<f64>,
    /// A GPU's model: declares a device `{type = "gpu", model, id,
    /// properties = {memory_gb, vram_gb}}`.
    #[arg(long, env = "GPU_MODEL")]
    pub gpu_model: Option<String>,
    /// That GPU's memory in GB.
    #[arg(long, env = "GPU_VRAM_GB", default_value_t = 0.0)]
    pub gpu_vram_gb: f64,
    #[arg(long, env = "GPU_ID", default_value = "0")]
    pub gpu_id: String,
    /// More devices, a JSON list of `{type, model?, id?, properties?}`.
    #[arg(long, env = "WORKER_DEVICES")]
    pub devices: Option<String>,
    /// More resource properties, a JSON object (e.g. `{"zone": "eu"}`).
    #[arg(long, env = "WORKER_PROPERTIES")]
    pub properties: Option<String>,
    /// Software installed, a JSON object of name → version (added to
    /// `worker-host` and `wasmtime`, always declared).
    #[arg(long, env = "INSTALLED_SOFTWARE")]
    pub installed_software: Option<String>,
    /// What a task of each skill costs, a JSON object of skill → number
    /// (for `max_cost`).
    #[arg(long, env = "COST_PER_SKILL")]
    pub cost_per_skill: Option<String>,
}

/// The declaration, as the registration carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    /// RXON `resources`: `{properties, devices?}`.
    pub resources: Value,
    pub installed_software: Value,
    pub cost_per_skill: Value,
    /// `WORKER_EXTRA_<NAME>` values (JSON when they parse as an object or
    /// a list), by lower-case name.
    pub extra: Map<String, Value>,
}

impl Default for Declared {
    fn default() -> Self {
        Self {
            resources: json!({"properties": {}}),
            installed_software: software(Map::new()),
            cost_per_skill: json!({}),
            extra: Map::new(),
        }
    }
}

fn software(mut given: Map<String, Value>) -> Value {
    given.insert("worker-host".into(), json!(env!("CARGO_PKG_VERSION")));
    given.insert("wasmtime".into(), json!("48"));
    Value::Object(given)
}

/// A JSON setting, parsed: `what` names it in the error.
fn parsed(what: &str, text: &Option<String>) -> anyhow::Result<Option<Value>> {
    let Some(text) = text.as_deref().filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    if text.len() > MAX_DECLARED_BYTES {
        anyhow::bail!(
            "{what} is {} bytes of JSON, at most {MAX_DECLARED_BYTES}",
            text.len()
        );
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{what} is not valid JSON: {e}"))
}

fn object(what: &str, text: &Option<String>) -> anyhow::Result<Map<String, Value>> {
    match parsed(what, text)? {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m),
        Some(_) => anyhow::bail!("{what} must be a JSON object"),
    }
}

impl DeclareArgs {
    /// The declaration these settings make; `env` gives the process's
    /// environment (for `WORKER_EXTRA_*`).
    pub fn declared(
        &self,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<Declared> {
        let mut properties = object("WORKER_PROPERTIES", &self.properties)?;
        let cores = self.cpu_cores.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        });
        properties.insert("cpu_cores".into(), json!(cores));
        if let Some(ram) = self.ram_gb.or_else(machine_ram_gb) {
            properties.insert("ram_gb".into(), json!(ram));
        }
        let mut devices = Vec::new();
        if let Some(model) = self.gpu_model.as_deref().filter(|m| !m.is_empty()) {
            devices.push(json!({
                "type": "gpu",
                "model": model,
                "id": self.gpu_id,
                "properties": {"memory_gb": self.gpu_vram_gb, "vram_gb": self.gpu_vram_gb},
            }));
        }
        match parsed("WORKER_DEVICES", &self.devices)? {
            None => {}
            Some(Value::Array(more)) => {
                if let Some(bad) = more
                    .iter()
                    .position(|d| !d.get("type").is_some_and(Value::is_string))
                {
                    anyhow::bail!("WORKER_DEVICES: device {} has no `type`", bad + 1);
                }
                devices.extend(more);
            }
            Some(_) => anyhow::bail!("WORKER_DEVICES must be a JSON list of devices"),
        }
        let mut resources = Map::new();
        resources.insert("properties".into(), Value::Object(properties));
        if !devices.is_empty() {
            resources.insert("devices".into(), Value::Array(devices));
        }
        let costs = object("COST_PER_SKILL", &self.cost_per_skill)?;
        if let Some((skill, _)) = costs.iter().find(|(_, c)| !c.is_number()) {
            anyhow::bail!("COST_PER_SKILL: the cost of {skill} is not a number");
        }
        let mut extra = Map::new();
        for (key, value) in env {
            let Some(name) = key.strip_prefix("WORKER_EXTRA_") else {
                continue;
            };
            if value.len() > MAX_DECLARED_BYTES {
                anyhow::bail!("{key} is longer than {MAX_DECLARED_BYTES} bytes");
            }
            let v = if value.starts_with(['{', '[']) {
                serde_json::from_str(&value).unwrap_or(Value::String(value))
            } else {
                Value::String(value)
            };
            extra.insert(name.to_lowercase(), v);
        }
        Ok(Declared {
            resources: Value::Object(resources),
            installed_software: software(object("INSTALLED_SOFTWARE", &self.installed_software)?),
            cost_per_skill: Value::Object(costs),
            extra,
        })
    }
}

/// The machine's memory in GB (one decimal), from `/proc/meminfo`.
fn machine_ram_gb() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_devices_properties_software_and_costs_are_declared() {
        let args = DeclareArgs {
            cpu_cores: Some(16),
            ram_gb: Some(64.0),
            gpu_model: Some("NVIDIA A100".into()),
            gpu_vram_gb: 40.0,
            gpu_id: "0".into(),
            devices: Some(r#"[{"type": "tpu", "properties": {"cores": 8}}]"#.into()),
            properties: Some(r#"{"zone": "eu"}"#.into()),
            installed_software: Some(r#"{"ffmpeg": "6.1"}"#.into()),
            cost_per_skill: Some(r#"{"render": 2.5}"#.into()),
        };
        let env = [("WORKER_EXTRA_REGION".to_string(), "eu-west".to_string())];
        let d = args.declared(env.into_iter()).unwrap();
        assert_eq!(
            d.resources["properties"],
            json!({"cpu_cores": 16, "ram_gb": 64.0, "zone": "eu"})
        );
        assert_eq!(d.resources["devices"][0]["properties"]["vram_gb"], 40.0);
        assert_eq!(d.resources["devices"][1]["type"], "tpu");
        assert_eq!(d.installed_software["ffmpeg"], "6.1");
        assert_eq!(d.cost_per_skill, json!({"render": 2.5}));
        assert_eq!(d.extra["region"], "eu-west");
    }

    #[test]
    fn malformed_declarations_say_which_setting() {
        let bad = |args: DeclareArgs| args.declared(std::iter::empty()).unwrap_err().to_string();
        let e = bad(DeclareArgs {
            devices: Some("{oops".into()),
            ..Default::default()
        });
        assert!(e.starts_with("WORKER_DEVICES is not valid JSON"), "{e}");
        let e = bad(DeclareArgs {
            devices: Some(r#"[{"model": "x"}]"#.into()),
            ..Default::default()
        });
        assert!(e.contains("device 1 has no `type`"), "{e}");
        let e = bad(DeclareArgs {
            cost_per_skill: Some(r#"{"a": "cheap"}"#.into()),
            ..Default::default()
        });
        assert!(e.contains("the cost of a is not a number"), "{e}");
        let e = bad(DeclareArgs {
            installed_software: Some("[1]".into()),
            ..Default::default()
        });
        assert!(
            e.contains("INSTALLED_SOFTWARE must be a JSON object"),
            "{e}"
        );
    }
}
