//! The example app (`example-poem`) honours the app contract, over real TCP.

mod common;

use std::net::SocketAddr;

use common::*;
use futures_util::{SinkExt, StreamExt};
use sticky_poem::sticky_core::{Env, Sticky};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.server
            .await
            .expect("server task")
            .expect("server stopped cleanly");
    }
}

async fn start(sticky: Sticky) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(example_poem::serve(listener, sticky, async {
        let _ = stopped.await;
    }));
    Running { addr, stop, server }
}

fn contract(env: Env) -> Sticky {
    example_poem::configure(env).expect("valid config")
}

#[tokio::test]
async fn root_counts_handler_runs() {
    let app = start(contract(Env::machine(HERE))).await;
    let cookie = pinned(HERE);
    for n in 1..=2 {
        let resp = http_get(app.addr, "/", &[("cookie", &cookie)]).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), format!("machine={HERE} handled={n}"));
    }
    app.stop().await;
}

#[tokio::test]
async fn not_on_fly_the_id_is_local() {
    let app = start(contract(Env::default())).await;
    let resp = http_get(app.addr, "/", &[]).await;
    assert_eq!(resp.text(), "machine=local handled=1");
    assert!(resp.all("set-cookie").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn health_is_never_sticky_and_not_counted() {
    let app = start(contract(Env::machine(HERE))).await;
    for cookie in [pinned(THERE), String::new()] {
        let headers: Vec<(&str, &str)> = if cookie.is_empty() {
            vec![]
        } else {
            vec![("cookie", cookie.as_str())]
        };
        let resp = http_get(app.addr, "/health", &headers).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "ok");
        assert!(resp.all("set-cookie").is_empty());
        assert!(resp.all("fly-replay").is_empty());
    }
    let resp = http_get(app.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=1"));
    app.stop().await;
}

#[tokio::test]
async fn a_replayed_upload_does_not_run() {
    let app = start(contract(Env::machine(HERE))).await;
    let cookie = pinned(THERE);
    let mut raw = head(
        "POST",
        "/upload",
        &[("cookie", &cookie), ("content-length", "3")],
    );
    raw.push_str("abc");
    let resp = Conn::open(app.addr).await.request(raw.as_bytes()).await;
    assert_eq!(resp.status, 307);
    assert_eq!(
        resp.all("fly-replay"),
        [format!("prefer_instance={THERE}").as_str()]
    );
    let resp = http_get(app.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=1"));
    app.stop().await;
}

#[tokio::test]
async fn a_16_mb_upload_is_read_whole() {
    let app = start(contract(Env::machine(HERE))).await;
    let cookie = pinned(HERE);
    let len = 16 * 1024 * 1024;
    let mut conn = Conn::open(app.addr).await;
    conn.write(
        head(
            "POST",
            "/upload",
            &[("cookie", &cookie), ("content-length", &len.to_string())],
        )
        .as_bytes(),
    )
    .await;
    conn.write(&vec![7u8; len]).await;
    let resp = conn.response(false).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), format!("machine={HERE} bytes={len}"));
    let resp = http_get(app.addr, "/", &[("cookie", &cookie)]).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=2"));
    app.stop().await;
}

#[tokio::test]
async fn the_websocket_echoes_with_the_machine_id() {
    let app = start(contract(Env::machine(HERE))).await;
    let mut request = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("cookie", pinned(HERE).parse().expect("header value"));
    let stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let (mut socket, resp) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    for text in ["hello", "again"] {
        socket
            .send(tungstenite::Message::text(text))
            .await
            .expect("send");
        let reply = socket.next().await.expect("a reply").expect("a message");
        assert_eq!(
            reply.into_text().expect("text").as_str(),
            format!("{HERE}:{text}")
        );
    }
    socket.close(None).await.expect("close");
    let resp = http_get(app.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=2"));
    app.stop().await;
}

#[tokio::test]
async fn a_websocket_pinned_elsewhere_is_replayed() {
    let app = start(contract(Env::machine(HERE))).await;
    let cookie = pinned(THERE);
    let resp = Conn::open(app.addr)
        .await
        .request(ws_upgrade_head("/ws", &[("cookie", &cookie)]).as_bytes())
        .await;
    assert_eq!(resp.status, 307);
    assert_eq!(
        resp.all("fly-replay"),
        [format!("prefer_instance={THERE}").as_str()]
    );
    let resp = http_get(app.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=1"));
    app.stop().await;
}

#[tokio::test]
async fn draining_replays_elsewhere_but_health_still_answers() {
    let sticky = contract(Env::machine(HERE));
    let app = start(sticky.clone()).await;
    sticky.drain();
    let resp = http_get(app.addr, "/", &[("cookie", &pinned(HERE))]).await;
    assert_eq!(resp.status, 307);
    assert_eq!(resp.all("fly-replay"), ["elsewhere=true"]);
    let resp = http_get(app.addr, "/health", &[]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    app.stop().await;
}
