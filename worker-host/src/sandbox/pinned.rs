//! Sends a plugin's request to the address that was checked, never to one
//! found by resolving its name again: a TCP connection to that address,
//! then, for HTTPS, TLS with the request's host name (SNI and certificate
//! check against the public roots), then HTTP/1.1. What
//! `wasmtime_wasi_http::default_send_request` does, minus its own lookup of
//! the name, which a DNS answer that changed between our check and its
//! connect would have turned into a way around the address policy.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::Error;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// The TLS client: the public roots (webpki-roots), ring, TLS 1.2 and 1.3.
static TLS: LazyLock<Option<tokio_rustls::TlsConnector>> = LazyLock::new(|| {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
});

/// Bounds of one request (the grant's timeout, capped by the task's deadline).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub between_bytes: Duration,
}

/// The response, and the future that drives the connection until the
/// response body is read.
pub type Sent = (
    Response<ResponseBody>,
    Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>,
);

/// Sends `request` to `addr`; with `tls_name`, over TLS for that name.
pub async fn send<B>(
    mut request: Request<B>,
    addr: SocketAddr,
    tls_name: Option<&str>,
    timeouts: Timeouts,
) -> Result<Sent, Error>
where
    B: Body<Data = Bytes, Error = Error> + Send + 'static,
{
    let tcp = match tokio::time::timeout(timeouts.connect, TcpStream::connect(addr)).await {
        Ok(stream) => stream.map_err(Error::Connect)?,
        Err(_) => return Err(Error::ConnectionTimeout),
    };
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match tls_name {
        None => Box::new(tcp),
        Some(name) => {
            let connector = TLS.as_ref().ok_or(Error::TlsCertificateError)?;
            let name = rustls::pki_types::ServerName::try_from(name.to_string())
                .map_err(|_| Error::TlsCertificateError)?;
            let tls = tokio::time::timeout(timeouts.connect, connector.connect(name, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            Box::new(tls)
        }
    };
    let (mut sender, conn) = tokio::time::timeout(
        timeouts.connect,
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::from)?;
    // The request line carries the path only (the Host header has the name).
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    let mut conn = Box::pin(conn);
    let send = sender.send_request(request);
    tokio::pin!(send);
    // Drive the connection while waiting for the response head.
    let waited = tokio::time::timeout(timeouts.first_byte, async {
        let mut conn_done = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = send.as_mut().poll(cx) {
                return Poll::Ready(answer.map_err(Error::from));
            }
            if !conn_done && let Poll::Ready(ended) = conn.as_mut().poll(cx) {
                conn_done = true;
                if let Err(e) = ended {
                    return Poll::Ready(Err(Error::from(e)));
                }
            }
            Poll::Pending
        })
        .await
    })
    .await;
    let response = match waited {
        Ok(answer) => answer?,
        Err(_) => return Err(Error::ConnectionReadTimeout),
    };
    let between = timeouts.between_bytes.max(Duration::from_nanos(1));
    let response = response.map(|incoming| ResponseBody {
        incoming,
        between,
        timer: Box::pin(tokio::time::sleep(between)),
    });
    let io = async move {
        conn.await.map_err(|e| {
            if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }
        })
    };
    Ok((response, Box::pin(io)))
}

/// A response body whose bytes must keep coming: no more than the
/// between-bytes timeout between two frames.
pub struct ResponseBody {
    incoming: hyper::body::Incoming,
    between: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.between;
                self.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;

    /// An HTTPS request for a name that does not resolve, sent to a checked
    /// address: the connection goes to that address, and the TLS hello names
    /// the host (no second lookup of the name).
    #[tokio::test]
    async fn https_connects_to_the_checked_address_and_names_the_host_in_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hello = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        });
        let request = Request::get("https://pinned.invalid/x")
            .header("host", "pinned.invalid")
            .body(http_body_util::Empty::<Bytes>::new().map_err(|_| Error::InternalError(None)))
            .unwrap();
        let timeouts = Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_secs(2),
            between_bytes: Duration::from_secs(2),
        };
        // The listener speaks no TLS: the send fails, after the hello.
        let sent = send(request, addr, Some("pinned.invalid"), timeouts).await;
        assert!(sent.is_err());
        let hello = hello.await.unwrap();
        assert_eq!(hello.first(), Some(&0x16), "a TLS handshake record");
        assert!(
            hello.windows(14).any(|w| w == b"pinned.invalid"),
            "the hello names the host"
        );
    }
}
