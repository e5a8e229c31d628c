//! Idempotency keys: a create with a key a client used within the
//! retention gets the first job back. A key names its job from the moment
//! it is claimed, before the job is created, so two creates racing with one
//! key make one job (also on several instances sharing a database).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::StorageError;

/// A key already held, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldKey {
    pub job: Uuid,
    pub at: DateTime<Utc>,
}

/// Idempotency keys in one instance's storage (memory, SQLite). Blocking.
pub trait KeyStorage {
    /// Claims `(owner, key)` for `job` unless it is held since `expired`
    /// or later; the holder if it is.
    fn claim_key(
        &self,
        owner: &str,
        key: &str,
        job: Uuid,
        now: DateTime<Utc>,
        expired: DateTime<Utc>,
    ) -> Result<Option<HeldKey>, StorageError>;
    /// Gives the key up if `job` still holds it (its create failed).
    fn release_key(&self, owner: &str, key: &str, job: Uuid) -> Result<(), StorageError>;
    /// Hands the key from `old` (a job never created) to `new`; whether it did.
    fn replace_key(
        &self,
        owner: &str,
        key: &str,
        old: Uuid,
        new: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError>;
    /// Deletes keys claimed before `expired`; how many.
    fn prune_keys(&self, expired: DateTime<Utc>) -> Result<usize, StorageError>;
}

/// The same, as the engine reaches it: its backend answers.
#[async_trait::async_trait]
pub trait Keys: Send + Sync {
    async fn claim_key(
        &self,
        owner: &str,
        key: &str,
        job: Uuid,
        expired: DateTime<Utc>,
    ) -> Result<Option<HeldKey>, StorageError>;
    async fn release_key(&self, owner: &str, key: &str, job: Uuid) -> Result<(), StorageError>;
    async fn replace_key(
        &self,
        owner: &str,
        key: &str,
        old: Uuid,
        new: Uuid,
    ) -> Result<bool, StorageError>;
    async fn prune_keys(&self, expired: DateTime<Utc>) -> Result<usize, StorageError>;
}

/// The keys in memory, keyed by (owner, key).
pub type KeyMap = std::collections::HashMap<(String, String), HeldKey>;

pub fn claim_in(
    map: &mut KeyMap,
    owner: &str,
    key: &str,
    job: Uuid,
    now: DateTime<Utc>,
    expired: DateTime<Utc>,
) -> Option<HeldKey> {
    let k = (owner.to_string(), key.to_string());
    match map.get(&k) {
        Some(held) if held.at >= expired => Some(*held),
        _ => {
            map.insert(k, HeldKey { job, at: now });
            None
        }
    }
}

pub fn replace_in(
    map: &mut KeyMap,
    owner: &str,
    key: &str,
    old: Uuid,
    new: Uuid,
    now: DateTime<Utc>,
) -> bool {
    match map.get_mut(&(owner.to_string(), key.to_string())) {
        Some(held) if held.job == old => {
            *held = HeldKey { job: new, at: now };
            true
        }
        _ => false,
    }
}
