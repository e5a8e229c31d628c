//! Captured stdout/stderr of one task: the first `capacity` bytes are kept,
//! the rest is accepted and dropped (and counted), so a plugin that prints a
//! lot goes on running instead of failing with `Broken pipe`.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Default)]
struct Captured {
    kept: BytesMut,
    dropped: u64,
}

/// A bounded capture buffer; clones share it.
#[derive(Clone)]
pub struct CappedOutput {
    capacity: usize,
    inner: Arc<Mutex<Captured>>,
}

impl CappedOutput {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Captured> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps what fits, counts the rest.
    fn accept(&self, bytes: &[u8]) {
        let mut c = self.lock();
        let room = self.capacity.saturating_sub(c.kept.len());
        let keep = bytes.len().min(room);
        c.kept.extend_from_slice(&bytes[..keep]);
        c.dropped += (bytes.len() - keep) as u64;
    }

    /// What was kept.
    pub fn contents(&self) -> Bytes {
        self.lock().kept.clone().freeze()
    }

    /// Bytes written beyond the capacity (dropped).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

/// Most bytes one `write` may carry (WASI's `check-write` permit).
const WRITE_PERMIT: usize = 64 << 10;

#[async_trait::async_trait]
impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.accept(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_first_bytes_and_counts_the_rest() {
        let mut out = CappedOutput::new(4);
        out.write(Bytes::from_static(b"abc")).unwrap();
        out.write(Bytes::from_static(b"defgh")).unwrap();
        assert_eq!(&out.contents()[..], b"abcd");
        assert_eq!(out.dropped(), 4);
        assert_eq!(out.check_write().unwrap(), WRITE_PERMIT);
    }
}
