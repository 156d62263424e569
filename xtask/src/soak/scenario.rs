//! The scenarios of the soak: what happens to the cluster while the clients
//! run. `classic` is the fault schedule of [`super::faults`] (destroy, stop
//! and start, drain); the others drive flysim's lifecycle: a rolling
//! deploy, a blue-green deploy, autostop cycles with cold starts, scaling
//! 3 -> 6 -> 2, and network faults. Each returns its fault windows (seen
//! from outside, by watching the proxy's table) and its phases (for the
//! per-phase p99).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flysim::{
    AutoStop, Config, DeployState, FaultKind as NetFault, FlySim, HealthCheck, MachineInfo,
    MachineState, Strategy,
};

use super::metrics::{Fault, FaultKind};
use super::traffic::Traffic;

/// What happens to the cluster during one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Scenario {
    /// One Machine destroyed, one stopped then started, one drained.
    Classic,
    /// `fly deploy --strategy rolling`.
    Rolling,
    /// `fly deploy --strategy bluegreen`.
    BlueGreen,
    /// Idle Machines autostopped in two lulls, autostarted (cold starts)
    /// by the clients pinned to them.
    Autostop,
    /// `fly scale count 6`, then `2`.
    Scale,
    /// A reset, a delay and a blackhole, one Machine each.
    Network,
}

impl Scenario {
    pub(crate) const ALL: [Scenario; 6] = [
        Scenario::Classic,
        Scenario::Rolling,
        Scenario::BlueGreen,
        Scenario::Autostop,
        Scenario::Scale,
        Scenario::Network,
    ];

    /// Its name on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Classic => "classic",
            Scenario::Rolling => "rolling",
            Scenario::BlueGreen => "bluegreen",
            Scenario::Autostop => "autostop",
            Scenario::Scale => "scale",
            Scenario::Network => "network",
        }
    }

    /// Its section title in RELIABILITY.md.
    pub(crate) fn title(self) -> &'static str {
        match self {
            Scenario::Classic => "Destroy, stop and start, drain",
            Scenario::Rolling => "Rolling deploy",
            Scenario::BlueGreen => "Blue-green deploy",
            Scenario::Autostop => "Autostop cycles with cold starts",
            Scenario::Scale => "Scale 3 -> 6 -> 2",
            Scenario::Network => "Network faults",
        }
    }

    /// What it does, for RELIABILITY.md.
    pub(crate) fn describe(self) -> String {
        let cold = COLD_START.as_millis();
        let common = format!(
            "flysim runs with a {cold} ms cold start, health checks (`GET /health` every \
             {} ms, {} ms timeout) and a {} s response timeout.",
            CHECK.as_millis(),
            CHECK_TIMEOUT.as_millis(),
            RESPONSE_TIMEOUT.as_secs()
        );
        let lead = LEAD.as_secs_f64();
        match self {
            Scenario::Classic => "3 Machines; at fixed shares of the request budget Machine A is \
                destroyed, B is stopped then started, C is drained (SIGTERM), exits and is \
                started again (see Method)."
                .to_owned(),
            Scenario::Rolling => format!(
                "3 Machines; after {lead} s, `fly deploy --strategy rolling`: each Machine in \
                 turn leaves the rotation, gets SIGTERM and drains, exits, is started again \
                 with its ID and health-checked before the next. Its clients are moved and \
                 re-pinned (`prefer_instance` falls back with \
                 `fly-preferred-instance-unavailable`). {common}"
            ),
            Scenario::BlueGreen => format!(
                "3 Machines; after {lead} s, `fly deploy --strategy bluegreen`: 3 new Machines \
                 (new IDs) are started and health-checked out of the rotation, then in one \
                 step they join it and the old ones leave it and are destroyed: every \
                 client's cookie names a gone Machine. {common}"
            ),
            Scenario::Autostop => format!(
                "3 Machines, `auto_stop_machines = \"stop\"`, `min_machines_running = 1`, \
                 {} s idle time. Twice, the clients pause (a lull) until autostop has stopped \
                 2 Machines, then resume for {} s, and until every Machine runs again (at \
                 most {} s more): a client pinned to a stopped Machine is replayed to it, \
                 which starts it once its stopping process has exited ({cold} ms cold \
                 start). {common}",
                IDLE.as_secs(),
                WAKE.as_secs(),
                WAKE_MORE.as_secs()
            ),
            Scenario::Scale => format!(
                "3 Machines; after {lead} s `fly scale count 6` (3 new Machines), {} s later \
                 `fly scale count 2`, which destroys the 3 new ones and one of the first \
                 (the newest first): their clients are stranded. {common}",
                AT_SIX.as_secs()
            ),
            Scenario::Network => format!(
                "3 Machines; after {lead} s Machine A's connections are reset for {f} s; then \
                 B answers {} ms late for {f} s; then C is a blackhole for {f} s (requests \
                 accepted, never answered). A Machine failing its health check leaves the \
                 rotation until it passes again. {common}",
                DELAY.as_millis(),
                f = FAULT_FOR.as_secs_f64()
            ),
        }
    }

    /// Whether its faults must strand clients (destroyed or updated Machines).
    pub(crate) fn strands(self) -> bool {
        matches!(
            self,
            Scenario::Classic | Scenario::Rolling | Scenario::BlueGreen | Scenario::Scale
        )
    }

    /// `rolling,bluegreen,...` (or `all`).
    pub(crate) fn parse_list(list: &str) -> Result<Vec<Scenario>, String> {
        if list == "all" {
            return Ok(Scenario::ALL.to_vec());
        }
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim) {
            let s = Scenario::ALL
                .into_iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown scenario {name:?} ({} or all)", names.join(", "))
                })?;
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// flysim's settings for it, on top of the soak's `base`.
    pub(crate) fn config(self, base: Config) -> Config {
        if self == Scenario::Classic {
            return base;
        }
        let check = HealthCheck {
            path: "/health".to_owned(),
            interval: CHECK,
            timeout: CHECK_TIMEOUT,
            grace_period: Duration::ZERO,
        };
        let config = base
            .cold_start(COLD_START)
            .health_check(Some(check))
            .response_timeout(RESPONSE_TIMEOUT)
            .deploy_check_timeout(Duration::from_secs(30));
        match self {
            Scenario::Autostop => config
                .auto_stop(AutoStop::Stop)
                .idle_stop(IDLE)
                .min_machines_running(1),
            _ => config,
        }
    }
}

/// The cold start of every start flysim makes on its own (Fly: about 1.3 s;
/// shorter here so that a full soak fits in its time).
pub(crate) const COLD_START: Duration = Duration::from_millis(800);
const CHECK: Duration = Duration::from_millis(250);
const CHECK_TIMEOUT: Duration = Duration::from_millis(600);
/// The proxy's response timeout in these scenarios.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Steady traffic before the first action and after the last.
const LEAD: Duration = Duration::from_millis(2500);
const IDLE: Duration = Duration::from_secs(1);
/// How long the clients run after a lull, at least; at most [`WAKE_MORE`]
/// more until every Machine runs again.
const WAKE: Duration = Duration::from_secs(4);
const WAKE_MORE: Duration = Duration::from_secs(10);
const AT_SIX: Duration = Duration::from_secs(3);
const FAULT_FOR: Duration = Duration::from_millis(2500);
const DELAY: Duration = Duration::from_millis(300);
/// How long any one step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

/// A named span of the traffic, for the per-phase p99.
#[derive(Clone, Debug)]
pub(crate) struct Phase {
    pub(crate) name: String,
    /// The Machine it concerns, if one (a network fault's).
    pub(crate) machine: Option<String>,
    pub(crate) start: Duration,
    pub(crate) end: Duration,
}

/// What a scenario produced.
pub(crate) struct Timeline {
    pub(crate) faults: Vec<Fault>,
    pub(crate) phases: Vec<Phase>,
}

/// Whether the proxy would balance to `m` now.
fn routable(m: &MachineInfo) -> bool {
    m.state == MachineState::Started && !m.updating && m.healthy != Some(false)
}

/// Why `m` is out of the rotation, in a few words.
fn why_out(m: &MachineInfo) -> String {
    match m.state {
        MachineState::Destroyed => "destroyed".to_owned(),
        MachineState::Stopped if m.updating => "stopped by the deploy".to_owned(),
        MachineState::Started if m.updating => "started again, health-checked".to_owned(),
        MachineState::Started => "failing its health check".to_owned(),
        other => other.as_str().to_owned(),
    }
}

/// One change seen in the proxy's table.
#[derive(Clone, Debug)]
struct Change {
    at: Duration,
    id: String,
    routable: bool,
    what: String,
}

/// Polls the proxy's table (every 2 ms) until `done`, teaching the traffic
/// every new Machine ID and recording when each Machine leaves the rotation
/// (the last poll that still saw it in) and rejoins it (the first poll that
/// sees it back).
async fn watch(
    sim: &FlySim,
    traffic: &Traffic,
    done: tokio::sync::watch::Receiver<bool>,
) -> Vec<Change> {
    let mut last: BTreeMap<String, (bool, String)> = BTreeMap::new();
    let mut changes = Vec::new();
    // When the table was last read: a Machine seen out now may have left
    // any time since (a poll can lag on a loaded machine), so its window
    // opens then; one seen back closes its window now.
    let mut previous = traffic.now();
    loop {
        let polled = traffic.now();
        for m in sim.machines() {
            traffic.learn(&m.id);
            let now = (routable(&m), why_out(&m));
            let changed = last.get(&m.id).is_none_or(|was| *was != now);
            if changed {
                changes.push(Change {
                    at: if now.0 { polled } else { previous },
                    id: m.id.clone(),
                    routable: now.0,
                    what: if now.0 {
                        "back in the rotation".to_owned()
                    } else {
                        format!("out of the rotation ({})", now.1)
                    },
                });
                last.insert(m.id.clone(), now);
            }
        }
        if *done.borrow() {
            return changes;
        }
        previous = polled;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The windows the changes show: each time a Machine that was in the
/// rotation left it, until it came back (or the traffic `end`ed); a
/// Machine that never came back and is destroyed is a destroy window.
fn windows(changes: &[Change], end: Duration) -> Vec<Fault> {
    let mut by_id: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
    for c in changes {
        by_id.entry(&c.id).or_default().push(c);
    }
    let mut out = Vec::new();
    for (id, list) in by_id {
        let mut open: Option<(Duration, Vec<(Duration, String)>)> = None;
        let mut was_in = false;
        for c in list {
            match (&mut open, c.routable) {
                (None, false) if was_in => open = Some((c.at, vec![(c.at, c.what.clone())])),
                (Some((_, steps)), false) => steps.push((c.at, c.what.clone())),
                (Some((start, steps)), true) => {
                    steps.push((c.at, c.what.clone()));
                    out.push(Fault {
                        kind: FaultKind::Out,
                        machine: id.to_owned(),
                        start: *start,
                        effective: *start,
                        settled: c.at,
                        steps: std::mem::take(steps),
                    });
                    open = None;
                }
                _ => {}
            }
            was_in |= c.routable;
        }
        if let Some((start, steps)) = open {
            let destroyed = steps.iter().any(|(_, w)| w.contains("destroyed"));
            out.push(Fault {
                kind: if destroyed {
                    FaultKind::Destroy
                } else {
                    FaultKind::Out
                },
                machine: id.to_owned(),
                start,
                effective: start,
                settled: end.max(start),
                steps,
            });
        }
    }
    out.sort_by_key(|f| f.start);
    out
}

async fn until(traffic: &Traffic, at: Duration) {
    let now = traffic.now();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .map_err(|_| format!("{what}: no result within {STEP_TIMEOUT:?}"))?
}

pub(crate) fn phase(name: impl Into<String>, start: Duration, end: Duration) -> Phase {
    Phase {
        name: name.into(),
        machine: None,
        start,
        end,
    }
}

/// Runs `scenario` (not `classic`) against the cluster while the clients
/// run; stops the traffic at the end.
pub(crate) async fn run(
    scenario: Scenario,
    sim: &FlySim,
    traffic: &Arc<Traffic>,
) -> Result<Timeline, String> {
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let watching = watch(sim, traffic, done_rx);
    let acting = async {
        let result = act(scenario, sim, traffic).await;
        traffic.pause(false);
        traffic.stop();
        let _ = done_tx.send(true);
        result
    };
    let (changes, acted) = tokio::join!(watching, acting);
    let mut phases = acted?;
    let end = traffic.now();
    if let Some(last) = phases.last_mut() {
        last.end = last.end.max(end);
    }
    let mut faults = windows(&changes, end);
    faults.extend(network_windows(scenario, &phases));
    faults.sort_by_key(|f| f.start);
    Ok(Timeline { faults, phases })
}

/// The network scenario's own fault windows, from its phases: the reset,
/// delay and blackhole phases (the blackhole's until its last request
/// timed out).
fn network_windows(scenario: Scenario, phases: &[Phase]) -> Vec<Fault> {
    if scenario != Scenario::Network {
        return Vec::new();
    }
    phases
        .iter()
        .filter_map(|p| {
            let id = p.machine.clone()?;
            let (kind, settled) = match p.name.as_str() {
                "reset" => (FaultKind::Reset, p.end),
                "delay" => (FaultKind::Delay, p.end),
                "blackhole" => (FaultKind::Blackhole, p.end),
                _ => return None,
            };
            Some(Fault {
                kind,
                machine: id,
                start: p.start,
                effective: p.start,
                settled,
                steps: vec![(p.start, format!("{kind:?} began").to_lowercase())],
            })
        })
        .collect()
}

/// The scenario's actions; its phases.
async fn act(scenario: Scenario, sim: &FlySim, traffic: &Traffic) -> Result<Vec<Phase>, String> {
    let mut phases = Vec::new();
    until(traffic, LEAD).await;
    let t = traffic.now();
    phases.push(phase("before", Duration::ZERO, t));
    match scenario {
        Scenario::Classic => return Err("classic runs the fault schedule".to_owned()),
        Scenario::Rolling | Scenario::BlueGreen => {
            let strategy = if scenario == Scenario::Rolling {
                Strategy::Rolling
            } else {
                Strategy::BlueGreen
            };
            let status = bounded("deploy", async {
                sim.deploy(strategy)
                    .await
                    .map_err(|e| format!("deploy: {e}"))
            })
            .await?;
            if status.state != DeployState::Succeeded {
                return Err(format!(
                    "the deploy did not succeed: {}",
                    status.error.unwrap_or_default()
                ));
            }
            let done = traffic.now();
            phases.push(phase(format!("{} deploy", strategy.as_str()), t, done));
            until(traffic, done + LEAD).await;
            phases.push(phase("after", done, traffic.now()));
        }
        Scenario::Autostop => {
            let mut from = t;
            for cycle in 1..=2 {
                traffic.pause(true);
                bounded("autostop", async {
                    loop {
                        let started = sim
                            .machines()
                            .iter()
                            .filter(|m| m.state == MachineState::Started)
                            .count();
                        if started <= 1 {
                            return Ok(());
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await?;
                let woke = traffic.now();
                phases.push(phase(format!("lull {cycle} (autostop)"), from, woke));
                traffic.pause(false);
                until(traffic, woke + WAKE).await;
                // Each cycle starts with every Machine running again (their
                // clients' replays start them; a start waits for the stopped
                // process to have exited), or gives up waiting after a while.
                let deadline = traffic.now() + WAKE_MORE;
                while traffic.now() < deadline
                    && sim
                        .machines()
                        .iter()
                        .any(|m| m.state != MachineState::Started)
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                from = traffic.now();
                phases.push(phase(format!("wake {cycle} (cold starts)"), woke, from));
            }
        }
        Scenario::Scale => {
            bounded("scale up", async {
                sim.scale(6).await.map_err(|e| format!("scale 6: {e}"))
            })
            .await?;
            let up = traffic.now();
            phases.push(phase("scale 3 -> 6", t, up));
            until(traffic, up + AT_SIX).await;
            let six = traffic.now();
            phases.push(phase("6 Machines", up, six));
            bounded("scale down", async {
                sim.scale(2).await.map_err(|e| format!("scale 2: {e}"))
            })
            .await?;
            let down = traffic.now();
            phases.push(phase("scale 6 -> 2", six, down));
            until(traffic, down + LEAD).await;
            phases.push(phase("after", down, traffic.now()));
        }
        Scenario::Network => {
            let ids = sim.machine_ids();
            let [a, b, c] = match ids.as_slice() {
                [a, b, c] => [a.clone(), b.clone(), c.clone()],
                _ => return Err(format!("expected 3 Machines, found {}", ids.len())),
            };
            let gap = Duration::from_millis(1500);
            let mut from = t;
            let mut prev: Option<&str> = None;
            for (kind, id, name) in [
                (NetFault::Reset, a, "reset"),
                (NetFault::Delay(DELAY), b, "delay"),
                (NetFault::Blackhole, c, "blackhole"),
            ] {
                let begun = traffic.now();
                sim.fault(&id, kind, FAULT_FOR)
                    .map_err(|e| format!("{name} fault: {e}"))?;
                if let Some(prev) = prev {
                    phases.push(phase(format!("after the {prev}"), from, begun));
                }
                prev = Some(name);
                // A blackholed request is answered (502) at the response timeout.
                let lasting = if name == "blackhole" {
                    FAULT_FOR + RESPONSE_TIMEOUT + Duration::from_millis(200)
                } else {
                    FAULT_FOR
                };
                until(traffic, begun + lasting).await;
                let over = traffic.now();
                phases.push(Phase {
                    machine: Some(id),
                    ..phase(name, begun, over)
                });
                until(traffic, over + gap).await;
                from = over;
            }
            until(traffic, from + LEAD).await;
            phases.push(phase("after the blackhole", from, traffic.now()));
        }
    }
    Ok(phases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn change(at: u64, id: &str, routable: bool, what: &str) -> Change {
        Change {
            at: ms(at),
            id: id.to_owned(),
            routable,
            what: what.to_owned(),
        }
    }

    #[test]
    fn scenarios_parse() {
        assert_eq!(Scenario::parse_list("all").unwrap().len(), 6);
        assert_eq!(
            Scenario::parse_list("rolling,network,rolling").unwrap(),
            [Scenario::Rolling, Scenario::Network]
        );
        assert!(Scenario::parse_list("rolling,sideways").is_err());
    }

    #[test]
    fn windows_open_when_a_machine_leaves_and_close_when_it_returns() {
        let changes = [
            change(0, "a", true, "back"),
            change(0, "b", true, "back"),
            // A new Machine, never in the rotation before: no window.
            change(5, "n", false, "out of the rotation (stopped)"),
            change(
                10,
                "a",
                false,
                "out of the rotation (stopped by the deploy)",
            ),
            change(
                20,
                "a",
                false,
                "out of the rotation (started again, health-checked)",
            ),
            change(30, "a", true, "back in the rotation"),
            change(40, "b", false, "out of the rotation (destroyed)"),
            change(50, "n", true, "back in the rotation"),
        ];
        let w = windows(&changes, ms(100));
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].kind, w[0].machine.as_str()), (FaultKind::Out, "a"));
        assert_eq!((w[0].start, w[0].settled), (ms(10), ms(30)));
        assert_eq!(w[0].steps.len(), 3);
        assert_eq!((w[1].kind, w[1].settled), (FaultKind::Destroy, ms(100)));
    }

    #[test]
    fn network_phases_become_fault_windows() {
        let on = |name: &str, id: &str, from, to| Phase {
            machine: Some(id.to_owned()),
            ..phase(name, ms(from), ms(to))
        };
        let phases = [
            phase("before", ms(0), ms(10)),
            on("reset", "aaaa", 10, 20),
            phase("recovery", ms(20), ms(30)),
            on("blackhole", "cccc", 30, 60),
        ];
        let w = network_windows(Scenario::Network, &phases);
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].kind, w[0].machine.as_str()),
            (FaultKind::Reset, "aaaa")
        );
        assert_eq!((w[1].kind, w[1].settled), (FaultKind::Blackhole, ms(60)));
        assert!(network_windows(Scenario::Rolling, &phases).is_empty());
    }
}
