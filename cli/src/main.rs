//! `taskctl`: the orchestrator's client API from a terminal.
//!
//! ```text
//! taskctl jobs submit test --data '{"message":"Hello World","multiply":3}' --wait
//! taskctl jobs list --status running
//! taskctl workers --json
//! taskctl plugins upload target/…/echo_task.wasm --name echo_task
//! ```
//!
//! Human tables by default, `--json` for scripts. The server and token come
//! from `--url`/`--token`, `TASKCTL_URL`/`TASKCTL_TOKEN`, or the config file
//! (see [`config`]).

mod api;
mod config;
mod output;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use api::Api;

#[derive(Parser)]
#[command(
    name = "taskctl",
    version,
    about = "Command-line client of the task orchestrator"
)]
struct Cli {
    /// The orchestrator's URL [default: http://localhost:8080].
    #[arg(long, env = "TASKCTL_URL", global = true)]
    url: Option<String>,
    /// A client token (`X-Client-Token`).
    #[arg(long, env = "TASKCTL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Print the orchestrator's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit, follow, list and cancel jobs.
    #[command(subcommand)]
    Jobs(Jobs),
    /// The registered workers: type, skills, slots in use, heartbeat age, plugins.
    Workers,
    /// The blueprints served, or one blueprint's source.
    Blueprints {
        #[command(subcommand)]
        command: Option<Blueprints>,
    },
    /// The plugin registry: upload, list, roll back, delete.
    #[command(subcommand)]
    Plugins(Plugins),
}

#[derive(Subcommand)]
enum Jobs {
    /// Create a job of a blueprint.
    Submit(SubmitArgs),
    /// One job.
    Get { id: String },
    /// Your jobs, newest first.
    List {
        /// Only jobs with this status (e.g. running, finished, failed).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this blueprint.
        #[arg(long)]
        blueprint: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Start below this cursor (the `next` a page printed).
        #[arg(long)]
        after: Option<String>,
    },
    /// Cancel a job that has not ended.
    Cancel { id: String },
    /// A job's history: every event with its time.
    History { id: String },
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The blueprint's name (see `taskctl blueprints`), or the last part of
    /// its endpoint (`test` for `test_flow` at `/api/v1/jobs/test`).
    pub blueprint: String,
    /// The job's data, as JSON.
    #[arg(long, default_value = "{}")]
    pub data: String,
    /// Wait for the job to end (with a progress bar while its task reports
    /// progress) and print it.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait with `--wait`.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Subcommand)]
enum Blueprints {
    /// One blueprint's TOML source.
    Get {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Deploy a blueprint file as a new version (needs a deploy token).
    Deploy {
        file: PathBuf,
        /// Its name [default: the file name without `.toml`].
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Subcommand)]
enum Plugins {
    /// Versions, hashes, skills, and what each worker runs.
    List,
    /// Upload a component as the next version (needs a deploy token).
    Upload {
        file: PathBuf,
        /// Its name [default: the file name without `.wasm`].
        #[arg(long)]
        name: Option<String>,
        /// Its manifest (TOML): what it asks to be granted.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Back to the previous version, or to `--version N`.
    Rollback {
        name: String,
        #[arg(long)]
        version: Option<u32>,
    },
    /// Stop offering a plugin.
    Delete { name: String },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = Api::new(config::resolve(cli.url, cli.token)?)?;
    let json = cli.json;
    match cli.command {
        Command::Jobs(Jobs::Submit(args)) => submit::run(&api, &args, json).await,
        Command::Jobs(Jobs::Get { id }) => {
            let job = api.get(&format!("/api/v1/jobs/{id}")).await?;
            output::job(&job, json)
        }
        Command::Jobs(Jobs::List {
            status,
            blueprint,
            limit,
            offset,
            after,
        }) => {
            let mut query = format!("?limit={limit}&offset={offset}");
            for (key, value) in [
                ("status", &status),
                ("blueprint", &blueprint),
                ("after", &after),
            ] {
                if let Some(v) = value {
                    query.push_str(&format!("&{key}={v}"));
                }
            }
            let jobs = api.get(&format!("/api/v1/jobs{query}")).await?;
            output::jobs(&jobs, json)
        }
        Command::Jobs(Jobs::Cancel { id }) => {
            let answer = api.post_empty(&format!("/api/v1/jobs/{id}/cancel")).await?;
            output::message(&answer, json, &format!("job {id} cancelled"))
        }
        Command::Jobs(Jobs::History { id }) => {
            let history = api.get(&format!("/api/v1/jobs/{id}/history")).await?;
            output::history(&history, json)
        }
        Command::Workers => output::workers(&api.get("/api/v1/workers").await?, json),
        Command::Blueprints { command: None } => {
            output::blueprints(&api.get("/api/v1/blueprints").await?, json)
        }
        Command::Blueprints {
            command: Some(Blueprints::Get { name, version }),
        } => {
            let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
            let bp = api
                .get(&format!("/api/v1/blueprints/{name}{query}"))
                .await?;
            if json {
                return output::print_json(&bp);
            }
            println!("{}", bp["source"].as_str().unwrap_or_default());
            Ok(())
        }
        Command::Blueprints {
            command: Some(Blueprints::Deploy { file, name }),
        } => {
            let name = name_of(&file, name, "toml")?;
            let source = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let answer = api
                .put_text(&format!("/api/v1/blueprints/{name}"), source)
                .await?;
            let said = format!(
                "blueprint {name} version {} serves {}",
                answer["version"], answer["endpoint"]
            );
            output::message(&answer, json, &said)
        }
        Command::Plugins(Plugins::List) => {
            output::plugins(&api.get("/api/v1/plugins").await?, json)
        }
        Command::Plugins(Plugins::Upload {
            file,
            name,
            manifest,
        }) => {
            let name = name_of(&file, name, "wasm")?;
            let bytes = std::fs::read(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let mut form = reqwest::multipart::Form::new()
                .text("name", name.clone())
                .part(
                    "plugin",
                    reqwest::multipart::Part::bytes(bytes).file_name(format!("{name}.wasm")),
                );
            if let Some(path) = manifest {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                form = form.text("manifest", text);
            }
            let answer = api.post_multipart("/api/v1/plugins", form).await?;
            let said = format!(
                "plugin {name} version {} uploaded (sha256 {})",
                answer["version"],
                answer["sha256"].as_str().unwrap_or_default()
            );
            output::message(&answer, json, &said)
        }
        Command::Plugins(Plugins::Rollback { name, version }) => {
            let body = version.map(|v| json!({"version": v})).unwrap_or(json!({}));
            let (_, answer) = api
                .post_json(&format!("/api/v1/plugins/{name}/rollback"), &body)
                .await?;
            let said = format!("plugin {name} now at version {}", answer["version"]);
            output::message(&answer, json, &said)
        }
        Command::Plugins(Plugins::Delete { name }) => {
            let answer = api.delete(&format!("/api/v1/plugins/{name}")).await?;
            output::message(&answer, json, &format!("plugin {name} deleted"))
        }
    }
}

/// `name`, else the file's stem when it ends with `.ext`.
fn name_of(file: &std::path::Path, name: Option<String>, ext: &str) -> anyhow::Result<String> {
    if let Some(name) = name {
        return Ok(name);
    }
    match (file.file_stem(), file.extension()) {
        (Some(stem), Some(e)) if e == ext => Ok(stem.to_string_lossy().into_owned()),
        _ => anyhow::bail!("cannot name it after {}: pass --name", file.display()),
    }
}

/// For `Value` fields shown in tables.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
