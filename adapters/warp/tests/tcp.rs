//! sticky-warp over a real TCP socket (`warp::serve`), for what is particular
//! to warp: route rejections, the headers the wrapper fetches, raw header
//! bytes, `wrap` and `wrap_fn`, keep-alive. The shared scenarios run
//! against the example app in `examples/warp/tests/conformance.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use conformance::client::{self, Connection, Request, send};
use futures_util::{SinkExt, StreamExt};
use sticky_warp::StickyWrap;
use sticky_warp::sticky_core::{Env, Sticky, Unavailable};
use tokio::net::TcpListener;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply as _};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";

/// `GET path` with `headers`, on a fresh connection.
async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> client::Response {
    request(addr, "GET", path, headers).await
}

async fn request(
    addr: SocketAddr,
    method: &'static str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> client::Response {
    let req = headers
        .iter()
        .fold(Request::new(method, path), |req, (n, v)| req.header(n, v));
    send(addr, &req).await.unwrap()
}

fn cookie(id: &str) -> Vec<u8> {
    format!("fly-machine-id={id}").into_bytes()
}

fn pinned_here(r: &client::Response) -> bool {
    r.all("set-cookie")
        .iter()
        .any(|c| c.starts_with(&format!("fly-machine-id={S};")))
}

fn ws_upgrade(req: Request) -> Request {
    req.header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
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
    let app = routes(runs.clone())
        .with(warp::wrap_fn(sticky_warp::sticky(wrap)))
        .recover(app_recover);
    Server {
        addr: listen(app).await,
        runs,
    }
}

async fn server(env: Env) -> Server {
    let sticky = Sticky::builder().exclude(["/health"]).build(env).unwrap();
    server_with(StickyWrap::new(sticky)).await
}

#[tokio::test]
async fn the_apps_own_headers_are_kept() {
    let s = server(Env::machine(S)).await;
    let r = http_get(s.addr, "/own-headers", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.all("cache-control"), ["no-store"], "kept, not duplicated");
    let cookies = r.all("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies.contains(&"app=1"));
    assert!(pinned_here(&r));
}

#[tokio::test]
async fn websocket_upgrades_are_replayed_never_101() {
    let s = server(Env::machine(S)).await;
    let r = send(s.addr, &ws_upgrade(Request::get("/ws").cookie(T)))
        .await
        .unwrap();
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    assert!(r.one("upgrade").is_none() && r.one("sec-websocket-accept").is_none());
    let r = send(
        s.addr,
        &ws_upgrade(Request::get(format!("/ws?fly_instance_id={T}"))),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 0, "neither the handler nor the upgrade ran");

    // Pinned here: the same request upgrades (and gets no cookie).
    let mut conn = Connection::open(s.addr).await.unwrap();
    let r = conn
        .send(&ws_upgrade(Request::get("/ws").cookie(S)).keep_alive())
        .await
        .unwrap();
    assert_eq!(r.status, 101);
    assert!(r.one("set-cookie").is_none());
    assert_eq!(s.runs(), 1);
}

/// Unknown paths and wrong methods get exactly what warp answers without
/// the wrapper; the app's own rejections reach the app's own recover.
#[tokio::test]
async fn route_rejections_pass_through_unchanged() {
    let s = server(Env::machine(S)).await;
    let bare = listen(routes(Arc::default()).recover(app_recover)).await;
    let here = cookie(S);
    let pinned: &[(&str, &[u8])] = &[("Cookie", &here)];
    for (method, path) in [
        ("GET", "/nope"),
        ("GET", "/health/extra"),
        ("DELETE", "/"),
        ("PUT", "/upload"),
        ("GET", "/teapot"),
    ] {
        let want = request(bare, method, path, pinned).await;
        let got = request(s.addr, method, path, pinned).await;
        assert_eq!(got.status, want.status, "{method} {path}");
        assert_eq!(got.text(), want.text(), "{method} {path}");
        assert!(got.one("fly-replay").is_none());
    }
    assert_eq!(request(s.addr, "GET", "/nope", pinned).await.status, 404);
    assert_eq!(request(s.addr, "DELETE", "/", pinned).await.status, 405);
    assert_eq!(request(s.addr, "GET", "/teapot", pinned).await.status, 418);
    // The wrapper decides before routing: a replay does not look for a route.
    let r = request(s.addr, "GET", "/nope", &[("Cookie", &cookie(T))]).await;
    assert_eq!(r.status, 307);
}

/// The markers of a replay that already happened reach the core: served
/// here and re-pinned (row 5), or refused with 503 by policy.
#[tokio::test]
async fn replay_markers_are_seen() {
    let s = server(Env::machine(S)).await;
    let theirs = cookie(T);
    for (name, value) in [
        ("fly-replay-src", "instance=90801679a10038;region=ord;t=1"),
        ("fly-replay-failed", "reason=timeout"),
        ("fly-preferred-instance-unavailable", "90801679a10038"),
        ("fly-replay-cache-status", "miss"),
    ] {
        let r = http_get(
            s.addr,
            "/",
            &[("Cookie", &theirs), (name, value.as_bytes())],
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {value}");
        assert!(pinned_here(&r), "{name}: {value}");
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
        &[("Cookie", &theirs), ("Fly-Replay-Src", b"instance=x")],
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
        &[
            ("Cookie", &cookie(T)),
            ("Access-Control-Request-Method", b"POST"),
            ("Origin", b"https://x"),
        ],
    )
    .await;
    assert!(r.one("fly-replay").is_none() && r.one("set-cookie").is_none());

    let r = http_get(s.addr, &format!("/?a=1&fly_instance_id={T}"), &[]).await;
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    let r = http_get(s.addr, "/?a=1", &[]).await;
    assert!(pinned_here(&r));

    let mixed = format!("FLY-MACHINE-ID=x; fly-machine-id={T}");
    let r = http_get(s.addr, "/", &[("COOKIE", mixed.as_bytes())]).await;
    assert_eq!(r.status, 307);
    let r = http_get(s.addr, "/", &[("x-FORWARDED-proto", b"HTTPS")]).await;
    assert!(r.one("set-cookie").unwrap().contains("; Secure"));
}

/// Header values that are not visible ASCII never make warp reject the
/// request, and the core still scans their raw bytes.
#[tokio::test]
async fn non_ascii_header_values_are_read_raw() {
    let s = server(Env::machine(S)).await;
    let utf8 = format!("name=J\u{f6}rg; fly-machine-id={T}");
    let r = http_get(s.addr, "/", &[("Cookie", utf8.as_bytes())]).await;
    assert_eq!(r.status, 307);
    let mut raw = b"a=\xff\xfe; fly-machine-id=".to_vec();
    raw.extend_from_slice(S.as_bytes());
    let r = http_get(
        s.addr,
        "/",
        &[("Cookie", &raw), ("X-Forwarded-Proto", b"\xe9")],
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(r.one("set-cookie").is_none());
}

/// The sticky cookie is found in any of several `Cookie` fields.
#[tokio::test]
async fn every_cookie_field_is_searched() {
    let s = server(Env::machine(S)).await;
    let (theirs, ours) = (cookie(T), cookie(S));
    let r = http_get(s.addr, "/", &[("Cookie", &theirs), ("Cookie", b"a=1")]).await;
    assert_eq!(
        r.one("fly-replay"),
        Some("prefer_instance=90801679a10038"),
        "first field"
    );
    let r = http_get(s.addr, "/", &[("Cookie", b"a=1; b=2"), ("Cookie", &theirs)]).await;
    assert_eq!(
        r.one("fly-replay"),
        Some("prefer_instance=90801679a10038"),
        "second field"
    );
    let r = http_get(
        s.addr,
        "/",
        &[("Cookie", b"a=1"), ("Cookie", b"b=2"), ("Cookie", &ours)],
    )
    .await;
    assert_eq!(
        (r.status, r.one("set-cookie")),
        (200, None),
        "third field, pinned here"
    );
    // Ours among duplicates settles them, in any field.
    let both = format!("fly-machine-id={T}; fly-machine-id={S}");
    let r = http_get(
        s.addr,
        "/",
        &[("Cookie", both.as_bytes()), ("Cookie", b"a=1")],
    )
    .await;
    assert_eq!((r.status, r.one("set-cookie")), (200, None));
    // Injection from a later field is refused like from the first.
    let r = http_get(
        s.addr,
        "/",
        &[("Cookie", b"a=1"), ("Cookie", b"fly-machine-id=x;app=y")],
    )
    .await;
    assert!(r.one("fly-replay").is_none() && pinned_here(&r));
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
    let pin = format!("pin={T}");
    let r = http_get(s.addr, "/", &[("Cookie", pin.as_bytes())]).await;
    assert_eq!(r.status, 307, "first field");
    let r = http_get(
        s.addr,
        "/",
        &[("Cookie", b"a=1"), ("Cookie", pin.as_bytes())],
    )
    .await;
    assert_eq!(
        r.status, 307,
        "every field is searched for the configured name"
    );

    let s = server(Env::machine(S)).await;
    let r = http_get(
        s.addr,
        "/",
        &[("Cookie", b"name=\xff"), ("Cookie", &cookie(T))],
    )
    .await;
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
    let r = http_get(s.addr, "/", &[("X-Machine", T.as_bytes())]).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    let r = http_get(s.addr, "/", &[("x-machine", S.as_bytes())]).await;
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
    let theirs = cookie(T);
    let r = http_get(s.addr, "/", &[("X-Internal", b"1"), ("Cookie", &theirs)]).await;
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
    let r = http_get(s.addr, "/", &[("Cookie", &theirs)]).await;
    assert_eq!(r.status, 307);
}

/// A replay answers on a keep-alive connection, and the connection serves
/// the next request.
#[tokio::test]
async fn replay_keeps_the_connection_alive() {
    let s = server(Env::machine(S)).await;
    let mut conn = Connection::open(s.addr).await.unwrap();
    let r = conn
        .send(&Request::get("/").cookie(T).keep_alive())
        .await
        .unwrap();
    assert_eq!(r.status, 307);
    let r = conn.send(&Request::get("/").cookie(S)).await.unwrap();
    assert_eq!(r.text(), "hi");
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
    let r = http_get(addr, "/nope", &[("Cookie", &cookie(S))]).await;
    assert_eq!((r.status, r.text().as_str()), (404, "custom 404"));
    let r = http_get(addr, "/teapot", &[]).await;
    assert_eq!(r.status, 418);
    assert!(
        pinned_here(&r),
        "the app's recovered reply is a reply: it gets the cookie"
    );
    let r = http_get(addr, "/", &[("Cookie", &cookie(T))]).await;
    assert_eq!(r.status, 307);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only /teapot ran");
}
