//! sticky-axum end to end over a real TCP socket: raw HTTP/1.1 bytes in, bytes out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use sticky_axum::StickyLayer;
use sticky_axum::sticky_core::{Env, Sticky};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn one(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw request bytes (with `Connection: close`) and parses the reply.
async fn send(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

async fn http_get(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{extra}\r\n"),
        b"",
    )
    .await
}

struct Server {
    addr: SocketAddr,
    runs: Arc<AtomicU64>,
    sticky: Sticky,
}

async fn server(env: Env) -> Server {
    let sticky = Sticky::builder().exclude(["/health"]).build(env).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let (r1, r2, r3) = (runs.clone(), runs.clone(), runs.clone());
    let app = Router::new()
        .route(
            "/",
            get(move || async move {
                r1.fetch_add(1, Ordering::SeqCst);
                "hi"
            }),
        )
        .route("/health", get(|| async { "ok" }))
        .route(
            "/own-headers",
            get(move || async move {
                r2.fetch_add(1, Ordering::SeqCst);
                (
                    [("cache-control", "no-store"), ("set-cookie", "app=1")],
                    "own",
                )
            }),
        )
        .route(
            "/upload",
            post(move |body: axum::body::Bytes| async move {
                r3.fetch_add(1, Ordering::SeqCst);
                format!("bytes={}", body.len())
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::max(8 << 20))
        .layer(StickyLayer::new(sticky.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { addr, runs, sticky }
}

#[tokio::test]
async fn stick_first_visit_and_replay() {
    let s = server(Env::machine(S)).await;

    let r = http_get(s.addr, "/", &format!("Cookie: fly-machine-id={S}\r\n")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(r.one("set-cookie").is_none());
    assert_eq!(s.runs.load(Ordering::SeqCst), 1);

    let r = http_get(s.addr, "/", "").await;
    assert_eq!(r.status, 200);
    let cookie = r.one("set-cookie").unwrap();
    for part in [
        &format!("fly-machine-id={S}") as &str,
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=518400",
    ] {
        assert!(cookie.split("; ").any(|p| p == part), "{part} in {cookie}");
    }
    assert!(!cookie.contains("Secure"));
    assert_eq!(r.one("cache-control"), Some("private"));
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);

    let r = http_get(s.addr, "/", "X-Forwarded-Proto: https\r\n").await;
    assert!(r.one("set-cookie").unwrap().contains("; Secure"));

    let r = http_get(
        s.addr,
        "/",
        &format!("Cookie: theme=dark; fly-machine-id={T}\r\n"),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    assert!(r.body.is_empty());
    assert!(r.one("set-cookie").is_none());
    assert_eq!(
        s.runs.load(Ordering::SeqCst),
        3,
        "the replay did not run the handler"
    );
}

#[tokio::test]
async fn the_apps_own_headers_are_kept() {
    let s = server(Env::machine(S)).await;
    let r = http_get(s.addr, "/own-headers", "").await;
    assert_eq!(r.all("cache-control"), ["no-store"]);
    let cookies = r.all("set-cookie");
    assert_eq!(cookies.len(), 2);
    assert!(cookies.contains(&"app=1"));
}

#[tokio::test]
async fn injection_is_re_pinned_not_replayed() {
    let s = server(Env::machine(S)).await;
    for value in [
        format!("{T}%3Bapp%3Dx"),
        format!("{T},app=x"),
        "\"x\"".to_owned(),
    ] {
        let r = http_get(s.addr, "/", &format!("Cookie: fly-machine-id={value}\r\n")).await;
        assert_eq!(r.status, 200, "{value}");
        assert!(r.one("fly-replay").is_none());
        assert!(
            r.one("set-cookie")
                .unwrap()
                .starts_with(&format!("fly-machine-id={S};"))
        );
    }
}

#[tokio::test]
async fn websocket_upgrades_are_replayed_never_101() {
    let s = server(Env::machine(S)).await;
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let r = http_get(
        s.addr,
        "/",
        &format!("{upgrade}Cookie: fly-machine-id={T}\r\n"),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    let r = http_get(s.addr, "/?fly_instance_id=90801679a10038", upgrade).await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn websocket_pinned_here_upgrades_and_echoes() {
    let sticky = example_axum::sticky(Env::machine(S)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example_axum::serve(
        listener,
        sticky,
        std::future::pending(),
    ));
    let url = format!("ws://{addr}/ws?fly_instance_id={S}");
    let (mut ws, res) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(res.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), format!("{S}:hi"));
}

#[tokio::test]
async fn large_and_chunked_uploads_pinned_elsewhere_are_served_here() {
    let s = server(Env::machine(S)).await;
    let body = vec![b'x'; 2_000_000];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nCookie: fly-machine-id={T}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let r = send(s.addr, &head, &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "bytes=2000000"));
    assert!(r.one("fly-replay").is_none());

    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nCookie: fly-machine-id={T}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let r = send(s.addr, &head, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
    assert_eq!((r.status, r.text().as_str()), (200, "bytes=11"));

    // A small upload pinned elsewhere is replayed, unread.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\nCookie: fly-machine-id={T}\r\nContent-Length: 5\r\n\r\n"
    );
    let r = send(s.addr, &head, b"hello").await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn drain_replays_pinned_here_elsewhere() {
    let s = server(Env::machine(S)).await;
    s.sticky.drain();
    let r = http_get(s.addr, "/", &format!("Cookie: fly-machine-id={S}\r\n")).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("elsewhere=true"));
    assert_eq!(
        http_get(s.addr, "/health", "").await.status,
        200,
        "excluded paths still serve"
    );
    assert_eq!(s.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn not_on_fly_adds_nothing() {
    let s = server(Env::default()).await;
    let r = http_get(s.addr, "/", &format!("Cookie: fly-machine-id={T}\r\n")).await;
    assert_eq!(r.status, 200);
    assert!(
        r.one("set-cookie").is_none()
            && r.one("fly-replay").is_none()
            && r.one("cache-control").is_none()
    );
}

#[tokio::test]
async fn skip_predicate_bypasses_the_layer() {
    let sticky = Sticky::builder().build(Env::machine(S)).unwrap();
    let app = Router::new().route("/", get(|| async { "hi" })).layer(
        StickyLayer::new(sticky)
            .skip_if(|r: &http::Request<axum::body::Body>| r.headers().contains_key("x-internal")),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let r = http_get(
        addr,
        "/",
        &format!("X-Internal: 1\r\nCookie: fly-machine-id={T}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
}
