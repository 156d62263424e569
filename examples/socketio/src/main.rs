//! `FLY_MACHINE_ID=148ed599c14189 PORT=8081 cargo run -p example-socketio`
//!
//! `STICKY=off` serves the same app without the sticky layer.

use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() {
    let sticky = match example_socketio::sticky_from_env() {
        Ok(sticky) => sticky,
        Err(err) => {
            eprintln!("example-socketio: invalid sticky configuration: {err}");
            std::process::exit(2);
        }
    };
    // Without the layer (STICKY=off) the ID still names this Machine in acks.
    let machine: Arc<str> = match &sticky {
        Some(sticky) => sticky.machine_id().unwrap_or("local").into(),
        None => std::env::var("FLY_MACHINE_ID")
            .unwrap_or_else(|_| "local".into())
            .into(),
    };
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let grace = std::env::var("DRAIN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_secs);
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("example-socketio: cannot listen on port {port}: {err}");
            std::process::exit(1);
        }
    };
    let mode = match &sticky {
        Some(s) if s.is_enabled() => "sticky",
        Some(_) => "not on Fly: sticky is off",
        None => "STICKY=off: no sticky layer",
    };
    println!("example-socketio: machine {machine} ({mode}) listening on 0.0.0.0:{port}");
    let shutdown = example_socketio::shutdown_signal(sticky.clone(), grace);
    let app = example_socketio::app(sticky, machine);
    if let Err(err) = example_socketio::serve(listener, app, shutdown).await {
        eprintln!("example-socketio: {err}");
        std::process::exit(1);
    }
}
