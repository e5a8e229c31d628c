//! What the CLI prints: aligned tables for people, the orchestrator's JSON
//! (one document per command) with `--json`.

use serde_json::Value;

use crate::text;

pub fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// Seconds since an RFC 3339 time, for "heartbeat 3.0 s ago".
fn age(at: &Value) -> String {
    let Some(at) = at.as_str() else {
        return "-".into();
    };
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(then) => {
            let ms = (chrono::Utc::now() - then.with_timezone(&chrono::Utc)).num_milliseconds();
            format!("{:.1} s", ms.max(0) as f64 / 1000.0)
        }
        Err(_) => at.to_string(),
    }
}

pub fn job(job: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(job);
    }
    let field = |name: &str, v: &Value| println!("{name:<10} {}", text(v));
    field("job", &job["job_id"]);
    println!(
        "{:<10} {} (version {})",
        "blueprint",
        text(&job["blueprint"]),
        text(&job["blueprint_version"])
    );
    field("status", &job["status"]);
    field("state", &job["current_state"]);
    if !job["progress"].is_null() {
        field("progress", &job["progress"]);
    }
    if let Some(why) = job["waiting_reason"].as_str() {
        println!("{:<10} {why}", "waiting");
    }
    field("worker", &job["task_worker_id"]);
    field("created", &job["created_at"]);
    field("finished", &job["finished_at"]);
    if let Some(message) = job["error_message"].as_str() {
        println!("{:<10} {}: {message}", "error", text(&job["error"]["code"]));
    }
    if !job["result"].is_null() {
        println!("result");
        println!("{}", serde_json::to_string_pretty(&job["result"])?);
    }
    Ok(())
}

pub fn jobs(list: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(list);
    }
    let rows = list["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .map(|j| {
                    vec![
                        text(&j["job_id"]),
                        text(&j["blueprint"]),
                        text(&j["status"]),
                        text(&j["current_state"]),
                        text(&j["created_at"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["JOB", "BLUEPRINT", "STATUS", "STATE", "CREATED"], rows);
    if let Some(next) = list["next"].as_str() {
        println!("older: --after {next}");
    }
    Ok(())
}

pub fn history(history: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(history);
    }
    let rows = history["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| vec![text(&e["at"]), text(&e["event"]), text(&e["message"])])
                .collect()
        })
        .unwrap_or_default();
    table(&["AT", "EVENT", "MESSAGE"], rows);
    Ok(())
}

pub fn workers(list: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(list);
    }
    let rows = list
        .as_array()
        .map(|workers| {
            workers
                .iter()
                .map(|w| {
                    let skills: Vec<String> = w["supported_skills"]
                        .as_array()
                        .map(|a| a.iter().map(text).collect())
                        .unwrap_or_default();
                    let slots = w["capabilities"]["extra"]["max_concurrent_tasks"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into());
                    let busy = w["in_flight_tasks"].as_array().map_or(0, Vec::len);
                    let plugins: Vec<String> = w["plugins"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|p| {
                                    format!(
                                        "{} v{} {}",
                                        text(&p["name"]),
                                        text(&p["version"]),
                                        text(&p["state"])
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    vec![
                        text(&w["worker_id"]),
                        text(&w["worker_type"]),
                        text(&w["status"]),
                        format!("{busy}/{slots}"),
                        age(&w["last_heartbeat_at"]),
                        skills.join(","),
                        if plugins.is_empty() {
                            "-".into()
                        } else {
                            plugins.join(", ")
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "WORKER",
            "TYPE",
            "STATUS",
            "SLOTS",
            "HEARTBEAT",
            "SKILLS",
            "PLUGINS",
        ],
        rows,
    );
    Ok(())
}

pub fn blueprints(list: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(list);
    }
    let rows = list
        .as_array()
        .map(|bps| {
            bps.iter()
                .map(|b| {
                    let join = |v: &Value| {
                        v.as_array()
                            .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
                            .unwrap_or_default()
                    };
                    vec![
                        text(&b["name"]),
                        text(&b["version"]),
                        text(&b["endpoint"]),
                        join(&b["states"]),
                        join(&b["task_types"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &["BLUEPRINT", "VERSION", "ENDPOINT", "STATES", "TASK TYPES"],
        rows,
    );
    Ok(())
}

pub fn plugins(list: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(list);
    }
    let rows = list
        .as_array()
        .map(|plugins| {
            plugins
                .iter()
                .map(|p| {
                    let skills: Vec<String> = p["skills"]
                        .as_array()
                        .map(|a| a.iter().map(|s| text(&s["name"])).collect())
                        .unwrap_or_default();
                    let workers = p["workers"].as_array().map_or(0, Vec::len);
                    let sha = text(&p["sha256"]);
                    vec![
                        text(&p["name"]),
                        text(&p["current_version"]),
                        sha.chars().take(12).collect(),
                        skills.join(","),
                        workers.to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["PLUGIN", "VERSION", "SHA256", "SKILLS", "WORKERS"], rows);
    Ok(())
}

/// A deploy or cancel answer: one line for people.
pub fn message(answer: &Value, json: bool, said: &str) -> anyhow::Result<()> {
    if json {
        return print_json(answer);
    }
    println!("{said}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn heartbeat_ages_are_seconds_since() {
        let then = (chrono::Utc::now() - chrono::Duration::milliseconds(2500)).to_rfc3339();
        let age = super::age(&json!(then));
        assert!(age == "2.5 s" || age == "2.6 s", "{age}");
        assert_eq!(super::age(&json!(null)), "-");
        assert_eq!(super::age(&json!("yesterday")), "yesterday");
    }
}
