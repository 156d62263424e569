//! The example app (the contract every example honours), served by
//! `example_actix_web::server` exactly as its `main` serves it.

mod common;

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use common::*;
use futures_util::{SinkExt, StreamExt};
use sticky_actix_web::sticky_core::{Env, Sticky};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn serve(sticky: Sticky) -> (SocketAddr, ServerHandle) {
    start(|listener| example_actix_web::server(listener, sticky))
}

fn contract_sticky() -> Sticky {
    example_actix_web::sticky(Env::machine(S)).unwrap()
}

#[tokio::test]
async fn websocket_pinned_here_upgrades_and_echoes() {
    let (addr, _handle) = serve(contract_sticky());
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", format!("fly-machine-id={S}").parse().unwrap());
    let (mut ws, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.status(), 101);
    assert!(res.headers().get("set-cookie").is_none());
    for text in ["hi", "again"] {
        ws.send(Message::text(text)).await.unwrap();
        let echo = ws.next().await.unwrap().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), format!("{S}:{text}"));
    }
    ws.close(None).await.unwrap();

    // From a browser: the Machine ID in the query string.
    let url = format!("ws://{addr}/ws?fly_instance_id={S}");
    let (mut ws, res) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(res.status(), 101);
    ws.send(Message::text("q")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), format!("{S}:q"));
}

#[tokio::test]
async fn websocket_on_a_first_visit_upgrades_and_is_pinned() {
    let (addr, _handle) = serve(contract_sticky());
    let (mut ws, res) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(res.status(), 101);
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("fly-machine-id={S};")),
        "{cookie}"
    );
    ws.send(Message::text("x")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), format!("{S}:x"));
}

#[tokio::test]
async fn one_shared_counter_across_workers_and_health_is_not_counted() {
    let (addr, _handle) = serve(contract_sticky());
    // Separate connections land on different workers; the count is shared.
    for n in 1..=6 {
        let r = get(addr, "/", &cookie(S)).await;
        assert_eq!(r.text(), format!("machine={S} handled={n}"));
        let r = get(addr, "/health", &cookie(T)).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert!(r.one("set-cookie").is_none() && r.one("fly-replay").is_none());
    }
}

#[tokio::test]
async fn uploads_count_and_replayed_uploads_do_not() {
    let (addr, _handle) = serve(contract_sticky());
    let r = post(addr, "/upload", &cookie(T), b"small").await;
    assert_eq!(r.status, 307, "a small body pinned elsewhere is replayed");
    // 16 MB, pinned elsewhere: cannot be replayed, so it is served here.
    let body = vec![7u8; 16 * 1024 * 1024];
    let r = post(addr, "/upload", &cookie(T), &body).await;
    assert_eq!(
        (r.status, r.text()),
        (200, format!("machine={S} bytes={}", body.len()))
    );
    let r = get(addr, "/", &cookie(S)).await;
    assert_eq!(r.text(), format!("machine={S} handled=2"));
}

#[tokio::test]
async fn not_on_fly_the_machine_is_local_and_nothing_is_added() {
    let (addr, _handle) = serve(example_actix_web::sticky(Env::default()).unwrap());
    let r = get(addr, "/", &cookie(T)).await;
    assert_eq!(r.text(), "machine=local handled=1");
    assert!(r.one("set-cookie").is_none() && r.one("cache-control").is_none());
}

#[tokio::test]
async fn a_graceful_stop_closes_the_listener() {
    let (addr, handle) = serve(contract_sticky());
    assert_eq!(get(addr, "/health", "").await.status, 200);
    handle.stop(true).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
