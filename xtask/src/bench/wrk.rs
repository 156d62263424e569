//! The load generator: wrk (installed from Debian's packages when missing),
//! one run and the parsing of its `--latency` report.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{Pinning, is_root, pinned_command};

/// Makes sure `wrk` is on `PATH` (installing Debian's package when we are root);
/// returns its version line.
pub(crate) fn ensure_installed() -> Result<String, String> {
    if let Some(version) = version() {
        return Ok(version);
    }
    if !is_root() {
        return Err(
            "wrk is not installed and we are not root: install it first \
             (Debian/Ubuntu: sudo apt-get install -y wrk; macOS: brew install wrk)"
                .to_owned(),
        );
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "wrk"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("\n==> wrk is missing: apt-get install -y wrk");
    if !install() {
        eprintln!("==> apt-get update, then again");
        let updated = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !updated || !install() {
            return Err("wrk is not installed and `apt-get install -y wrk` failed: \
                 install wrk (https://github.com/wg/wrk) and run again"
                .to_owned());
        }
    }
    version().ok_or_else(|| "wrk was installed but does not run".to_owned())
}

/// `wrk -v` prints its version and exits with status 1.
fn version() -> Option<String> {
    let out = Command::new("wrk").arg("-v").output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text.lines().find(|l| l.starts_with("wrk "))?;
    Some(
        line.split(" Copyright")
            .next()
            .unwrap_or(line)
            .trim()
            .to_owned(),
    )
}

/// One load run.
#[derive(Debug, Clone)]
pub(crate) struct Load {
    /// `http://127.0.0.1:<port>/`.
    pub(crate) url: String,
    /// Extra request headers.
    pub(crate) headers: Vec<(String, String)>,
    /// Test length (whole seconds).
    pub(crate) duration: Duration,
    /// Open connections (wrk uses 1 thread).
    pub(crate) connections: u32,
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measured {
    /// Requests per second.
    pub(crate) rps: f64,
    /// Median latency, microseconds.
    pub(crate) p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub(crate) p99_us: f64,
    /// Completed requests.
    pub(crate) requests: u64,
    /// Socket errors (connect, read, write, timeout).
    pub(crate) errors: u64,
    /// Responses with a status outside 2xx/3xx.
    pub(crate) non_2xx: u64,
}

/// A route or side measured round by round, with 1 connection (`single`:
/// nothing queues) and with the usual connection count (`runs`): the
/// medians over the rounds.
pub(crate) trait Rounds {
    fn runs(&self) -> &[Measured];
    fn single(&self) -> &[Measured];

    fn rps(&self) -> f64 {
        median_of(self.runs(), |m| m.rps)
    }
    fn p50(&self) -> f64 {
        median_of(self.runs(), |m| m.p50_us)
    }
    fn p99(&self) -> f64 {
        median_of(self.runs(), |m| m.p99_us)
    }
    fn single_p50(&self) -> f64 {
        median_of(self.single(), |m| m.p50_us)
    }
    fn single_p99(&self) -> f64 {
        median_of(self.single(), |m| m.p99_us)
    }
}

fn median_of(runs: &[Measured], pick: fn(&Measured) -> f64) -> f64 {
    super::median(&runs.iter().map(pick).collect::<Vec<_>>())
}

/// Runs wrk (pinned to the load CPU when pinning) and parses its report. Refuses
/// a run in which any response was not 2xx/3xx, or more than 1% of requests
/// failed at the socket level: it would not have measured the intended path.
pub(crate) fn run(load: &Load, pinning: &Pinning) -> Result<Measured, String> {
    if !load.url.starts_with("http://127.0.0.1:") {
        return Err(format!("refusing to load {}: loopback only", load.url));
    }
    let secs = load.duration.as_secs().max(1);
    let mut cmd = pinned_command("wrk", pinning.load);
    cmd.args([
        "-t1".to_owned(),
        format!("-c{}", load.connections),
        format!("-d{secs}s"),
        "--timeout".to_owned(),
        "5s".to_owned(),
        "--latency".to_owned(),
    ]);
    for (name, value) in &load.headers {
        cmd.args(["-H".to_owned(), format!("{name}: {value}")]);
    }
    cmd.arg(&load.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start wrk: {e}"))?;
    // wrk stops by itself after `secs`; this bounds it should it hang. Its report is
    // far smaller than a pipe buffer, so waiting before reading cannot deadlock.
    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("wrk against {} did not finish in time", load.url));
            }
            Err(e) => return Err(format!("waiting for wrk: {e}")),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("reading wrk's output: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "wrk failed ({}): {}{}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let measured = parse(&stdout).map_err(|e| format!("{e}; wrk said:\n{stdout}"))?;
    if measured.non_2xx > 0 {
        return Err(format!(
            "{} of {} responses from {} were not 2xx/3xx: the benchmark would not measure the intended path",
            measured.non_2xx, measured.requests, load.url
        ));
    }
    if measured.errors * 100 > measured.requests.max(1) {
        return Err(format!(
            "{} socket errors for {} requests to {}",
            measured.errors, measured.requests, load.url
        ));
    }
    Ok(measured)
}

/// Parses wrk's report (`--latency`).
pub(crate) fn parse(out: &str) -> Result<Measured, String> {
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut requests = None;
    let mut errors = 0;
    let mut non_2xx = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors = v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(u64::MAX);
        } else if line.contains(" requests in ") {
            requests = line.split_whitespace().next().and_then(|n| n.parse().ok());
        }
    }
    Ok(Measured {
        rps: rps.ok_or("no Requests/sec line")?,
        p50_us: p50.ok_or("no 50% latency line (was --latency given?)")?,
        p99_us: p99.ok_or("no 99% latency line")?,
        requests: requests.ok_or("no `N requests in` line")?,
        errors,
        non_2xx,
    })
}

/// `312.45us`, `1.20ms`, `2.00s`, `1.00m` -> microseconds.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.trim().parse().ok()?;
    let scale = match unit.trim() {
        "ns" => 0.001,
        "us" => 1.0,
        "ms" => 1_000.0,
        "s" => 1_000_000.0,
        "m" => 60_000_000.0,
        "h" => 3_600_000_000.0,
        _ => return None,
    };
    Some(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://127.0.0.1:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   412.45us  100.12us   5.00ms   90.00%
    Req/Sec    80.00k     1.00k   90.00k    70.00%
  Latency Distribution
     50%  398.00us
     75%  450.00us
     90%  520.00us
     99%    1.25ms
  400123 requests in 5.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  80024.60
Transfer/sec:     12.00MB
";

    #[test]
    fn parses_a_latency_report() {
        let m = parse(REPORT).unwrap();
        assert_eq!(m.rps, 80024.60);
        assert_eq!(m.p50_us, 398.0);
        assert_eq!(m.p99_us, 1250.0);
        assert_eq!(m.requests, 400_123);
        assert_eq!(m.errors, 3);
        assert_eq!(m.non_2xx, 0);
    }

    #[test]
    fn counts_bad_statuses_and_needs_the_distribution() {
        let bad = REPORT.replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 17\nRequests/sec:",
        );
        assert_eq!(parse(&bad).unwrap().non_2xx, 17);
        let no_latency = REPORT.replace("     50%  398.00us\n", "");
        assert!(parse(&no_latency).is_err());
    }

    #[test]
    fn duration_units() {
        assert_eq!(duration_us("1.50s"), Some(1_500_000.0));
        assert_eq!(duration_us("2.00m"), Some(120_000_000.0));
        assert_eq!(duration_us("750.00ns"), Some(0.75));
        assert_eq!(duration_us("12"), None);
    }
}
