//! A second real client: python-socketio's sync client (pinned in
//! python/requirements.txt) through flysim, 3 Machines, random balancing.

mod harness;

use harness::{n, python_load, start};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Node and Python clients: cargo xtask socketio"]
async fn python_clients_connect_ack_and_upgrade_on_one_machine() {
    let sim = start(true, 5).await;
    let run = python_load(&sim, 12, 20).await;
    eprintln!("python: {run}");
    assert_eq!(n(&run, "connected"), 12, "{run}");
    assert_eq!(n(&run, "acks"), 12 * 20, "{run}");
    assert_eq!(n(&run, "oneMachine"), 12, "{run}");
    assert_eq!(n(&run, "onWebsocket"), 12, "{run}");
    assert_eq!(n(&run, "connectErrors"), 0, "{run}");
    assert_eq!(n(&run, "disconnects"), 0, "{run}");
    sim.shutdown().await;
}
