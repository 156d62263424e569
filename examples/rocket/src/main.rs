//! The sticky demo app on Rocket: `0.0.0.0:$PORT` (default 8080).
//!
//! Environment: `FLY_MACHINE_ID`, `FLY_APP_NAME`, `FLY_REGION` (set by Fly),
//! `PORT`, and `DRAIN_SECONDS` (how long to keep serving after `SIGTERM`,
//! default 5).

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use sticky_rocket::sticky_core::Env;

fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}: not a valid number: {value:?}")),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(e) => Err(format!("{name}: {e}")),
    }
}

#[rocket::main]
async fn main() -> ExitCode {
    let settings = var("PORT", 8080u16).and_then(|port| Ok((port, var("DRAIN_SECONDS", 5u64)?)));
    let (port, drain) = match settings {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("example-rocket: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sticky = match example_rocket::engine(Env::from_process()) {
        Ok(sticky) => sticky,
        Err(e) => {
            eprintln!("example-rocket: invalid sticky configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Key affinity's live set: STICKY_PEERS, or Fly's internal DNS.
    let _peers = sticky
        .is_enabled()
        .then(|| sticky_peers::Provider::from_env(&sticky))
        .and_then(|p| {
            p.map_err(|e| eprintln!("example-rocket: key affinity has no live set: {e}"))
                .ok()
        });
    let config = example_rocket::config(IpAddr::from([0, 0, 0, 0]), port);
    match example_rocket::serve(sticky, config, Duration::from_secs(drain)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-rocket: {e}");
            ExitCode::FAILURE
        }
    }
}
