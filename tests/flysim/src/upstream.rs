//! How requests reach the Machines: the [`Upstream`] transport and its two
//! implementations, HTTP/1.1 ([`Http1`], what Fly speaks to Machines by
//! default) and h2c with prior knowledge ([`H2c`], fly.toml's
//! `http_options.h2_backend = true`).
//!
//! The proxy only ever opens a connection, sends on a pooled connection, or
//! sends on a connection of its own, and gets back a response or an
//! [`UpstreamError`] saying whether the Machine could have seen the request.
//! Network faults (reset, delay, blackhole) are a wrapper that delegates to
//! an inner transport.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::uri::Authority;
use http::{Request, Response, Uri, Version, header};
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// The Machine did not answer the HTTP/2 connection preface with HTTP/2
    /// (it does not speak h2c): what it answered instead.
    NotH2c(String),
}

impl UpstreamError {
    /// The error's description, its causes joined with `: `.
    pub(crate) fn text(&self) -> &str {
        match self {
            UpstreamError::Connect(s)
            | UpstreamError::NoAnswer(s)
            | UpstreamError::Failed(s)
            | UpstreamError::NotH2c(s) => s,
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
        Box::pin(connect(addr))
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

async fn connect(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| UpstreamError::Connect(error_chain(&e)))
}

/// h2c (HTTP/2 over cleartext TCP, prior knowledge) to the Machines, as
/// Fly's proxy speaks with `h2_backend = true`: one multiplexed connection
/// per Machine, made again when it closes. WebSocket upgrades go over
/// HTTP/1.1 on a connection of their own (named assumption: Fly keeps
/// HTTP/1.1 for upgrades).
pub(crate) struct H2c {
    conns: Mutex<HashMap<SocketAddr, H2Conn>>,
    http1: Http1,
}

/// One h2c connection: its request sender and what the Machine sent first.
#[derive(Clone)]
struct H2Conn {
    sender: SendRequest<ProxyBody>,
    sniff: Sniffed,
}

impl H2c {
    pub(crate) fn new() -> Self {
        H2c {
            conns: Mutex::new(HashMap::new()),
            http1: Http1::new(),
        }
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, H2Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Speaks the HTTP/2 preface on `stream` and drives the connection.
    async fn handshake(stream: TcpStream) -> Result<H2Conn, UpstreamError> {
        let _ = stream.set_nodelay(true);
        let addr = stream.peer_addr().ok();
        let sniff = Sniffed::default();
        let io = TokioIo::new(Sniff {
            inner: stream,
            seen: sniff.clone(),
        });
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(io)
            .await;
        let (sender, connection) = match handshake {
            Ok(pair) => pair,
            Err(e) => return Err(sniff.diagnose(classify(&e), addr).await),
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(H2Conn { sender, sniff })
    }

    /// The pooled connection to `addr`, made if there is none or it closed.
    async fn pooled(&self, addr: SocketAddr) -> Result<H2Conn, UpstreamError> {
        let live = self
            .conns()
            .get(&addr)
            .filter(|c| !c.sender.is_closed())
            .cloned();
        if let Some(conn) = live {
            return Ok(conn);
        }
        let conn = H2c::handshake(connect(addr).await?).await?;
        self.conns().insert(addr, conn.clone());
        Ok(conn)
    }

    /// Sends `req` on `conn`.
    async fn exchange(
        mut conn: H2Conn,
        addr: Option<SocketAddr>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = h2_uri(&req, addr)?;
        if let Err(e) = conn.sender.ready().await {
            return Err(conn.sniff.diagnose(classify(&e), addr).await);
        }
        match conn.sender.send_request(req).await {
            Ok(resp) => Ok(resp.map(body::incoming)),
            Err(e) => {
                let e = classify(&e);
                Err(conn.sniff.diagnose(e, addr).await)
            }
        }
    }
}

/// The absolute URI of an h2c request: `:scheme` http, `:authority` the
/// client's `Host` (named assumption), or the Machine's address if the
/// request has none that is valid.
fn h2_uri(req: &Request<ProxyBody>, addr: Option<SocketAddr>) -> Result<Uri, UpstreamError> {
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .or_else(|| addr.and_then(|a| Authority::try_from(a.to_string()).ok()))
        .unwrap_or_else(|| Authority::from_static("localhost"));
    let mut uri = Uri::builder().scheme("http").authority(authority);
    if let Some(pq) = req.uri().path_and_query() {
        uri = uri.path_and_query(pq.clone());
    }
    uri.build()
        .map_err(|e| UpstreamError::Failed(format!("cannot address the request: {e}")))
}

impl Upstream for H2c {
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'_, Result<TcpStream, UpstreamError>> {
        Box::pin(connect(addr))
    }

    fn send_pooled(
        &self,
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> BoxFuture<'_, Result<Response<ProxyBody>, UpstreamError>> {
        Box::pin(async move {
            let conn = self.pooled(addr).await?;
            let sender = conn.sender.clone();
            let result = H2c::exchange(conn, Some(addr), req).await;
            if result.is_err() && sender.is_closed() {
                // The next request makes a new connection.
                let mut conns = self.conns();
                if conns.get(&addr).is_some_and(|c| c.sender.is_closed()) {
                    conns.remove(&addr);
                }
            }
            result
        })
    }

    fn send_on(
        &self,
        stream: TcpStream,
        req: Request<ProxyBody>,
    ) -> BoxFuture<'_, Result<Response<ProxyBody>, UpstreamError>> {
        Box::pin(async move {
            if crate::headers::is_upgrade_request(Version::HTTP_11, req.headers()) {
                return self.http1.send_on(stream, req).await;
            }
            let addr = stream.peer_addr().ok();
            let conn = H2c::handshake(stream).await?;
            H2c::exchange(conn, addr, req).await
        })
    }
}

/// The first bytes a Machine sent on an h2c connection (up to
/// [`Sniffed::KEEP`]), to tell an app that does not speak h2c from one that
/// failed mid-exchange.
#[derive(Clone, Default)]
struct Sniffed(Arc<Mutex<Vec<u8>>>);

impl Sniffed {
    /// How many bytes are kept: enough for a frame header and an HTTP/1.x
    /// status line.
    const KEEP: usize = 64;

    fn record(&self, bytes: &[u8]) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = Sniffed::KEEP.saturating_sub(seen.len());
        seen.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Why the Machine is not speaking HTTP/2, if what it sent first shows
    /// it: anything but a SETTINGS frame on stream 0 (RFC 9113, 3.4: the
    /// server's preface). `None` when it sent nothing at all (it may have
    /// been closing: that is an ordinary unanswered exchange).
    fn not_h2(&self) -> Option<String> {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let settings = seen.len() >= 9 && seen[3] == 0x04 && seen[5..9] == [0, 0, 0, 0];
        if seen.is_empty() || settings {
            return None;
        }
        Some(format!(
            "it answered the HTTP/2 connection preface with {}",
            quote(&seen)
        ))
    }

    /// [`UpstreamError::NotH2c`] when the Machine's first bytes were not
    /// HTTP/2, else `e` (the failure as [`classify`] read it).
    /// When it sent nothing before the failure (an HTTP/1.1 server often
    /// answers the preface and closes while the request is still being
    /// written: a broken pipe, the answer never read), the Machine at
    /// `addr` is asked again on a connection of its own ([`probe`]).
    async fn diagnose(&self, e: UpstreamError, addr: Option<SocketAddr>) -> UpstreamError {
        if let Some(why) = self.not_h2() {
            return UpstreamError::NotH2c(why);
        }
        let nothing_read = self.0.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
        if nothing_read
            && let Some(addr) = addr
            && let Some(why) = probe(addr).await
        {
            return UpstreamError::NotH2c(why);
        }
        e
    }
}

/// How long [`probe`] waits for the first bytes of an answer.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// Sends the HTTP/2 client preface and an empty SETTINGS frame on a new
/// connection to `addr` and reads the first bytes of the answer: why the
/// Machine does not speak h2c (it answered something else, or closed the
/// connection without a byte, as hyper's HTTP/1.1-only server does), or
/// `None` when it answers with a SETTINGS frame, cannot be reached, or says
/// nothing within [`PROBE_WAIT`] (not a verdict either way).
async fn probe(addr: SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream.write_all(PREFACE).await.ok()?;
    let mut buf = [0u8; Sniffed::KEEP];
    let mut n = 0;
    let mut closed = false;
    let _ = tokio::time::timeout(PROBE_WAIT, async {
        while n < 9 {
            match stream.read(&mut buf[n..]).await {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Err(e) => {
                    closed = matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                    );
                    break;
                }
                Ok(k) => n += k,
            }
        }
    })
    .await;
    if n == 0 {
        return closed.then(|| {
            "it closed the connection without answering the HTTP/2 connection preface (as an HTTP/1.1-only server does)".to_owned()
        });
    }
    let seen = Sniffed::default();
    seen.record(&buf[..n]);
    seen.not_h2()
}

/// The first line of `bytes`, printable, in quotes.
fn quote(bytes: &[u8]) -> String {
    let line = bytes
        .split(|b| *b == b'\r' || *b == b'\n')
        .next()
        .unwrap_or(&[]);
    let mut out = String::from("\"");
    for &b in line {
        if b.is_ascii_graphic() || b == b' ' {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// A connection that records the first bytes read from it.
struct Sniff {
    inner: TcpStream,
    seen: Sniffed,
}

impl AsyncRead for Sniff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            self.seen.record(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Sniff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
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
            // The Machine refused the stream or went away before it
            // (RFC 9113, 8.7: such a request was not processed).
            || err.downcast_ref::<h2::Error>().is_some_and(|h| {
                h.reason() == Some(h2::Reason::REFUSED_STREAM) || (h.is_go_away() && h.is_remote())
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(bytes: &[u8]) -> Option<String> {
        let s = Sniffed::default();
        s.record(bytes);
        s.not_h2()
    }

    #[test]
    fn only_a_settings_frame_first_is_http2() {
        // A server preface: an empty SETTINGS frame on stream 0.
        assert_eq!(seen(&[0, 0, 0, 4, 0, 0, 0, 0, 0]), None);
        assert_eq!(seen(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]), None);
        assert_eq!(seen(b""), None);
        let why = seen(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(why.ends_with("\"HTTP/1.1 400 Bad Request\""), "{why}");
        // A frame that is not SETTINGS, or not on stream 0.
        assert!(seen(&[0, 0, 0, 1, 4, 0, 0, 0, 1]).is_some());
        assert!(seen(&[0, 0, 0, 4, 0, 0, 0, 0, 1]).is_some());
        // Bytes that are not text are escaped.
        assert!(
            seen(&[0xff, 0x00, b'\n'])
                .unwrap()
                .ends_with("\"\\xff\\x00\"")
        );
    }

    #[test]
    fn the_h2_authority_is_the_host_or_the_machine() {
        let mut req = Request::new(body::empty());
        *req.uri_mut() = Uri::from_static("/rooms/1?x=1");
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(
            h2_uri(&req, Some(addr)).unwrap(),
            "http://127.0.0.1:4000/rooms/1?x=1"
        );
        req.headers_mut()
            .insert(header::HOST, http::HeaderValue::from_static("app.fly.dev"));
        assert_eq!(
            h2_uri(&req, Some(addr)).unwrap(),
            "http://app.fly.dev/rooms/1?x=1"
        );
        req.headers_mut()
            .insert(header::HOST, http::HeaderValue::from_static("bad host"));
        assert_eq!(h2_uri(&req, None).unwrap(), "http://localhost/rooms/1?x=1");
    }
}
