//! The cost of one replay hop: 2 Machines of example-axum behind flysim.
//!
//! - direct: straight to Machine 1 (no proxy);
//! - proxied: through flysim, `fly-force-instance-id: M1`, cookie naming M1
//!   (one proxy hop, no replay);
//! - replayed: through flysim, `fly-force-instance-id: M2`, cookie naming M1:
//!   M2's middleware answers `fly-replay`, flysim sends the request again to M1
//!   (one proxy hop plus one replay hop).
//!
//! flysim runs as its release binary (`cargo build --release -p flysim`), not
//! in the xtask process: xtask is built in the dev profile, and an unoptimised
//! proxy would make the hop look an order of magnitude dearer than it is.

use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Plan;
use super::server::{Pinning, free_port, http_get, pinned_command};
use super::wrk::{self, Load, Measured, Rounds};

/// One route's measurements.
#[derive(Debug, Clone)]
pub(crate) struct HopRow {
    /// Short name.
    pub(crate) name: &'static str,
    /// What the request goes through.
    pub(crate) route: &'static str,
    /// With the usual connection count, one per round.
    pub(crate) runs: Vec<Measured>,
    /// With 1 connection (nothing queues), one per round.
    pub(crate) single: Vec<Measured>,
    /// Replays flysim performed per completed request, over all rounds.
    pub(crate) replays_per_request: f64,
}

impl Rounds for HopRow {
    fn runs(&self) -> &[Measured] {
        &self.runs
    }
    fn single(&self) -> &[Measured] {
        &self.single
    }
}

struct Route {
    name: &'static str,
    route: &'static str,
    addr: SocketAddr,
    headers: Vec<(String, String)>,
}

/// A Machine as the admin interface reports it.
pub(super) struct MachineState {
    pub(super) id: String,
    pub(super) addr: Option<SocketAddr>,
    started: bool,
    replays_sent: u64,
}

/// The flysim process. Dropping it sends SIGTERM (flysim then stops its
/// Machines), waits up to 5 s, and SIGKILLs flysim and the Machine processes it
/// started if they are still there.
pub(super) struct Flysim {
    child: Child,
    admin: SocketAddr,
    pub(super) front: SocketAddr,
    /// The Machine processes, as started: (pid, program).
    machine_pids: Vec<(u32, String)>,
    log: std::path::PathBuf,
}

impl Flysim {
    /// `machines` Machines of `app` behind the flysim binary, with `extra`
    /// flysim arguments; its log is `logs/<name>.log`.
    pub(super) fn start(
        flysim: &Path,
        app: &Path,
        pinning: &Pinning,
        logs: &Path,
        (name, machines, extra): (&str, usize, &[&str]),
    ) -> Result<Flysim, String> {
        let front = free_port()?;
        let admin = free_port()?;
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        // Pinned like the servers of the A/B runs; the Machines inherit the CPU.
        let mut cmd = pinned_command(flysim, pinning.server);
        cmd.args([
            "--machines",
            &machines.to_string(),
            "--port",
            &front.to_string(),
        ])
        .args(["--admin-port", &admin.to_string()])
        .args(["--app", "sticky-bench", "--child-output", "null"])
        .args(extra)
        .arg("--")
        .arg(app)
        .env("RUST_LOG", "flysim=warn")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", flysim.display()))?;
        let mut sim = Flysim {
            child,
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            front: SocketAddr::from(([127, 0, 0, 1], front)),
            machine_pids: Vec::new(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = sim.child.try_wait() {
                let log = std::fs::read_to_string(&sim.log).unwrap_or_default();
                return Err(format!("flysim exited during start-up ({status}):\n{log}"));
            }
            if let Ok(up) = sim.machines()
                && up.len() == machines
                && up.iter().all(|m| m.started && m.addr.is_some())
            {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "flysim's {machines} Machines were not up within 30 s (log: {})",
                    sim.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let program = app.to_string_lossy().into_owned();
        sim.machine_pids = children_of(sim.child.id())
            .into_iter()
            .map(|pid| (pid, program.clone()))
            .collect();
        Ok(sim)
    }

    pub(super) fn machines(&self) -> Result<Vec<MachineState>, String> {
        let answer = http_get(self.admin, "/machines", &[]).map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!("admin GET /machines: {}", answer.status));
        }
        let value: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|e| format!("admin /machines: {e}"))?;
        let list = value.as_array().ok_or("admin /machines: not a list")?;
        Ok(list
            .iter()
            .map(|m| MachineState {
                id: m["id"].as_str().unwrap_or_default().to_owned(),
                addr: m["addr"].as_str().and_then(|a| a.parse().ok()),
                started: m["state"] == "started",
                replays_sent: m["replays_sent"].as_u64().unwrap_or(0),
            })
            .collect())
    }

    pub(super) fn replays_sent(&self) -> Result<u64, String> {
        Ok(self.machines()?.iter().map(|m| m.replays_sent).sum())
    }

    /// Requests the replay cache routed so far (`GET /replay-cache`).
    pub(super) fn cache_hits(&self) -> Result<u64, String> {
        let answer = http_get(self.admin, "/replay-cache", &[]).map_err(|e| e.to_string())?;
        if answer.status != 200 {
            return Err(format!("admin GET /replay-cache: {}", answer.status));
        }
        let value: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|e| format!("admin /replay-cache: {e}"))?;
        value["stats"]["hits"]
            .as_u64()
            .ok_or_else(|| "admin /replay-cache: no stats.hits".to_owned())
    }
}

impl Drop for Flysim {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Machines flysim did not stop (if it had to be killed): by their ids,
        // and only while the id still runs the app it ran at start-up.
        for (pid, program) in &self.machine_pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let first = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            if first == program.as_bytes() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Process ids whose parent is `pid` (from `/proc/<n>/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|n| {
            std::fs::read_to_string(format!("/proc/{n}/stat")).is_ok_and(|stat| {
                // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Runs the comparison with the flysim binary `flysim` and the app `app`.
pub(crate) fn run(
    flysim: &Path,
    app: &Path,
    plan: &Plan,
    pinning: &Pinning,
    logs: &Path,
) -> Result<Vec<HopRow>, String> {
    let sim = Flysim::start(flysim, app, pinning, logs, ("flysim", 2, &[]))?;
    let machines = sim.machines()?;
    let [m1, m2] = machines.as_slice() else {
        return Err(format!("flysim runs {} Machines, not 2", machines.len()));
    };
    let m1_addr = m1.addr.ok_or("Machine 1 has no address")?;
    let cookie = ("Cookie".to_owned(), format!("fly-machine-id={}", m1.id));
    let force = |id: &str| ("fly-force-instance-id".to_owned(), id.to_owned());
    let routes = [
        Route {
            name: "direct",
            route: "client -> Machine 1",
            addr: m1_addr,
            headers: vec![cookie.clone()],
        },
        Route {
            name: "proxied",
            route: "client -> flysim -> Machine 1",
            addr: sim.front,
            headers: vec![cookie.clone(), force(&m1.id)],
        },
        Route {
            name: "replayed",
            route: "client -> flysim -> Machine 2 (fly-replay) -> flysim -> Machine 1",
            addr: sim.front,
            headers: vec![cookie.clone(), force(&m2.id)],
        },
    ];

    // Each route must end at Machine 1 with a 200, the replayed one after 1 replay.
    for route in &routes {
        let before = sim.replays_sent()?;
        let headers: Vec<(&str, &str)> = route
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let answer = http_get(route.addr, "/", &headers).map_err(|e| e.to_string())?;
        let replays = sim.replays_sent()? - before;
        let expected = u64::from(route.name == "replayed");
        if answer.status != 200 || !answer.text().contains(m1.id.as_str()) || replays != expected {
            return Err(format!(
                "route {:?} did not end at Machine 1 after {expected} replay(s): {} {:?}, {replays} replays",
                route.name,
                answer.status,
                answer.text()
            ));
        }
    }

    let load = |route: &Route, duration: Duration, connections: u32| Load {
        url: format!("http://{}/", route.addr),
        headers: route.headers.clone(),
        duration,
        connections,
    };
    for route in &routes {
        wrk::run(&load(route, plan.warmup, plan.connections), pinning)?;
    }

    let mut rows: Vec<HopRow> = routes
        .iter()
        .map(|r| HopRow {
            name: r.name,
            route: r.route,
            runs: Vec::new(),
            single: Vec::new(),
            replays_per_request: 0.0,
        })
        .collect();
    let mut counts = vec![(0u64, 0u64); routes.len()];
    for round in 0..plan.hop_rounds {
        // Rotate the order each round.
        for k in 0..routes.len() {
            let i = (k + round) % routes.len();
            let before = sim.replays_sent()?;
            let single = wrk::run(&load(&routes[i], plan.duration, 1), pinning)?;
            let m = wrk::run(&load(&routes[i], plan.duration, plan.connections), pinning)?;
            let replays = sim.replays_sent()? - before;
            eprintln!(
                "    round {}/{} {:<8}: 1 conn p50 {:>6.0} us p99 {:>6.0} us | {} conns {:>7.0} req/s p50 {:>6.0} us p99 {:>6.0} us | {replays} replays",
                round + 1,
                plan.hop_rounds,
                routes[i].name,
                single.p50_us,
                single.p99_us,
                plan.connections,
                m.rps,
                m.p50_us,
                m.p99_us,
            );
            counts[i].0 += replays;
            counts[i].1 += m.requests + single.requests;
            rows[i].runs.push(m);
            rows[i].single.push(single);
        }
    }
    for (row, (replays, requests)) in rows.iter_mut().zip(counts) {
        row.replays_per_request = replays as f64 / requests.max(1) as f64;
    }
    drop(sim);
    Ok(rows)
}
