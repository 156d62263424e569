//! `cargo xtask soak [--quick] [--scenario LIST] [--clients N] [--requests N]
//! [--think-ms N] [--drain-seconds N] [--seed N] [--write] [FRAMEWORK..]`:
//! every example as Machines (release binaries, real processes) behind
//! flysim, under a mixed load of concurrent browser-like clients, in each
//! [`scenario`]: one Machine destroyed, one stopped then started, one
//! drained (`classic`); a rolling deploy; a blue-green deploy; autostop
//! cycles with cold starts; scaling 3 -> 6 -> 2; network faults.
//!
//! Per framework and scenario, in turn, without and with the replay cache:
//! flysim with 3 Machines of the example; `clients` tokio tasks, each a
//! visitor with its own cookie jar, send requests (page loads, small
//! uploads, uploads over 1 MB, chunked uploads, WebSocket sessions; see
//! [`traffic`]): `requests` in all for `classic`, whose faults of
//! [`faults`] run at fixed shares of that budget; for the others until the
//! scenario's actions are over. Every answer is checked (the Machine that
//! served it, the byte count of an upload, every WebSocket echo) and the
//! figures of [`metrics`] are printed. A full run with the defaults writes
//! `RELIABILITY.md`; the task fails if a target is missed.
//!
//! `--long` is the long run of [`long`]: a million requests, no faults, each
//! process's memory and file descriptors sampled and judged.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flysim::{
    ChildOutput, Config, EventKind, FlySim, Launch, ReplayCacheRule, ReplayCacheStats, Signal,
};

use crate::{FRAMEWORKS, build_examples, root};

mod faults;
mod long;
mod metrics;
mod report;
mod scenario;
mod traffic;

use metrics::{Fault, Figures};
use scenario::{Phase, Scenario};

/// The sizes of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Options {
    pub(crate) quick: bool,
    pub(crate) clients: usize,
    pub(crate) requests: usize,
    /// Mean pause of a client between two requests, in milliseconds.
    pub(crate) think_ms: u64,
    /// `DRAIN_SECONDS` of every Machine: how long it keeps serving after SIGTERM.
    pub(crate) drain_seconds: u64,
    pub(crate) seed: u64,
    pub(crate) frameworks: Vec<String>,
    /// Runs without (`false`) and with (`true`) the replay cache, in this order.
    pub(crate) caches: Vec<bool>,
    /// The scenarios, in this order.
    pub(crate) scenarios: Vec<Scenario>,
    /// Write RELIABILITY.md even when this is not a full default run.
    pub(crate) write: bool,
    /// The long run ([`long`]) instead of the scenarios.
    pub(crate) long: bool,
}

/// Clients, and the request budget of `classic` (the other scenarios run
/// until their actions are over, at most [`CAP`] requests). Its faults
/// begin at shares of the budget and each waits for the process it stops
/// to exit: actix-web's graceful exit (the drain, then up to 5 s) outlasted
/// 8,000 requests (15.8 s on a quiet machine) before the drain could begin.
const FULL: (usize, usize) = (100, 16_000);
const QUICK: (usize, usize) = (40, 3_000);
const CAP: usize = 1_000_000;
const THINK_MS: u64 = 150;
const DRAIN_SECONDS: u64 = 2;
const SEED: u64 = 0x5eed_50a4;

const USAGE: &str = "usage: cargo xtask soak [--quick | --long] [--scenario all|classic,rolling,bluegreen,autostop,scale,network] \
                     [--clients N] [--requests N] [--think-ms N] [--drain-seconds N] [--seed N] \
                     [--cache off|on|both] [--write] [FRAMEWORK..]";

impl Options {
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut quick = false;
        let mut long = false;
        let mut write = false;
        let mut clients = None;
        let mut requests = None;
        let mut think_ms = None;
        let mut drain_seconds = DRAIN_SECONDS;
        let mut seed = SEED;
        let mut caches = vec![false, true];
        let mut scenarios = Scenario::ALL.to_vec();
        let mut frameworks = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut number = |name: &str| -> Result<u64, String> {
                it.next()
                    .and_then(|v| v.replace('_', "").parse().ok())
                    .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))
            };
            match arg.as_str() {
                "--quick" => quick = true,
                "--long" => long = true,
                "--write" => write = true,
                "--clients" => clients = Some(number("--clients")? as usize),
                "--requests" => requests = Some(number("--requests")? as usize),
                "--think-ms" => think_ms = Some(number("--think-ms")?),
                "--drain-seconds" => drain_seconds = number("--drain-seconds")?,
                "--seed" => seed = number("--seed")?,
                "--scenario" => {
                    let list = it
                        .next()
                        .ok_or_else(|| format!("--scenario needs a list\n{USAGE}"))?;
                    scenarios = Scenario::parse_list(list).map_err(|e| format!("{e}\n{USAGE}"))?;
                }
                "--cache" => {
                    caches = match it.next().map(String::as_str) {
                        Some("off") => vec![false],
                        Some("on") => vec![true],
                        Some("both") => vec![false, true],
                        _ => return Err(format!("--cache takes off, on or both\n{USAGE}")),
                    }
                }
                fw if FRAMEWORKS.contains(&fw) => frameworks.push(fw.to_owned()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if quick && long {
            return Err(format!("--quick and --long exclude each other\n{USAGE}"));
        }
        let (default_clients, default_requests, default_think) = if long {
            long::sizes()
        } else if quick {
            (QUICK.0, QUICK.1, THINK_MS)
        } else {
            (FULL.0, FULL.1, THINK_MS)
        };
        let clients = clients.unwrap_or(default_clients);
        let requests = requests.unwrap_or(default_requests);
        let think_ms = think_ms.unwrap_or(default_think);
        if clients == 0 || requests < clients {
            return Err(format!(
                "need at least one client and as many requests as clients\n{USAGE}"
            ));
        }
        if frameworks.is_empty() && long {
            frameworks = long::default_frameworks();
        } else if frameworks.is_empty() {
            frameworks = FRAMEWORKS.iter().map(|f| (*f).to_owned()).collect();
        }
        Ok(Options {
            quick,
            clients,
            requests,
            think_ms,
            drain_seconds,
            seed,
            frameworks,
            caches,
            scenarios,
            write,
            long,
        })
    }

    /// Whether this is the run RELIABILITY.md reports: full sizes, every framework.
    fn is_full(&self) -> bool {
        !self.quick
            && !self.long
            && (self.clients, self.requests) == FULL
            && self.think_ms == THINK_MS
            && self.drain_seconds == DRAIN_SECONDS
            && self.caches.len() == 2
            && self.frameworks.len() == FRAMEWORKS.len()
            && self.scenarios.len() == Scenario::ALL.len()
    }

    /// The command line that reproduces this run.
    pub(crate) fn command(&self) -> String {
        let mut cmd = "cargo xtask soak".to_owned();
        if self.quick {
            cmd.push_str(" --quick");
        }
        let defaults = if self.quick { QUICK } else { FULL };
        if self.clients != defaults.0 {
            let _ = write!(cmd, " --clients {}", self.clients);
        }
        if self.requests != defaults.1 {
            let _ = write!(cmd, " --requests {}", self.requests);
        }
        if self.think_ms != THINK_MS {
            let _ = write!(cmd, " --think-ms {}", self.think_ms);
        }
        if self.drain_seconds != DRAIN_SECONDS {
            let _ = write!(cmd, " --drain-seconds {}", self.drain_seconds);
        }
        if self.seed != SEED {
            let _ = write!(cmd, " --seed {}", self.seed);
        }
        if self.scenarios.len() != Scenario::ALL.len() {
            let names: Vec<&str> = self.scenarios.iter().map(|s| s.name()).collect();
            let _ = write!(cmd, " --scenario {}", names.join(","));
        }
        if let [only] = self.caches[..] {
            cmd.push_str(if only { " --cache on" } else { " --cache off" });
        }
        if self.frameworks.len() != FRAMEWORKS.len() {
            cmd.push(' ');
            cmd.push_str(&self.frameworks.join(" "));
        }
        cmd
    }
}

/// One framework's run, without or with the replay cache.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    /// What happened to the cluster.
    pub(crate) scenario: Scenario,
    /// The framework, with ` +cache` for the run with the replay cache.
    pub(crate) framework: String,
    /// The framework alone.
    pub(crate) base: String,
    /// The cache's counters, for the run with the replay cache.
    pub(crate) cache: Option<ReplayCacheStats>,
    pub(crate) figures: Figures,
    pub(crate) faults: Vec<Fault>,
    /// From the first request to the last answer.
    pub(crate) traffic_time: Duration,
    /// Replays, as flysim counted them (every Machine, destroyed ones included).
    pub(crate) replays: u64,
    /// Fallback requests after failed replays.
    pub(crate) fallbacks: u64,
    /// Idempotent requests flysim sent again on a new connection.
    pub(crate) retries: u64,
    /// Final answers Machines gave through the proxy.
    pub(crate) served: u64,
    /// Errors the proxy itself answered with (PR04, PA01...), by code.
    pub(crate) proxy_errors: Vec<String>,
    /// Why the fault schedule could not complete, if it could not.
    pub(crate) schedule_error: Option<String>,
    /// Each phase, with the p99 latency of the requests sent in it.
    pub(crate) phases: Vec<(Phase, Option<Duration>)>,
}

impl Run {
    pub(crate) fn replays_per_request(&self) -> f64 {
        self.replays as f64 / self.figures.requests.max(1) as f64
    }

    pub(crate) fn met(&self) -> bool {
        self.schedule_error.is_none() && self.figures.met()
    }
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let opts = Options::parse(args)?;
    if opts.long {
        return long::run(&opts);
    }
    let began = Instant::now();
    let info_start = report::MachineInfo::collect();
    let wanted: Vec<&str> = opts.frameworks.iter().map(String::as_str).collect();
    let binaries = build_examples(&wanted)?;
    let build_time = began.elapsed();
    if binaries.is_empty() {
        return Err("no example to soak".to_owned());
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    let mut runs = Vec::new();
    for (framework, binary) in &binaries {
        for &scenario in &opts.scenarios {
            for &cache in &opts.caches {
                eprintln!(
                    "\n==> soak: {framework}, {}: 3 Machines behind flysim{}, {} clients, {} ms mean pause",
                    scenario.name(),
                    if cache { " with the replay cache" } else { "" },
                    opts.clients,
                    opts.think_ms
                );
                let run = runtime.block_on(soak(framework, binary, &opts, cache, scenario))?;
                eprintln!("{}", report::summary_line(&run));
                runs.push(run);
            }
        }
    }
    let took = began.elapsed();
    let mut info = info_start;
    info.finish(took, build_time);
    println!("\n{}", report::table(&runs));
    println!("{}", report::cache_table(&runs));
    println!("{}", report::verdicts(&runs));
    println!(
        "took {} ({} of it building the examples)",
        crate::machine::duration(took),
        crate::machine::duration(build_time)
    );
    if opts.is_full() || opts.write {
        let path = root().join("RELIABILITY.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let text = long::keep_section(&old, report::markdown(&runs, &opts, &info));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    } else {
        println!("RELIABILITY.md not written (a full run writes it; --write forces it)");
    }
    let missed: Vec<&str> = runs
        .iter()
        .filter(|r| !r.met())
        .map(|r| r.framework.as_str())
        .collect();
    if missed.is_empty() {
        Ok(())
    } else {
        Err(format!("targets missed: {}", missed.join(", ")))
    }
}

/// The rule `examples/fly.toml` ships: the pin cookie keys the cache on `/`.
pub(crate) fn pin_cookie_rule() -> Result<ReplayCacheRule, String> {
    ReplayCacheRule::cookie("/", "fly-machine-id", Duration::from_secs(300))
        .map_err(|e| format!("replay cache rule: {e}"))
}

/// One framework in one scenario: the cluster, the clients, the faults,
/// the figures.
/// 3 Machines of `binary` as every soak runs them (the long run too), with
/// the replay cache's pin cookie rule when `cache`.
pub(crate) fn cluster(
    binary: &Path,
    opts: &Options,
    cache: bool,
) -> Result<(Config, Launch), String> {
    let launch = Launch::command(binary.to_string_lossy().into_owned(), Vec::<String>::new())
        .env("DRAIN_SECONDS", opts.drain_seconds.to_string());
    let config = Config::default()
        .machines(3)
        .admin_addr(None)
        .app_name("sticky-soak")
        .child_output(ChildOutput::Null)
        .quiet(true)
        .ready_timeout(Duration::from_secs(30))
        // Stopped and destroyed as Fly does: the signal, then a kill timeout
        // (the examples drain on SIGTERM, serve DRAIN_SECONDS, then exit).
        .kill_signal(Some(Signal::Term))
        .kill_timeout(Duration::from_secs(opts.drain_seconds + 10));
    let config = if cache {
        config.replay_cache(pin_cookie_rule()?)
    } else {
        config
    };
    Ok((config, launch))
}

async fn soak(
    framework: &str,
    binary: &Path,
    opts: &Options,
    cache: bool,
    scenario: Scenario,
) -> Result<Run, String> {
    let (config, launch) = cluster(binary, opts, cache)?;
    let config = scenario.config(config);
    let sim = FlySim::start(config, launch)
        .await
        .map_err(|e| format!("{framework}: flysim did not start: {e}"))?;
    let budget = if scenario == Scenario::Classic {
        opts.requests
    } else {
        CAP
    };
    let traffic = Arc::new(traffic::Traffic::new(
        sim.front_addr(),
        sim.machine_ids(),
        budget,
        opts.seed,
        Duration::from_millis(opts.think_ms),
    ));
    let clients: Vec<_> = (0..opts.clients)
        .map(|i| tokio::spawn(traffic::client(traffic.clone(), i as u64)))
        .collect();
    let (faults, phases) = if scenario == Scenario::Classic {
        let faults = faults::run(
            &sim,
            &traffic,
            faults::SCHEDULE,
            Duration::from_secs(opts.drain_seconds),
        )
        .await;
        (faults, None)
    } else {
        match scenario::run(scenario, &sim, &traffic).await {
            Ok(t) => (Ok(t.faults), Some(t.phases)),
            Err(e) => {
                traffic.stop();
                (Err((Vec::new(), e)), None)
            }
        }
    };
    for client in clients {
        client
            .await
            .map_err(|e| format!("{framework}: a client failed: {e}"))?;
    }
    let machines = sim.machines();
    let proxy_errors: Vec<String> = sim
        .events()
        .into_iter()
        .filter(|e| e.is_error() && e.kind != EventKind::Lifecycle)
        .map(|e| e.code.unwrap_or_else(|| format!("{:?}", e.kind)))
        .collect();
    let cache_stats = cache.then(|| sim.replay_cache_stats());
    sim.shutdown().await;
    let records = traffic.records();
    let traffic_time = records.iter().map(|r| r.end).max().unwrap_or_default();
    let last_sent = records.iter().map(|r| r.start).max().unwrap_or_default();
    let (faults, schedule_error) = match faults {
        Ok(faults) if scenario != Scenario::Classic => (faults, None),
        Ok(faults) => {
            let over = faults.iter().map(|f| f.settled).max().unwrap_or_default();
            let error = (over >= last_sent).then(|| {
                format!(
                    "the last request was sent at {:.2} s, before the faults were over ({:.2} s): \
                     the run is too short (more --requests, or more --think-ms)",
                    last_sent.as_secs_f64(),
                    over.as_secs_f64()
                )
            });
            (faults, error)
        }
        // The windows of the faults that did happen still count.
        Err((done, e)) => (done, Some(e)),
    };
    let figures = metrics::compute_for(&records, &faults, scenario.strands());
    let phases = phases.unwrap_or_else(|| classic_phases(&faults, traffic_time));
    let phases = phases
        .into_iter()
        .map(|p| {
            let p99 = metrics::p99(&records, p.start, p.end);
            (p, p99)
        })
        .collect();
    Ok(Run {
        scenario,
        phases,
        framework: if cache {
            format!("{framework} +cache")
        } else {
            framework.to_owned()
        },
        base: framework.to_owned(),
        cache: cache_stats,
        figures,
        faults,
        traffic_time,
        replays: machines.iter().map(|m| m.replays_sent).sum(),
        fallbacks: machines.iter().map(|m| m.fallbacks_received).sum(),
        retries: machines.iter().map(|m| m.retries).sum(),
        served: machines.iter().map(|m| m.served).sum(),
        proxy_errors,
        schedule_error,
    })
}

/// The phases of `classic`: before its first fault, each fault's window,
/// and after the last.
fn classic_phases(faults: &[Fault], end: Duration) -> Vec<Phase> {
    let mut phases = Vec::new();
    let mut from = Duration::ZERO;
    for f in faults {
        phases.push(scenario::phase(
            if phases.is_empty() {
                "before"
            } else {
                "between"
            },
            from,
            f.start,
        ));
        phases.push(scenario::phase(f.kind.name(), f.start, f.settled));
        from = f.settled;
    }
    phases.retain(|p| p.name != "between");
    phases.push(scenario::phase("after", from, end.max(from)));
    phases
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_parse() {
        let full = Options::parse(&[]).unwrap();
        assert_eq!((full.clients, full.requests), FULL);
        assert!(full.is_full());
        assert_eq!(full.command(), "cargo xtask soak");
        let quick = Options::parse(&args(&["--quick", "axum", "poem"])).unwrap();
        assert_eq!((quick.clients, quick.requests), QUICK);
        assert_eq!(quick.frameworks, ["axum", "poem"]);
        assert!(!quick.is_full());
        assert_eq!(quick.command(), "cargo xtask soak --quick axum poem");
        let custom = Options::parse(&args(&["--clients", "10", "--requests", "1_000"])).unwrap();
        assert_eq!((custom.clients, custom.requests), (10, 1000));
        assert!(!custom.is_full());
        assert!(Options::parse(&args(&["--clients"])).is_err());
        assert!(Options::parse(&args(&["--clients", "5", "--requests", "4"])).is_err());
        assert!(Options::parse(&args(&["flask"])).is_err());
        let some = Options::parse(&args(&["--scenario", "rolling,network"])).unwrap();
        assert_eq!(some.scenarios, [Scenario::Rolling, Scenario::Network]);
        assert!(!some.is_full());
        assert_eq!(
            some.command(),
            "cargo xtask soak --scenario rolling,network"
        );
        assert!(Options::parse(&args(&["--scenario", "sideways"])).is_err());
        assert!(Options::parse(&args(&["--scenario"])).is_err());
        let on = Options::parse(&args(&["--cache", "on"])).unwrap();
        assert_eq!(on.caches, [true]);
        assert!(!on.is_full());
        assert_eq!(on.command(), "cargo xtask soak --cache on");
        assert!(Options::parse(&args(&["--cache", "maybe"])).is_err());
        let long = Options::parse(&args(&["--long"])).unwrap();
        assert!(long.long && !long.is_full());
        assert_eq!((long.clients, long.requests, long.think_ms), long::sizes());
        assert_eq!(long.frameworks, ["axum"]);
        let long = Options::parse(&args(&["--long", "--requests", "50_000", "warp"])).unwrap();
        assert_eq!(
            (long.requests, &long.frameworks[..]),
            (50_000, &["warp".to_owned()][..])
        );
        assert!(Options::parse(&args(&["--long", "--quick"])).is_err());
    }
}
