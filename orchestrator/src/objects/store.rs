//! The object store: where it is, and the operations the file API and the
//! sweep need. Everything streams: an upload is written in parts as it
//! arrives, a download is passed on chunk by chunk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, WriteMultipart};
use sha2::Sha256;
use uuid::Uuid;

/// Default of `max_upload_bytes`: 5 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 5 << 30;
/// Default of `object_retention`: files are kept a day after their job ends.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(86_400);
/// Default bucket (avtomatika's `S3_DEFAULT_BUCKET`).
pub const DEFAULT_BUCKET: &str = "avtomatika-payloads";
/// Longest a presigned URL may be valid (S3's own limit): 7 days.
pub const MAX_URL_EXPIRY: Duration = Duration::from_secs(7 * 86_400);
/// Most files a listing of one job returns.
pub const MAX_LISTED: usize = 10_000;
/// Uploads through the orchestrator at once (each holds up to ~20 MiB of
/// parts in memory); more get 429.
pub const MAX_CONCURRENT_UPLOADS: usize = 16;
/// Size of the parts an upload is written in, and how many are sent at once
/// (so an upload holds at most ~20 MiB in memory).
const PART_BYTES: usize = 5 << 20;
const PARTS_IN_FLIGHT: usize = 3;

/// Where objects live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A directory on this machine (the default, `data/objects`).
    Local(PathBuf),
    /// An S3-compatible service.
    S3 {
        endpoint: String,
        access_key: String,
        secret_key: String,
        region: String,
    },
}

/// The resolved `[objects]` configuration.
#[derive(Debug, Clone)]
pub struct ObjectsConfig {
    pub backend: Backend,
    pub bucket: String,
    pub max_upload_bytes: u64,
    /// How long a job's files outlive the job; `None` keeps them.
    pub retention: Option<Duration>,
    /// How often ended jobs' files are looked for.
    pub sweep_interval: Duration,
}

impl Default for ObjectsConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Local(PathBuf::from("data/objects")),
            bucket: DEFAULT_BUCKET.into(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            retention: Some(DEFAULT_RETENTION),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectsError {
    #[error("the file is larger than max_upload_bytes ({0} bytes)")]
    TooLarge(u64),
    #[error("no such file")]
    NotFound,
    #[error("{MAX_CONCURRENT_UPLOADS} uploads are in progress, the most at once; retry shortly")]
    Busy,
    #[error("the upload broke off: {0}")]
    Body(String),
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
}

/// One file of a job, as listed.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct FileInfo {
    /// The name below the job's prefix.
    pub name: String,
    /// `s3://<bucket>/<key>`.
    pub uri: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// What an upload stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub uri: String,
    pub size: u64,
    pub etag: Option<String>,
}

/// A file to send to a client.
pub struct Download {
    pub size: u64,
    pub etag: Option<String>,
    pub body: futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>,
}

/// The object store of this orchestrator.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    signer: Option<Arc<AmazonS3>>,
    config: ObjectsConfig,
    /// Signs the orchestrator's own upload and download URLs (local store).
    url_key: Vec<u8>,
    config_hash: Option<String>,
    uploads: tokio::sync::Semaphore,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("bucket", &self.config.bucket)
            .field("s3", &self.signer.is_some())
            .finish()
    }
}

impl Objects {
    /// Opens the store (creates the local directory). `secret` signs the
    /// local store's URLs (several instances need the same one); without
    /// it a random key is used.
    pub fn open(config: ObjectsConfig, secret: Option<&str>) -> anyhow::Result<Self> {
        let (store, signer, config_hash): (Arc<dyn ObjectStore>, _, _) = match &config.backend {
            Backend::Local(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    anyhow::anyhow!("cannot create the objects directory {}: {e}", dir.display())
                })?;
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
                    anyhow::anyhow!("cannot open the objects directory {}: {e}", dir.display())
                })?;
                (Arc::new(fs), None, None)
            }
            Backend::S3 {
                endpoint,
                access_key,
                secret_key,
                region,
            } => {
                let s3 = AmazonS3Builder::new()
                    .with_endpoint(endpoint)
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_access_key_id(access_key)
                    .with_secret_access_key(secret_key)
                    .with_region(region)
                    .with_bucket_name(&config.bucket)
                    .build()
                    .map_err(|e| anyhow::anyhow!("S3 configuration: {e}"))?;
                let s3 = Arc::new(s3);
                let hash = rxon::blob::config_hash(endpoint, access_key, &config.bucket);
                (s3.clone() as Arc<dyn ObjectStore>, Some(s3), Some(hash))
            }
        };
        let url_key = match secret {
            Some(secret) => format!("objects-url:{secret}").into_bytes(),
            None => {
                let mut key = Uuid::new_v4().as_bytes().to_vec();
                key.extend_from_slice(Uuid::new_v4().as_bytes());
                key
            }
        };
        Ok(Self {
            store,
            signer,
            config,
            url_key,
            config_hash,
            uploads: tokio::sync::Semaphore::new(MAX_CONCURRENT_UPLOADS),
        })
    }

    pub fn config(&self) -> &ObjectsConfig {
        &self.config
    }

    /// Whether the store is an S3 service (else a local directory).
    pub fn is_s3(&self) -> bool {
        self.signer.is_some()
    }

    /// rxon's `calculate_config_hash` of the S3 configuration (what a
    /// worker reports as `capabilities.s3_config_hash`).
    pub fn config_hash(&self) -> Option<&str> {
        self.config_hash.as_deref()
    }

    /// `s3://<bucket>/<key>`.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.config.bucket)
    }

    /// One cheap request, to say at start-up whether the store answers.
    pub async fn check(&self) -> Result<(), ObjectsError> {
        let prefix = Path::from("jobs");
        let mut listing = self.store.list(Some(&prefix));
        if let Some(entry) = listing.next().await {
            entry?;
        }
        Ok(())
    }

    /// Writes `body` to `key` as it arrives, in parts; more than
    /// `max_upload_bytes` aborts the upload (nothing is left behind).
    pub async fn put_stream<S, E>(&self, key: &str, body: S) -> Result<Stored, ObjectsError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let _slot = self.uploads.try_acquire().map_err(|_| ObjectsError::Busy)?;
        let path = Path::parse(key).map_err(object_store::Error::from)?;
        let upload = self.store.put_multipart(&path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let limit = self.config.max_upload_bytes;
        let mut size: u64 = 0;
        let mut body = body;
        let failure = loop {
            match body.next().await {
                None => break None,
                Some(Err(e)) => break Some(ObjectsError::Body(e.to_string())),
                Some(Ok(chunk)) => {
                    size += chunk.len() as u64;
                    if size > limit {
                        break Some(ObjectsError::TooLarge(limit));
                    }
                    if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                        break Some(e.into());
                    }
                    writer.write(&chunk);
                }
            }
        };
        if let Some(failure) = failure {
            if let Err(e) = writer.abort().await {
                tracing::warn!("aborting the upload of {key} failed: {e}");
            }
            return Err(failure);
        }
        let put = writer.finish().await?;
        Ok(Stored {
            uri: self.uri(key),
            size,
            etag: put.e_tag.map(|e| e.trim_matches('"').to_string()),
        })
    }

    /// The job's files under both of its prefixes (at most [`MAX_LISTED`]).
    pub async fn list_job(&self, job: Uuid) -> Result<Vec<FileInfo>, ObjectsError> {
        let mut files = Vec::new();
        for prefix in [super::client_prefix(job), super::worker_prefix(job)] {
            let path = Path::from(prefix.trim_end_matches('/'));
            let mut listing = self.store.list(Some(&path));
            while let Some(meta) = listing.try_next().await? {
                if files.len() >= MAX_LISTED {
                    return Ok(files);
                }
                let key = meta.location.to_string();
                let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                files.push(FileInfo {
                    uri: self.uri(&key),
                    name,
                    size: meta.size,
                    etag: meta.e_tag.map(|e| e.trim_matches('"').to_string()),
                    last_modified: meta.last_modified,
                });
            }
        }
        Ok(files)
    }

    /// The key of the job's file `name`: the client's (`jobs/<id>/<name>`)
    /// if there is one, else a worker's (`<id>/<name>`).
    pub async fn find(&self, job: Uuid, name: &str) -> Result<String, ObjectsError> {
        for prefix in [super::client_prefix(job), super::worker_prefix(job)] {
            let key = format!("{prefix}{name}");
            let path = Path::parse(&key).map_err(object_store::Error::from)?;
            match self.store.head(&path).await {
                Ok(_) => return Ok(key),
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ObjectsError::NotFound)
    }

    /// Streams the object at `key`.
    pub async fn get(&self, key: &str) -> Result<Download, ObjectsError> {
        let path = Path::parse(key).map_err(object_store::Error::from)?;
        let got = match self.store.get(&path).await {
            Err(object_store::Error::NotFound { .. }) => return Err(ObjectsError::NotFound),
            other => other?,
        };
        Ok(Download {
            size: got.meta.size,
            etag: got
                .meta
                .e_tag
                .clone()
                .map(|e| e.trim_matches('"').to_string()),
            body: got.into_stream().boxed(),
        })
    }

    /// A URL of the S3 service itself for `method` on `key`, valid for
    /// `expires`; `None` for the local store (see [`Self::local_signature`]).
    pub async fn presigned(
        &self,
        method: reqwest::Method,
        key: &str,
        expires: Duration,
    ) -> Result<Option<String>, ObjectsError> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let path = Path::parse(key).map_err(object_store::Error::from)?;
        let url = signer.signed_url(method, &path, expires).await?;
        Ok(Some(url.to_string()))
    }

    /// The signature of the orchestrator's own URL for `method` on `key`
    /// until `expires` (Unix seconds): the local store's presigned URLs.
    pub fn local_signature(&self, method: &str, key: &str, expires: i64) -> String {
        hex::encode(self.url_mac(method, key, expires).finalize().into_bytes())
    }

    /// Whether `signature` is [`Self::local_signature`]'s (compared in
    /// constant time).
    pub fn local_signature_ok(
        &self,
        method: &str,
        key: &str,
        expires: i64,
        signature: &str,
    ) -> bool {
        hex::decode(signature).is_ok_and(|given| {
            self.url_mac(method, key, expires)
                .verify_slice(&given)
                .is_ok()
        })
    }

    /// The MAC of an own URL: method, key and expiry under the URL key.
    fn url_mac(&self, method: &str, key: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.url_key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(format!("{method}\n{key}\n{expires}").as_bytes());
        mac
    }

    /// Deletes every object under both of the job's prefixes; how many.
    pub async fn delete_job(&self, job: Uuid) -> Result<usize, ObjectsError> {
        let mut deleted = 0;
        for prefix in [super::client_prefix(job), super::worker_prefix(job)] {
            let path = Path::from(prefix.trim_end_matches('/'));
            let locations = self
                .store
                .list(Some(&path))
                .map_ok(|meta| meta.location)
                .boxed();
            let mut gone = self.store.delete_stream(locations);
            while let Some(result) = gone.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(deleted)
    }

    /// The ids of the jobs that have files (each prefix's first level that
    /// is a job id), at most `limit`.
    pub async fn jobs_with_files(&self, limit: usize) -> Result<Vec<Uuid>, ObjectsError> {
        let mut ids = std::collections::BTreeSet::new();
        for prefix in [Some(Path::from("jobs")), None] {
            let listed = self.store.list_with_delimiter(prefix.as_ref()).await?;
            for dir in listed.common_prefixes {
                if let Some(id) = dir.filename().and_then(|n| Uuid::parse_str(n).ok()) {
                    ids.insert(id);
                    if ids.len() >= limit {
                        return Ok(ids.into_iter().collect());
                    }
                }
            }
        }
        Ok(ids.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(dir: &std::path::Path, max: u64) -> Objects {
        let config = ObjectsConfig {
            backend: Backend::Local(dir.to_path_buf()),
            max_upload_bytes: max,
            ..Default::default()
        };
        Objects::open(config, Some("s")).unwrap()
    }

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures_util::stream::iter(
            sizes
                .iter()
                .map(|&n| Ok(Bytes::from(vec![7u8; n])))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn an_upload_is_stored_listed_found_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let objects = local(dir.path(), 1 << 20);
        let job = Uuid::new_v4();
        let key = format!("jobs/{job}/in/a.bin");
        let stored = objects.put_stream(&key, chunks(&[1000, 24])).await.unwrap();
        assert_eq!(stored.size, 1024);
        assert_eq!(stored.uri, format!("s3://{DEFAULT_BUCKET}/{key}"));
        // A worker's output, under the SDK's prefix.
        objects
            .put_stream(&format!("{job}/out.txt"), chunks(&[3]))
            .await
            .unwrap();
        let listed = objects.list_job(job).await.unwrap();
        let names: Vec<_> = listed.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["in/a.bin", "out.txt"]);
        assert_eq!(
            objects.find(job, "out.txt").await.unwrap(),
            format!("{job}/out.txt")
        );
        assert!(matches!(
            objects.find(job, "nope").await,
            Err(ObjectsError::NotFound)
        ));
        assert_eq!(objects.jobs_with_files(10).await.unwrap(), vec![job]);
        let got = objects.get(&key).await.unwrap();
        let bytes: Vec<Bytes> = got.body.try_collect().await.unwrap();
        assert_eq!(bytes.concat(), vec![7u8; 1024]);
        assert_eq!(objects.delete_job(job).await.unwrap(), 2);
        assert!(objects.list_job(job).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_upload_over_the_limit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let objects = local(dir.path(), 1000);
        let job = Uuid::new_v4();
        let key = format!("jobs/{job}/big");
        let err = objects
            .put_stream(&key, chunks(&[600, 600]))
            .await
            .unwrap_err();
        assert!(matches!(err, ObjectsError::TooLarge(1000)), "{err}");
        assert!(objects.list_job(job).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn uploads_at_once_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let objects = Arc::new(local(dir.path(), 1 << 20));
        let held: Vec<_> = (0..MAX_CONCURRENT_UPLOADS)
            .map(|i| {
                let objects = objects.clone();
                tokio::spawn(async move {
                    let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
                    objects.put_stream(&format!("jobs/x/{i}"), never).await
                })
            })
            .collect();
        // Each holds its slot while its body never comes.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let err = objects
            .put_stream("jobs/x/over", chunks(&[1]))
            .await
            .unwrap_err();
        assert!(matches!(err, ObjectsError::Busy), "{err}");
        for task in held {
            task.abort();
        }
    }

    #[test]
    fn local_urls_are_signed_per_method_key_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let objects = local(dir.path(), 1);
        let sig = objects.local_signature("PUT", "jobs/x/a", 100);
        assert!(objects.local_signature_ok("PUT", "jobs/x/a", 100, &sig));
        assert!(!objects.local_signature_ok("GET", "jobs/x/a", 100, &sig));
        assert!(!objects.local_signature_ok("PUT", "jobs/x/b", 100, &sig));
        assert!(!objects.local_signature_ok("PUT", "jobs/x/a", 101, &sig));
        assert!(!objects.local_signature_ok("PUT", "jobs/x/a", 100, "zz"));
    }
}
