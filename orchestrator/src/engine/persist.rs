//! The writer: applies job writes to storage in the order the engine made
//! them, batching whatever queued up meanwhile into one transaction.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::storage::{JobWrite, Storage};

/// One write (or, with `None`, a barrier), with an optional
/// acknowledgement once it and everything before it is durable.
pub struct PersistMsg {
    pub write: Option<JobWrite>,
    /// A job whose webhook is done with (delivered or given up).
    pub webhook_done: Option<uuid::Uuid>,
    pub ack: Option<oneshot::Sender<Result<(), String>>>,
}

/// Most writes put in one transaction.
const MAX_BATCH: usize = 512;

pub fn spawn_writer(
    storage: Arc<dyn Storage>,
) -> (
    mpsc::UnboundedSender<PersistMsg>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PersistMsg>();
    let handle = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let msgs = std::mem::take(&mut batch);
            let storage = storage.clone();
            let result = tokio::task::spawn_blocking(move || {
                let writes: Vec<JobWrite> = msgs.iter().filter_map(|m| m.write.clone()).collect();
                let done: Vec<uuid::Uuid> = msgs.iter().filter_map(|m| m.webhook_done).collect();
                (storage.write(&writes, &done), msgs)
            })
            .await;
            match result {
                Ok((outcome, msgs)) => {
                    if let Err(e) = &outcome {
                        tracing::error!("could not save {} job change(s): {e}", msgs.len());
                    }
                    for m in msgs {
                        if let Some(ack) = m.ack {
                            let _ =
                                ack.send(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                        }
                    }
                }
                Err(e) => tracing::error!("the storage writer crashed: {e}"),
            }
        }
    });
    (tx, handle)
}
