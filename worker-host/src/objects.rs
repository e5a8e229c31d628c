//! The object store this worker reads jobs' files from and writes their
//! outputs to, configured as avtomatika-worker's SDK is (`S3_ENDPOINT_URL`,
//! `S3_ACCESS_KEY`, `S3_SECRET_KEY`, `S3_REGION`, `S3_DEFAULT_BUCKET`), and
//! the bounds of what one task may move. Plugins reach it only through the
//! `objects` interface and only as their manifest's `[objects]` grant
//! allows (see [`crate::sandbox::objects`]); the credentials stay here.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;

/// Default of `MAX_OBJECT_READ_BYTES`: what one task may read, 4 GiB.
pub const DEFAULT_MAX_READ_BYTES: u64 = 4 << 30;
/// Default of `MAX_OBJECT_WRITE_BYTES`: what one task may write, 1 GiB.
pub const DEFAULT_MAX_WRITE_BYTES: u64 = 1 << 30;
/// Objects one task may have open at once (readers and writers).
pub const MAX_OPEN_PER_TASK: usize = 16;
/// Objects one task may be writing at once (each holds up to 15 MiB of
/// parts in memory).
pub const MAX_WRITERS_PER_TASK: usize = 4;
/// Most bytes one `read` returns or one `write` takes.
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Default, Clone, clap::Args)]
pub struct ObjectsArgs {
    /// An S3-compatible service holding jobs' files (as the orchestrator's).
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
    /// Bytes of objects one task may read.
    #[arg(long, env = "MAX_OBJECT_READ_BYTES", default_value_t = DEFAULT_MAX_READ_BYTES)]
    pub max_object_read_bytes: u64,
    /// Bytes of objects one task may write.
    #[arg(long, env = "MAX_OBJECT_WRITE_BYTES", default_value_t = DEFAULT_MAX_WRITE_BYTES)]
    pub max_object_write_bytes: u64,
    /// Bytes of objects kept on disk by ETag for repeated reads (in the
    /// cache directory's `objects/`; 0: none).
    #[arg(long, env = "MAX_OBJECT_CACHE_BYTES", default_value_t = crate::object_cache::DEFAULT_MAX_BYTES)]
    pub max_object_cache_bytes: u64,
}

/// The worker's object store.
pub struct WorkerObjects {
    pub store: Arc<dyn ObjectStore>,
    pub bucket: String,
    pub max_read_bytes: u64,
    pub max_write_bytes: u64,
    /// rxon's `calculate_config_hash`, sent at registration.
    pub config_hash: String,
    /// Objects read before, by ETag (none without a cache directory).
    pub cache: Option<Arc<crate::object_cache::ObjectCache>>,
    pub endpoint: String,
}

impl std::fmt::Debug for WorkerObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerObjects")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl ObjectsArgs {
    /// The store, or `None` when no endpoint is configured; reads are
    /// cached under `cache_dir` when there is one.
    pub fn open(
        &self,
        cache_dir: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<Arc<WorkerObjects>>> {
        let nonempty = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
        let (endpoint, access, secret) = match (
            nonempty(&self.s3_endpoint_url),
            nonempty(&self.s3_access_key),
            nonempty(&self.s3_secret_key),
        ) {
            (None, None, None) => return Ok(None),
            (Some(e), Some(a), Some(s)) => (e.trim_end_matches('/').to_string(), a, s),
            _ => anyhow::bail!(
                "object storage: S3_ENDPOINT_URL, S3_ACCESS_KEY and S3_SECRET_KEY must be set together"
            ),
        };
        let bucket =
            nonempty(&self.s3_default_bucket).unwrap_or_else(|| "avtomatika-payloads".into());
        let store = AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_access_key_id(&access)
            .with_secret_access_key(&secret)
            .with_region(nonempty(&self.s3_region).unwrap_or_else(|| "us-east-1".into()))
            .with_bucket_name(&bucket)
            .build()
            .map_err(|e| anyhow::anyhow!("S3 configuration: {e}"))?;
        let config_hash = rxon::blob::config_hash(&endpoint, &access, &bucket);
        let cache = match cache_dir.filter(|_| self.max_object_cache_bytes > 0) {
            None => None,
            Some(dir) => {
                let dir = dir.join("objects");
                let cache = crate::object_cache::ObjectCache::open(
                    dir.clone(),
                    self.max_object_cache_bytes,
                )
                .map_err(|e| {
                    anyhow::anyhow!("cannot open the object cache {}: {e}", dir.display())
                })?;
                Some(Arc::new(cache))
            }
        };
        Ok(Some(Arc::new(WorkerObjects {
            cache,
            store: Arc::new(store),
            bucket,
            max_read_bytes: self.max_object_read_bytes,
            max_write_bytes: self.max_object_write_bytes,
            config_hash,
            endpoint,
        })))
    }
}
