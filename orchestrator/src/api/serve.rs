//! The HTTP server loop: hyper connections with bounds a hostile client
//! cannot hold open.
//!
//! - at most [`ServeLimits::max_connections`] connections at once (further
//!   ones wait in the listen backlog);
//! - a client must send a request's headers within
//!   [`ServeLimits::header_read_timeout`]; the same timer closes a keep-alive
//!   connection idle for that long;
//! - graceful shutdown: stop accepting, let requests in flight finish (long
//!   polls and `?wait=` are answered at once by the engine), give up after
//!   [`ServeLimits::shutdown_grace`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Bounds of the server (config file keys in parentheses).
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Most open connections (`max_connections`, default 1024).
    pub max_connections: usize,
    /// Time to send a request's headers, and most idle time of a
    /// keep-alive connection (`header_read_timeout_seconds`, default 20).
    pub header_read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(20),
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
    let graceful = GracefulShutdown::new();
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
        // The peer's address, for the wrong-credential limit (`throttle`).
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
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
