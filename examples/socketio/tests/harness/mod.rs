//! What the end-to-end tests share: 3 Machines of the example binary behind
//! flysim with random balancing, and the real clients (Node's
//! `socket.io-client` from `js/node_modules`, python-socketio from a venv),
//! both installed by `cargo xtask socketio`.
#![allow(dead_code, unreachable_pub)] // each test file uses a part

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use flysim::{Balance, ChildOutput, Config, FlySim, Launch};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_example-socketio");

pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// 3 Machines of the example, randomly balanced; `sticky: false` runs them
/// with `STICKY=off` (no sticky layer).
pub async fn start(sticky: bool, drain_seconds: u64) -> FlySim {
    let mut launch = Launch::command(BINARY, Vec::<String>::new())
        .env("DRAIN_SECONDS", drain_seconds.to_string());
    if !sticky {
        launch = launch.env("STICKY", "off");
    }
    let config = Config::default()
        .machines(3)
        .balance(Balance::Random)
        .child_output(ChildOutput::Null)
        .ready_timeout(Duration::from_secs(30))
        .quiet(true);
    FlySim::start(config, launch).await.expect("flysim starts")
}

fn node_command(script: &str, args: &[String]) -> Command {
    let dir = js_dir();
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "socket.io-client is not installed in {}: run `cargo xtask socketio` \
         (it runs `npm ci` there)",
        dir.display()
    );
    let mut cmd = Command::new(std::env::var("NODE").unwrap_or_else(|_| "node".into()));
    cmd.current_dir(&dir)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// Runs `js/load.mjs` against `sim` and returns its JSON summary.
pub async fn load(sim: &FlySim, args: &[&str]) -> Value {
    let mut all = vec!["--url".to_owned(), sim.url()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let child = node_command("load.mjs", &all).spawn().expect("node starts");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("load.mjs finishes within 90 s")
        .expect("load.mjs runs");
    assert!(out.status.success(), "load.mjs failed: {:?}", out.status);
    last_json(&out.stdout)
}

fn last_json(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{'));
    serde_json::from_str(line.unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}) in: {text}"))
}

/// A Node script driven line by line: JSON commands in, JSON reports out.
pub struct Driven {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Driven {
    pub fn spawn(script: &str, args: &[String]) -> Self {
        let mut child = node_command(script, args).spawn().expect("node starts");
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// The next JSON report (waits up to `limit`).
    pub async fn report(&mut self, limit: Duration) -> Value {
        loop {
            let line = tokio::time::timeout(limit, self.lines.next_line())
                .await
                .expect("a report in time")
                .expect("stdout readable")
                .expect("the script is still running");
            if line.starts_with('{') {
                return serde_json::from_str(&line).expect("JSON report");
            }
        }
    }

    pub async fn send(&mut self, command: &Value) {
        let line = format!("{command}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("command sent");
    }

    pub async fn finish(mut self) {
        self.send(&serde_json::json!({ "cmd": "exit" })).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// `v[key]` as an integer (0 when absent).
pub fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// The venv `cargo xtask socketio` makes: `<target dir>/socketio-venv`.
pub fn venv_python() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let target = target.parent().unwrap_or(&target);
    let python = target.join("socketio-venv/bin/python");
    assert!(
        python.is_file(),
        "no python-socketio venv at {}: run `cargo xtask socketio`",
        python.display()
    );
    python
}

/// Runs `python/client.py` against `sim` and returns its JSON summary.
pub async fn python_load(sim: &FlySim, clients: u32, echoes: u32) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/client.py");
    let child = Command::new(venv_python())
        .arg(script)
        .args([sim.url(), clients.to_string(), echoes.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("client.py finishes within 90 s")
        .expect("client.py runs");
    assert!(out.status.success(), "client.py failed: {:?}", out.status);
    last_json(&out.stdout)
}
