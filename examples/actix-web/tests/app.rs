//! The example app beyond the shared scenarios, served by
//! `example_actix_web::server` exactly as its `main` serves it: WebSocket
//! sessions, one handler count across workers, the raised upload limit, a
//! graceful stop.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use conformance::client::{Client, Request, Response, send};
use sticky_actix_web::sticky_core::{Env, Sticky};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";

fn serve(sticky: Sticky) -> (SocketAddr, ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = example_actix_web::server(listener, sticky).unwrap();
    let handle = example_actix_web::run_on_thread(server).unwrap();
    (addr, handle)
}

fn contract_sticky() -> Sticky {
    example_actix_web::sticky(Env::machine(S)).unwrap()
}

async fn get(addr: SocketAddr, req: Request) -> Response {
    send(addr, &req).await.unwrap()
}

fn texts(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|t| (*t).to_owned()).collect()
}

#[tokio::test]
async fn websocket_pinned_here_upgrades_and_echoes() {
    let (addr, _handle) = serve(contract_sticky());
    let mut pinned = Client {
        cookie: Some(S.to_owned()),
    };
    let ws = pinned
        .websocket(addr, "/ws", &texts(&["hi", "again"]))
        .await
        .unwrap();
    assert_eq!(ws.handshake.status, 101);
    assert!(ws.handshake.one("set-cookie").is_none());
    assert_eq!(ws.replies, [format!("{S}:hi"), format!("{S}:again")]);

    // From a browser: the Machine ID in the query string.
    let ws = Client::default()
        .websocket(addr, &format!("/ws?fly_instance_id={S}"), &texts(&["q"]))
        .await
        .unwrap();
    assert_eq!(ws.handshake.status, 101);
    assert_eq!(ws.replies, [format!("{S}:q")]);
}

#[tokio::test]
async fn websocket_on_a_first_visit_upgrades_and_is_pinned() {
    let (addr, _handle) = serve(contract_sticky());
    let ws = Client::default()
        .websocket(addr, "/ws", &texts(&["x"]))
        .await
        .unwrap();
    assert_eq!(ws.handshake.status, 101);
    let cookie = ws.handshake.one("set-cookie").unwrap();
    assert!(
        cookie.starts_with(&format!("fly-machine-id={S};")),
        "{cookie}"
    );
    assert_eq!(ws.replies, [format!("{S}:x")]);
}

#[tokio::test]
async fn one_shared_counter_across_workers_and_health_is_not_counted() {
    let (addr, _handle) = serve(contract_sticky());
    // Separate connections land on different workers; the count is shared.
    for n in 1..=6 {
        let r = get(addr, Request::get("/").cookie(S)).await;
        assert_eq!(r.text(), format!("machine={S} handled={n}"));
        let r = get(addr, Request::get("/health").cookie(T)).await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
        assert!(r.one("set-cookie").is_none() && r.one("fly-replay").is_none());
    }
}

#[tokio::test]
async fn uploads_count_and_replayed_uploads_do_not() {
    let (addr, _handle) = serve(contract_sticky());
    let upload = |body: Vec<u8>| Request::new("POST", "/upload").cookie(T).body(body);
    let r = get(addr, upload(b"small".to_vec())).await;
    assert_eq!(r.status, 307, "a small body pinned elsewhere is replayed");
    // 16 MB, pinned elsewhere: cannot be replayed, so it is served here.
    let len = 16 * 1024 * 1024;
    let r = get(addr, upload(vec![7u8; len])).await;
    assert_eq!(
        (r.status, r.text()),
        (200, format!("machine={S} bytes={len}"))
    );
    let r = get(addr, Request::get("/").cookie(S)).await;
    assert_eq!(r.text(), format!("machine={S} handled=2"));
}

#[tokio::test]
async fn a_graceful_stop_closes_the_listener() {
    let (addr, handle) = serve(contract_sticky());
    assert_eq!(get(addr, Request::get("/health")).await.status, 200);
    handle.stop(true).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
