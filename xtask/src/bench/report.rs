//! The tables printed on the console and BENCHMARKS.md.

use std::fmt::Write as _;
use std::time::Duration;

use super::ab::AbResult;
use super::cache::CacheRow;
use super::hop::HopRow;
use super::micro::{CoreBench, find};
use super::server::Pinning;
use super::wrk::Rounds;
use super::{MACHINE_ID, Plan, median, min_max};
use crate::machine::{Machine, duration};

/// Budgets (issue "Performance"); reported, never asserted as timings.
const STICK_BUDGET_NS: f64 = 60.0;
const REPLAY_BUDGET_NS: f64 = 250.0;
const THROUGHPUT_BUDGET: f64 = 0.97;

/// The machine and the conditions of the run.
#[derive(Debug, Clone)]
pub(crate) struct MachineInfo {
    host: Machine,
    wrk: String,
    pinning: String,
    took: Duration,
}

impl MachineInfo {
    pub(crate) fn collect(wrk: &str, pinning: &Pinning) -> MachineInfo {
        MachineInfo {
            host: Machine::collect(),
            wrk: wrk.to_owned(),
            pinning: pinning.describe(),
            took: Duration::ZERO,
        }
    }

    /// Records the end of the run.
    pub(crate) fn finish(&mut self, took: Duration) {
        self.host.finish();
        self.took = took;
    }
}

fn ns(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} µs", v / 1000.0)
    } else {
        format!("{v:.1} ns")
    }
}

fn us(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0} µs")
    } else {
        format!("{v:.1} µs")
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**missed**" }
}

/// Everything one run measured.
pub(crate) struct Run<'a> {
    pub(crate) plan: &'a Plan,
    pub(crate) machine: &'a MachineInfo,
    pub(crate) core: &'a [CoreBench],
    /// Whether `sticky-core/tests/alloc.rs` passed.
    pub(crate) allocations: bool,
    pub(crate) adapters: &'a [AbResult],
    pub(crate) hop: Option<&'a [HopRow]>,
    /// Fly's replay cache off and on, at each size.
    pub(crate) cache: Option<&'a [CacheRow]>,
    /// How long each part took.
    pub(crate) phases: &'a [(&'static str, Duration)],
}

/// Prints the core table as soon as it is known.
pub(crate) fn print_core(core: &[CoreBench]) {
    println!("\n{}", core_table(core));
}

fn core_table(core: &[CoreBench]) -> String {
    let mut t = String::from(
        "| bench | what | median | 95% CI of the median | baseline | baseline / sticky |\n\
         |---|---|---:|---|---:|---:|\n",
    );
    for b in core {
        let baseline = find(core, &format!("{}/baseline", b.id));
        if b.id.ends_with("/baseline") {
            continue;
        }
        let (base, ratio) = match baseline {
            Some(base) => (ns(base), format!("{:.1}x", base / b.median_ns)),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            t,
            "| `{}` | {} | {} | {} .. {} | {} | {} |",
            b.id,
            describe_bench(&b.id),
            ns(b.median_ns),
            ns(b.low_ns),
            ns(b.high_ns),
            base,
            ratio
        );
    }
    t
}

fn describe_bench(id: &str) -> &'static str {
    match id {
        "stick" => "cookie names this Machine (Stick): the common path",
        "stick/path-rules" => "Stick, with 3 exclude globs configured",
        "stick/signed" => "Stick, signed cookie (HMAC-SHA256 check)",
        "stick/contract-app" => {
            "Stick with the example apps' settings and wrk's request (the A/B below)"
        }
        "disabled" => "not on Fly (no Machine ID): what OFF pays in the A/B below",
        "first-visit" => "no cookie: SetCookie (pre-rendered)",
        "replay" => "cookie names another Machine: Replay",
        "key/20-machines" => "key affinity: header key, rendezvous over 20 Machines",
        _ => "",
    }
}

impl Run<'_> {
    fn budgets(&self) -> String {
        let mut t = String::from("| budget | measured | verdict |\n|---|---|---|\n");
        match find(self.core, "stick") {
            Some(v) => {
                let _ = writeln!(
                    t,
                    "| `decide`, Stick path: median at most {STICK_BUDGET_NS:.0} ns | {} | {} |",
                    ns(v),
                    verdict(v <= STICK_BUDGET_NS)
                );
            }
            None => t.push_str("| `decide`, Stick path: median at most 60 ns | not run | - |\n"),
        }
        let _ = writeln!(
            t,
            "| `decide`, Stick path: 0 allocations | {} | {} |",
            if self.allocations {
                "0 (asserted by `sticky-core/tests/alloc.rs`, passed in this run)"
            } else {
                "`sticky-core/tests/alloc.rs` FAILED in this run"
            },
            verdict(self.allocations)
        );
        match find(self.core, "replay") {
            Some(v) => {
                let _ = writeln!(
                    t,
                    "| `decide`, Replay path: median at most {REPLAY_BUDGET_NS:.0} ns | {} | {} |",
                    ns(v),
                    verdict(v <= REPLAY_BUDGET_NS)
                );
            }
            None => t.push_str("| `decide`, Replay path: median at most 250 ns | not run | - |\n"),
        }
        for a in self.adapters {
            let ratio = a.ratio();
            let (q1, q3) = a.ratio_iqr();
            let met = ratio >= THROUGHPUT_BUDGET;
            let note = if q1 < THROUGHPUT_BUDGET && q3 >= THROUGHPUT_BUDGET {
                " (noisy: the interquartile range straddles the budget)"
            } else {
                ""
            };
            let _ = writeln!(
                t,
                "| {}: throughput with the middleware at least {THROUGHPUT_BUDGET} of without | {ratio:.3} (interquartile {q1:.3} .. {q3:.3}) | {}{note} |",
                a.framework,
                verdict(met)
            );
        }
        t
    }

    fn ab_table(&self) -> String {
        let mut t = String::from(
            "| framework | req/s ON | req/s OFF | ON/OFF | ON/OFF per round: interquartile (min .. max) | p50 ON / OFF | p99 ON / OFF | server CPU per request ON / OFF | ON - OFF CPU per request | req/s spread across rounds ON / OFF |\n\
             |---|---:|---:|---:|---|---:|---:|---:|---:|---|\n",
        );
        for a in self.adapters {
            let (lo, hi) = a.ratio_range();
            let (q1, q3) = a.ratio_iqr();
            let (s_on, s_off) = a.spreads();
            let (cpu, diff) = match a.cpu_per_request() {
                Some((on, off, diff)) => (
                    format!("{} / {}", ns(on), ns(off)),
                    format!("{diff:+.0} ns"),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            let _ = writeln!(
                t,
                "| {} | {:.0} | {:.0} | {:.3} | {q1:.3} .. {q3:.3} ({lo:.3} .. {hi:.3}) | {} / {} | {} / {} | {cpu} | {diff} | {s_on:.0}% / {s_off:.0}% |",
                a.framework,
                median(&a.on_rps()),
                median(&a.off_rps()),
                a.ratio(),
                us(AbResult::p50(&a.on)),
                us(AbResult::p50(&a.off)),
                us(AbResult::p99(&a.on)),
                us(AbResult::p99(&a.off)),
            );
        }
        t
    }

    fn hop_table(&self, rows: &[HopRow]) -> String {
        let direct = rows.iter().find(|r| r.name == "direct");
        let proxied = rows.iter().find(|r| r.name == "proxied");
        let mut t = String::from(
            "| route | path of a request | 1 connection: p50 | p99 | p50 minus direct | p50 minus proxied | 32 connections: req/s | p50 | p99 | replays / request |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let minus = |r: &HopRow, base: Option<&HopRow>| match base {
            Some(b) if b.name != r.name => format!("{:+.0} µs", r.single_p50() - b.single_p50()),
            _ => "-".to_owned(),
        };
        for r in rows {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} |",
                r.name,
                r.route,
                us(r.single_p50()),
                us(r.single_p99()),
                minus(r, direct),
                minus(r, proxied),
                r.rps(),
                us(r.p50()),
                us(r.p99()),
                r.replays_per_request
            );
        }
        t
    }

    pub(crate) fn cache_table(rows: &[CacheRow]) -> String {
        let mut t = String::from(
            "| Machines | replay cache | replays / request | cache hits / request | 1 connection: p50 | p99 | 32 connections: req/s | p50 | p99 |\n\
             |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for r in rows {
            let _ = writeln!(
                t,
                "| {} | {} | {:.3} | {:.3} | {} | {} | {:.0} | {} | {} |",
                r.machines,
                if r.cache { "on" } else { "off" },
                r.replays_per_request,
                r.hits_per_request,
                us(r.single_p50()),
                us(r.single_p99()),
                r.rps(),
                us(r.p50()),
                us(r.p99()),
            );
        }
        t
    }

    fn machine_list(&self) -> String {
        let m = self.machine;
        format!(
            "- CPU: {} ({} CPUs usable (`nproc`), {} listed in /proc/cpuinfo)\n\
             - kernel {}, {}, {}\n\
             - date: {}; this run: `cargo xtask bench{}` took {} (release builds included when needed)\n\
             - time spent: {}\n\
             - load average (1, 5, 15 min): {} at the start, {} at the end\n\
             - pinning: {}\n",
            m.host.cpu_model,
            m.host.nproc,
            m.host.processors,
            m.host.kernel,
            m.host.rustc,
            m.wrk,
            m.host.date,
            if self.plan.quick { " --quick" } else { "" },
            duration(m.took),
            self.phases
                .iter()
                .map(|(what, d)| format!("{what} {}", duration(*d)))
                .collect::<Vec<_>>()
                .join(", "),
            m.host.load_start,
            m.host.load_end,
            m.pinning,
        )
    }

    fn noise(&self) -> String {
        let mut out = String::new();
        if self.adapters.is_empty() {
            return out;
        }
        let worst = self
            .adapters
            .iter()
            .map(|a| {
                let (on, off) = a.spreads();
                on.max(off)
            })
            .fold(0.0_f64, f64::max);
        let widest_iqr = self
            .adapters
            .iter()
            .map(|a| {
                let (q1, q3) = a.ratio_iqr();
                q3 - q1
            })
            .fold(0.0_f64, f64::max);
        let all_ratios: Vec<f64> = self.adapters.iter().flat_map(AbResult::ratios).collect();
        let (lo, hi) = min_max(&all_ratios);
        let _ = write!(
            out,
            "Throughput of one side varied by up to {worst:.0}% across rounds (max - min over \
             median, worst framework). The per-round ON/OFF ratios ranged from {lo:.3} to \
             {hi:.3} over all frameworks; the widest interquartile range of a framework's \
             ratios was {widest_iqr:.3}. Each ratio compares two runs taken back to back, and \
             the reported ratio is the median over all rounds, so a burst of load from other \
             processes spoils a round or two, not the result; a difference smaller than a \
             framework's interquartile range is noise, not cost. The budget of 0.97 can only \
             be judged where that range is narrower than 0.03."
        );
        out
    }

    /// Tables for the console.
    pub(crate) fn console(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Budgets\n{}", self.budgets());
        let _ = writeln!(out, "decide (criterion)\n{}", core_table(self.core));
        if !self.adapters.is_empty() {
            let _ = writeln!(
                out,
                "Adapters: middleware ON vs OFF ({} rounds x {} s, wrk 1 thread, {} connections)\n{}",
                self.plan.rounds,
                self.plan.duration.as_secs(),
                self.plan.connections,
                self.ab_table()
            );
        }
        if let Some(rows) = self.hop {
            let _ = writeln!(
                out,
                "Replay hop through flysim ({} rounds x {} s)\n{}",
                self.plan.hop_rounds,
                self.plan.duration.as_secs(),
                self.hop_table(rows)
            );
        }
        if let Some(rows) = self.cache {
            let _ = writeln!(
                out,
                "Fly's replay cache off vs on, a pinned user through flysim ({} rounds x {} s)\n{}",
                self.plan.hop_rounds,
                self.plan.duration.as_secs(),
                Self::cache_table(rows)
            );
        }
        let _ = writeln!(out, "Machine\n{}\n{}", self.machine_list(), self.noise());
        out
    }

    /// BENCHMARKS.md.
    pub(crate) fn markdown(&self) -> String {
        let p = self.plan;
        let mut md = String::new();
        let _ = write!(
            md,
            "# Benchmarks\n\n\
             What the sticky middleware costs, measured side by side in one run of \
             `cargo xtask bench{quick}` ({date}). This file and \
             [docs/benchmarks.svg](docs/benchmarks.svg) are written by that task: re-run it \
             rather than editing them. {kind}\n\n\
             ![Throughput with the middleware ON vs OFF per framework, and the latency of a \
             replay hop](docs/benchmarks.svg)\n\n",
            quick = if p.quick { " --quick" } else { "" },
            date = self.machine.host.date,
            kind = if p.quick {
                "This was a `--quick` run (short rounds): indicative only; the full run \
                 (`cargo xtask bench`) measures longer and more often."
            } else {
                "This was a full run."
            },
        );

        let _ = write!(
            md,
            "## Budgets\n\n\
             Budgets are reported here, never asserted as timings in tests (allocation \
             counts are deterministic and are asserted, in `sticky-core/tests/alloc.rs`).\n\n{}\n",
            self.budgets()
        );

        let _ = write!(md, "## The machine\n\n{}\n", self.machine_list());
        let noise = self.noise();
        if !noise.is_empty() {
            let _ = write!(md, "**Noise.** {noise}\n\n");
        }

        let _ = write!(
            md,
            "## `decide` in sticky-core\n\n\
             `cargo bench -p sticky-core --all-features --bench decide -- {args}` \
             (`sticky-core/benches/decide.rs`; criterion's median and its 95% confidence \
             interval). Each request is `GET /cart/items?page=2` with a realistic 250-byte \
             `Cookie` header of 5 cookies, ours last. The baseline is the obvious \
             implementation: parse every cookie with the `cookie` crate, validate, compare, \
             `format!` the header.\n\n{table}\n",
            args = p.criterion_args.join(" "),
            table = core_table(self.core),
        );

        if !self.adapters.is_empty() {
            let _ = write!(
                md,
                "## Adapters: middleware ON vs OFF under load\n\n\
                 Each example app (`examples/<framework>`, release build) runs twice at the \
                 same time: ON with `FLY_MACHINE_ID={MACHINE_ID}`, OFF without it (the \
                 middleware is still in the stack, but the engine is disabled and \
                 `decide` returns at once). Every request is `GET /` with \
                 `Cookie: fly-machine-id={MACHINE_ID}`, so ON takes the Stick path on every \
                 request (checked before measuring: 200, served here, no `Set-Cookie`), and \
                 the handler runs in both. wrk (1 thread, {conns} connections, `--latency`) \
                 loads one process at a time on 127.0.0.1: after a {warm} s warm-up of each, \
                 {rounds} rounds of {dur} s per side, ON then OFF in odd rounds and OFF then ON \
                 in even ones, so a drift in machine load hits both sides alike. Figures are \
                 medians across rounds; ON/OFF is the median of the per-round ratios. The \
                 server's CPU time per request (its threads' on-CPU time from \
                 `/proc/<pid>/task/*/schedstat` over a run, divided by the requests wrk \
                 completed) is steadier than throughput on a shared machine: another \
                 process taking the CPU lowers throughput but not the work per request. \
                 ON - OFF is the median of the per-round differences: what the middleware \
                 costs per request, to compare with `decide` above.\n\n{table}\n",
                conns = p.connections,
                warm = p.warmup.as_secs(),
                rounds = p.rounds,
                dur = p.duration.as_secs(),
                table = self.ab_table(),
            );
        }

        if let Some(rows) = self.hop {
            let _ = write!(
                md,
                "## One replay hop through flysim\n\n\
                 Two Machines of example-axum (release) behind flysim, the local Fly proxy \
                 (its release binary, `cargo build --release -p flysim`: the same library, \
                 optimised). Every request carries a cookie naming Machine 1 and is served by \
                 Machine 1 (checked before measuring): **direct** goes straight to it; \
                 **proxied** goes through flysim with `fly-force-instance-id: <M1>` (one proxy \
                 hop, no replay); **replayed** goes through flysim with \
                 `fly-force-instance-id: <M2>`, so Machine 2's middleware answers `307` + \
                 `fly-replay: prefer_instance=<M1>` without running the handler and flysim \
                 sends the request again to Machine 1 (the replays column counts them from \
                 flysim's admin counters). Each route is measured {rounds} times ({dur} s each, \
                 the order rotated each round) with wrk twice: with 1 connection, whose latency \
                 is the time one request takes when nothing queues (the cost of a hop is the \
                 difference), and with {conns} connections for throughput and latency under \
                 load. When pinned, flysim and both Machines share the server CPU, so \
                 throughput through flysim is bounded by the proxy's own work, and latency \
                 under load is mostly queueing (about connections / throughput). On Fly the \
                 proxy runs on other hosts; a replay costs it one more round trip to a Machine \
                 plus the short `307` answer of the first Machine.\n\n{table}\n",
                rounds = p.hop_rounds,
                dur = p.duration.as_secs(),
                conns = p.connections,
                table = self.hop_table(rows),
            );
        }

        let _ = write!(
            md,
            "## Method\n\n\
             - One invocation measures everything; A and B are interleaved, never taken from \
               different runs.\n\
             - Load only ever targets 127.0.0.1; each server is a fresh process per \
               framework, started on a free port and checked with `GET /health` before use, \
               and killed at the end (also on error).\n\
             - {pinning}.\n\
             - wrk refuses to count a run with any non-2xx/3xx response or more than 1% \
               socket errors, so a figure always measures the intended path.\n\
             - Full run: {full}. `--quick`: {quick_plan}.\n\
             - Reproduce: `cargo xtask bench` (or `--quick`; `--no-pin`; or name \
               frameworks: `cargo xtask bench axum poem`). Server logs go to \
               `<target>/bench-logs/`. wrk is installed with `apt-get install -y wrk` when \
               missing and running as root.\n",
            pinning = self.machine.pinning,
            full = Plan::full().describe(),
            quick_plan = Plan::quick().describe(),
        );
        md
    }
}
