//! Raw HTTP/1.1 over real TCP sockets, and servers on their own actix threads.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use actix_web::dev::{Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const S: &str = "148ed599c14189";
pub const T: &str = "90801679a10038";

pub const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn one(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses every response in `raw` (bodies delimited by Content-Length; a
/// response without one takes the rest).
pub fn parse_all(mut raw: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    while !raw.is_empty() {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a full head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let rest = &raw[split + 4..];
        let len = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(rest.len(), |(_, v)| v.parse().unwrap());
        replies.push(Reply {
            status,
            headers,
            body: rest[..len].to_vec(),
        });
        raw = &rest[len..];
    }
    replies
}

/// Sends raw bytes, reads until the server closes, parses every response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Reply> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_all(&raw)
}

/// Sends one request (its head must carry `Connection: close`).
pub async fn send(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    let mut bytes = head.as_bytes().to_vec();
    bytes.extend_from_slice(body);
    let mut replies = exchange(addr, &bytes).await;
    assert_eq!(replies.len(), 1, "one response");
    replies.remove(0)
}

pub async fn get(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{extra}\r\n"),
        b"",
    )
    .await
}

pub async fn post(addr: SocketAddr, path: &str, extra: &str, body: &[u8]) -> Reply {
    send(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        ),
        body,
    )
    .await
}

pub fn cookie(id: &str) -> String {
    format!("Cookie: fly-machine-id={id}\r\n")
}

/// Binds 127.0.0.1:0, builds the server on it and runs it on its own thread.
pub fn start(
    build: impl FnOnce(std::net::TcpListener) -> std::io::Result<Server>,
) -> (SocketAddr, ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = build(listener).unwrap();
    let handle = example_actix_web::run_on_thread(server).unwrap();
    (addr, handle)
}
