//! The core's micro-benchmarks (criterion) and allocation counts.

use std::path::Path;
use std::process::Stdio;
use std::time::SystemTime;

use crate::{cargo, run as run_step, target_dir};

use super::Plan;

/// One criterion benchmark of group `decide`.
#[derive(Debug, Clone)]
pub(crate) struct CoreBench {
    /// Function id, e.g. `stick/baseline`.
    pub(crate) id: String,
    /// Median, nanoseconds.
    pub(crate) median_ns: f64,
    /// 95% confidence interval of the median, nanoseconds.
    pub(crate) low_ns: f64,
    pub(crate) high_ns: f64,
}

/// Runs `sticky-core/tests/alloc.rs`, which asserts the allocation counts per
/// path (Stick 0, ...), in the bench profile (its dependencies are those
/// `cargo bench` just built). Returns whether it passed.
pub(crate) fn alloc_test() -> Result<bool, String> {
    eprintln!("\n==> cargo test --profile bench -p sticky-core --all-features --test alloc");
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-q",
        "--profile",
        "bench",
        "-p",
        "sticky-core",
        "--all-features",
        "--test",
        "alloc",
    ])
    .stdin(Stdio::null());
    let status = cmd
        .status()
        .map_err(|e| format!("cargo test --test alloc: {e}"))?;
    Ok(status.success())
}

/// Runs `cargo bench -p sticky-core --all-features --bench decide` and reads
/// the medians criterion wrote (`<target>/criterion/decide/*/new/`).
pub(crate) fn criterion(plan: &Plan) -> Result<Vec<CoreBench>, String> {
    let home = target_dir().join("criterion");
    let started = SystemTime::now();
    let mut cmd = cargo();
    cmd.args([
        "bench",
        "-p",
        "sticky-core",
        "--all-features",
        "--bench",
        "decide",
        "--",
    ])
    .args(&plan.criterion_args)
    .env("CRITERION_HOME", &home)
    .stdin(Stdio::null());
    run_step(
        &format!(
            "cargo bench -p sticky-core --all-features --bench decide -- {}",
            plan.criterion_args.join(" ")
        ),
        cmd,
    )?;
    let benches = read_estimates(&home.join("decide"), started)?;
    if benches.is_empty() {
        return Err(format!(
            "criterion wrote no fresh results under {}",
            home.join("decide").display()
        ));
    }
    Ok(benches)
}

/// Reads `*/new/benchmark.json` + `estimates.json` written after `since`.
pub(crate) fn read_estimates(group: &Path, since: SystemTime) -> Result<Vec<CoreBench>, String> {
    let entries = std::fs::read_dir(group).map_err(|e| format!("{}: {e}", group.display()))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path().join("new");
        let estimates = dir.join("estimates.json");
        let fresh = std::fs::metadata(&estimates)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= since);
        if !fresh {
            continue;
        }
        let read = |p: &Path| -> Result<serde_json::Value, String> {
            let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
        };
        let meta = read(&dir.join("benchmark.json"))?;
        let est = read(&estimates)?;
        let id = meta["function_id"]
            .as_str()
            .ok_or("benchmark.json without function_id")?
            .to_owned();
        let median = &est["median"];
        let num = |v: &serde_json::Value| {
            v.as_f64()
                .ok_or_else(|| format!("{}: no median", estimates.display()))
        };
        out.push(CoreBench {
            id,
            median_ns: num(&median["point_estimate"])?,
            low_ns: num(&median["confidence_interval"]["lower_bound"])?,
            high_ns: num(&median["confidence_interval"]["upper_bound"])?,
        });
    }
    out.sort_by_key(|b| order(&b.id));
    Ok(out)
}

/// The order of the bench file, unknown ids last.
fn order(id: &str) -> (usize, String) {
    const KNOWN: [&str; 11] = [
        "stick",
        "stick/baseline",
        "stick/path-rules",
        "stick/signed",
        "stick/contract-app",
        "disabled",
        "first-visit",
        "first-visit/baseline",
        "replay",
        "replay/baseline",
        "key/20-machines",
    ];
    (
        KNOWN.iter().position(|k| *k == id).unwrap_or(KNOWN.len()),
        id.to_owned(),
    )
}

/// The median of bench `id`, if it ran.
pub(crate) fn find(benches: &[CoreBench], id: &str) -> Option<f64> {
    benches.iter().find(|b| b.id == id).map(|b| b.median_ns)
}
