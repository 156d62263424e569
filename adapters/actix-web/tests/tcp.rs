//! sticky-actix-web over real TCP sockets against a real `HttpServer` on its
//! own actix thread, for what is particular to actix-web: handler errors,
//! unknown routes, http 0.2 header and query access, the upgrade it does
//! not complete, keep-alive after an unread body, `skip_if` on the
//! `ServiceRequest`, scopes. The shared scenarios run against the example
//! app in `examples/actix-web/tests/conformance.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::dev::{ServerHandle, ServiceRequest};
use actix_web::{App, HttpResponse, HttpServer, web};
use conformance::client::{Request, Response, send, send_raw};
use sticky_actix_web::Skip;
use sticky_actix_web::sticky_core::{Env, Sticky};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";

/// Binds 127.0.0.1:0, builds the server on it and runs it on its own thread
/// with its own actix `System`.
fn start(
    build: impl FnOnce(std::net::TcpListener) -> std::io::Result<actix_web::dev::Server>,
) -> (SocketAddr, ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = build(listener).unwrap();
    let handle = server.handle();
    std::thread::spawn(move || actix_web::rt::System::new().block_on(server));
    (addr, handle)
}

async fn get(addr: SocketAddr, req: Request) -> Response {
    send(addr, &req).await.unwrap()
}

fn ws_upgrade(req: Request) -> Request {
    req.header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
}

struct Server {
    addr: SocketAddr,
    runs: Arc<AtomicU64>,
    _handle: ServerHandle,
}

impl Server {
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn hi(runs: web::Data<AtomicU64>) -> &'static str {
    runs.fetch_add(1, Ordering::SeqCst);
    "hi"
}

async fn own_headers(runs: web::Data<AtomicU64>) -> HttpResponse {
    runs.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .append_header(("set-cookie", "app=1"))
        .body("own")
}

async fn upload(runs: web::Data<AtomicU64>, body: web::Bytes) -> String {
    runs.fetch_add(1, Ordering::SeqCst);
    format!("bytes={}", body.len())
}

async fn fails(runs: web::Data<AtomicU64>) -> actix_web::Result<&'static str> {
    runs.fetch_add(1, Ordering::SeqCst);
    Err(actix_web::error::ErrorBadRequest("no"))
}

/// A test app (every handler counts its runs) behind `middleware`.
fn serve_with<P>(middleware: sticky_actix_web::StickyMiddleware<P>) -> Server
where
    P: Skip + Clone + Send + 'static,
{
    let runs = Arc::new(AtomicU64::new(0));
    let data = web::Data::from(runs.clone());
    let (addr, handle) = start(move |listener| {
        Ok(HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(8 << 20))
                .route("/", web::get().to(hi))
                .route("/health", web::get().to(|| async { "ok" }))
                .route("/own-headers", web::get().to(own_headers))
                .route("/upload", web::post().to(upload))
                .route("/fails", web::get().to(fails))
                .wrap(middleware.clone())
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run())
    });
    Server {
        addr,
        runs,
        _handle: handle,
    }
}

fn serve(env: Env) -> Server {
    let sticky = Sticky::builder().exclude(["/health"]).build(env).unwrap();
    serve_with(sticky_actix_web::StickyMiddleware::new(sticky))
}

fn assert_pinned_here(cookie: &str) {
    for part in [
        &format!("fly-machine-id={S}") as &str,
        "HttpOnly",
        "SameSite=Lax",
        "Path=/",
        "Max-Age=518400",
    ] {
        assert!(cookie.split("; ").any(|p| p == part), "{part} in {cookie}");
    }
}

#[tokio::test]
async fn stick_runs_the_handler_and_adds_nothing() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, Request::get("/").cookie(S)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(r.one("set-cookie").is_none());
    assert!(r.one("cache-control").is_none());
    assert!(r.one("fly-replay").is_none());
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn the_apps_own_headers_are_kept() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, Request::get("/own-headers")).await;
    assert_eq!(r.text(), "own");
    assert_eq!(r.all("cache-control"), ["no-store"], "not duplicated");
    let cookies = r.all("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies.contains(&"app=1"));
    assert_pinned_here(cookies.iter().find(|c| **c != "app=1").unwrap());
}

#[tokio::test]
async fn an_error_response_from_the_handler_is_still_pinned() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, Request::get("/fails")).await;
    assert_eq!(r.status, 400);
    assert_pinned_here(r.one("set-cookie").unwrap());
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn pinned_elsewhere_is_replayed_without_running_the_handler() {
    let s = serve(Env::machine(S));
    let r = get(
        s.addr,
        Request::get("/").header("Cookie", format!("theme=dark; fly-machine-id={T}")),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.all("fly-replay"), [format!("prefer_instance={T}")]);
    assert!(r.body.is_empty());
    assert_eq!(r.one("content-length"), Some("0"));
    assert!(r.one("set-cookie").is_none());
    assert_eq!(s.runs(), 0, "the handler did not run");

    // Unknown routes are behind the middleware too.
    let r = get(s.addr, Request::get("/nowhere").cookie(T)).await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 0);
}

#[tokio::test]
async fn every_cookie_field_is_seen_in_any_case() {
    let s = serve(Env::machine(S));
    // Two Cookie fields: the view yields both values, in order.
    let r = get(
        s.addr,
        Request::get("/")
            .header("Cookie", "a=1")
            .header("COOKIE", format!("fly-machine-id={T}")),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    // A field naming this Machine settles duplicates.
    let r = get(s.addr, Request::get("/").cookie(T).cookie(S)).await;
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn query_strings_are_read_and_empty_ones_are_none() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, Request::get(format!("/?fly_instance_id={T}"))).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    let r = get(s.addr, Request::get("/?")).await;
    assert_eq!(r.status, 200);
    assert_pinned_here(r.one("set-cookie").unwrap());
    let r = get(
        s.addr,
        Request::get("/?fly_instance_id=x%3Bapp%3Dy&fly_instance_id="),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.one("fly-replay").is_none());
}

#[tokio::test]
async fn websocket_upgrades_pinned_elsewhere_get_the_replay_status_never_101() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, ws_upgrade(Request::get("/")).cookie(T)).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    assert!(r.one("upgrade").is_none());
    assert!(r.one("sec-websocket-accept").is_none());
    assert!(r.body.is_empty());
    // actix-web closes a connection whose upgrade it did not complete.
    assert_eq!(r.one("connection"), Some("close"));

    let r = get(
        s.addr,
        ws_upgrade(Request::get(format!("/?fly_instance_id={T}"))),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 0);
}

#[tokio::test]
async fn keep_alive_after_a_replayed_body_does_not_desync() {
    let s = serve(Env::machine(S));
    // A replayed POST whose body the middleware never read, then a GET on
    // the same connection: the body must not be taken for a request.
    let bytes = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nCookie: fly-machine-id={T}\r\nContent-Length: 18\r\n\r\nGET /nowhere HTTP/GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\nCookie: fly-machine-id={S}\r\n\r\n"
    );
    let replies = send_raw(s.addr, bytes.as_bytes()).await.unwrap();
    assert_eq!(replies[0].status, 307);
    assert_eq!(
        replies[0].one("fly-replay"),
        Some("prefer_instance=90801679a10038")
    );
    // actix-web either serves the next request or closes the connection;
    // it never parses the unread body as a request.
    for r in &replies[1..] {
        assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    }
    assert!(replies.len() <= 2);
    assert_eq!(s.runs(), replies.len() as u64 - 1);
}

#[tokio::test]
async fn skip_predicate_bypasses_the_middleware() {
    let sticky = Sticky::builder().build(Env::machine(S)).unwrap();
    let s = serve_with(
        sticky_actix_web::StickyMiddleware::new(sticky)
            .skip_if(|req: &ServiceRequest| req.headers().contains_key("x-internal")),
    );
    let r = get(
        s.addr,
        Request::get("/").header("X-Internal", "1").cookie(T),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
    let r = get(s.addr, Request::get("/").cookie(T)).await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn on_a_scope_the_engine_sees_the_full_path() {
    let sticky = Sticky::builder()
        .exclude(["/app/health"])
        .build(Env::machine(S))
        .unwrap();
    let (addr, _handle) = start(move |listener| {
        Ok(HttpServer::new(move || {
            App::new()
                .service(
                    web::scope("/app")
                        .route("/health", web::get().to(|| async { "ok" }))
                        .route("/page", web::get().to(|| async { "page" }))
                        .wrap(sticky_actix_web::StickyMiddleware::new(sticky.clone())),
                )
                .route("/outside", web::get().to(|| async { "outside" }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run())
    });
    let r = get(addr, Request::get("/app/health").cookie(T)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = get(addr, Request::get("/app/page").cookie(T)).await;
    assert_eq!(r.status, 307);
    let r = get(addr, Request::get("/outside").cookie(T)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "outside"));
}
