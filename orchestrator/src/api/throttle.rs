//! Wrong tokens per peer address: past `auth_failures_per_minute` wrong
//! credentials from one address within a minute, every further wrong
//! credential from that address is answered `429` (with `Retry-After`)
//! until its minute ends. A right credential always passes: anything that
//! shares an address with a guesser (a NAT, a proxy, a process on the same
//! host) is never locked out.
//!
//! - Only a credential that was presented and is wrong counts (an unknown
//!   client or worker token, a dashboard sign-in with an unknown token, a
//!   stale session cookie), never a missing one: the dashboard's first
//!   look at `/ui/session` without a cookie is normal.
//! - Clients and workers are counted apart (paths under `/_worker/` are the
//!   workers'): a script retrying a wrong client token does not lock out a
//!   worker on the same host, and the other way round.
//! - At most [`MAX_PEERS`] addresses are remembered; when full, the one
//!   remembered longest is forgotten (its window has most likely ended), in
//!   constant time: no scan of the table under its lock.
//! - Behind a reverse proxy every peer has the proxy's address: list the
//!   proxy in `trusted_proxies` and a request from it is counted for the
//!   last address of its `X-Forwarded-For` that is not a trusted proxy
//!   ([`TrustedProxies::client`]); the header of any other peer is ignored.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
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

type Key = (IpAddr, Realm);

struct Window {
    started: Instant,
    failures: u32,
    /// Which entry of [`Table::order`] is this one's.
    generation: u64,
}

/// The remembered addresses, and the order they were first remembered in
/// (entries of forgotten addresses are skipped when reached).
#[derive(Default)]
struct Table {
    windows: HashMap<Key, Window>,
    order: VecDeque<(Key, u64)>,
    next_generation: u64,
}

impl Table {
    /// Forgets the address remembered longest.
    fn evict_oldest(&mut self) {
        while let Some((key, generation)) = self.order.pop_front() {
            if self
                .windows
                .get(&key)
                .is_some_and(|w| w.generation == generation)
            {
                self.windows.remove(&key);
                return;
            }
        }
    }

    fn insert(&mut self, key: Key, now: Instant) {
        while self.windows.len() >= MAX_PEERS {
            self.evict_oldest();
        }
        // Entries of forgotten addresses are dropped when they pile up.
        if self.order.len() >= 2 * MAX_PEERS {
            let windows = &self.windows;
            self.order
                .retain(|(k, g)| windows.get(k).is_some_and(|w| w.generation == *g));
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        self.order.push_back((key, generation));
        self.windows.insert(
            key,
            Window {
                started: now,
                failures: 0,
                generation,
            },
        );
    }
}

/// The counters; one per server.
pub struct AuthFailures {
    /// Wrong credentials allowed per address and realm per [`WINDOW`]; 0:
    /// no limit.
    limit: u32,
    pub proxies: TrustedProxies,
    table: Mutex<Table>,
}

impl AuthFailures {
    pub fn new(limit: u32, proxies: TrustedProxies) -> Self {
        Self {
            limit,
            proxies,
            table: Mutex::default(),
        }
    }

    /// Counts a wrong credential from `ip`; past the limit, the refusal
    /// that replaces its answer, with the seconds until its window ends.
    pub fn record(&self, ip: IpAddr, realm: Realm) -> Option<(ApiError, u64)> {
        if self.limit == 0 {
            return None;
        }
        let now = Instant::now();
        let key = (ip, realm);
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if !table.windows.contains_key(&key) {
            table.insert(key, now);
        }
        let window = table.windows.get_mut(&key)?;
        let mut age = now.duration_since(window.started);
        if age >= WINDOW {
            window.started = now;
            window.failures = 0;
            age = Duration::ZERO;
        }
        window.failures = window.failures.saturating_add(1);
        if window.failures == self.limit {
            tracing::warn!(
                "{ip} sent {} wrong {} credentials within {} s: its further wrong {} credentials are refused (429) until {} s after the first (auth_failures_per_minute)",
                window.failures,
                realm.name(),
                age.as_secs(),
                realm.name(),
                WINDOW.as_secs(),
            );
        }
        if window.failures <= self.limit {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn wrong_credentials_past_the_limit_are_refused_in_their_realm_only() {
        let f = AuthFailures::new(3, TrustedProxies::default());
        for _ in 0..3 {
            assert!(f.record(A, Realm::Client).is_none());
        }
        let (error, retry) = f.record(A, Realm::Client).expect("refused past the limit");
        assert!(matches!(error, ApiError::TooMany(_)));
        let text = error.to_string();
        assert!(text.contains("auth_failures_per_minute = 3"), "{text}");
        assert!((1..=60).contains(&retry), "{retry}");
        assert!(f.record(A, Realm::Worker).is_none());
        assert!(f.record(B, Realm::Client).is_none());
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
            assert!(f.record(A, Realm::Client).is_none());
        }
    }

    #[test]
    fn the_table_stays_bounded_forgetting_the_oldest_first() {
        let f = AuthFailures::new(1, TrustedProxies::default());
        f.record(A, Realm::Worker);
        for i in 0..(3 * MAX_PEERS as u32) {
            f.record(
                IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
                Realm::Client,
            );
        }
        let table = f.table.lock().unwrap();
        assert_eq!(table.windows.len(), MAX_PEERS);
        assert!(table.order.len() <= 2 * MAX_PEERS, "{}", table.order.len());
        // The first remembered went first; the newest stay.
        assert!(!table.windows.contains_key(&(A, Realm::Worker)));
        let newest = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + 3 * MAX_PEERS as u32 - 1,
        ));
        assert!(table.windows.contains_key(&(newest, Realm::Client)));
    }
}
