//! Outbound HTTP for plugins (`wasi:http/outgoing-handler`), allowed only
//! where the plugin's manifest grants it (capped by the operator's policy).
//!
//! Every request is checked in our own send path: its origin against the
//! grant's allowlist, then the addresses its host resolves to against the
//! address policy (public only, unless the grant names that exact address),
//! then connected to the checked address, for HTTP and HTTPS alike (TLS is
//! done with the request's host name over that connection, never after a
//! second lookup: [`super::pinned`]). Redirects are not
//! followed; each request is bounded by the grant's timeout and the task's
//! deadline, bodies by the grant's caps, and connections per task by the
//! grant's count. A denial reaches the guest as the matching `wasi:http`
//! error code and is logged with the task id, the plugin and the target.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// One allowed origin: `scheme://host[:port]`, where host may be
/// `*.example.com` (any subdomain) and port `*` (any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl Origin {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!("origin {text:?}: expected scheme://host[:port], e.g. https://api.example.com")
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
        if scheme != "http" && scheme != "https" {
            return Err(format!("origin {text:?}: the scheme must be http or https"));
        }
        if rest.contains('/') || rest.is_empty() {
            return Err(bad());
        }
        // `[v6]` or `[v6]:port`, else `host` or `host:port`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').ok_or_else(bad)?;
                if !after.is_empty() && !after.starts_with(':') {
                    return Err(bad());
                }
                (host, after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let port = match port {
            Some("*") => None,
            Some(p) => Some(p.parse::<u16>().map_err(|_| bad())?),
            None => Some(if scheme == "https" { 443 } else { 80 }),
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            scheme: scheme.into(),
            host,
            port,
        })
    }

    fn host_matches(&self, host: &str) -> bool {
        match self.host.strip_prefix("*.") {
            Some(suffix) => host.ends_with(&format!(".{suffix}")),
            None => self.host == host,
        }
    }

    /// Whether a request to `scheme://host:port` is within this origin.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.port.is_none_or(|p| p == port) && self.host_matches(host)
    }

    /// Whether every request this origin allows is allowed by `wider`.
    pub fn within(&self, wider: &Origin) -> bool {
        let host = match self.host.strip_prefix("*.") {
            Some(suffix) => wider
                .host
                .strip_prefix("*.")
                .is_some_and(|w| suffix == w || suffix.ends_with(&format!(".{w}"))),
            None => wider.host_matches(&self.host),
        };
        self.scheme == wider.scheme && host && (wider.port.is_none() || wider.port == self.port)
    }

    /// The exact address this origin names, when its host is an address.
    fn literal_ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// What one plugin may send.
#[derive(Debug, Clone)]
pub struct HttpGrant {
    pub origins: Vec<Origin>,
    pub max_request_bytes: u64,
    pub max_response_bytes: u64,
    pub timeout: Duration,
    pub max_connections: usize,
}

/// The `wasi:http` hooks of one task: the plugin's grant (none: every
/// request is denied) and the task's bounds.
pub struct OutboundHttp {
    pub grant: Option<Arc<HttpGrant>>,
    pub task_id: String,
    pub plugin: String,
    pub deadline: Instant,
    pub connections: Arc<Semaphore>,
}

impl OutboundHttp {
    fn deny(&self, target: &str, why: &str, error: Error) -> Error {
        tracing::warn!(
            task_id = %self.task_id,
            plugin = %self.plugin,
            "outbound HTTP to {} denied: {why}",
            rxon::text::clip(target, 200)
        );
        error
    }
}

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                )>,
            > + Send,
    > {
        let _ = (fut, options);
        let target = request.uri().to_string();
        let scheme = request.uri().scheme_str().unwrap_or("https").to_string();
        let host = request
            .uri()
            .host()
            .unwrap_or("")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = request
            .uri()
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let checked: Result<(Arc<HttpGrant>, Origin), Error> = match &self.grant {
            None => Err(self.deny(
                &target,
                "the plugin has no outbound HTTP grant",
                Error::HttpRequestDenied,
            )),
            Some(grant) => match grant
                .origins
                .iter()
                .find(|o| o.allows(&scheme, &host, port))
            {
                Some(origin) => Ok((grant.clone(), origin.clone())),
                None => Err(self.deny(
                    &target,
                    "the origin is not in the plugin's allowed_origins",
                    Error::HttpRequestDenied,
                )),
            },
        };
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        let permit = self.connections.clone().try_acquire_owned();
        let (task_id, plugin) = (self.task_id.clone(), self.plugin.clone());
        Box::new(async move {
            let (grant, origin) = checked?;
            let Ok(permit) = permit else {
                tracing::warn!(%task_id, %plugin, "outbound HTTP to {target} denied: more than {} connections at once", grant.max_connections);
                return Err(Error::ConnectionLimitReached);
            };
            let limit = grant.timeout.min(remaining);
            if let Some(len) = content_length(&request)
                && len > grant.max_request_bytes
            {
                return Err(Error::HttpRequestBodySize(Some(len)));
            }
            // Resolve, and keep only the addresses the policy allows.
            let addrs: Vec<SocketAddr> =
                match tokio::time::timeout(limit, tokio::net::lookup_host((host.as_str(), port)))
                    .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(_)) => return Err(Error::DestinationNotFound),
                    Err(_) => return Err(Error::DnsTimeout),
                };
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| addr_policy::is_public(a.ip()) || origin.literal_ip() == Some(a.ip()))
                .collect();
            let Some(addr) = allowed.first().copied() else {
                let found: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                tracing::warn!(
                    %task_id, %plugin,
                    "outbound HTTP to {target} denied: {host} resolves to {} (loopback, private, link-local or metadata), which the grant does not name",
                    found.join(", ")
                );
                return Err(Error::DestinationIpProhibited);
            };
            // Connect to the address we checked; the Host header and TLS
            // keep the name.
            let max_request = grant.max_request_bytes;
            let request = request.map(|b| Capped::new(b, max_request, true).boxed_unsync());
            let timeouts = super::pinned::Timeouts {
                connect: limit,
                first_byte: limit,
                between_bytes: limit,
            };
            let tls_name = (scheme == "https").then_some(host.as_str());
            let sent = tokio::time::timeout(
                limit,
                super::pinned::send(request, addr, tls_name, timeouts),
            )
            .await;
            let (response, io) = match sent {
                Ok(r) => r?,
                Err(_) => return Err(Error::ConnectionTimeout),
            };
            let max_response = grant.max_response_bytes;
            let response = response.map(|b| Capped::new(b, max_response, false).boxed_unsync());
            let io = async move {
                let r = io.await;
                drop(permit);
                r
            };
            Ok((
                response,
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

fn content_length<B>(request: &http::Request<B>) -> Option<u64> {
    request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A body that fails once more than `max` bytes went through.
struct Capped<B> {
    inner: B,
    seen: u64,
    max: u64,
    request: bool,
}

impl<B> Capped<B> {
    fn new(inner: B, max: u64, request: bool) -> Self {
        Self {
            inner,
            seen: 0,
            max,
            request,
        }
    }
}

impl<B> Body for Capped<B>
where
    B: Body<Data = Bytes, Error = Error> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            self.seen += data.len() as u64;
            if self.seen > self.max {
                let n = Some(self.seen);
                return Poll::Ready(Some(Err(if self.request {
                    Error::HttpRequestBodySize(n)
                } else {
                    Error::HttpResponseBodySize(n)
                })));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_match() {
        let o = Origin::parse("https://*.example.com").unwrap();
        assert!(o.allows("https", "api.example.com", 443));
        assert!(!o.allows("https", "example.com", 443));
        assert!(!o.allows("http", "api.example.com", 443));
        let l = Origin::parse("http://127.0.0.1:8081").unwrap();
        assert!(l.allows("http", "127.0.0.1", 8081));
        assert!(!l.allows("http", "127.0.0.1", 8082));
        assert!(Origin::parse("ftp://x").is_err());
        assert!(Origin::parse("https://x/path").is_err());
        assert_eq!(Origin::parse("http://[::1]").unwrap().port, Some(80));
        assert_eq!(Origin::parse("http://[::1]:8080").unwrap().host, "::1");
        let any_port = Origin::parse("http://127.0.0.1:*").unwrap();
        assert!(l.within(&any_port));
        assert!(!any_port.within(&l));
        assert!(o.within(&Origin::parse("https://*.example.com").unwrap()));
        assert!(!o.within(&Origin::parse("https://api.example.com").unwrap()));
    }
}
