//! Faults with Node clients connected (3 Machines, random balancing):
//! a destroyed Machine's clients reconnect (socket.io's own reconnect) to a
//! live Machine and their new sessions are pinned there (no "Session ID
//! unknown", acks from one Machine, WebSocket again); a draining Machine's
//! clients move on their next reconnect.

mod harness;

use std::collections::HashMap;
use std::time::Duration;

use flysim::Signal;
use harness::{Driven, n, start};
use serde_json::{Value, json};

const CLIENTS: usize = 30;
const REPORT: Duration = Duration::from_secs(30);

fn machines(report: &Value) -> Vec<String> {
    assert!(
        report["settled"].as_bool().unwrap_or(false),
        "not settled: {report}"
    );
    let clients = report["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), CLIENTS, "{report}");
    clients
        .iter()
        .map(|c| {
            assert!(c["mismatch"].is_null(), "acks from two Machines: {c}");
            assert_eq!(n(c, "sessionUnknown"), 0, "{c}");
            c["machine"].as_str().expect("placed").to_owned()
        })
        .collect()
}

fn busiest(placed: &[String], among: &[String]) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in placed.iter().filter(|m| among.contains(m)) {
        *counts.entry(m).or_default() += 1;
    }
    let (m, _) = counts.into_iter().max_by_key(|(_, c)| *c).expect("clients");
    m.to_owned()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Node and Python clients: cargo xtask socketio"]
async fn destroyed_and_drained_machines_move_their_clients() {
    let sim = start(true, 4).await;
    let ids = sim.machine_ids();
    let mut js = Driven::spawn(
        "faults.mjs",
        &[
            "--url".into(),
            sim.url(),
            "--clients".into(),
            CLIENTS.to_string(),
        ],
    );
    js.send(&json!({ "cmd": "settle" })).await;
    let before = machines(&js.report(REPORT).await);

    // Destroy the busiest Machine: only its clients reconnect, each to a
    // live Machine, without an error loop.
    let victim = busiest(&before, &ids);
    sim.destroy_machine(&victim).await.expect("destroyed");
    js.send(&json!({ "cmd": "settle", "avoid": [victim] }))
        .await;
    let report = js.report(REPORT).await;
    eprintln!("after destroy: {report}");
    let after = machines(&report);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if *b == victim {
            assert_ne!(*a, victim, "client {i}");
        } else {
            assert_eq!(a, b, "client {i} did not move");
            assert_eq!(n(&report["clients"][i], "connects"), 1, "client {i}");
        }
        // One failed attempt at most while the Machine went away.
        assert!(n(&report["clients"][i], "connectErrors") <= 1, "client {i}");
    }

    // Every reconnect is a new session, pinned anew: reconnecting everyone
    // again gives no session error. (Node's cookie jar belongs to one
    // engine.io connection, so a reconnect starts without the cookie and
    // may land anywhere; a browser's jar keeps it.)
    js.send(&json!({ "cmd": "bounce", "on": null })).await;
    let report = js.report(REPORT).await;
    eprintln!("after bounce: {report}");
    let after = machines(&report);
    assert!(after.iter().all(|m| *m != victim), "{report}");

    // Drain the busiest live Machine (SIGTERM: the example drains for
    // DRAIN_SECONDS, 4 s): its clients' next reconnect, before it exits,
    // lands elsewhere; the others stay.
    let live: Vec<String> = ids.iter().filter(|m| **m != victim).cloned().collect();
    let drained = busiest(&after, &live);
    sim.signal_machine(&drained, Signal::Term)
        .await
        .expect("signalled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    js.send(&json!({
        "cmd": "bounce",
        "on": [drained],
        "avoid": [victim, drained],
        "timeoutMs": 3000
    }))
    .await;
    let report = js.report(REPORT).await;
    eprintln!("after drain: {report}");
    let moved = machines(&report);
    for (i, (b, a)) in after.iter().zip(&moved).enumerate() {
        if *b == drained {
            assert_ne!(*a, drained, "client {i}");
        } else {
            assert_eq!(a, b, "client {i}");
        }
    }
    js.finish().await;
    sim.shutdown().await;
}
