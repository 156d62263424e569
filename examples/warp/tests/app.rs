//! The example app beyond the shared scenarios: WebSockets with and without
//! a pin, its raised upload limit and handler count, and graceful shutdown
//! after a drain.

use std::net::SocketAddr;

use conformance::client::{Client, Request, send};
use sticky_warp::sticky_core::{Env, Sticky};
use tokio::net::{TcpListener, TcpStream};

const S: &str = "148ed599c14189";
const T: &str = "90801679a10038";

async fn start(sticky: Sticky) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(example_warp::serve(
        listener,
        sticky,
        std::future::pending(),
    ));
    addr
}

#[tokio::test]
async fn websocket_pinned_here_upgrades_and_echoes() {
    let addr = start(example_warp::sticky(Env::machine(S)).unwrap()).await;
    for path in [format!("/ws?fly_instance_id={S}"), "/ws".to_owned()] {
        let ws = Client::default()
            .websocket(addr, &path, &["hi".to_owned()])
            .await
            .unwrap();
        assert_eq!(ws.handshake.status, 101);
        assert_eq!(ws.replies, [format!("{S}:hi")]);
    }
}

#[tokio::test]
async fn example_app_counts_and_takes_big_uploads() {
    let addr = start(example_warp::sticky(Env::machine(S)).unwrap()).await;

    let r = send(addr, &Request::get("/").cookie(S)).await.unwrap();
    assert_eq!(r.text(), format!("machine={S} handled=1"));
    let body = vec![b'x'; 16 << 20];
    let r = send(addr, &Request::new("POST", "/upload").cookie(S).body(body))
        .await
        .unwrap();
    assert_eq!(r.text(), format!("machine={S} bytes={}", 16 << 20));
    let r = send(addr, &Request::get("/health").cookie(T))
        .await
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert!(r.one("set-cookie").is_none());
    // A replayed upload does not count; /health does not count.
    let upload = Request::new("POST", "/upload")
        .cookie(T)
        .body(b"hi".to_vec());
    assert_eq!(send(addr, &upload).await.unwrap().status, 307);
    let r = send(addr, &Request::get("/").cookie(S)).await.unwrap();
    assert_eq!(r.text(), format!("machine={S} handled=3"));
}

/// Graceful shutdown as documented: drain, keep serving, then stop.
#[tokio::test]
async fn graceful_shutdown_after_drain() {
    let sticky = example_warp::sticky(Env::machine(S)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(example_warp::serve(listener, sticky.clone(), async {
        let _ = stopped.await;
    }));
    sticky.drain();
    let r = send(addr, &Request::get("/").cookie(S)).await.unwrap();
    assert_eq!(r.one("fly-replay"), Some("elsewhere=true"));
    let r = send(addr, &Request::get("/health")).await.unwrap();
    assert_eq!(r.text(), "ok");
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the server stops")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}
