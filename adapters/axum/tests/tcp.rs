//! sticky-axum over a real TCP socket, for what is particular to tower and
//! axum: the app's own headers, and `skip_if` on the framework's request.
//! The shared scenarios run against the example app in
//! `examples/axum/tests/conformance.rs`.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use conformance::client::{Request, send};
use sticky_axum::StickyLayer;
use sticky_axum::sticky_core::{Env, Sticky};
use tokio::net::TcpListener;

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";

async fn listen(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test]
async fn the_apps_own_headers_are_kept() {
    let sticky = Sticky::builder()
        .exclude(["/health"])
        .build(Env::machine(S))
        .unwrap();
    let app = Router::new()
        .route(
            "/own-headers",
            get(|| async {
                (
                    [("cache-control", "no-store"), ("set-cookie", "app=1")],
                    "own",
                )
            }),
        )
        .layer(StickyLayer::new(sticky));
    let addr = listen(app).await;
    let r = send(addr, &Request::get("/own-headers")).await.unwrap();
    assert_eq!(r.all("cache-control"), ["no-store"]);
    let cookies = r.all("set-cookie");
    assert_eq!(cookies.len(), 2);
    assert!(cookies.contains(&"app=1"));
}

#[tokio::test]
async fn skip_predicate_bypasses_the_layer() {
    let sticky = Sticky::builder().build(Env::machine(S)).unwrap();
    let app = Router::new().route("/", get(|| async { "hi" })).layer(
        StickyLayer::new(sticky)
            .skip_if(|r: &http::Request<axum::body::Body>| r.headers().contains_key("x-internal")),
    );
    let addr = listen(app).await;
    let r = send(addr, &Request::get("/").header("X-Internal", "1").cookie(T))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.one("set-cookie").is_none());
}
