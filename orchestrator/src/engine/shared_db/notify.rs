//! How instances tell each other what happened: `NOTIFY` after commit
//! (coalesced), `LISTEN` with reconnects, and what a notification does
//! here (wake waiters, forget jobs another instance changed).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use super::SharedDb;

/// Notifications of events this close together go out as one.
const NOTIFY_COALESCE: Duration = Duration::from_millis(2);

/// Job ids per `changed` notification (a payload holds < 8,000 bytes).
const CHANGED_PER_NOTIFY: usize = 200;

/// What the notifier is asked to tell the other instances.
/// What the notifier is asked to tell the other instances.
pub(super) enum Notice {
    /// A task was queued.
    Tasks,
    /// A job ended.
    Jobs,
    /// These jobs changed.
    Changed(Vec<Uuid>),
}

impl SharedDb {
    /// Sends `NOTIFY` for what events asked, coalesced: one statement per
    /// [`NOTIFY_COALESCE`], from outside the events' transactions (a `NOTIFY`
    /// in a transaction serializes commits on the server). The jobs changed
    /// go first (`changed`, with this instance's id), so an instance woken
    /// by `jobs` has already forgotten what it held of them.
    pub(super) async fn notifier(
        self: Arc<Self>,
        mut requests: tokio::sync::mpsc::UnboundedReceiver<Notice>,
    ) {
        while let Some(first) = requests.recv().await {
            tokio::time::sleep(NOTIFY_COALESCE).await;
            let (mut tasks, mut jobs) = (false, false);
            let mut changed: Vec<Uuid> = Vec::new();
            for notice in
                std::iter::once(first).chain(std::iter::from_fn(|| requests.try_recv().ok()))
            {
                match notice {
                    Notice::Tasks => tasks = true,
                    Notice::Jobs => jobs = true,
                    Notice::Changed(ids) => changed.extend(ids),
                }
            }
            changed.sort_unstable();
            changed.dedup();
            let mut sql = String::new();
            for chunk in changed.chunks(CHANGED_PER_NOTIFY) {
                // Ids and the instance id: hex only, safe in a literal.
                let ids: Vec<String> = chunk.iter().map(|id| id.simple().to_string()).collect();
                sql.push_str(&format!(
                    "NOTIFY changed, '{}:{}';",
                    self.instance.simple(),
                    ids.join(",")
                ));
            }
            // With this instance's id: it woke its own waiters already
            // (`announce`), and hears its own notifications too.
            let me = self.instance.simple();
            if tasks {
                sql.push_str(&format!("NOTIFY tasks, '{me}';"));
            }
            if jobs {
                sql.push_str(&format!("NOTIFY jobs, '{me}';"));
            }
            match self.pool.get().await {
                Ok(client) => {
                    if let Err(e) = client.batch_execute(&sql).await {
                        tracing::debug!("NOTIFY failed: {e}");
                    }
                }
                Err(e) => tracing::debug!("NOTIFY failed: {e}"),
            }
        }
    }

    /// Whether a notification's sender (its payload, or the part of it
    /// before `:`) is this instance: `tasks` and `jobs` from an instance of
    /// an earlier release carry no payload.
    fn is_mine(&self, payload: &str) -> bool {
        Uuid::try_parse(payload).is_ok_and(|from| from == self.instance)
    }

    /// A `changed` notification: forget what another instance changed.
    fn on_changed(&self, payload: &str) {
        let Some((from, ids)) = payload.split_once(':') else {
            return self.cache.clear();
        };
        if self.is_mine(from) {
            return;
        }
        self.cache
            .evict(ids.split(',').filter_map(|id| Uuid::try_parse(id).ok()));
    }

    /// Listens for notifications; reconnects when the connection drops.
    pub(crate) async fn listen(self: Arc<Self>) {
        loop {
            match tokio_postgres::connect(&self.url, NoTls).await {
                Ok((client, mut connection)) => {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    // The connection must be polled for the LISTEN to complete.
                    let listened = {
                        let listen =
                            client.batch_execute("LISTEN tasks; LISTEN jobs; LISTEN changed");
                        let mut listen = std::pin::pin!(listen);
                        loop {
                            tokio::select! {
                                r = &mut listen => break r.is_ok(),
                                m = messages.next() => if m.is_none() { break false },
                            }
                        }
                    };
                    if !listened {
                        tracing::warn!("cannot LISTEN for notifications; retrying");
                    }
                    while let Some(message) = messages.next().await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => match n.channel() {
                                _ if self.is_mine(n.payload()) => {}
                                "tasks" => self.tasks.notify_waiters(),
                                "jobs" => {
                                    self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
                                    self.jobs.notify_waiters()
                                }
                                "changed" => {
                                    self.heard.store(true, std::sync::atomic::Ordering::Relaxed);
                                    self.on_changed(n.payload())
                                }
                                _ => {}
                            },
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!("LISTEN connection lost: {e}");
                                break;
                            }
                        }
                    }
                    drop(client);
                    // Changes may have gone unheard meanwhile.
                    self.cache.clear();
                }
                Err(e) => tracing::warn!("cannot open the LISTEN connection: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Wakes waiters here at once, and other instances through the
    /// database (see [`Self::notifier`]).
    pub(crate) fn announce(&self, queued: bool, ended: bool) {
        if queued {
            self.tasks.notify_waiters();
            let _ = self.notices.send(Notice::Tasks);
        }
        if ended {
            self.jobs.notify_waiters();
            let _ = self.notices.send(Notice::Jobs);
        }
    }
}
