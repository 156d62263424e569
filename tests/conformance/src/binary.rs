//! Checks on an example app's built binary (the app contract of DESIGN.md),
//! shared by the examples' `tests/shutdown.rs`: how it drains on SIGTERM and
//! stops on SIGINT. Each function panics on failure, like an assertion; call
//! it from a `#[test]` with `env!("CARGO_BIN_EXE_<package>")`.
//!
//! ```no_run
//! # #[cfg(unix)]
//! conformance::binary::sigint_stops_at_once("target/debug/example-axum");
//! ```
#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const HERE: &str = "148ed599c14189";
const OTHER: &str = "90801679a10038";

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The binary as a process, killed on drop so a failing test leaves nothing
/// behind.
struct App {
    child: Child,
    port: u16,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl App {
    fn start(binary: &str, drain_seconds: &str) -> Self {
        let port = free_port();
        let child = Command::new(binary)
            .env("FLY_MACHINE_ID", HERE)
            .env_remove("FLY_APP_NAME")
            .env_remove("FLY_REGION")
            .env_remove("FLY_DNS_SERVER")
            // A static live set: no DNS lookups in a test.
            .env("STICKY_PEERS", format!("{HERE},{OTHER}"))
            .env("PORT", port.to_string())
            .env("DRAIN_SECONDS", drain_seconds)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let app = App { child, port };
        let start = Instant::now();
        while !matches!(app.get("/health", &[]), Ok((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{binary} did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        app
    }

    /// `GET path` with extra header lines; returns (status, raw response).
    fn get(&self, path: &str, headers: &[&str]) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
        for h in headers {
            request.push_str(h);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes())?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let status = raw
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, raw))
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < limit, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn fly_replay(raw: &str) -> Option<String> {
    raw.lines().take_while(|l| !l.is_empty()).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("fly-replay")
            .then(|| value.trim().to_owned())
    })
}

/// SIGTERM: requests pinned here and first visits are replayed with
/// `elsewhere=true` and get no cookie, a client pinned elsewhere still goes
/// home, an already-replayed request and `/health` are still served, and the
/// process exits 0 after `DRAIN_SECONDS` (2 s).
pub fn sigterm_drains_keeps_serving_then_exits(binary: &str) {
    let mut app = App::start(binary, "2");
    let pinned = format!("Cookie: fly-machine-id={HERE}");
    let (status, body) = app.get("/", &[&pinned]).expect("served");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with(&format!("machine={HERE} handled=1")),
        "{body}"
    );

    app.signal("TERM");
    let term = Instant::now();
    // Draining: a request pinned here is sent elsewhere, without running the
    // handler.
    let mut handled = 1;
    let replayed = loop {
        let (status, raw) = app.get("/", &[&pinned]).expect("still serving");
        if status == 307 {
            break raw;
        }
        assert_eq!(status, 200, "{raw}");
        handled += 1; // served before the signal was handled
        assert!(term.elapsed() < Duration::from_secs(1), "no drain: {raw}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        fly_replay(&replayed).as_deref(),
        Some("elsewhere=true"),
        "{replayed}"
    );
    // So is a first visit, and no cookie pins anyone to this Machine.
    let (status, raw) = app.get("/", &[]).expect("still serving");
    assert_eq!(
        (status, fly_replay(&raw).as_deref()),
        (307, Some("elsewhere=true")),
        "{raw}"
    );
    assert!(!raw.to_ascii_lowercase().contains("set-cookie"), "{raw}");
    // A client pinned elsewhere still goes home.
    let (_, raw) = app
        .get("/", &[&format!("Cookie: fly-machine-id={OTHER}")])
        .expect("still serving");
    assert_eq!(
        fly_replay(&raw),
        Some(format!("prefer_instance={OTHER}")),
        "{raw}"
    );
    // What cannot move (already replayed once) is still served here, and so
    // are excluded paths.
    let (status, body) = app
        .get(
            "/",
            &[&pinned, &format!("fly-replay-src: instance={OTHER}")],
        )
        .expect("still serving");
    assert_eq!(status, 200, "{body}");
    let served = format!("machine={HERE} handled={}", handled + 1);
    assert!(body.ends_with(&served), "{body}");
    assert_eq!(app.get("/health", &[]).expect("health").0, 200);

    let status = app.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        term.elapsed() >= Duration::from_secs(2),
        "kept serving for DRAIN_SECONDS"
    );
}

/// SIGINT: the process exits 0 at once, without draining.
pub fn sigint_stops_at_once(binary: &str) {
    let mut app = App::start(binary, "60");
    app.signal("INT");
    let status = app.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
