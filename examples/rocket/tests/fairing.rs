//! The Rocket points of the fairing shown on the example app (the app
//! contract), beyond the shared scenarios: the internal route, HEAD, the
//! refusal route, repeated and non-UTF-8 `Cookie` headers, the raised upload
//! limit, and stopping.

use std::net::SocketAddr;

use conformance::client::{Request, Response, send};
use rocket::Shutdown;
use sticky_rocket::sticky_core::{Env, LargeBody, Sticky};

const HERE: &str = "148ed599c14189";
const OTHER: &str = "90801679a10038";

fn engine() -> Sticky {
    example_rocket::engine(Env::machine(HERE)).expect("valid config")
}

/// The example app, shut down when dropped.
struct Server {
    addr: SocketAddr,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.clone().notify();
    }
}

async fn example(sticky: Sticky) -> Server {
    let running = example_rocket::start(sticky, example_rocket::test_config())
        .await
        .expect("example app starts");
    Server {
        addr: running.local_addr(),
        shutdown: running.shutdown_handle(),
    }
}

async fn get(addr: SocketAddr, req: Request) -> Response {
    send(addr, &req).await.expect("a response")
}

/// The only value of header `name`; panics when there are several.
fn only(reply: &Response, name: &str) -> Option<String> {
    let all = reply.all(name);
    assert!(
        all.len() <= 1,
        "{name} appears {} times: {all:?}",
        all.len()
    );
    all.first().map(|v| (*v).to_owned())
}

/// The number of handler runs so far, read through `GET /` pinned here
/// (which counts itself: the value returned is one less than the body says).
async fn handled_before(addr: SocketAddr) -> u64 {
    let reply = get(addr, Request::get("/").cookie(HERE)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.handled().expect("a count") - 1
}

#[tokio::test]
async fn sixteen_megabyte_upload_fits_the_raised_limit() {
    let server = example(engine()).await;
    let len = 16 * 1024 * 1024;
    let upload = Request::new("POST", "/upload")
        .cookie(HERE)
        .body(vec![b'x'; len]);
    let reply = get(server.addr, upload).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.text(), format!("machine={HERE} bytes={len}"));
}

#[tokio::test]
async fn internal_route_is_unreachable_directly() {
    let server = example(engine()).await;
    let path = sticky_rocket::SHORT_CIRCUIT_PATH;
    // Pinned here: the fairing stores no short-circuit, the route forwards.
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"] {
        let mut req = Request::new(method, path).cookie(HERE);
        if method == "POST" {
            req = req.body(Vec::new());
        }
        let reply = get(server.addr, req).await;
        assert_eq!(reply.status, 404, "{method}: {reply:?}");
        assert!(only(&reply, "fly-replay").is_none());
    }
    // A first visit to it: 404 too (pinned, but nothing to replay).
    let reply = get(server.addr, Request::get(path)).await;
    assert_eq!(reply.status, 404);
    assert!(only(&reply, "fly-replay").is_none());
    // Not on Fly at all: 404.
    let off = example(example_rocket::engine(Env::default()).expect("config")).await;
    let reply = get(off.addr, Request::get(path)).await;
    assert_eq!(reply.status, 404);
    assert!(only(&reply, "fly-replay").is_none());
    assert_eq!(handled_before(server.addr).await, 0);
}

#[tokio::test]
async fn head_keeps_its_method_and_gets_the_replay_status() {
    let server = example(engine()).await;
    let reply = get(server.addr, Request::new("HEAD", "/").cookie(OTHER)).await;
    assert_eq!(reply.status, 307, "{reply:?}");
    assert_eq!(
        only(&reply, "fly-replay"),
        Some(format!("prefer_instance={OTHER}"))
    );
    assert!(reply.body.is_empty());
    // HEAD pinned here still reaches the GET route (Rocket's auto-HEAD).
    let reply = get(server.addr, Request::new("HEAD", "/").cookie(HERE)).await;
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
    let upload = Request::new("POST", "/upload")
        .cookie(OTHER)
        .chunked(vec![vec![b'a'; 10]]);
    let reply = get(server.addr, upload).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(only(&reply, "fly-replay").is_none());
    assert!(reply.body.is_empty());
    assert_eq!(handled_before(server.addr).await, 0);
}

#[tokio::test]
async fn repeated_cookie_headers_are_all_seen() {
    let server = example(engine()).await;
    let req = Request::get("/")
        .header("Cookie", "theme=dark")
        .header("COOKIE", format!("fly-machine-id={OTHER}"));
    let reply = get(server.addr, req).await;
    assert_eq!(reply.status, 307, "{reply:?}");
    assert_eq!(
        only(&reply, "fly-replay"),
        Some(format!("prefer_instance={OTHER}"))
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

#[tokio::test]
async fn non_utf8_cookie_header_is_dropped_by_rocket() {
    let server = example(engine()).await;
    // Rocket drops header values that are not UTF-8 before fairings run:
    // the cookie naming another Machine is never seen, so this is a first
    // visit (served here, pinned here), not a replay and not a crash.
    let mut value = b"a=".to_vec();
    value.push(0xff);
    value.extend_from_slice(format!("; fly-machine-id={OTHER}").as_bytes());
    let reply = get(server.addr, Request::get("/").header("Cookie", value)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(only(&reply, "fly-replay").is_none());
    let set_cookie = only(&reply, "set-cookie").expect("pinned");
    let mut parts = set_cookie.split(';').map(str::trim);
    assert_eq!(
        parts.next(),
        Some(format!("fly-machine-id={HERE}").as_str())
    );
    let attrs: Vec<&str> = parts.collect();
    for want in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=518400"] {
        assert!(
            attrs.iter().any(|a| a.eq_ignore_ascii_case(want)),
            "{want} missing in {set_cookie:?}"
        );
    }
    assert!(
        !attrs.iter().any(|a| a.eq_ignore_ascii_case("Secure")),
        "Secure in {set_cookie:?}"
    );
}

#[tokio::test]
async fn example_server_stops_on_notify() {
    let running = example_rocket::start(engine(), example_rocket::test_config())
        .await
        .expect("start");
    let addr = running.local_addr();
    assert_eq!(get(addr, Request::get("/health")).await.status, 200);
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
