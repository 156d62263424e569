//! Helpers shared by the wire tests: real Rocket servers on `127.0.0.1:0`
//! and checks on the suite's raw client's responses.

#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};

use conformance::client::Response;
use rocket::config::{LogLevel, Shutdown as ShutdownConfig};
use rocket::fairing::AdHoc;
use rocket::{Build, Config, Rocket, Shutdown};
use tokio::sync::oneshot;

pub const HERE: &str = "148ed599c14189";
pub const OTHER: &str = "90801679a10038";

/// The contract engine for this Machine.
pub fn engine() -> sticky_rocket::sticky_core::Sticky {
    conformance::contract_sticky(sticky_rocket::sticky_core::Env::machine(HERE))
        .expect("valid config")
}

/// A quiet configuration: `127.0.0.1`, a port chosen by the OS, no logging,
/// no signal handling, a short shutdown grace period.
pub fn test_config() -> Config {
    let mut shutdown = ShutdownConfig {
        ctrlc: false,
        grace: 1,
        mercy: 1,
        ..ShutdownConfig::default()
    };
    #[cfg(unix)]
    shutdown.signals.clear();
    Config {
        address: IpAddr::from([127, 0, 0, 1]),
        port: 0,
        log_level: LogLevel::Off,
        cli_colors: false,
        shutdown,
        ..Config::default()
    }
}

/// A running server that shuts down when dropped.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.clone().notify();
    }
}

/// Launches any Rocket (built on [`test_config`]) and returns once it
/// listens, with the port the OS chose.
pub async fn launch(rocket: Rocket<Build>) -> Server {
    let (tx, rx) = oneshot::channel();
    let rocket = rocket
        .attach(AdHoc::on_liftoff("port", move |r| {
            let addr = SocketAddr::new(r.config().address, r.config().port);
            Box::pin(async move {
                let _ = tx.send(addr);
            })
        }))
        .ignite()
        .await
        .expect("rocket ignites");
    let shutdown = rocket.shutdown();
    tokio::spawn(async move {
        if let Err(e) = rocket.launch().await {
            // Displaying marks the error handled (Rocket panics otherwise).
            eprintln!("rocket: {e}");
        }
    });
    let addr = rx.await.expect("rocket lifts off");
    assert_ne!(addr.port(), 0, "the bound port is known at liftoff");
    Server { addr, shutdown }
}

/// The only value of header `name`; panics when there are several.
pub fn only(reply: &Response, name: &str) -> Option<String> {
    let all = reply.all(name);
    assert!(
        all.len() <= 1,
        "{name} appears {} times: {all:?}",
        all.len()
    );
    all.first().map(|v| (*v).to_owned())
}

/// Checks the sticky cookie pinning to `HERE`, attribute by attribute.
pub fn assert_pin_cookie(set_cookie: &str, secure: bool) {
    let mut parts = set_cookie.split(';').map(str::trim);
    assert_eq!(
        parts.next(),
        Some(format!("fly-machine-id={HERE}").as_str())
    );
    let attrs: Vec<&str> = parts.collect();
    for want in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=518400"] {
        assert!(
            attrs.iter().any(|a| a.eq_ignore_ascii_case(want)),
            "{want} missing in {set_cookie:?}"
        );
    }
    assert_eq!(
        attrs.iter().any(|a| a.eq_ignore_ascii_case("Secure")),
        secure,
        "Secure in {set_cookie:?}"
    );
}

/// A 307 with `fly-replay: prefer_instance=<target>`, no body, no cookie.
pub fn assert_replayed_to(reply: &Response, target: &str) {
    assert_eq!(reply.status, 307, "{reply:?}");
    assert_eq!(
        only(reply, "fly-replay"),
        Some(format!("prefer_instance={target}"))
    );
    assert!(
        reply.body.is_empty(),
        "replay body must be empty: {reply:?}"
    );
    assert!(
        reply.all("set-cookie").is_empty(),
        "no Set-Cookie on a replay"
    );
}
