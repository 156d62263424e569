//! The official Node client (`socket.io-client`, pinned in js/package-lock.json)
//! through flysim: 3 Machines, random balancing, default transports (polling,
//! then the WebSocket upgrade).

mod harness;

use harness::{load, n, start};
use serde_json::Value;

const CLIENTS: &str = "50";
const ECHOES: &str = "20";

fn assert_all_well(run: &Value, clients: u64, echoes: u64) {
    let ctx = format!("{run}");
    assert_eq!(n(run, "connected"), clients, "every client connects: {ctx}");
    assert_eq!(n(run, "acks"), clients * echoes, "every echo acked: {ctx}");
    assert_eq!(
        n(run, "oneMachine"),
        clients,
        "one Machine per client: {ctx}"
    );
    assert_eq!(n(run, "roomOk"), clients, "room messages: {ctx}");
    assert_eq!(n(run, "onWebsocket"), clients, "upgraded: {ctx}");
    assert_eq!(n(run, "connectErrors"), 0, "{ctx}");
    assert_eq!(n(run, "sessionUnknown"), 0, "{ctx}");
    assert_eq!(n(run, "upgradeErrors"), 0, "{ctx}");
    assert_eq!(n(run, "disconnects"), 0, "{ctx}");
}

/// With the layer every client holds; the same run without it (STICKY=off)
/// hits "Session ID unknown", which proves the test can fail.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Node and Python clients: cargo xtask socketio"]
async fn node_clients_stick_with_the_layer_and_break_without_it() {
    let sim = start(true, 5).await;
    let on = load(&sim, &["--clients", CLIENTS, "--echoes", ECHOES]).await;
    eprintln!("sticky on:  {on}");
    assert_all_well(&on, 50, 20);
    // Random balancing did spread the clients: otherwise nothing was proved.
    let spread = on["clientsPerMachine"].as_object().map_or(0, |m| m.len());
    assert_eq!(spread, 3, "{on}");
    sim.shutdown().await;

    let sim = start(false, 5).await;
    let off = load(
        &sim,
        &[
            "--clients",
            CLIENTS,
            "--echoes",
            ECHOES,
            "--deadline-ms",
            "8000",
        ],
    )
    .await;
    eprintln!("sticky off: {off}");
    assert!(n(&off, "sessionUnknown") > 0, "{off}");
    assert!(n(&off, "connectErrors") > 0, "{off}");
    assert!(n(&off, "acks") < 50 * 20, "{off}");
    sim.shutdown().await;
}

/// Clients without a cookie jar: the documented recipe (ask `GET /machine`,
/// pass `query: { fly_instance_id }`) holds like the cookie; a client that
/// does neither is not sticky and fails on polling as without the layer;
/// WebSocket-only needs no stickiness for one connection.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Node and Python clients: cargo xtask socketio"]
async fn clients_without_a_cookie_jar() {
    let sim = start(true, 5).await;
    let query = load(&sim, &["--clients", "20", "--mode", "query"]).await;
    eprintln!("query:          {query}");
    assert_all_well(&query, 20, 20);

    let ws_only = load(
        &sim,
        &[
            "--clients",
            "20",
            "--mode",
            "none",
            "--transports",
            "websocket",
        ],
    )
    .await;
    eprintln!("none, ws only:  {ws_only}");
    assert_all_well(&ws_only, 20, 20);

    let neither = load(
        &sim,
        &["--clients", "20", "--mode", "none", "--deadline-ms", "6000"],
    )
    .await;
    eprintln!("none, polling:  {neither}");
    assert!(n(&neither, "sessionUnknown") > 0, "{neither}");
    sim.shutdown().await;
}
