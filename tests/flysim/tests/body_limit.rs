//! The 1 MB replay body limit: small bodies (also chunked) are buffered and replayed
//! intact, larger ones stream through but cannot be replayed.

mod common;

use bytes::Bytes;
use common::{App, Reply, TestBody, config, full_body, send, served_by, start};
use flysim::{EventKind, FlySim, REPLAY_BODY_LIMIT};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

fn payload(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A body without Content-Length, sent with chunked transfer-encoding.
fn chunked(data: Bytes, chunk: usize) -> TestBody {
    let chunks: Vec<Result<Frame<Bytes>, common::BoxError>> = data
        .chunks(chunk)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

async fn post(sim: &FlySim, body: TestBody, first: &str) -> common::Resp {
    let req = http::Request::post(format!("{}/upload", sim.url()))
        .header("fly-force-instance-id", first)
        .body(body)
        .unwrap();
    send(req).await
}

/// Machine 0 replays to Machine 1, which serves.
fn replay_to_second(app: &App, ids: &[String]) {
    let target = ids[1].clone();
    app.set_handler(move |s| {
        if s.machine == target {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::replay(&format!("instance={target}"))
        }
    });
}

#[tokio::test]
async fn replaying_a_body_over_1_mb_fails_loudly() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let ids = sim.machine_ids();
    replay_to_second(&app, &ids);
    let resp = post(&sim, full_body(payload(1_500_000)), &ids[0]).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("fly-error"), Some("PA01"));
    let text = resp.text();
    assert!(text.contains("1000000 bytes"), "{text}");
    assert!(text.contains("cannot be replayed"), "{text}");
    assert!(sim.events().iter().any(|e| {
        e.kind == EventKind::ProxyError
            && e.code.as_deref() == Some("PA01")
            && e.message.contains("1000000")
    }));
    // The first Machine did get (and read) the whole body; the target never ran.
    assert_eq!(app.runs_on(&ids[0]), 1);
    assert_eq!(app.seen()[0].body.len(), 1_500_000);
    assert_eq!(app.runs_on(&ids[1]), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_body_over_1_mb_without_replay_is_served_intact() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let data = payload(1_500_000);
    let resp = post(&sim, full_body(data.clone()), &ids[0]).await;
    assert_eq!(resp.status, 200);
    let seen = app.seen().pop().unwrap();
    assert_eq!(seen.header("content-length"), Some("1500000"));
    assert_eq!(seen.body, data);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_replayed_intact() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    replay_to_second(&app, &ids);
    let data = payload(REPLAY_BODY_LIMIT);
    let resp = post(&sim, full_body(data.clone()), &ids[0]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(served_by(&resp), ids[1]);
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, data);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_small_chunked_body_is_replayed_intact() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    replay_to_second(&app, &ids);
    let data = payload(50_000);
    let resp = post(&sim, chunked(data.clone(), 4096), &ids[0]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(served_by(&resp), ids[1]);
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, data);
    assert_eq!(seen[1].body, data);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_large_chunked_body_streams_through_but_cannot_replay() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let ids = sim.machine_ids();
    let data = payload(1_200_000);
    // Without a replay: streamed through intact.
    let resp = post(&sim, chunked(data.clone(), 64 * 1024), &ids[0]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(app.seen().pop().unwrap().body, data);
    // With a replay: refused loudly.
    replay_to_second(&app, &ids);
    let resp = post(&sim, chunked(data, 64 * 1024), &ids[0]).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("fly-error"), Some("PA01"));
    sim.shutdown().await;
}
