//! Client routing headers: `fly-force-instance-id` and `fly-prefer-instance-id`.

mod common;

use std::time::Duration;

use common::{App, config, get_with, served_by, start, unknown_id};
use flysim::{EventKind, MachineState};

#[tokio::test]
async fn force_instance_routes_every_request_to_that_machine() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    for _ in 0..6 {
        let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[1])]).await;
        assert_eq!(served_by(&resp), ids[1]);
    }
    // The header reaches the app unchanged.
    assert_eq!(
        app.seen()[0].header("fly-force-instance-id"),
        Some(ids[1].as_str())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn force_instance_autostarts_a_stopped_machine() {
    let app = App::echo();
    let sim = start(config().cold_start(Duration::from_millis(50)), &app).await;
    let ids = sim.machine_ids();
    sim.stop_machine(&ids[0]).await.unwrap();
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
    assert_eq!(served_by(&resp), ids[0]);
    assert_eq!(sim.machine(&ids[0]).unwrap().state, MachineState::Started);
    sim.shutdown().await;
}

#[tokio::test]
async fn force_instance_to_a_gone_machine_is_an_error_without_fallback() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let ids = sim.machine_ids();
    sim.destroy_machine(&ids[2]).await.unwrap();
    for gone in [ids[2].clone(), unknown_id(), "not-an-id".to_owned()] {
        let resp = get_with(&sim.url(), &[("fly-force-instance-id", &gone)]).await;
        assert_eq!(resp.status, 502, "{gone}");
        assert_eq!(resp.header("fly-error"), Some("PR02"));
        assert!(resp.text().contains(&gone), "{}", resp.text());
    }
    assert_eq!(app.runs(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn prefer_instance_header_routes_there_when_possible() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    for _ in 0..4 {
        let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &ids[2])]).await;
        assert_eq!(served_by(&resp), ids[2]);
    }
    assert!(
        app.seen()
            .iter()
            .all(|s| s.header("fly-preferred-instance-unavailable").is_none())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn prefer_instance_header_falls_back_and_says_so() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    sim.destroy_machine(&ids[0]).await.unwrap();
    for gone in [ids[0].clone(), unknown_id()] {
        let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &gone)]).await;
        assert_eq!(resp.status, 200);
        assert_ne!(served_by(&resp), ids[0]);
        let seen = app.seen().pop().unwrap();
        assert_eq!(
            seen.header("fly-preferred-instance-unavailable"),
            Some(gone.as_str())
        );
        // Not a replay.
        assert!(seen.header("fly-replay-src").is_none());
    }
    assert!(
        sim.events()
            .iter()
            .any(|e| e.kind == EventKind::PreferredUnavailable)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn prefer_instance_header_autostarts_a_stopped_machine() {
    let app = App::echo();
    let sim = start(config().cold_start(Duration::from_millis(50)), &app).await;
    let ids = sim.machine_ids();
    sim.stop_machine(&ids[1]).await.unwrap();
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &ids[1])]).await;
    assert_eq!(served_by(&resp), ids[1]);
    assert!(
        app.seen()[0]
            .header("fly-preferred-instance-unavailable")
            .is_none()
    );
    assert_eq!(sim.machine(&ids[1]).unwrap().state, MachineState::Started);
    sim.shutdown().await;
}
