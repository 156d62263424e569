//! The machine a measurement ran on, for the reports of `bench` and `soak`.

use std::process::Command;
use std::time::Duration;

/// What the reports say about the host and its load.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cpu_model: String,
    /// CPUs this process may use (`nproc`).
    pub(crate) nproc: usize,
    /// CPUs listed in /proc/cpuinfo.
    pub(crate) processors: usize,
    pub(crate) kernel: String,
    pub(crate) rustc: String,
    /// When the run began, UTC.
    pub(crate) date: String,
    /// The 1, 5 and 15 minute load averages at the start and the end.
    pub(crate) load_start: String,
    pub(crate) load_end: String,
}

impl Machine {
    /// Reads the host at the start of a run.
    pub(crate) fn collect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        Machine {
            cpu_model,
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            processors: cpuinfo
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned()),
            rustc: command("rustc", &["-V"]),
            date: command("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            load_start: loadavg(),
            load_end: String::new(),
        }
    }

    /// Records the load at the end of the run.
    pub(crate) fn finish(&mut self) {
        self.load_end = loadavg();
    }
}

/// The first line a command prints, or "unknown".
fn command(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `1 min 05 s`, `12.3 s`.
pub(crate) fn duration(d: Duration) -> String {
    if d.as_secs() >= 60 {
        format!("{} min {:02} s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(12_340)), "12.3 s");
        assert_eq!(duration(Duration::from_secs(65)), "1 min 05 s");
    }
}
