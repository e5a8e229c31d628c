//! The `objects` interface: a task's access to its job's files, under the
//! plugin's `[objects]` grant and the worker's byte bounds.
//!
//! - `open(uri)` reads a key of the job (`jobs/<job>/…`, the client's
//!   uploads; `<job>/…`, earlier outputs) or under a granted prefix, in the
//!   worker's bucket only; a bare name is looked up in the job's files.
//! - `create(name)` writes `<job>/<name>`, in 5 MiB parts as the bytes
//!   come (a writer dropped unfinished aborts its upload).
//!
//! Every wait on the store ends at the task's deadline. Nothing is held
//! whole: a reader keeps one chunk of the store's response, a writer at
//! most two parts.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use wasmtime::component::Resource;

use super::bindings::ObjectInfo;
use super::bindings::taskworker::plugin::objects;
use super::state::TaskState;
use crate::grants::ObjectsGrant;
use crate::objects::{MAX_CHUNK_BYTES, MAX_OPEN_PER_TASK, MAX_WRITERS_PER_TASK, WorkerObjects};

/// Size of the parts a writer uploads, and how many may be in flight.
const PART_BYTES: usize = 5 << 20;
const PARTS_IN_FLIGHT: usize = 2;

/// The objects a task finished writing, shared with whoever builds its
/// result (for `data_metadata`).
pub type Written = Arc<Mutex<Vec<rxon::FileMetadata>>>;

/// One task's access: the store, the job, the grant, what was moved.
pub struct ObjectAccess {
    pub objects: Arc<WorkerObjects>,
    pub job_id: String,
    pub grant: Option<ObjectsGrant>,
    /// Objects this task finished writing (for the result's `data_metadata`).
    pub written: Written,
    read: u64,
    wrote: u64,
    open: usize,
    writers: usize,
}

impl ObjectAccess {
    pub fn new(
        objects: Arc<WorkerObjects>,
        job_id: String,
        grant: Option<ObjectsGrant>,
        written: Written,
    ) -> Self {
        Self {
            objects,
            job_id,
            grant,
            written,
            read: 0,
            wrote: 0,
            open: 0,
            writers: 0,
        }
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.objects.bucket)
    }

    /// Whether the grant lets the plugin read `key`.
    fn may_read(&self, key: &str) -> bool {
        let Some(grant) = &self.grant else {
            return false;
        };
        let job = &self.job_id;
        (grant.read
            && (key.starts_with(&format!("jobs/{job}/")) || key.starts_with(&format!("{job}/"))))
            || grant
                .read_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_str()))
    }
}

/// An object being read: from the store (copied into the cache as it
/// comes, when there is one) or from the cache.
pub struct Reader {
    body: BoxStream<'static, Result<Bytes, String>>,
    pending: Bytes,
    size: u64,
    key: String,
    filling: Option<crate::object_cache::Filling>,
}

/// An object being written.
pub struct Writer {
    upload: Option<WriteMultipart>,
    key: String,
    size: u64,
}

/// Checks a key or name: relative, plain segments, printable ASCII.
fn plain_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && !key.starts_with('/')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        && !key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a plain object key (letters, digits, '.', '_', '-', '/'; no empty, '.' or '..' segment)",
            crate::limits::for_log(key)
        ))
    }
}

impl TaskState {
    fn access(&mut self) -> Result<&mut ObjectAccess, String> {
        self.objects.as_mut().ok_or_else(|| {
            "this worker has no object store (S3_ENDPOINT_URL is not set)".to_string()
        })
    }

    /// `fut`, unless the task's deadline comes first.
    async fn before_deadline<T>(
        deadline: std::time::Instant,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, object_store::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout_at(deadline.into(), fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: the task's time ran out")),
        }
    }
}

impl objects::Host for TaskState {
    async fn open(&mut self, uri: String) -> Result<Resource<Reader>, String> {
        let deadline = self.deadline;
        let access = self.access()?;
        if access.grant.is_none() {
            return Err("the plugin's manifest grants no object access ([objects])".into());
        }
        if access.open >= MAX_OPEN_PER_TASK {
            return Err(format!(
                "more than {MAX_OPEN_PER_TASK} objects open at once"
            ));
        }
        let keys = match uri.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket != access.objects.bucket {
                    return Err(format!(
                        "refused: {} is not in this worker's bucket {}",
                        crate::limits::for_log(&uri),
                        access.objects.bucket
                    ));
                }
                plain_key(key)?;
                vec![key.to_string()]
            }
            None => {
                plain_key(&uri)?;
                vec![
                    format!("jobs/{}/{uri}", access.job_id),
                    format!("{}/{uri}", access.job_id),
                ]
            }
        };
        if let Some(key) = keys.iter().find(|k| !access.may_read(k)) {
            return Err(format!(
                "refused: the plugin may not read {} (neither one of this job's files nor under a granted prefix)",
                access.uri(key)
            ));
        }
        let store = access.objects.store.clone();
        let mut last = String::new();
        for key in keys {
            let path = Path::from(key.as_str());
            match tokio::time::timeout_at(deadline.into(), store.get(&path)).await {
                Err(_) => return Err("opening an object: the task's time ran out".into()),
                Ok(Err(object_store::Error::NotFound { .. })) => {
                    last = format!("no such object: {}", access.uri(&key));
                }
                Ok(Err(e)) => return Err(format!("opening {}: {e}", access.uri(&key))),
                Ok(Ok(got)) => {
                    let size = got.meta.size;
                    let etag = got.meta.e_tag.clone();
                    let cache = access.objects.cache.clone();
                    let uri = access.uri(&key);
                    access.open += 1;
                    let (mut body, mut filling) = (None, None);
                    if let (Some(cache), Some(etag)) = (cache, etag.as_deref()) {
                        match cache.hit(etag, size).await {
                            Some(file) => {
                                tracing::info!(task_id = %self.task_id, "object {uri} read from the cache (etag {etag}, {size} bytes)");
                                body = Some(
                                    tokio_util::io::ReaderStream::new(file)
                                        .map(|r| r.map_err(|e| format!("the cached copy: {e}")))
                                        .boxed(),
                                );
                            }
                            None => filling = cache.fill(etag, size).await,
                        }
                    }
                    let body = body.unwrap_or_else(|| {
                        got.into_stream()
                            .map(|r| r.map_err(|e| e.to_string()))
                            .boxed()
                    });
                    let reader = Reader {
                        size,
                        body,
                        pending: Bytes::new(),
                        key,
                        filling,
                    };
                    return self.table.push(reader).map_err(|e| e.to_string());
                }
            }
        }
        Err(last)
    }

    async fn create(&mut self, name: String) -> Result<Resource<Writer>, String> {
        let deadline = self.deadline;
        let access = self.access()?;
        if !access.grant.as_ref().is_some_and(|g| g.write) {
            return Err(
                "the plugin's manifest does not grant writing objects ([objects] write = true)"
                    .into(),
            );
        }
        if access.open >= MAX_OPEN_PER_TASK {
            return Err(format!(
                "more than {MAX_OPEN_PER_TASK} objects open at once"
            ));
        }
        // Each writer holds up to three 5 MiB parts in memory.
        if access.writers >= MAX_WRITERS_PER_TASK {
            return Err(format!(
                "more than {MAX_WRITERS_PER_TASK} objects being written at once"
            ));
        }
        plain_key(&name)?;
        let key = format!("{}/{name}", access.job_id);
        let store = access.objects.store.clone();
        let upload = Self::before_deadline(
            deadline,
            "creating an object",
            store.put_multipart(&Path::from(key.as_str())),
        )
        .await?;
        access.open += 1;
        access.writers += 1;
        let writer = Writer {
            upload: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            key,
            size: 0,
        };
        self.table.push(writer).map_err(|e| e.to_string())
    }
}

impl objects::HostReader for TaskState {
    fn size(&mut self, reader: Resource<Reader>) -> u64 {
        self.table.get(&reader).map(|r| r.size).unwrap_or(0)
    }

    async fn read(&mut self, reader: Resource<Reader>, max: u32) -> Result<Vec<u8>, String> {
        let deadline = self.deadline;
        let limit = self.access()?.objects.max_read_bytes;
        let want = (max as usize).min(MAX_CHUNK_BYTES);
        let r = self.table.get_mut(&reader).map_err(|e| e.to_string())?;
        if r.pending.is_empty() {
            let next = tokio::time::timeout_at(deadline.into(), r.body.next()).await;
            match next {
                Err(_) => return Err("reading an object: the task's time ran out".into()),
                Ok(None) => {
                    if let Some(filling) = r.filling.take() {
                        filling.complete().await;
                    }
                    return Ok(Vec::new());
                }
                Ok(Some(Err(e))) => return Err(format!("reading {}: {e}", r.key)),
                Ok(Some(Ok(chunk))) => {
                    if let Some(filling) = r.filling.as_mut() {
                        filling.write(&chunk).await;
                    }
                    // Whole (the plugin may not read on to the end): kept.
                    if let Some(filling) = r.filling.take_if(|f| f.is_whole()) {
                        filling.complete().await;
                    }
                    r.pending = chunk;
                }
            }
        }
        let n = want.min(r.pending.len());
        let out = r.pending.split_to(n).to_vec();
        let access = self.access()?;
        access.read += n as u64;
        if access.read > limit {
            return Err(format!(
                "the task read more than {limit} bytes of objects (MAX_OBJECT_READ_BYTES)"
            ));
        }
        Ok(out)
    }

    fn drop(&mut self, reader: Resource<Reader>) -> wasmtime::Result<()> {
        self.table.delete(reader)?;
        if let Some(access) = self.objects.as_mut() {
            access.open = access.open.saturating_sub(1);
        }
        Ok(())
    }
}

impl objects::HostWriter for TaskState {
    async fn write(&mut self, writer: Resource<Writer>, bytes: Vec<u8>) -> Result<(), String> {
        let deadline = self.deadline;
        if bytes.len() > MAX_CHUNK_BYTES {
            return Err(format!(
                "one write may take at most {MAX_CHUNK_BYTES} bytes"
            ));
        }
        let access = self.access()?;
        let limit = access.objects.max_write_bytes;
        access.wrote += bytes.len() as u64;
        if access.wrote > limit {
            return Err(format!(
                "the task wrote more than {limit} bytes of objects (MAX_OBJECT_WRITE_BYTES)"
            ));
        }
        let w = self.table.get_mut(&writer).map_err(|e| e.to_string())?;
        let Some(upload) = w.upload.as_mut() else {
            return Err("the object is already finished".into());
        };
        Self::before_deadline(
            deadline,
            "writing an object",
            upload.wait_for_capacity(PARTS_IN_FLIGHT),
        )
        .await?;
        upload.write(&bytes);
        w.size += bytes.len() as u64;
        Ok(())
    }

    async fn finish(&mut self, writer: Resource<Writer>) -> Result<ObjectInfo, String> {
        let deadline = self.deadline;
        let w = self.table.get_mut(&writer).map_err(|e| e.to_string())?;
        let Some(upload) = w.upload.take() else {
            return Err("the object is already finished".into());
        };
        let (key, size) = (w.key.clone(), w.size);
        let put = Self::before_deadline(deadline, "finishing an object", upload.finish()).await?;
        let access = self.access()?;
        let info = ObjectInfo {
            uri: access.uri(&key),
            size,
            etag: put.e_tag.map(|e| e.trim_matches('"').to_string()),
        };
        if let Ok(mut written) = access.written.lock() {
            written.push(rxon::FileMetadata {
                uri: info.uri.clone(),
                size,
                etag: info.etag.clone(),
                metadata: None,
            });
        }
        Ok(info)
    }

    async fn drop(&mut self, writer: Resource<Writer>) -> wasmtime::Result<()> {
        let w = self.table.delete(writer)?;
        if let Some(access) = self.objects.as_mut() {
            access.open = access.open.saturating_sub(1);
            access.writers = access.writers.saturating_sub(1);
        }
        if let Some(upload) = w.upload {
            // Unfinished: nothing of it may stay in the store.
            if let Err(e) = upload.abort().await {
                tracing::warn!(task_id = %self.task_id, "aborting the unfinished object {}: {e}", w.key);
            }
        }
        Ok(())
    }
}

/// The files a result's data names by top-level key, among the objects the
/// task wrote (as avtomatika-worker's SDK reports its uploads).
pub fn files_named(
    data: &serde_json::Map<String, serde_json::Value>,
    written: &[rxon::FileMetadata],
) -> Option<rxon::FilesByKey> {
    let files: rxon::FilesByKey = data
        .iter()
        .filter_map(|(key, value)| {
            let uri = value.as_str()?;
            let file = written.iter().find(|f| f.uri == uri)?;
            Some((key.clone(), file.clone()))
        })
        .collect();
    (!files.is_empty()).then_some(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain() {
        assert!(plain_key("jobs/a/b.bin").is_ok());
        for bad in ["", "/x", "a//b", "a/../b", "a/./b", "a b", "a\\b"] {
            assert!(plain_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_result_names_the_files_it_wrote() {
        let written = vec![rxon::FileMetadata {
            uri: "s3://b/j/out.bin".into(),
            size: 5,
            etag: None,
            metadata: None,
        }];
        let data = serde_json::json!({"out": "s3://b/j/out.bin", "other": "s3://b/j/x", "n": 1});
        let files = files_named(data.as_object().unwrap(), &written).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["out"]);
        assert_eq!(files_named(&serde_json::Map::new(), &written), None);
    }
}
