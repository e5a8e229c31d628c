//! `taskctl jobs submit`: create a job and, with `--wait`, follow it to its
//! end with a progress bar while its task reports progress.

use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::SubmitArgs;
use crate::api::Api;
use crate::output;

const TERMINAL: [&str; 4] = ["finished", "failed", "quarantined", "cancelled"];

pub async fn run(api: &Api, args: &SubmitArgs, json: bool) -> anyhow::Result<()> {
    let data: Value = serde_json::from_str(&args.data)
        .with_context(|| format!("--data is not JSON: {}", args.data))?;
    anyhow::ensure!(data.is_object(), "--data must be a JSON object");
    let endpoint = api.endpoint_of(&args.blueprint).await?;
    let (_, created) = api.post_json(&endpoint, &data).await?;
    let id = created["job_id"]
        .as_str()
        .context("the orchestrator did not name the job")?
        .to_string();
    if !args.wait {
        return output::message(&created, json, &format!("job {id} accepted"));
    }
    let bar = progress_bar(json);
    bar.set_message(format!("job {id}: accepted"));
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let job = loop {
        // The server answers as soon as the job ends, else after a second
        // (to draw the task's progress).
        let job = api.get(&format!("/api/v1/jobs/{id}?wait=1")).await?;
        let status = job["status"].as_str().unwrap_or_default().to_string();
        if TERMINAL.contains(&status.as_str()) {
            break job;
        }
        let (fraction, note) = progress_of(&job);
        if let Some(f) = fraction {
            bar.set_position((f * 100.0).round() as u64);
        }
        bar.set_message(format!(
            "job {id}: {status} in {}{}",
            crate::text(&job["current_state"]),
            note.map(|n| format!(": {n}")).unwrap_or_default()
        ));
        if Instant::now() >= deadline {
            bar.abandon_with_message(format!("job {id}: still {status} after {} s", args.timeout));
            anyhow::bail!("job {id} did not end within {} s (--timeout)", args.timeout);
        }
    };
    bar.finish_and_clear();
    output::job(&job, json)?;
    if job["status"] != "finished" {
        anyhow::bail!("job {id} ended {}", crate::text(&job["status"]));
    }
    Ok(())
}

/// A bar on stderr (hidden with `--json` or when stderr is not a terminal).
fn progress_bar(json: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
    if json {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos:>3}% {wide_msg}") {
        bar.set_style(style);
    }
    bar
}

/// The job's progress: a fraction 0..1 and a note, as the task reported.
fn progress_of(job: &Value) -> (Option<f64>, Option<String>) {
    let p = &job["progress"];
    let fraction = p["progress"]
        .as_f64()
        .or_else(|| p.as_f64())
        .map(|f| f.clamp(0.0, 1.0));
    let note = p["message"].as_str().map(str::to_string);
    (fraction, note)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn progress_is_read_from_the_job() {
        let job = json!({"progress": {"progress": 0.25, "message": "a quarter"}});
        assert_eq!(
            super::progress_of(&job),
            (Some(0.25), Some("a quarter".into()))
        );
        assert_eq!(super::progress_of(&json!({})), (None, None));
        assert_eq!(super::progress_of(&json!({"progress": 7})).0, Some(1.0));
    }
}
