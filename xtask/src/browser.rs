//! `cargo xtask browser [--debug] [--docs]`: the real-browser end-to-end tests.
//!
//! Installs what they need on a fresh machine, then runs them:
//! - Chromium from Debian's packages (`apt-get install chromium`) when
//!   `/usr/bin/chromium` is missing; never a downloaded browser;
//! - `playwright-core`: `npm ci` from `tests/browser/package-lock.json` into
//!   `tests/browser/node_modules` (ignored by git), skipped when that install
//!   is newer than the lockfile.
//!
//! Then it builds the `flysim` binary and every example in release, starts
//! one flysim cluster (3 Machines) per framework, and runs
//! `tests/browser/e2e.mjs` once against all of them (one browser, fresh
//! contexts per framework). Each check prints a line; screenshots go to
//! `<target dir>/browser/`. `--docs` copies the axum page and dashboard
//! screenshots to `docs/`, where the README shows them.
//!
//! `--debug` tests the dev-profile binaries that `cargo test --workspace
//! --all-features` builds instead (the same code, not optimised):
//! `cargo xtask ci` uses it right after its test run, where they are already
//! built, rather than spending minutes of its 2 cores on release builds.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{FRAMEWORKS, cargo, machine, root, run, target_dir};

/// Debian's Chromium; the tests use no other browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// How long a cluster's Machines keep serving after a drain's SIGTERM: past
/// the end of the test, so that "draining" is what the test sees.
const DRAIN_SECONDS: &str = "60";

/// Installs Chromium and playwright-core if missing, builds, starts one
/// cluster per framework and runs the browser tests.
pub(crate) fn run_tests(args: &[String]) -> Result<(), String> {
    let started = Instant::now();
    let docs = args.iter().any(|a| a == "--docs");
    let debug = args.iter().any(|a| a == "--debug");
    if let Some(other) = args
        .iter()
        .find(|a| !["--docs", "--debug"].contains(&a.as_str()))
    {
        return Err(format!("unknown argument {other:?} (--debug, --docs)"));
    }
    chromium()?;
    npm_ci()?;
    let built = Instant::now();
    let (flysim, examples) = build(debug)?;
    let build_time = built.elapsed();

    let out = target_dir().join("browser");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut clusters = Vec::new();
    for (framework, binary) in &examples {
        clusters.push(Cluster::start(framework, &flysim, binary)?);
    }
    let mut node = Command::new("node");
    node.current_dir(js_dir())
        .arg("e2e.mjs")
        .arg("--chromium")
        .arg(CHROMIUM)
        .arg("--out")
        .arg(&out);
    for c in &clusters {
        node.arg("--target")
            .arg(format!("{},{},{}", c.framework, c.front, c.admin));
    }
    let tested = run(
        "browser end-to-end tests (headless Chromium, playwright-core)",
        node,
    );
    for c in clusters {
        c.stop();
    }
    tested?;
    if docs {
        for (from, to) in [
            ("axum-page.png", "browser-page.png"),
            ("axum-dashboard.png", "browser-dashboard.png"),
        ] {
            let to = root().join("docs").join(to);
            std::fs::copy(out.join(from), &to).map_err(|e| format!("{from}: {e}"))?;
            eprintln!("xtask browser: wrote {}", to.display());
        }
    }
    eprintln!(
        "xtask browser: done in {} ({} of it building), screenshots in {}",
        machine::duration(started.elapsed()),
        machine::duration(build_time),
        out.display()
    );
    Ok(())
}

fn js_dir() -> PathBuf {
    root().join("tests/browser")
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// `apt-get install chromium` when `/usr/bin/chromium` is missing (through
/// `sudo` unless root), after an `apt-get update` if the first try fails.
fn chromium() -> Result<(), String> {
    if Path::new(CHROMIUM).is_file() {
        eprintln!("\n==> chromium: {CHROMIUM} is installed");
        return Ok(());
    }
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let apt = |args: &[&str]| {
        let mut cmd = if root_user {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    let install = ["install", "-y", "-q", "--no-install-recommends", "chromium"];
    if run("apt-get install chromium", apt(&install)).is_err() {
        run("apt-get update", apt(&["update", "-q"]))?;
        run("apt-get install chromium", apt(&install))?;
    }
    if Path::new(CHROMIUM).is_file() {
        Ok(())
    } else {
        Err(format!(
            "apt-get installed chromium but {CHROMIUM} is missing"
        ))
    }
}

fn npm_ci() -> Result<(), String> {
    let dir = js_dir();
    // npm writes node_modules/.package-lock.json at the end of an install.
    let installed = modified(&dir.join("node_modules/.package-lock.json"));
    let lock = modified(&dir.join("package-lock.json"));
    if installed.is_some() && installed >= lock {
        eprintln!("\n==> npm ci: tests/browser/node_modules is up to date");
        return Ok(());
    }
    let mut npm = Command::new("npm");
    npm.current_dir(&dir)
        .args(["ci", "--no-audit", "--no-fund", "--loglevel", "error"]);
    run("npm ci (tests/browser: playwright-core)", npm)
        .map_err(|e| format!("{e}: is Node 20+ installed?"))
}

/// The flysim binary and each present example, built in release (or, with
/// `debug`, as `cargo test --workspace --all-features` builds them).
fn build(debug: bool) -> Result<(PathBuf, Vec<(String, PathBuf)>), String> {
    let present: Vec<&str> = FRAMEWORKS
        .into_iter()
        .filter(|fw| {
            root()
                .join("examples")
                .join(fw)
                .join("Cargo.toml")
                .is_file()
        })
        .collect();
    let mut build = cargo();
    if debug {
        // The workspace test build, exactly: after `cargo test` it is a no-op.
        build.args(["test", "--workspace", "--all-features", "--no-run"]);
        run(
            "cargo test --workspace --all-features --no-run (dev binaries)",
            build,
        )?;
    } else {
        build.args(["build", "--release", "-p", "flysim"]);
        for fw in &present {
            build.args(["-p", &format!("example-{fw}")]);
        }
        run(
            &format!("cargo build --release (flysim, {})", present.join(", ")),
            build,
        )?;
    }
    let release = target_dir().join(if debug { "debug" } else { "release" });
    Ok((
        release.join("flysim"),
        present
            .into_iter()
            .map(|fw| (fw.to_owned(), release.join(format!("example-{fw}"))))
            .collect(),
    ))
}

/// One framework's example as 3 Machines behind the flysim binary.
struct Cluster {
    framework: String,
    child: Child,
    front: String,
    admin: String,
}

impl Cluster {
    fn start(framework: &str, flysim: &Path, example: &Path) -> Result<Cluster, String> {
        let mut child = Command::new(flysim)
            .args([
                "--machines",
                "3",
                "--port",
                "0",
                "--app",
                &format!("browser-{framework}"),
                "--child-output",
                "null",
                "--",
            ])
            .arg(example)
            .env("DRAIN_SECONDS", DRAIN_SECONDS)
            .env("RUST_LOG", "flysim=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", flysim.display()))?;
        let stdout = child.stdout.take().ok_or("flysim has no stdout")?;
        let (lines, urls) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The start-up lines name the URLs; the rest (the exit
                // report) is read and dropped so that flysim never blocks.
                for (prefix, kind) in [("flysim: front ", "front"), ("flysim: admin ", "admin")] {
                    if let Some(url) = line.strip_prefix(prefix) {
                        let _ = lines.send((kind, url.trim().to_owned()));
                    }
                }
            }
        });
        let mut cluster = Cluster {
            framework: framework.to_owned(),
            child,
            front: String::new(),
            admin: String::new(),
        };
        while cluster.front.is_empty() || cluster.admin.is_empty() {
            match urls.recv_timeout(Duration::from_secs(60)) {
                Ok(("front", url)) => cluster.front = url,
                Ok((_, url)) => cluster.admin = url,
                Err(_) => {
                    return Err(format!(
                        "flysim for example-{framework} printed no front and admin URLs"
                    ));
                }
            }
        }
        eprintln!(
            "flysim: example-{framework} as 3 Machines at {} (admin {})",
            cluster.front, cluster.admin
        );
        Ok(cluster)
    }

    /// SIGTERM: flysim stops its Machines and exits.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.terminate();
    }
}
