//! What an event leaves to do once its changes are committed, the same for
//! every backend: metrics, the update stream, stop notices to workers'
//! channels, webhooks, and waking whoever waits for a task or a job's end.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use super::webhook::Webhook;
use super::{JobUpdate, Shared, TaskStop};
use crate::job::Job;
use crate::storage::JobWrite;

/// The effects of one committed event.
#[derive(Default)]
pub(crate) struct AfterCommit {
    pub observed: Vec<crate::metrics::Observation>,
    /// The jobs written, for the update stream.
    pub updates: Vec<JobUpdate>,
    pub stops: Vec<TaskStop>,
    pub webhooks: Vec<Webhook>,
    /// A task was queued (pollers elsewhere may take it).
    pub queued: bool,
    /// A job ended (`?wait=` callers elsewhere may answer).
    pub ended: bool,
}

impl AfterCommit {
    /// Counts `write` in: its metrics, whether it ended a job.
    pub(crate) fn saw(&mut self, write: &JobWrite) {
        crate::metrics::observations(write, &mut self.observed);
        self.ended |= write.job.status.is_terminal();
    }

    /// `job` as the update stream sends it, when a stream listens.
    pub(crate) fn changed(&mut self, job: &Job, shared: &Shared) {
        if shared.updates.receiver_count() > 0 {
            self.updates.push(JobUpdate::of(job));
        }
    }

    /// Does it all. Waiters in this process are woken by the machine
    /// itself (a worker's or a job's `Notify`); the backend tells the
    /// others ([`super::Backend::announce`]).
    pub(crate) fn apply(mut self, shared: &Arc<Shared>) {
        crate::metrics::record(std::mem::take(&mut self.observed));
        shared.send_stops(&mut self.stops);
        if shared.updates.receiver_count() > 0 {
            for update in self.updates {
                let _ = shared.updates.send(update);
            }
        }
        shared.backend.announce(self.queued, self.ended);
        for hook in self.webhooks {
            tokio::spawn(hook.deliver(shared.clone()));
        }
    }
}

/// A wake-up to wait for: a task queued, a job ended.
/// What a worker's look for a task found.
pub(crate) struct Take {
    pub task: Option<rxon::TaskPayload>,
    /// Wakes the worker when a task may be there for it.
    pub wake: Wake,
    /// Tasks were passed over for their rate keys or strategies: the first
    /// may be the worker's then.
    pub again_at: Option<tokio::time::Instant>,
    /// No task: the worker as the dispatch strategies rank it.
    pub standing: Option<super::strategy::Standing>,
}

pub(crate) enum Wake {
    /// A permit: a wake-up given before the wait is kept for it.
    Permit(Arc<Notify>),
    /// Registered already: a wake-up given from now on is not missed.
    Armed(Pin<Box<OwnedNotified>>),
}

impl Wake {
    /// Registered now with `notify` (woken by `notify_waiters`).
    pub(crate) fn armed(notify: Arc<Notify>) -> Self {
        let mut notified = Box::pin(notify.notified_owned());
        notified.as_mut().enable();
        Self::Armed(notified)
    }

    pub(crate) async fn wait(self) {
        match self {
            Self::Permit(notify) => notify.notified().await,
            Self::Armed(notified) => notified.await,
        }
    }
}
