//! Files of jobs in object storage: an S3-compatible service, or a local
//! directory by default.
//!
//! - [`config`]: `[objects]` and the `S3_*` variables;
//! - [`store`]: the store ([`Objects`]) and its configuration;
//! - [`sweep`]: deletes a job's objects once it has ended and the
//!   retention has passed;
//! - here: the keys, and the files results name (`data_metadata`).
//!
//! The keys are avtomatika's: a client's file of job `J` is
//! `jobs/J/<name>` (its `TaskFiles` prefix); avtomatika-worker's SDK
//! uploads a task's output files as `J/<name>`. Both prefixes belong to the
//! job: they are listed, downloaded from and deleted together. A URI is
//! `s3://<bucket>/<key>`.

pub mod config;
pub mod store;
pub mod sweep;

pub use store::{Objects, ObjectsConfig, ObjectsError};

use uuid::Uuid;

use crate::job::Job;

/// Most files one result may name (`data_metadata` entries).
pub const MAX_FILES_PER_RESULT: usize = 256;
/// Most files a job keeps track of; a result naming more new ones has the
/// excess ignored, with a warning in the log.
pub const MAX_FILES_PER_JOB: usize = 1024;
/// Longest URI a `data_metadata` entry may carry.
pub const MAX_URI_BYTES: usize = 1024;
/// Longest file name (a key below the job's prefix).
pub const MAX_NAME_BYTES: usize = 255;

/// The prefix of a job's files that clients upload (`jobs/<id>/`).
pub fn client_prefix(job: Uuid) -> String {
    format!("jobs/{job}/")
}

/// The prefix avtomatika-worker's SDK uploads a job's outputs to (`<id>/`).
pub fn worker_prefix(job: Uuid) -> String {
    format!("{job}/")
}

/// Checks a file name a client gives: 1 to 255 bytes of letters, digits,
/// `.`, `_`, `-` and `/`, no empty, `.` or `..` segment, no leading `/`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a file name must be 1 to {MAX_NAME_BYTES} bytes long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(format!(
            "file name {:?} may hold only letters, digits, '.', '_', '-' and '/'",
            rxon::text::for_log(name)
        ));
    }
    if name
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(format!(
            "file name {name:?} has an empty, '.' or '..' segment"
        ));
    }
    Ok(())
}

/// The files among `files` that `params` names by key (avtomatika sends a
/// task the metadata of the files its params hold, by top-level key).
pub fn files_named_by(
    files: Option<&rxon::FilesByKey>,
    params: &rxon::Object,
) -> Option<rxon::FilesByKey> {
    let files = files?;
    let named: rxon::FilesByKey = files
        .iter()
        .filter(|(key, _)| params.contains_key(key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!named.is_empty()).then_some(named)
}

/// Checks a result's `data_metadata` before it is accepted.
pub fn check_result_files(files: Option<&rxon::FilesByKey>) -> Result<(), String> {
    let Some(files) = files else { return Ok(()) };
    if files.len() > MAX_FILES_PER_RESULT {
        return Err(format!(
            "data_metadata names {} files, more than the {MAX_FILES_PER_RESULT} a result may",
            files.len()
        ));
    }
    for (key, file) in files {
        if file.uri.len() > MAX_URI_BYTES {
            return Err(format!(
                "data_metadata.{}: the uri is longer than {MAX_URI_BYTES} bytes",
                rxon::text::for_log(key)
            ));
        }
        if !file.uri.starts_with("s3://") {
            return Err(format!(
                "data_metadata.{}: the uri must start with s3://",
                rxon::text::for_log(key)
            ));
        }
    }
    Ok(())
}

/// Merges a result's files into the job's (a key named again is replaced).
pub fn merge_files(job: &mut Job, files: &rxon::FilesByKey) {
    let merged = std::sync::Arc::make_mut(job.data_metadata.get_or_insert_with(Default::default));
    let mut ignored = 0;
    for (key, file) in files {
        if merged.len() >= MAX_FILES_PER_JOB && !merged.contains_key(key) {
            ignored += 1;
            continue;
        }
        merged.insert(key.clone(), file.clone());
    }
    if ignored > 0 {
        tracing::warn!(job_id = %job.id,
            "job {}: {ignored} files of a result ignored: the job already names {MAX_FILES_PER_JOB}",
            job.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_relative_paths() {
        for good in ["a.txt", "in/put.bin", "x-1_2.tar.gz"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/./b",
            "a b",
            "é",
            "a\\b",
            &"x".repeat(256),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_task_gets_the_files_its_params_name() {
        let mut files = rxon::FilesByKey::new();
        for key in ["image", "other"] {
            files.insert(
                key.into(),
                rxon::FileMetadata {
                    uri: format!("s3://b/{key}"),
                    size: 1,
                    etag: None,
                    metadata: None,
                },
            );
        }
        let params = serde_json::json!({"image": "s3://b/image", "n": 1});
        let named = files_named_by(Some(&files), params.as_object().unwrap()).unwrap();
        assert_eq!(named.keys().collect::<Vec<_>>(), ["image"]);
        let none = serde_json::json!({"n": 1});
        assert_eq!(
            files_named_by(Some(&files), none.as_object().unwrap()),
            None
        );
    }

    #[test]
    fn result_files_are_bounded() {
        let one = |uri: &str| rxon::FileMetadata {
            uri: uri.into(),
            size: 0,
            etag: None,
            metadata: None,
        };
        let mut files = rxon::FilesByKey::new();
        files.insert("a".into(), one("s3://b/k"));
        assert_eq!(check_result_files(Some(&files)), Ok(()));
        files.insert("b".into(), one("/etc/passwd"));
        assert!(
            check_result_files(Some(&files))
                .unwrap_err()
                .contains("s3://")
        );
        let many: rxon::FilesByKey = (0..=MAX_FILES_PER_RESULT)
            .map(|i| (i.to_string(), one("s3://b/k")))
            .collect();
        assert!(
            check_result_files(Some(&many))
                .unwrap_err()
                .contains("more than")
        );
    }
}
