//! Registration, done by one background task so that no loop ever waits on
//! another's retries.
//!
//! Loops that learn the orchestrator forgot this worker (a 404) *ask* for a
//! registration and go on; the registrar registers once for all of them,
//! retrying with backoff without holding anything the heartbeat loop, the
//! task slots or the plugin watcher need. A refusal that retrying cannot fix
//! (e.g. 413: the registration is larger than the orchestrator accepts) is
//! reported once and retried only when the plugins change.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Worker};
use crate::client::ClientError;

/// Registration generations: `done` counts successful registrations,
/// `needed` is the generation someone is waiting for.
pub(super) struct Registrations {
    done: watch::Sender<u64>,
    needed: watch::Sender<u64>,
    /// Bumped when the plugin set changes (a refused registration is retried then).
    plugins: watch::Sender<u64>,
}

impl Registrations {
    pub(super) fn new() -> Self {
        Self {
            done: watch::Sender::new(0),
            needed: watch::Sender::new(1),
            plugins: watch::Sender::new(0),
        }
    }

    /// Successful registrations so far.
    pub(super) fn done(&self) -> u64 {
        *self.done.borrow()
    }

    /// Asks for a registration newer than generation `seen`.
    pub(super) fn request(&self, seen: u64) {
        self.needed.send_if_modified(|n| {
            let changed = *n <= seen;
            *n = (*n).max(seen + 1);
            changed
        });
    }

    /// The plugins changed: register again with the new skills.
    pub(super) fn plugins_changed(&self) {
        self.plugins.send_modify(|g| *g += 1);
        self.request(self.done());
    }

    /// Waits until a registration newer than `seen` succeeded; false on shutdown.
    pub(super) async fn wait_newer(&self, seen: u64, shutdown: &CancellationToken) -> bool {
        let mut rx = self.done.subscribe();
        tokio::select! {
            r = rx.wait_for(|d| *d > seen) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Whether retrying the same registration can help.
fn retry_can_help(e: &ClientError) -> bool {
    match e {
        ClientError::Http { status, .. } => {
            status.is_server_error()
                || *status == reqwest::StatusCode::REQUEST_TIMEOUT
                || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
        }
        ClientError::PayloadTooLarge { .. } => false,
        _ => true,
    }
}

impl Worker {
    /// The registrar: runs until `shutdown`.
    pub(super) async fn registrar(self, shutdown: CancellationToken) {
        let regs = &self.inner.registrations;
        let mut needed = regs.needed.subscribe();
        let mut plugins = regs.plugins.subscribe();
        let mut backoff = Backoff::new(&self.inner.settings);
        loop {
            let done = regs.done();
            tokio::select! {
                r = needed.wait_for(|n| *n > done) => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            let registration = self.registration();
            match self.inner.client.register(&registration).await {
                Ok(response) => {
                    if let Some(warning) = response.warning {
                        tracing::warn!("orchestrator: {}", crate::limits::for_log(&warning));
                    }
                    self.advertise(self.plugins());
                    regs.done.send_modify(|d| *d += 1);
                    crate::health::registered();
                    tracing::info!(
                        "registered with the orchestrator as {} ({})",
                        self.inner.client.worker_id(),
                        response.status
                    );
                    backoff.reset();
                }
                Err(e) if !retry_can_help(&e) => {
                    tracing::error!(
                        "registration refused: {e}; not retrying until the plugins change \
                         (the registration declares {} skill(s))",
                        registration.supported_skills.len()
                    );
                    plugins.mark_unchanged();
                    tokio::select! {
                        _ = plugins.changed() => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                Err(e) => {
                    let delay = match &e {
                        ClientError::Unauthorized { .. } => self.inner.settings.max_backoff,
                        _ => backoff.after(&e),
                    };
                    match &e {
                        ClientError::Unauthorized { .. } => tracing::error!(
                            "registration rejected: {e}; check WORKER_TOKEN/WORKER_ID. Retrying in {delay:?}"
                        ),
                        _ => tracing::warn!("registration failed: {e}; retrying in {delay:?}"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = plugins.changed() => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}
