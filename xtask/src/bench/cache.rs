//! Fly's replay cache off and on: a pinned user's requests through flysim at
//! 3 and 10 Machines of example-axum.
//!
//! Two flysim processes run side by side with the same number of Machines,
//! one without and one with the replay cache rule of `examples/fly.toml`
//! (`path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id`). Every
//! request carries the cookie naming Machine 1, as a pinned browser's do;
//! flysim balances round-robin, so without the cache (N-1)/N of them land
//! elsewhere and are replayed, and with it all but the first are routed
//! home by the cache. The two sides alternate, A/B then B/A, round by round.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::Plan;
use super::hop::Flysim;
use super::instructions::splice_section;
use super::server::{Pinning, http_get};
use super::wrk::{self, Load, Measured, Rounds};

/// The rule of `examples/fly.toml`.
pub(crate) const RULE: &str = "path_prefix=/,ttl_seconds=300,type=cookie,name=fly-machine-id";

/// Machine counts measured.
pub(crate) const SIZES: [usize; 2] = [3, 10];

/// One side (cache off or on) at one size.
#[derive(Debug, Clone)]
pub(crate) struct CacheRow {
    pub(crate) machines: usize,
    pub(crate) cache: bool,
    /// With 1 connection (nothing queues), one per round.
    pub(crate) single: Vec<Measured>,
    /// With the usual connection count, one per round.
    pub(crate) runs: Vec<Measured>,
    pub(crate) replays_per_request: f64,
    pub(crate) hits_per_request: f64,
}

impl Rounds for CacheRow {
    fn runs(&self) -> &[Measured] {
        &self.runs
    }
    fn single(&self) -> &[Measured] {
        &self.single
    }
}

/// Runs both sides at every size with the flysim binary and `app`.
pub(crate) fn run(
    flysim: &Path,
    app: &Path,
    plan: &Plan,
    pinning: &Pinning,
    logs: &Path,
) -> Result<Vec<CacheRow>, String> {
    let mut rows = Vec::new();
    for machines in SIZES {
        eprintln!(
            "\n==> replay cache off vs on: {machines} Machines of example-axum behind flysim"
        );
        let sides = [
            Flysim::start(flysim, app, pinning, logs, ("cache-off", machines, &[]))?,
            Flysim::start(
                flysim,
                app,
                pinning,
                logs,
                ("cache-on", machines, &["--replay-cache", RULE]),
            )?,
        ];
        let mut loads = Vec::new();
        for (cache, sim) in sides.iter().enumerate() {
            let home = sim.machines()?.into_iter().next().ok_or("no Machine")?;
            let cookie = format!("fly-machine-id={}", home.id);
            // Pinned requests must end at Machine 1, whichever Machine they reach first.
            for _ in 0..machines {
                let answer =
                    http_get(sim.front, "/", &[("Cookie", &cookie)]).map_err(|e| e.to_string())?;
                if answer.status != 200 || !answer.text().contains(home.id.as_str()) {
                    return Err(format!(
                        "a pinned request (cache {}) did not end at its Machine: {} {:?}",
                        if cache == 1 { "on" } else { "off" },
                        answer.status,
                        answer.text()
                    ));
                }
            }
            loads.push(Load {
                url: format!("http://{}/", sim.front),
                headers: vec![("Cookie".to_owned(), cookie)],
                duration: plan.warmup,
                connections: plan.connections,
            });
        }
        for load in &loads {
            wrk::run(load, pinning)?;
        }
        let mut side_rows: Vec<CacheRow> = (0..2)
            .map(|cache| CacheRow {
                machines,
                cache: cache == 1,
                single: Vec::new(),
                runs: Vec::new(),
                replays_per_request: 0.0,
                hits_per_request: 0.0,
            })
            .collect();
        let mut counts = [(0u64, 0u64, 0u64); 2];
        for round in 0..plan.hop_rounds {
            for k in 0..2 {
                let i = (k + round) % 2;
                let sim = &sides[i];
                let (replays, hits) = (sim.replays_sent()?, sim.cache_hits()?);
                let load = |connections| Load {
                    duration: plan.duration,
                    connections,
                    ..loads[i].clone()
                };
                let single = wrk::run(&load(1), pinning)?;
                let m = wrk::run(&load(plan.connections), pinning)?;
                let replays = sim.replays_sent()? - replays;
                let hits = sim.cache_hits()? - hits;
                let requests = single.requests + m.requests;
                eprintln!(
                    "    round {}/{} cache {:<3}: 1 conn p50 {:>6.0} us p99 {:>6.0} us | {} conns {:>7.0} req/s p50 {:>6.0} us p99 {:>6.0} us | {:.3} replays/request",
                    round + 1,
                    plan.hop_rounds,
                    if i == 1 { "on" } else { "off" },
                    single.p50_us,
                    single.p99_us,
                    plan.connections,
                    m.rps,
                    m.p50_us,
                    m.p99_us,
                    replays as f64 / requests.max(1) as f64,
                );
                counts[i].0 += replays;
                counts[i].1 += hits;
                counts[i].2 += requests;
                side_rows[i].single.push(single);
                side_rows[i].runs.push(m);
            }
        }
        for (row, (replays, hits, requests)) in side_rows.iter_mut().zip(counts) {
            row.replays_per_request = replays as f64 / requests.max(1) as f64;
            row.hits_per_request = hits as f64 / requests.max(1) as f64;
        }
        drop(sides);
        rows.extend(side_rows);
    }
    Ok(rows)
}

/// The most replays per request a pinned user may cost at 10 Machines with
/// the cache (issue "Zero-hop stickiness"; from 0.90 without it).
pub(crate) const REPLAYS_BUDGET: f64 = 0.05;

/// The BENCHMARKS.md section.
pub(crate) fn markdown(rows: &[CacheRow], plan: &Plan) -> String {
    format!(
        "A pinned user's requests through flysim, at 3 and 10 Machines of example-axum \
         (release). Two flysim processes run side by side with the same Machine count: \
         one without a replay cache, one with the rule `examples/fly.toml` ships \
         (`--replay-cache {RULE}`). Every request carries the cookie naming Machine 1, as \
         a pinned browser's do, and flysim balances round-robin: without the cache \
         (N-1)/N of the requests reach another Machine first and are replayed; with it, \
         the first replay is remembered and every later request is routed home by the \
         cache (`fly-replay-cache-status: hit`). Each side is measured {rounds} times \
         ({dur} s each, off then on in odd rounds, on then off in even ones) with wrk \
         twice, with 1 connection and with {conns}; replays and hits are flysim's admin \
         counters over the measured runs (hits can exceed requests by the few wrk left \
         unfinished at the end of a run). Alone: `cargo xtask bench --replay-cache`.\n\n{table}\n",
        rounds = plan.hop_rounds,
        dur = plan.duration.as_secs(),
        conns = plan.connections,
        table = super::report::Run::cache_table(rows),
    )
}

/// The budget row: replays per request at 10 Machines with the cache.
pub(crate) fn budget_rows(rows: &[CacheRow]) -> String {
    match rows.iter().find(|r| r.machines == 10 && r.cache) {
        Some(r) => format!(
            "| a pinned user at 10 Machines with the replay cache: at most {REPLAYS_BUDGET} replays per request | {:.3} (without the cache: {}) | {} |\n",
            r.replays_per_request,
            rows.iter()
                .find(|o| o.machines == 10 && !o.cache)
                .map_or("-".to_owned(), |o| format!("{:.3}", o.replays_per_request)),
            if r.replays_per_request <= REPLAYS_BUDGET {
                "**met**"
            } else {
                "**missed**"
            }
        ),
        None => String::new(),
    }
}

/// BENCHMARKS.md with this section and its budget row in place.
pub(crate) fn splice(md: &str, rows: &[CacheRow], plan: &Plan) -> String {
    splice_section(
        md,
        "replay-cache",
        "Zero-hop stickiness: Fly's replay cache off and on",
        &markdown(rows, plan),
        &budget_rows(rows),
    )
}

/// `cargo xtask bench --replay-cache [--quick]`: this comparison alone,
/// spliced into BENCHMARKS.md.
pub(crate) fn run_alone(plan: &Plan, pin: bool, started: Instant) -> Result<(), String> {
    wrk::ensure_installed()?;
    let pinning = Pinning::detect(pin);
    let binaries = crate::build_examples(&["axum"])?;
    let (_, app) = binaries
        .into_iter()
        .find(|(fw, _)| fw == "axum")
        .ok_or("examples/axum is missing")?;
    let flysim: PathBuf = super::build_flysim()?;
    let logs = crate::target_dir().join("bench-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let rows = run(&flysim, &app, plan, &pinning, &logs)?;
    println!("\n{}", super::report::Run::cache_table(&rows));
    let path = crate::root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, splice(&old, &rows, plan))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "wrote the replay cache comparison into {} (took {})",
        path.display(),
        crate::machine::duration(started.elapsed())
    );
    Ok(())
}
