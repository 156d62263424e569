//! `cargo xtask bench [--quick] [--no-pin] [FRAMEWORK..]`: what the middleware
//! costs, measured side by side in one run.
//!
//! 1. `decide` micro-benchmarks (criterion, `sticky-core/benches/decide.rs`)
//!    and the allocation-count test (`sticky-core/tests/alloc.rs`).
//! 2. For each example app present: the release binary with the middleware ON
//!    (`FLY_MACHINE_ID` set; every request carries the cookie naming this
//!    Machine, so every request takes the Stick path) against the same binary
//!    with it OFF (no `FLY_MACHINE_ID`: the engine is disabled), both
//!    processes alive, load alternated between them A/B, B/A, ... with wrk on
//!    loopback.
//! 3. The cost of one replay hop: 2 Machines of example-axum behind flysim,
//!    direct vs through the proxy vs through the proxy with one replay.
//! 4. Fly's replay cache off vs on: a pinned user's requests through flysim
//!    at 3 and 10 Machines (replays per request, latency; alone with
//!    `--replay-cache`).
//! 5. Instruction counts under callgrind (`instructions.rs`; alone with
//!    `--instructions`): `decide` per path, and every example ON vs OFF;
//!    and key affinity at 3 to 1,000 Machines (`lookup.rs`, criterion).
//! 6. The decision counters' cost on the Stick path (`counting.rs`; alone
//!    with `--counting`): on vs off interleaved in one run, nanoseconds,
//!    and their instructions from step 5.
//!
//! It prints the tables and writes `BENCHMARKS.md` and `docs/benchmarks.svg`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{FRAMEWORKS, build_examples, cargo, root, run as run_step, target_dir};

mod ab;
mod cache;
mod chart;
mod counting;
mod hop;
mod instructions;
mod lookup;
mod micro;
mod report;
mod server;
mod wrk;

/// The Machine ID the ON server runs as, and the cookie value every request carries.
pub(crate) const MACHINE_ID: &str = "148ed599c14189";

/// How long and how often to measure.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// `--quick`.
    pub(crate) quick: bool,
    /// A/B rounds per framework (each round measures ON and OFF once).
    pub(crate) rounds: usize,
    /// Rounds of the replay-hop comparison (each measures the 3 routes once).
    pub(crate) hop_rounds: usize,
    /// Length of one wrk measurement.
    pub(crate) duration: Duration,
    /// Length of the discarded warm-up run against each process.
    pub(crate) warmup: Duration,
    /// Concurrent connections wrk keeps open (1 wrk thread).
    pub(crate) connections: u32,
    /// Extra arguments for the criterion harness.
    pub(crate) criterion_args: Vec<&'static str>,
}

impl Plan {
    pub(crate) fn full() -> Plan {
        Plan::new(false)
    }

    pub(crate) fn quick() -> Plan {
        Plan::new(true)
    }

    /// One line for the report.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} rounds x {} s per side per framework after a {} s warm-up, {} rounds x {} s \
             per hop route, criterion `{}`",
            self.rounds,
            self.duration.as_secs(),
            self.warmup.as_secs(),
            self.hop_rounds,
            self.duration.as_secs(),
            self.criterion_args.join(" ")
        )
    }

    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 6,
                hop_rounds: 3,
                duration: Duration::from_secs(1),
                warmup: Duration::from_secs(1),
                connections: 32,
                criterion_args: vec!["--warm-up-time", "0.5", "--measurement-time", "1"],
            }
        } else {
            Plan {
                quick,
                rounds: 15,
                hop_rounds: 5,
                duration: Duration::from_secs(2),
                warmup: Duration::from_secs(2),
                connections: 32,
                criterion_args: vec!["--warm-up-time", "2", "--measurement-time", "5"],
            }
        }
    }
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let mut quick = false;
    let mut pin = true;
    let mut only = Vec::new();
    let mut instructions_only = false;
    let mut cache_only = false;
    let mut counting_only = false;
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--instructions" => instructions_only = true,
            "--replay-cache" => cache_only = true,
            "--counting" => counting_only = true,
            "--no-pin" => pin = false,
            fw if FRAMEWORKS.contains(&fw) => only.push(fw),
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: cargo xtask bench [--quick] [--no-pin] [--instructions] [--replay-cache] [--counting] [{}..])",
                    FRAMEWORKS.join("|")
                ));
            }
        }
    }
    let plan = Plan::new(quick);
    let wanted: Vec<&str> = FRAMEWORKS
        .iter()
        .copied()
        .filter(|fw| only.is_empty() || only.contains(fw))
        .collect();
    if instructions_only {
        return instructions::run_alone(&wanted, started);
    }
    if cache_only {
        return cache::run_alone(&plan, pin, started);
    }
    if counting_only {
        return counting::run_alone(&plan, started);
    }

    let wrk_version = wrk::ensure_installed()?;
    let pinning = server::Pinning::detect(pin);
    let mut machine = report::MachineInfo::collect(&wrk_version, &pinning);

    let mut phases = Vec::new();
    let mut phase = Instant::now();
    let binaries = build_examples(&wanted)?;
    if binaries.is_empty() {
        return Err("no example app found under examples/".to_owned());
    }
    let has_axum = binaries.iter().any(|(fw, _)| fw == "axum");
    let flysim = if has_axum {
        Some(build_flysim()?)
    } else {
        None
    };
    phases.push(("release builds", phase.elapsed()));
    let logs = target_dir().join("bench-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;

    phase = Instant::now();
    let core = micro::criterion(&plan)?;
    let keys = lookup::criterion(&plan)?;
    let allocations = micro::alloc_test()?;
    let counting = counting::timings(&plan)?;
    report::print_core(&core);
    phases.push(("decide benches + allocation test", phase.elapsed()));

    phase = Instant::now();
    let mut adapters = Vec::new();
    for (fw, binary) in &binaries {
        eprintln!("\n==> A/B under load: {fw} ({})", binary.display());
        let result = ab::run(fw, binary, &plan, &pinning, &logs)?;
        eprintln!("{}", result.summary_line());
        adapters.push(result);
    }
    phases.push(("adapter A/B", phase.elapsed()));

    phase = Instant::now();
    let hop = match (binaries.iter().find(|(fw, _)| fw == "axum"), &flysim) {
        (Some((_, app)), Some(flysim)) => {
            eprintln!("\n==> replay hop: 2 Machines of example-axum behind flysim");
            let rows = hop::run(flysim, app, &plan, &pinning, &logs)?;
            phases.push(("replay hop", phase.elapsed()));
            Some(rows)
        }
        _ => {
            eprintln!("\n(examples/axum is missing: no replay-hop measurement)");
            None
        }
    };

    phase = Instant::now();
    let cache = match (binaries.iter().find(|(fw, _)| fw == "axum"), &flysim) {
        (Some((_, app)), Some(flysim)) => {
            let rows = cache::run(flysim, app, &plan, &pinning, &logs)?;
            phases.push(("replay cache off vs on", phase.elapsed()));
            Some(rows)
        }
        _ => None,
    };

    phase = Instant::now();
    let counts = instructions::run(&binaries, &logs)?;
    phases.push(("instruction counts (callgrind)", phase.elapsed()));

    machine.finish(started.elapsed());
    let run = report::Run {
        plan: &plan,
        machine: &machine,
        core: &core,
        allocations,
        adapters: &adapters,
        hop: hop.as_deref(),
        cache: cache.as_deref(),
        phases: &phases,
    };
    println!("\n{}", run.console());

    let chart_path: PathBuf = root().join("docs").join("benchmarks.svg");
    chart::render(&chart_path, &adapters, hop.as_deref())?;
    let md_path = root().join("BENCHMARKS.md");
    println!("{}", instructions::markdown(&counts));
    let markdown = instructions::splice(&run.markdown(), &counts);
    let markdown = counting::splice(&markdown, &counting, &counts.paths);
    let markdown = match &cache {
        Some(rows) => cache::splice(&markdown, rows, &plan),
        None => markdown,
    };
    println!("{}", lookup::markdown(&keys, &plan));
    let markdown = instructions::splice_section(
        &markdown,
        "keys",
        "Key affinity: lookups and table rebuilds",
        &lookup::markdown(&keys, &plan),
        &lookup::budget_rows(&keys),
    );
    std::fs::write(&md_path, markdown).map_err(|e| format!("{}: {e}", md_path.display()))?;
    println!(
        "wrote {} and {} ({} run took {})",
        md_path.display(),
        chart_path.display(),
        if quick { "--quick" } else { "full" },
        crate::machine::duration(started.elapsed())
    );
    Ok(())
}

/// Builds the flysim binary in release (the proxy of the replay-hop runs).
pub(crate) fn build_flysim() -> Result<PathBuf, String> {
    let mut build = cargo();
    build.args(["build", "--release", "-p", "flysim", "--bin", "flysim"]);
    run_step("cargo build --release -p flysim", build)?;
    Ok(target_dir().join("release").join("flysim"))
}

/// The `q` quantile of `values` (0..=1, linear interpolation; 0 for none).
pub(crate) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The median of `values` (0 for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The smallest and largest of `values` (0, 0 for none).
pub(crate) fn min_max(values: &[f64]) -> (f64, f64) {
    let mut it = values.iter().copied().filter(|x| x.is_finite());
    let Some(first) = it.next() else {
        return (0.0, 0.0);
    };
    it.fold((first, first), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

/// The spread of `values` around their median: (max - min) / median, in percent.
pub(crate) fn spread_pct(values: &[f64]) -> f64 {
    let m = median(values);
    let (lo, hi) = min_max(values);
    if m > 0.0 { (hi - lo) / m * 100.0 } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
        assert_eq!(spread_pct(&[90.0, 100.0, 110.0]), 20.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.25), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.5), 1.5);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
