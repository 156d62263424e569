//! Health checks (fly.toml's `[[http_service.checks]]`): one HTTP/1.1 `GET`
//! to a Machine's own address, passed by a 2xx answer within the timeout.
//! The checker task runs them periodically and marks Machines healthy or
//! not (the balancer leaves failing ones out); deploys run them to gate
//! each step. A Machine's network fault applies to its checks too.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::events::EventKind;
use crate::faults::FaultKind;
use crate::machine::MachineState;
use crate::sim::Shared;

/// One HTTP health check, as in fly.toml's `[[http_service.checks]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path checked (`GET`). Default `/health`.
    pub path: String,
    /// How often every started Machine is checked. Default 1 s (fly.toml's
    /// `interval` when read from a file).
    pub interval: Duration,
    /// How long one check may take. Default 2 s.
    pub timeout: Duration,
    /// How long after a start a failing check does not count (fly.toml's
    /// `grace_period`). Default 0.
    pub grace_period: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            grace_period: Duration::ZERO,
        }
    }
}

impl HealthCheck {
    /// Refuses a path that is not an absolute path of visible ASCII, and a
    /// zero interval or timeout.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || !self.path.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "health check path {:?} is not an absolute path of visible ASCII",
                self.path
            ));
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err("a health check's interval and timeout must be more than 0".to_owned());
        }
        Ok(())
    }
}

/// Why a Machine failed one check, or `Ok` when it passed.
pub(crate) async fn check_once(
    shared: &Shared,
    id: &str,
    check: &HealthCheck,
) -> Result<(), String> {
    let Some(addr) = shared
        .fleet
        .machines()
        .into_iter()
        .find(|m| m.id == id && m.state == MachineState::Started)
        .and_then(|m| m.addr)
    else {
        return Err("it is not started".to_owned());
    };
    let fault = shared.fleet.fault(id);
    let attempt = async {
        match fault {
            Some(FaultKind::Reset) => return Err("connection reset (network fault)".to_owned()),
            Some(FaultKind::Blackhole) => {
                std::future::pending::<()>().await;
            }
            Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
            None => {}
        }
        get(addr, &check.path).await
    };
    match tokio::time::timeout(check.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", check.timeout)),
    }
}

/// `GET path` on a connection of its own; `Ok` on a 2xx status line.
async fn get(addr: std::net::SocketAddr, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: flysim-health\r\nconnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the check: {e}"))?;
    let mut head = [0u8; 12];
    let mut n = 0;
    while n < head.len() {
        match stream.read(&mut head[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
    // "HTTP/1.1 200"
    let status = std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|line| line.get(9..12))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => Ok(()),
        Some(code) => Err(format!("GET {path} answered {code}")),
        None => Err(format!("GET {path} got no HTTP status line")),
    }
}

/// Checks every started Machine each [`HealthCheck::interval`] and records
/// each change of verdict as an [`EventKind::Health`] event.
pub(crate) async fn run(shared: Arc<Shared>, check: HealthCheck) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let started: Vec<String> = shared
            .fleet
            .machines()
            .into_iter()
            .filter(|m| m.state == MachineState::Started)
            .map(|m| m.id)
            .collect();
        let checks = started.iter().map(|id| {
            let shared = &shared;
            let check = &check;
            async move { (id, check_once(shared, id, check).await) }
        });
        for (id, result) in futures_util::future::join_all(checks).await {
            if shared.fleet.in_grace(id, check.grace_period) && result.is_err() {
                continue;
            }
            let healthy = result.is_ok();
            if shared.fleet.set_healthy(id, healthy) {
                let message = match result {
                    Ok(()) => format!("Machine {id} passes its health check (GET {})", check.path),
                    Err(why) => format!(
                        "Machine {id} fails its health check (GET {}): {why}; it is out of the rotation",
                        check.path
                    ),
                };
                shared
                    .events
                    .record(EventKind::Health, None, None, Some(id), message);
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(check.interval) => {}
        }
    }
}
