//! The printed tables and RELIABILITY.md.

use std::fmt::Write as _;
use std::time::Duration;

use super::metrics::{Figures, Kind, Moved};
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

fn short(id: &str) -> &str {
    id.get(..6).unwrap_or(id)
}

fn affinity(f: &Figures) -> String {
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
fn rows(runs: &[Run]) -> Vec<[String; 11]> {
    let mut total = Figures::default();
    let (mut replays, mut time) = (0u64, Duration::ZERO);
    let mut rows = Vec::new();
    for run in runs {
        total.merge(&run.figures);
        replays += run.replays;
        time += run.traffic_time;
        rows.push(row(
            &run.framework,
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

fn row(name: &str, f: &Figures, replays: f64, time: Duration) -> [String; 11] {
    [
        name.to_owned(),
        f.requests.to_string(),
        format!("{:.0}", f.requests as f64 / time.as_secs_f64().max(1e-9)),
        affinity(f),
        f.server_errors.to_string(),
        f.connection_failures.to_string(),
        f.lost().to_string(),
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
    "lost",
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
fn cache_rows(runs: &[Run]) -> Vec<[String; 7]> {
    let mut rows = Vec::new();
    for on in runs.iter().filter(|r| r.cache.is_some()) {
        let Some(off) = runs.iter().find(|r| r.cache.is_none() && r.base == on.base) else {
            continue;
        };
        let hits = on.cache.map_or(0, |c| c.hits);
        rows.push([
            on.base.clone(),
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
    let rows = cache_rows(runs);
    if rows.is_empty() {
        return String::new();
    }
    aligned(CACHE_HEAD, &rows)
}

/// The table for the terminal.
pub(crate) fn table(runs: &[Run]) -> String {
    aligned(HEAD, &rows(runs))
}

/// One line per framework as it finishes.
pub(crate) fn summary_line(run: &Run) -> String {
    let f = &run.figures;
    let mut s = format!(
        "    {} requests in {}: affinity {}, {} errors, {} lost, stranded re-pinned on the next request {}, {:.3} replays/request: {}",
        f.requests,
        duration(run.traffic_time),
        affinity(f),
        f.errors(),
        f.lost(),
        repinned(f),
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
    for sample in &f.samples {
        let _ = write!(s, "\n    - {sample}");
    }
    s
}

/// Each target, met or missed, over all runs.
pub(crate) fn verdicts(runs: &[Run]) -> String {
    let mut out = String::new();
    for (i, (target, _)) in Figures::default().targets().iter().enumerate() {
        let missed: Vec<&str> = runs
            .iter()
            .filter(|r| !r.figures.targets()[i].1)
            .map(|r| r.framework.as_str())
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
            "{}: the faults did not all run: {}",
            run.framework,
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

/// RELIABILITY.md.
pub(crate) fn markdown(runs: &[Run], opts: &Options, info: &MachineInfo) -> String {
    let mut out = String::new();
    let all_met = runs.iter().all(Run::met);
    let _ = writeln!(out, "# Reliability\n");
    let _ = writeln!(
        out,
        "What users see while Machines come and go: every example app as 3 Machines \
         behind [flysim](tests/flysim) (the local Fly proxy), under a mixed load of \
         concurrent browser-like clients, while one Machine is destroyed, one is \
         stopped then started, and one is drained; each framework once without and once \
         with Fly's replay cache (`+cache`). Figures of one run of `{}` ({}). \
         This file is written by that task: re-run it rather than editing it.\n",
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
        &["target", "measured (all frameworks)", "verdict"].map(str::to_owned),
    );
    md_row(&mut out, &["---", "---", "---"].map(str::to_owned));
    let mut total = Figures::default();
    for run in runs {
        total.merge(&run.figures);
    }
    let measured = [
        affinity(&total),
        format!(
            "{} lost of {} requests ({} client-visible errors)",
            total.lost(),
            total.requests,
            total.errors()
        ),
        format!(
            "{} of {} stranded clients (most requests needed: {})",
            total.repinned_first(),
            total.stranded.len(),
            max_to_repin(&total)
        ),
    ];
    for (i, (target, _)) in Figures::default().targets().iter().enumerate() {
        let missed: Vec<&str> = runs
            .iter()
            .filter(|r| !r.figures.targets()[i].1)
            .map(|r| r.framework.as_str())
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
            "\n{}: the faults did not all run: {}",
            run.framework,
            run.schedule_error.as_deref().unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "\n{}\n",
        if all_met {
            "Every target is met for every framework."
        } else {
            "Some targets are missed: see below."
        }
    );

    let _ = writeln!(out, "## Results\n");
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
    for row in rows(runs) {
        md_row(&mut out, &row);
    }
    let _ = writeln!(
        out,
        "\nAffinity counts the requests of pinned clients that lie wholly outside every \
         fault window, without those of stranded clients (below) and of uploads nobody \
         can route (row 6, below). Lost = 5xx + connection failures + wrong answers; no \
         request is ever retried. Replays / request = the `fly-replay` answers flysim \
         followed, over all requests. Traffic time runs from the first request to the \
         last answer.\n"
    );

    let cache = cache_rows(runs);
    if !cache.is_empty() {
        let _ = writeln!(out, "## Fly's replay cache: off and on\n");
        let _ = writeln!(
            out,
            "The same load and the same faults, once without and once with the \
             replay cache rule of `examples/fly.toml` (`path_prefix = \"/\"`, `type = \
             \"cookie\"`, `name = \"fly-machine-id\"`, `ttl_seconds = 300`): after a \
             client's first replay, flysim routes its requests straight to its Machine.\n"
        );
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
        let _ = writeln!(
            out,
            "\nThe replays left with the cache on are each client's first one, and the \
             moves the faults force (a destroyed, stopped or draining home, uploads no \
             one can route); see the figures of each run below.\n"
        );
    }

    let _ = writeln!(out, "## Per framework\n");
    for run in runs {
        let f = &run.figures;
        let _ = writeln!(out, "### {}\n", run.framework);
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
                format!(" ({})", run.proxy_errors.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "- uploads nobody can route (over 1 MB or chunked, sent without `fly-prefer-instance-id`): {}, served where they landed (row 6), {} of them on the client's Machine by chance",
            f.unrouted, f.unrouted_home
        );
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
        if let Some(e) = &run.schedule_error {
            let _ = writeln!(out, "- the faults did not all run: {e}");
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

    let _ = writeln!(out, "## Method\n");
    let mix: Vec<String> = MIX
        .iter()
        .map(|(k, p)| format!("{p}% {}", k.name()))
        .collect();
    let _ = writeln!(
        out,
        "**Cluster.** For each framework in turn, flysim starts 3 Machines of \
         `examples/<framework>` (release build, one process each, `DRAIN_SECONDS={drain}`), \
         round-robin balancing, no cold-start delay. Machines are stopped and destroyed as \
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
        "**Clients.** {clients} tokio tasks share a budget of {requests} requests; each \
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
        "**Faults**, begun when a share of the budget has been sent (each waits for the \
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
         (`tests/flysim/tests/command.rs`). Cold starts (Fly takes a second or more to \
         start a stopped Machine; here it is immediate). Kept-alive client connections \
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
