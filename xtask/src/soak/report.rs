//! The printed tables and RELIABILITY.md.

use std::fmt::Write as _;
use std::time::Duration;

use super::metrics::{Figures, Kind, Moved};
use super::scenario::Scenario;
use super::traffic::{CHURN_PERCENT, MIX, WS_MESSAGES};
use super::{Options, Run};
use crate::machine::{Machine, duration};

/// The machine and the conditions of the run.
#[derive(Debug, Clone)]
pub(crate) struct MachineInfo {
    host: Machine,
    took: Duration,
    build: Duration,
}

impl MachineInfo {
    pub(crate) fn collect() -> MachineInfo {
        MachineInfo {
            host: Machine::collect(),
            took: Duration::ZERO,
            build: Duration::ZERO,
        }
    }

    /// Records the end of the run.
    pub(crate) fn finish(&mut self, took: Duration, build: Duration) {
        self.host.finish();
        self.took = took;
        self.build = build;
    }
}

fn at(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

pub(super) fn short(id: &str) -> &str {
    id.get(..6).unwrap_or(id)
}

pub(super) fn affinity(f: &Figures) -> String {
    match f.affinity() {
        Some(a) => format!(
            "{:.2}% ({} / {})",
            a * 100.0,
            f.affinity_home,
            f.affinity_total
        ),
        None => "- (nothing counted)".to_owned(),
    }
}

fn repinned(f: &Figures) -> String {
    format!("{} / {}", f.repinned_first(), f.stranded.len())
}

fn max_to_repin(f: &Figures) -> String {
    match (f.stranded.is_empty(), f.max_to_repin()) {
        (true, _) => "-".to_owned(),
        (false, Some(n)) => n.to_string(),
        (false, None) => "never (some)".to_owned(),
    }
}

/// The figures of every run and all together, one row each.
fn rows_of(runs: &[&Run]) -> Vec<[String; 11]> {
    let mut total = Figures::default();
    let (mut replays, mut time) = (0u64, Duration::ZERO);
    let mut rows = Vec::new();
    for run in runs {
        total.merge(&run.figures);
        replays += run.replays;
        time += run.traffic_time;
        rows.push(row(
            &name(run, runs),
            &run.figures,
            run.replays_per_request(),
            run.traffic_time,
        ));
    }
    if runs.len() > 1 {
        rows.push(row(
            "all",
            &total,
            replays as f64 / total.requests.max(1) as f64,
            time,
        ));
    }
    rows
}

/// The run's name in a table: its framework, and its scenario when the
/// table has several.
fn name(run: &Run, runs: &[&Run]) -> String {
    if runs.iter().all(|r| r.scenario == run.scenario) {
        run.framework.clone()
    } else {
        format!("{} {}", run.scenario.name(), run.framework)
    }
}

fn row(name: &str, f: &Figures, replays: f64, time: Duration) -> [String; 11] {
    [
        name.to_owned(),
        f.requests.to_string(),
        format!("{:.0}", f.requests as f64 / time.as_secs_f64().max(1e-9)),
        affinity(f),
        f.server_errors.to_string(),
        f.connection_failures.to_string(),
        format!("{} ({} by the fault)", f.lost(), f.unanswerable),
        repinned(f),
        max_to_repin(f),
        format!("{replays:.3}"),
        duration(time),
    ]
}

const HEAD: [&str; 11] = [
    "framework",
    "requests",
    "req/s",
    "affinity outside fault windows",
    "5xx",
    "connection failures",
    "lost (unanswerable)",
    "stranded clients re-pinned on their next request",
    "most requests to re-pin",
    "replays / request",
    "traffic time",
];

const CACHE_HEAD: [&str; 7] = [
    "framework",
    "replays / request, cache off",
    "replays / request, cache on",
    "cache hits / request",
    "lost, off / on",
    "affinity outside fault windows, cache on",
    "stranded re-pinned on their next request, cache on",
];

/// Cache off beside cache on, per framework that ran both ways.
fn cache_rows(runs: &[&Run]) -> Vec<[String; 7]> {
    let mut rows = Vec::new();
    for on in runs.iter().filter(|r| r.cache.is_some()) {
        let Some(off) = runs
            .iter()
            .find(|r| r.cache.is_none() && r.base == on.base && r.scenario == on.scenario)
        else {
            continue;
        };
        let hits = on.cache.map_or(0, |c| c.hits);
        rows.push([
            if runs.iter().all(|r| r.scenario == on.scenario) {
                on.base.clone()
            } else {
                format!("{} {}", on.scenario.name(), on.base)
            },
            format!("{:.3}", off.replays_per_request()),
            format!("{:.3}", on.replays_per_request()),
            format!("{:.3}", hits as f64 / on.figures.requests.max(1) as f64),
            format!("{} / {}", off.figures.lost(), on.figures.lost()),
            affinity(&on.figures),
            repinned(&on.figures),
        ]);
    }
    rows
}

fn aligned<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = head.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&head.map(str::to_owned));
    line(&widths.map(|w| "-".repeat(w)));
    for row in rows {
        line(row);
    }
    out
}

/// The cache comparison for the terminal (empty unless both ways ran).
pub(crate) fn cache_table(runs: &[Run]) -> String {
    let runs: Vec<&Run> = runs.iter().collect();
    let rows = cache_rows(&runs);
    if rows.is_empty() {
        return String::new();
    }
    aligned(CACHE_HEAD, &rows)
}

/// The table for the terminal.
pub(crate) fn table(runs: &[Run]) -> String {
    let runs: Vec<&Run> = runs.iter().collect();
    aligned(HEAD, &rows_of(&runs))
}

/// The p99 latency of each phase, one row per run of a scenario.
fn phase_table(runs: &[&Run]) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let first = runs.first()?;
    let mut head = vec!["framework".to_owned()];
    head.extend(first.phases.iter().map(|(p, _)| p.name.clone()));
    let rows = runs
        .iter()
        .map(|run| {
            let mut row = vec![run.framework.clone()];
            for name in &head[1..] {
                let cell = run
                    .phases
                    .iter()
                    .find(|(p, _)| &p.name == name)
                    .map_or_else(
                        || "-".to_owned(),
                        |(p, p99)| match p99 {
                            Some(d) => format!(
                                "{} ms ({:.1} s)",
                                d.as_millis(),
                                p.end.saturating_sub(p.start).as_secs_f64()
                            ),
                            None => {
                                format!("- ({:.1} s)", p.end.saturating_sub(p.start).as_secs_f64())
                            }
                        },
                    );
                row.push(cell);
            }
            row
        })
        .collect();
    Some((head, rows))
}

/// One line per framework as it finishes.
pub(crate) fn summary_line(run: &Run) -> String {
    let f = &run.figures;
    let mut s = format!(
        "    {} requests in {}: affinity {}, {} errors, {} lost ({} unanswerable by the fault), stranded re-pinned on the next request {}, WebSocket sessions of moved clients on a live Machine {}/{}, {:.3} replays/request: {}",
        f.requests,
        duration(run.traffic_time),
        affinity(f),
        f.errors(),
        f.lost(),
        f.unanswerable,
        repinned(f),
        f.ws_moved_ok,
        f.ws_moved,
        run.replays_per_request(),
        if run.met() {
            "targets met"
        } else {
            "TARGETS MISSED"
        }
    );
    if let Some(e) = &run.schedule_error {
        let _ = write!(s, "\n    faults: {e}");
    }
    let phases: Vec<String> = run
        .phases
        .iter()
        .map(|(p, p99)| {
            format!(
                "{} {}",
                p.name,
                p99.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()))
            )
        })
        .collect();
    let _ = write!(s, "\n    p99 per phase: {}", phases.join(", "));
    for sample in &f.samples {
        let _ = write!(s, "\n    - {sample}");
    }
    s
}

/// Each target, met or missed, over all runs.
pub(crate) fn verdicts(runs: &[Run]) -> String {
    let mut out = String::new();
    for (i, (target, _)) in Figures::default().targets().iter().enumerate() {
        let missed: Vec<String> = runs
            .iter()
            .filter(|r| !r.figures.targets()[i].1)
            .map(full_name)
            .collect();
        if missed.is_empty() {
            let _ = writeln!(out, "target met: {target}");
        } else {
            let _ = writeln!(out, "target MISSED: {target} ({})", missed.join(", "));
        }
    }
    for run in runs.iter().filter(|r| r.schedule_error.is_some()) {
        let _ = writeln!(
            out,
            "{}: the scenario did not complete: {}",
            full_name(run),
            run.schedule_error.as_deref().unwrap_or_default()
        );
    }
    out
}

fn md_row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn moved_summary(list: &[Moved]) -> (usize, usize, f64, usize) {
    let moved: Vec<usize> = list.iter().filter_map(|m| m.requests).collect();
    let mean = moved.iter().sum::<usize>() as f64 / moved.len().max(1) as f64;
    let max = moved.iter().copied().max().unwrap_or(0);
    (list.len(), moved.len(), mean, max)
}

/// `scenario framework`, the name of a run across scenarios.
fn full_name(run: &Run) -> String {
    format!("{} {}", run.scenario.name(), run.framework)
}

/// The figures of one run's section.
fn details(out: &mut String, run: &Run) {
    let f = &run.figures;
    let _ = writeln!(out, "#### {}\n", run.framework);
    let mix: Vec<String> = Kind::ALL
        .iter()
        .map(|k| format!("{} {}", f.by_kind.get(k).copied().unwrap_or(0), k.name()))
        .collect();
    let _ = writeln!(out, "- requests: {}", mix.join(", "));
    if let Some(c) = run.cache {
        let _ = writeln!(
            out,
            "- replay cache: {} entries made, {} hits, {} misses, {} invalidations, {} replays not cached",
            c.created, c.hits, c.misses, c.invalidations, c.not_cached
        );
    }
    let _ = writeln!(
        out,
        "- {} requests overlapped a fault window; {} counted for affinity, {} of them served by the pinned Machine",
        f.in_windows, f.affinity_total, f.affinity_home
    );
    let _ = writeln!(
        out,
        "- flysim: {} answers from Machines for {} requests, {} replays followed, {} fallbacks, {} idempotent requests sent again on a new connection, {} errors of its own{}",
        run.served,
        f.requests,
        run.replays,
        run.fallbacks,
        run.retries,
        run.proxy_errors.len(),
        if run.proxy_errors.is_empty() {
            String::new()
        } else {
            let mut counts: std::collections::BTreeMap<&str, usize> =
                std::collections::BTreeMap::new();
            for e in &run.proxy_errors {
                *counts.entry(e.as_str()).or_default() += 1;
            }
            let list: Vec<String> = counts.iter().map(|(e, n)| format!("{n} {e}")).collect();
            format!(" ({})", list.join(", "))
        }
    );
    if f.unanswerable > 0 {
        let _ = writeln!(
            out,
            "- made unanswerable by the fault itself (not lost): {}",
            f.unanswerable
        );
    }
    let _ = writeln!(
        out,
        "- stranded clients (their Machine gone or out of the rotation when they sent a request): {}, re-pinned (or served by their Machine once back) on their next request: {}",
        f.stranded.len(),
        f.repinned_first()
    );
    let _ = writeln!(
        out,
        "- WebSocket sessions opened by clients whose Machine was out: {}, {} of them on a live Machine",
        f.ws_moved, f.ws_moved_ok
    );
    let _ = writeln!(
        out,
        "- uploads nobody can route (over 1 MB or chunked, sent without `fly-prefer-instance-id`): {}, served where they landed (row 6), {} of them on the client's Machine by chance",
        f.unrouted, f.unrouted_home
    );
    if run.scenario == Scenario::Classic {
        let (n, moved, mean, max) = moved_summary(&f.drained);
        let _ = writeln!(
            out,
            "- drained Machine: {n} clients were pinned to it when the drain took effect; {moved} were moved and re-pinned elsewhere before it left the rotation, after {mean:.2} requests on average (most: {max}){}",
            if moved < n {
                format!(
                    "; the other {} were served by it until then, and by it again once restarted",
                    n - moved
                )
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            out,
            "- stopped Machine: its clients sent {} requests during its window (uploads nobody can route left out), {} of them served by it (the proxy starts it again for them)",
            f.stop_total, f.stop_kept
        );
    }
    if let Some(e) = &run.schedule_error {
        let _ = writeln!(out, "- the scenario did not complete: {e}");
    }
    if !f.samples.is_empty() {
        let _ = writeln!(out, "- what went wrong (first {}):", f.samples.len());
        for s in &f.samples {
            let _ = writeln!(out, "  - `{}`", s.replace('`', "'"));
        }
    }
    let _ = writeln!(out, "\n| Machine | fault | window | timeline |");
    let _ = writeln!(out, "|---|---|---|---|");
    for fault in &run.faults {
        let steps: Vec<String> = fault
            .steps
            .iter()
            .map(|(t, what)| format!("{} {what}", at(*t)))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} .. {} | {} |",
            short(&fault.machine),
            fault.kind.name(),
            at(fault.start),
            at(fault.settled),
            steps.join("; ")
        );
    }
    let _ = writeln!(out);
}

fn md_table(out: &mut String, head: &[String], rows: &[Vec<String>]) {
    md_row(out, head);
    let align: Vec<String> = head
        .iter()
        .enumerate()
        .map(|(i, _)| if i == 0 { "---" } else { "---:" }.to_owned())
        .collect();
    md_row(out, &align);
    for row in rows {
        md_row(out, row);
    }
}

/// RELIABILITY.md.
pub(crate) fn markdown(runs: &[Run], opts: &Options, info: &MachineInfo) -> String {
    let mut out = String::new();
    let all_met = runs.iter().all(Run::met);
    let _ = writeln!(out, "# Reliability\n");
    let titles: Vec<String> = opts
        .scenarios
        .iter()
        .map(|s| s.title().to_lowercase())
        .collect();
    let _ = writeln!(
        out,
        "What users see while Machines come and go: every example app as Machines \
         behind [flysim](tests/flysim) (the local Fly proxy), under a mixed load of \
         concurrent browser-like clients, in each scenario ({}); each framework once \
         without and once with Fly's replay cache (`+cache`). Figures of one run of \
         `{}` ({}). This file is written by that task: re-run it rather than editing it.\n",
        titles.join("; "),
        opts.command(),
        info.host.date
    );
    if opts.quick {
        let _ = writeln!(
            out,
            "This was a `--quick` run (fewer clients and requests): the full run \
             (`cargo xtask soak`) is the one to quote.\n"
        );
    }

    let _ = writeln!(out, "## Targets\n");
    md_row(
        &mut out,
        &[
            "target",
            "measured (all scenarios and frameworks)",
            "verdict",
        ]
        .map(str::to_owned),
    );
    md_row(&mut out, &["---", "---", "---"].map(str::to_owned));
    let mut total = Figures::default();
    for run in runs {
        total.merge(&run.figures);
    }
    let measured = [
        affinity(&total),
        format!(
            "{} lost of {} requests ({} client-visible errors; {} more made unanswerable by the fault itself)",
            total.lost(),
            total.requests,
            total.errors(),
            total.unanswerable
        ),
        format!(
            "{} of {} stranded clients (most requests needed: {})",
            total.repinned_first(),
            total.stranded.len(),
            max_to_repin(&total)
        ),
        format!(
            "{} of {} sessions of clients whose Machine was out",
            total.ws_moved_ok, total.ws_moved
        ),
    ];
    for (i, (target, _)) in Figures::default().targets().iter().enumerate() {
        let missed: Vec<String> = runs
            .iter()
            .filter(|r| !r.figures.targets()[i].1)
            .map(full_name)
            .collect();
        let verdict = if missed.is_empty() {
            "**met**".to_owned()
        } else {
            format!("**missed** ({})", missed.join(", "))
        };
        md_row(
            &mut out,
            &[(*target).to_owned(), measured[i].clone(), verdict],
        );
    }
    for run in runs.iter().filter(|r| r.schedule_error.is_some()) {
        let _ = writeln!(
            out,
            "\n{}: the scenario did not complete: {}",
            full_name(run),
            run.schedule_error.as_deref().unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "\n{}\n",
        if all_met {
            "Every target is met in every scenario for every framework."
        } else {
            "Some targets are missed: see below."
        }
    );

    let _ = writeln!(out, "## Scenarios at a glance\n");
    let head = [
        "scenario",
        "requests",
        "lost",
        "unanswerable by the fault",
        "affinity outside fault windows",
        "stranded re-pinned on their next request",
        "WebSocket sessions of moved clients on a live Machine",
        "targets",
    ]
    .map(str::to_owned);
    let mut rows = Vec::new();
    for &scenario in &opts.scenarios {
        let these: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario).collect();
        let mut f = Figures::default();
        for r in &these {
            f.merge(&r.figures);
        }
        rows.push(vec![
            scenario.title().to_owned(),
            f.requests.to_string(),
            f.lost().to_string(),
            f.unanswerable.to_string(),
            affinity(&f),
            repinned(&f),
            format!("{} / {}", f.ws_moved_ok, f.ws_moved),
            if these.iter().all(|r| r.met()) {
                "met".to_owned()
            } else {
                "**missed**".to_owned()
            },
        ]);
    }
    md_table(&mut out, &head, &rows);
    let _ = writeln!(
        out,
        "\nAffinity counts the requests of pinned clients that lie wholly outside every \
         fault window, without those of stranded clients and of uploads nobody can route \
         (row 6). Lost = 5xx + connection failures + wrong answers, except those the fault \
         itself made unanswerable (a request delivered to a blackholed Machine, answered \
         502 at the proxy's response timeout; a WebSocket session open when a reset cut \
         it): no middleware can answer those. No request is ever retried.\n"
    );

    for &scenario in &opts.scenarios {
        let these: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario).collect();
        if these.is_empty() {
            continue;
        }
        let _ = writeln!(out, "## {}\n", scenario.title());
        let _ = writeln!(out, "{}\n", scenario.describe());
        md_row(&mut out, &HEAD.map(str::to_owned));
        md_row(
            &mut out,
            &HEAD.map(|h| {
                if h == "framework" {
                    "---".to_owned()
                } else {
                    "---:".to_owned()
                }
            }),
        );
        for row in rows_of(&these) {
            md_row(&mut out, &row);
        }
        if let Some((head, rows)) = phase_table(&these) {
            let _ = writeln!(
                out,
                "\n**p99 latency per phase** (of the requests sent in it; the phase's length in brackets):\n"
            );
            md_table(&mut out, &head, &rows);
        }
        let cache = cache_rows(&these);
        if !cache.is_empty() {
            let _ = writeln!(out, "\n**Replay cache off and on:**\n");
            md_row(&mut out, &CACHE_HEAD.map(str::to_owned));
            md_row(
                &mut out,
                &CACHE_HEAD.map(|h| {
                    if h == "framework" {
                        "---".to_owned()
                    } else {
                        "---:".to_owned()
                    }
                }),
            );
            for row in &cache {
                md_row(&mut out, row);
            }
        }
        let _ = writeln!(out, "\n### Per framework ({})\n", scenario.name());
        for run in &these {
            details(&mut out, run);
        }
    }

    let _ = writeln!(out, "## Method\n");
    let mix: Vec<String> = MIX
        .iter()
        .map(|(k, p)| format!("{p}% {}", k.name()))
        .collect();
    let _ = writeln!(
        out,
        "**Cluster.** For each framework in turn, flysim starts 3 Machines of \
         `examples/<framework>` (release build, one process each, `DRAIN_SECONDS={drain}`), \
         round-robin balancing (in `classic`: no cold start, no health checks). Machines are stopped and destroyed as \
         Fly does it (`kill_signal = \"SIGTERM\"`, `kill_timeout = {kill} s`): the proxy \
         takes the Machine out of its rotation at once and the process gets SIGTERM, on \
         which every example drains, keeps serving for `DRAIN_SECONDS`, then shuts down \
         gracefully (requests in flight finish). flysim keeps its connections to the \
         Machines alive (a pool); when a kept-alive connection closes under a request \
         before any answer, an idempotent request is sent once more on a new connection \
         (RFC 9110, section 9.2.2), a POST never is.\n",
        drain = opts.drain_seconds,
        kill = opts.drain_seconds + 10
    );
    let _ = writeln!(
        out,
        "**Clients.** {clients} tokio tasks share a budget of {requests} requests in \
         `classic` (in the other scenarios they run until its actions are over); each \
         is a visitor with its own cookie jar (`conformance::client`: a new TCP connection \
         per request, as raw as a test client gets) that pauses 0 to {think2} ms (mean \
         {think} ms, a user reading the page) after each answer. With a {churn}% chance \
         per request the visitor \
         leaves and a new one with an empty jar takes its place. The mix: {mix}, the rest \
         page loads (`GET /`). Small uploads carry 1 B to 64 KiB with `Content-Length`; \
         uploads over 1 MB (1 MB = 1,000,000 bytes) carry 1,000,001 to 2,000,000 bytes; \
         chunked uploads carry 8 KiB to 256 KiB, a third of them 1 MB to 1.5 MB, in \
         chunks of 1 to 64 KiB. Uploads over 1 MB and chunked ones cannot be replayed \
         (Fly's 1 MB limit; the middleware treats an unknown length as too large): half \
         of them name the client's Machine with `fly-prefer-instance-id` (as a page's \
         `fetch()` can), the other half are plain form posts. A WebSocket session opens \
         `/ws` with the cookie (half of them also with `?fly_instance_id=<Machine>`), \
         sends {ws} messages and expects each echoed as `<machine>:<message>`. Seed \
         {seed:#x}: the mix is the same on every run.\n",
        clients = opts.clients,
        requests = opts.requests,
        think = opts.think_ms,
        think2 = 2 * opts.think_ms,
        churn = CHURN_PERCENT,
        mix = mix.join(", "),
        ws = WS_MESSAGES,
        seed = opts.seed
    );
    let _ = writeln!(
        out,
        "**Faults of `classic`**, begun when a share of the budget has been sent (each waits for the \
         previous one to end): at 15%, Machine A is destroyed; at 35%, Machine B is \
         stopped, and at 45% (or once it is stopped) started again; at 60%, Machine C \
         gets SIGTERM while it stays in the proxy's rotation (a drain: requests pinned \
         to it that reach it are answered `fly-replay: elsewhere=true`); half a second \
         before its `DRAIN_SECONDS` are over the proxy stops routing to it (as the \
         platform does with a Machine it stops), it exits on its own, and is started \
         again, as a rolling deploy does. Requests \
         replayed to a stopped Machine start it again (Fly's autostart), so B's clients \
         keep their Machine. A client of the draining C whose request lands on another \
         Machine is replayed to C and served there (a request already replayed is never \
         replayed again: row 5), so it moves when one of its requests lands on C itself; \
         those still pinned to C when it exits find it started again.\n"
    );
    let _ = writeln!(
        out,
        "**The lifecycle scenarios** (rolling, blue-green, autostop, scale, network) drive \
         flysim's own deploys, autostop, scaling and network faults (its named assumptions \
         22 to 36 say how they behave where Fly does not document it). Their clients run \
         until the scenario's actions are over and {lead} s more, rather than for a fixed \
         budget. Their fault windows are seen from outside: flysim's table is polled every \
         2 ms, and a window opens at the last poll that saw a Machine in the rotation before \
         it left it (stopped \
         or being updated by a deploy, stopped by autostop, destroyed, failing its health \
         check) and closes at the first poll that sees it back (a destroyed one: at the end \
         of the run); \
         the network faults' windows are the faults' own (a blackhole's until the response \
         timeout of the last request it swallowed). A client whose first request sent \
         inside a window is pinned to that Machine is *stranded*: its next request must be \
         served by a live Machine that re-pins it, or by its own Machine once back. A \
         request the fault itself made unanswerable (delivered to a blackholed Machine and \
         answered 502 at the proxy's response timeout, or a WebSocket session open when a \
         reset cut it) is counted apart and not lost: no middleware can answer it; \
         health checks take a blackholed Machine out of the rotation within about {check} ms.\n",
        lead = 2.5,
        check = 850
    );
    let _ = writeln!(
        out,
        "**Fault windows.** From the moment a fault begins until the cluster is settled: \
         A's process has exited (the proxy stopped routing to it at once); B has been \
         started again; C has exited and been started again. A request is in a window \
         if it was sent before the window closed and answered after it opened.\n"
    );
    let _ = writeln!(
        out,
        "**Definitions.**\n\
         - *Pinned Machine*: the one the client's cookie names when it sends a request. \
         A first visit (empty jar) is pinned to nothing and does not count.\n\
         - *Affinity*: of the requests of pinned clients answered correctly and lying \
         wholly outside every fault window, the share served by the pinned Machine (the \
         `machine=` of the answer or of the WebSocket echoes). Left out: requests of \
         stranded clients (counted below) and unreplayable uploads sent without \
         `fly-prefer-instance-id` (row 6 of the decision table serves them where they \
         land, by design: no proxy can move them; reported apart).\n\
         - *Client-visible errors*: answers with a 5xx status (from the proxy or a \
         Machine) and connection failures (refused, reset, no complete answer within \
         20 s).\n\
         - *Lost*: a request that did not get the right answer: a client-visible error, \
         or any other wrong answer (a status other than 200 or 101, an upload whose \
         echoed byte count differs from what was sent, a missing or wrong WebSocket \
         echo, an answer from an unknown Machine). Requests are never retried: a \
         browser does not resubmit a POST, and an error page is an error whatever the \
         method.\n\
         - *Stranded client*: one whose cookie names the destroyed Machine on its first \
         request sent after the proxy forgot that Machine. *Requests until home*: from \
         that request on, how many until an answer re-pins it (a `Set-Cookie` naming \
         the Machine that served it); the target is 1. Unreplayable uploads sent \
         without `fly-prefer-instance-id` are not counted: the Machine they land on \
         serves them without re-pinning (row 6: it cannot know that the pinned Machine \
         is gone), so they are no chance to get home. The drained and the stopped \
         Machines come back, so their clients are not stranded; how the drain moved \
         its clients is reported per framework.\n\
         - *Replays per request*: `fly-replay` answers flysim followed (every Machine, \
         destroyed ones included) over requests sent. A pinned request that lands on \
         another Machine costs one replay (about 2/3 of them with 3 Machines, 1/2 with \
         2); first visits and requests that name their Machine cost none.\n"
    );
    let _ = writeln!(
        out,
        "**Not covered.** A Machine killed outright (`fly machine kill`, a host failure, \
         flysim without `kill_signal`): the requests it is serving at that instant fail, \
         and no middleware can answer them; flysim's own tests show the difference \
         (`tests/flysim/tests/command.rs`). Fly's own cold-start times (about 1.3 s; \
         the lifecycle scenarios use 800 ms, `classic` none). Kept-alive client connections \
         (each request opens its own), HTTP/2, several regions.\n"
    );
    let _ = writeln!(
        out,
        "**What the soak led to** (fixed, each with a test):\n\
         - A replay was answered before the request's body was read. hyper-based servers \
         (axum, warp, poem) then close the connection with the body unread, which resets \
         it, and the proxy lost the answer: 0.2% to 1.5% of replayed uploads of 40 KB to \
         300 KB failed with a 502. Every adapter now reads (and drops) the body, at most \
         1 MB, before answering a replay (conformance scenario \
         `upload-replay-reads-the-body`).\n\
         - When a drained Machine exited, requests the proxy sent on its kept-alive \
         connections to that Machine at that instant failed (`connection closed before \
         message completed`), and so did requests whose new connection reached its \
         listener as it closed. While draining, every adapter now answers with \
         `Connection: close`, so no kept-alive connection is left when the server exits \
         (scenario `drain-closes-connections`); flysim sends an idempotent request again \
         on a new connection when a connection closes under it before any answer, as \
         HTTP allows (`tests/flysim/tests/keep_alive.rs`); and the proxy stops routing \
         to the drained Machine before it exits (above). A POST that reaches a \
         Machine's listener in the instant it closes cannot be saved by anyone but the \
         platform: Machines must leave the rotation before they exit.\n\
         - flysim killed a stopped or destroyed Machine at once, failing the requests it \
         was serving. It now stops Machines as Fly does when asked to (`kill_signal`, \
         `kill_timeout`), and can signal a Machine (`FlySim::signal_machine`, admin \
         `POST /machines/<id>/signal`) for a drain (`tests/flysim/tests/command.rs`).\n"
    );

    let _ = writeln!(out, "## The machine\n");
    let _ = writeln!(
        out,
        "- CPU: {} ({} CPUs usable); kernel {}; {}\n\
         - clients, flysim and the 3 Machines share these CPUs; load average (1, 5, 15 min): {} at the start, {} at the end\n\
         - this run: `{}` took {} ({} of it building the examples in release when needed)",
        info.host.cpu_model,
        info.host.nproc,
        info.host.kernel,
        info.host.rustc,
        info.host.load_start,
        info.host.load_end,
        opts.command(),
        duration(info.took),
        duration(info.build)
    );
    out
}
