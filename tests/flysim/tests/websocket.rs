//! WebSocket upgrades through the proxy, including a replayed handshake.

mod common;

use common::{App, Reply, config, start};
use flysim::EventKind;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn echo_once(ws_url: &str, headers: &[(&'static str, &str)], text: &str) -> String {
    let mut req = ws_url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text(text)).await.unwrap();
    let reply = loop {
        match ws.next().await.expect("a message").unwrap() {
            Message::Text(t) => break t.as_str().to_owned(),
            _ => continue,
        }
    };
    ws.close(None).await.ok();
    reply
}

fn ws_url(sim: &flysim::FlySim) -> String {
    format!("ws://{}/ws", sim.front_addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_proxied_both_ways() {
    let app = App::new(|_| Reply::websocket());
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let reply = echo_once(
        &ws_url(&sim),
        &[("fly-force-instance-id", &ids[1])],
        "hello",
    )
    .await;
    assert_eq!(reply, format!("{}:hello", ids[1]));
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("fly-client-ip"), Some("127.0.0.1"));
    // Several messages over one connection.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&sim))
        .await
        .unwrap();
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            panic!("expected text")
        };
        assert!(t.as_str().ends_with(&format!(":m{i}")));
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_handshake_connects_the_client_to_the_target() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let target = ids[2].clone();
    app.set_handler(move |s| {
        if s.machine == target {
            Reply::websocket()
        } else {
            // Never 101 on the replaying Machine: an ordinary status plus fly-replay.
            Reply::replay(&format!("instance={target}"))
        }
    });
    let reply = echo_once(&ws_url(&sim), &[("fly-force-instance-id", &ids[0])], "hi").await;
    assert_eq!(reply, format!("{}:hi", ids[2]));
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].machine, ids[0]);
    assert_eq!(seen[1].machine, ids[2]);
    assert!(seen[1].header("fly-replay-src").is_some());
    assert_eq!(seen[1].header("upgrade"), Some("websocket"));
    assert_eq!(
        seen[0].header("sec-websocket-key"),
        seen[1].header("sec-websocket-key")
    );
    assert_eq!(sim.machine(&ids[0]).unwrap().replays_sent, 1);
    let t = sim.machine(&ids[2]).unwrap();
    assert_eq!((t.served, t.replays_received), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_101_carrying_fly_replay_is_refused() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let ids = sim.machine_ids();
    let other = ids[1].clone();
    app.set_handler(move |_| {
        Reply::websocket().with_header("fly-replay", &format!("instance={other}"))
    });
    let err = tokio_tungstenite::connect_async(ws_url(&sim))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 502);
            assert_eq!(resp.headers().get("fly-error").unwrap(), "PA03");
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("101"), "{body}");
        }
        other => panic!("expected an HTTP error, got {other:?}"),
    }
    assert!(sim.events().iter().any(|e| e.kind == EventKind::ProxyError));
    sim.shutdown().await;
}
