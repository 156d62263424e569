//! `GET /metrics`: the engine's decision counters in Prometheus text, never
//! sticky, even for a client pinned to another Machine.

use std::sync::Arc;

use conformance::client::{Request, send};
use sticky_axum::sticky_core::{Env, Sticky};

#[tokio::test]
async fn metrics_answers_the_counters_and_is_never_sticky() {
    let sticky = Sticky::builder()
        .exclude(["/health", "/metrics"])
        .build(Env::machine("148ed599c14189"))
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example_socketio::app(Some(sticky), Arc::from("148ed599c14189"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let pinned = send(addr, &Request::get("/machine").cookie("90801679a10038"))
        .await
        .unwrap();
    assert_eq!(pinned.status, 307, "{}", pinned.summary());
    let res = send(addr, &Request::get("/metrics").cookie("90801679a10038"))
        .await
        .unwrap();
    assert_eq!(res.status, 200, "{}", res.summary());
    assert!(res.one("set-cookie").is_none() && res.one("fly-replay").is_none());
    assert!(
        res.one("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{}",
        res.summary()
    );
    let text = res.text();
    assert!(text.contains(
        "sticky_decisions_total{outcome=\"replay\",reason=\"pinned_elsewhere\",source=\"cookie\"} 1\n"
    ), "{text}");
    assert!(
        text.contains("sticky_decisions_total{outcome=\"stick\",reason=\"path_excluded\"} 1\n"),
        "{text}"
    );
}
