//! Who is calling: client tokens for `/api`, worker tokens and message
//! signatures for `/_worker`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::error::ApiError;

pub const HEADER_CLIENT_TOKEN: &str = "x-client-token";
/// The older avtomatika header, still accepted.
pub const HEADER_CLIENT_TOKEN_LEGACY: &str = "x-avtomatika-token";
/// The dashboard's sign-in cookie: a session id, `HttpOnly`,
/// `SameSite=Strict` (see [`super::session`]).
pub const SESSION_COOKIE: &str = "taskworker_session";
/// The prefix of a worker-token entry that is an fnmatch glob over worker
/// ids (`[workers."pattern:cpu-*"]`, as in avtomatika's `workers.toml`).
pub const WORKER_PATTERN: &str = "pattern:";

/// The longest client token a sign-in may carry.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// How long a seen message nonce is remembered: as long as its timestamp
/// can still be accepted. A timestamp passes within ±60 s of the clock, so
/// one message can be replayed for 120 s after it is first seen; 5 s more.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(2 * rxon::MAX_CLOCK_SKEW_SECS as u64 + 5);

/// Credentials the orchestrator accepts. Every secret is compared in
/// constant time, as SHA-256 digests (so neither content nor length leaks).
#[derive(Debug, Default)]
pub struct Auth {
    /// Client token → client name.
    pub clients: HashMap<String, String>,
    /// The same, as (digest of the token, client name), scanned whole.
    client_digests: Vec<(Digest, String)>,
    /// Accepted from any worker that has no token of its own.
    pub global_worker_token: Option<String>,
    /// Worker id → its own token (the global token is then refused for it).
    pub worker_tokens: HashMap<String, String>,
    /// `pattern:<glob>` entries (avtomatika's `workers.toml` shape): a
    /// worker id no exact entry names and the glob matches (fnmatch: `*`,
    /// `?`, `[…]`) takes that token, tried in the order of their names; the
    /// global token is then refused for it.
    worker_patterns: Vec<(glob::Pattern, String)>,
    /// Whether worker messages must be signed (as avtomatika 1.0b30 requires).
    pub require_signatures: bool,
    /// Most worker ids one shared token (the global one, or a pattern's)
    /// may have registered at once (`max_workers_per_token`).
    pub max_workers_per_token: usize,
    /// Client names that may deploy plugins and blueprints.
    deployers: std::collections::HashSet<String>,
    seen: Mutex<SeenNonces>,
}

impl Auth {
    /// `worker_tokens`: worker id, or `pattern:<glob>`, → token (a glob
    /// that does not parse is left out; the config loader refuses it first).
    pub fn new(
        clients: HashMap<String, String>,
        global_worker_token: Option<String>,
        worker_tokens: HashMap<String, String>,
        require_signatures: bool,
    ) -> Self {
        let client_digests = clients
            .iter()
            .map(|(token, name)| (digest(token), name.clone()))
            .collect();
        let (patterns, exact): (HashMap<_, _>, HashMap<_, _>) = worker_tokens
            .into_iter()
            .partition(|(id, _)| id.starts_with(WORKER_PATTERN));
        let mut worker_patterns: Vec<(glob::Pattern, String)> = patterns
            .into_iter()
            .filter_map(|(key, token)| {
                Some((
                    glob::Pattern::new(&key[WORKER_PATTERN.len()..]).ok()?,
                    token,
                ))
            })
            .collect();
        worker_patterns.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Self {
            client_digests,
            clients,
            global_worker_token,
            worker_tokens: exact,
            worker_patterns,
            require_signatures,
            max_workers_per_token: crate::config::DEFAULT_MAX_WORKERS_PER_TOKEN,
            deployers: Default::default(),
            seen: Mutex::default(),
        }
    }

    /// Sets `max_workers_per_token`.
    pub fn with_max_workers_per_token(mut self, max: usize) -> Self {
        self.max_workers_per_token = max;
        self
    }

    /// Lets these clients (by name) deploy.
    pub fn with_deployers(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.deployers = names.into_iter().collect();
        self
    }

    /// `client` itself if that client may deploy (403 otherwise).
    pub fn may_deploy(&self, client: String) -> Result<String, ApiError> {
        if self.deployers.contains(&client) {
            Ok(client)
        } else {
            Err(ApiError::Forbidden(format!(
                "Forbidden: client {client} may not deploy (give it `deploy = true` under [clients.{client}], or use DEPLOY_TOKEN)"
            )))
        }
    }

    /// The client name a token belongs to.
    pub fn client_by_token(&self, token: &str) -> Result<String, ApiError> {
        self.client_by_digest(&digest(token)).ok_or_else(|| {
            ApiError::WrongToken(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: Invalid token".into(),
            )
        })
    }

    /// The client whose token has this digest, if any still has.
    pub fn client_by_digest(&self, token: &Digest) -> Option<String> {
        // Every entry is compared, so the time does not say which matched.
        let mut found = None;
        for (known, name) in &self.client_digests {
            if digest_eq(known, token) {
                found = Some(name);
            }
        }
        found.cloned()
    }

    /// The token `worker_id` must use and what it is (`worker <id>`,
    /// `pattern <glob>`, `the global token`); `None`: no worker token is
    /// configured for it.
    pub fn token_of(&self, worker_id: &str) -> Option<(String, &str)> {
        if let Some(own) = self.worker_tokens.get(worker_id) {
            return Some((format!("the token of worker {worker_id}"), own));
        }
        if let Some((glob, token)) = self
            .worker_patterns
            .iter()
            .find(|(glob, _)| glob.matches(worker_id))
        {
            return Some((format!("the token of pattern:{}", glob.as_str()), token));
        }
        let global = self.global_worker_token.as_deref()?;
        Some(("the global worker token".into(), global))
    }

    /// Whether the headers carry a worker token we know (the global one or
    /// any worker's own), before the body that names the worker is read.
    pub fn known_worker_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = worker_token(headers)?;
        let given = digest(token);
        let mut known = false;
        for secret in self
            .global_worker_token
            .iter()
            .chain(self.worker_tokens.values())
            .chain(self.worker_patterns.iter().map(|(_, token)| token))
        {
            known |= digest_eq(&digest(secret), &given);
        }
        if known {
            Ok(())
        } else {
            Err(wrong_worker_token("Unauthorized: No valid token found"))
        }
    }

    /// Authenticates a worker; returns its id and the secret it signs with.
    /// The worker id is the path's, else the `X-Worker-ID` header's, else the
    /// body's (as avtomatika resolves it).
    pub fn worker(
        &self,
        headers: &HeaderMap,
        path_id: Option<&str>,
        body_id: Option<&str>,
    ) -> Result<(String, String), ApiError> {
        let token = worker_token(headers)?;
        let header_id = headers
            .get(rxon::HEADER_WORKER_ID)
            .and_then(|v| v.to_str().ok());
        let worker_id = path_id
            .or(header_id)
            .or(body_id)
            .map(str::to_string)
            .ok_or_else(|| {
                ApiError::Forbidden("Unauthorized: no worker id (X-Worker-ID header)".into())
            })?;
        let is_global = |t: &str| self.global_worker_token.as_deref() == Some(t);
        match self.token_of(&worker_id) {
            // Its own token (exact or by pattern): the global one is refused.
            Some((_, own)) if !is_global(own) => {
                if constant_eq(own, token) {
                    Ok((worker_id, own.to_string()))
                } else {
                    Err(wrong_worker_token(
                        "Unauthorized: Invalid individual worker token",
                    ))
                }
            }
            Some((_, global)) if constant_eq(global, token) => Ok((worker_id, global.to_string())),
            _ => Err(wrong_worker_token("Unauthorized: No valid token found")),
        }
    }

    /// Checks a signed worker message: timestamp, signature, signer and, if
    /// `replay` is `Rejected`, that the same message was not seen here in the
    /// last [`REPLAY_WINDOW`] (125 s). Returns the message's replay key then (instances sharing
    /// a database also check it there).
    pub fn verify_message(
        &self,
        body: &Value,
        worker_id: &str,
        secret: &str,
        exclude: &[&str],
        replay: Replay,
    ) -> Result<Option<String>, ApiError> {
        let obj = body
            .as_object()
            .ok_or_else(|| ApiError::BadRequest("Invalid JSON body".into()))?;
        let security = obj.get("security");
        if !self.require_signatures && security.is_none() {
            return Ok(None);
        }
        let timestamp = obj
            .get("timestamp")
            .and_then(Value::as_f64)
            .ok_or_else(|| {
                ApiError::Forbidden("Missing required timestamp for replay protection".into())
            })?;
        let now = chrono::Utc::now().timestamp() as f64;
        if (now - timestamp).abs() > rxon::MAX_CLOCK_SKEW_SECS as f64 {
            return Err(ApiError::Forbidden(
                "Message timestamp expired (replay protection)".into(),
            ));
        }
        rxon::verify_message(body, secret, exclude)
            .map_err(|e| ApiError::Forbidden(e.to_string()))?;
        if let Some(signer) = security
            .and_then(|s| s.get("signer_id"))
            .and_then(Value::as_str)
            && signer != worker_id
        {
            return Err(ApiError::Forbidden(format!(
                "Message signer ID '{signer}' does not match worker ID '{worker_id}'"
            )));
        }
        if replay == Replay::Allowed {
            return Ok(None);
        }
        let nonce = ["event_id", "nonce", "message_id"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .or_else(|| {
                security
                    .and_then(|s| s.get("signature"))
                    .and_then(Value::as_str)
            })
            .unwrap_or_default();
        let key = format!("{worker_id}:{nonce}");
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check_and_remember(key.clone(), Instant::now())?;
        Ok(Some(key))
    }
}

/// Nonces seen in the last [`REPLAY_WINDOW`], forgotten in arrival order
/// (amortised O(1) per message).
#[derive(Debug, Default)]
struct SeenNonces {
    at: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl SeenNonces {
    fn check_and_remember(&mut self, key: String, now: Instant) -> Result<(), ApiError> {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < REPLAY_WINDOW {
                break;
            }
            if let Some((at, old)) = self.order.pop_front()
                && self.at.get(&old) == Some(&at)
            {
                self.at.remove(&old);
            }
        }
        if self.at.contains_key(&key) {
            return Err(ApiError::Forbidden(
                "Duplicate message detected (replay attack)".into(),
            ));
        }
        self.at.insert(key.clone(), now);
        self.order.push_back((now, key));
        Ok(())
    }
}

/// Whether a message may be delivered twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Register, result, event: a second copy is rejected.
    Rejected,
    /// Heartbeat: idempotent, and the avtomatika SDK sends byte-identical
    /// heartbeats within one second; a copy only refreshes liveness.
    Allowed,
}

/// The session id in the dashboard's session cookie, if the request
/// carries one (see [`super::session`]).
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == SESSION_COOKIE && !value.is_empty()).then_some(value)
        })
}

/// The client token header (`X-Client-Token`, else the legacy one); a
/// value that is not text reads as an empty (wrong) token.
pub fn client_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(HEADER_CLIENT_TOKEN)
        .or_else(|| headers.get(HEADER_CLIENT_TOKEN_LEGACY))
        .map(|v| v.to_str().unwrap_or_default())
}

/// Whether the request names its client by a token header (not only by the
/// session cookie).
pub fn has_token_header(headers: &HeaderMap) -> bool {
    client_token(headers).is_some()
}

/// A worker token that was given and is wrong: 403, as avtomatika answers.
fn wrong_worker_token(message: &str) -> ApiError {
    ApiError::WrongToken(StatusCode::FORBIDDEN, message.into())
}

/// The `X-Worker-Token` header.
fn worker_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(rxon::HEADER_WORKER_TOKEN)
        .and_then(|t| t.to_str().ok())
        .ok_or_else(|| ApiError::Forbidden("Unauthorized: Missing X-Worker-Token header".into()))
}

pub type Digest = [u8; 32];

/// SHA-256 of a secret.
pub fn digest(s: &str) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(s.as_bytes()).into()
}

/// Constant-time comparison of two digests.
fn digest_eq(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Constant-time comparison of two secrets (of any lengths).
fn constant_eq(a: &str, b: &str) -> bool {
    digest_eq(&digest(a), &digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timestamp is accepted ±60 s, so a message may come back up to
    /// 120 s after it was first seen: it is still refused then.
    #[test]
    fn a_nonce_is_remembered_as_long_as_its_timestamp_can_pass() {
        let mut seen = SeenNonces::default();
        let first = Instant::now();
        seen.check_and_remember("k".into(), first).unwrap();
        let later = first + Duration::from_secs(2 * rxon::MAX_CLOCK_SKEW_SECS as u64);
        assert!(seen.check_and_remember("k".into(), later).is_err());
        let much_later = first + REPLAY_WINDOW + Duration::from_secs(1);
        assert!(seen.check_and_remember("k".into(), much_later).is_ok());
    }
}
