//! How requests reach the Machines: the [`Upstream`] transport and its
//! HTTP/1.1 implementation ([`Http1`], what Fly speaks to Machines by default).
//!
//! The proxy only ever opens a connection, sends on a pooled connection, or
//! sends on a connection of its own, and gets back a response or an
//! [`UpstreamError`] saying whether the Machine could have seen the request.
//! Another protocol (h2c for `h2_backend`) is another implementation; network
//! faults (reset, delay, blackhole) are a wrapper that delegates to an inner
//! transport.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::body::{self, ProxyBody};

/// Why an exchange with a Machine failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamError {
    /// No connection could be made: the Machine never saw the request.
    Connect(String),
    /// The connection was closed or reset before any answer: the Machine may
    /// not have read the request (it was closing an idle connection).
    NoAnswer(String),
    /// Anything else (a malformed answer, a reset mid-response).
    Failed(String),
}

impl UpstreamError {
    /// The error's description, its causes joined with `: `.
    pub(crate) fn text(&self) -> &str {
        match self {
            UpstreamError::Connect(s) | UpstreamError::NoAnswer(s) | UpstreamError::Failed(s) => s,
        }
    }
}

/// A transport to the Machines. Requests carry an origin-form URI (path and
/// query); the transport addresses them to the Machine.
pub(crate) trait Upstream: Send + Sync {
    /// Opens a new connection to the Machine at `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, Result<TcpStream, UpstreamError>>;

    /// Sends `req` on a kept-alive connection to `addr`, reusing an idle one.
    fn send_pooled(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> BoxFuture<'_, Result<Response<ProxyBody>, UpstreamError>>;

    /// Sends `req` on `stream`, a connection of its own, and keeps the
    /// connection going for an upgrade (a WebSocket) if the Machine accepts one.
    fn send_on(
        &self,
        stream: TcpStream,
        req: Request<ProxyBody>,
    ) -> BoxFuture<'_, Result<Response<ProxyBody>, UpstreamError>>;
}

/// HTTP/1.1 to the Machines, with a connection pool.
pub(crate) struct Http1 {
    client: Client<HttpConnector, ProxyBody>,
}

impl Http1 {
    pub(crate) fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Http1 { client }
    }
}

impl Upstream for Http1 {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, Result<TcpStream, UpstreamError>> {
        Box::pin(async move {
            TcpStream::connect(addr)
                .await
                .map_err(|e| UpstreamError::Connect(error_chain(&e)))
        })
    }

    fn send_pooled(
        &self,
        addr: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> BoxFuture<'_, Result<Response<ProxyBody>, UpstreamError>> {
        Box::pin(async move {
            *req.version_mut() = Version::HTTP_11;
            let mut uri = Uri::builder().scheme("http").authority(addr.to_string());
            if let Some(pq) = req.uri().path_and_query() {
                uri = uri.path_and_query(pq.clone());
            }
            *req.uri_mut() = uri
                .build()
                .map_err(|e| UpstreamError::Failed(e.to_string()))?;
            match self.client.request(req).await {
                Ok(resp) => Ok(resp.map(body::incoming)),
                Err(e) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
                Err(e) => Err(classify(&e)),
            }
        })
    }

    fn send_on(
        &self,
        stream: TcpStream,
        mut req: Request<ProxyBody>,
    ) -> BoxFuture<'_, Result<Response<ProxyBody>, UpstreamError>> {
        Box::pin(async move {
            *req.version_mut() = Version::HTTP_11;
            let _ = stream.set_nodelay(true);
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| classify(&e))?;
            tokio::spawn(async move {
                let _ = connection.with_upgrades().await;
            });
            match sender.send_request(req).await {
                Ok(resp) => Ok(resp.map(body::incoming)),
                Err(e) => Err(classify(&e)),
            }
        })
    }
}

/// An error and its causes, joined with `: `.
pub(crate) fn error_chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// [`UpstreamError::NoAnswer`] when the connection was closed or reset under
/// the exchange before an answer (as opposed to a malformed answer).
fn classify(e: &(dyn StdError + 'static)) -> UpstreamError {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cause {
        let closed = err
            .downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message() || h.is_canceled())
            || err.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::UnexpectedEof
                )
            });
        if closed {
            return UpstreamError::NoAnswer(error_chain(e));
        }
        cause = err.source();
    }
    UpstreamError::Failed(error_chain(e))
}
