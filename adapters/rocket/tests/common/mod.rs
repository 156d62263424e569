//! Helpers shared by the wire tests: a raw HTTP/1.1 client over
//! `tokio::net::TcpStream` and launchers for real Rocket servers on
//! `127.0.0.1:0`.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use rocket::fairing::AdHoc;
use rocket::{Build, Rocket, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const HERE: &str = "148ed599c14189";
pub const OTHER: &str = "90801679a10038";

/// The contract engine for this Machine.
pub fn engine() -> sticky_rocket::sticky_core::Sticky {
    example_rocket::engine(sticky_rocket::sticky_core::Env::machine(HERE)).expect("valid config")
}

/// A running server that shuts down when dropped.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.clone().notify();
    }
}

/// Starts the example app (the app contract) with `sticky`.
pub async fn example(sticky: sticky_rocket::sticky_core::Sticky) -> Server {
    let running = example_rocket::start(sticky, example_rocket::test_config())
        .await
        .expect("example app starts");
    Server {
        addr: running.local_addr(),
        shutdown: running.shutdown_handle(),
    }
}

/// Launches any Rocket (built on `example_rocket::test_config()`) and
/// returns once it listens, with the port the OS chose.
pub async fn launch(rocket: Rocket<Build>) -> Server {
    let (tx, rx) = oneshot::channel();
    let rocket = rocket
        .attach(AdHoc::on_liftoff("port", move |r| {
            let addr = SocketAddr::new(r.config().address, r.config().port);
            Box::pin(async move {
                let _ = tx.send(addr);
            })
        }))
        .ignite()
        .await
        .expect("rocket ignites");
    let shutdown = rocket.shutdown();
    tokio::spawn(async move {
        if let Err(e) = rocket.launch().await {
            // Displaying marks the error handled (Rocket panics otherwise).
            eprintln!("rocket: {e}");
        }
    });
    let addr = rx.await.expect("rocket lifts off");
    assert_ne!(addr.port(), 0, "the bound port is known at liftoff");
    Server { addr, shutdown }
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// Every value of header `name` (case-insensitive), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of header `name`; panics when there are several.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} appears {} times: {all:?}",
            all.len()
        );
        all.first().copied()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds a request (always `Connection: close`; `Content-Length` when a
/// body is given and no `Transfer-Encoding` header is).
pub fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    if !chunked && (!body.is_empty() || method == "POST") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// Sends raw bytes and reads the whole response (the server closes).
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Reply {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw).await.expect("write request");
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.expect("read response");
        parse(&buf)
    })
    .await
    .expect("response within 20 s")
}

/// Sends one request and reads the response.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    send_raw(addr, &request(method, target, headers, body)).await
}

/// `GET target` with these headers.
pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", target, headers, b"").await
}

/// The number of handler runs so far, read through `GET /` pinned here
/// (which counts itself: the value returned is one less than the body says).
pub async fn handled_before(addr: SocketAddr) -> u64 {
    let cookie = format!("fly-machine-id={HERE}");
    let reply = get(addr, "/", &[("Cookie", &cookie)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let text = reply.text();
    let n: u64 = text
        .rsplit("handled=")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in {text:?}"));
    n - 1
}

fn parse(buf: &[u8]) -> Reply {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(buf)));
    let head = std::str::from_utf8(&buf[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap_or("0");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        rest = &rest[line_end + 2..];
        if size == 0 || rest.len() < size {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
    body
}

/// A chunked request body carrying `total` bytes in chunks of `chunk`.
pub fn chunked_body(total: usize, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend(std::iter::repeat_n(b'a', n));
        out.extend_from_slice(b"\r\n");
        left -= n;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Checks the sticky cookie pinning to `HERE`, attribute by attribute.
pub fn assert_pin_cookie(set_cookie: &str, secure: bool) {
    let mut parts = set_cookie.split(';').map(str::trim);
    assert_eq!(
        parts.next(),
        Some(format!("fly-machine-id={HERE}").as_str())
    );
    let attrs: Vec<&str> = parts.collect();
    for want in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=518400"] {
        assert!(
            attrs.iter().any(|a| a.eq_ignore_ascii_case(want)),
            "{want} missing in {set_cookie:?}"
        );
    }
    assert_eq!(
        attrs.iter().any(|a| a.eq_ignore_ascii_case("Secure")),
        secure,
        "Secure in {set_cookie:?}"
    );
}
