//! Hashes one of its job's files as it streams in, and writes a derived file
//! of its job: the `objects` interface (the manifest must grant `[objects]`,
//! see `sha256_task.toml`).
//!
//! `sha256_file` params: `input` (an `s3://` URI, or the name of one of the
//! job's files), `derived_bytes` (how much of the input, each byte inverted,
//! to write as `derived_name`; 0 writes nothing). Result: the input's
//! `sha256` and `size`, and `derived` (the written file's URI) with its
//! `derived_sha256`.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use taskworker_sdk::{Context, JsonSchema, Skill, TaskError, objects};

#[derive(Deserialize, JsonSchema)]
struct Params {
    input: String,
    #[serde(default)]
    derived_bytes: u64,
    #[serde(default = "default_name")]
    derived_name: String,
}

fn default_name() -> String {
    "derived.bin".into()
}

#[derive(Serialize, JsonSchema)]
struct Digests {
    sha256: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    derived: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    derived_sha256: Option<String>,
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(ctx: &Context, p: Params) -> Result<Digests, TaskError> {
    let mut input = objects::open(&p.input).map_err(TaskError::permanent)?;
    let total = input.size();
    let mut out = if p.derived_bytes > 0 {
        Some(objects::create(&p.derived_name).map_err(TaskError::permanent)?)
    } else {
        None
    };
    let (mut whole, mut derived) = (Sha256::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    let (mut size, mut left) = (0u64, p.derived_bytes);
    loop {
        let n = input
            .read(&mut buf)
            .map_err(|e| TaskError::transient(e.to_string()))?;
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        size += n as u64;
        if let Some(out) = out.as_mut().filter(|_| left > 0) {
            let take = (left as usize).min(n);
            let part: Vec<u8> = buf[..take].iter().map(|b| !b).collect();
            derived.update(&part);
            out.write_all(&part)
                .map_err(|e| TaskError::transient(e.to_string()))?;
            left -= take as u64;
        }
        if total > 0 && size % (32 << 20) < n as u64 {
            ctx.progress(size as f32 / total as f32, "hashing");
        }
    }
    let derived_uri = match out {
        Some(out) => Some(out.finish().map_err(TaskError::transient)?.uri),
        None => None,
    };
    ctx.info(&format!("hashed {size} bytes"));
    Ok(Digests {
        sha256: hex(&whole.finalize()),
        size,
        derived_sha256: derived_uri.as_ref().map(|_| hex(&derived.finalize())),
        derived: derived_uri,
    })
}

fn skills() -> Vec<Skill> {
    vec![Skill::new(
        "sha256_file",
        "1.0.0",
        "SHA-256 of one of the job's files, and a derived file",
        sha256_file,
    )]
}

taskworker_sdk::export_plugin!(skills);
