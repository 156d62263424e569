//! The sticky fairing over real TCP sockets, on small Rocket apps, for what
//! is particular to Rocket: the app's own headers next to ours, an app route
//! on the fairing's internal path, `_method` overrides, attaching twice.
//! The shared scenarios, and the Rocket points shown on the example app,
//! run in `examples/rocket/tests/`.

mod common;

use common::*;
use conformance::client::{Request, Response, send};
use rocket::http::Header;
use rocket::{Responder, get, post, put, routes};
use sticky_rocket::sticky_core::{Env, Sticky};

async fn get(addr: std::net::SocketAddr, req: Request) -> Response {
    send(addr, &req).await.expect("a response")
}

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
    rocket::custom(test_config())
        .mount("/", routes![cached, own_cookie])
        .attach(sticky_rocket::StickyFairing::new(sticky))
}

#[tokio::test]
async fn apps_cache_control_is_kept_not_duplicated() {
    let server = launch(custom(engine())).await;
    let reply = get(server.addr, Request::get("/cached")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.all("cache-control"), ["max-age=60"]);
    assert_pin_cookie(&only(&reply, "set-cookie").expect("pinned"), false);
}

#[tokio::test]
async fn apps_own_set_cookie_is_kept_next_to_ours() {
    let server = launch(custom(engine())).await;
    let reply = get(server.addr, Request::get("/own-cookie")).await;
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
    let rocket = rocket::custom(test_config())
        .mount("/", routes![squatter, index])
        .attach(sticky_rocket::StickyFairing::new(engine()));
    let server = launch(rocket).await;
    // A direct request falls through to the app's own route.
    let reply = get(
        server.addr,
        Request::get("/__sticky/short-circuit").cookie(HERE),
    )
    .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "the app's own route")
    );
    // A replay of any path is still answered by the fairing's route.
    let reply = get(server.addr, Request::get("/").cookie(OTHER)).await;
    assert_replayed_to(&reply, OTHER);
    let reply = get(
        server.addr,
        Request::get("/__sticky/short-circuit").cookie(OTHER),
    )
    .await;
    assert_replayed_to(&reply, OTHER);
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
    let rocket = rocket::custom(test_config())
        .mount("/", routes![form_put, form_post])
        .attach(sticky_rocket::StickyFairing::new(sticky));
    let server = launch(rocket).await;
    let form = |body: &[u8]| {
        Request::new("POST", "/form")
            .cookie(OTHER)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
    };
    let reply = get(server.addr, form(b"_method=put&a=1")).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "put"),
        "{reply:?}"
    );
    let reply = get(server.addr, form(b"a=1")).await;
    assert_replayed_to(&reply, OTHER);
}

#[tokio::test]
async fn fairing_is_a_singleton() {
    let rocket = rocket::custom(test_config())
        .mount("/", routes![index])
        .attach(sticky_rocket::StickyFairing::new(engine()))
        .attach(sticky_rocket::StickyFairing::new(engine()));
    let server = launch(rocket).await;
    let reply = get(server.addr, Request::get("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.all("set-cookie").len(), 1, "{reply:?}");
    assert_eq!(reply.all("cache-control").len(), 1, "{reply:?}");
}
