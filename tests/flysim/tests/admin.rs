//! The admin HTTP interface.

mod common;

use bytes::Bytes;
use common::{App, config, full_body, get, send, start};
use serde_json::Value;

async fn admin(sim: &flysim::FlySim, method: &str, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", sim.admin_addr().unwrap());
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(full_body(Bytes::new()))
        .unwrap();
    let resp = send(req).await;
    let value = serde_json::from_slice(&resp.body).unwrap_or(Value::String(resp.text()));
    (resp.status.as_u16(), value)
}

#[tokio::test]
async fn admin_lists_and_controls_machines() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    assert_ne!(sim.admin_addr().unwrap(), sim.front_addr());
    get(&sim.url()).await;

    let (status, list) = admin(&sim, "GET", "/machines").await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    for (entry, id) in list.iter().zip(&ids) {
        assert_eq!(entry["id"], id.as_str());
        assert_eq!(entry["state"], "started");
        for key in ["served", "replays_sent", "replays_received", "addr"] {
            assert!(entry.get(key).is_some(), "{key} in {entry}");
        }
    }
    assert_eq!(list[0]["served"], 1);

    let (status, m) = admin(&sim, "POST", &format!("/machines/{}/stop", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(m["state"], "stopped");
    assert_eq!(
        sim.machine(&ids[0]).unwrap().state,
        flysim::MachineState::Stopped
    );

    let (status, m) = admin(&sim, "POST", &format!("/machines/{}/start", ids[0])).await;
    assert_eq!(status, 200);
    assert_eq!(m["state"], "started");

    let (status, m) = admin(&sim, "POST", &format!("/machines/{}/destroy", ids[1])).await;
    assert_eq!(status, 200);
    assert_eq!(m["state"], "destroyed");
    let (status, _) = admin(&sim, "POST", &format!("/machines/{}/start", ids[1])).await;
    assert_eq!(status, 409);

    let (status, added) = admin(&sim, "POST", "/machines").await;
    assert_eq!(status, 200);
    let new_id = added["id"].as_str().unwrap().to_owned();
    assert_eq!(new_id.len(), 14);
    assert_eq!(sim.machine_ids().len(), 4);
    let (status, m) = admin(&sim, "GET", &format!("/machines/{new_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(m["state"], "started");

    let (status, _) = admin(&sim, "POST", "/machines/0123456789abcd/stop").await;
    assert_eq!(status, 404);
    let (status, _) = admin(&sim, "POST", &format!("/machines/{}/reboot", ids[0])).await;
    assert_eq!(status, 404);
    let (status, _) = admin(&sim, "DELETE", "/machines").await;
    assert_eq!(status, 405);
    let (status, _) = admin(&sim, "GET", "/nope").await;
    assert_eq!(status, 404);

    let (status, events) = admin(&sim, "GET", "/events").await;
    assert_eq!(status, 200);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "lifecycle")
    );
    let (status, report) = admin(&sim, "GET", "/report").await;
    assert_eq!(status, 200);
    let report = report.as_str().unwrap();
    assert!(report.contains("replays received"));
    assert!(report.contains(&new_id));
    sim.shutdown().await;
}

#[tokio::test]
async fn the_admin_interface_can_be_disabled() {
    let app = App::echo();
    let sim = start(config().admin_addr(None), &app).await;
    assert!(sim.admin_addr().is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn report_lists_every_machine_with_counters() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    for _ in 0..3 {
        get(&sim.url()).await;
    }
    let report = sim.report();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 5, "{report}");
    for col in [
        "machine",
        "state",
        "served",
        "replays sent",
        "replays received",
    ] {
        assert!(lines[0].contains(col), "{report}");
    }
    for (line, id) in lines[1..4].iter().zip(sim.machine_ids()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols, [id.as_str(), "started", "1", "0", "0"], "{report}");
    }
    assert!(lines[4].starts_with("total"));
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_sends_signals() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let (status, m) = admin(&sim, "POST", &format!("/machines/{}/signal", ids[0])).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["state"], "started");
    let path = format!("/machines/{}/signal?signal=usr1", ids[1]);
    assert_eq!(admin(&sim, "POST", &path).await.0, 200);
    assert_eq!(
        app.signals(),
        vec![
            (ids[0].clone(), flysim::Signal::Term),
            (ids[1].clone(), flysim::Signal::Usr1)
        ]
    );
    let path = format!("/machines/{}/signal?signal=SIGNOPE", ids[1]);
    let (status, body) = admin(&sim, "POST", &path).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("unknown signal"));
    sim.stop_machine(&ids[2]).await.unwrap();
    let path = format!("/machines/{}/signal", ids[2]);
    assert_eq!(admin(&sim, "POST", &path).await.0, 409);
    sim.shutdown().await;
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let url = format!("http://{}/", sim.admin_addr().unwrap());
    let resp = get(&url).await;
    assert_eq!(resp.status, 200);
    let content_type = resp.headers["content-type"].to_str().unwrap();
    assert_eq!(content_type, "text/html; charset=utf-8");
    let page = resp.text();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    // It polls the JSON endpoints and has a button for each action.
    for needle in [
        "/machines",
        "/events?last=",
        "/replay-cache",
        "/config",
        "\"stop\"",
        "\"start\"",
        "\"drain\"",
        "\"destroy\"",
        "id=\"add\"",
        "id=\"error\"",
    ] {
        assert!(page.contains(needle), "the dashboard lacks {needle}");
    }
    // No external assets: nothing is loaded from another origin.
    for external in ["http://", "https://", "<link", "src=", "@import"] {
        assert!(!page.contains(external), "the dashboard has {external}");
    }
    let (status, config) = admin(&sim, "GET", "/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["front"], sim.front_addr().to_string());
    sim.shutdown().await;
}

/// Every action the dashboard offers, pressed for a Machine that is gone
/// or pressed twice, is refused with a 4xx and a message, and changes
/// nothing.
#[tokio::test]
async fn refused_actions_say_why_and_change_nothing() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let refused = async |path: String, status: u16, message: &str| {
        let before = admin(&sim, "GET", "/machines").await.1;
        let (got, body) = admin(&sim, "POST", &path).await;
        assert_eq!(got, status, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{path}: {error:?}");
        assert_eq!(admin(&sim, "GET", "/machines").await.1, before, "{path}");
    };

    let (status, m) = admin(&sim, "POST", &format!("/machines/{}/stop", ids[0])).await;
    assert_eq!((status, m["state"].as_str()), (200, Some("stopped")));
    refused(format!("/machines/{}/stop", ids[0]), 409, "is not running").await;
    refused(format!("/machines/{}/drain", ids[0]), 409, "is not running").await;
    refused(
        format!("/machines/{}/start", ids[1]),
        409,
        "already started",
    )
    .await;

    let (status, m) = admin(&sim, "POST", &format!("/machines/{}/drain", ids[1])).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        (m["state"].as_str(), m["draining"].as_bool()),
        (Some("started"), Some(true))
    );
    refused(
        format!("/machines/{}/drain", ids[1]),
        409,
        "already draining",
    )
    .await;
    assert_eq!(app.signals(), vec![(ids[1].clone(), flysim::Signal::Term)]);
    // A stop ends the drain.
    let (_, m) = admin(&sim, "POST", &format!("/machines/{}/stop", ids[1])).await;
    assert_eq!(m["draining"], false);

    let (status, _) = admin(&sim, "POST", &format!("/machines/{}/destroy", ids[2])).await;
    assert_eq!(status, 200);
    for action in ["destroy", "stop", "start", "drain"] {
        refused(
            format!("/machines/{}/{action}", ids[2]),
            409,
            "is destroyed",
        )
        .await;
    }
    refused("/machines/0123456789abcd/destroy".into(), 404, "no Machine").await;
    refused("/machines/0123456789abcd/drain".into(), 404, "no Machine").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn events_can_be_limited_to_the_newest() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let all = admin(&sim, "GET", "/events").await.1;
    let all = all.as_array().unwrap();
    assert!(all.len() >= 3, "{all:?}");
    let (status, last) = admin(&sim, "GET", "/events?last=2").await;
    assert_eq!(status, 200);
    assert_eq!(last.as_array().unwrap(), &all[all.len() - 2..]);
    let (status, body) = admin(&sim, "GET", "/events?last=two").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("not a number"));
    sim.shutdown().await;
}
