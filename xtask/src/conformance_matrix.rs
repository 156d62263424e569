//! `cargo xtask conformance [--h2] [framework...]`: every example in
//! release, each as real processes behind flysim, and a scenario x
//! framework matrix. With `--h2`, flysim speaks h2c to the Machines
//! (`h2_backend`) and the matrix is that of [`conformance::Backend::H2c`]:
//! the cluster and cache scenarios over h2c plus the `h2c-*` scenarios; a
//! framework whose example does not speak h2c is shown as "no h2c", never
//! left out.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use conformance::Backend;

use crate::{FRAMEWORKS, build_examples};

/// Whether each framework's example speaks h2c (HTTP/2 with prior
/// knowledge) on its plain port, as an app behind Fly's `h2_backend` must:
/// `Ok(how)`, or `Err(why not)`. `--h2` probes every example first: one
/// that should and does not answer over h2c fails; one that cannot is shown
/// as "no h2c" with the reason (so is a framework missing here whose example
/// does not answer).
const H2C: [(&str, Result<&str, &str>); 6] = [
    ("axum", Ok("axum::serve with the http2 feature")),
    (
        "actix-web",
        Ok("HttpServer::listen_auto_h2c (http2 feature)"),
    ),
    ("warp", Ok("warp::serve (hyper-util's auto builder)")),
    (
        "rocket",
        Ok("the http2 feature (hyper-util's auto builder)"),
    ),
    ("poem", Ok("poem::Server (hyper-util's auto builder)")),
    ("hyper", Ok("hyper-util's auto connection builder")),
];

/// Whether `curl` runs here; if not, tries to install it with apt (the
/// `h2c-curl-*` scenario falls back to hyper's h2c client without it).
fn ensure_curl() {
    let runs = || {
        Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if runs() {
        return;
    }
    eprintln!("==> curl not found: apt-get install -y curl");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "curl"])
        .status()
        .is_ok_and(|s| s.success());
    if !installed || !runs() {
        eprintln!(
            "    curl is still missing: h2c-curl-split-cookie-through-flysim sends its request with hyper's h2c client"
        );
    }
}

/// One cell of the matrix: the scenario's outcome in `report`, or why the
/// framework has none (`no_h2c`: its example does not speak h2c and is not
/// expected to; `lost_h2c`: it should and does not, a failure).
fn cell(
    report: Option<&conformance::Report>,
    no_h2c: bool,
    lost_h2c: bool,
    scenario: &conformance::ScenarioInfo,
) -> &'static str {
    match report.map(|r| r.passed(scenario)) {
        None if lost_h2c => "FAIL",
        None if no_h2c => "no h2c",
        None => "missing",
        Some(Some(true)) => "pass",
        Some(Some(false)) => "FAIL",
        Some(None) => "not run",
    }
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let backend = if args.iter().any(|a| a == "--h2") {
        Backend::H2c
    } else {
        Backend::Http1
    };
    if let Some(bad) = args.iter().find(|a| a.starts_with('-') && *a != "--h2") {
        return Err(format!("unknown option {bad:?} (expected --h2)"));
    }
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
    if backend == Backend::H2c {
        ensure_curl();
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("tokio: {e}"))?;
    let mut reports = BTreeMap::new();
    let mut no_h2c: BTreeMap<String, String> = BTreeMap::new();
    let mut lost_h2c = Vec::new();
    for (framework, binary) in binaries {
        eprintln!(
            "\n==> conformance: {framework} ({}), to the Machines: {backend}",
            binary.display()
        );
        if backend == Backend::H2c {
            let declared = H2C.iter().find(|(fw, _)| *fw == framework).map(|(_, h)| *h);
            let probe = runtime.block_on(conformance::binary_speaks_h2c(binary.clone()));
            match (declared, probe) {
                (Some(Ok(how)), Ok(())) => eprintln!("    speaks h2c: {how}"),
                (None, Ok(())) => {
                    eprintln!("    speaks h2c (add {framework} to xtask's H2C table)")
                }
                (Some(Ok(_)), Err(e)) => {
                    eprintln!("  FAIL {framework} should speak h2c but does not: {e}");
                    lost_h2c.push(format!("{framework} ({e})"));
                    continue;
                }
                (Some(Err(why)), probe) => {
                    if probe.is_ok() {
                        eprintln!(
                            "    answers over h2c after all: update xtask's H2C table ({why})"
                        );
                    }
                    eprintln!("    no h2c: {why}");
                    no_h2c.insert(framework, why.to_owned());
                    continue;
                }
                (None, Err(e)) => {
                    eprintln!("    no h2c: {e}");
                    no_h2c.insert(framework, e);
                    continue;
                }
            }
        }
        let report = runtime.block_on(conformance::run_processes_over(&framework, binary, backend));
        for failure in report.failures() {
            eprintln!(
                "  FAIL {}: {}",
                failure.scenario.name,
                failure.result.as_ref().err().map_or("", String::as_str)
            );
        }
        reports.insert(framework, report);
    }

    let scenarios = conformance::scenarios_over(backend);
    let width = scenarios
        .iter()
        .map(|s| s.label().len())
        .max()
        .unwrap_or(10);
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
            let cell = cell(
                reports.get(*fw),
                no_h2c.contains_key(*fw),
                lost_h2c.iter().any(|l| l.starts_with(&format!("{fw} "))),
                s,
            );
            if cell == "FAIL" {
                failed += 1;
            }
            out.push_str(&format!(" | {cell:^9}"));
        }
        out.push('\n');
    }
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|fw| !reports.contains_key(*fw))
        .collect();
    let missing: Vec<&str> = missing
        .into_iter()
        .filter(|fw| {
            !no_h2c.contains_key(*fw) && !lost_h2c.iter().any(|l| l.starts_with(&format!("{fw} ")))
        })
        .collect();
    println!("{out}");
    if backend == Backend::H2c {
        println!(
            "over h2c: flysim speaks h2c to the Machines (h2_backend); the client speaks HTTP/1.1 to flysim \
             (h2c in the h2c-* scenarios); WebSocket upgrades reach the Machines over HTTP/1.1; the direct \
             HTTP/1.1 scenarios are in the plain run"
        );
    }
    println!(
        "{} scenarios x {} frameworks: {} failed{}{}{}",
        scenarios.len(),
        wanted.len(),
        failed,
        if missing.is_empty() {
            String::new()
        } else {
            format!("; missing (no adapter yet): {}", missing.join(", "))
        },
        if no_h2c.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = no_h2c.iter().map(|(fw, e)| format!("{fw} ({e})")).collect();
            format!("; no h2c: {}", list.join(", "))
        },
        if lost_h2c.is_empty() {
            String::new()
        } else {
            format!("; should speak h2c but do not: {}", lost_h2c.join(", "))
        }
    );
    if !lost_h2c.is_empty() && failed == 0 {
        return Err(format!("{} example(s) lost h2c", lost_h2c.len()));
    }
    if failed > 0 {
        return Err(format!("{failed} scenario(s) failed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framework_without_h2c_is_marked_never_left_blank() {
        let scenario = conformance::scenarios_over(Backend::H2c)
            .into_iter()
            .find(|s| s.name.starts_with("h2c-"))
            .expect("the h2c scenarios are in the h2c run");
        assert_eq!(cell(None, true, false, &scenario), "no h2c");
        assert_eq!(cell(None, false, true, &scenario), "FAIL");
        assert_eq!(cell(None, false, false, &scenario), "missing");
        let report = conformance::Report {
            framework: "x".into(),
            outcomes: vec![conformance::Outcome {
                scenario,
                result: Err("no".into()),
                elapsed: std::time::Duration::ZERO,
            }],
        };
        assert_eq!(cell(Some(&report), false, false, &scenario), "FAIL");
    }

    #[test]
    fn every_framework_says_how_it_speaks_h2c_or_why_not() {
        for fw in FRAMEWORKS {
            let (_, said) = H2C
                .iter()
                .find(|(f, _)| *f == fw)
                .unwrap_or_else(|| panic!("{fw} is not in H2C"));
            let text = match said {
                Ok(how) => how,
                Err(why) => why,
            };
            assert!(!text.is_empty(), "{fw}: say how, or why not");
        }
    }
}
