//! Project automation, run as `cargo xtask <task>` (see `.cargo/config.toml`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod bench;
mod browser;
mod conformance_matrix;
mod demo;
mod fuzz;
mod machine;
mod msrv;
mod soak;
mod socketio;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci            fmt check, clippy -D warnings, every test, docs, rust-version check, cargo package (what CI runs)
  conformance   every example in release as 3 Machines behind flysim; scenario x framework matrix
                (--h2: flysim speaks h2c to the Machines, plus the h2c client scenarios)
  demo [--serve] 3 Machines of example-axum behind flysim and a scripted client showing stickiness
  fuzz [--seconds N] the cargo-fuzz target fuzz/decide for N s (default 60); installs cargo-fuzz if missing
  bench [--quick] [--instructions] [--counting] middleware on/off A/B per example under load, replay hop cost,
                instruction counts under callgrind (--instructions: those alone), the decision
                counters' cost (--counting: that alone); writes BENCHMARKS.md
  soak [--quick] [--scenario LIST] each example under faults, deploys, autostop, scaling, network faults; writes RELIABILITY.md
  socketio      socket.io end to end with the official Node and Python clients (npm ci, venv)
  browser [--debug] [--docs] every example (release; --debug: dev binaries) in headless Chromium behind flysim
                (apt chromium, npm ci); --docs updates the docs/ screenshots";

/// The frameworks, in matrix order. An adapter is present when its example
/// package exists in the workspace. `hyper` has no adapter: its example
/// calls `sticky-core` by hand.
pub(crate) const FRAMEWORKS: [&str; 6] = ["axum", "actix-web", "warp", "rocket", "poem", "hyper"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = args.get(1..).unwrap_or_default();
    let result = match task {
        "ci" => ci(),
        "conformance" => conformance_matrix::run(rest),
        "demo" => demo::run(rest),
        "fuzz" => fuzz::run_target(rest),
        "bench" => bench::run(rest),
        "soak" => soak::run(rest),
        "socketio" => socketio::run_tests(rest),
        "browser" => browser::run_tests(rest),
        "help" | "-h" | "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask {task}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    cmd.current_dir(root());
    cmd
}

pub(crate) fn run(what: &str, mut cmd: Command) -> Result<(), String> {
    eprintln!("\n==> {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Builds the example of each framework present, in release; returns the binaries.
pub(crate) fn build_examples(frameworks: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let present: Vec<&str> = frameworks
        .iter()
        .copied()
        .filter(|fw| {
            root()
                .join("examples")
                .join(fw)
                .join("Cargo.toml")
                .is_file()
        })
        .collect();
    if present.is_empty() {
        return Ok(Vec::new());
    }
    let mut build = cargo();
    build.args(["build", "--release"]);
    for fw in &present {
        build.args(["-p", &format!("example-{fw}")]);
    }
    run(
        &format!("cargo build --release ({})", present.join(", ")),
        build,
    )?;
    Ok(present
        .into_iter()
        .map(|fw| {
            (
                fw.to_owned(),
                target_dir().join("release").join(format!("example-{fw}")),
            )
        })
        .collect())
}

/// `cargo package --workspace`: every published crate as users get it, each
/// built from its `.crate` alone (the crates with `publish = false` are
/// left out: nobody downloads them). Any warning fails, so the registry
/// pages stay complete. `--allow-dirty` lets a work in progress run ci; CI
/// itself runs on a clean clone.
fn package() -> Result<(), String> {
    let mut cmd = cargo();
    cmd.args(["package", "--workspace", "--allow-dirty"]);
    for name in unpublished()? {
        cmd.args(["--exclude", &name]);
    }
    let what = "cargo package --workspace --allow-dirty (published crates)";
    eprintln!("\n==> {what}");
    let output = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    if !output.status.success() {
        return Err(format!("{what} failed ({})", output.status));
    }
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("warning"))
        .collect();
    if warnings.is_empty() {
        Ok(())
    } else {
        Err(format!("{what} warned:\n{}", warnings.join("\n")))
    }
}

/// The workspace's crates with `publish = false`.
fn unpublished() -> Result<Vec<String>, String> {
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    Ok(metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["publish"].as_array().is_some_and(Vec::is_empty))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect())
}

fn ci() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);
    run("cargo fmt --all --check", fmt)?;

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]);
    run(
        "cargo clippy --workspace --all-targets --all-features -- -D warnings",
        clippy,
    )?;

    // Default features too: a target needing an optional feature must say
    // so (`required-features`), not break `cargo build --all-targets`.
    let mut check = cargo();
    check.args(["check", "--workspace", "--all-targets"]);
    run("cargo check --workspace --all-targets", check)?;

    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features"]);
    run("cargo test --workspace --all-features", test)?;
    socketio::run_tests(&[])?;
    // The dev binaries the test run just built: release builds of every
    // example would cost CI minutes (`cargo xtask browser` tests release).
    browser::run_tests(&["--debug".to_owned()])?;

    // The core without `http` (what http 0.2 frameworks depend on).
    let mut core_minimal = cargo();
    core_minimal.args([
        "clippy",
        "-p",
        "sticky-core",
        "--no-default-features",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]);
    run(
        "cargo clippy -p sticky-core --no-default-features --lib -- -D warnings",
        core_minimal,
    )?;
    let mut core_minimal = cargo();
    core_minimal.args([
        "test",
        "-p",
        "sticky-core",
        "--no-default-features",
        "--lib",
    ]);
    run(
        "cargo test -p sticky-core --no-default-features --lib",
        core_minimal,
    )?;

    fuzz::check()?;

    let mut doc = cargo();
    doc.args(["doc", "--workspace", "--no-deps", "--all-features"])
        .env("RUSTDOCFLAGS", "-D warnings");
    run("cargo doc --workspace --no-deps --all-features", doc)?;

    eprintln!("\n==> rust-version honest (cargo metadata)");
    msrv::check()?;
    package()?;

    eprintln!("\nxtask ci: all green");
    Ok(())
}
