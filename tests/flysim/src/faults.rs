//! Network faults a Machine can be given for a while (the admin
//! `POST /machines/<id>/fault`, [`FlySim::fault`](crate::FlySim::fault)):
//! its connections are reset, its answers are delayed, or it accepts
//! requests and never answers (a blackhole). The proxy applies a Machine's
//! fault to every delivery to it ([`Shared::deliver`](crate::sim::Shared)),
//! and health checks meet it too.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The longest fault, and the longest delay, flysim accepts: one hour.
pub const MAX_FAULT: Duration = Duration::from_secs(3600);

/// What a faulty network does to a Machine's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Every new connection is reset before the request reaches the Machine
    /// (the proxy treats it as a connection failure and may pick another
    /// Machine), and its open WebSocket tunnels are reset when the fault
    /// begins.
    Reset,
    /// Every request waits this long before it is sent to the Machine.
    Delay(Duration),
    /// Requests are accepted and never answered: each one sent while the
    /// fault lasts fails when the proxy's response timeout runs out
    /// ([`Config::response_timeout`](crate::Config::response_timeout)),
    /// even if the fault ends first (its packets are gone).
    Blackhole,
}

impl FaultKind {
    /// `reset`, `delay` or `blackhole`.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Reset => "reset",
            FaultKind::Delay(_) => "delay",
            FaultKind::Blackhole => "blackhole",
        }
    }

    /// Reads `kind` (`reset`, `delay` or `blackhole`) and, for a delay, its
    /// `ms`; errors name the problem.
    pub fn parse(kind: &str, ms: Option<&str>) -> Result<FaultKind, String> {
        match kind {
            "reset" => Ok(FaultKind::Reset),
            "blackhole" => Ok(FaultKind::Blackhole),
            "delay" => {
                let Some(ms) = ms else {
                    return Err("kind=delay needs ms=<milliseconds>".to_owned());
                };
                let d = parse_ms("ms", ms)?;
                Ok(FaultKind::Delay(d))
            }
            other => Err(format!(
                "unknown fault kind {other:?} (reset, delay or blackhole)"
            )),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Delay(d) => write!(f, "delay {} ms", d.as_millis()),
            other => f.write_str(other.name()),
        }
    }
}

/// A number of milliseconds from 1 to [`MAX_FAULT`], named `name` in errors.
pub(crate) fn parse_ms(name: &str, value: &str) -> Result<Duration, String> {
    let ms: u64 = value
        .parse()
        .map_err(|_| format!("{name}={value:?} is not a number of milliseconds"))?;
    if ms == 0 || ms > MAX_FAULT.as_millis() as u64 {
        return Err(format!(
            "{name}={ms} is out of range (1 to {} ms)",
            MAX_FAULT.as_millis()
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A Machine's current fault, as the admin JSON shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultInfo {
    /// `reset`, `delay` or `blackhole`.
    pub kind: &'static str,
    /// The delay, for `delay`.
    pub delay_ms: Option<u64>,
    /// How long the fault has left, in milliseconds.
    pub remaining_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_and_refuse() {
        assert_eq!(FaultKind::parse("reset", None), Ok(FaultKind::Reset));
        assert_eq!(
            FaultKind::parse("blackhole", Some("5")),
            Ok(FaultKind::Blackhole)
        );
        assert_eq!(
            FaultKind::parse("delay", Some("250")),
            Ok(FaultKind::Delay(Duration::from_millis(250)))
        );
        assert!(FaultKind::parse("delay", None).unwrap_err().contains("ms="));
        assert!(
            FaultKind::parse("delay", Some("0"))
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            FaultKind::parse("delay", Some("x"))
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            FaultKind::parse("flood", None)
                .unwrap_err()
                .contains("unknown fault kind")
        );
        assert!(parse_ms("for_ms", "3600001").is_err());
        assert_eq!(parse_ms("for_ms", "3600000"), Ok(MAX_FAULT));
    }
}
