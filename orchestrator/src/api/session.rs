//! Who a client request is from: its token header, else the dashboard's
//! session cookie, resolved once per request by the front door
//! ([`super::guard`]) and handed to handlers as a [`Caller`].
//!
//! A dashboard sign-in opens a server-side session: the cookie carries a
//! random session id (64 hex digits, 244 random bits), never the token. The session records
//! the client and a digest of the token it was opened with, and ends at
//! sign-out, after [`SESSION_TTL`], when the client's token is rotated or
//! removed, or when the client opens more than [`SESSIONS_PER_CLIENT`]
//! (the oldest ends). One orchestrator keeps its sessions in memory (a
//! restart signs everyone out); instances sharing a PostgreSQL database keep
//! them there, so a sign-out on one is refused by all at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use tokio::time::Instant;

use super::AppState;
use super::auth::{Digest, digest, session_cookie};
use super::error::ApiError;
use crate::engine::EngineError;
use crate::engine::shared_db::{SharedDb, StoredSession};

/// How long a sign-in lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most open sessions per client; signing in once more ends its oldest.
pub const SESSIONS_PER_CLIENT: usize = 32;

/// The client a request is made by (its name in the configuration).
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.caller(&parts.extensions, &parts.headers).await
    }
}

/// Where dashboard sessions are kept, chosen once: in memory (one
/// orchestrator) or in the shared database (several instances).
pub(crate) enum Sessions {
    Local(Mutex<Local>),
    Shared(Arc<SharedDb>),
}

impl Sessions {
    /// The store for `engine`'s backend.
    pub fn of(engine: &crate::engine::Engine) -> Self {
        match engine.shared.backend.shared_db() {
            Some(db) => Self::Shared(db.clone()),
            None => Self::Local(Mutex::default()),
        }
    }

    /// `id`: the digest of the session id.
    async fn get(&self, id: &Digest) -> Result<Option<StoredSession>, ApiError> {
        match self {
            Self::Local(local) => Ok(lock(local).get(id)),
            Self::Shared(db) => Ok(db.session(id).await.map_err(EngineError::from)?),
        }
    }

    async fn start(&self, id: Digest, session: StoredSession) -> Result<(), ApiError> {
        match self {
            Self::Local(local) => lock(local).start(id, session),
            Self::Shared(db) => db
                .start_session(&id, &session, SESSION_TTL, SESSIONS_PER_CLIENT)
                .await
                .map_err(EngineError::from)?,
        }
        Ok(())
    }

    async fn end(&self, id: &Digest) -> Result<(), ApiError> {
        match self {
            Self::Local(local) => lock(local).end(id),
            Self::Shared(db) => db.end_session(id).await.map_err(EngineError::from)?,
        }
        Ok(())
    }
}

fn lock(local: &Mutex<Local>) -> std::sync::MutexGuard<'_, Local> {
    local.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
pub(crate) struct Local {
    /// Digest of the session id → the session.
    by_id: HashMap<Digest, Open>,
    /// Client → its sessions' ids, oldest first.
    by_client: HashMap<String, VecDeque<Digest>>,
}

#[derive(Debug)]
struct Open {
    client: String,
    token: Digest,
    expires: Instant,
}

impl Local {
    fn start(&mut self, id: Digest, session: StoredSession) {
        let now = Instant::now();
        let ids = self.by_client.entry(session.client.clone()).or_default();
        ids.retain(|old| {
            let live = self.by_id.get(old).is_some_and(|s| s.expires > now);
            if !live {
                self.by_id.remove(old);
            }
            live
        });
        while ids.len() >= SESSIONS_PER_CLIENT {
            if let Some(oldest) = ids.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
        ids.push_back(id);
        self.by_id.insert(
            id,
            Open {
                client: session.client,
                token: session.token,
                expires: now + SESSION_TTL,
            },
        );
    }

    fn get(&self, id: &Digest) -> Option<StoredSession> {
        let open = self.by_id.get(id).filter(|s| s.expires > Instant::now())?;
        Some(StoredSession {
            client: open.client.clone(),
            token: open.token,
        })
    }

    fn end(&mut self, id: &Digest) {
        if let Some(open) = self.by_id.remove(id)
            && let Some(ids) = self.by_client.get_mut(&open.client)
        {
            ids.retain(|other| other != id);
            if ids.is_empty() {
                self.by_client.remove(&open.client);
            }
        }
    }
}

/// A session id: 64 hex digits from two random v4 UUIDs (244 random bits).
fn new_session_id() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The digest of the session id the cookie carries, if it is well formed.
fn cookie_session(headers: &HeaderMap) -> Option<Digest> {
    let id = session_cookie(headers)?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| digest(id))
}

fn ended() -> ApiError {
    ApiError::Unauthorized(
        "Unauthorized: the dashboard session has ended (signed out, expired or its token changed); sign in again"
            .into(),
    )
}

impl AppState {
    /// The client a request is made by: as the front door resolved it, or
    /// by its `X-Client-Token` header, or by its session cookie.
    pub async fn caller(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        if let Some(known) = extensions.get::<Caller>() {
            return Ok(known.clone());
        }
        if let Some(token) = super::auth::client_token(headers) {
            return self.auth.client_by_token(token).map(Caller);
        }
        if session_cookie(headers).is_none() {
            return Err(ApiError::Unauthorized(
                "Missing X-Client-Token header".into(),
            ));
        }
        let id = cookie_session(headers).ok_or_else(ended)?;
        let session = self.sessions.get(&id).await?.ok_or_else(ended)?;
        // The token it was opened with must still be this client's.
        match self.auth.client_by_digest(&session.token) {
            Some(name) if name == session.client => Ok(Caller(name)),
            _ => Err(ended()),
        }
    }

    /// Opens a dashboard session for a client token; returns the client and
    /// the session id for the cookie.
    pub async fn sign_in(&self, token: &str) -> Result<(String, String), ApiError> {
        let client = self.auth.client_by_token(token)?;
        let id = new_session_id();
        let session = StoredSession {
            client: client.clone(),
            token: digest(token),
        };
        self.sessions.start(digest(&id), session).await?;
        Ok((client, id))
    }

    /// Ends the session the request's cookie names, if any, everywhere.
    pub async fn sign_out(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(id) = cookie_session(headers) else {
            return Ok(());
        };
        self.sessions.end(&id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(client: &str) -> StoredSession {
        StoredSession {
            client: client.into(),
            token: digest(client),
        }
    }

    #[test]
    fn a_client_keeps_at_most_its_newest_sessions() {
        let mut local = Local::default();
        let ids: Vec<Digest> = (0..SESSIONS_PER_CLIENT + 3)
            .map(|i| digest(&i.to_string()))
            .collect();
        for id in &ids {
            local.start(*id, session("alice"));
        }
        local.start(digest("other"), session("bob"));
        assert!(local.get(&ids[0]).is_none());
        assert!(local.get(&ids[2]).is_none());
        assert!(local.get(&ids[3]).is_some());
        assert_eq!(local.by_client["alice"].len(), SESSIONS_PER_CLIENT);
        assert!(local.get(&digest("other")).is_some());
        local.end(&ids[3]);
        assert!(local.get(&ids[3]).is_none());
        assert_eq!(local.by_id.len(), SESSIONS_PER_CLIENT);
    }
}
