//! Clients' usage per period, for their monthly quotas
//! (`api/limits.rs`): each instance adds what it counted, and learns the
//! totals of every instance sharing the storage.

use std::collections::HashMap;

use super::StorageError;

/// What one period's count of one client is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageKind {
    /// API requests (avtomatika's `monthly_attempts`).
    Attempts,
    /// Jobs created.
    Jobs,
}

impl UsageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attempts => "attempts",
            Self::Jobs => "jobs",
        }
    }
}

/// A client's count of `kind` in `period` (`YYYY-MM`, UTC).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UsageKey {
    pub owner: String,
    pub kind: UsageKind,
    pub period: String,
}

/// Usage counts in one instance's storage (memory, SQLite). Blocking.
pub trait UsageStorage {
    /// Adds each delta to its count; every count after the adding.
    fn add_usage(&self, deltas: &[(UsageKey, u64)]) -> Result<Vec<(UsageKey, u64)>, StorageError>;
}

/// The counts in memory.
pub type UsageMap = HashMap<UsageKey, u64>;

pub fn add_in(map: &mut UsageMap, deltas: &[(UsageKey, u64)]) -> Vec<(UsageKey, u64)> {
    deltas
        .iter()
        .map(|(key, delta)| {
            let used = map.entry(key.clone()).or_default();
            *used = used.saturating_add(*delta);
            (key.clone(), *used)
        })
        .collect()
}
