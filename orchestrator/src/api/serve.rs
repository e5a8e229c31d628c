//! The HTTP server loop: hyper connections with bounds a hostile client
//! cannot hold open.
//!
//! - at most [`ServeLimits::max_connections`] connections at once (further
//!   ones wait in the listen backlog);
//! - a connection with no request in flight for
//!   [`ServeLimits::header_read_timeout`] is closed, whatever it is doing:
//!   silent from the start, stuck in the HTTP/2 preface or handshake, half
//!   way through a request's headers, idle between keep-alive requests, an
//!   HTTP/2 connection with no stream open ([`super::idle::Activity`]);
//! - a request's body must arrive within [`ServeLimits::body_read_timeout`]
//!   (408 otherwise, [`super::idle::Timed`]);
//! - graceful shutdown: stop accepting, let requests in flight finish (long
//!   polls and `?wait=` are answered at once by the engine), give up after
//!   [`ServeLimits::shutdown_grace`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::idle::{Activity, Held, Timed};

/// How long a connection closed for idleness may take to go after being
/// asked to (an HTTP/2 GOAWAY, the end of a keep-alive): then it is dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// Bounds of the server (config file keys in parentheses).
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Most open connections (`max_connections`, default 1024).
    pub max_connections: usize,
    /// Most time a connection may go without a request in flight: to send
    /// a request's headers, idle between keep-alive requests, an HTTP/2
    /// connection without streams (`header_read_timeout_seconds`, default 20).
    pub header_read_timeout: Duration,
    /// Most time a request's body may take to arrive, from its headers
    /// (`body_read_timeout_seconds`, default 60).
    pub body_read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(20),
            body_read_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut warned_full = false;
    tokio::pin!(shutdown);
    loop {
        let permit = if let Ok(p) = permits.clone().try_acquire_owned() {
            warned_full = false;
            p
        } else {
            if !warned_full {
                tracing::warn!(
                    "{} connections open (max_connections); new ones wait until one closes",
                    limits.max_connections
                );
                warned_full = true;
            }
            tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = &mut shutdown => break,
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // e.g. out of file descriptors: pause instead of spinning.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let service = {
            let (app, activity, body_limit) =
                (app.clone(), activity.clone(), limits.body_read_timeout);
            hyper::service::service_fn(
                move |request: axum::extract::Request<hyper::body::Incoming>| {
                    let in_flight = activity.begin();
                    let (mut parts, body) = request.into_parts();
                    // The peer's address, for the wrong-credential limit (`throttle`).
                    parts.extensions.insert(ConnectInfo(peer));
                    let body = if http_body::Body::is_end_stream(&body) {
                        Body::new(body)
                    } else if super::files::is_file_upload(parts.uri.path()) {
                        // A file may take long in all, but must keep coming.
                        Body::new(Timed::stalling(body, body_limit))
                    } else {
                        Body::new(Timed::new(body, body_limit))
                    };
                    let answer = app
                        .clone()
                        .oneshot(axum::extract::Request::from_parts(parts, body));
                    async move {
                        let response = answer.await?;
                        Ok::<_, std::convert::Infallible>(
                            response.map(|body| Held::body(body, in_flight)),
                        )
                    }
                },
            )
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let (idle_limit, stopping) = (limits.header_read_timeout, stopping.clone());
        connections.spawn(async move {
            drive(
                conn,
                |c| c.graceful_shutdown(),
                &activity,
                idle_limit,
                stopping,
            )
            .await;
            drop(permit);
        });
    }
    drop(listener);
    stopping.cancel();
    connections.close();
    if tokio::time::timeout(limits.shutdown_grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in flight after {:?}; stopping anyway",
            limits.shutdown_grace
        );
    }
    Ok(())
}

/// Runs one connection until it ends, is idle for `idle_limit` (then it is
/// asked to close and, after [`CLOSE_GRACE`], dropped), or the server stops
/// (asked to close; requests in flight finish).
async fn drive<C: std::future::Future>(
    conn: C,
    close: impl Fn(std::pin::Pin<&mut C>),
    activity: &Activity,
    idle_limit: Duration,
    stopping: CancellationToken,
) {
    tokio::pin!(conn);
    let mut closing: Option<tokio::time::Instant> = None;
    let mut server_stopping = false;
    loop {
        let wake = match (closing, activity.idle_deadline(idle_limit)) {
            (Some(at), Some(_)) => at,
            (Some(_), None) | (None, None) => tokio::time::Instant::now() + idle_limit,
            (None, Some(at)) => at,
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stopping.cancelled(), if !server_stopping => {
                server_stopping = true;
                close(conn.as_mut());
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                match (closing, activity.idle_deadline(idle_limit)) {
                    (Some(at), Some(_)) if now >= at => return,
                    (None, Some(idle)) if now >= idle => {
                        close(conn.as_mut());
                        closing = Some(now + CLOSE_GRACE);
                    }
                    _ => {}
                }
            }
        }
    }
}
