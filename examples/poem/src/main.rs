//! The sticky contract app on poem: `PORT` (default 8080), `DRAIN_SECONDS`
//! (default 5) and `FLY_*` from the environment.

use std::process::ExitCode;
use std::time::Duration;

use sticky_poem::sticky_core::Env;

/// Reads `name` as a number, or `default` when it is unset.
fn number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a valid number")),
        Err(std::env::VarError::NotUnicode(value)) => {
            Err(format!("{name}={value:?} is not a valid number"))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let settings = number("PORT", 8080u16).and_then(|port| {
        number("DRAIN_SECONDS", 5u64).map(|drain| (port, Duration::from_secs(drain)))
    });
    let (port, drain_for) = match settings {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let sticky = match example_poem::configure(Env::from_process()) {
        Ok(sticky) => sticky,
        Err(error) => {
            eprintln!("error: invalid sticky configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Key affinity's live set: STICKY_PEERS, or Fly's internal DNS.
    let _peers = sticky
        .is_enabled()
        .then(|| sticky_peers::Provider::from_env(&sticky))
        .and_then(|p| {
            p.map_err(|e| eprintln!("example-poem: key affinity has no live set: {e}"))
                .ok()
        });
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("error: cannot listen on 0.0.0.0:{port}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map_or_else(|_| format!("0.0.0.0:{port}"), |addr| addr.to_string());
    eprintln!(
        "listening on {addr} as machine {}",
        sticky.machine_id().unwrap_or("local")
    );
    match example_poem::run(listener, sticky, drain_for).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
