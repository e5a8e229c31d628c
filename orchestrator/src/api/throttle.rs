//! Wrong tokens per peer address: past `auth_failures_per_minute` wrong
//! credentials from one address within a minute, that address is answered
//! `429` (with `Retry-After`) until its minute ends, whatever it sends.
//!
//! - Only a credential that was presented and is wrong counts (an unknown
//!   client or worker token, a dashboard sign-in with an unknown token, a
//!   stale session cookie), never a missing one: the dashboard's first
//!   look at `/ui/session` without a cookie is normal.
//! - Clients and workers are counted apart (paths under `/_worker/` are the
//!   workers'): a script retrying a wrong client token does not lock out a
//!   worker on the same host, and the other way round.
//! - At most [`MAX_PEERS`] addresses are remembered; when full, windows that
//!   ended are forgotten first, then the oldest.
//! - Behind a reverse proxy every peer has the proxy's address: list the
//!   proxy in `trusted_proxies` and a request from it is counted for the
//!   last address of its `X-Forwarded-For` that is not a trusted proxy
//!   ([`TrustedProxies::client`]); the header of any other peer is ignored.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use ipnet::IpNet;

use super::error::ApiError;

/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses remembered at once.
pub const MAX_PEERS: usize = 10_000;
/// Default `auth_failures_per_minute`.
pub const DEFAULT_LIMIT: u32 = 30;
/// Most `X-Forwarded-For` entries read, from the right.
pub const MAX_FORWARDED_HOPS: usize = 16;

/// Proxies whose `X-Forwarded-For` is believed (`trusted_proxies`:
/// addresses or networks).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| {
                crate::egress::ip_or_net(e).ok_or_else(|| {
                    format!(
                        "trusted_proxies: {e:?} is not an address or a network (e.g. \"10.0.0.0/8\")"
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The address a request is counted for: its peer's, or, when the peer
    /// is a trusted proxy, the last address of `X-Forwarded-For` (of the
    /// last [`MAX_FORWARDED_HOPS`], read from the right without copying)
    /// that is not a trusted proxy; the peer's when there is none or a hop
    /// before it is not an address.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.to_str().unwrap_or("?").rsplit(','))
            .take(MAX_FORWARDED_HOPS);
        for hop in hops {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => continue,
                Ok(ip) => return ip,
                Err(_) => return peer,
            }
        }
        peer
    }
}

/// Set on a response that refused a wrong credential (see
/// [`ApiError::WrongToken`]); the front middleware counts it.
#[derive(Debug, Clone, Copy)]
pub struct WrongToken;

/// Who a request speaks for, from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Realm {
    Client,
    Worker,
}

impl Realm {
    pub fn of(path: &str) -> Self {
        if path.starts_with("/_worker/") {
            Self::Worker
        } else {
            Self::Client
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Worker => "worker",
        }
    }
}

struct Window {
    started: Instant,
    failures: u32,
}

/// The counters; one per server.
pub struct AuthFailures {
    /// Wrong credentials allowed per address and realm per [`WINDOW`]; 0:
    /// no limit.
    limit: u32,
    pub proxies: TrustedProxies,
    peers: Mutex<HashMap<(IpAddr, Realm), Window>>,
    /// Entries at or over the limit: while 0, no request takes the lock.
    blocked: AtomicUsize,
}

impl AuthFailures {
    pub fn new(limit: u32, proxies: TrustedProxies) -> Self {
        Self {
            limit,
            proxies,
            peers: Mutex::default(),
            blocked: AtomicUsize::new(0),
        }
    }

    /// The refusal of a request from `ip`, with the seconds until its window
    /// ends, when the address is over the limit.
    pub fn refused(&self, ip: IpAddr, realm: Realm) -> Option<(ApiError, u64)> {
        if self.limit == 0 || self.blocked.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let window = peers.get(&(ip, realm))?;
        let age = window.started.elapsed();
        if age >= WINDOW {
            self.forget(&mut peers, (ip, realm));
            return None;
        }
        if window.failures < self.limit {
            return None;
        }
        let retry = (WINDOW - age).as_secs().max(1);
        let error = ApiError::TooMany(format!(
            "Too many wrong {} credentials from {ip}: {} in the last {} s (auth_failures_per_minute = {}); retry in {retry} s",
            realm.name(),
            window.failures,
            age.as_secs(),
            self.limit,
        ));
        Some((error, retry))
    }

    /// Counts a wrong credential from `ip`.
    pub fn record(&self, ip: IpAddr, realm: Realm) {
        if self.limit == 0 {
            return;
        }
        let now = Instant::now();
        let key = (ip, realm);
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if !peers.contains_key(&key) && peers.len() >= MAX_PEERS {
            self.make_room(&mut peers, now);
        }
        let window = peers.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(window.started) >= WINDOW {
            if window.failures >= self.limit {
                self.blocked.fetch_sub(1, Ordering::Relaxed);
            }
            *window = Window {
                started: now,
                failures: 0,
            };
        }
        window.failures = window.failures.saturating_add(1);
        if window.failures == self.limit {
            self.blocked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "{ip} sent {} wrong {} credentials within {} s: its {} requests are refused (429) until {} s after the first (auth_failures_per_minute)",
                window.failures,
                realm.name(),
                now.duration_since(window.started).as_secs(),
                realm.name(),
                WINDOW.as_secs(),
            );
        }
    }

    fn forget(&self, peers: &mut HashMap<(IpAddr, Realm), Window>, key: (IpAddr, Realm)) {
        if let Some(w) = peers.remove(&key)
            && w.failures >= self.limit
        {
            self.blocked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets ended windows, then (if still full) the oldest one.
    fn make_room(&self, peers: &mut HashMap<(IpAddr, Realm), Window>, now: Instant) {
        let ended: Vec<_> = peers
            .iter()
            .filter(|(_, w)| now.duration_since(w.started) >= WINDOW)
            .map(|(k, _)| *k)
            .collect();
        for key in ended {
            self.forget(peers, key);
        }
        if peers.len() >= MAX_PEERS
            && let Some(oldest) = peers.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| *k)
        {
            self.forget(peers, oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn an_address_is_refused_from_its_limit_on_in_its_realm_only() {
        let f = AuthFailures::new(3, TrustedProxies::default());
        for _ in 0..2 {
            f.record(A, Realm::Client);
        }
        assert!(f.refused(A, Realm::Client).is_none());
        f.record(A, Realm::Client);
        let (error, retry) = f.refused(A, Realm::Client).expect("refused at the limit");
        assert!(matches!(error, ApiError::TooMany(_)));
        let text = error.to_string();
        assert!(text.contains("auth_failures_per_minute = 3"), "{text}");
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(f.refused(A, Realm::Worker).is_none());
        assert!(f.refused(B, Realm::Client).is_none());
    }

    #[test]
    fn forwarded_addresses_are_read_only_from_trusted_proxies() {
        let proxies = TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "203.0.113.9, 192.0.2.2".parse().unwrap());
        headers.append("x-forwarded-for", "10.1.2.3".parse().unwrap());
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        // The last hop that is not a trusted proxy, not the first (which the
        // client wrote itself).
        assert_eq!(proxies.client(proxy, &headers), B);
        // Any other peer: its own address, whatever it claims.
        assert_eq!(proxies.client(A, &headers), A);
        // A hop that is not an address: the proxy's own.
        headers.append("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(proxies.client(proxy, &headers), proxy);
        // No header: the proxy's own.
        assert_eq!(proxies.client(proxy, &HeaderMap::new()), proxy);
        // A value that is not text where the proxy wrote: the proxy's own,
        // not an earlier (client-written) hop.
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", "192.0.2.2".parse().unwrap());
        headers.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff, 10.1.2.3").unwrap(),
        );
        assert_eq!(proxies.client(proxy, &headers), proxy);
        let error = TrustedProxies::parse(&["10.0.0.0/33".into()]).unwrap_err();
        assert!(
            error.contains("trusted_proxies") && error.contains("10.0.0.0/33"),
            "{error}"
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let f = AuthFailures::new(0, TrustedProxies::default());
        for _ in 0..100 {
            f.record(A, Realm::Client);
        }
        assert!(f.refused(A, Realm::Client).is_none());
    }

    #[test]
    fn the_table_stays_bounded_and_keeps_counting_blocked_addresses() {
        let f = AuthFailures::new(1, TrustedProxies::default());
        f.record(A, Realm::Worker);
        for i in 0..(MAX_PEERS as u32 + 5) {
            f.record(
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                Realm::Client,
            );
        }
        let peers = f.peers.lock().unwrap();
        assert!(peers.len() <= MAX_PEERS, "{}", peers.len());
        // Every remembered entry is at its limit of 1, and the count of
        // blocked entries follows the evictions.
        assert_eq!(f.blocked.load(Ordering::Relaxed), peers.len());
    }
}
