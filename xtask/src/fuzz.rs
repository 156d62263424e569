//! `cargo xtask fuzz [--seconds N]`: runs the cargo-fuzz target `decide`
//! (fuzz/) for N seconds (default 60), installing cargo-fuzz if missing.
//!
//! cargo-fuzz builds with `-Zsanitizer=address`, a nightly-only flag; on a
//! stable toolchain `RUSTC_BOOTSTRAP=1` lets rustc accept it (fuzz/README.md).

use std::process::Stdio;

use crate::{cargo, root, run, target_dir};

/// The only fuzz target.
const TARGET: &str = "decide";

pub(crate) fn run_target(args: &[String]) -> Result<(), String> {
    let seconds = match args.iter().position(|a| a == "--seconds") {
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|&s| s > 0)
            .ok_or("--seconds needs a positive number")?,
        None => 60,
    };
    ensure_cargo_fuzz()?;
    let mut fuzz = cargo();
    fuzz.current_dir(root().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        // The fuzz crate is its own workspace with its own target dir
        // (fuzz/target): never mix its sanitizer builds into the workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .args(["fuzz", "run", TARGET, "--"])
        .arg(format!("-max_total_time={seconds}"));
    run(
        &format!("RUSTC_BOOTSTRAP=1 cargo fuzz run {TARGET} -- -max_total_time={seconds}"),
        fuzz,
    )
}

/// Installs cargo-fuzz unless `cargo fuzz` already works.
fn ensure_cargo_fuzz() -> Result<(), String> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    let mut install = cargo();
    install.args(["install", "cargo-fuzz", "--locked"]);
    run("cargo install cargo-fuzz --locked", install)
}

/// For `cargo xtask ci`: the fuzz crate (outside the workspace, so not in
/// the workspace's fmt and clippy runs) is formatted and still compiles
/// against the current core, with no warning. Needs neither nightly nor
/// cargo-fuzz. It shares the workspace's target dir, so the dependencies
/// the clippy step already checked are reused.
pub(crate) fn check() -> Result<(), String> {
    let mut fmt = cargo();
    fmt.args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]);
    run("cargo fmt --manifest-path fuzz/Cargo.toml --check", fmt)?;
    let mut clippy = cargo();
    clippy.env("CARGO_TARGET_DIR", target_dir()).args([
        "clippy",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--",
        "-D",
        "warnings",
    ]);
    run(
        "cargo clippy --manifest-path fuzz/Cargo.toml -- -D warnings",
        clippy,
    )
}
