//! sticky-warp end to end over a real TCP socket (`warp::serve`): raw HTTP/1.1
//! bytes in, bytes out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use sticky_warp::StickyWrap;
use sticky_warp::sticky_core::{Env, Sticky, Unavailable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply as _};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";
const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

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
    fn pinned_here(&self) -> bool {
        self.all("set-cookie")
            .iter()
            .any(|c| c.starts_with(&format!("fly-machine-id={S};")))
    }
}

/// Sends raw request bytes (with `Connection: close`) and parses the reply.
async fn send(addr: SocketAddr, head: &[u8], body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&raw)
}

fn parse(raw: &[u8]) -> Reply {
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

async fn request(addr: SocketAddr, method: &str, path: &str, extra: &str) -> Reply {
    let head = format!("{method} {path} HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{extra}\r\n");
    send(addr, head.as_bytes(), b"").await
}

async fn http_get(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    request(addr, "GET", path, extra).await
}

fn cookie(id: &str) -> String {
    format!("Cookie: fly-machine-id={id}\r\n")
}

/// A route tree counting its handler runs in `runs`.
fn routes(
    runs: Arc<AtomicU64>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let count = warp::any().map(move || {
        runs.fetch_add(1, Ordering::SeqCst);
    });
    // Path first, then method: warp then answers 404 for unknown paths.
    let index = warp::path::end()
        .and(warp::get())
        .and(count.clone())
        .map(|()| "hi".into_response());
    let health = warp::path!("health")
        .and(warp::get())
        .map(|| "ok".into_response());
    let own = warp::path!("own-headers")
        .and(warp::get())
        .and(count.clone())
        .map(|()| {
            let reply = warp::reply::with_header("own", "cache-control", "no-store");
            warp::reply::with_header(reply, "set-cookie", "app=1").into_response()
        });
    let upload = warp::path!("upload")
        .and(warp::post())
        .and(count.clone())
        .and(warp::body::bytes())
        .map(|(), body: warp::hyper::body::Bytes| format!("bytes={}", body.len()).into_response());
    let ws = warp::path!("ws")
        .and(count.clone())
        .and(warp::ws())
        .map(|(), ws: warp::ws::Ws| {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(m)) = socket.next().await {
                    if m.is_text() && socket.send(m).await.is_err() {
                        break;
                    }
                }
            })
            .into_response()
        });
    let teapot = warp::path!("teapot")
        .and(count)
        .and_then(|()| async { Err::<Response, _>(warp::reject::custom(Teapot)) });
    index
        .or(health)
        .unify()
        .or(own)
        .unify()
        .or(upload)
        .unify()
        .or(ws)
        .unify()
        .or(teapot)
        .unify()
}

/// A rejection of the app's own, answered by the app's own recover.
#[derive(Debug)]
struct Teapot;
impl warp::reject::Reject for Teapot {}

async fn app_recover(r: Rejection) -> Result<Response, Rejection> {
    if r.find::<Teapot>().is_some() {
        Ok(StatusCode::IM_A_TEAPOT.into_response())
    } else {
        Err(r)
    }
}

struct Server {
    addr: SocketAddr,
    runs: Arc<AtomicU64>,
    sticky: Sticky,
}

impl Server {
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn listen<F>(filter: F) -> SocketAddr
where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(filter).incoming(listener).run());
    addr
}

/// The routes behind `.with(warp::wrap_fn(sticky_warp::sticky(..)))`, with
/// the app's own catch-all recover outside.
async fn server_with(wrap: StickyWrap) -> Server {
    let runs = Arc::new(AtomicU64::new(0));
    let sticky = wrap.sticky().clone();
    let app = routes(runs.clone())
        .with(warp::wrap_fn(sticky_warp::sticky(wrap)))
        .recover(app_recover);
    Server {
        addr: listen(app).await,
        runs,
        sticky,
    }
}

async fn server(env: Env) -> Server {
    let sticky = Sticky::builder().exclude(["/health"]).build(env).unwrap();
    server_with(StickyWrap::new(sticky)).await
}

#[tokio::test]
async fn stick_first_visit_and_replay() {
    let s = server(Env::machine(S)).await;

    let r = http_get(s.addr, "/", &cookie(S)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(r.one("set-cookie").is_none() && r.one("fly-replay").is_none());
    assert_eq!(s.runs(), 1);

    let r = http_get(s.addr, "/", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    let set_cookie = r.all("set-cookie");
    assert_eq!(set_cookie.len(), 1);
    let parts: Vec<&str> = set_cookie[0].split("; ").collect();
    for part in [
        &format!("fly-machine-id={S}") as &str,
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=518400",
    ] {
        assert!(parts.contains(&part), "{part} in {set_cookie:?}");
    }
    assert!(!parts.contains(&"Secure"));
    assert_eq!(r.all("cache-control"), ["private"]);
    assert_eq!(s.runs(), 2);

    let r = http_get(s.addr, "/", "X-Forwarded-Proto: https\r\n").await;
    assert!(
        r.one("set-cookie")
            .unwrap()
            .split("; ")
            .any(|p| p == "Secure")
    );

    let r = http_get(
        s.addr,
        "/",
        &format!("Cookie: theme=dark; fly-machine-id={T}\r\n"),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.all("fly-replay"), [format!("prefer_instance={T}")]);
    assert!(r.body.is_empty());
    assert_eq!(r.one("content-length"), Some("0"));
    assert!(r.one("set-cookie").is_none());
    assert_eq!(s.runs(), 3, "the replay did not run the handler");
}

#[tokio::test]
async fn the_apps_own_headers_are_kept() {
    let s = server(Env::machine(S)).await;
    let r = http_get(s.addr, "/own-headers", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.all("cache-control"), ["no-store"], "kept, not duplicated");
    let cookies = r.all("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies.contains(&"app=1"));
    assert!(r.pinned_here());
}

#[tokio::test]
async fn injection_is_re_pinned_not_replayed() {
    let s = server(Env::machine(S)).await;
    for value in [
        format!("{T}%3Bapp%3Dx"),
        "x;app=y".to_owned(),
        format!("{T},app=x"),
        "\"x\"".to_owned(),
    ] {
        let r = http_get(s.addr, "/", &cookie(&value)).await;
        assert_eq!(r.status, 200, "{value}");
        assert!(r.one("fly-replay").is_none(), "{value}");
        assert!(r.pinned_here(), "{value}");
    }
    assert_eq!(s.runs(), 4);
}

#[tokio::test]
async fn websocket_upgrades_are_replayed_never_101() {
    let s = server(Env::machine(S)).await;
    let r = http_get(s.addr, "/ws", &format!("{UPGRADE}{}", cookie(T))).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    assert!(r.one("upgrade").is_none() && r.one("sec-websocket-accept").is_none());
    let r = http_get(s.addr, &format!("/ws?fly_instance_id={T}"), UPGRADE).await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 0, "neither the handler nor the upgrade ran");

    // Pinned here: the same request upgrades (and gets no cookie).
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: app\r\n{UPGRADE}{}\r\n",
        cookie(S)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server answered");
        raw.extend_from_slice(&buf[..n]);
    }
    let r = parse(&raw);
    assert_eq!(r.status, 101);
    assert!(r.one("set-cookie").is_none());
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn websocket_pinned_here_upgrades_and_echoes() {
    let sticky = example_warp::sticky(Env::machine(S)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example_warp::serve(
        listener,
        sticky,
        std::future::pending(),
    ));
    for url in [
        format!("ws://{addr}/ws?fly_instance_id={S}"),
        format!("ws://{addr}/ws"),
    ] {
        let (mut ws, res) = tokio_tungstenite::connect_async(&url).await.unwrap();
        assert_eq!(res.status(), 101);
        ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
            .await
            .unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("{S}:hi"));
    }
}

#[tokio::test]
async fn large_and_chunked_uploads_pinned_elsewhere_are_served_here() {
    let s = server(Env::machine(S)).await;
    let body = vec![b'x'; 2_000_000];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}Content-Length: {}\r\n\r\n",
        cookie(T),
        body.len()
    );
    let r = send(s.addr, head.as_bytes(), &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "bytes=2000000"));
    assert!(r.one("fly-replay").is_none() && r.one("set-cookie").is_none());

    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}Transfer-Encoding: chunked\r\n\r\n",
        cookie(T)
    );
    let r = send(
        s.addr,
        head.as_bytes(),
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "bytes=11"));
    assert!(r.one("fly-replay").is_none());

    // A small upload pinned elsewhere is replayed, unread.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}Content-Length: 5\r\n\r\n",
        cookie(T)
    );
    let r = send(s.addr, head.as_bytes(), b"hello").await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 2);
}

#[tokio::test]
async fn example_app_counts_and_takes_big_uploads() {
    let sticky = example_warp::sticky(Env::machine(S)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example_warp::serve(
        listener,
        sticky,
        std::future::pending(),
    ));

    let r = http_get(addr, "/", &cookie(S)).await;
    assert_eq!(r.text(), format!("machine={S} handled=1"));
    let body = vec![b'x'; 16 << 20];
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}Content-Length: {}\r\n\r\n",
        cookie(S),
        body.len()
    );
    let r = send(addr, head.as_bytes(), &body).await;
    assert_eq!(r.text(), format!("machine={S} bytes={}", 16 << 20));
    let r = http_get(addr, "/health", &cookie(T)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert!(r.one("set-cookie").is_none());
    // A replayed upload does not count; /health does not count.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}Content-Length: 2\r\n\r\n",
        cookie(T)
    );
    assert_eq!(send(addr, head.as_bytes(), b"hi").await.status, 307);
    let r = http_get(addr, "/", &cookie(S)).await;
    assert_eq!(r.text(), format!("machine={S} handled=3"));
}

#[tokio::test]
async fn drain_replays_pinned_here_elsewhere() {
    let s = server(Env::machine(S)).await;
    s.sticky.drain();
    let r = http_get(s.addr, "/", &cookie(S)).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("elsewhere=true"));
    let r = http_get(s.addr, "/", "").await;
    assert_eq!(r.status, 307, "new visitors too");
    assert_eq!(
        http_get(s.addr, "/health", "").await.status,
        200,
        "excluded paths still serve"
    );
    assert_eq!(s.runs(), 0);
}

#[tokio::test]
async fn not_on_fly_adds_nothing() {
    let s = server(Env::default()).await;
    for extra in [cookie(T), String::new()] {
        let r = http_get(s.addr, "/", &extra).await;
        assert_eq!(r.status, 200);
        assert!(
            r.one("set-cookie").is_none()
                && r.one("fly-replay").is_none()
                && r.one("cache-control").is_none()
        );
    }
}

// ---- warp specifics ----

/// Unknown paths and wrong methods get exactly what warp answers without
/// the wrapper; the app's own rejections reach the app's own recover.
#[tokio::test]
async fn route_rejections_pass_through_unchanged() {
    let s = server(Env::machine(S)).await;
    let bare = listen(routes(Arc::default()).recover(app_recover)).await;
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/health/extra"),
        ("DELETE", "/"),
        ("PUT", "/upload"),
        ("GET", "/teapot"),
    ] {
        let want = request(bare, method, path, &cookie(S)).await;
        let got = request(s.addr, method, path, &cookie(S)).await;
        assert_eq!(got.status, want.status, "{method} {path}");
        assert_eq!(got.text(), want.text(), "{method} {path}");
        assert!(got.one("fly-replay").is_none());
    }
    assert_eq!(
        request(s.addr, "GET", "/nope", &cookie(S)).await.status,
        404
    );
    assert_eq!(request(s.addr, "DELETE", "/", &cookie(S)).await.status, 405);
    assert_eq!(
        request(s.addr, "GET", "/teapot", &cookie(S)).await.status,
        418
    );
    // The wrapper decides before routing: a replay does not look for a route.
    let r = request(s.addr, "GET", "/nope", &cookie(T)).await;
    assert_eq!(r.status, 307);
}

/// The markers of a replay that already happened reach the core: served
/// here and re-pinned (row 5), or refused with 503 by policy.
#[tokio::test]
async fn replay_markers_are_seen() {
    let s = server(Env::machine(S)).await;
    for marker in [
        "fly-replay-src: instance=90801679a10038;region=ord;t=1",
        "fly-replay-failed: reason=timeout",
        "fly-preferred-instance-unavailable: 90801679a10038",
        "fly-replay-cache-status: miss",
    ] {
        let r = http_get(s.addr, "/", &format!("{}{marker}\r\n", cookie(T))).await;
        assert_eq!(r.status, 200, "{marker}");
        assert!(r.pinned_here(), "{marker}");
    }
    assert_eq!(s.runs(), 4);

    let sticky = Sticky::builder()
        .unavailable(Unavailable::Refuse)
        .build(Env::machine(S))
        .unwrap();
    let s = server_with(StickyWrap::new(sticky)).await;
    let r = http_get(
        s.addr,
        "/",
        &format!("{}Fly-Replay-Src: instance=x\r\n", cookie(T)),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(r.body.is_empty() && r.one("fly-replay").is_none());
    assert_eq!(s.runs(), 0, "a refusal does not run the handler");
}

/// The remaining headers the core reads are fetched: CORS preflights are
/// left alone, the query source works, header names match in any case.
#[tokio::test]
async fn preflight_query_and_header_case() {
    let s = server(Env::machine(S)).await;
    let r = request(
        s.addr,
        "OPTIONS",
        "/",
        &format!(
            "{}Access-Control-Request-Method: POST\r\nOrigin: https://x\r\n",
            cookie(T)
        ),
    )
    .await;
    assert!(r.one("fly-replay").is_none() && r.one("set-cookie").is_none());

    let r = http_get(s.addr, &format!("/?a=1&fly_instance_id={T}"), "").await;
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    let r = http_get(s.addr, "/?a=1", "").await;
    assert!(r.pinned_here());

    let r = http_get(
        s.addr,
        "/",
        &format!("COOKIE: FLY-MACHINE-ID=x; fly-machine-id={T}\r\n"),
    )
    .await;
    assert_eq!(r.status, 307);
    let r = http_get(s.addr, "/", "x-FORWARDED-proto: HTTPS\r\n").await;
    assert!(r.one("set-cookie").unwrap().contains("; Secure"));
}

/// Header values that are not visible ASCII never make warp reject the
/// request, and the core still scans their raw bytes.
#[tokio::test]
async fn non_ascii_header_values_are_read_raw() {
    let s = server(Env::machine(S)).await;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nCookie: name=J\u{f6}rg; fly-machine-id={T}\r\n\r\n"
    );
    let r = send(s.addr, head.as_bytes(), b"").await;
    assert_eq!(r.status, 307);
    let mut head =
        b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nCookie: a=\xff\xfe; fly-machine-id="
            .to_vec();
    head.extend_from_slice(S.as_bytes());
    head.extend_from_slice(b"\r\nX-Forwarded-Proto: \xe9\r\n\r\n");
    let r = send(s.addr, &head, b"").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(r.one("set-cookie").is_none());
}

/// The sticky cookie is found in any of several `Cookie` fields.
#[tokio::test]
async fn every_cookie_field_is_searched() {
    let s = server(Env::machine(S)).await;
    let r = http_get(
        s.addr,
        "/",
        &format!("Cookie: fly-machine-id={T}\r\nCookie: a=1\r\n"),
    )
    .await;
    assert_eq!(
        r.one("fly-replay"),
        Some("prefer_instance=90801679a10038"),
        "first field"
    );
    let r = http_get(
        s.addr,
        "/",
        &format!("Cookie: a=1; b=2\r\nCookie: fly-machine-id={T}\r\n"),
    )
    .await;
    assert_eq!(
        r.one("fly-replay"),
        Some("prefer_instance=90801679a10038"),
        "second field"
    );
    let r = http_get(
        s.addr,
        "/",
        &format!("Cookie: a=1\r\nCookie: b=2\r\nCookie: fly-machine-id={S}\r\n"),
    )
    .await;
    assert_eq!(
        (r.status, r.one("set-cookie")),
        (200, None),
        "third field, pinned here"
    );
    // Ours among duplicates settles them, in any field.
    let r = http_get(
        s.addr,
        "/",
        &format!("Cookie: fly-machine-id={T}; fly-machine-id={S}\r\nCookie: a=1\r\n"),
    )
    .await;
    assert_eq!((r.status, r.one("set-cookie")), (200, None));
    // Injection from a later field is refused like from the first.
    let r = http_get(
        s.addr,
        "/",
        "Cookie: a=1\r\nCookie: fly-machine-id=x;app=y\r\n",
    )
    .await;
    assert!(r.one("fly-replay").is_none() && r.pinned_here());
    assert_eq!(s.runs(), 3);
}

/// A custom cookie name is found in every field, and a non-UTF-8 field
/// hides nothing: the engine reads every field raw, as in every framework.
#[tokio::test]
async fn cookie_field_limits() {
    let build = || {
        Sticky::builder()
            .cookie_name("pin")
            .build(Env::machine(S))
            .unwrap()
    };
    let s = server_with(StickyWrap::new(build())).await;
    let r = http_get(s.addr, "/", &format!("Cookie: pin={T}\r\n")).await;
    assert_eq!(r.status, 307, "first field");
    let r = http_get(s.addr, "/", &format!("Cookie: a=1\r\nCookie: pin={T}\r\n")).await;
    assert_eq!(
        r.status, 307,
        "every field is searched for the configured name"
    );

    let s = server(Env::machine(S)).await;
    let mut head = b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nCookie: name=\xff\r\nCookie: fly-machine-id=".to_vec();
    head.extend_from_slice(format!("{T}\r\n\r\n").as_bytes());
    let r = send(s.addr, &head, b"").await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
}

/// A header source configured on the engine is read.
#[tokio::test]
async fn header_source_is_fetched_from_the_engine() {
    let sticky = Sticky::builder()
        .header_source("X-Machine")
        .build(Env::machine(S))
        .unwrap();
    let s = server_with(StickyWrap::new(sticky)).await;
    let r = http_get(s.addr, "/", &format!("X-Machine: {T}\r\n")).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    let r = http_get(s.addr, "/", &format!("x-machine: {S}\r\n")).await;
    assert_eq!(r.status, 200);
}

/// A core `skip_if` predicate sees every header, as in the other frameworks.
#[tokio::test]
async fn skip_predicate_sees_every_header() {
    let sticky = Sticky::builder()
        .skip_if(|req| req.has_header("x-internal"))
        .build(Env::machine(S))
        .unwrap();
    let s = server_with(StickyWrap::new(sticky)).await;
    let r = http_get(s.addr, "/", &format!("X-Internal: 1\r\n{}", cookie(T))).await;
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
    let r = http_get(s.addr, "/", &cookie(T)).await;
    assert_eq!(r.status, 307);
}

/// A replay answers on a keep-alive connection, and the connection serves
/// the next request.
#[tokio::test]
async fn replay_keeps_the_connection_alive() {
    let s = server(Env::machine(S)).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    let first = format!("GET / HTTP/1.1\r\nHost: app\r\n{}\r\n", cookie(T));
    stream.write_all(first.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let r = parse(&buf[..n]);
    assert_eq!(r.status, 307);
    let second = format!(
        "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}\r\n",
        cookie(S)
    );
    stream.write_all(second.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    assert_eq!(parse(&raw).text(), "hi");
}

/// `StickyWrap::wrap` (no boxing) behaves like the `wrap_fn` form, and the
/// wrapped filter works with `warp::test`.
#[tokio::test]
async fn wrap_method_and_warp_test() {
    let sticky = Sticky::builder().build(Env::machine(S)).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let app = StickyWrap::new(sticky).wrap(routes(runs.clone()));
    let res = warp::test::request()
        .header("cookie", format!("fly-machine-id={T}"))
        .reply(&app)
        .await;
    assert_eq!(res.status(), 307);
    let res = warp::test::request().reply(&app).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("set-cookie"));
    let res = warp::test::request().path("/nope").reply(&app).await;
    assert_eq!(res.status(), 404);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Routes that never reject (a catch-all recover inside) can be wrapped too.
#[tokio::test]
async fn routes_that_never_reject() {
    async fn catch_all(r: Rejection) -> Result<Response, std::convert::Infallible> {
        Ok(match app_recover(r).await {
            Ok(res) => res,
            Err(_) => warp::reply::with_status("custom 404", StatusCode::NOT_FOUND).into_response(),
        })
    }
    let sticky = Sticky::builder().build(Env::machine(S)).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let app = routes(runs.clone())
        .recover(catch_all)
        .with(warp::wrap_fn(sticky_warp::sticky(sticky)));
    let addr = listen(app).await;
    let r = http_get(addr, "/nope", &cookie(S)).await;
    assert_eq!((r.status, r.text().as_str()), (404, "custom 404"));
    let r = http_get(addr, "/teapot", "").await;
    assert_eq!(r.status, 418);
    assert!(
        r.pinned_here(),
        "the app's recovered reply is a reply: it gets the cookie"
    );
    let r = http_get(addr, "/", &cookie(T)).await;
    assert_eq!(r.status, 307);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only /teapot ran");
}

/// Graceful shutdown as documented: drain, keep serving, then stop.
#[tokio::test]
async fn graceful_shutdown_after_drain() {
    let sticky = example_warp::sticky(Env::machine(S)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(example_warp::serve(listener, sticky.clone(), async {
        let _ = stopped.await;
    }));
    sticky.drain();
    let r = http_get(addr, "/", &cookie(S)).await;
    assert_eq!(r.one("fly-replay"), Some("elsewhere=true"));
    assert_eq!(http_get(addr, "/health", "").await.text(), "ok");
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
