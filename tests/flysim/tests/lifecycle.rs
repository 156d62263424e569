//! Machines that are stopped, started, destroyed and added while traffic flows, and
//! autostart of stopped Machines by replays.

mod common;

use std::time::{Duration, Instant};

use common::{App, Reply, config, get, get_with, served_by, start};
use flysim::{EventKind, MachineState};

#[tokio::test]
async fn a_replay_to_a_stopped_machine_autostarts_it_after_the_cold_start() {
    let app = App::echo();
    let cold = Duration::from_millis(150);
    let sim = start(config().cold_start(cold), &app).await;
    let ids = sim.machine_ids();
    sim.stop_machine(&ids[2]).await.unwrap();
    assert_eq!(sim.machine(&ids[2]).unwrap().addr, None);
    for header in [
        format!("instance={}", ids[2]),
        format!("prefer_instance={}", ids[2]),
    ] {
        sim.stop_machine(&ids[2]).await.unwrap();
        let h = header.clone();
        let target = ids[2].clone();
        app.set_handler(move |s| {
            if s.machine == target {
                Reply::ok(format!("machine={}", s.machine))
            } else {
                Reply::replay(&h)
            }
        });
        let t0 = Instant::now();
        let resp = get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
        assert!(t0.elapsed() >= cold, "{header}");
        assert_eq!(served_by(&resp), ids[2], "{header}");
        let seen = app.seen().pop().unwrap();
        assert!(seen.header("fly-preferred-instance-unavailable").is_none());
        let m = sim.machine(&ids[2]).unwrap();
        assert_eq!(m.state, MachineState::Started);
    }
    let autostarts = sim
        .events()
        .iter()
        .filter(|e| e.kind == EventKind::Autostart && e.machine.as_deref() == Some(ids[2].as_str()))
        .count();
    assert_eq!(autostarts, 2);
    assert_eq!(sim.machine(&ids[2]).unwrap().starts, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn stop_and_start_keep_the_machine_id() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let before = sim.machine(&ids[0]).unwrap().addr.unwrap();
    sim.stop_machine(&ids[0]).await.unwrap();
    assert_eq!(app.stops(), vec![ids[0].clone()]);
    // Stopping twice is harmless.
    sim.stop_machine(&ids[0]).await.unwrap();
    assert_eq!(app.stops().len(), 1);
    // The old instance no longer accepts connections.
    assert!(tokio::net::TcpStream::connect(before).await.is_err());
    sim.start_machine(&ids[0]).await.unwrap();
    let m = sim.machine(&ids[0]).unwrap();
    assert_eq!(m.state, MachineState::Started);
    assert_eq!(m.starts, 2);
    assert_eq!(sim.machine_ids(), ids);
    let envs = app.envs();
    assert_eq!(envs.iter().filter(|e| e.machine_id == ids[0]).count(), 2);
    let mut served = Vec::new();
    for _ in 0..3 {
        served.push(served_by(&get(&sim.url()).await));
    }
    assert!(served.contains(&ids[0]));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_destroyed_machine_is_gone_for_good() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    let ids = sim.machine_ids();
    sim.destroy_machine(&ids[1]).await.unwrap();
    assert_eq!(app.stops(), vec![ids[1].clone()]);
    assert_eq!(sim.machine(&ids[1]).unwrap().state, MachineState::Destroyed);
    assert!(sim.start_machine(&ids[1]).await.is_err());
    assert!(sim.stop_machine(&ids[1]).await.is_err());
    assert!(sim.destroy_machine(&ids[1]).await.is_err());
    for _ in 0..10 {
        assert_ne!(served_by(&get(&sim.url()).await), ids[1]);
    }
    // Even with every other Machine stopped, autostart never picks it.
    sim.stop_machine(&ids[0]).await.unwrap();
    sim.stop_machine(&ids[2]).await.unwrap();
    let by = served_by(&get(&sim.url()).await);
    assert!(by == ids[0] || by == ids[2]);
    assert_eq!(sim.machine(&ids[1]).unwrap().state, MachineState::Destroyed);
    assert_eq!(app.runs_on(&ids[1]), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn an_added_machine_joins_the_rotation() {
    let app = App::echo();
    let sim = start(config().machines(2), &app).await;
    let id = sim.add_machine().await.unwrap();
    assert_eq!(id.len(), 14);
    let ids = sim.machine_ids();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[2], id);
    for _ in 0..6 {
        get(&sim.url()).await;
    }
    assert_eq!(app.runs_on(&id), 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_keeps_flowing_while_machines_change() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let mut statuses = Vec::new();
    for round in 0..6 {
        let id = &ids[round % 3];
        sim.stop_machine(id).await.unwrap();
        for _ in 0..5 {
            let resp = get(&sim.url()).await;
            assert_ne!(served_by(&resp), *id);
            statuses.push(resp.status);
        }
        sim.start_machine(id).await.unwrap();
        if round == 3 {
            let new = sim.add_machine().await.unwrap();
            sim.destroy_machine(&new).await.unwrap();
        }
    }
    assert!(statuses.iter().all(|s| *s == 200));
    assert_eq!(sim.machines().iter().map(|m| m.served).sum::<u64>(), 30);
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_every_instance() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let mut ids = sim.machine_ids();
    let front = sim.front_addr();
    sim.shutdown().await;
    let mut stops = app.stops();
    stops.sort();
    ids.sort();
    assert_eq!(stops, ids);
    assert!(tokio::net::TcpStream::connect(front).await.is_err());
}

#[tokio::test]
async fn dropping_the_simulator_stops_every_instance() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    drop(sim);
    assert_eq!(app.stops().len(), 3);
}
