//! Load balancing, Machine IDs and environments, autostart when nothing runs.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{App, config, get, served_by, start};
use flysim::{Balance, EventKind, MachineEnv, MachineState};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    for _ in 0..30 {
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 200);
    }
    for m in sim.machines() {
        assert_eq!(app.runs_on(&m.id), 10, "{}", sim.report());
        assert_eq!(m.served, 10);
        assert_eq!(m.replays_sent, 0);
        assert_eq!(m.replays_received, 0);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn random_balancing_reaches_every_machine() {
    let app = App::echo();
    let sim = start(config().balance(Balance::Random), &app).await;
    let mut hit = HashSet::new();
    for _ in 0..90 {
        hit.insert(served_by(&get(&sim.url()).await));
    }
    // The chance that 90 random picks miss one of 3 Machines is about 1e-15.
    assert_eq!(hit.len(), 3);
    let total: u64 = sim.machines().iter().map(|m| m.served).sum();
    assert_eq!(total, 90);
    sim.shutdown().await;
}

#[tokio::test]
async fn machines_get_fly_ids_and_environment() {
    let app = App::echo();
    let sim = start(config().app_name("my-app").region("ams"), &app).await;
    let ids = sim.machine_ids();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3);
    for id in &ids {
        assert_eq!(id.len(), 14);
        assert!(
            id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{id}"
        );
    }
    let envs = app.envs();
    assert_eq!(envs.len(), 3);
    for env in &envs {
        assert!(ids.contains(&env.machine_id));
        assert_eq!(env.app_name, "my-app");
        assert_eq!(env.region, "ams");
        assert_eq!(env.port, 0);
    }
    let env = MachineEnv {
        machine_id: ids[0].clone(),
        app_name: "my-app".into(),
        region: "ams".into(),
        dns_server: Some("127.0.0.1:5353".parse().unwrap()),
        port: 8080,
    };
    let vars = env.vars();
    let var = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(var("FLY_MACHINE_ID"), Some(ids[0].as_str()));
    assert_eq!(var("FLY_ALLOC_ID"), Some(ids[0].as_str()));
    assert_eq!(var("FLY_APP_NAME"), Some("my-app"));
    assert_eq!(var("FLY_REGION"), Some("ams"));
    assert_eq!(var("PORT"), Some("8080"));
    assert_eq!(var("FLY_DNS_SERVER"), Some("127.0.0.1:5353"));
    sim.shutdown().await;
}

#[tokio::test]
async fn stopped_machines_are_not_picked() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    sim.stop_machine(&ids[1]).await.unwrap();
    for _ in 0..20 {
        let by = served_by(&get(&sim.url()).await);
        assert_ne!(by, ids[1]);
    }
    assert_eq!(app.runs_on(&ids[0]), 10);
    assert_eq!(app.runs_on(&ids[2]), 10);
    assert_eq!(sim.machine(&ids[1]).unwrap().state, MachineState::Stopped);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_machine_is_autostarted_when_none_is_running() {
    let app = App::echo();
    let sim = start(config().cold_start(Duration::from_millis(50)), &app).await;
    for id in sim.machine_ids() {
        sim.stop_machine(&id).await.unwrap();
    }
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 200);
    let by = served_by(&resp);
    let started: Vec<_> = sim
        .machines()
        .into_iter()
        .filter(|m| m.state == MachineState::Started)
        .collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].id, by);
    assert!(
        sim.events()
            .iter()
            .any(|e| e.kind == EventKind::Autostart && e.machine.as_deref() == Some(by.as_str()))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn client_connections_are_kept_alive() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let stream = tokio::net::TcpStream::connect(sim.front_addr())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut machines = HashSet::new();
    for _ in 0..6 {
        sender.ready().await.unwrap();
        let req = http::Request::get("/")
            .header("host", "example.com")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        machines.insert(String::from_utf8(body.to_vec()).unwrap());
    }
    // One client connection, still balanced across Machines.
    assert_eq!(machines.len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_settings_are_refused() {
    let app = App::echo();
    for cfg in [
        config().region("IAD"),
        config().region("iad;x"),
        config().app_name("Bad App"),
        config().forwarded_proto("https\r\n"),
    ] {
        let err = flysim::FlySim::start(cfg, app.launch()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    }
}
