//! The example app (`example-poem`) beyond the shared scenarios, over real
//! TCP: what its handler count leaves out, its raised upload limit, and its
//! WebSocket echo.

use std::net::SocketAddr;

use conformance::client::{Client, Request, Response, send};
use sticky_poem::sticky_core::{Env, Sticky};
use tokio::task::JoinHandle;

const HERE: &str = "148ed599c14189";
const THERE: &str = "90801679a10038";

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

async fn get(addr: SocketAddr, req: Request) -> Response {
    send(addr, &req).await.expect("a response")
}

#[tokio::test]
async fn health_is_never_sticky_and_not_counted() {
    let app = start(contract(Env::machine(HERE))).await;
    for req in [
        Request::get("/health").cookie(THERE),
        Request::get("/health"),
    ] {
        let resp = get(app.addr, req).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "ok");
        assert!(resp.all("set-cookie").is_empty());
        assert!(resp.all("fly-replay").is_empty());
    }
    let resp = get(app.addr, Request::get("/").cookie(HERE)).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=1"));
    app.stop().await;
}

#[tokio::test]
async fn a_16_mb_upload_is_read_whole() {
    let app = start(contract(Env::machine(HERE))).await;
    let len = 16 * 1024 * 1024;
    let upload = Request::new("POST", "/upload")
        .cookie(HERE)
        .body(vec![7u8; len]);
    let resp = get(app.addr, upload).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.text(), format!("machine={HERE} bytes={len}"));
    let resp = get(app.addr, Request::get("/").cookie(HERE)).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=2"));
    app.stop().await;
}

#[tokio::test]
async fn the_websocket_echoes_with_the_machine_id() {
    let app = start(contract(Env::machine(HERE))).await;
    let mut client = Client {
        cookie: Some(HERE.to_owned()),
    };
    let ws = client
        .websocket(app.addr, "/ws", &["hello".to_owned(), "again".to_owned()])
        .await
        .expect("a WebSocket session");
    assert_eq!(ws.handshake.status, 101);
    assert_eq!(
        ws.replies,
        [format!("{HERE}:hello"), format!("{HERE}:again")]
    );
    let resp = get(app.addr, Request::get("/").cookie(HERE)).await;
    assert_eq!(resp.text(), format!("machine={HERE} handled=2"));
    app.stop().await;
}
