//! Autostop and autostart (`auto_stop_machines`, `auto_start_machines`,
//! `min_machines_running`), suspend and resume, and health checks taking
//! failing Machines out of the rotation.

mod common;

use std::time::{Duration, Instant};

use common::{
    App, Reply, app_with_health, config, get, get_with, messages, served_by, start, within,
};
use flysim::{AutoStop, EventKind, FlyToml, HealthCheck, MachineState};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn count(sim: &flysim::FlySim, state: MachineState) -> usize {
    sim.machines().iter().filter(|m| m.state == state).count()
}

fn autostopping(mode: AutoStop) -> flysim::Config {
    config()
        .auto_stop(mode)
        .idle_stop(Duration::from_millis(100))
        .min_machines_running(1)
}

#[tokio::test]
async fn idle_machines_are_stopped_down_to_the_minimum_and_started_again_by_replays() {
    let app = App::echo();
    let cold = Duration::from_millis(150);
    let sim = start(autostopping(AutoStop::Stop).cold_start(cold), &app).await;
    within(10, "two Machines autostopped", || {
        count(&sim, MachineState::Stopped) == 2
    })
    .await;
    assert_eq!(count(&sim, MachineState::Started), 1);
    assert_eq!(messages(&sim, EventKind::Autostop).len(), 2);
    // A replay to a stopped Machine starts it, after the cold start.
    let ids = sim.machine_ids();
    let stopped = sim
        .machines()
        .into_iter()
        .find(|m| m.state == MachineState::Stopped)
        .unwrap()
        .id;
    let running = sim
        .machines()
        .into_iter()
        .find(|m| m.state == MachineState::Started)
        .unwrap()
        .id;
    let target = stopped.clone();
    app.set_handler(move |s| {
        if s.machine == target {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::replay(&format!("prefer_instance={target}"))
        }
    });
    let t0 = Instant::now();
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &running)]).await;
    assert!(t0.elapsed() >= cold);
    assert_eq!(served_by(&resp), stopped);
    assert!(ids.contains(&stopped));
    assert_eq!(sim.machine(&stopped).unwrap().starts, 2);
    assert!(!messages(&sim, EventKind::Autostart).is_empty());
    // Idle again, two are stopped again: autostop cycles.
    within(10, "two stopped again", || {
        count(&sim, MachineState::Stopped) == 2
    })
    .await;
    assert_eq!(messages(&sim, EventKind::Autostop).len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_machine_with_an_open_websocket_is_not_autostopped() {
    let app = App::new(|s| {
        if s.path == "/ws" {
            Reply::websocket()
        } else {
            Reply::ok(format!("machine={}", s.machine))
        }
    });
    let sim = start(
        config()
            .auto_stop(AutoStop::Stop)
            .idle_stop(Duration::from_millis(150))
            .min_machines_running(0),
        &app,
    )
    .await;
    let ids = sim.machine_ids();
    let url = format!("ws://{}/ws", sim.front_addr());
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut()
        .insert("fly-force-instance-id", ids[1].parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    // The others, exactly as idle by the clock, go; the one holding the
    // WebSocket stays.
    within(10, "the idle Machines autostopped", || {
        sim.machine(&ids[0]).unwrap().state == MachineState::Stopped
            && sim.machine(&ids[2]).unwrap().state == MachineState::Stopped
    })
    .await;
    let m = sim.machine(&ids[1]).unwrap();
    assert_eq!((m.state, m.in_flight), (MachineState::Started, 1));
    ws.send(Message::text("hi")).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), format!("{}:hi", ids[1]));
    ws.close(None).await.unwrap();
    drop(ws);
    within(10, "stopped once the WebSocket closed", || {
        sim.machine(&ids[1]).unwrap().state == MachineState::Stopped
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test]
async fn suspended_machines_resume_faster_with_their_memory() {
    let app = App::echo();
    let cold = Duration::from_millis(2000);
    let resume = Duration::from_millis(100);
    let sim = start(
        autostopping(AutoStop::Suspend)
            .cold_start(cold)
            .resume(resume),
        &app,
    )
    .await;
    within(10, "two Machines suspended", || {
        count(&sim, MachineState::Suspended) == 2
    })
    .await;
    assert_eq!(count(&sim, MachineState::Started), 1);
    let suspended = sim
        .machines()
        .into_iter()
        .find(|m| m.state == MachineState::Suspended)
        .unwrap()
        .id;
    // Its instance was never stopped (memory kept) and is started again.
    assert!(!app.stops().contains(&suspended));
    let t0 = Instant::now();
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &suspended)]).await;
    let took = t0.elapsed();
    assert_eq!(served_by(&resp), suspended);
    assert!(took >= resume, "{took:?}");
    assert!(
        took < cold,
        "a resume is faster than a cold start: {took:?}"
    );
    assert_eq!(
        app.envs()
            .iter()
            .filter(|e| e.machine_id == suspended)
            .count(),
        1
    );
    assert!(
        messages(&sim, EventKind::Autostart)
            .iter()
            .any(|m| m.contains("resumed"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn without_autostart_a_stopped_machine_is_unavailable() {
    let app = App::echo();
    let sim = start(config().auto_start(false).quiet(true), &app).await;
    let ids = sim.machine_ids();
    sim.stop_machine(&ids[0]).await.unwrap();
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &ids[0])]).await;
    assert_ne!(served_by(&resp), ids[0]);
    let seen = app.seen().pop().unwrap();
    assert_eq!(
        seen.header("fly-preferred-instance-unavailable"),
        Some(ids[0].as_str())
    );
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
    assert_eq!(resp.status, 502);
    assert!(
        resp.text().contains("auto_start_machines is off"),
        "{}",
        resp.text()
    );
    // With nothing started, nothing is started.
    sim.stop_machine(&ids[1]).await.unwrap();
    sim.stop_machine(&ids[2]).await.unwrap();
    let resp = get(&sim.url()).await;
    assert_eq!(
        (resp.status.as_u16(), resp.header("fly-error")),
        (502, Some("PR04"))
    );
    assert_eq!(count(&sim, MachineState::Started), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_machine_failing_its_health_check_leaves_the_rotation_until_it_passes() {
    let (app, failing) = app_with_health();
    let check = HealthCheck {
        interval: Duration::from_millis(30),
        ..HealthCheck::default()
    };
    let sim = start(config().health_check(Some(check)), &app).await;
    let ids = sim.machine_ids();
    within(10, "every Machine checked", || {
        sim.machines().iter().all(|m| m.healthy == Some(true))
    })
    .await;
    failing.lock().unwrap().push(ids[1].clone());
    within(10, "the failing Machine marked", || {
        sim.machine(&ids[1]).unwrap().healthy == Some(false)
    })
    .await;
    for _ in 0..9 {
        assert_ne!(served_by(&get(&sim.url()).await), ids[1]);
    }
    // A client preferring it goes elsewhere, told it is unavailable; one
    // forcing it still reaches it.
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &ids[1])]).await;
    assert_ne!(served_by(&resp), ids[1]);
    let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[1])]).await;
    assert_eq!(served_by(&resp), ids[1]);
    assert!(
        messages(&sim, EventKind::Health)
            .iter()
            .any(|m| m.contains("fails"))
    );
    failing.lock().unwrap().clear();
    within(10, "passing again", || {
        sim.machine(&ids[1]).unwrap().healthy == Some(true)
    })
    .await;
    let mut served = Vec::new();
    for _ in 0..6 {
        served.push(served_by(&get(&sim.url()).await));
    }
    assert!(served.contains(&ids[1]));
    sim.shutdown().await;
}

#[test]
fn fly_toml_autostop_and_checks_are_read() {
    let file = FlyToml::parse(
        r#"
app = "x"
[http_service]
  internal_port = 8080
  auto_stop_machines = "suspend"
  auto_start_machines = false
  min_machines_running = 2
  [[http_service.checks]]
    grace_period = "5s"
    interval = "15s"
    method = "GET"
    path = "/healthz"
    timeout = "2s"
"#,
        "fly.toml",
    )
    .unwrap();
    assert_eq!(file.auto_stop, Some(AutoStop::Suspend));
    assert_eq!(file.auto_start, Some(false));
    assert_eq!(file.min_machines_running, Some(2));
    let check = file.health_check.clone().unwrap();
    assert_eq!(check.path, "/healthz");
    assert_eq!(check.interval, Duration::from_secs(15));
    assert_eq!(check.grace_period, Duration::from_secs(5));
    let c = flysim::Config::default().fly_toml(&file);
    assert_eq!(c.auto_stop_mode(), AutoStop::Suspend);
    assert!(!c.auto_start_on());
    assert_eq!(c.min_running(), 2);
    assert_eq!(c.health_check_settings(), Some(&check));
    let old = FlyToml::parse("[http_service]\nauto_stop_machines = true\n", "f").unwrap();
    assert_eq!(old.auto_stop, Some(AutoStop::Stop));
    for (bad, field) in [
        ("auto_stop_machines = \"nap\"", "auto_stop_machines"),
        ("min_machines_running = -1", "min_machines_running"),
        ("[[http_service.checks]]\ninterval = \"soon\"", "interval"),
        ("[[http_service.checks]]\npath = \"health\"", "path"),
    ] {
        let e = FlyToml::parse(&format!("[http_service]\n{bad}\n"), "fly.toml").unwrap_err();
        assert!(e.to_string().contains(field), "{bad}: {e}");
        assert!(e.to_string().contains("fly.toml:"), "{bad}: {e}");
    }
    // The example's own fly.toml.
    let example = FlyToml::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/fly.toml"
    ))
    .unwrap();
    assert_eq!(example.auto_stop, Some(AutoStop::Off));
    assert_eq!(example.min_machines_running, Some(3));
    assert_eq!(example.health_check.unwrap().path, "/health");
}
