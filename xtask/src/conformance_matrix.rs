//! `cargo xtask conformance`: every example in release, each as real
//! processes behind flysim, and a scenario x framework matrix.

use std::collections::BTreeMap;

use crate::{FRAMEWORKS, build_examples};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let only: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted: Vec<&str> = FRAMEWORKS
        .iter()
        .copied()
        .filter(|fw| only.is_empty() || only.contains(fw))
        .collect();
    let binaries = build_examples(&wanted)?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    let mut reports = BTreeMap::new();
    for (framework, binary) in binaries {
        eprintln!("\n==> conformance: {framework} ({})", binary.display());
        let report = runtime.block_on(conformance::run_processes(&framework, binary));
        for failure in report.failures() {
            eprintln!(
                "  FAIL {}: {}",
                failure.scenario.name,
                failure.result.as_ref().err().map_or("", String::as_str)
            );
        }
        reports.insert(framework, report);
    }

    let scenarios = conformance::scenarios();
    let width = scenarios.iter().map(|s| s.label().len()).max().unwrap_or(10);
    let mut out = format!("\n{:<width$}", "scenario");
    for fw in &wanted {
        out.push_str(&format!(" | {fw:^9}"));
    }
    out.push('\n');
    out.push_str(&"-".repeat(width + wanted.len() * 12));
    out.push('\n');
    let mut failed = 0;
    for s in &scenarios {
        out.push_str(&format!("{:<width$}", s.label()));
        for fw in &wanted {
            let cell = match reports.get(*fw).map(|r| r.passed(s)) {
                None => "missing",
                Some(Some(true)) => "pass",
                Some(Some(false)) => {
                    failed += 1;
                    "FAIL"
                }
                Some(None) => "not run",
            };
            out.push_str(&format!(" | {cell:^9}"));
        }
        out.push('\n');
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|fw| !reports.contains_key(*fw))
        .collect();
    println!("{out}");
    println!(
        "{} scenarios x {} frameworks: {} failed{}",
        scenarios.len(),
        wanted.len(),
        failed,
        if missing.is_empty() {
            String::new()
        } else {
            format!("; missing (no adapter yet): {}", missing.join(", "))
        }
    );
    if failed > 0 {
        return Err(format!("{failed} scenario(s) failed"));
    }
    Ok(())
}
