//! Middleware ON vs OFF for one example app: two processes of the same
//! release binary, load alternated between them.

use std::path::Path;

use super::server::{Pinning, Server, http_get};
use super::wrk::{self, Load, Measured};
use super::{MACHINE_ID, Plan, median, min_max, quantile, spread_pct};

/// One framework's A/B measurements, round by round.
#[derive(Debug, Clone)]
pub(crate) struct AbResult {
    pub(crate) framework: String,
    /// ON (middleware enabled), one per round.
    pub(crate) on: Vec<Measured>,
    /// OFF (engine disabled), one per round.
    pub(crate) off: Vec<Measured>,
    /// The server's CPU time per request, nanoseconds, ON then OFF, one per
    /// round (`None` when /proc could not tell).
    pub(crate) cpu: Vec<(Option<f64>, Option<f64>)>,
}

impl AbResult {
    pub(crate) fn on_rps(&self) -> Vec<f64> {
        self.on.iter().map(|m| m.rps).collect()
    }
    pub(crate) fn off_rps(&self) -> Vec<f64> {
        self.off.iter().map(|m| m.rps).collect()
    }
    /// ON/OFF throughput of each round (the two runs of a round are back to back).
    pub(crate) fn ratios(&self) -> Vec<f64> {
        self.on
            .iter()
            .zip(&self.off)
            .map(|(on, off)| if off.rps > 0.0 { on.rps / off.rps } else { 0.0 })
            .collect()
    }
    /// The median of the per-round ratios.
    pub(crate) fn ratio(&self) -> f64 {
        median(&self.ratios())
    }
    pub(crate) fn ratio_range(&self) -> (f64, f64) {
        min_max(&self.ratios())
    }
    /// The interquartile range of the per-round ratios.
    pub(crate) fn ratio_iqr(&self) -> (f64, f64) {
        let r = self.ratios();
        (quantile(&r, 0.25), quantile(&r, 0.75))
    }
    /// Spread of ON and OFF throughput across rounds, percent.
    pub(crate) fn spreads(&self) -> (f64, f64) {
        (spread_pct(&self.on_rps()), spread_pct(&self.off_rps()))
    }
    /// Median CPU time per request, ON and OFF, and the median of the per-round
    /// differences (ON - OFF), nanoseconds.
    pub(crate) fn cpu_per_request(&self) -> Option<(f64, f64, f64)> {
        let pairs: Vec<(f64, f64)> = self
            .cpu
            .iter()
            .filter_map(|(on, off)| Some(((*on)?, (*off)?)))
            .collect();
        if pairs.is_empty() {
            return None;
        }
        let on: Vec<f64> = pairs.iter().map(|p| p.0).collect();
        let off: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let diff: Vec<f64> = pairs.iter().map(|p| p.0 - p.1).collect();
        Some((median(&on), median(&off), median(&diff)))
    }
    pub(crate) fn p50(runs: &[Measured]) -> f64 {
        median(&runs.iter().map(|m| m.p50_us).collect::<Vec<_>>())
    }
    pub(crate) fn p99(runs: &[Measured]) -> f64 {
        median(&runs.iter().map(|m| m.p99_us).collect::<Vec<_>>())
    }
    pub(crate) fn summary_line(&self) -> String {
        let (lo, hi) = self.ratio_iqr();
        let cpu = self
            .cpu_per_request()
            .map_or_else(String::new, |(on, off, diff)| {
                format!(
                    "; CPU per request ON {on:.0} ns, OFF {off:.0} ns, difference {diff:+.0} ns"
                )
            });
        format!(
            "    {}: ON {:.0} req/s, OFF {:.0} req/s, ON/OFF {:.3} (interquartile {:.3}..{:.3}){cpu}",
            self.framework,
            median(&self.on_rps()),
            median(&self.off_rps()),
            self.ratio(),
            lo,
            hi
        )
    }
}

/// Starts the ON and the OFF process, checks that each takes the intended path,
/// warms both up, then measures `plan.rounds` rounds, alternating which side goes
/// first (ON OFF, OFF ON, ...) so that a drift in machine load hits both alike.
pub(crate) fn run(
    framework: &str,
    binary: &Path,
    plan: &Plan,
    pinning: &Pinning,
    logs: &Path,
) -> Result<AbResult, String> {
    let on = Server::start(
        &format!("{framework}-on"),
        binary,
        &[("FLY_MACHINE_ID", MACHINE_ID)],
        pinning.server,
        logs,
    )?;
    let off = Server::start(
        &format!("{framework}-off"),
        binary,
        &[],
        pinning.server,
        logs,
    )?;
    check(framework, &on, &off)?;

    let cookie = format!("fly-machine-id={MACHINE_ID}");
    let load = |server: &Server, duration| Load {
        url: server.url(),
        headers: vec![("Cookie".to_owned(), cookie.clone())],
        duration,
        connections: plan.connections,
    };
    wrk::run(&load(&on, plan.warmup), pinning)?;
    wrk::run(&load(&off, plan.warmup), pinning)?;

    let mut result = AbResult {
        framework: framework.to_owned(),
        on: Vec::new(),
        off: Vec::new(),
        cpu: Vec::new(),
    };
    // One measurement, and the server's CPU time per request during it.
    let measure = |server: &Server| -> Result<(Measured, Option<f64>), String> {
        let before = server.cpu_ns();
        let m = wrk::run(&load(server, plan.duration), pinning)?;
        let cpu = match (before, server.cpu_ns()) {
            (Some(b), Some(a)) if m.requests > 0 => {
                Some(a.saturating_sub(b) as f64 / m.requests as f64)
            }
            _ => None,
        };
        Ok((m, cpu))
    };
    for round in 0..plan.rounds {
        let on_first = round % 2 == 0;
        let (first, second) = if on_first { (&on, &off) } else { (&off, &on) };
        let a = measure(first)?;
        let b = measure(second)?;
        let ((m_on, cpu_on), (m_off, cpu_off)) = if on_first { (a, b) } else { (b, a) };
        let ns = |cpu: Option<f64>| cpu.map_or_else(|| "?".to_owned(), |c| format!("{c:.0}"));
        eprintln!(
            "    round {:>2}/{} ({}): ON {:>7.0} req/s p50 {:>4.0} us cpu/req {:>5} ns | OFF {:>7.0} req/s p50 {:>4.0} us cpu/req {:>5} ns | ON/OFF {:.3}",
            round + 1,
            plan.rounds,
            if on_first { "ON first " } else { "OFF first" },
            m_on.rps,
            m_on.p50_us,
            ns(cpu_on),
            m_off.rps,
            m_off.p50_us,
            ns(cpu_off),
            m_on.rps / m_off.rps.max(f64::MIN_POSITIVE)
        );
        result.on.push(m_on);
        result.off.push(m_off);
        result.cpu.push((cpu_on, cpu_off));
    }
    Ok(result)
}

/// ON must be enabled (a first visit gets the cookie) and take the Stick path for
/// the benchmark request (200, served here, no `Set-Cookie`); OFF must touch
/// nothing.
fn check(framework: &str, on: &Server, off: &Server) -> Result<(), String> {
    let cookie = format!("fly-machine-id={MACHINE_ID}");
    let fail = |what: &str, detail: String| Err(format!("{framework}: {what}: {detail}"));
    let get = |server: &Server, headers: &[(&str, &str)]| {
        http_get(server.addr(), "/", headers).map_err(|e| format!("{framework}: GET /: {e}"))
    };

    let first = get(on, &[])?;
    if first.status != 200 || first.one("set-cookie").is_none() {
        return fail(
            "ON is not enabled (a first visit got no Set-Cookie)",
            format!("{} {:?}", first.status, first.headers),
        );
    }
    let stick = get(on, &[("Cookie", &cookie)])?;
    if stick.status != 200
        || stick.one("set-cookie").is_some()
        || !stick.text().contains(MACHINE_ID)
    {
        return fail(
            "ON does not take the Stick path for the benchmark request",
            format!("{} {:?} {:?}", stick.status, stick.headers, stick.text()),
        );
    }
    let plain = get(off, &[("Cookie", &cookie)])?;
    if plain.status != 200 || plain.one("set-cookie").is_some() {
        return fail(
            "OFF is not a plain 200",
            format!("{} {:?}", plain.status, plain.headers),
        );
    }
    let plain_first = get(off, &[])?;
    if plain_first.one("set-cookie").is_some() {
        return fail(
            "OFF sets a cookie (is FLY_MACHINE_ID leaking in?)",
            format!("{:?}", plain_first.headers),
        );
    }
    Ok(())
}
