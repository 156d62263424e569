//! Strict `instance=` replays that fail: the slow empty 502, `timeout`, `fallback`
//! with `fly-replay-failed`, and fallback requests that try to replay again.

mod common;

use std::time::{Duration, Instant};

use common::{App, Reply, config, get_with, served_by, start, unknown_id};
use flysim::{EventKind, FlySim};

/// Parses `k=v;k=v` into pairs.
fn fields(header: &str) -> Vec<(String, String)> {
    header
        .split(';')
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn field(fields: &[(String, String)], key: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

/// Sends a request whose first delivery goes to `source`.
async fn via(sim: &FlySim, source: &str) -> common::Resp {
    get_with(&sim.url(), &[("fly-force-instance-id", source)]).await
}

/// The replaying Machine answers `header` unless the request is a fallback.
fn replay_unless_fallback(app: &App, header: String) {
    app.set_handler(move |s| {
        if s.header("fly-replay-failed").is_some() || s.header("fly-replay-src").is_some() {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::replay(&header)
        }
    });
}

#[tokio::test]
async fn strict_replay_to_a_destroyed_machine_fails_slowly_with_an_empty_502() {
    let app = App::echo();
    let delay = Duration::from_millis(400);
    let sim = start(config().dead_target_delay(delay).quiet(true), &app).await;
    let ids = sim.machine_ids();
    sim.destroy_machine(&ids[1]).await.unwrap();
    replay_unless_fallback(&app, format!("instance={}", ids[1]));
    let t0 = Instant::now();
    let resp = via(&sim, &ids[0]).await;
    let elapsed = t0.elapsed();
    assert_eq!(resp.status, 502);
    assert!(resp.body.is_empty(), "{}", resp.text());
    assert_eq!(resp.header("content-length"), Some("0"));
    assert!(elapsed >= delay, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    assert!(
        sim.events()
            .iter()
            .any(|e| e.kind == EventKind::ReplayFailed)
    );
    assert_eq!(app.runs(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_timeout_shorter_than_the_slow_failure_wins() {
    let app = App::echo();
    let sim = start(
        config()
            .dead_target_delay(Duration::from_secs(30))
            .quiet(true),
        &app,
    )
    .await;
    let ids = sim.machine_ids();
    replay_unless_fallback(&app, format!("instance={};timeout=200ms", unknown_id()));
    let t0 = Instant::now();
    let resp = via(&sim, &ids[0]).await;
    let elapsed = t0.elapsed();
    assert_eq!(resp.status, 502);
    assert!(resp.body.is_empty());
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn force_self_fallback_returns_to_the_replaying_machine_with_replay_failed() {
    let app = App::echo();
    let sim = start(config().dead_target_delay(Duration::from_secs(30)), &app).await;
    let ids = sim.machine_ids();
    let gone = unknown_id();
    replay_unless_fallback(
        &app,
        format!("instance={gone};timeout=150ms;fallback=force_self"),
    );
    let resp = via(&sim, &ids[1]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(served_by(&resp), ids[1]);
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].header("fly-replay-failed").is_none());
    let failed = seen[1].header("fly-replay-failed").unwrap();
    let f = fields(failed);
    let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "instance",
            "app",
            "region",
            "replay_source",
            "reason",
            "elapsed_ms"
        ]
    );
    assert_eq!(field(&f, "instance"), gone);
    assert_eq!(field(&f, "app"), "flysim-app");
    assert_eq!(field(&f, "region"), "iad");
    assert_eq!(field(&f, "replay_source"), ids[1]);
    assert_eq!(field(&f, "reason"), "timeout");
    let elapsed: u64 = field(&f, "elapsed_ms").parse().unwrap();
    assert!((150..5000).contains(&elapsed), "{failed}");
    let m = sim.machine(&ids[1]).unwrap();
    assert_eq!((m.served, m.replays_sent, m.fallbacks_received), (1, 1, 1));
    assert_eq!(m.replays_received, 0);
    assert!(sim.events().iter().any(|e| e.kind == EventKind::Fallback));
    sim.shutdown().await;
}

#[tokio::test]
async fn fallback_after_the_slow_failure_says_no_candidate() {
    let app = App::echo();
    let sim = start(config().dead_target_delay(Duration::from_millis(200)), &app).await;
    let ids = sim.machine_ids();
    sim.destroy_machine(&ids[2]).await.unwrap();
    replay_unless_fallback(&app, format!("instance={};fallback=prefer_self", ids[2]));
    let resp = via(&sim, &ids[0]).await;
    assert_eq!(resp.status, 200);
    assert_eq!(served_by(&resp), ids[0]);
    let seen = app.seen().pop().unwrap();
    let f = fields(seen.header("fly-replay-failed").unwrap());
    assert_eq!(field(&f, "instance"), ids[2]);
    assert_eq!(field(&f, "reason"), "no_candidate");
    assert!(field(&f, "elapsed_ms").parse::<u64>().unwrap() >= 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_fallback_request_cannot_replay_again() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let ids = sim.machine_ids();
    let header = format!("instance={};timeout=50ms;fallback=force_self", unknown_id());
    app.set_handler(move |_| Reply::replay(&header));
    let resp = via(&sim, &ids[0]).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("fly-error"), Some("PA03"));
    assert!(
        resp.text().contains("cannot replay again"),
        "{}",
        resp.text()
    );
    assert_eq!(app.runs(), 2);
    let seen = app.seen();
    assert!(seen[1].header("fly-replay-failed").is_some());
    assert!(sim.events().iter().any(|e| e.kind == EventKind::ProxyError));
    sim.shutdown().await;
}

/// Destroys the replaying Machine while the proxy waits for the dead target.
async fn destroy_source_during_replay(fallback: &str) -> (FlySim, App, common::Resp, Vec<String>) {
    let app = App::echo();
    let sim = start(
        config()
            .dead_target_delay(Duration::from_millis(1500))
            .quiet(true),
        &app,
    )
    .await;
    let ids = sim.machine_ids();
    replay_unless_fallback(
        &app,
        format!("instance={};fallback={fallback}", unknown_id()),
    );
    let url = sim.url();
    let source = ids[0].clone();
    let request =
        tokio::spawn(async move { get_with(&url, &[("fly-force-instance-id", &source)]).await });
    common::eventually(|| sim.events().iter().any(|e| e.kind == EventKind::Replay)).await;
    sim.destroy_machine(&ids[0]).await.unwrap();
    let resp = request.await.unwrap();
    (sim, app, resp, ids)
}

#[tokio::test]
async fn prefer_self_fallback_goes_to_another_machine_when_the_source_is_gone() {
    let (sim, app, resp, ids) = destroy_source_during_replay("prefer_self").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let by = served_by(&resp);
    assert!(by == ids[1] || by == ids[2]);
    let seen = app.seen().pop().unwrap();
    assert!(seen.header("fly-replay-failed").is_some());
    sim.shutdown().await;
}

#[tokio::test]
async fn force_self_fallback_is_an_error_when_the_source_is_gone() {
    let (sim, app, resp, _) = destroy_source_during_replay("force_self").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("fly-error"), Some("PR02"));
    assert!(
        resp.text().contains("fallback=force_self"),
        "{}",
        resp.text()
    );
    assert_eq!(app.runs(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn timeout_shorter_than_a_cold_start_falls_back_and_the_start_completes() {
    let app = App::echo();
    let sim = start(config().cold_start(Duration::from_millis(600)), &app).await;
    let ids = sim.machine_ids();
    sim.stop_machine(&ids[2]).await.unwrap();
    replay_unless_fallback(
        &app,
        format!("instance={};timeout=100ms;fallback=force_self", ids[2]),
    );
    let resp = via(&sim, &ids[0]).await;
    assert_eq!(served_by(&resp), ids[0]);
    let f = fields(
        app.seen()
            .pop()
            .unwrap()
            .header("fly-replay-failed")
            .unwrap(),
    );
    assert_eq!(field(&f, "reason"), "timeout");
    // The timeout is best effort: the autostart it triggered still completes.
    common::eventually(|| sim.machine(&ids[2]).unwrap().state == flysim::MachineState::Started)
        .await;
    sim.shutdown().await;
}
