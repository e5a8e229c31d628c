//! Where the orchestrator may connect on a client's behalf (webhooks).
//!
//! Public addresses are allowed ([`addr_policy::is_public`]); the others are
//! refused unless the operator allows them by address, network or host name
//! (`webhook_allowed_hosts`). The check is made on the addresses a name
//! resolves to, by the resolver the HTTP client connects with, so a name
//! cannot resolve to one address when checked and another when used.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Longest webhook URL.
pub const MAX_URL_LEN: usize = 2048;

/// An address (`127.0.0.1`, as a one-address network) or a network
/// (`10.0.0.0/8`) from a config entry.
pub(crate) fn ip_or_net(entry: &str) -> Option<IpNet> {
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

/// What the operator allows besides public addresses.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    nets: Vec<IpNet>,
    hosts: Vec<String>,
}

impl EgressPolicy {
    /// From `webhook_allowed_hosts`: addresses (`127.0.0.1`), networks
    /// (`10.0.0.0/8`) or host names (`hooks.internal`).
    pub fn new(allowed: &[String]) -> Self {
        let mut policy = Self::default();
        for entry in allowed {
            let entry = entry.trim();
            if let Some(net) = ip_or_net(entry) {
                policy.nets.push(net);
            } else {
                policy.hosts.push(entry.to_ascii_lowercase());
            }
        }
        policy
    }

    /// Whether connecting to `ip` (reached as `host`) is allowed.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        is_public(ip)
            || self.nets.iter().any(|n| n.contains(&ip))
            || self
                .hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }
}

pub use addr_policy::is_public;

/// Checks a webhook URL when a job is created: http(s), a host, no control
/// characters, at most [`MAX_URL_LEN`] bytes, and, for an address literal,
/// an address the policy allows. Names are checked when resolved.
pub fn check_webhook_url(raw: &str, policy: &EgressPolicy) -> Result<reqwest::Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("'webhook_url' is longer than {MAX_URL_LEN} bytes"));
    }
    if raw.chars().any(char::is_control) || raw.contains(' ') {
        return Err("'webhook_url' must not contain spaces or control characters".into());
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("'webhook_url' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("'webhook_url' must be an http(s) URL".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("'webhook_url' has no host")?;
    if let Some(ip) = literal_ip(&url)
        && !policy.allows(host, ip)
    {
        let why = addr_policy::why_not_public(ip).unwrap_or_default();
        return Err(format!(
            "'webhook_url' points at {ip}, which is not a public address ({why}); \
             the operator may allow it with webhook_allowed_hosts"
        ));
    }
    Ok(url)
}

/// The address of a URL whose host is an address literal.
fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// A DNS resolver that keeps only the addresses the policy allows.
pub struct PolicyResolver(pub Arc<EgressPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.allows(&host, a.ip()))
                .collect();
            if allowed.is_empty() {
                let found: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "egress refused: {host} resolves to {} only, none of them public (loopback, private, link-local, metadata or another special-purpose range); \
                     the operator may allow it with webhook_allowed_hosts",
                    found.join(", ")
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_refused_unless_allowed() {
        // The address classes themselves are tested in `addr-policy`.
        let none = EgressPolicy::default();
        assert!(!none.allows("h", "169.254.169.254".parse().unwrap()));
        assert!(none.allows("h", "93.184.216.34".parse().unwrap()));
        let some = EgressPolicy::new(&[
            "127.0.0.1".into(),
            "10.0.0.0/8".into(),
            "hooks.internal".into(),
        ]);
        assert!(some.allows("x", "127.0.0.1".parse().unwrap()));
        assert!(some.allows("x", "10.9.9.9".parse().unwrap()));
        assert!(some.allows("hooks.internal", "192.168.0.5".parse().unwrap()));
        assert!(!some.allows("x", "192.168.0.5".parse().unwrap()));
    }

    #[test]
    fn webhook_urls_are_checked_at_creation() {
        let p = EgressPolicy::default();
        for bad in [
            "ftp://example.com/x",
            "http://",
            "http://example.com/a\r\nInjected: 1",
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[::7f00:1]:8080/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
            "not a url",
        ] {
            assert!(check_webhook_url(bad, &p).is_err(), "{bad:?}");
        }
        assert!(check_webhook_url("https://example.com/hook", &p).is_ok());
        let allow = EgressPolicy::new(&["127.0.0.1".into()]);
        assert!(check_webhook_url("http://127.0.0.1:8080/hook", &allow).is_ok());
    }
}
