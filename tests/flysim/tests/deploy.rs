//! Deploys (rolling, immediate, canary, blue-green) and scaling, from code and
//! from the admin interface, with traffic flowing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    App, admin_call, app_with_health, config, get, get_with, messages, served_by, start, within,
};
use flysim::{DeployState, EventKind, MachineState, Strategy};

fn live(sim: &flysim::FlySim) -> Vec<flysim::MachineInfo> {
    sim.machines()
        .into_iter()
        .filter(|m| m.state != MachineState::Destroyed)
        .collect()
}

/// The position of the first event whose message contains every needle.
fn position(events: &[flysim::Event], needles: &[&str]) -> usize {
    events
        .iter()
        .position(|e| needles.iter().all(|n| e.message.contains(n)))
        .unwrap_or_else(|| panic!("no event with {needles:?}"))
}

#[tokio::test]
async fn a_rolling_deploy_updates_each_machine_in_place_one_after_the_other() {
    let (app, _) = app_with_health();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let status = sim.deploy(Strategy::Rolling).await.unwrap();
    assert_eq!(status.state, DeployState::Succeeded, "{status:?}");
    assert_eq!((status.number, status.machines, status.done), (2, 3, 3));
    // Same IDs, each stopped and started again, each running version 2.
    assert_eq!(sim.machine_ids(), ids);
    for m in sim.machines() {
        assert_eq!(
            (m.state, m.version, m.starts),
            (MachineState::Started, 2, 2),
            "{m:?}"
        );
        assert!(!m.updating);
        assert_eq!(m.healthy, Some(true));
    }
    assert_eq!(app.stops(), ids);
    // One at a time: each Machine is stopped, started and health-checked
    // before the next batch begins.
    let events = sim.events();
    for (i, id) in ids.iter().enumerate() {
        let batch = position(&events, &[&format!("batch {} of 3", i + 1)]);
        let stopped = position(&events, &[&format!("Machine {id} stopped")]);
        let healthy = position(&events, &[&format!("Machine {id} updated and healthy")]);
        assert!(batch < stopped && stopped < healthy, "{id}");
        if let Some(next) = ids.get(i + 1) {
            let next_stop = position(&events, &[&format!("Machine {next} stopped")]);
            assert!(healthy < next_stop, "{id} then {next}");
        }
    }
    let health_checks = app.seen().iter().filter(|s| s.path == "/health").count();
    assert!(health_checks >= 3, "{health_checks}");
    sim.shutdown().await;
}

#[tokio::test]
async fn rolling_goes_in_batches_of_five_from_six_machines_and_immediate_all_at_once() {
    let (app, _) = app_with_health();
    let sim = start(config().machines(7), &app).await;
    let status = sim.deploy(Strategy::Rolling).await.unwrap();
    assert_eq!(status.state, DeployState::Succeeded, "{status:?}");
    let batches = messages(&sim, EventKind::Deploy)
        .into_iter()
        .filter(|m| m.contains(": batch "))
        .collect::<Vec<_>>();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert!(batches[0].contains("batch 1 of 2"), "{batches:?}");
    assert_eq!(batches[0].matches(", ").count(), 4, "{}", batches[0]);
    let status = sim.deploy(Strategy::Immediate).await.unwrap();
    assert_eq!((status.state, status.number), (DeployState::Succeeded, 3));
    let last = messages(&sim, EventKind::Deploy)
        .into_iter()
        .rfind(|m| m.contains(": batch "))
        .unwrap();
    assert!(last.contains("batch 1 of 1"), "{last}");
    assert!(live(&sim).iter().all(|m| m.version == 3 && m.starts == 3));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failing_health_check_stops_a_rolling_deploy_before_the_next_machine() {
    let (app, failing) = app_with_health();
    let sim = start(
        config().deploy_check_timeout(Duration::from_millis(300)),
        &app,
    )
    .await;
    let ids = sim.machine_ids();
    failing.lock().unwrap().push(ids[1].clone());
    let status = sim.deploy(Strategy::Rolling).await.unwrap();
    assert_eq!(status.state, DeployState::Failed, "{status:?}");
    let error = status.error.unwrap();
    assert!(
        error.contains(&ids[1]) && error.contains("health check"),
        "{error}"
    );
    assert_eq!(status.done, 1);
    let versions: Vec<u64> = sim.machines().iter().map(|m| m.version).collect();
    assert_eq!(versions, [2, 2, 1]);
    // The third Machine was never touched; the failing one is out of the
    // rotation.
    assert_eq!(sim.machine(&ids[2]).unwrap().starts, 1);
    assert_eq!(sim.machine(&ids[1]).unwrap().healthy, Some(false));
    for _ in 0..6 {
        assert_ne!(served_by(&get(&sim.url()).await), ids[1]);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_blue_green_deploy_replaces_every_machine_with_new_ids() {
    let (app, _) = app_with_health();
    let sim = start(config(), &app).await;
    let old = sim.machine_ids();
    let status = sim.deploy(Strategy::BlueGreen).await.unwrap();
    assert_eq!(status.state, DeployState::Succeeded, "{status:?}");
    let now = live(&sim);
    assert_eq!(now.len(), 3);
    for m in &now {
        assert!(!old.contains(&m.id));
        assert_eq!((m.state, m.version), (MachineState::Started, 2));
    }
    for id in &old {
        assert_eq!(sim.machine(id).unwrap().state, MachineState::Destroyed);
    }
    // The new Machines passed their checks before any old one went.
    let events = sim.events();
    let cutover = position(&events, &["cutover"]);
    for m in &now {
        let check = app
            .seen()
            .iter()
            .any(|s| s.machine == m.id && s.path == "/health");
        assert!(check, "{} was health-checked", m.id);
    }
    for id in &old {
        assert!(cutover < position(&events, &[&format!("Machine {id} destroyed")]));
    }
    // A client preferring a gone Machine lands on a new one.
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &old[0])]).await;
    assert!(now.iter().any(|m| m.id == served_by(&resp)));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_canary_deploy_boots_one_new_machine_then_rolls_over_the_others() {
    let (app, _) = app_with_health();
    let sim = start(config().cold_start(Duration::from_millis(50)), &app).await;
    let old = sim.machine_ids();
    // Traffic all along: none of it may reach the canary.
    let done = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (done, url) = (done.clone(), sim.url());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                assert_eq!(get(&url).await.status, 200);
            }
        })
    };
    let status = sim.deploy(Strategy::Canary).await.unwrap();
    done.store(true, Ordering::SeqCst);
    traffic.await.unwrap();
    assert_eq!(status.state, DeployState::Succeeded, "{status:?}");
    let all = sim.machines();
    assert_eq!(all.len(), 4);
    let canary = &all[3];
    assert!(!old.contains(&canary.id));
    assert_eq!(canary.state, MachineState::Destroyed);
    assert!(
        app.seen()
            .iter()
            .any(|s| s.machine == canary.id && s.path == "/health")
    );
    // Out of the rotation throughout: it served nothing but its checks.
    let served: Vec<String> = app
        .seen()
        .into_iter()
        .filter(|s| s.machine == canary.id && s.path != "/health")
        .map(|s| s.path)
        .collect();
    assert!(served.is_empty(), "{served:?}");
    let events = sim.events();
    let canary_gone = position(&events, &[&format!("Machine {} destroyed", canary.id)]);
    let first_batch = position(&events, &["batch 1 of 3"]);
    assert!(canary_gone < first_batch);
    let now: Vec<String> = live(&sim).into_iter().map(|m| m.id).collect();
    assert_eq!(now, old);
    assert!(live(&sim).iter().all(|m| m.version == 2 && m.starts == 2));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_flows_through_a_rolling_deploy_and_never_reaches_a_machine_being_updated() {
    let (app, _) = app_with_health();
    let sim = Arc::new(start(config().cold_start(Duration::from_millis(80)), &app).await);
    let done = Arc::new(AtomicBool::new(false));
    let url = sim.url();
    let traffic = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !done.load(Ordering::SeqCst) {
                statuses.push(get(&url).await.status.as_u16());
            }
            statuses
        })
    };
    let status = sim.deploy(Strategy::Rolling).await.unwrap();
    done.store(true, Ordering::SeqCst);
    let statuses = traffic.await.unwrap();
    assert_eq!(status.state, DeployState::Succeeded);
    assert!(statuses.len() > 3, "{}", statuses.len());
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // No request autostarted a Machine the deploy had stopped.
    assert!(messages(&sim, EventKind::Autostart).is_empty());
    Arc::try_unwrap(sim).unwrap().shutdown().await;
}

#[tokio::test]
async fn a_machine_being_updated_is_neither_autostarted_nor_preferred() {
    let (app, failing) = app_with_health();
    let sim = start(
        config()
            .cold_start(Duration::from_millis(400))
            .deploy_check_timeout(Duration::from_secs(30)),
        &app,
    )
    .await;
    let ids = sim.machine_ids();
    failing.lock().unwrap().push(ids[0].clone());
    sim.start_deploy(Strategy::Rolling).unwrap();
    // Stopped by the deploy, waiting for its cold start: a client preferring
    // it goes elsewhere and does not start it.
    within(10, "the first Machine stopped by the deploy", || {
        sim.machine(&ids[0])
            .is_some_and(|m| m.updating && m.state == MachineState::Stopped)
    })
    .await;
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &ids[0])]).await;
    assert_ne!(served_by(&resp), ids[0]);
    let seen = app.seen().pop().unwrap();
    assert_eq!(
        seen.header("fly-preferred-instance-unavailable"),
        Some(ids[0].as_str())
    );
    // Started again but not yet healthy: still not preferred, nor balanced.
    within(10, "started again, checking", || {
        sim.machine(&ids[0])
            .is_some_and(|m| m.updating && m.state == MachineState::Started)
    })
    .await;
    let resp = get_with(&sim.url(), &[("fly-prefer-instance-id", &ids[0])]).await;
    assert_ne!(served_by(&resp), ids[0]);
    for _ in 0..4 {
        assert_ne!(served_by(&get(&sim.url()).await), ids[0]);
    }
    assert!(messages(&sim, EventKind::Autostart).is_empty());
    failing.lock().unwrap().clear();
    let status = sim.wait_deploy().await.unwrap();
    assert_eq!(status.state, DeployState::Succeeded);
    sim.shutdown().await;
}

#[tokio::test]
async fn scaling_adds_new_machines_and_destroys_stopped_then_newest_ones() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let up = sim.scale(6).await.unwrap();
    assert_eq!(up.added.len(), 3);
    assert!(up.destroyed.is_empty());
    assert_eq!(live(&sim).len(), 6);
    assert!(live(&sim).iter().all(|m| m.state == MachineState::Started));
    sim.stop_machine(&ids[1]).await.unwrap();
    let down = sim.scale(2).await.unwrap();
    // The stopped one first, then the newest started ones.
    assert_eq!(
        down.destroyed,
        [
            ids[1].clone(),
            up.added[2].clone(),
            up.added[1].clone(),
            up.added[0].clone()
        ]
    );
    let now: Vec<String> = live(&sim).into_iter().map(|m| m.id).collect();
    assert_eq!(now, [ids[0].clone(), ids[2].clone()]);
    let scale = messages(&sim, EventKind::Scale);
    assert_eq!(scale.len(), 4, "{scale:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn the_admin_interface_deploys_scales_and_reports_progress() {
    let (app, _) = app_with_health();
    let sim = start(config(), &app).await;
    let (status, body) = admin_call(&sim, "GET", "/deploy").await;
    assert_eq!((status, body["state"].as_str()), (200, Some("none")));
    let (status, body) = admin_call(&sim, "POST", "/deploy?strategy=immediate").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["number"], 2);
    sim.wait_deploy().await.unwrap();
    let (status, body) = admin_call(&sim, "GET", "/deploy").await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "succeeded", "{body}");
    assert_eq!(body["strategy"], "immediate");
    assert_eq!(body["done"], 3);
    let (_, machines) = admin_call(&sim, "GET", "/machines").await;
    for m in machines.as_array().unwrap() {
        assert_eq!(m["version"], 2, "{m}");
        assert_eq!(m["updating"], false);
    }
    let (status, body) = admin_call(&sim, "POST", "/scale?count=4").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["added"].as_array().unwrap().len(), 1);
    // A Machine added after a deploy runs the deployed version.
    let added = body["added"][0].as_str().unwrap();
    assert_eq!(sim.machine(added).unwrap().version, 2);
    sim.shutdown().await;
}

/// What a refused request must leave alone: the Machines and their versions.
fn fleet_shape(sim: &flysim::FlySim) -> Vec<(String, MachineState, u64)> {
    sim.machines()
        .into_iter()
        .map(|m| (m.id, m.state, m.version))
        .collect()
}

#[tokio::test]
async fn bad_deploy_and_scale_requests_are_refused_and_change_nothing() {
    let (app, failing) = app_with_health();
    // A deploy that waits on a failing check stays running for a while.
    let sim = start(config().deploy_check_timeout(Duration::from_secs(30)), &app).await;
    let refused = async |method: &str, path: &str, status: u16, message: &str| {
        let before = fleet_shape(&sim);
        let (got, body) = admin_call(&sim, method, path).await;
        assert_eq!(got, status, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(message), "{path}: {error:?}");
        assert_eq!(fleet_shape(&sim), before, "{path}");
    };
    refused(
        "POST",
        "/deploy?strategy=sideways",
        400,
        "unknown deploy strategy",
    )
    .await;
    refused("POST", "/scale?count=0", 400, "out of range").await;
    refused("POST", "/scale?count=101", 400, "out of range").await;
    refused("POST", "/scale?count=many", 400, "count=").await;
    refused("POST", "/scale", 400, "count=").await;
    refused("GET", "/scale", 405, "not allowed").await;
    assert!(sim.deploy_status().is_none());

    // While a deploy runs, another deploy and a scale are refused.
    let ids = sim.machine_ids();
    failing.lock().unwrap().push(ids[0].clone());
    let (status, _) = admin_call(&sim, "POST", "/deploy").await;
    assert_eq!(status, 202);
    within(10, "the deploy reaches its first Machine's check", || {
        sim.machine(&ids[0])
            .is_some_and(|m| m.updating && m.state == MachineState::Started)
    })
    .await;
    let busy = async |path: &str| {
        let before_versions: Vec<u64> = sim.machines().iter().map(|m| m.version).collect();
        let before_ids = sim.machine_ids();
        let (got, body) = admin_call(&sim, "POST", path).await;
        assert_eq!(got, 409, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("deploy is under way"),
            "{body}"
        );
        assert_eq!(sim.machine_ids(), before_ids);
        assert_eq!(
            sim.machines().iter().map(|m| m.version).collect::<Vec<_>>(),
            before_versions
        );
    };
    busy("/deploy?strategy=bluegreen").await;
    busy("/scale?count=5").await;
    assert!(sim.start_deploy(Strategy::Rolling).is_err());
    assert!(sim.scale(5).await.is_err());
    assert_eq!(sim.deploy_status().unwrap().state, DeployState::Running);
    // Once the check passes, the deploy goes on and ends.
    failing.lock().unwrap().clear();
    let status = sim.wait_deploy().await.unwrap();
    assert_eq!(status.state, DeployState::Succeeded, "{status:?}");
    sim.shutdown().await;
}
