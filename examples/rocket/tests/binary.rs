//! The `example-rocket` binary as a process: environment, signals, exit
//! codes. The drain checks are shared by every example: `conformance::binary`.

#![cfg(unix)]

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_example-rocket");
const HERE: &str = "148ed599c14189";

#[test]
fn sigterm_drains_keeps_serving_then_exits() {
    conformance::binary::sigterm_drains_keeps_serving_then_exits(BINARY);
}

/// Rocket's own graceful shutdown (grace + mercy), never the drain period.
#[test]
fn sigint_stops_at_once() {
    conformance::binary::sigint_stops_at_once(BINARY);
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn(port: u16, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(BINARY);
    cmd.env_remove("FLY_MACHINE_ID")
        .env_remove("FLY_APP_NAME")
        .env_remove("FLY_REGION")
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.spawn().expect("spawn example-rocket")
}

/// Kills the child on drop so a failing test leaves nothing behind.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn invalid_configuration_exits_non_zero() {
    for env in [
        [("FLY_MACHINE_ID", "not-a-machine"), ("DRAIN_SECONDS", "1")],
        [("FLY_MACHINE_ID", HERE), ("DRAIN_SECONDS", "soon")],
    ] {
        let mut proc = Proc(spawn(free_port(), &env));
        let status = wait_exit(&mut proc.0, Duration::from_secs(10));
        assert!(!status.success(), "{env:?}: {status:?}");
        let mut stderr = String::new();
        if let Some(mut err) = proc.0.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        assert!(stderr.contains("example-rocket:"), "{env:?}: {stderr}");
    }
}
