//! The middleware over real TCP sockets (a poem server on 127.0.0.1:0, the
//! suite's raw client), for what is particular to poem: the app's own
//! headers, endpoint errors, nesting and `original_uri()`, `skip_if` on the
//! poem request, the engine the middleware hands out, refusals and the
//! replay status. The shared scenarios run against the example app in
//! `examples/poem/tests/conformance.rs`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use futures_util::{SinkExt, StreamExt};
use poem::web::Data;
use poem::web::websocket::{Message, WebSocket};
use poem::{
    Body, Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler, post,
};
use sticky_poem::sticky_core::{self, Env, Unavailable};

/// Counts handler runs.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicUsize>);

impl Runs {
    fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[handler]
fn index(Data(runs): Data<&Runs>) -> &'static str {
    runs.hit();
    "hello"
}

#[handler]
fn own_cookie(Data(runs): Data<&Runs>) -> Response {
    runs.hit();
    Response::builder()
        .header("set-cookie", "session=abc; Path=/")
        .body("own cookie")
}

#[handler]
fn cached(Data(runs): Data<&Runs>) -> Response {
    runs.hit();
    Response::builder()
        .header("cache-control", "no-store")
        .body("cached")
}

#[handler]
async fn upload(Data(runs): Data<&Runs>, body: Body) -> poem::Result<String> {
    runs.hit();
    let bytes = body.into_bytes().await?;
    Ok(format!("bytes={}", bytes.len()))
}

#[handler]
fn ws(Data(runs): Data<&Runs>, ws: WebSocket) -> impl IntoResponse {
    runs.hit();
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(Message::Text(text))) = socket.next().await {
            if socket
                .send(Message::Text(format!("echo:{text}")))
                .await
                .is_err()
            {
                break;
            }
        }
    })
}

#[handler]
fn items(Data(runs): Data<&Runs>) -> &'static str {
    runs.hit();
    "items"
}

/// Reports the routed path and the original one.
#[handler]
fn paths(Data(runs): Data<&Runs>, req: &Request) -> String {
    runs.hit();
    format!("{} {}", req.uri().path(), req.original_uri().path())
}

/// The nested part of the app.
fn api() -> Route {
    Route::new()
        .at("/items", get(items))
        .at("/health", get(paths))
}

/// The test app with the middleware outermost.
fn app(sticky: sticky_core::Sticky, runs: &Runs) -> impl Endpoint + 'static {
    Route::new()
        .at("/", get(index))
        .at("/own-cookie", get(own_cookie))
        .at("/cached", get(cached))
        .at("/upload", post(upload))
        .at("/ws", get(ws))
        .nest("/api", api())
        .data(runs.clone())
        .with(sticky_poem::StickyMiddleware::new(sticky))
}

/// The middleware attached only to the routes nested under `/api`.
fn app_nested(sticky: sticky_core::Sticky, runs: &Runs) -> impl Endpoint + 'static {
    Route::new()
        .at("/", get(index))
        .nest(
            "/api",
            api().with(sticky_poem::StickyMiddleware::new(sticky)),
        )
        .data(runs.clone())
}

fn here() -> sticky_core::Sticky {
    sticky_core::Sticky::builder()
        .build(Env::machine(HERE))
        .expect("valid config")
}

async fn start(sticky: sticky_core::Sticky) -> (TestServer, Runs) {
    let runs = Runs::default();
    (serve(app(sticky, &runs)).await, runs)
}

fn assert_replayed_to(resp: &Reply, fly_replay: &str) {
    assert_eq!(resp.status, 307, "{resp:?}");
    assert_eq!(resp.all("fly-replay"), [fly_replay], "{resp:?}");
    assert!(resp.body.is_empty(), "{resp:?}");
    assert_eq!(resp.one("content-length"), Some("0"), "{resp:?}");
    assert!(resp.all("set-cookie").is_empty(), "{resp:?}");
}

fn assert_untouched(resp: &Reply) {
    assert!(resp.all("set-cookie").is_empty(), "{resp:?}");
    assert!(resp.all("fly-replay").is_empty(), "{resp:?}");
    assert!(resp.all("cache-control").is_empty(), "{resp:?}");
}

#[tokio::test]
async fn pinned_here_sticks_without_a_cookie() {
    let (server, runs) = start(here()).await;
    let resp = http_get(server.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
    assert_untouched(&resp);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn the_apps_cache_control_is_kept_not_duplicated() {
    let (server, runs) = start(here()).await;
    let resp = http_get(server.addr, "/cached", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(runs.get(), 1);
    assert_eq!(resp.all("cache-control"), ["no-store"]);
    assert_pin_cookie(resp.one("set-cookie").expect("set-cookie"), false);
}

#[tokio::test]
async fn the_apps_set_cookie_is_kept_next_to_ours() {
    let (server, runs) = start(here()).await;
    let resp = http_get(server.addr, "/own-cookie", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(runs.get(), 1);
    let cookies = resp.all("set-cookie");
    assert_eq!(cookies.len(), 2, "{resp:?}");
    assert_eq!(cookies[0], "session=abc; Path=/");
    assert_pin_cookie(cookies[1], false);
}

#[tokio::test]
async fn websocket_upgrade_pinned_elsewhere_gets_the_replay_status_not_101() {
    let (server, runs) = start(here()).await;
    let cookie = pinned(THERE);
    let mut conn = Connection::open(server.addr).await.expect("connect");
    let resp = conn
        .send(&ws_upgrade(common::Request::get("/ws").header("cookie", &cookie)).keep_alive())
        .await
        .expect("a response");
    assert_ne!(resp.status, 101);
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
    assert!(resp.one("upgrade").is_none(), "{resp:?}");
    assert!(resp.one("sec-websocket-accept").is_none(), "{resp:?}");
    assert_eq!(runs.get(), 0);
    // The connection was not handed to an upgrade: it still speaks HTTP.
    let next = conn
        .send(&common::Request::get("/").cookie(HERE).keep_alive())
        .await
        .expect("a response on the same connection");
    assert_eq!(next.status, 200);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn the_middleware_hands_out_its_engine_for_draining() {
    let middleware = sticky_poem::StickyMiddleware::new(here());
    let runs = Runs::default();
    let server = serve(
        Route::new()
            .at("/", get(index))
            .data(runs.clone())
            .with(middleware.clone()),
    )
    .await;
    middleware.sticky().drain();
    let resp = http_get(server.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_replayed_to(&resp, "elsewhere=true");
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn skip_if_bypasses_the_middleware() {
    let runs = Runs::default();
    let middleware = sticky_poem::StickyMiddleware::new(here())
        .skip_if(|req: &Request| req.headers().contains_key("x-internal"));
    let server = serve(
        Route::new()
            .at("/", get(index))
            .data(runs.clone())
            .with(middleware),
    )
    .await;
    let cookie = pinned(THERE);
    let resp = http_get(
        server.addr,
        "/",
        &[("cookie", &cookie), ("x-internal", "1")],
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_untouched(&resp);
    assert_eq!(runs.get(), 1);
    let resp = http_get(server.addr, "/", &[("cookie", &cookie)]).await;
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_refusal_answers_without_running_the_endpoint() {
    let sticky = sticky_core::Sticky::builder()
        .unavailable(Unavailable::Refuse)
        .build(Env::machine(HERE))
        .expect("valid config");
    let (server, runs) = start(sticky).await;
    let cookie = pinned(THERE);
    let resp = http_get(
        server.addr,
        "/",
        &[
            ("cookie", &cookie),
            ("fly-replay-src", "instance=90801679a10038;region=iad;t=1"),
        ],
    )
    .await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.body.is_empty());
    assert!(resp.all("fly-replay").is_empty());
    assert!(resp.all("set-cookie").is_empty());
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn the_replay_status_comes_from_the_engine() {
    let sticky = sticky_core::Sticky::builder()
        .replay_status(409)
        .build(Env::machine(HERE))
        .expect("valid config");
    let (server, runs) = start(sticky).await;
    let resp = http_get(server.addr, "/", &[("cookie", &pinned(THERE))]).await;
    assert_eq!(resp.status, 409);
    assert_eq!(
        resp.all("fly-replay"),
        [format!("prefer_instance={THERE}").as_str()]
    );
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn endpoint_errors_pass_through_unchanged() {
    let (server, _runs) = start(here()).await;
    // Poem's router answers an unknown path with an error: it is not
    // turned into a response here, so it carries no cookie.
    let resp = http_get(server.addr, "/missing", &[]).await;
    assert_eq!(resp.status, 404);
    assert!(resp.all("set-cookie").is_empty(), "{resp:?}");
    // The short-circuit still comes first.
    let resp = http_get(server.addr, "/missing", &[("cookie", &pinned(THERE))]).await;
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
}

#[tokio::test]
async fn endpoint_errors_close_their_connection_while_draining() {
    let sticky = here();
    let (server, _runs) = start(sticky.clone()).await;
    // Already replayed: a draining Machine serves it, and the router errs.
    let replayed = [("fly-replay-src", "instance=90801679a10038;region=iad;t=1")];
    let resp = http_get(server.addr, "/missing", &replayed).await;
    assert_eq!(resp.status, 404);
    assert!(resp.all("connection").is_empty(), "{resp:?}");
    sticky.drain();
    let resp = http_get(server.addr, "/missing", &replayed).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.all("connection"), ["close"], "{resp:?}");
    assert!(resp.all("set-cookie").is_empty(), "{resp:?}");
}

#[tokio::test]
async fn exclude_rules_match_the_original_path_inside_a_nest() {
    let sticky = sticky_core::Sticky::builder()
        .exclude(["/api/health"])
        .build(Env::machine(HERE))
        .expect("valid config");
    let runs = Runs::default();
    let server = serve(app_nested(sticky, &runs)).await;
    let cookie = pinned(THERE);

    // Poem rewrote the URI for the nested route; the rule saw the original.
    let resp = http_get(server.addr, "/api/health", &[("cookie", &cookie)]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "/health /api/health");
    assert_untouched(&resp);
    let resp = http_get(server.addr, "/api/health", &[]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_untouched(&resp);
    assert_eq!(runs.get(), 2);

    // The middleware is active for the other nested routes.
    let resp = http_get(server.addr, "/api/items", &[("cookie", &cookie)]).await;
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
    assert_eq!(runs.get(), 2);

    // And absent outside the nest.
    let resp = http_get(server.addr, "/", &[("cookie", &cookie)]).await;
    assert_eq!(resp.status, 200);
    assert_untouched(&resp);
    assert_eq!(runs.get(), 3);
}

#[tokio::test]
async fn exclude_rules_match_the_same_path_at_the_top() {
    let sticky = sticky_core::Sticky::builder()
        .exclude(["/api/health"])
        .build(Env::machine(HERE))
        .expect("valid config");
    let (server, runs) = start(sticky).await;
    let resp = http_get(server.addr, "/api/health", &[("cookie", &pinned(THERE))]).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_untouched(&resp);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_nested_route_is_replayed_like_a_top_level_one() {
    for nested in [false, true] {
        let runs = Runs::default();
        let server = if nested {
            serve(app_nested(here(), &runs)).await
        } else {
            serve(app(here(), &runs)).await
        };
        let resp = http_get(server.addr, "/api/items", &[("cookie", &pinned(THERE))]).await;
        assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
        assert_eq!(runs.get(), 0, "nested={nested}");

        let resp = http_get(server.addr, "/api/items", &[("cookie", &pinned(HERE))]).await;
        assert_eq!(resp.status, 200, "nested={nested}");
        assert_eq!(resp.text(), "items");
        assert_untouched(&resp);

        // The pin is for the whole site (Path=/), not for the nest.
        let resp = http_get(server.addr, "/api/items", &[]).await;
        assert_eq!(resp.status, 200, "nested={nested}");
        assert_pin_cookie(resp.one("set-cookie").expect("set-cookie"), false);
        assert_eq!(runs.get(), 2, "nested={nested}");
    }
}
