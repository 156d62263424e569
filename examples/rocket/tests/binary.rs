//! The `example-rocket` binary as a process: environment, signals, exit codes.

#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const HERE: &str = "148ed599c14189";

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn spawn(port: u16, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-rocket"));
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

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// `GET path` with optional cookie; returns (status, raw response).
fn get(port: u16, path: &str, cookie: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{cookie}\r\n"
    )?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, out))
}

fn wait_ready(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok((200, _)) = get(port, "/health", None) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("example-rocket did not listen on {port}");
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
fn sigterm_drains_keeps_serving_then_exits() {
    let port = free_port();
    let mut proc = Proc(spawn(
        port,
        &[("FLY_MACHINE_ID", HERE), ("DRAIN_SECONDS", "2")],
    ));
    wait_ready(port);
    let pinned = format!("fly-machine-id={HERE}");
    let (status, body) = get(port, "/", Some(&pinned)).expect("served");
    assert_eq!(status, 200);
    assert!(
        body.ends_with(&format!("machine={HERE} handled=1")),
        "{body}"
    );

    signal(&proc.0, "TERM");
    let term = Instant::now();
    // Draining: a request pinned here is sent elsewhere; /health still works.
    let replayed = loop {
        let (status, raw) = get(port, "/", Some(&pinned)).expect("still serving");
        if status == 307 {
            break raw;
        }
        assert!(term.elapsed() < Duration::from_secs(1), "no drain: {raw}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        replayed
            .to_ascii_lowercase()
            .contains("fly-replay: elsewhere=true"),
        "{replayed}"
    );
    assert_eq!(get(port, "/health", None).expect("health").0, 200);

    let status = wait_exit(&mut proc.0, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        term.elapsed() >= Duration::from_secs(2),
        "kept serving for DRAIN_SECONDS"
    );
}

#[test]
fn sigint_stops_at_once() {
    let port = free_port();
    let mut proc = Proc(spawn(
        port,
        &[("FLY_MACHINE_ID", HERE), ("DRAIN_SECONDS", "60")],
    ));
    wait_ready(port);
    signal(&proc.0, "INT");
    // Rocket's own graceful shutdown (grace + mercy), never the drain period.
    let status = wait_exit(&mut proc.0, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
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
