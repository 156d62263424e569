//! Shared helpers: a poem server on 127.0.0.1:0 that stops when its handle
//! is dropped, and checks on the suite's raw client's responses.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use poem::listener::TcpAcceptor;
use poem::{Endpoint, Server};

/// The Machine the tests run as.
pub const HERE: &str = "148ed599c14189";
/// Another Machine of the app.
pub const THERE: &str = "90801679a10038";

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

pub use conformance::client::{Connection, Request, Response as Reply};

/// `GET path` with the given headers, on a new connection left open (no
/// `connection: close`, so the server's own choice shows).
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let req = headers
        .iter()
        .fold(Request::get(path), |req, (n, v)| req.header(n, v));
    let mut conn = Connection::open(addr).await.expect("connect");
    conn.send(&req.keep_alive()).await.expect("a response")
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

/// `req` as a WebSocket upgrade request.
pub fn ws_upgrade(req: Request) -> Request {
    req.header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
}
