//! `cargo xtask socketio`: the socket.io end-to-end tests with real clients.
//!
//! Installs what they need on a fresh machine, then runs them:
//! - the Node client: `npm ci` from `examples/socketio/js/package-lock.json`
//!   into `examples/socketio/js/node_modules` (ignored by git), skipped when
//!   that install is newer than the lockfile;
//! - python-socketio: a venv at `<target dir>/socketio-venv` with the pinned
//!   `examples/socketio/python/requirements.txt`, remade when the file changes.
//!
//! The tests are `#[ignore]`d in a plain `cargo test` (they need these
//! installs) and run here with `--ignored`, with the workspace test's own
//! flags so that `cargo xtask ci` reuses its build.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cargo, root, run, target_dir};

/// The test targets of `example-socketio` that need the real clients.
const TESTS: [&str; 3] = ["socketio_node", "socketio_python", "socketio_faults"];

/// Installs the clients and runs the socket.io tests.
pub(crate) fn run_tests(_args: &[String]) -> Result<(), String> {
    let started = std::time::Instant::now();
    npm_ci()?;
    venv()?;
    let mut test = cargo();
    test.args(["test", "--workspace", "--all-features"]);
    for t in TESTS {
        test.args(["--test", t]);
    }
    // One flysim at a time: the load runs share 2 cores.
    test.args(["--", "--ignored", "--test-threads", "1"]);
    run("socket.io end-to-end tests (Node, Python)", test)?;
    eprintln!(
        "xtask socketio: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn js_dir() -> PathBuf {
    root().join("examples/socketio/js")
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

fn npm_ci() -> Result<(), String> {
    let dir = js_dir();
    // npm writes node_modules/.package-lock.json at the end of an install.
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    let lock = modified(&dir.join("package-lock.json"));
    if installed.is_some() && installed >= lock {
        eprintln!("\n==> npm ci: node_modules is up to date");
        return Ok(());
    }
    let mut npm = Command::new("npm");
    npm.current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel", "error"]);
    run("npm ci (examples/socketio/js)", npm).map_err(|e| format!("{e}: is Node 20+ installed?"))
}

fn venv() -> Result<(), String> {
    let venv = target_dir().join("socketio-venv");
    let requirements = root().join("examples/socketio/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let stamp = venv.join("requirements.installed");
    if std::fs::read_to_string(&stamp).is_ok_and(|have| have == wanted) {
        eprintln!("\n==> python venv: {} is up to date", venv.display());
        return Ok(());
    }
    let mut make = Command::new("python3");
    make.args(["-m", "venv", "--clear"]).arg(&venv);
    run("python3 -m venv", make)?;
    let mut pip = Command::new(venv.join("bin/python"));
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        // Every dependency is pinned in the file: install exactly that.
        "--no-deps",
        "-r",
    ])
    .arg(&requirements);
    run(
        "pip install -r examples/socketio/python/requirements.txt",
        pip,
    )?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))
}
