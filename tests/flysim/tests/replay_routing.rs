//! Where replays go: `instance`, `prefer_instance`, `elsewhere`, `region`, the
//! `fly-replay-src` header and the limit of 10 replays (PA02).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{App, Reply, config, get, served_by, start, unknown_id};
use flysim::EventKind;

fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// An app where every Machine except `target` replays with `header`, and `target`
/// (or any Machine, for a replayed request) serves.
fn replay_once(app: &App, header: String) {
    app.set_handler(move |s| {
        if s.header("fly-replay-src").is_some() {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::replay(&header)
        }
    });
}

#[tokio::test]
async fn instance_replay_reaches_exactly_that_machine() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    let target = ids[2].clone();
    app.set_handler(move |s| {
        if s.machine == target {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::replay(&format!("instance={target}"))
        }
    });
    for _ in 0..6 {
        let resp = get(&sim.url()).await;
        assert_eq!(served_by(&resp), ids[2]);
    }
    let m = sim.machines();
    // Requests 1..6 went round-robin to 0,1,2,0,1,2; the ones on 0 and 1 replayed.
    assert_eq!(
        (m[0].replays_sent, m[1].replays_sent, m[2].replays_sent),
        (2, 2, 0)
    );
    assert_eq!(m[2].replays_received, 4);
    assert_eq!(m[2].served, 6);
    assert_eq!(m[0].served + m[1].served, 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn fly_replay_src_names_source_region_time_and_state() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    for (header, state) in [
        (
            format!("instance={};state=s3cr3t-token", ids[1]),
            Some("s3cr3t-token"),
        ),
        (format!("instance={}", ids[1]), None),
    ] {
        replay_once(&app, header);
        let before = now_micros();
        // Force the first delivery onto Machine 0 so the source is known.
        let resp = common::get_with(&sim.url(), &[("fly-force-instance-id", &ids[0])]).await;
        let after = now_micros();
        assert_eq!(served_by(&resp), ids[1]);
        let seen = app.seen().pop().unwrap();
        let src = seen.header("fly-replay-src").unwrap().to_owned();
        let fields: Vec<(&str, &str)> =
            src.split(';').map(|f| f.split_once('=').unwrap()).collect();
        assert_eq!(fields[0], ("instance", ids[0].as_str()), "{src}");
        assert_eq!(fields[1], ("region", "iad"), "{src}");
        assert_eq!(fields[2].0, "t");
        let t: u128 = fields[2].1.parse().unwrap();
        assert!(before <= t && t <= after, "{src}");
        match state {
            Some(state) => {
                assert_eq!(fields.len(), 4, "{src}");
                assert_eq!(fields[3], ("state", state));
            }
            None => assert_eq!(fields.len(), 3, "{src}"),
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn prefer_instance_reaches_a_live_machine() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let ids = sim.machine_ids();
    replay_once(&app, format!("prefer_instance={}", ids[0]));
    for _ in 0..3 {
        let resp = get(&sim.url()).await;
        assert_eq!(served_by(&resp), ids[0]);
    }
    let last = app.seen().pop().unwrap();
    assert!(last.header("fly-preferred-instance-unavailable").is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn prefer_instance_to_a_destroyed_or_unknown_machine_falls_back_with_header() {
    let app = App::echo();
    // A long slow-failure delay: prefer_instance must not wait for it.
    let sim = start(config().dead_target_delay(Duration::from_secs(20)), &app).await;
    let ids = sim.machine_ids();
    sim.destroy_machine(&ids[2]).await.unwrap();
    for gone in [ids[2].clone(), unknown_id()] {
        replay_once(&app, format!("prefer_instance={gone}"));
        let t0 = Instant::now();
        let resp = get(&sim.url()).await;
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(resp.status, 200);
        let by = served_by(&resp);
        assert!(by == ids[0] || by == ids[1]);
        let seen = app.seen().pop().unwrap();
        assert_eq!(
            seen.header("fly-preferred-instance-unavailable"),
            Some(gone.as_str())
        );
        assert!(seen.header("fly-replay-src").is_some());
        assert!(sim.events().iter().any(|e| {
            e.kind == EventKind::PreferredUnavailable && e.machine.as_deref() == Some(gone.as_str())
        }));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn elsewhere_leaves_the_replaying_machine_out() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    replay_once(&app, "elsewhere=true".to_owned());
    for _ in 0..30 {
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 200);
    }
    let seen = app.seen();
    let replayed: Vec<_> = seen
        .iter()
        .filter(|s| s.header("fly-replay-src").is_some())
        .collect();
    assert_eq!(replayed.len(), 30);
    for s in replayed {
        let src = s.header("fly-replay-src").unwrap();
        let source = src
            .strip_prefix("instance=")
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert_ne!(source, s.machine, "replayed back to the replaying Machine");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn elsewhere_with_a_single_machine_has_no_candidate() {
    let app = App::echo();
    let sim = start(config().machines(1).quiet(true), &app).await;
    replay_once(&app, "elsewhere=true".to_owned());
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 502);
    assert!(resp.body.is_empty());
    assert!(
        sim.events()
            .iter()
            .any(|e| e.kind == EventKind::ReplayFailed)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn region_replays_follow_the_balancer_or_fail() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    for ok in [
        "region=iad",
        "region=any",
        "region=\"sjc,iad\"",
        "region=na",
    ] {
        replay_once(&app, ok.to_owned());
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 200, "{ok}");
    }
    // No Machine runs in sjc or eu: the replay fails (an empty 502, like Fly) ...
    for bad in ["region=sjc", "region=eu"] {
        replay_once(&app, bad.to_owned());
        let resp = get(&sim.url()).await;
        assert_eq!(resp.status, 502, "{bad}");
        assert!(resp.body.is_empty());
    }
    // ... unless a fallback is given.
    app.set_handler(|s| {
        if s.header("fly-replay-failed").is_some() {
            Reply::ok(format!("machine={}", s.machine))
        } else {
            Reply::replay("region=sjc;fallback=prefer_self")
        }
    });
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 200);
    let seen = app.seen().pop().unwrap();
    let failed = seen.header("fly-replay-failed").unwrap();
    assert!(failed.contains("reason=no_candidate"), "{failed}");
    sim.shutdown().await;
}

#[tokio::test]
async fn more_than_ten_replays_is_pa02() {
    let app = App::echo();
    let sim = start(config().quiet(true), &app).await;
    app.set_handler(|_| Reply::replay("elsewhere=true"));
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("fly-error"), Some("PA02"));
    assert!(
        resp.text().contains("more than 10 times"),
        "{}",
        resp.text()
    );
    // The original delivery plus 10 replays; the 11th fly-replay is refused.
    assert_eq!(app.runs(), 11);
    let m = sim.machines();
    assert_eq!(m.iter().map(|m| m.replays_sent).sum::<u64>(), 11);
    assert_eq!(m.iter().map(|m| m.replays_received).sum::<u64>(), 10);
    assert_eq!(m.iter().map(|m| m.served).sum::<u64>(), 0);
    assert!(
        sim.events()
            .iter()
            .any(|e| e.code.as_deref() == Some("PA02"))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn ten_replays_are_allowed() {
    let app = App::echo();
    let sim = start(config(), &app).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    app.set_handler(move |s| {
        if r.fetch_add(1, Ordering::SeqCst) < 10 {
            Reply::replay("elsewhere=true")
        } else {
            Reply::ok(format!("machine={}", s.machine))
        }
    });
    let resp = get(&sim.url()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(runs.load(Ordering::SeqCst), 11);
    sim.shutdown().await;
}
