//! The middleware over real TCP sockets: a poem server on 127.0.0.1:0 and a
//! raw HTTP/1.1 client (or tokio-tungstenite for WebSockets).

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
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

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

fn assert_replayed_to(resp: &Resp, fly_replay: &str) {
    assert_eq!(resp.status, 307, "{resp:?}");
    assert_eq!(resp.all("fly-replay"), [fly_replay], "{resp:?}");
    assert!(resp.body.is_empty(), "{resp:?}");
    assert_eq!(resp.header("content-length"), Some("0"), "{resp:?}");
    assert!(resp.all("set-cookie").is_empty(), "{resp:?}");
}

fn assert_untouched(resp: &Resp) {
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
async fn first_visit_pins_here() {
    let (server, runs) = start(here()).await;
    let resp = http_get(server.addr, "/", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
    assert_eq!(runs.get(), 1);
    let cookies = resp.all("set-cookie");
    assert_eq!(cookies.len(), 1, "{resp:?}");
    assert_pin_cookie(cookies[0], false);
    assert_eq!(resp.all("cache-control"), ["private"]);
    assert!(resp.all("fly-replay").is_empty());
}

#[tokio::test]
async fn first_visit_over_https_gets_a_secure_cookie() {
    let (server, _runs) = start(here()).await;
    let resp = http_get(server.addr, "/", &[("x-forwarded-proto", "https")]).await;
    assert_eq!(resp.status, 200);
    let cookies = resp.all("set-cookie");
    assert_eq!(cookies.len(), 1, "{resp:?}");
    assert_pin_cookie(cookies[0], true);
}

#[tokio::test]
async fn the_apps_cache_control_is_kept_not_duplicated() {
    let (server, runs) = start(here()).await;
    let resp = http_get(server.addr, "/cached", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(runs.get(), 1);
    assert_eq!(resp.all("cache-control"), ["no-store"]);
    assert_pin_cookie(resp.header("set-cookie").expect("set-cookie"), false);
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
async fn pinned_elsewhere_is_replayed_without_running_the_endpoint() {
    let (server, runs) = start(here()).await;
    let resp = http_get(server.addr, "/", &[("cookie", &pinned(THERE))]).await;
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn the_pin_is_found_among_several_cookie_fields() {
    let (server, runs) = start(here()).await;
    let cookie = pinned(THERE);
    let resp = http_get(
        server.addr,
        "/",
        &[("cookie", "theme=dark"), ("cookie", &cookie)],
    )
    .await;
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn a_small_post_pinned_elsewhere_is_replayed_unread() {
    let (server, runs) = start(here()).await;
    let cookie = pinned(THERE);
    let mut raw = head(
        "POST",
        "/upload",
        &[("cookie", &cookie), ("content-length", "5")],
    );
    raw.push_str("hello");
    let resp = Conn::open(server.addr).await.request(raw.as_bytes()).await;
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn injected_cookie_values_never_reach_fly_replay() {
    let (server, runs) = start(here()).await;
    let encoded = format!("fly-machine-id={THERE}%3Bapp%3Dx");
    for cookie in [encoded.as_str(), "fly-machine-id=x;app=y"] {
        let resp = http_get(server.addr, "/", &[("cookie", cookie)]).await;
        assert_eq!(resp.status, 200, "{cookie}: {resp:?}");
        assert!(resp.all("fly-replay").is_empty(), "{cookie}: {resp:?}");
        let cookies = resp.all("set-cookie");
        assert_eq!(cookies.len(), 1, "{cookie}: {resp:?}");
        assert_pin_cookie(cookies[0], false);
    }
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn websocket_upgrade_pinned_elsewhere_gets_the_replay_status_not_101() {
    let (server, runs) = start(here()).await;
    let cookie = pinned(THERE);
    let mut conn = Conn::open(server.addr).await;
    let resp = conn
        .request(ws_upgrade_head("/ws", &[("cookie", &cookie)]).as_bytes())
        .await;
    assert_ne!(resp.status, 101);
    assert_replayed_to(&resp, &format!("prefer_instance={THERE}"));
    assert!(resp.header("upgrade").is_none(), "{resp:?}");
    assert!(resp.header("sec-websocket-accept").is_none(), "{resp:?}");
    assert_eq!(runs.get(), 0);
    // The connection was not handed to an upgrade: it still speaks HTTP.
    let here_cookie = pinned(HERE);
    let next = conn
        .request(head("GET", "/", &[("cookie", &here_cookie)]).as_bytes())
        .await;
    assert_eq!(next.status, 200);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn websocket_pinned_here_upgrades_and_echoes() {
    let (server, runs) = start(here()).await;
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("cookie", pinned(HERE).parse().expect("header value"));
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut socket, resp) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().get("fly-replay").is_none());
    assert!(resp.headers().get("set-cookie").is_none());
    socket
        .send(tungstenite::Message::text("hi"))
        .await
        .expect("send");
    let reply = socket.next().await.expect("a reply").expect("a message");
    assert_eq!(reply.into_text().expect("text").as_str(), "echo:hi");
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_large_upload_pinned_elsewhere_is_served_here() {
    let (server, runs) = start(here()).await;
    let cookie = pinned(THERE);
    let body = vec![b'x'; 2_000_000];
    let mut conn = Conn::open(server.addr).await;
    conn.write(
        head(
            "POST",
            "/upload",
            &[("cookie", &cookie), ("content-length", "2000000")],
        )
        .as_bytes(),
    )
    .await;
    conn.write(&body).await;
    let resp = conn.response(false).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "bytes=2000000");
    assert!(resp.all("fly-replay").is_empty());
    // Served here without re-pinning: the user stays pinned to THERE.
    assert!(resp.all("set-cookie").is_empty());
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_chunked_upload_pinned_elsewhere_is_served_here() {
    let (server, runs) = start(here()).await;
    let cookie = pinned(THERE);
    let mut raw = head(
        "POST",
        "/upload",
        &[("cookie", &cookie), ("transfer-encoding", "chunked")],
    );
    raw.push_str("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    let resp = Conn::open(server.addr).await.request(raw.as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), "bytes=11");
    assert!(resp.all("fly-replay").is_empty());
    assert!(resp.all("set-cookie").is_empty());
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn draining_replays_pinned_here_requests_elsewhere() {
    let sticky = here();
    let (server, runs) = start(sticky.clone()).await;
    sticky.drain();
    let resp = http_get(server.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_replayed_to(&resp, "elsewhere=true");
    let resp = http_get(server.addr, "/", &[]).await;
    assert_replayed_to(&resp, "elsewhere=true");
    assert_eq!(runs.get(), 0);
    sticky.undrain();
    let resp = http_get(server.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_eq!(resp.status, 200);
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
async fn not_on_fly_nothing_is_added() {
    let sticky = sticky_core::Sticky::builder()
        .build(Env::default())
        .expect("valid config");
    let (server, runs) = start(sticky).await;
    for cookie in [None, Some(pinned(THERE)), Some(pinned(HERE))] {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let resp = http_get(server.addr, "/", &headers).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_untouched(&resp);
    }
    assert_eq!(runs.get(), 3);
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
        assert_pin_cookie(resp.header("set-cookie").expect("set-cookie"), false);
        assert_eq!(runs.get(), 2, "nested={nested}");
    }
}
