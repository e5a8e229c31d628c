//! Read connections of a SQLite store, apart from its one writer: in WAL
//! mode a reader sees the last commit and never waits for the writer, and
//! the writer never waits for a reader. A client listing jobs holds one of
//! these, never the connection job writes need.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

use super::backend;
use crate::storage::StorageError;

/// Read connections kept open; reads beyond these wait for one.
pub const READERS: usize = 4;

pub(super) struct Readers {
    path: PathBuf,
    /// Opened on first use.
    slots: Vec<Mutex<Option<Connection>>>,
    next: AtomicUsize,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            slots: (0..READERS).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs `read` on a free read connection (or waits for the next one in
    /// turn when all are busy).
    pub(super) fn read<R>(
        &self,
        read: impl FnOnce(&Connection) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let mut slot = self.slot();
        let conn = match slot.take() {
            Some(open) => open,
            None => self.open()?,
        };
        let result = read(&conn);
        *slot = Some(conn);
        result
    }

    fn slot(&self) -> MutexGuard<'_, Option<Connection>> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.slots.len() {
            if let Ok(free) = self.slots[(start + i) % self.slots.len()].try_lock() {
                return free;
            }
        }
        self.slots[start % self.slots.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> Result<Connection, StorageError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| backend(format!("cannot open {} to read: {e}", self.path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(backend)?;
        Ok(conn)
    }
}
