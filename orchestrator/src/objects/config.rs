//! `[objects]` of the configuration file, and the flags and environment
//! variables (avtomatika's `S3_*` names) that override it.
//!
//! ```toml
//! [objects]
//! dir = "data/objects"          # the local store (used when no endpoint is set)
//! endpoint = "http://127.0.0.1:9000"   # an S3-compatible service (or S3_ENDPOINT_URL)
//! access_key = "…"              # or S3_ACCESS_KEY
//! secret_key = "…"              # or S3_SECRET_KEY
//! region = "us-east-1"          # or S3_REGION
//! bucket = "avtomatika-payloads"   # or S3_DEFAULT_BUCKET
//! max_upload_bytes = 5368709120 # largest file uploaded through the orchestrator
//! retention = "24h"             # files outlive their job this long (or OBJECT_RETENTION)
//! auto_cleanup = true           # false keeps files for ever (or S3_AUTO_CLEANUP)
//! sweep_seconds = 60            # how often ended jobs' files are looked for
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use super::store::{
    Backend, DEFAULT_BUCKET, DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_RETENTION, ObjectsConfig,
};

/// The flags and environment variables of the object store.
#[derive(Debug, Default, clap::Args)]
pub struct ObjectsArgs {
    /// Directory of the local object store [default: data/objects].
    #[arg(long, env = "OBJECTS_DIR")]
    pub objects_dir: Option<PathBuf>,
    /// An S3-compatible service for jobs' files instead of the directory.
    #[arg(long, env = "S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
    #[arg(long, env = "S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<String>,
    #[arg(long, env = "S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// [default: us-east-1]
    #[arg(long, env = "S3_REGION")]
    pub s3_region: Option<String>,
    /// [default: avtomatika-payloads]
    #[arg(long, env = "S3_DEFAULT_BUCKET")]
    pub s3_default_bucket: Option<String>,
    /// `false` keeps jobs' files after their jobs end [default: true].
    #[arg(long, env = "S3_AUTO_CLEANUP")]
    pub s3_auto_cleanup: Option<String>,
    /// How long jobs' files outlive their jobs (`24h`, `0s`) [default: 24h].
    #[arg(long, env = "OBJECT_RETENTION")]
    pub object_retention: Option<String>,
}

/// `[objects]` in the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectsFile {
    dir: Option<PathBuf>,
    endpoint: Option<String>,
    access_key: Option<String>,
    secret_key: Option<String>,
    region: Option<String>,
    bucket: Option<String>,
    max_upload_bytes: Option<u64>,
    retention: Option<String>,
    auto_cleanup: Option<bool>,
    sweep_seconds: Option<f64>,
}

/// The flags and environment over the file's table.
pub fn resolve(args: ObjectsArgs, file: ObjectsFile) -> anyhow::Result<ObjectsConfig> {
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let endpoint = nonempty(args.s3_endpoint_url).or(nonempty(file.endpoint));
    let access_key = nonempty(args.s3_access_key).or(nonempty(file.access_key));
    let secret_key = nonempty(args.s3_secret_key).or(nonempty(file.secret_key));
    let backend = match (endpoint, access_key, secret_key) {
        (None, None, None) => Backend::Local(
            args.objects_dir
                .or(file.dir)
                .unwrap_or_else(|| PathBuf::from("data/objects")),
        ),
        (Some(endpoint), Some(access_key), Some(secret_key)) => {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                bail!("S3_ENDPOINT_URL must start with http:// or https://, not {endpoint:?}");
            }
            Backend::S3 {
                endpoint: endpoint.trim_end_matches('/').to_string(),
                access_key,
                secret_key,
                region: nonempty(args.s3_region)
                    .or(nonempty(file.region))
                    .unwrap_or_else(|| "us-east-1".into()),
            }
        }
        _ => bail!(
            "object storage: S3_ENDPOINT_URL, S3_ACCESS_KEY and S3_SECRET_KEY (or endpoint, access_key and secret_key in [objects]) must be set together"
        ),
    };
    let bucket = nonempty(args.s3_default_bucket)
        .or(nonempty(file.bucket))
        .unwrap_or_else(|| DEFAULT_BUCKET.into());
    if bucket.len() < 3
        || bucket.len() > 63
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        bail!(
            "the bucket name {bucket:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '-', '.')"
        );
    }
    let auto_cleanup = match nonempty(args.s3_auto_cleanup) {
        Some(text) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => bail!("S3_AUTO_CLEANUP must be true or false, not {text:?}"),
        },
        None => file.auto_cleanup.unwrap_or(true),
    };
    let retention = match nonempty(args.object_retention).or(file.retention) {
        None => DEFAULT_RETENTION,
        Some(text) => humantime::parse_duration(text.trim()).with_context(|| {
            format!("object retention must be a duration such as `24h`, `7d` or `0s`, not {text:?}")
        })?,
    };
    let max_upload_bytes = file.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES);
    if max_upload_bytes == 0 || max_upload_bytes > 5 << 40 {
        bail!(
            "max_upload_bytes must be from 1 to 5 TiB (S3's largest object), not {max_upload_bytes}"
        );
    }
    let sweep_interval =
        crate::secs::timeout("objects.sweep_seconds", file.sweep_seconds.unwrap_or(60.0))?;
    Ok(ObjectsConfig {
        backend,
        bucket,
        max_upload_bytes,
        retention: auto_cleanup.then_some(retention),
        sweep_interval: sweep_interval.max(Duration::from_millis(100)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_a_local_directory_kept_a_day() {
        let config = resolve(ObjectsArgs::default(), ObjectsFile::default()).unwrap();
        assert_eq!(config.backend, Backend::Local("data/objects".into()));
        assert_eq!(config.retention, Some(DEFAULT_RETENTION));
        assert_eq!(config.bucket, DEFAULT_BUCKET);
    }

    #[test]
    fn s3_needs_endpoint_and_both_keys() {
        let args = ObjectsArgs {
            s3_endpoint_url: Some("http://127.0.0.1:9000/".into()),
            s3_access_key: Some("ak".into()),
            ..Default::default()
        };
        let err = resolve(args, ObjectsFile::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be set together"), "{err}");
        let args = ObjectsArgs {
            s3_endpoint_url: Some("http://127.0.0.1:9000/".into()),
            s3_access_key: Some("ak".into()),
            s3_secret_key: Some("sk".into()),
            s3_auto_cleanup: Some("false".into()),
            ..Default::default()
        };
        let config = resolve(args, ObjectsFile::default()).unwrap();
        assert!(
            matches!(&config.backend, Backend::S3 { endpoint, region, .. }
            if endpoint == "http://127.0.0.1:9000" && region == "us-east-1")
        );
        assert_eq!(config.retention, None);
    }

    #[test]
    fn bad_values_are_named() {
        let bad = |args: ObjectsArgs| {
            resolve(args, ObjectsFile::default())
                .unwrap_err()
                .to_string()
        };
        assert!(
            bad(ObjectsArgs {
                s3_default_bucket: Some("Bad_Bucket".into()),
                ..Default::default()
            })
            .contains("bucket")
        );
        assert!(
            bad(ObjectsArgs {
                s3_auto_cleanup: Some("maybe".into()),
                ..Default::default()
            })
            .contains("S3_AUTO_CLEANUP")
        );
        assert!(
            bad(ObjectsArgs {
                object_retention: Some("soon".into()),
                ..Default::default()
            })
            .contains("retention")
        );
    }
}
