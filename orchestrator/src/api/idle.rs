//! What a connection is doing, so the server loop ([`super::serve`]) can
//! close one that does nothing, whatever its protocol or phase: before the
//! first byte, during the HTTP/2 preface, between keep-alive requests, with
//! no HTTP/2 stream open.
//!
//! - [`Activity`]: requests in flight on one connection and when the last
//!   one ended; a request counts until its response body is sent (a
//!   streamed answer keeps its connection busy);
//! - [`Timed`]: a request body that must arrive by a deadline
//!   (`body_read_timeout_seconds`), else the body fails with
//!   [`BodyTimeout`] and the handler answers 408.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Requests in flight on one connection, and the last time one began or
/// ended (milliseconds since the connection was accepted).
pub struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// A request began; it counts until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection, idle since, reaches `limit`; `None` while a
    /// request is in flight.
    pub fn idle_deadline(&self, limit: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        Some(self.opened + last + limit)
    }
}

/// One request in flight (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's [`InFlight`] until it is sent
/// (or dropped).
pub struct Held {
    inner: Body,
    _in_flight: InFlight,
}

impl Held {
    pub fn body(inner: Body, in_flight: InFlight) -> Body {
        Body::new(Self {
            inner,
            _in_flight: in_flight,
        })
    }
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body did not arrive within {0:?} (body_read_timeout_seconds); send it at once after the headers"
)]
pub struct BodyTimeout(pub Duration);

/// Whether `error` (a body rejection's source chain) is a [`BodyTimeout`].
pub fn body_timeout<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTimeout> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(timeout) = e.downcast_ref::<BodyTimeout>() {
            return Some(timeout);
        }
        next = e.source();
    }
    None
}

/// A request body with a deadline; the timer is only armed when the body
/// is not already there.
pub struct Timed<B> {
    inner: B,
    limit: Duration,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// The deadline moves on with each frame: a stall, not the whole
    /// body, is limited (file uploads).
    stalling: bool,
}

impl<B> Timed<B> {
    /// The whole body must arrive within `limit`.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Instant::now() + limit,
            timer: None,
            stalling: false,
        }
    }

    /// No pause between two frames may exceed `limit`.
    pub fn stalling(inner: B, limit: Duration) -> Self {
        Self {
            stalling: true,
            ..Self::new(inner, limit)
        }
    }
}

impl<B> HttpBody for Timed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if self.stalling {
                self.deadline = Instant::now() + self.limit;
                self.timer = None;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_requests_in_flight() {
        let limit = Duration::from_secs(2);
        let activity = Activity::new();
        let opened = Instant::now();
        assert_eq!(activity.idle_deadline(limit), Some(opened + limit));
        let request = activity.begin();
        assert_eq!(activity.idle_deadline(limit), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(activity.idle_deadline(limit), None);
        drop(request);
        let deadline = activity.idle_deadline(limit).unwrap();
        assert!(deadline >= opened + Duration::from_secs(7), "{deadline:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_come_fails_with_the_timeout() {
        use http_body_util::BodyExt;
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, axum::Error>,
        >());
        let timed = Timed::new(body, Duration::from_secs(3));
        let error = timed.collect().await.err().unwrap();
        assert!(body_timeout(error.as_ref()).is_some(), "{error}");
    }
}
