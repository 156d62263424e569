//! `FLY_MACHINE_ID=148ed599c14189 PORT=50051 cargo run -p example-tonic`

use std::time::Duration;

use sticky_axum::sticky_core::Env;

#[tokio::main]
async fn main() {
    let sticky = match example_tonic::sticky(Env::from_process()) {
        Ok(sticky) => sticky,
        Err(err) => {
            eprintln!("example-tonic: invalid sticky configuration: {err}");
            std::process::exit(2);
        }
    };
    // Key affinity's live set: STICKY_PEERS, or Fly's internal DNS.
    let _peers = sticky
        .is_enabled()
        .then(|| sticky_peers::Provider::from_env(&sticky))
        .and_then(|p| {
            p.map_err(|e| eprintln!("example-tonic: key affinity has no live set: {e}"))
                .ok()
        });
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(50051);
    let grace = std::env::var("DRAIN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_secs);
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("example-tonic: cannot listen on port {port}: {err}");
            std::process::exit(1);
        }
    };
    println!(
        "example-tonic: machine {} serving gRPC (h2c) on 0.0.0.0:{port}",
        sticky
            .machine_id()
            .unwrap_or("local (not on Fly: sticky is off)")
    );
    let shutdown = example_tonic::shutdown_signal(sticky.clone(), grace);
    if let Err(err) = example_tonic::serve(listener, sticky, shutdown).await {
        eprintln!("example-tonic: {err}");
        std::process::exit(1);
    }
}
