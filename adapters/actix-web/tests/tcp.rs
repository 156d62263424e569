//! sticky-actix-web end to end over real TCP sockets: raw HTTP/1.1 bytes in,
//! bytes out, against a real `HttpServer` running on its own actix thread.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::dev::{ServerHandle, ServiceRequest};
use actix_web::{App, HttpResponse, HttpServer, web};
use common::*;
use sticky_actix_web::Skip;
use sticky_actix_web::sticky_core::{Env, Sticky};

struct Server {
    addr: SocketAddr,
    runs: Arc<AtomicU64>,
    sticky: Sticky,
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
    let sticky = middleware.sticky().clone();
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
        sticky,
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
    let r = get(s.addr, "/", &cookie(S)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert!(r.one("set-cookie").is_none());
    assert!(r.one("cache-control").is_none());
    assert!(r.one("fly-replay").is_none());
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn first_visit_is_pinned_here() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, "/", "").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hi"));
    assert_eq!(r.all("set-cookie").len(), 1);
    let cookie = r.one("set-cookie").unwrap();
    assert_pinned_here(cookie);
    assert!(!cookie.split("; ").any(|p| p == "Secure"), "{cookie}");
    assert_eq!(r.all("cache-control"), ["private"]);
    assert_eq!(s.runs(), 1);

    let r = get(s.addr, "/", "X-Forwarded-Proto: https\r\n").await;
    let cookie = r.one("set-cookie").unwrap();
    assert_pinned_here(cookie);
    assert!(cookie.split("; ").any(|p| p == "Secure"), "{cookie}");
}

#[tokio::test]
async fn the_apps_own_headers_are_kept() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, "/own-headers", "").await;
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
    let r = get(s.addr, "/fails", "").await;
    assert_eq!(r.status, 400);
    assert_pinned_here(r.one("set-cookie").unwrap());
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn pinned_elsewhere_is_replayed_without_running_the_handler() {
    let s = serve(Env::machine(S));
    let r = get(
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
    assert_eq!(s.runs(), 0, "the handler did not run");

    // Unknown routes are behind the middleware too.
    let r = get(s.addr, "/nowhere", &cookie(T)).await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 0);
}

#[tokio::test]
async fn every_cookie_field_is_seen_in_any_case() {
    let s = serve(Env::machine(S));
    // Two Cookie fields: the view yields both values, in order.
    let r = get(
        s.addr,
        "/",
        &format!("Cookie: a=1\r\nCOOKIE: fly-machine-id={T}\r\n"),
    )
    .await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    // A field naming this Machine settles duplicates.
    let r = get(
        s.addr,
        "/",
        &format!("Cookie: fly-machine-id={T}\r\nCookie: fly-machine-id={S}\r\n"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
    assert_eq!(s.runs(), 1);
}

#[tokio::test]
async fn injection_is_re_pinned_not_replayed() {
    let s = serve(Env::machine(S));
    for value in [
        format!("{T}%3Bapp%3Dx"),
        "x;app=y".to_owned(),
        format!("{T},app=x"),
        "\"x\"".to_owned(),
        T.to_uppercase(),
    ] {
        let r = get(s.addr, "/", &format!("Cookie: fly-machine-id={value}\r\n")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "hi"), "{value}");
        assert!(r.one("fly-replay").is_none(), "{value}");
        assert_pinned_here(r.one("set-cookie").unwrap());
    }
    assert_eq!(s.runs(), 5);
}

#[tokio::test]
async fn query_strings_are_read_and_empty_ones_are_none() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, &format!("/?fly_instance_id={T}"), "").await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    let r = get(s.addr, "/?", "").await;
    assert_eq!(r.status, 200);
    assert_pinned_here(r.one("set-cookie").unwrap());
    let r = get(s.addr, "/?fly_instance_id=x%3Bapp%3Dy&fly_instance_id=", "").await;
    assert_eq!(r.status, 200);
    assert!(r.one("fly-replay").is_none());
}

#[tokio::test]
async fn websocket_upgrades_pinned_elsewhere_get_the_replay_status_never_101() {
    let s = serve(Env::machine(S));
    let r = get(s.addr, "/", &format!("{UPGRADE}{}", cookie(T))).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    assert!(r.one("upgrade").is_none());
    assert!(r.one("sec-websocket-accept").is_none());
    assert!(r.body.is_empty());
    // actix-web closes a connection whose upgrade it did not complete.
    assert_eq!(r.one("connection"), Some("close"));

    let r = get(s.addr, &format!("/?fly_instance_id={T}"), UPGRADE).await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 0);
}

#[tokio::test]
async fn websocket_upgrade_of_the_example_is_replayed_and_the_handler_never_runs() {
    let sticky = example_actix_web::sticky(Env::machine(S)).unwrap();
    let contract = example_actix_web::Contract::new(sticky.clone());
    let app = contract.clone();
    let (addr, _handle) = start(move |listener| {
        Ok(HttpServer::new(move || app.app())
            .workers(1)
            .disable_signals()
            .listen(listener)?
            .run())
    });
    let r = get(addr, "/ws", &format!("{UPGRADE}{}", cookie(T))).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("prefer_instance=90801679a10038"));
    assert_eq!(contract.handled(), 0, "no upgrade, no handler run");
    let r = get(addr, "/", &cookie(S)).await;
    assert_eq!(r.text(), format!("machine={S} handled=1"));
}

#[tokio::test]
async fn large_and_chunked_uploads_pinned_elsewhere_are_served_here() {
    let s = serve(Env::machine(S));
    let body = vec![b'x'; 2_000_000];
    let r = post(s.addr, "/upload", &cookie(T), &body).await;
    assert_eq!((r.status, r.text().as_str()), (200, "bytes=2000000"));
    assert!(r.one("fly-replay").is_none());
    assert!(r.one("set-cookie").is_none(), "served here, not re-pinned");

    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}Transfer-Encoding: chunked\r\n\r\n",
        cookie(T)
    );
    let r = send(s.addr, &head, b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").await;
    assert_eq!((r.status, r.text().as_str()), (200, "bytes=11"));
    assert!(r.one("fly-replay").is_none());

    // A small upload pinned elsewhere is replayed, its body unread.
    let r = post(s.addr, "/upload", &cookie(T), b"hello").await;
    assert_eq!(r.status, 307);
    assert_eq!(s.runs(), 2);
}

#[tokio::test]
async fn keep_alive_after_a_replayed_body_does_not_desync() {
    let s = serve(Env::machine(S));
    // A replayed POST whose body the middleware never read, then a GET on
    // the same connection: the body must not be taken for a request.
    let bytes = format!(
        "POST /upload HTTP/1.1\r\nHost: app\r\n{}Content-Length: 18\r\n\r\nGET /nowhere HTTP/GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n{}\r\n",
        cookie(T),
        cookie(S)
    );
    let replies = exchange(s.addr, bytes.as_bytes()).await;
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
async fn drain_replays_pinned_here_and_new_requests_elsewhere() {
    let s = serve(Env::machine(S));
    s.sticky.drain();
    let r = get(s.addr, "/", &cookie(S)).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("elsewhere=true"));
    let r = get(s.addr, "/", "").await;
    assert_eq!(r.status, 307);
    assert_eq!(r.one("fly-replay"), Some("elsewhere=true"));
    let r = get(s.addr, "/health", &cookie(S)).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ok"),
        "excluded paths still serve"
    );
    assert_eq!(s.runs(), 0);
    s.sticky.undrain();
    assert_eq!(get(s.addr, "/", &cookie(S)).await.status, 200);
}

#[tokio::test]
async fn already_replayed_requests_are_served_here_and_re_pinned() {
    let s = serve(Env::machine(S));
    let r = get(
        s.addr,
        "/",
        &format!(
            "{}Fly-Replay-Src: instance={T};region=ord;t=1\r\n",
            cookie(T)
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.one("fly-replay").is_none());
    assert_pinned_here(r.one("set-cookie").unwrap());
}

#[tokio::test]
async fn not_on_fly_adds_nothing() {
    let s = serve(Env::default());
    for extra in [cookie(T), String::new(), cookie(S)] {
        let r = get(s.addr, "/", &extra).await;
        assert_eq!(r.status, 200);
        assert!(
            r.one("set-cookie").is_none()
                && r.one("fly-replay").is_none()
                && r.one("cache-control").is_none()
        );
    }
    assert_eq!(s.runs(), 3);
}

#[tokio::test]
async fn skip_predicate_bypasses_the_middleware() {
    let sticky = Sticky::builder().build(Env::machine(S)).unwrap();
    let s = serve_with(
        sticky_actix_web::StickyMiddleware::new(sticky)
            .skip_if(|req: &ServiceRequest| req.headers().contains_key("x-internal")),
    );
    let r = get(s.addr, "/", &format!("X-Internal: 1\r\n{}", cookie(T))).await;
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
    let r = get(s.addr, "/", &cookie(T)).await;
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
    let r = get(addr, "/app/health", &cookie(T)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = get(addr, "/app/page", &cookie(T)).await;
    assert_eq!(r.status, 307);
    let r = get(addr, "/outside", &cookie(T)).await;
    assert_eq!((r.status, r.text().as_str()), (200, "outside"));
}
