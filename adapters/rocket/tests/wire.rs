//! The sticky fairing over real TCP sockets: the example app (the shared app
//! contract) and small Rocket apps for the Rocket-specific points.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use rocket::http::Header;
use rocket::{Responder, get, post, put, routes};
use sticky_rocket::sticky_core::{Env, LargeBody, Sticky};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

const WS_UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

fn cookie(id: &str) -> String {
    format!("fly-machine-id={id}")
}

fn assert_replayed_to(reply: &Reply, target: &str) {
    assert_eq!(reply.status, 307, "{reply:?}");
    assert_eq!(
        reply.header("fly-replay"),
        Some(format!("prefer_instance={target}").as_str())
    );
    assert!(
        reply.body.is_empty(),
        "replay body must be empty: {reply:?}"
    );
    assert!(
        reply.all("set-cookie").is_empty(),
        "no Set-Cookie on a replay"
    );
}

// ---------------------------------------------------------------- contract

#[tokio::test]
async fn pinned_here_is_served_without_cookie() {
    let server = example(engine()).await;
    let reply = get(server.addr, "/", &[("Cookie", &cookie(HERE))]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("machine={HERE} handled=1"));
    assert!(reply.all("set-cookie").is_empty());
    assert!(reply.header("fly-replay").is_none());
}

#[tokio::test]
async fn first_visit_is_served_and_pinned() {
    let server = example(engine()).await;
    let reply = get(server.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), format!("machine={HERE} handled=1"));
    let cookies = reply.all("set-cookie");
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_pin_cookie(cookies[0], false);
    assert_eq!(reply.all("cache-control"), ["private"]);
    assert!(reply.header("fly-replay").is_none());
}

#[tokio::test]
async fn first_visit_over_https_gets_a_secure_cookie() {
    let server = example(engine()).await;
    let reply = get(server.addr, "/", &[("X-Forwarded-Proto", "https")]).await;
    assert_eq!(reply.status, 200);
    assert_pin_cookie(reply.header("set-cookie").expect("Set-Cookie"), true);
}

#[tokio::test]
async fn pinned_elsewhere_is_replayed_without_running_the_handler() {
    let server = example(engine()).await;
    let reply = get(server.addr, "/", &[("Cookie", &cookie(OTHER))]).await;
    assert_replayed_to(&reply, OTHER);
    assert_eq!(reply.header("content-length"), Some("0"));

    // A small upload (replayable) is replayed too, and not read here.
    let reply = send(
        server.addr,
        "POST",
        "/upload",
        &[("Cookie", &cookie(OTHER))],
        b"hello",
    )
    .await;
    assert_replayed_to(&reply, OTHER);

    assert_eq!(handled_before(server.addr).await, 0, "no handler ran");
}

#[tokio::test]
async fn injected_cookie_values_never_reach_fly_replay() {
    let server = example(engine()).await;
    for value in [
        format!("fly-machine-id={OTHER}%3Bapp%3Dx"),
        "fly-machine-id=x;app=y".to_owned(),
    ] {
        let reply = get(server.addr, "/", &[("Cookie", &value)]).await;
        assert_eq!(reply.status, 200, "{value}: {reply:?}");
        assert!(reply.header("fly-replay").is_none(), "{value}");
        assert_pin_cookie(reply.header("set-cookie").expect("re-pinned"), false);
    }
    assert_eq!(handled_before(server.addr).await, 2);
}

#[tokio::test]
async fn websocket_upgrade_pinned_elsewhere_is_replayed_not_upgraded() {
    let server = example(engine()).await;
    let cookie = cookie(OTHER);
    let mut headers = WS_UPGRADE.to_vec();
    headers.push(("Cookie", &cookie));
    let reply = get(server.addr, "/ws", &headers).await;
    assert_ne!(reply.status, 101);
    assert_replayed_to(&reply, OTHER);
    assert!(reply.header("sec-websocket-accept").is_none());
    assert!(reply.header("upgrade").is_none());

    // The browser form: the Machine ID in the query string.
    let headers = WS_UPGRADE.to_vec();
    let reply = get(
        server.addr,
        &format!("/ws?fly_instance_id={OTHER}"),
        &headers,
    )
    .await;
    assert_replayed_to(&reply, OTHER);

    assert_eq!(
        handled_before(server.addr).await,
        0,
        "the ws handler never ran"
    );
}

#[tokio::test]
async fn websocket_pinned_here_upgrades_and_echoes() {
    let server = example(engine()).await;
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .expect("ws request");
    request
        .headers_mut()
        .insert("cookie", cookie(HERE).parse().expect("header value"));
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("upgrade");
    assert_eq!(response.status(), 101);
    assert!(response.headers().get("set-cookie").is_none());

    for text in ["hello", "second message"] {
        ws.send(Message::text(text)).await.expect("send");
        let echo = loop {
            match ws.next().await.expect("open").expect("message") {
                Message::Text(t) => break t.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(echo, format!("{HERE}:{text}"));
    }
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn large_upload_pinned_elsewhere_is_served_here() {
    let server = example(engine()).await;
    let body = vec![b'x'; 2_000_000];
    let reply = send(
        server.addr,
        "POST",
        "/upload",
        &[("Cookie", &cookie(OTHER))],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text(), format!("machine={HERE} bytes=2000000"));
    assert!(reply.header("fly-replay").is_none());
    assert!(
        reply.all("set-cookie").is_empty(),
        "served here, not re-pinned"
    );
}

#[tokio::test]
async fn sixteen_megabyte_upload_fits_the_raised_limit() {
    let server = example(engine()).await;
    let body = vec![b'x'; 16 * 1024 * 1024];
    let reply = send(
        server.addr,
        "POST",
        "/upload",
        &[("Cookie", &cookie(HERE))],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.text(),
        format!("machine={HERE} bytes={}", 16 * 1024 * 1024)
    );
}

#[tokio::test]
async fn chunked_upload_pinned_elsewhere_is_served_here() {
    let server = example(engine()).await;
    let body = chunked_body(300_000, 65_536);
    let reply = send(
        server.addr,
        "POST",
        "/upload",
        &[("Cookie", &cookie(OTHER)), ("Transfer-Encoding", "chunked")],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text(), format!("machine={HERE} bytes=300000"));
    assert!(reply.header("fly-replay").is_none());
}

#[tokio::test]
async fn draining_replays_requests_pinned_here_elsewhere() {
    let sticky = engine();
    let server = example(sticky.clone()).await;
    sticky.drain();
    let reply = get(server.addr, "/", &[("Cookie", &cookie(HERE))]).await;
    assert_eq!(reply.status, 307, "{reply:?}");
    assert_eq!(reply.header("fly-replay"), Some("elsewhere=true"));
    assert!(reply.body.is_empty());
    // /health is excluded and keeps answering while draining.
    let reply = get(server.addr, "/health", &[]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    sticky.undrain();
    assert_eq!(handled_before(server.addr).await, 0);
}

#[tokio::test]
async fn not_on_fly_nothing_is_added() {
    let sticky = example_rocket::engine(Env::default()).expect("config");
    let server = example(sticky).await;
    for headers in [vec![], vec![("Cookie", cookie(OTHER))]] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = get(server.addr, "/", &headers).await;
        assert_eq!(reply.status, 200);
        assert!(reply.text().starts_with("machine=local handled="));
        assert!(reply.all("set-cookie").is_empty());
        assert!(reply.all("cache-control").is_empty());
        assert!(reply.header("fly-replay").is_none());
    }
}

#[tokio::test]
async fn health_is_excluded() {
    let server = example(engine()).await;
    let reply = get(server.addr, "/health", &[("Cookie", &cookie(OTHER))]).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    assert!(reply.all("set-cookie").is_empty());
    assert_eq!(
        handled_before(server.addr).await,
        0,
        "/health is not counted"
    );
}

// ------------------------------------------------- app's own headers

#[derive(Responder)]
#[response(status = 200)]
struct WithHeader {
    body: &'static str,
    header: Header<'static>,
}

#[get("/cached")]
fn cached() -> WithHeader {
    WithHeader {
        body: "cached",
        header: Header::new("Cache-Control", "max-age=60"),
    }
}

#[get("/own-cookie")]
fn own_cookie() -> WithHeader {
    WithHeader {
        body: "own cookie",
        header: Header::new("Set-Cookie", "theme=dark; Path=/"),
    }
}

fn custom(sticky: Sticky) -> rocket::Rocket<rocket::Build> {
    rocket::custom(example_rocket::test_config())
        .mount("/", routes![cached, own_cookie])
        .attach(sticky_rocket::StickyFairing::new(sticky))
}

#[tokio::test]
async fn apps_cache_control_is_kept_not_duplicated() {
    let server = launch(custom(engine())).await;
    let reply = get(server.addr, "/cached", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.all("cache-control"), ["max-age=60"]);
    assert_pin_cookie(reply.header("set-cookie").expect("pinned"), false);
}

#[tokio::test]
async fn apps_own_set_cookie_is_kept_next_to_ours() {
    let server = launch(custom(engine())).await;
    let reply = get(server.addr, "/own-cookie", &[]).await;
    assert_eq!(reply.status, 200);
    let cookies = reply.all("set-cookie");
    assert_eq!(cookies.len(), 2, "{cookies:?}");
    assert!(cookies.contains(&"theme=dark; Path=/"), "{cookies:?}");
    let ours = cookies
        .iter()
        .find(|c| c.starts_with("fly-machine-id="))
        .expect("ours");
    assert_pin_cookie(ours, false);
    assert_eq!(reply.all("cache-control"), ["private"]);
}

// ------------------------------------------------------ Rocket-specific

#[tokio::test]
async fn internal_route_is_unreachable_directly() {
    let server = example(engine()).await;
    let path = sticky_rocket::SHORT_CIRCUIT_PATH;
    // Pinned here: the fairing stores no short-circuit, the route forwards.
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"] {
        let reply = send(server.addr, method, path, &[("Cookie", &cookie(HERE))], b"").await;
        assert_eq!(reply.status, 404, "{method}: {reply:?}");
        assert!(reply.header("fly-replay").is_none());
    }
    // A first visit to it: 404 too (pinned, but nothing to replay).
    let reply = get(server.addr, path, &[]).await;
    assert_eq!(reply.status, 404);
    assert!(reply.header("fly-replay").is_none());
    // Not on Fly at all: 404.
    let off = example(example_rocket::engine(Env::default()).expect("config")).await;
    let reply = get(off.addr, path, &[]).await;
    assert_eq!(reply.status, 404);
    assert!(reply.header("fly-replay").is_none());
    assert_eq!(handled_before(server.addr).await, 0);
}

#[get("/__sticky/short-circuit")]
fn squatter() -> &'static str {
    "the app's own route"
}

#[get("/")]
fn index() -> &'static str {
    "index"
}

#[tokio::test]
async fn app_route_on_the_internal_path_never_wins_a_short_circuit() {
    let rocket = rocket::custom(example_rocket::test_config())
        .mount("/", routes![squatter, index])
        .attach(sticky_rocket::StickyFairing::new(engine()));
    let server = launch(rocket).await;
    // A direct request falls through to the app's own route.
    let reply = get(
        server.addr,
        "/__sticky/short-circuit",
        &[("Cookie", &cookie(HERE))],
    )
    .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "the app's own route")
    );
    // A replay of any path is still answered by the fairing's route.
    let reply = get(server.addr, "/", &[("Cookie", &cookie(OTHER))]).await;
    assert_replayed_to(&reply, OTHER);
    let reply = get(
        server.addr,
        "/__sticky/short-circuit",
        &[("Cookie", &cookie(OTHER))],
    )
    .await;
    assert_replayed_to(&reply, OTHER);
}

#[tokio::test]
async fn head_keeps_its_method_and_gets_the_replay_status() {
    let server = example(engine()).await;
    let reply = send(server.addr, "HEAD", "/", &[("Cookie", &cookie(OTHER))], b"").await;
    assert_eq!(reply.status, 307, "{reply:?}");
    assert_eq!(
        reply.header("fly-replay"),
        Some(format!("prefer_instance={OTHER}").as_str())
    );
    assert!(reply.body.is_empty());
    // HEAD pinned here still reaches the GET route (Rocket's auto-HEAD).
    let reply = send(server.addr, "HEAD", "/", &[("Cookie", &cookie(HERE))], b"").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.is_empty());
    assert_eq!(
        handled_before(server.addr).await,
        1,
        "only the HEAD pinned here ran"
    );
}

#[tokio::test]
async fn refusals_use_the_internal_route_too() {
    let sticky = Sticky::builder()
        .large_body(LargeBody::Refuse)
        .build(Env::machine(HERE))
        .expect("config");
    let server = example(sticky).await;
    let reply = send(
        server.addr,
        "POST",
        "/upload",
        &[("Cookie", &cookie(OTHER)), ("Transfer-Encoding", "chunked")],
        &chunked_body(10, 10),
    )
    .await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.header("fly-replay").is_none());
    assert!(reply.body.is_empty());
    assert_eq!(handled_before(server.addr).await, 0);
}

#[tokio::test]
async fn repeated_cookie_headers_are_all_seen() {
    let server = example(engine()).await;
    let theirs = cookie(OTHER);
    let reply = get(
        server.addr,
        "/",
        &[("Cookie", "theme=dark"), ("COOKIE", &theirs)],
    )
    .await;
    assert_replayed_to(&reply, OTHER);
}

#[tokio::test]
async fn non_utf8_cookie_header_is_dropped_by_rocket() {
    let server = example(engine()).await;
    // Rocket drops header values that are not UTF-8 before fairings run:
    // the cookie naming another Machine is never seen, so this is a first
    // visit (served here, pinned here), not a replay and not a crash.
    let mut raw = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCookie: a=".to_vec();
    raw.push(0xff);
    raw.extend_from_slice(format!("; fly-machine-id={OTHER}\r\n\r\n").as_bytes());
    let reply = send_raw(server.addr, &raw).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.header("fly-replay").is_none());
    assert_pin_cookie(reply.header("set-cookie").expect("pinned"), false);
}

#[put("/form")]
fn form_put() -> &'static str {
    "put"
}

#[post("/form")]
fn form_post() -> &'static str {
    "post"
}

#[tokio::test]
async fn method_override_is_applied_before_the_fairing() {
    // PUT is not sticky here; POST is. A form POST with `_method=put` is
    // seen by the engine as PUT, because Rocket rewrites the method first.
    let sticky = Sticky::builder()
        .skip_methods(["PUT"])
        .build(Env::machine(HERE))
        .expect("config");
    let rocket = rocket::custom(example_rocket::test_config())
        .mount("/", routes![form_put, form_post])
        .attach(sticky_rocket::StickyFairing::new(sticky));
    let server = launch(rocket).await;
    let theirs = cookie(OTHER);
    let form = [
        ("Cookie", theirs.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let reply = send(server.addr, "POST", "/form", &form, b"_method=put&a=1").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "put"),
        "{reply:?}"
    );
    let reply = send(server.addr, "POST", "/form", &form, b"a=1").await;
    assert_replayed_to(&reply, OTHER);
}

#[tokio::test]
async fn fairing_is_a_singleton() {
    let rocket = rocket::custom(example_rocket::test_config())
        .mount("/", routes![index])
        .attach(sticky_rocket::StickyFairing::new(engine()))
        .attach(sticky_rocket::StickyFairing::new(engine()));
    let server = launch(rocket).await;
    let reply = get(server.addr, "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.all("set-cookie").len(), 1, "{reply:?}");
    assert_eq!(reply.all("cache-control").len(), 1, "{reply:?}");
}

#[tokio::test]
async fn example_server_stops_on_notify() {
    let running = example_rocket::start(engine(), example_rocket::test_config())
        .await
        .expect("start");
    let addr = running.local_addr();
    assert_eq!(get(addr, "/health", &[]).await.status, 200);
    running.stop();
    tokio::time::timeout(std::time::Duration::from_secs(10), running.stopped())
        .await
        .expect("stops within 10 s")
        .expect("clean shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port closed"
    );
}
