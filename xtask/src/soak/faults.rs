//! The faults, at fixed shares of the request budget: Machine A is destroyed,
//! B is stopped then started, C is drained (SIGTERM), exits, and is started
//! again. Each is timed as seen from outside (its window).

use std::future::Future;
use std::time::Duration;

use conformance::client::{Request, send};
use flysim::{FlySim, MachineState, Signal};

use super::metrics::{Fault, FaultKind};
use super::traffic::Traffic;

/// When each fault begins, as a share of the request budget sent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    pub(crate) destroy: f64,
    pub(crate) stop: f64,
    pub(crate) start: f64,
    pub(crate) drain: f64,
}

pub(crate) const SCHEDULE: Schedule = Schedule {
    destroy: 0.15,
    stop: 0.35,
    start: 0.45,
    drain: 0.60,
};

/// How long any one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long before the drained Machine's own timer ends the proxy stops
/// routing to it.
const ROTATION_LEAD: Duration = Duration::from_millis(500);

/// Waits until `share` of the budget has been sent; `Err` if the traffic
/// ended first (the run is too short for its faults).
async fn reach(traffic: &Traffic, share: f64, what: &str) -> Result<(), String> {
    loop {
        if traffic.all_sent() {
            return Err(format!(
                "every request was sent before the {what} could begin: the run is too short \
                 (more --requests, or more --think-ms)"
            ));
        }
        if traffic.progress() >= share {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn bounded<T>(what: &str, f: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: no result within {STEP_TIMEOUT:?}"))?
}

/// Runs `action` while polling until the proxy's table shows `id` in
/// `state`; returns when that was first seen, and when `action` returned.
async fn act_and_watch(
    sim: &FlySim,
    traffic: &Traffic,
    id: &str,
    state: MachineState,
    what: &str,
    action: impl Future<Output = std::io::Result<()>>,
) -> Result<(Duration, Duration), String> {
    let watch = async {
        loop {
            if sim.machine(id).is_some_and(|m| m.state == state) {
                return Ok::<_, String>(traffic.now());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let act = async {
        action.await.map_err(|e| format!("{what}: {e}"))?;
        Ok::<_, String>(traffic.now())
    };
    let (seen, done) = bounded(what, async { tokio::try_join!(watch, act) }).await?;
    Ok((seen, done))
}

/// Runs the three faults against Machines `ids[0..3]` as the traffic reaches
/// the schedule. Returns each fault with its window; on an error, the
/// faults done before it too, so that their windows still count (a
/// destroyed Machine's clients are stranded whether or not a later step
/// could run).
pub(crate) async fn run(
    sim: &FlySim,
    traffic: &Traffic,
    schedule: Schedule,
    drain: Duration,
) -> Result<Vec<Fault>, (Vec<Fault>, String)> {
    let mut faults = Vec::new();
    match run_into(&mut faults, sim, traffic, schedule, drain).await {
        Ok(()) => Ok(faults),
        Err(e) => Err((faults, e)),
    }
}

async fn run_into(
    faults: &mut Vec<Fault>,
    sim: &FlySim,
    traffic: &Traffic,
    schedule: Schedule,
    drain: Duration,
) -> Result<(), String> {
    let ids = sim.machine_ids();
    let [a, b, c] = match ids.as_slice() {
        [a, b, c] => [a.clone(), b.clone(), c.clone()],
        _ => return Err(format!("expected 3 Machines, found {}", ids.len())),
    };

    // A: destroyed. The proxy forgets it at once; its process gets SIGTERM
    // and finishes what it was serving (kill_timeout), then it is gone.
    reach(traffic, schedule.destroy, "destroy").await?;
    let start = traffic.now();
    let (effective, settled) = act_and_watch(
        sim,
        traffic,
        &a,
        MachineState::Destroyed,
        "destroy",
        sim.destroy_machine(&a),
    )
    .await?;
    faults.push(Fault {
        kind: FaultKind::Destroy,
        machine: a,
        start,
        effective,
        settled,
        steps: vec![
            (start, "destroy requested".to_owned()),
            (effective, "destroyed in the proxy's table".to_owned()),
            (settled, "its process has exited".to_owned()),
        ],
    });

    // B: stopped (out of the rotation at once, SIGTERM, exit), then started.
    // Requests replayed to it in between autostart it, as on Fly.
    reach(traffic, schedule.stop, "stop").await?;
    let start = traffic.now();
    let (effective, stopped) = act_and_watch(
        sim,
        traffic,
        &b,
        MachineState::Stopped,
        "stop",
        sim.stop_machine(&b),
    )
    .await?;
    reach(traffic, schedule.start, "start").await?;
    let start_at = traffic.now();
    let autostarted = sim
        .machine(&b)
        .is_some_and(|m| m.state == MachineState::Started);
    bounded("start", async {
        sim.start_machine(&b)
            .await
            .map_err(|e| format!("start: {e}"))
    })
    .await?;
    let settled = traffic.now();
    let started = if autostarted {
        "running again (a request replayed to it had autostarted it already)"
    } else {
        "started"
    };
    faults.push(Fault {
        kind: FaultKind::StopStart,
        machine: b,
        start,
        effective,
        settled,
        steps: vec![
            (start, "stop requested".to_owned()),
            (effective, "stopped in the proxy's table".to_owned()),
            (stopped, "its process has exited".to_owned()),
            (start_at, "start requested".to_owned()),
            (settled, started.to_owned()),
        ],
    });

    // C: SIGTERM while it stays in the rotation: it drains for DRAIN_SECONDS
    // (requests pinned to it are replayed elsewhere and re-pinned), leaves
    // the rotation, exits, and is started again (as after a rolling deploy).
    reach(traffic, schedule.drain, "drain").await?;
    let before = sim.machine(&c).ok_or_else(|| format!("no Machine {c}"))?;
    let addr = before.addr.ok_or("the Machine to drain is not running")?;
    let start = traffic.now();
    sim.signal_machine(&c, Signal::Term)
        .await
        .map_err(|e| format!("SIGTERM: {e}"))?;
    let effective = bounded("drain", wait_draining(traffic, addr, &c)).await?;
    // Shortly before its own timer ends, the proxy stops routing to it, as
    // the platform does with a Machine it stops; it then exits on its own. (A
    // Machine that exits while requests are still routed to it resets those
    // that reach its listener as it closes: see RELIABILITY.md.)
    let out_at = start + drain.saturating_sub(ROTATION_LEAD);
    tokio::time::sleep(out_at.saturating_sub(traffic.now())).await;
    let mut steps = vec![
        (start, "SIGTERM sent".to_owned()),
        (
            effective,
            "answering pinned requests with fly-replay: elsewhere=true".to_owned(),
        ),
    ];
    let still_running = sim
        .machine(&c)
        .is_some_and(|m| m.state == MachineState::Started && m.starts == before.starts);
    let exited = if still_running {
        let out = traffic.now();
        let (_, exited) = act_and_watch(
            sim,
            traffic,
            &c,
            MachineState::Stopped,
            "drain",
            sim.stop_machine(&c),
        )
        .await?;
        steps.push((out, "out of the proxy's rotation".to_owned()));
        exited
    } else {
        traffic.now()
    };
    steps.push((exited, "its process has exited (drain over)".to_owned()));
    let restart = traffic.now();
    bounded("restart", async {
        sim.start_machine(&c)
            .await
            .map_err(|e| format!("restart: {e}"))
    })
    .await?;
    let settled = traffic.now();
    faults.push(Fault {
        kind: FaultKind::Drain,
        machine: c,
        start,
        effective,
        settled,
        steps: {
            steps.push((restart, "start requested".to_owned()));
            steps.push((settled, "started again".to_owned()));
            steps
        },
    });
    Ok(())
}

/// Asks the Machine directly (not through the proxy), as a request pinned to
/// it, until it answers with a drain replay; returns when it first did.
async fn wait_draining(
    traffic: &Traffic,
    addr: std::net::SocketAddr,
    id: &str,
) -> Result<Duration, String> {
    loop {
        let res = send(addr, &Request::get("/").cookie(id)).await?;
        if res
            .one("fly-replay")
            .is_some_and(|v| v.contains("elsewhere=true"))
        {
            return Ok(traffic.now());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
