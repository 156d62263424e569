//! The `example-poem` binary: environment, signals and exit codes.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const HERE: &str = "148ed599c14189";

struct App {
    child: Child,
    addr: SocketAddr,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_example-poem"));
    cmd.env_remove("FLY_MACHINE_ID")
        .env_remove("FLY_APP_NAME")
        .env_remove("FLY_REGION")
        .env_remove("DRAIN_SECONDS")
        .env("PORT", "0")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts the binary and waits for its "listening on <addr>" line.
fn start(envs: &[(&str, &str)]) -> App {
    let mut child = command(envs).spawn().expect("spawn example-poem");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("listening on ") {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the app reports its address");
    let port = addr.parse::<SocketAddr>().expect("a socket address").port();
    App {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// `GET path` pinned here; returns the status and the `fly-replay` value.
fn get(addr: SocketAddr, path: &str) -> (u16, Option<String>) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: app.test\r\ncookie: fly-machine-id={HERE}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let fly_replay = text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("fly-replay")
            .then(|| value.trim().to_owned())
    });
    (status, fly_replay)
}

fn signal(app: &App, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), app.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

fn wait(app: &mut App, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = app.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "the app did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_then_exits() {
    let mut app = start(&[("FLY_MACHINE_ID", HERE), ("DRAIN_SECONDS", "1")]);
    assert_eq!(get(app.addr, "/"), (200, None));
    let signalled = Instant::now();
    signal(&app, "TERM");
    // Draining: requests pinned here are sent elsewhere, /health still answers.
    let mut drained = false;
    while signalled.elapsed() < Duration::from_millis(800) {
        if get(app.addr, "/") == (307, Some("elsewhere=true".to_owned())) {
            drained = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(drained, "the app did not start draining");
    assert_eq!(get(app.addr, "/health"), (200, None));
    let status = wait(&mut app, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "kept serving for DRAIN_SECONDS"
    );
}

#[test]
fn sigint_stops_at_once() {
    let mut app = start(&[("FLY_MACHINE_ID", HERE), ("DRAIN_SECONDS", "60")]);
    assert_eq!(get(app.addr, "/"), (200, None));
    signal(&app, "INT");
    let status = wait(&mut app, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_config_error_exits_non_zero() {
    let output = command(&[("FLY_MACHINE_ID", "not a machine id")])
        .output()
        .expect("run example-poem");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sticky configuration"), "{stderr}");
}

#[test]
fn a_bad_port_exits_non_zero() {
    let output = command(&[("PORT", "eighty")])
        .output()
        .expect("run example-poem");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("PORT"));
}
