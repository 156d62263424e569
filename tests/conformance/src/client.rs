//! A deliberately raw HTTP/1.1 client: it sends exactly the bytes a scenario
//! asks for (duplicate headers, odd bytes, spoofed Fly headers), keeps a
//! cookie jar per simulated client, and opens WebSockets.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// How long any one exchange may take before the scenario fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A request to send, header by header, byte for byte.
#[derive(Clone, Debug)]
pub struct Request {
    method: &'static str,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
    close: bool,
}

#[derive(Clone, Debug)]
enum Body {
    None,
    Sized(Vec<u8>),
    Chunked(Vec<Vec<u8>>),
}

impl Request {
    /// A `GET` of `target` (path and query).
    pub fn get(target: impl Into<String>) -> Self {
        Self::new("GET", target)
    }

    /// A request with any method.
    pub fn new(method: &'static str, target: impl Into<String>) -> Self {
        Self {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: Body::None,
            close: true,
        }
    }

    /// Adds a header: any bytes, repeated names allowed.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Adds `Cookie: fly-machine-id=<value>`.
    pub fn cookie(self, value: &str) -> Self {
        self.header(
            "cookie",
            format!("{}={value}", sticky_core::DEFAULT_COOKIE_NAME),
        )
    }

    /// A body sent with `Content-Length`.
    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = Body::Sized(body);
        self
    }

    /// A body sent with `Transfer-Encoding: chunked`.
    pub fn chunked(mut self, chunks: Vec<Vec<u8>>) -> Self {
        self.body = Body::Chunked(chunks);
        self
    }

    /// Leaves out the `connection: close` every request otherwise carries,
    /// for a request followed by another on the same [`Connection`].
    pub fn keep_alive(mut self) -> Self {
        self.close = false;
        self
    }

    /// The bytes this request is sent as.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }

    fn encode(&self) -> Vec<u8> {
        let close = if self.close {
            "connection: close\r\n"
        } else {
            ""
        };
        let mut out = format!(
            "{} {} HTTP/1.1\r\nhost: app.test\r\n{close}",
            self.method, self.target
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        match &self.body {
            Body::None => out.extend_from_slice(b"\r\n"),
            Body::Sized(body) => {
                out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            Body::Chunked(chunks) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
                for chunk in chunks.iter().filter(|c| !c.is_empty()) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        out
    }
}

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// Every value of header `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn one(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `machine=<id>` a contract app answered with.
    pub fn machine(&self) -> Option<String> {
        let text = self.text();
        let rest = text.strip_prefix("machine=")?;
        Some(rest.split(' ').next().unwrap_or_default().to_owned())
    }

    /// The `handled=<n>` of `GET /`.
    pub fn handled(&self) -> Option<u64> {
        self.text()
            .split(' ')
            .find_map(|p| p.strip_prefix("handled=")?.parse().ok())
    }

    /// The value our cookie is set to, if this response sets it.
    pub fn pinned_to(&self) -> Option<String> {
        self.all("set-cookie").into_iter().find_map(|c| {
            let pair = c.split(';').next()?;
            let (name, value) = pair.split_once('=')?;
            (name.trim() == sticky_core::DEFAULT_COOKIE_NAME).then(|| value.trim().to_owned())
        })
    }

    /// A one-line rendering for error messages.
    pub fn summary(&self) -> String {
        let heads: Vec<String> = self
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        let text = self.text();
        let text: String = text.chars().take(120).collect();
        format!("{} [{}] {text:?}", self.status, heads.join(" | "))
    }
}

/// Sends one request on a fresh connection and reads the whole reply.
pub async fn send(addr: SocketAddr, req: &Request) -> Result<Response, String> {
    tokio::time::timeout(IO_TIMEOUT, exchange(addr, req))
        .await
        .map_err(|_| {
            format!(
                "no reply within {IO_TIMEOUT:?} to {} {}",
                req.method, req.target
            )
        })?
}

async fn exchange(addr: SocketAddr, req: &Request) -> Result<Response, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .write_all(&req.encode())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    // A server may close early (e.g. after answering an upgrade request
    // without reading it); what was read is what counts.
    let _ = stream.read_to_end(&mut raw).await;
    parse(&raw, req.method == "HEAD")
}

fn parse(raw: &[u8], head_only: bool) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no complete response head in {} bytes: {:?}",
                raw.len(),
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head_only {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err("truncated chunk".to_owned());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Sends `bytes` exactly as given on a fresh connection (several requests,
/// bodies a request does not declare, any bytes at all), reads until the
/// server closes the connection, and parses every response that came back,
/// in order (a response without `Content-Length` or chunking takes the rest).
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Vec<Response>, String> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let mut responses = Vec::new();
        let mut rest = &raw[..];
        while !rest.is_empty() {
            let (res, used) = take_response(rest, false, true)?
                .ok_or_else(|| format!("a truncated response after {}", responses.len()))?;
            responses.push(res);
            rest = &rest[used..];
        }
        Ok(responses)
    })
    .await
    .map_err(|_| {
        format!(
            "no reply within {IO_TIMEOUT:?} to {} raw bytes",
            bytes.len()
        )
    })?
}

/// One client connection that carries several exchanges (keep-alive), read
/// one response at a time.
#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes `bytes` as they are.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| "write timed out".to_owned())?
            .map_err(|e| format!("write: {e}"))
    }

    /// Sends `req` (see [`Request::keep_alive`]) and reads its response.
    pub async fn send(&mut self, req: &Request) -> Result<Response, String> {
        self.write(&req.encode()).await?;
        self.response(req.method == "HEAD").await
    }

    /// Reads the next response (`head_only`: it answers a HEAD request);
    /// a `101` or other response without a body ends at its head.
    pub async fn response(&mut self, head_only: bool) -> Result<Response, String> {
        tokio::time::timeout(IO_TIMEOUT, async {
            let mut eof = false;
            loop {
                if let Some((res, used)) = take_response(&self.buf, head_only, eof)? {
                    self.buf.drain(..used);
                    return Ok(res);
                }
                if eof {
                    return Err(format!(
                        "the connection closed before a whole response ({} bytes)",
                        self.buf.len()
                    ));
                }
                let mut chunk = [0u8; 16 * 1024];
                let n = self
                    .stream
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                eof = n == 0;
                self.buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .map_err(|_| format!("no response within {IO_TIMEOUT:?}"))?
    }
}

/// The first response in `raw` and how many bytes it took, or `None` when
/// `raw` does not hold all of it yet (`eof`: no more bytes will come, so a
/// body without a length ends here).
fn take_response(
    raw: &[u8],
    head_only: bool,
    eof: bool,
) -> Result<Option<(Response, usize)>, String> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let mut res = parse(&raw[..split + 4], true)?;
    let rest = &raw[split + 4..];
    let bodiless = head_only || matches!(res.status, 100..=199 | 204 | 304);
    if bodiless {
        return Ok(Some((res, split + 4)));
    }
    let chunked = res
        .all("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    let used = if chunked {
        match dechunk_prefix(rest)? {
            Some((body, used)) => {
                res.body = body;
                used
            }
            None => return Ok(None),
        }
    } else if let Some(len) = res.one("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        if rest.len() < len {
            return Ok(None);
        }
        res.body = rest[..len].to_vec();
        len
    } else if eof {
        res.body = rest.to_vec();
        rest.len()
    } else {
        return Ok(None);
    };
    Ok(Some((res, split + 4 + used)))
}

/// A chunked body at the start of `raw` and how many bytes it took
/// (trailers included), or `None` while it is incomplete.
fn dechunk_prefix(raw: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&raw[at..at + line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let Some(end) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

/// Like a proxy with a keep-alive connection to a Machine: sends `POST
/// /upload` with a `Content-Length` body of `len` bytes and `headers`, the
/// head first and then the body in slices with pauses (as a body arrives over
/// a network), reads the answer, then sends `GET /health` on the same
/// connection. Returns both answers; `Err` says where the connection broke.
///
/// A server that answers before reading the body and then closes the
/// connection with the body unread resets it, and a proxy may lose the
/// answer (RFC 9112, section 9.6): the second exchange fails then.
pub async fn upload_then_reuse(
    addr: SocketAddr,
    headers: &[(&str, &str)],
    len: usize,
) -> Result<(Response, Response), String> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut head =
            format!("POST /upload HTTP/1.1\r\nhost: app.test\r\ncontent-length: {len}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("writing the head: {e}"))?;
        let slices = 8;
        for i in 0..slices {
            tokio::time::sleep(Duration::from_millis(15)).await;
            let n = len / slices + if i == slices - 1 { len % slices } else { 0 };
            stream.write_all(&vec![b'b'; n]).await.map_err(|e| {
                format!("the connection broke while the body was being sent (slice {i}): {e}")
            })?;
        }
        let first = read_one(&mut stream)
            .await
            .map_err(|e| format!("reading the answer to the upload: {e}"))?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("the connection broke after the answer to the upload: {e}"))?;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let second = parse(&raw, false).map_err(|e| {
            format!("no answer to a second request on the same connection after the upload's ({e})")
        })?;
        Ok((first, second))
    })
    .await
    .map_err(|_| "the keep-alive exchange timed out".to_owned())?
}

/// Sends `GET <target>` (with `headers`) on a new connection without asking
/// for it to be closed, reads the answer, and tells whether the server then
/// closed the connection at once (within 2 s, shorter than the idle timeout
/// of any framework here) or kept it open.
pub async fn get_keep_alive(
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<(Response, bool), String> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let mut head = format!("GET {target} HTTP/1.1\r\nhost: app.test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let res = read_one(&mut stream).await?;
        let mut buf = [0u8; 64];
        let closed = match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await
        {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => return Err("bytes after the answer".to_owned()),
            Err(_) => false,
        };
        Ok((res, closed))
    })
    .await
    .map_err(|_| format!("GET {target} on a kept-alive connection timed out"))?
}

/// Reads exactly one response (a `Content-Length` body, or none) from a
/// keep-alive connection.
async fn read_one(stream: &mut TcpStream) -> Result<Response, String> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse(&raw[..end + 4], true)?;
            let len: usize = head
                .one("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while raw.len() < end + 4 + len {
                let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("the connection closed in the middle of the body".to_owned());
                }
                raw.extend_from_slice(&buf[..n]);
            }
            return parse(&raw[..end + 4 + len], false);
        }
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before an answer".to_owned());
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

/// One simulated user: a cookie jar for our cookie, as a browser keeps it.
#[derive(Clone, Debug, Default)]
pub struct Client {
    /// The value of our cookie, once pinned.
    pub cookie: Option<String>,
}

impl Client {
    /// Sends `req` with the jar's cookie and stores any new pin.
    pub async fn send(&mut self, addr: SocketAddr, req: Request) -> Result<Response, String> {
        let req = match &self.cookie {
            Some(value) => req.cookie(value),
            None => req,
        };
        let res = send(addr, &req).await?;
        if let Some(pin) = res.pinned_to() {
            self.cookie = Some(pin);
        }
        Ok(res)
    }
}

/// What one WebSocket session through [`Client::websocket`] saw.
#[derive(Clone, Debug)]
pub struct WsSession {
    /// The handshake's response: `101` (headers only) when the upgrade was
    /// accepted, else the refusal as sent.
    pub handshake: Response,
    /// One reply per message sent, in order (empty when refused).
    pub replies: Vec<String>,
}

impl Client {
    /// Opens a WebSocket to `path` with the jar's cookie (as a browser sends
    /// it on a handshake), stores a pin the handshake sets, sends each of
    /// `messages` and reads one text reply to each, then closes. A refused
    /// upgrade is `Ok` with no replies; a broken connection is `Err`.
    pub async fn websocket(
        &mut self,
        addr: SocketAddr,
        path: &str,
        messages: &[String],
    ) -> Result<WsSession, String> {
        let session = tokio::time::timeout(
            IO_TIMEOUT,
            websocket_session(addr, path, self.cookie.as_deref(), messages),
        )
        .await
        .map_err(|_| format!("websocket {path} timed out"))??;
        if let Some(pin) = session.handshake.pinned_to() {
            self.cookie = Some(pin);
        }
        Ok(session)
    }
}

fn ws_response(parts: &tungstenite::http::response::Parts, body: Vec<u8>) -> Response {
    Response {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    }
}

async fn websocket_session(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    messages: &[String],
) -> Result<WsSession, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}{path}"))
            .map_err(|e| format!("ws request: {e}"))?;
    if let Some(cookie) = cookie {
        let value = format!("{}={cookie}", sticky_core::DEFAULT_COOKIE_NAME);
        request.headers_mut().insert(
            "cookie",
            value.parse().map_err(|e| format!("cookie header: {e}"))?,
        );
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((mut ws, res)) => {
            let (parts, ()) = res.map(|_| ()).into_parts();
            let handshake = ws_response(&parts, Vec::new());
            let mut replies = Vec::with_capacity(messages.len());
            for text in messages {
                ws.send(Message::text(text.as_str()))
                    .await
                    .map_err(|e| format!("ws send: {e}"))?;
                let reply = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => break t.as_str().to_owned(),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(format!("ws read: {e}")),
                        None => return Err("ws closed before the echo".to_owned()),
                    }
                };
                replies.push(reply);
            }
            let _ = ws.close(None).await;
            Ok(WsSession { handshake, replies })
        }
        Err(tungstenite::Error::Http(res)) => {
            let (parts, body) = res.into_parts();
            Ok(WsSession {
                handshake: ws_response(&parts, body.unwrap_or_default()),
                replies: Vec::new(),
            })
        }
        Err(e) => Err(format!("ws handshake: {e}")),
    }
}

/// Opens a WebSocket to `path`, sends `text`, and returns the status of the
/// handshake and the echo (or the HTTP response when the upgrade is refused).
pub async fn websocket_echo(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    text: &str,
) -> Result<Result<String, Response>, String> {
    tokio::time::timeout(IO_TIMEOUT, async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        // The hostname the HTTP requests use: a browser's page and its
        // socket share one, and Fly's replay cache is per hostname.
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://app.test{path}"
        ))
        .map_err(|e| format!("ws request: {e}"))?;
        if let Some(cookie) = cookie {
            let value = format!("{}={cookie}", sticky_core::DEFAULT_COOKIE_NAME);
            request.headers_mut().insert(
                "cookie",
                value.parse().map_err(|e| format!("cookie header: {e}"))?,
            );
        }
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((mut ws, _)) => {
                ws.send(Message::text(text))
                    .await
                    .map_err(|e| format!("ws send: {e}"))?;
                let reply = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(t))) => break t.as_str().to_owned(),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(format!("ws read: {e}")),
                        None => return Err("ws closed before the echo".to_owned()),
                    }
                };
                let _ = ws.close(None).await;
                Ok(Ok(reply))
            }
            Err(tungstenite::Error::Http(res)) => {
                let (parts, body) = res.into_parts();
                Ok(Err(Response {
                    status: parts.status.as_u16(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| {
                            (
                                n.as_str().to_owned(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                    body: body.unwrap_or_default(),
                }))
            }
            Err(e) => Err(format!("ws handshake: {e}")),
        }
    })
    .await
    .map_err(|_| format!("websocket {path} timed out"))?
}

#[cfg(test)]
mod tests {
    use super::take_response;

    #[test]
    fn take_response_frames_each_kind_of_body() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n\x81";
        let (first, used) = take_response(raw, false, false).unwrap().unwrap();
        assert_eq!((first.status, first.text().as_str()), (200, "hi"));
        let (second, used2) = take_response(&raw[used..], false, false).unwrap().unwrap();
        assert_eq!(second.status, 101);
        assert_eq!(&raw[used + used2..], b"\x81");

        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\nnext";
        let (res, used) = take_response(chunked, false, false).unwrap().unwrap();
        assert_eq!(res.text(), "hello");
        assert_eq!(&chunked[used..], b"next");
        assert!(
            take_response(&chunked[..60], false, false)
                .unwrap()
                .is_none()
        );

        let open = b"HTTP/1.1 200 OK\r\n\r\nrest";
        assert!(take_response(open, false, false).unwrap().is_none());
        let (res, _) = take_response(open, false, true).unwrap().unwrap();
        assert_eq!(res.text(), "rest");
        let head = b"HTTP/1.1 307 Temporary Redirect\r\ncontent-length: 9\r\n\r\n";
        let (res, used) = take_response(head, true, false).unwrap().unwrap();
        assert_eq!((res.status, used), (307, head.len()));
    }
}
