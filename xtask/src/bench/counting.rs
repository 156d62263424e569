//! What the decision counters (`Sticky::metrics`) cost on the Stick path:
//! nanoseconds from `sticky-core/benches/counting.rs` (two engines that
//! differ only in `count_decisions`, interleaved in one run) and
//! instructions from the callgrind paths `stick` vs `stick/uncounted`
//! (`instructions.rs`). `cargo xtask bench --counting` runs both alone.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use super::Plan;
use super::instructions::{self, PathCount};
use crate::{cargo, root, target_dir};

/// Budget: what counting may add to `decide` on the Stick path, in
/// instructions (deterministic under callgrind; nanoseconds are reported).
pub(crate) const COUNTING_BUDGET_INSTRUCTIONS: f64 = 24.0;

/// The callgrind paths, counted and not: (settings, on, off).
pub(crate) const PAIRS: [(&str, &str, &str); 2] = [
    ("default", "stick", "stick/uncounted"),
    (
        "contract-app",
        "stick/contract-app",
        "stick/contract-app/uncounted",
    ),
];

/// One settings' interleaved A/B, nanoseconds per call.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub(crate) settings: String,
    pub(crate) on: f64,
    pub(crate) off: f64,
    /// `on - off` (each side's 10th percentile over its blocks).
    pub(crate) diff: f64,
    /// The paired differences ON - OFF over rounds: median, interquartile range.
    pub(crate) median: f64,
    pub(crate) q1: f64,
    pub(crate) q3: f64,
    pub(crate) rounds: u64,
    pub(crate) calls: u64,
    /// `/proc/loadavg`'s 1-minute figure when the bench ran (`?` if unknown).
    pub(crate) load: String,
}

/// Runs `cargo bench -p sticky-core --bench counting` and reads its
/// `counting:` lines.
pub(crate) fn timings(plan: &Plan) -> Result<Vec<Timing>, String> {
    eprintln!("\n==> cargo bench -p sticky-core --bench counting");
    let mut cmd = cargo();
    cmd.args(["bench", "-q", "-p", "sticky-core", "--bench", "counting"]);
    if plan.quick {
        cmd.args(["--", "--quick"]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo bench --bench counting: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprint!("{text}");
    if !out.status.success() {
        return Err("cargo bench -p sticky-core --bench counting failed".to_owned());
    }
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned());
    let rows: Vec<Timing> = text
        .lines()
        .filter_map(parse)
        .map(|t| Timing {
            load: load.clone(),
            ..t
        })
        .collect();
    if rows.is_empty() {
        return Err("the counting bench printed no `counting:` line".to_owned());
    }
    Ok(rows)
}

/// `counting: settings=<s> on=<ns> off=<ns> diff=<ns> median=<ns> q1=<ns> q3=<ns> rounds=<n> calls=<n>`.
fn parse(line: &str) -> Option<Timing> {
    let rest = line.strip_prefix("counting: ")?;
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let num = |name: &str| field(name)?.parse::<f64>().ok();
    Some(Timing {
        settings: field("settings")?.to_owned(),
        on: num("on")?,
        off: num("off")?,
        diff: num("diff")?,
        median: num("median")?,
        q1: num("q1")?,
        q3: num("q3")?,
        rounds: field("rounds")?.parse().ok()?,
        calls: field("calls")?.parse().ok()?,
        load: String::new(),
    })
}

/// ON - OFF instructions per call for `settings`, when both paths were counted.
fn added_instructions(paths: &[PathCount], settings: &str) -> Option<(f64, f64, f64)> {
    let (_, on, off) = PAIRS.iter().find(|(s, ..)| *s == settings)?;
    let count = |p: &str| paths.iter().find(|c| c.path == p).map(|c| c.per_call);
    let (on, off) = (count(on)?, count(off)?);
    Some((on, off, on - off))
}

/// The section of BENCHMARKS.md.
pub(crate) fn markdown(rows: &[Timing], paths: &[PathCount]) -> String {
    let mut md = String::from(
        "Counting is on by default: one relaxed atomic add per decision into a table \
         allocated at start-up (`sticky-core/src/metrics.rs`). Wall-clock: \
         `sticky-core/benches/counting.rs` times `decide` on two engines that differ only \
         in `count_decisions`, in short blocks, alternating which goes first, so load from \
         other processes falls on both alike; each side is the 10th percentile of its blocks \
         (the blocks no other process stretched), and the paired differences ON - OFF, block \
         by block, show how far the machine's noise reaches. Instructions: the callgrind paths \
         of `sticky-core/benches/instructions.rs`, counted and `/uncounted` (the uncounted \
         engine is built on a heap laid out as beside the counters' table, since the SIMD \
         cookie scan and `memcmp` vary by a few instructions with the request's alignment). \
         `sticky-core/tests/alloc.rs` asserts that the Stick path allocates nothing with \
         counting on. Run alone with `cargo xtask bench --counting`.\n\n\
         | settings | ON | OFF | ON - OFF | paired ON - OFF: median | interquartile | instructions ON | OFF | ON - OFF |\n\
         |---|---:|---:|---:|---:|---|---:|---:|---:|\n",
    );
    for t in rows {
        let (i_on, i_off, i_diff) = match added_instructions(paths, &t.settings) {
            Some((on, off, d)) => (format!("{on:.0}"), format!("{off:.0}"), format!("{d:+.0}")),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} ns | {:.1} ns | {:+.2} ns | {:+.2} ns | {:+.2} .. {:+.2} ns | {i_on} | {i_off} | {i_diff} |",
            t.settings, t.on, t.off, t.diff, t.median, t.q1, t.q3
        );
    }
    if let Some(t) = rows.first() {
        let _ = writeln!(
            md,
            "\n{} rounds of {} calls per side, 16 engines per side used in turn; the Stick \
             path's request (5 cookies, ours last); load average {} when the timing ran. A \
             difference inside the interquartile range is below what the machine resolves.",
            t.rounds, t.calls, t.load
        );
    }
    md
}

/// The budget row: instructions, with the nanoseconds beside them.
pub(crate) fn budget_rows(rows: &[Timing], paths: &[PathCount]) -> String {
    let Some((_, _, added)) = added_instructions(paths, "default") else {
        return String::new();
    };
    let ns = rows
        .iter()
        .find(|t| t.settings == "default")
        .map(|t| format!(", {:+.2} ns", t.diff))
        .unwrap_or_default();
    format!(
        "| decision counters: instructions they add to `decide` on the Stick path at most {COUNTING_BUDGET_INSTRUCTIONS:.0} | {added:+.0}{ns} | {} |\n",
        if added <= COUNTING_BUDGET_INSTRUCTIONS {
            "**met**"
        } else {
            "**missed**"
        }
    )
}

/// `md` with the counting section and its budget row.
pub(crate) fn splice(md: &str, rows: &[Timing], paths: &[PathCount]) -> String {
    instructions::splice_section(
        md,
        "counting",
        "Decision counters: their cost on the Stick path",
        &markdown(rows, paths),
        &budget_rows(rows, paths),
    )
}

/// `cargo xtask bench --counting`: the A/B and the four callgrind paths,
/// spliced into BENCHMARKS.md.
pub(crate) fn run_alone(plan: &Plan, started: Instant) -> Result<(), String> {
    let rows = timings(plan)?;
    instructions::ensure_valgrind()?;
    let dir = target_dir().join("bench-logs").join("callgrind");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let only: Vec<&str> = PAIRS.iter().flat_map(|(_, on, off)| [*on, *off]).collect();
    let paths = instructions::decide_paths(&dir, Some(&only))?;
    println!("\n{}", markdown(&rows, &paths));
    let path: PathBuf = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, splice(&old, &rows, &paths))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "wrote the counters' cost into {} (took {})",
        path.display(),
        crate::machine::duration(started.elapsed())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_bench_line() {
        let t = parse(
            "counting: settings=default on=45.100 off=43.900 diff=1.200 median=1.100 q1=0.900 q3=1.500 rounds=41 calls=200000",
        )
        .unwrap();
        assert_eq!(
            (t.settings.as_str(), t.on, t.diff, t.rounds),
            ("default", 45.1, 1.2, 41)
        );
        assert!(parse("Stick path, default settings: ...").is_none());
    }

    #[test]
    fn budget_row_from_the_paths() {
        let paths = [("stick", 905.0), ("stick/uncounted", 897.0)].map(|(p, n)| PathCount {
            path: p.to_owned(),
            what: String::new(),
            per_call: n,
        });
        let row = budget_rows(&[], &paths);
        assert!(row.contains("| +8 | **met** |"), "{row}");
    }
}
