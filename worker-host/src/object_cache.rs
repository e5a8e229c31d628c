//! Objects a plugin read, kept on disk by ETag (`<cache dir>/objects/`), so
//! a repeated input (a model, a reference file) is read from disk instead of
//! the store. A read fills the cache as it streams: the bytes go to a
//! temporary file that becomes `<etag>` only when the whole object arrived
//! (an object read halfway leaves nothing). Past `MAX_OBJECT_CACHE_BYTES`
//! the least recently used files go.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::io::AsyncWriteExt;

/// Default of `MAX_OBJECT_CACHE_BYTES`: 2 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;
/// Prefix of files being filled.
const PARTIAL: &str = ".partial-";

pub struct ObjectCache {
    dir: PathBuf,
    max_bytes: u64,
}

impl ObjectCache {
    /// The cache in `dir` (created); leftovers of an interrupted fill go.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(PARTIAL) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir, max_bytes })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `etag`, when the ETag is a plain name (S3's are hex,
    /// with `-<parts>` for multipart uploads).
    fn path(&self, etag: &str) -> Option<PathBuf> {
        let etag = etag.trim_matches('"');
        let plain = !etag.is_empty()
            && etag.len() <= 128
            && etag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        plain.then(|| self.dir.join(etag))
    }

    /// The cached object of `etag`, if it is there whole (`size` bytes).
    pub async fn hit(&self, etag: &str, size: u64) -> Option<tokio::fs::File> {
        let path = self.path(etag)?;
        let file = tokio::fs::File::open(&path).await.ok()?;
        let meta = file.metadata().await.ok()?;
        if meta.len() != size {
            return None;
        }
        // Recently used: last to be evicted.
        let _ = file.into_std().await.set_modified(SystemTime::now());
        tokio::fs::File::open(&path).await.ok()
    }

    /// Starts keeping a copy of the object of `etag` as it is read.
    pub async fn fill(self: &Arc<Self>, etag: &str, size: u64) -> Option<Filling> {
        if size > self.max_bytes {
            return None;
        }
        let done = self.path(etag)?;
        let partial = self
            .dir
            .join(format!("{PARTIAL}{}", uuid::Uuid::new_v4().simple()));
        let file = tokio::fs::File::create(&partial).await.ok()?;
        Some(Filling {
            cache: self.clone(),
            file: Some(file),
            partial,
            done,
            size,
            written: 0,
        })
    }

    /// Removes the least recently used files until the cache fits.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(PARTIAL))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// A copy of an object being made as it is read.
pub struct Filling {
    cache: Arc<ObjectCache>,
    file: Option<tokio::fs::File>,
    partial: PathBuf,
    done: PathBuf,
    size: u64,
    written: u64,
}

impl Filling {
    /// Adds `chunk`; a disk error gives the copy up (the read goes on).
    pub async fn write(&mut self, chunk: &[u8]) {
        if let Some(file) = self.file.as_mut() {
            if file.write_all(chunk).await.is_err() {
                self.file = None;
            }
            self.written += chunk.len() as u64;
        }
    }

    /// Whether every byte of the object was copied.
    pub fn is_whole(&self) -> bool {
        self.file.is_some() && self.written == self.size
    }

    /// The object was read to its end: the copy becomes the cached file if
    /// it holds every byte.
    pub async fn complete(mut self) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        if self.written != self.size || file.flush().await.is_err() {
            return;
        }
        drop(file);
        if tokio::fs::rename(&self.partial, &self.done).await.is_ok() {
            let cache = self.cache.clone();
            let _ = tokio::task::spawn_blocking(move || cache.evict()).await;
        }
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        // Left unfinished (or already renamed: then nothing is there).
        let _ = std::fs::remove_file(&self.partial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_whole_read_is_kept_a_partial_one_is_not_and_old_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ObjectCache::open(dir.path().join("objects"), 10).unwrap());
        assert!(cache.hit("abc", 4).await.is_none());
        let mut fill = cache.fill("abc", 4).await.unwrap();
        fill.write(b"ab").await;
        drop(fill);
        assert!(
            cache.hit("abc", 4).await.is_none(),
            "half an object is not kept"
        );
        let mut fill = cache.fill("abc", 4).await.unwrap();
        fill.write(b"abcd").await;
        fill.complete().await;
        assert!(cache.hit("abc", 4).await.is_some());
        assert!(
            cache.hit("abc", 5).await.is_none(),
            "another size is another object"
        );
        assert!(
            cache.fill("../x", 1).await.is_none(),
            "an odd ETag is not a file name"
        );
        assert!(
            cache.fill("big", 11).await.is_none(),
            "larger than the cache"
        );
        // 4 + 8 > 10: the least recently used (abc) goes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut fill = cache.fill("def", 8).await.unwrap();
        fill.write(&[0; 8]).await;
        fill.complete().await;
        assert!(cache.hit("abc", 4).await.is_none());
        assert!(cache.hit("def", 8).await.is_some());
        let names: Vec<_> = std::fs::read_dir(cache.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["def"], "no partial file left");
    }
}
