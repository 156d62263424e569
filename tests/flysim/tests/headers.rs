//! The request headers Fly's proxy adds, overwrites, appends or passes through.

mod common;

use bytes::Bytes;
use common::{App, config, get, get_with, start};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[tokio::test]
async fn fly_headers_are_added() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let port = sim.front_addr().port().to_string();
    let resp = get(&format!("{}/path?q=1", sim.url())).await;
    assert_eq!(resp.status, 200);
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.path, "/path?q=1");
    assert_eq!(seen.header("fly-client-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("fly-region"), Some("iad"));
    assert_eq!(seen.header("fly-forwarded-port"), Some(port.as_str()));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-port"), Some(port.as_str()));
    assert_eq!(seen.header("x-forwarded-ssl"), Some("on"));
    assert_eq!(seen.header("via"), Some("1.1 fly.io"));
    assert_eq!(
        seen.header("host"),
        Some(sim.front_addr().to_string().as_str())
    );
    let request_id = seen.header("fly-request-id").unwrap();
    assert_eq!(request_id.len(), 30, "{request_id}");
    assert!(request_id.ends_with("-iad"));
    // The client sees the same request ID, and Via, on the response.
    assert_eq!(resp.header("fly-request-id"), Some(request_id));
    assert!(resp.header("via").unwrap().contains("fly.io"));
    // None of the proxy-to-Machine routing headers appear on a plain request.
    for h in [
        "fly-replay-src",
        "fly-replay-failed",
        "fly-preferred-instance-unavailable",
    ] {
        assert!(seen.header(h).is_none(), "{h}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn client_sent_fly_headers_are_overwritten_or_appended() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    get_with(
        &sim.url(),
        &[
            ("fly-client-ip", "6.6.6.6"),
            ("fly-region", "syd"),
            ("fly-request-id", "spoofed"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "1"),
            ("via", "1.1 other-proxy"),
        ],
    )
    .await;
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.header("fly-client-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("fly-region"), Some("iad"));
    assert_ne!(seen.header("fly-request-id"), Some("spoofed"));
    assert_eq!(seen.header("x-forwarded-for"), Some("1.2.3.4, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_ne!(seen.header("x-forwarded-port"), Some("1"));
    let via: Vec<_> = seen
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(via, ["1.1 other-proxy", "1.1 fly.io"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn client_sent_replay_headers_pass_through_unchanged() {
    // Fly does not document stripping these: a middleware must cope with spoofing.
    let app = App::echo();
    let sim = start(config(), &app).await;
    let spoofed = [
        (
            "fly-replay-src",
            "instance=00000000000000;region=iad;t=1;state=x",
        ),
        (
            "fly-replay-failed",
            "instance=00000000000000;reason=timeout",
        ),
        ("fly-preferred-instance-unavailable", "00000000000000"),
    ];
    let resp = get_with(&sim.url(), &spoofed).await;
    assert_eq!(resp.status, 200);
    let seen = app.seen().pop().unwrap();
    for (name, value) in spoofed {
        assert_eq!(seen.header(name), Some(value), "{name}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn forwarded_proto_and_port_are_configurable() {
    let app = App::echo();
    let sim = start(
        config().forwarded_proto("http").forwarded_port(Some(443)),
        &app,
    )
    .await;
    get(&sim.url()).await;
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-ssl"), Some("off"));
    assert_eq!(seen.header("x-forwarded-port"), Some("443"));
    assert_eq!(seen.header("fly-forwarded-port"), Some("443"));
    sim.shutdown().await;
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    get_with(
        &sim.url(),
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("x-kept", "1"),
        ],
    )
    .await;
    let seen = app.seen().pop().unwrap();
    assert!(seen.header("x-secret").is_none());
    assert_eq!(seen.header("x-kept"), Some("1"));
    sim.shutdown().await;
}

#[tokio::test]
async fn http2_requests_get_via_2() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let stream = tokio::net::TcpStream::connect(sim.front_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("{}/h2", sim.url()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.starts_with(b"machine="));
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.header("via"), Some("2 fly.io"));
    assert_eq!(
        seen.header("host"),
        Some(sim.front_addr().to_string().as_str())
    );
    sim.shutdown().await;
}
