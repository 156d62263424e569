//! `h2_backend`: h2c with prior knowledge to the Machines, h2c and HTTP/1.1
//! from clients, and what HTTP/2 changes for a sticky app: `Cookie` split
//! over several fields, bodies without `content-length`, and an app that
//! does not speak h2c.

mod common;

use bytes::Bytes;
use common::{App, Reply, config, full_body, get_with, send, send_h2, served_by, start};
use flysim::{EventKind, FlyToml};
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio_tungstenite::tungstenite::Message;

fn h2_config() -> flysim::Config {
    config().h2_backend(true)
}

/// A body of several chunks with no declared length.
fn chunked(parts: &[&'static str]) -> common::TestBody {
    let frames: Vec<Result<Frame<Bytes>, common::BoxError>> = parts
        .iter()
        .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
        .collect();
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_followed_over_h2c() {
    let app = App::echo().speaking_h2c();
    let sim = start(h2_config(), &app).await;
    let ids = sim.machine_ids();
    let (first, target) = (ids[0].clone(), ids[2].clone());
    let to = target.clone();
    app.set_handler(move |s| {
        if s.machine == to {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::replay(&format!("instance={to}"))
        }
    });
    let url = format!("{}/rooms/1", sim.url());
    let req = Request::get(&url)
        .header("fly-force-instance-id", &first)
        .header("te", "trailers")
        .body(full_body(Bytes::new()))
        .unwrap();
    let resp = send_h2(req).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(served_by(&resp), target);
    assert_eq!(resp.header("via"), Some("2 fly.io"));
    assert!(resp.header("fly-replay").is_none());
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(
            s.version,
            Version::HTTP_2,
            "{} saw {:?}",
            s.machine,
            s.version
        );
        // The one TE value HTTP/2 allows passes (gRPC servers ask for it).
        assert_eq!(s.header("te"), Some("trailers"));
        assert!(s.header("fly-request-id").is_some());
    }
    assert_eq!(seen[0].machine, first);
    assert_eq!(seen[1].machine, target);
    assert!(seen[1].header("fly-replay-src").is_some());
    // An HTTP/1.1 client is served over h2c to the Machines too.
    let resp = get_with(&url, &[("fly-force-instance-id", &first)]).await;
    assert_eq!(served_by(&resp), target);
    assert_eq!(resp.header("via"), Some("1.1 fly.io"));
    assert!(app.seen().iter().all(|s| s.version == Version::HTTP_2));
    // Many requests share the pooled connections.
    for _ in 0..10 {
        let req = Request::get(&url).body(full_body(Bytes::new())).unwrap();
        assert_eq!(served_by(&send_h2(req).await), target);
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_with_a_timeout_gets_a_connection_of_its_own_over_h2c() {
    let app = App::echo().speaking_h2c();
    let sim = start(h2_config(), &app).await;
    let ids = sim.machine_ids();
    let (first, target) = (ids[0].clone(), ids[1].clone());
    let to = target.clone();
    let long = "x".repeat(200_000);
    let body = long.clone();
    app.set_handler(move |s| {
        if s.machine == to {
            Reply::ok(format!("machine={} {body}", s.machine))
        } else {
            Reply::replay(&format!("instance={to};timeout=5s"))
        }
    });
    let req = Request::get(sim.url())
        .header("fly-force-instance-id", &first)
        .body(full_body(Bytes::new()))
        .unwrap();
    let resp = send_h2(req).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    // The whole response arrives, though the connection made for it is
    // not kept.
    assert_eq!(resp.text(), format!("machine={target} {long}"));
    assert!(app.seen().iter().all(|s| s.version == Version::HTTP_2));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_h2_backend_the_machines_get_http1_even_from_an_h2_client() {
    let app = App::echo().speaking_h2c();
    let sim = start(config(), &app).await;
    let req = Request::get(sim.url())
        .body(full_body(Bytes::new()))
        .unwrap();
    let resp = send_h2(req).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("via"), Some("2 fly.io"));
    assert_eq!(app.seen()[0].version, Version::HTTP_11);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_split_over_several_fields_reaches_the_machine_as_sent() {
    let app = App::echo().speaking_h2c();
    let sim = start(h2_config(), &app).await;
    let req = Request::get(sim.url())
        .header("cookie", "theme=dark")
        .header("cookie", "fly-machine-id=0123456789abcd; lang=en")
        .body(full_body(Bytes::new()))
        .unwrap();
    let resp = send_h2(req).await;
    assert_eq!(resp.status, StatusCode::OK);
    let seen = app.seen().pop().unwrap();
    let fields: Vec<&str> = seen
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    // HTTP/2 to HTTP/2: the fields are not merged, so the app must read
    // every one (RFC 9113, 8.2.3).
    assert_eq!(
        fields,
        ["theme=dark", "fly-machine-id=0123456789abcd; lang=en"]
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_cookie_is_joined_for_an_http1_machine() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let req = Request::get(sim.url())
        .header("cookie", "theme=dark")
        .header("cookie", "fly-machine-id=0123456789abcd")
        .body(full_body(Bytes::new()))
        .unwrap();
    assert_eq!(send_h2(req).await.status, StatusCode::OK);
    let seen = app.seen().pop().unwrap();
    let fields: Vec<&str> = seen
        .headers
        .get_all("cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(fields, ["theme=dark; fly-machine-id=0123456789abcd"]);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_content_length_is_delivered_and_replayed_as_sent() {
    let app = App::echo().speaking_h2c();
    let sim = start(h2_config(), &app).await;
    let ids = sim.machine_ids();
    let (first, target) = (ids[0].clone(), ids[1].clone());
    let to = target.clone();
    app.set_handler(move |s| {
        if s.machine == to {
            Reply::ok(format!("machine={} bytes={}", s.machine, s.body.len()))
        } else {
            Reply::replay(&format!("instance={to}"))
        }
    });
    let req = Request::post(format!("{}/upload", sim.url()))
        .header("fly-force-instance-id", &first)
        .body(chunked(&["hello ", "h2 ", "world"]))
        .unwrap();
    let resp = send_h2(req).await;
    assert_eq!(resp.text(), format!("machine={target} bytes=14"));
    let seen = app.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for s in &seen {
        assert_eq!(&s.body[..], b"hello h2 world", "on {}", s.machine);
        assert_eq!(
            s.header("content-length"),
            None,
            "{} was given a length the client never declared",
            s.machine
        );
    }
    // A declared length is kept.
    let req = Request::post(format!("{}/upload", sim.url()))
        .header("fly-force-instance-id", &first)
        .body(full_body("abc"))
        .unwrap();
    assert_eq!(
        send_h2(req).await.text(),
        format!("machine={target} bytes=3")
    );
    let last = app.seen().pop().unwrap();
    assert_eq!(last.header("content-length"), Some("3"));
    // An HTTP/1.1 chunked upload reaches the Machine without a length too.
    let req = Request::post(format!("{}/upload", sim.url()))
        .header("fly-force-instance-id", &target)
        .body(chunked(&["one", "two"]))
        .unwrap();
    assert_eq!(send(req).await.text(), format!("machine={target} bytes=6"));
    let last = app.seen().pop().unwrap();
    assert_eq!(last.header("content-length"), None);
    assert_eq!(&last.body[..], b"onetwo");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_does_not_speak_h2c_fails_with_pu01() {
    // HTTP/1.1 only.
    let app = App::echo();
    let sim = start(h2_config().quiet(true), &app).await;
    let id = sim.machine_ids()[1].clone();
    for via_h2 in [false, true] {
        let req = Request::get(format!("{}/", sim.url()))
            .header("fly-force-instance-id", &id)
            .body(full_body(Bytes::new()))
            .unwrap();
        let resp = if via_h2 {
            send_h2(req).await
        } else {
            send(req).await
        };
        assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
        assert_eq!(resp.header("fly-error"), Some("PU01"), "{}", resp.text());
        let text = resp.text();
        assert!(
            text.contains(&format!("Machine {id} does not speak h2c")),
            "{text}"
        );
        // hyper's HTTP/1.1-only server closes on the preface.
        assert!(
            text.contains("closed the connection without answering the HTTP/2 connection preface"),
            "{text}"
        );
    }
    assert_eq!(app.runs(), 0, "the app never saw a request it could read");
    let errors: Vec<_> = sim
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::ProxyError)
        .collect();
    assert_eq!(errors.len(), 2);
    assert!(errors.iter().all(|e| e.code.as_deref() == Some("PU01")));
    assert!(
        errors
            .iter()
            .all(|e| e.machine.as_deref() == Some(id.as_str()))
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_use_http1_even_with_h2_backend() {
    let app = App::new(|_| Reply::websocket()).speaking_h2c();
    let sim = start(h2_config(), &app).await;
    let id = sim.machine_ids()[2].clone();
    let url = format!("ws://{}/ws", sim.front_addr());
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    req.headers_mut()
        .insert("fly-force-instance-id", id.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
        panic!("expected text")
    };
    assert_eq!(t.as_str(), format!("{id}:hi"));
    ws.close(None).await.ok();
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_restarted_behind_a_pooled_h2c_connection_is_reached_again() {
    let app = App::echo().speaking_h2c();
    let sim = start(h2_config().machines(1), &app).await;
    let id = sim.machine_ids()[0].clone();
    let get = || {
        let req = Request::get(sim.url())
            .body(full_body(Bytes::new()))
            .unwrap();
        send_h2(req)
    };
    assert_eq!(served_by(&get().await), id);
    sim.stop_machine(&id).await.unwrap();
    sim.start_machine(&id).await.unwrap();
    let resp = get().await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(served_by(&resp), id);
    sim.shutdown().await;
}

#[test]
fn fly_toml_h2_backend_is_read() {
    let on = FlyToml::parse(
        "[http_service]\ninternal_port = 8080\n[http_service.http_options]\nh2_backend = true\n",
        "fly.toml",
    )
    .unwrap();
    assert!(on.h2_backend);
    let services = FlyToml::parse(
        "[[services]]\ninternal_port = 50051\n[[services.ports]]\nport = 443\n[services.ports.http_options]\nh2_backend = true\n",
        "fly.toml",
    )
    .unwrap();
    assert!(services.h2_backend);
    let off = FlyToml::parse("[http_service]\ninternal_port = 8080\n", "fly.toml").unwrap();
    assert!(!off.h2_backend);
    let bad = FlyToml::parse(
        "[http_service.http_options]\nh2_backend = \"yes\"\n",
        "fly.toml",
    )
    .unwrap_err();
    assert!(bad.to_string().contains("fly.toml:2"), "{bad}");
}
