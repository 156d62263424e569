//! `cargo xtask soak --long [--requests N] [--clients N] [--think-ms N]
//! [--seed N] [--cache on] [--write] [FRAMEWORK..]` (issue 18, item 4): one
//! framework at a time (axum unless others are listed) as 3 Machines behind
//! flysim, no faults, [`REQUESTS`] requests of the soak's mix from
//! [`traffic`], every answer checked as in every soak; every
//! [`EVERY`] the resident memory (`VmRSS`) and open file descriptors of each
//! Machine's process and of this one (it hosts flysim and the clients) are
//! sampled. [`judge`] says whether they stayed flat; the run fails if not,
//! or if a request was lost. At the end each Machine's `GET /metrics` is set
//! against flysim's counters of it ([`conformance::MachineMetrics`]: no
//! Machine restarts here, so none of its counters started again); the run
//! fails if they disagree. A full-size run (or `--write`) writes the
//! "Long run" section of RELIABILITY.md and its chart, `docs/long-run.svg`.
//!
//! The Machines run with `examples/fly.toml`'s `[env]` (flysim passes it,
//! its named assumption 37), as deployed: so with its fixed glibc mmap
//! threshold ([`MMAP_VAR`]); this process re-runs itself with the same
//! setting ([`with_deployed_malloc`]), as it hosts flysim and the clients,
//! whose memory is judged too.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conformance::MachineMetrics;
use flysim::{FlySim, FlyToml};

use super::Options;
use super::metrics::{self, Figures};
use super::report::{affinity, short};
use super::traffic::{self, Traffic};
use crate::machine::{Machine, duration};
use crate::{FRAMEWORKS, build_examples, root};

mod chart;

/// The request budget of a long run.
pub(crate) const REQUESTS: usize = 1_000_000;
/// Clients, and their mean pause (ms): see [`sizes`].
pub(crate) const CLIENTS: usize = 200;
pub(crate) const THINK_MS: u64 = 100;
/// The frameworks a long run covers unless some are listed (see [`WHY_AXUM`]).
pub(crate) const DEFAULT_FRAMEWORKS: [&str; 1] = ["axum"];
/// How often the processes are sampled.
pub(crate) const EVERY: Duration = Duration::from_secs(2);
/// Requests per round: the clients' records of one round are turned into
/// figures and dropped before the next, so this process's own memory does
/// not grow with the run (1M records would be ~200 MB).
const ROUND: usize = 25_000;

/// The verdict's rule, in the report's words (see [`judge`]).
const WARMUP: f64 = 0.2;
const EARLY_END: f64 = 0.4;
const LATE_START: f64 = 0.8;
const RSS_PERCENT: u64 = 5;
const RSS_FLOOR_KIB: u64 = 2 * 1024;
const FD_PERCENT: usize = 10;
const FD_FLOOR: usize = 8;
/// Fewer samples than this and nothing can be said.
const MIN_SAMPLES: usize = 10;

const WHY_AXUM: &str = "axum by default: it is the most used of the six and the examples' reference \
    (the benchmarks' replay hop runs on it), and every adapter shares sticky-core, where a leak in \
    the decision path would be; one framework's 1,000,000 requests take about 10 minutes on this \
    2-core machine, all six an hour. List frameworks on the command line to cover them \
    (`cargo xtask soak --long actix-web warp`).";

const BEGIN: &str = "<!-- cargo xtask soak --long: begin -->";
const END: &str = "<!-- cargo xtask soak --long: end -->";

/// glibc's mmap threshold: `examples/fly.toml` sets it in `[env]`.
pub(crate) const MMAP_VAR: &str = "MALLOC_MMAP_THRESHOLD_";

/// What the run without the setting showed (before examples/fly.toml set
/// it), kept in every report so nothing is hidden.
const WITHOUT_THE_SETTING: &str = "**Without a fixed mmap threshold** (glibc's default; the run of \
    2026-12-02 at ec98148, same requests, clients and rule, axum without the replay cache): \
    1,000,000 requests in 14 min 55 s, 0 lost, affinity 100%, fds flat, but memory **not flat**: \
    each Machine's median RSS grew from 31.7-33.0 MiB (20%-40% window) to 51.8-54.8 MiB (last \
    20%), the xtask process's from 73.6 to 94.3 MiB, in steps, and the task failed. glibc's \
    threshold is dynamic: once a block above it (here a 1-2 MB upload buffer) is freed, it rises \
    to that block's size, so later buffers of that size come from the heap and stay in it when \
    freed (a high-water mark that rises with the largest burst of uploads). The same run with \
    `MALLOC_MMAP_THRESHOLD_=131072` for xtask and the Machines was flat in every process \
    (Machines 20-22 -> 15-17 MiB, xtask 75.8 -> 74.6 MiB). So the growth was the allocator's, \
    not memory that sticky, axum or flysim keep; `examples/fly.toml` now sets the threshold \
    (large request bodies go back to the OS when freed) and this run runs as deployed. The rule \
    is the same.";

/// This process, in the samples.
const SELF_NAME: &str = "xtask (flysim + clients)";

/// The defaults of `--long` (clients, requests, think time): 200 clients
/// pausing 100 ms on average send ~1,750 requests/s on this 2-core machine
/// (release build of xtask), so 1M take ~10 minutes per framework.
pub(crate) fn sizes() -> (usize, usize, u64) {
    (CLIENTS, REQUESTS, THINK_MS)
}

/// One sample of one process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Point {
    /// Since the Machines started.
    pub(crate) at: Duration,
    /// Requests sent by then.
    pub(crate) requests: usize,
    pub(crate) pid: u32,
    pub(crate) rss_kib: u64,
    pub(crate) fds: usize,
}

/// The samples of one process (a Machine keeps its name across restarts).
#[derive(Clone, Debug, Default)]
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) points: Vec<Point>,
}

impl Series {
    /// How many times its pid changed (the Machine's process restarted).
    pub(crate) fn restarts(&self) -> usize {
        self.points
            .windows(2)
            .filter(|w| w[0].pid != w[1].pid)
            .count()
    }

    /// The samples of its current process (after the last restart).
    pub(crate) fn current(&self) -> &[Point] {
        let from = self
            .points
            .windows(2)
            .rposition(|w| w[0].pid != w[1].pid)
            .map_or(0, |i| i + 1);
        &self.points[from..]
    }
}

/// `VmRSS` of a `/proc/<pid>/status`, in KiB.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    let rest = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = rest.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

/// The resident memory (KiB) and open file descriptors of process `pid`,
/// read under `proc` (`/proc`).
pub(crate) fn read_process(proc: &Path, pid: u32) -> Result<(u64, usize), String> {
    let dir = proc.join(pid.to_string());
    let status = dir.join("status");
    let text =
        std::fs::read_to_string(&status).map_err(|e| format!("{}: {e}", status.display()))?;
    let rss = parse_vm_rss(&text).ok_or_else(|| format!("{}: no VmRSS line", status.display()))?;
    let fd = dir.join("fd");
    let fds = std::fs::read_dir(&fd)
        .map_err(|e| format!("{}: {e}", fd.display()))?
        .count();
    Ok((rss, fds))
}

/// What [`judge`] found for one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Judged {
    pub(crate) samples: usize,
    /// Median RSS (KiB) of the 20%-40% window (after the warm-up) and of the
    /// last 20% of the samples, and the growth allowed between them.
    pub(crate) rss_early: u64,
    pub(crate) rss_late: u64,
    pub(crate) rss_allowed: u64,
    /// Most fds open from the warm-up's end to the last 20% (20%-80%), and
    /// in the last 20%, and the growth allowed.
    pub(crate) fds_early: usize,
    pub(crate) fds_late: usize,
    pub(crate) fds_allowed: usize,
}

impl Judged {
    pub(crate) fn rss_flat(&self) -> bool {
        self.rss_late <= self.rss_early + self.rss_allowed
    }

    pub(crate) fn fds_flat(&self) -> bool {
        self.fds_late <= self.fds_early + self.fds_allowed
    }

    pub(crate) fn flat(&self) -> bool {
        self.rss_flat() && self.fds_flat()
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The verdict on one process's samples (in time order, one process): the
/// first 20% are its warm-up; memory is flat if the median RSS of the last
/// 20% exceeds that of the 20%-40% window by at most 5% of it or 2 MiB,
/// whichever is more; fds if the most open in the last 20% exceed the most
/// open in 20%-80% by at most 10% of it or 8, whichever is more.
pub(crate) fn judge(points: &[Point]) -> Result<Judged, String> {
    let n = points.len();
    if n < MIN_SAMPLES {
        return Err(format!(
            "{n} samples, at least {MIN_SAMPLES} needed: a longer run (more --requests)"
        ));
    }
    let at = |share: f64| ((n as f64 * share).round() as usize).min(n);
    let early = &points[at(WARMUP)..at(EARLY_END).max(at(WARMUP) + 1)];
    let late = &points[at(LATE_START).min(n - 1)..];
    let rss_early = median(early.iter().map(|p| p.rss_kib).collect());
    let rss_late = median(late.iter().map(|p| p.rss_kib).collect());
    // The fd count swings with the connections open at that instant: its
    // reference is the most open over the whole stretch after the warm-up.
    let after_warmup = &points[at(WARMUP)..at(LATE_START).max(at(WARMUP) + 1)];
    let fds_early = after_warmup.iter().map(|p| p.fds).max().unwrap_or(0);
    let fds_late = late.iter().map(|p| p.fds).max().unwrap_or(0);
    Ok(Judged {
        samples: n,
        rss_early,
        rss_late,
        rss_allowed: (rss_early * RSS_PERCENT / 100).max(RSS_FLOOR_KIB),
        fds_early,
        fds_late,
        fds_allowed: (fds_early * FD_PERCENT / 100).max(FD_FLOOR),
    })
}

/// The rule, as RELIABILITY.md states it.
fn rule() -> String {
    format!(
        "Each process's samples, in time order: the first {w}% are its warm-up. Memory is **flat** \
         if the median RSS of the last {l}% of the samples exceeds the median of the {w}%-{e}% \
         window by at most {RSS_PERCENT}% of it or {} MiB, whichever is more; file descriptors are \
         flat if the most open in the last {l}% exceed the most open from the warm-up's end to \
         then ({w}%-{ls}%; the count swings with the connections open at each instant) by at \
         most {FD_PERCENT}% or {FD_FLOOR}, whichever is more. A process judged on fewer than \
         {MIN_SAMPLES} samples, a Machine whose process changed (a crash or restart: this run has \
         no faults), a lost request, or a Machine whose `/metrics` disagrees with flysim's counts \
         fails the run.",
        RSS_FLOOR_KIB / 1024,
        w = (WARMUP * 100.0) as u32,
        e = (EARLY_END * 100.0) as u32,
        l = ((1.0 - LATE_START) * 100.0).round() as u32,
        ls = (LATE_START * 100.0).round() as u32,
    )
}

/// One framework's long run.
#[derive(Clone, Debug)]
pub(crate) struct LongRun {
    pub(crate) framework: String,
    pub(crate) cache: bool,
    pub(crate) figures: Figures,
    /// From the first request to the last answer.
    pub(crate) traffic_time: Duration,
    pub(crate) replays: u64,
    /// Machines, then this process.
    pub(crate) series: Vec<Series>,
    /// Samples that could not be read, and the first reason.
    pub(crate) skipped: usize,
    pub(crate) skipped_why: Option<String>,
    /// The 1-minute load average at each sample.
    pub(crate) load: Vec<f64>,
    /// Each Machine's `/metrics` against flysim's counters, at the end.
    pub(crate) metrics: Vec<Result<MachineMetrics, String>>,
    /// [`MMAP_VAR`] in this process, if set.
    pub(crate) xtask_mmap: Option<String>,
}

impl LongRun {
    pub(crate) fn verdicts(&self) -> Vec<(&Series, Result<Judged, String>)> {
        self.series
            .iter()
            .map(|s| (s, judge(s.current())))
            .collect()
    }

    /// Why the run fails, if it does.
    pub(crate) fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.figures.lost() > 0 || !self.figures.met() {
            out.push(format!(
                "{}: {} requests lost, affinity {:?}",
                self.framework,
                self.figures.lost(),
                self.figures.affinity()
            ));
        }
        if self.metrics.is_empty() {
            out.push(format!(
                "{}: no Machine's /metrics was read",
                self.framework
            ));
        }
        for m in &self.metrics {
            let wrong = match m {
                Ok(m) => m.check().err(),
                Err(e) => Some(e.clone()),
            };
            if let Some(e) = wrong {
                out.push(format!("{}: /metrics: {e}", self.framework));
            }
        }
        for (s, v) in self.verdicts() {
            match v {
                Err(e) => out.push(format!("{}: {e}", s.name)),
                Ok(j) if !j.flat() => out.push(format!(
                    "{}: not flat (RSS {} -> {} KiB, allowed +{}; fds {} -> {}, allowed +{})",
                    s.name,
                    j.rss_early,
                    j.rss_late,
                    j.rss_allowed,
                    j.fds_early,
                    j.fds_late,
                    j.fds_allowed
                )),
                Ok(_) => {}
            }
            if s.restarts() > 0 {
                out.push(format!(
                    "{}: its process changed {} times",
                    s.name,
                    s.restarts()
                ));
            }
        }
        out
    }
}

/// Requests sent so far, for the samples.
#[derive(Default)]
struct Progress {
    done: AtomicUsize,
    current: Mutex<Option<(Arc<Traffic>, usize)>>,
}

impl Progress {
    fn sent(&self) -> usize {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |(t, total)| (t.progress() * *total as f64) as usize);
        self.done.load(Ordering::SeqCst) + current
    }
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// The samples taken so far, by process.
#[derive(Default)]
struct Samples {
    series: Vec<Series>,
    skipped: usize,
    skipped_why: Option<String>,
    load: Vec<f64>,
}

impl Samples {
    fn push(&mut self, name: &str, point: Point) {
        match self.series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push(point),
            None => self.series.push(Series {
                name: name.to_owned(),
                points: vec![point],
            }),
        }
    }

    /// Samples every running Machine's process and this one.
    fn take(&mut self, sim: &FlySim, at: Duration, requests: usize) {
        let mut procs: Vec<(String, u32)> = sim
            .machines()
            .into_iter()
            .filter_map(|m| m.pid.map(|pid| (format!("Machine {}", short(&m.id)), pid)))
            .collect();
        procs.push((SELF_NAME.to_owned(), std::process::id()));
        for (name, pid) in procs {
            // A process may exit between the two reads: the sample is skipped.
            match read_process(Path::new("/proc"), pid) {
                Ok((rss_kib, fds)) => self.push(
                    &name,
                    Point {
                        at,
                        requests,
                        pid,
                        rss_kib,
                        fds,
                    },
                ),
                Err(e) => {
                    self.skipped += 1;
                    self.skipped_why.get_or_insert(e);
                }
            }
        }
        self.load.push(loadavg());
    }
}

/// `examples/fly.toml`, as flysim reads it.
fn deployed() -> Result<FlyToml, String> {
    FlyToml::read(root().join("examples").join("fly.toml")).map_err(|e| e.to_string())
}

/// The value `file`'s `[env]` gives [`MMAP_VAR`], if any.
pub(crate) fn mmap_threshold(file: &FlyToml) -> Option<&str> {
    file.env
        .iter()
        .find(|(k, _)| k == MMAP_VAR)
        .map(|(_, v)| v.as_str())
}

/// glibc reads [`MMAP_VAR`] once, when this process starts: if it does not
/// have the deployed value, this runs the same executable again with the
/// same arguments and the variable set, waits for it, and returns its
/// outcome (`Some`); `None` when this process already has it (or the file
/// sets none), and the run goes on here.
fn with_deployed_malloc(file: &FlyToml) -> Option<Result<(), String>> {
    let want = mmap_threshold(file)?;
    if std::env::var(MMAP_VAR).ok().as_deref() == Some(want) {
        return None;
    }
    eprintln!("==> soak --long: running again with {MMAP_VAR}={want} (examples/fly.toml's [env])");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(Err(format!("the xtask executable: {e}"))),
    };
    let status = std::process::Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(MMAP_VAR, want)
        .status();
    Some(match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "the long run ({} with {MMAP_VAR}={want}) failed: {s}",
            exe.display()
        )),
        Err(e) => Err(format!("{}: {e}", exe.display())),
    })
}

pub(crate) fn run(opts: &Options) -> Result<(), String> {
    let file = deployed()?;
    if let Some(outcome) = with_deployed_malloc(&file) {
        return outcome;
    }
    let began = Instant::now();
    let mut host = Machine::collect();
    let wanted: Vec<&str> = opts.frameworks.iter().map(String::as_str).collect();
    let binaries = build_examples(&wanted)?;
    let build_time = began.elapsed();
    if binaries.is_empty() {
        return Err("no example to soak".to_owned());
    }
    if cfg!(debug_assertions) {
        // flysim and the clients run in this process: unoptimized, they are
        // what limits the rate (~365 requests/s here against ~1,750 in release).
        eprintln!(
            "note: xtask is a debug build; `cargo run --release -p xtask -- soak --long` \
             sends the same requests several times faster"
        );
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    let cache = opts.caches == [true];
    let mut runs = Vec::new();
    for (framework, binary) in &binaries {
        eprintln!(
            "\n==> soak --long: {framework}: 3 Machines behind flysim{}, no faults, {} requests, \
             {} clients, {} ms mean pause, sampled every {} s",
            if cache { " with the replay cache" } else { "" },
            opts.requests,
            opts.clients,
            opts.think_ms,
            EVERY.as_secs()
        );
        let run = runtime.block_on(long_run(framework, binary, opts, cache, &file))?;
        println!("{}", table(&run));
        // Every sample, for a closer look than the chart's.
        let csv = crate::target_dir().join(format!("long-run-{framework}.csv"));
        match std::fs::write(&csv, samples_csv(&run)) {
            Ok(()) => println!("samples in {}", csv.display()),
            Err(e) => eprintln!("{}: {e}", csv.display()),
        }
        runs.push(run);
    }
    host.finish();
    let took = began.elapsed();
    let failures: Vec<String> = runs.iter().flat_map(LongRun::failures).collect();
    println!(
        "took {} ({} of it building the examples)",
        duration(took),
        duration(build_time)
    );
    if opts.requests == REQUESTS || opts.write {
        let svg = root().join("docs").join("long-run.svg");
        chart::render(&svg, &runs)?;
        let path = root().join("RELIABILITY.md");
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let text = put_section(&old, &section(&runs, opts, &host, took, &file));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {} and {}", path.display(), svg.display());
    } else {
        println!(
            "RELIABILITY.md not written (a run of {REQUESTS} requests writes it; --write forces it)"
        );
    }
    if failures.is_empty() {
        println!("long run: memory and file descriptors flat, 0 requests lost");
        Ok(())
    } else {
        Err(format!("long run failed:\n  {}", failures.join("\n  ")))
    }
}

/// One framework: the cluster, rounds of traffic, the samples alongside.
async fn long_run(
    framework: &str,
    binary: &Path,
    opts: &Options,
    cache: bool,
    file: &FlyToml,
) -> Result<LongRun, String> {
    let (config, launch) = super::cluster(binary, opts, cache)?;
    // As deployed; the soak's own variables (DRAIN_SECONDS) win.
    let launch = launch.fly_toml_env(file);
    let sim = FlySim::start(config, launch)
        .await
        .map_err(|e| format!("{framework}: flysim did not start: {e}"))?;
    let t0 = Instant::now();
    let progress = Progress::default();
    let over = AtomicBool::new(false);
    let samples = Mutex::new(Samples::default());
    let sampler = async {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !over.load(Ordering::SeqCst) {
            tick.tick().await;
            let sent = progress.sent();
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(&sim, t0.elapsed(), sent);
        }
    };
    let load = async {
        let result = rounds(framework, &sim, opts, &progress, t0).await;
        over.store(true, Ordering::SeqCst);
        result
    };
    let (result, ()) = tokio::join!(load, sampler);
    // The last sample, after the last answer.
    samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(&sim, t0.elapsed(), progress.sent());
    let replays = sim.machines().iter().map(|m| m.replays_sent).sum();
    // Each Machine's counters against flysim's, after the last answer (the
    // scrape itself is the only request that reached a Machine directly).
    let mut metrics = Vec::new();
    for m in sim.machines() {
        metrics.push(conformance::machine_metrics(&m, 1).await);
    }
    sim.shutdown().await;
    let (figures, traffic_time) = result?;
    let samples = samples.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(LongRun {
        framework: framework.to_owned(),
        cache,
        figures,
        traffic_time,
        replays,
        series: samples.series,
        skipped: samples.skipped,
        skipped_why: samples.skipped_why,
        load: samples.load,
        metrics,
        xtask_mmap: std::env::var(MMAP_VAR).ok(),
    })
}

/// The traffic, in rounds of [`ROUND`] requests; the figures of all.
async fn rounds(
    framework: &str,
    sim: &FlySim,
    opts: &Options,
    progress: &Progress,
    t0: Instant,
) -> Result<(Figures, Duration), String> {
    let mut figures = Figures::default();
    let first = t0.elapsed();
    let mut sent = 0;
    let mut round = 0u64;
    while sent < opts.requests {
        let budget = ROUND.min(opts.requests - sent);
        let traffic = Arc::new(Traffic::new(
            sim.front_addr(),
            sim.machine_ids(),
            budget,
            opts.seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            Duration::from_millis(opts.think_ms),
        ));
        *progress.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((traffic.clone(), budget));
        let clients: Vec<_> = (0..opts.clients.min(budget))
            .map(|i| tokio::spawn(traffic::client(traffic.clone(), i as u64)))
            .collect();
        for client in clients {
            client
                .await
                .map_err(|e| format!("{framework}: a client failed: {e}"))?;
        }
        let records = traffic.records();
        let f = metrics::compute_for(&records, &[], false);
        sent += budget;
        progress.done.store(sent, Ordering::SeqCst);
        *progress.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        figures.merge(&f);
        round += 1;
        let elapsed = t0.elapsed().saturating_sub(first);
        eprintln!(
            "    {framework}: {sent} / {} requests, {} lost, {:.0} req/s, {}",
            opts.requests,
            figures.lost(),
            sent as f64 / elapsed.as_secs_f64().max(1e-3),
            duration(elapsed)
        );
    }
    Ok((figures, t0.elapsed().saturating_sub(first)))
}

/// `process,pid,seconds,requests,rss_kib,fds`, one line per sample.
fn samples_csv(run: &LongRun) -> String {
    let mut out = String::from("process,pid,seconds,requests,rss_kib,fds\n");
    for s in &run.series {
        for p in &s.points {
            let _ = writeln!(
                out,
                "{},{},{:.1},{},{},{}",
                s.name,
                p.pid,
                p.at.as_secs_f64(),
                p.requests,
                p.rss_kib,
                p.fds
            );
        }
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One row per process: start, end, the verdict's windows.
fn process_rows(run: &LongRun) -> String {
    let mut out = String::from(
        "| process | samples | RSS start | RSS end | RSS median 20-40% | RSS median last 20% | \
         growth (allowed) | fds start | fds end | fds most 20-80% | fds most last 20% | verdict |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for (s, v) in run.verdicts() {
        let (Some(first), Some(last)) = (s.points.first(), s.points.last()) else {
            continue;
        };
        let name = if s.name == SELF_NAME {
            s.name.clone()
        } else {
            format!("{} ({})", s.name, run.framework)
        };
        let restarted = match s.restarts() {
            0 => String::new(),
            n => format!(", its process changed {n} times (judged on the last)"),
        };
        let (rss, fds, verdict) = match v {
            Ok(j) => (
                format!(
                    "{} | {} | {} (+{})",
                    mib(j.rss_early),
                    mib(j.rss_late),
                    signed_mib(j.rss_late as i64 - j.rss_early as i64),
                    mib(j.rss_allowed)
                ),
                format!("{} | {}", j.fds_early, j.fds_late),
                match (j.rss_flat(), j.fds_flat()) {
                    (true, true) => "**flat**",
                    (false, true) => "**memory grows**",
                    (true, false) => "**fds grow**",
                    (false, false) => "**memory and fds grow**",
                }
                .to_owned(),
            ),
            Err(e) => ("- | - | -".to_owned(), "- | -".to_owned(), e),
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {rss} | {} | {} | {fds} | {verdict}{restarted} |",
            s.points.len(),
            mib(first.rss_kib),
            mib(last.rss_kib),
            first.fds,
            last.fds,
        );
    }
    out
}

/// One row per Machine: its `/metrics` against flysim's counters of it.
fn metrics_rows(run: &LongRun) -> String {
    let mut out = String::from(
        "| Machine | replays in /metrics | replays flysim saw it send | other decisions in /metrics \
         (the scrape left out) | responses flysim saw it serve | of them pins (set_cookie) | \
         verdict |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for m in &run.metrics {
        let _ = match m {
            Ok(m) => writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                short(&m.id),
                m.replays,
                m.replays_sent,
                m.decided_here,
                m.served,
                m.set_cookie,
                match m.check() {
                    Ok(()) => "**equal**".to_owned(),
                    Err(e) => format!("**differ**: {e}"),
                }
            ),
            Err(e) => writeln!(out, "| - | - | - | - | - | - | **not read**: {e} |"),
        };
    }
    out
}

fn signed_mib(kib: i64) -> String {
    format!(
        "{}{:.1} MiB",
        if kib < 0 { "-" } else { "+" },
        kib.unsigned_abs() as f64 / 1024.0
    )
}

/// The printed summary of one framework's run.
fn table(run: &LongRun) -> String {
    let f = &run.figures;
    format!(
        "\n{}: {} requests in {} ({:.0} req/s), {} lost ({} 5xx, {} connection failures, {} wrong), \
         affinity {}\n\n{}\n{}",
        run.framework,
        f.requests,
        duration(run.traffic_time),
        f.requests as f64 / run.traffic_time.as_secs_f64().max(1e-3),
        f.lost(),
        f.server_errors,
        f.connection_failures,
        f.wrong,
        affinity(f),
        process_rows(run),
        metrics_rows(run)
    )
}

/// The command line that reproduces this long run.
fn command(opts: &Options) -> String {
    let mut cmd = if cfg!(debug_assertions) {
        "cargo xtask soak --long"
    } else {
        "cargo run --release -p xtask -- soak --long"
    }
    .to_owned();
    if opts.requests != REQUESTS {
        let _ = write!(cmd, " --requests {}", opts.requests);
    }
    if opts.clients != CLIENTS {
        let _ = write!(cmd, " --clients {}", opts.clients);
    }
    if opts.think_ms != THINK_MS {
        let _ = write!(cmd, " --think-ms {}", opts.think_ms);
    }
    if opts.caches == [true] {
        cmd.push_str(" --cache on");
    }
    if opts.frameworks != DEFAULT_FRAMEWORKS {
        cmd.push(' ');
        cmd.push_str(&opts.frameworks.join(" "));
    }
    cmd
}

/// The "Long run" section of RELIABILITY.md.
fn section(
    runs: &[LongRun],
    opts: &Options,
    host: &Machine,
    took: Duration,
    file: &FlyToml,
) -> String {
    let mut out = format!("{BEGIN}\n## Long run\n\n");
    let flat = runs.iter().all(|r| r.failures().is_empty());
    let _ = writeln!(
        out,
        "Does anything grow with traffic? `{}` ({}): {} as 3 Machines behind flysim{}, **no \
         faults**, {} requests of the mix above from {} clients (mean pause {} ms), every answer \
         checked as in the soak; every {} s the resident memory (`VmRSS` of `/proc/<pid>/status`) \
         and the open file descriptors (entries of `/proc/<pid>/fd`) of each Machine's process \
         and of the xtask process (it hosts flysim and the clients) are sampled. The clients' \
         records are reduced to figures every {ROUND} requests (a new set of visitors each \
         round), so the xtask process does not hold a million records. {WHY_AXUM}\n",
        command(opts),
        host.date,
        runs.iter()
            .map(|r| r.framework.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if runs.iter().any(|r| r.cache) {
            " with the replay cache"
        } else {
            " without the replay cache (every replay goes through the middleware twice)"
        },
        opts.requests,
        opts.clients,
        opts.think_ms,
        EVERY.as_secs(),
    );
    let xtask_mmap = runs.first().and_then(|r| r.xtask_mmap.clone());
    let _ = writeln!(
        out,
        "**The allocator's setting.** {}\n",
        match (mmap_threshold(file), xtask_mmap.as_deref()) {
            (Some(machines), Some(xtask)) => format!(
                "The Machines run with `examples/fly.toml`'s `[env]` as on Fly (flysim passes it \
                 to every Machine but `PORT`: its named assumption 37), so with \
                 `{MMAP_VAR}={machines}`: glibc gives every block over {} KiB its own mapping \
                 and returns it to the system when it is freed, such as the 1-2 MB buffers of \
                 uploads. The xtask process runs with `{MMAP_VAR}={xtask}` too (it runs itself \
                 again with it when started without it).",
                machines.parse::<u64>().map_or(0, |b| b / 1024)
            ),
            (machines, xtask) => format!(
                "This run's `{MMAP_VAR}`: Machines {}, xtask {} (glibc's dynamic default where \
                 unset).",
                machines.unwrap_or("unset"),
                xtask.unwrap_or("unset")
            ),
        }
    );
    let _ = writeln!(
        out,
        "**Verdict: {}.** {}\n",
        if flat {
            "flat memory, no growth in open file descriptors, 0 requests lost, /metrics equal \
             to flysim's counts"
        } else {
            "not flat, or a count differs (see below)"
        },
        rule()
    );
    let _ = writeln!(
        out,
        "![RSS and open fds over the long run](docs/long-run.svg)\n"
    );
    for run in runs {
        let f = &run.figures;
        let load_mean = run.load.iter().sum::<f64>() / run.load.len().max(1) as f64;
        let load_max = run.load.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "### {}\n\n- {} requests in {} ({:.0} req/s): {} lost ({} 5xx, {} connection failures, \
             {} wrong answers); affinity {}; {:.3} replays / request\n- requests: {}\n- {} samples \
             per process{}; load average (1 min) during the run: mean {load_mean:.1}, max \
             {load_max:.1} on {} CPUs{}\n",
            run.framework,
            f.requests,
            duration(run.traffic_time),
            f.requests as f64 / run.traffic_time.as_secs_f64().max(1e-3),
            f.lost(),
            f.server_errors,
            f.connection_failures,
            f.wrong,
            affinity(f),
            run.replays as f64 / f.requests.max(1) as f64,
            metrics::Kind::ALL
                .iter()
                .map(|k| format!("{} {}", f.by_kind.get(k).copied().unwrap_or(0), k.name()))
                .collect::<Vec<_>>()
                .join(", "),
            run.series.first().map_or(0, |s| s.points.len()),
            match (&run.skipped, &run.skipped_why) {
                (0, _) | (_, None) => String::new(),
                (n, Some(why)) => format!(" ({n} skipped, e.g. {why})"),
            },
            host.nproc,
            if load_mean > host.nproc as f64 * 1.5 {
                ": the machine was shared with other work (the rate is lower than alone, and \
                 more requests are in flight at once)"
            } else {
                ""
            },
        );
        out.push_str(&process_rows(run));
        out.push('\n');
        let _ = writeln!(
            out,
            "**/metrics against flysim**, read at the end (every Machine ran the whole run in one \
             process, so no counter started again): each Machine's replays \
             (`sticky_decisions_total{{outcome=\"replay\"}}`) must equal the `fly-replay` answers \
             flysim saw it send, and its other decisions (less the scrape itself, which reached \
             it directly) the responses flysim saw it serve; the relation of conformance \
             scenario `cluster-metrics-match-flysim`, in `conformance::MachineMetrics`.\n"
        );
        out.push_str(&metrics_rows(run));
        out.push('\n');
        for s in &f.samples {
            let _ = writeln!(out, "- failure: {s}");
        }
    }
    let _ = writeln!(out, "{WITHOUT_THE_SETTING}\n");
    let _ = writeln!(
        out,
        "Host: {}, {} CPUs; load average at the start {}, at the end {}; `{}` took {}.\n{END}",
        host.cpu_model,
        host.nproc,
        host.load_start,
        host.load_end,
        command(opts),
        duration(took)
    );
    out
}

/// `doc` with its long-run section replaced by `section` (added at the end
/// if it has none).
pub(crate) fn put_section(doc: &str, section: &str) -> String {
    let section = section.trim_end();
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{section}{}", &doc[..b], &doc[e + END.len()..])
        }
        _ => format!("{}\n\n{section}\n", doc.trim_end()),
    }
}

/// The long-run section of `old`, carried into `new` (a soak run rewrites
/// RELIABILITY.md; the long run's section is not its to drop).
pub(crate) fn keep_section(old: &str, new: String) -> String {
    match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => put_section(&new, &old[b..e + END.len()]),
        _ => new,
    }
}

/// The frameworks of a long run when none is listed (for `Options::parse`).
pub(crate) fn default_frameworks() -> Vec<String> {
    DEFAULT_FRAMEWORKS
        .iter()
        .filter(|f| FRAMEWORKS.contains(f))
        .map(|f| (*f).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rss: impl Fn(usize) -> u64, fds: impl Fn(usize) -> usize, n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                at: EVERY * i as u32,
                requests: i * 1000,
                pid: 42,
                rss_kib: rss(i),
                fds: fds(i),
            })
            .collect()
    }

    #[test]
    fn vm_rss_is_parsed() {
        let status =
            "Name:\texample-axum\nVmPeak:\t  123456 kB\nVmRSS:\t    8164 kB\nRssAnon:\t 2000 kB\n";
        assert_eq!(parse_vm_rss(status), Some(8164));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn this_process_is_read_and_a_missing_one_is_an_error() {
        let (rss, fds) = read_process(Path::new("/proc"), std::process::id()).unwrap();
        assert!(rss > 0 && fds > 0);
        let err = read_process(Path::new("/proc"), u32::MAX).unwrap_err();
        assert!(err.contains("status"), "{err}");
    }

    #[test]
    fn a_flat_run_is_flat() {
        // Warm-up growth, then noise: flat.
        let points = series(
            |i| {
                if i < 10 {
                    4000 + 400 * i as u64
                } else {
                    8000 + (i as u64 * 37) % 500
                }
            },
            |i| 10 + i % 7,
            100,
        );
        let j = judge(&points).unwrap();
        assert!(j.flat(), "{j:?}");
        assert_eq!(j.rss_allowed, RSS_FLOOR_KIB);
        // 5% of a large process is more than the floor.
        let big = series(|i| 200_000 + (i as u64 % 3) * 1000, |_| 300, 50);
        let j = judge(&big).unwrap();
        assert!(
            j.flat() && j.rss_allowed == 10_050 && j.fds_allowed == 30,
            "{j:?}"
        );
    }

    #[test]
    fn growth_is_caught() {
        // 100 KiB per sample: ~6 MiB between the windows' medians.
        let leak = series(|i| 8000 + 100 * i as u64, |_| 12, 100);
        let j = judge(&leak).unwrap();
        assert!(!j.rss_flat() && j.fds_flat(), "{j:?}");
        // One fd more every other sample.
        let fds = series(|_| 8000, |i| 10 + i / 2, 100);
        let j = judge(&fds).unwrap();
        assert!(j.rss_flat() && !j.fds_flat(), "{j:?}");
        assert!(judge(&leak[..5]).is_err());
    }

    #[test]
    fn restarts_split_the_series() {
        let mut points = series(|_| 8000, |_| 10, 30);
        for p in &mut points[20..] {
            p.pid = 43;
        }
        let s = Series {
            name: "Machine abcdef".to_owned(),
            points,
        };
        assert_eq!(s.restarts(), 1);
        assert_eq!(s.current().len(), 10);
        assert!(s.current().iter().all(|p| p.pid == 43));
    }

    #[test]
    fn the_chart_is_drawn() {
        let run = LongRun {
            framework: "axum".to_owned(),
            cache: false,
            figures: Figures::default(),
            traffic_time: Duration::from_secs(60),
            replays: 0,
            series: vec![
                Series {
                    name: "Machine abcdef".to_owned(),
                    points: series(|i| 8000 + i as u64, |_| 20, 30),
                },
                Series {
                    name: SELF_NAME.to_owned(),
                    points: series(|_| 50_000, |i| 100 + i, 30),
                },
            ],
            skipped: 0,
            skipped_why: None,
            load: vec![1.0; 30],
            metrics: Vec::new(),
            xtask_mmap: None,
        };
        let path = std::env::temp_dir().join(format!("long-run-{}.svg", std::process::id()));
        chart::render(&path, &[run]).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(
            svg.starts_with("<svg") && svg.contains("Machine abcdef"),
            "{svg:.200}"
        );
    }

    fn counted(replays: u64, replays_sent: u64, decided_here: u64, served: u64) -> MachineMetrics {
        MachineMetrics {
            id: "148ed599c14189".to_owned(),
            replays,
            replays_sent,
            decided_here,
            served,
            set_cookie: 3,
            path_excluded: 1,
        }
    }

    fn quiet_run(metrics: Vec<Result<MachineMetrics, String>>) -> LongRun {
        let flat = |name: &str| Series {
            name: name.to_owned(),
            points: series(|_| 8000, |_| 20, 30),
        };
        LongRun {
            framework: "axum".to_owned(),
            cache: false,
            figures: Figures::default(),
            traffic_time: Duration::from_secs(60),
            replays: 0,
            series: vec![flat("Machine 148ed5"), flat(SELF_NAME)],
            skipped: 0,
            skipped_why: None,
            load: vec![1.0; 30],
            metrics,
            xtask_mmap: None,
        }
    }

    #[test]
    fn a_metrics_mismatch_fails_the_run() {
        let ok = quiet_run(vec![Ok(counted(30, 30, 49, 49))]);
        assert!(
            !ok.failures().iter().any(|f| f.contains("/metrics")),
            "{:?}",
            ok.failures()
        );
        for bad in [
            vec![Ok(counted(30, 31, 49, 49))],
            vec![Ok(counted(30, 30, 49, 50))],
            vec![Err("connection refused".to_owned())],
            Vec::new(),
        ] {
            let run = quiet_run(bad);
            assert!(
                run.failures().iter().any(|f| f.contains("/metrics")),
                "{:?}",
                run.failures()
            );
        }
        let rows = metrics_rows(&quiet_run(vec![Ok(counted(30, 31, 49, 49))]));
        assert!(
            rows.contains("| 148ed5 | 30 | 31 | 49 | 49 | 3 | **differ**"),
            "{rows}"
        );
    }

    #[test]
    fn the_deployed_fly_toml_fixes_the_mmap_threshold() {
        let file = deployed().unwrap();
        assert_eq!(mmap_threshold(&file), Some("131072"));
        assert_eq!(mmap_threshold(&FlyToml::default()), None);
    }

    #[test]
    fn the_section_is_replaced_kept_or_added() {
        let one = format!("{BEGIN}\n## Long run\nA\n{END}");
        let two = format!("{BEGIN}\n## Long run\nB\n{END}");
        let doc = put_section("# Reliability\n\ntext\n", &one);
        assert_eq!(doc, format!("# Reliability\n\ntext\n\n{one}\n"));
        let doc = put_section(&doc, &two);
        assert_eq!(doc, format!("# Reliability\n\ntext\n\n{two}\n"));
        let rewritten = keep_section(&doc, "# Reliability\n\nnew\n".to_owned());
        assert_eq!(rewritten, format!("# Reliability\n\nnew\n\n{two}\n"));
        assert_eq!(keep_section("no section", "new".to_owned()), "new");
    }
}
