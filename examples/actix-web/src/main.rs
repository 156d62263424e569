//! `FLY_MACHINE_ID=148ed599c14189 PORT=8081 cargo run -p example-actix-web`

use std::time::Duration;

use sticky_actix_web::sticky_core::Env;

fn main() {
    let sticky = match example_actix_web::sticky(Env::from_process()) {
        Ok(sticky) => sticky,
        Err(err) => {
            eprintln!("example-actix-web: invalid sticky configuration: {err}");
            std::process::exit(2);
        }
    };
    // Key affinity's live set: STICKY_PEERS, or Fly's internal DNS.
    let _peers = sticky
        .is_enabled()
        .then(|| sticky_peers::Provider::from_env(&sticky))
        .and_then(|p| {
            p.map_err(|e| eprintln!("example-actix-web: key affinity has no live set: {e}"))
                .ok()
        });
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let grace = std::env::var("DRAIN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(5), Duration::from_secs);
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("example-actix-web: cannot listen on port {port}: {err}");
            std::process::exit(1);
        }
    };
    println!(
        "example-actix-web: machine {} listening on 0.0.0.0:{port}",
        sticky
            .machine_id()
            .unwrap_or("local (not on Fly: sticky is off)")
    );
    let served = actix_web::rt::System::new().block_on(async move {
        let server = example_actix_web::server(listener, sticky.clone())?;
        actix_web::rt::spawn(example_actix_web::shutdown_on_signals(
            sticky,
            grace,
            server.handle(),
        ));
        server.await
    });
    if let Err(err) = served {
        eprintln!("example-actix-web: {err}");
        std::process::exit(1);
    }
}
