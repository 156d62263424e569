//! Shared helpers: a raw HTTP/1.1 client over real TCP sockets, and a poem
//! server on 127.0.0.1:0 that stops when its handle is dropped.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use poem::listener::TcpAcceptor;
use poem::{Endpoint, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The Machine the tests run as.
pub const HERE: &str = "148ed599c14189";
/// Another Machine of the app.
pub const THERE: &str = "90801679a10038";

/// How long any single read may take before a test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server; dropping it starts a graceful shutdown.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves `ep` on 127.0.0.1:0 in a background task.
pub async fn serve<E: Endpoint + 'static>(ep: E) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let acceptor = TcpAcceptor::from_tokio(listener).expect("acceptor");
        let _ = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(
                ep,
                async {
                    let _ = stopped.await;
                },
                Some(Duration::from_secs(1)),
            )
            .await;
    });
    TestServer {
        addr,
        stop: Some(stop),
    }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Header names lowercased, in order, repeated headers kept.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection that can carry several requests (keep-alive).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn into_stream(self) -> TcpStream {
        assert!(self.buf.is_empty(), "unread bytes left on the connection");
        self.stream
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes into the buffer; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.drain(..pos + 2).collect::<Vec<u8>>();
                return String::from_utf8_lossy(&line[..pos]).into_owned();
            }
            assert!(self.fill().await, "EOF in the middle of a line");
        }
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "EOF in the middle of a body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response; `head` says it answers a HEAD request.
    pub async fn response(&mut self, head: bool) -> Resp {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(
            version.starts_with("HTTP/1."),
            "bad status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if head || status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            return resp;
        }
        if resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            loop {
                let size_line = self.line().await;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or_else(|_| panic!("bad chunk size {size_line:?}"));
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line().await.is_empty() {}
                    break;
                }
                let chunk = self.exact(size).await;
                resp.body.extend_from_slice(&chunk);
                assert!(self.line().await.is_empty(), "chunk not followed by CRLF");
            }
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            resp.body = self.exact(len).await;
        } else {
            while self.fill().await {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    /// Sends a request head (and body) and reads the response.
    pub async fn request(&mut self, raw: &[u8]) -> Resp {
        self.write(raw).await;
        let head = raw.starts_with(b"HEAD ");
        self.response(head).await
    }
}

/// A request head: `METHOD path`, the given extra header lines, `Host`,
/// and `Content-Length: 0` for body-carrying methods without a body.
pub fn head(method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: app.test\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw
}

/// Sends one request on a new connection and reads the response.
pub async fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    Conn::open(addr)
        .await
        .request(head(method, path, headers).as_bytes())
        .await
}

/// `GET path` with the given headers.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(addr, "GET", path, headers).await
}

/// A `Cookie` header pinning to `machine`.
pub fn pinned(machine: &str) -> String {
    format!("fly-machine-id={machine}")
}

/// The attributes of one `Set-Cookie` value, split on `;` and trimmed.
pub fn attributes(set_cookie: &str) -> Vec<String> {
    set_cookie.split(';').map(|a| a.trim().to_owned()).collect()
}

/// Checks our pin cookie, attribute by attribute.
pub fn assert_pin_cookie(set_cookie: &str, secure: bool) {
    let attrs = attributes(set_cookie);
    assert_eq!(attrs[0], format!("fly-machine-id={HERE}"), "{set_cookie}");
    for expected in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=518400"] {
        assert!(
            attrs.iter().any(|a| a == expected),
            "{expected} missing from {set_cookie}"
        );
    }
    assert_eq!(
        attrs.iter().any(|a| a == "Secure"),
        secure,
        "Secure attribute in {set_cookie}"
    );
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "no Domain by default: {set_cookie}"
    );
}

/// An upgrade request for a WebSocket at `path`.
pub fn ws_upgrade_head(path: &str, extra: &[(&str, &str)]) -> String {
    let mut headers = vec![
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    headers.extend_from_slice(extra);
    head("GET", path, &headers)
}
