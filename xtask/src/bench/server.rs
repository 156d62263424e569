//! Server processes, CPU pinning and a tiny blocking HTTP/1.1 client for
//! readiness and sanity checks.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conformance::client::{Request, Response};

/// Which CPU the servers and which the load generator run on.
#[derive(Debug, Clone)]
pub(crate) struct Pinning {
    /// CPU of the servers (and of flysim), `None` when not pinning.
    pub(crate) server: Option<usize>,
    /// CPU of wrk, `None` when not pinning.
    pub(crate) load: Option<usize>,
    /// The CPUs this process may use (`Cpus_allowed_list`), as found.
    pub(crate) allowed: String,
    /// Why pinning is off, when it is.
    pub(crate) off_because: Option<&'static str>,
}

impl Pinning {
    /// Pins servers to the first allowed CPU and wrk to the second, when asked,
    /// when `taskset` exists and at least 2 CPUs are allowed.
    pub(crate) fn detect(wanted: bool) -> Pinning {
        let allowed = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        let cpus = parse_cpu_list(&allowed);
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let off_because = if !wanted {
            Some("--no-pin")
        } else if !taskset {
            Some("taskset (util-linux) not found")
        } else if cpus.len() < 2 {
            Some("fewer than 2 CPUs")
        } else {
            None
        };
        let (server, load) = match off_because {
            None => (cpus.first().copied(), cpus.get(1).copied()),
            Some(_) => (None, None),
        };
        Pinning {
            server,
            load,
            allowed,
            off_because,
        }
    }

    /// One line for the report.
    pub(crate) fn describe(&self) -> String {
        match (self.server, self.load, self.off_because) {
            (Some(s), Some(l), _) => format!(
                "servers (and flysim) on CPU {s}, wrk on CPU {l} (taskset; allowed CPUs {}); \
                 so each server sees 1 CPU and runs its default worker count for 1 CPU",
                self.allowed
            ),
            (_, _, why) => format!(
                "not pinned ({}); servers run their default worker count for {} CPUs",
                why.unwrap_or("off"),
                std::thread::available_parallelism().map_or(1, usize::from)
            ),
        }
    }
}

/// `0-3,6,8-9` -> `[0, 1, 2, 3, 6, 8, 9]`.
pub(crate) fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(lo), Ok(hi)) = (lo.trim().parse::<usize>(), hi.trim().parse::<usize>()) {
            // Bounded: a CPU list never names more than a few thousand CPUs.
            cpus.extend((lo..=hi).take(4096));
        }
    }
    cpus
}

/// `program` run through `taskset -c <cpu>` when a CPU is given.
pub(crate) fn pinned_command(program: impl AsRef<std::ffi::OsStr>, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &cpu.to_string()]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Whether this process runs as root (from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            == Some("0")
    })
}

/// A free loopback port (free when asked; the server binds it right after).
pub(crate) fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// One example app process, killed when dropped (on error paths too).
pub(crate) struct Server {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Starts `binary` on a free port (pinned to `cpu`), with the `FLY_*`
    /// variables of this environment removed and `env` added, and waits until
    /// `GET /health` answers 200.
    pub(crate) fn start(
        name: &str,
        binary: &Path,
        env: &[(&str, &str)],
        cpu: Option<usize>,
        logs: &Path,
    ) -> Result<Server, String> {
        let port = free_port()?;
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = pinned_command(binary, cpu);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FLY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut server = Server {
            name: name.to_owned(),
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
        };
        server.wait_ready(Duration::from_secs(20))?;
        Ok(server)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// CPU time this process has used so far, nanoseconds: the sum over its
    /// threads of `/proc/<pid>/task/<tid>/schedstat` (user + kernel time on the
    /// CPU), or `utime + stime` from `/proc/<pid>/stat` (10 ms ticks) without it.
    pub(crate) fn cpu_ns(&self) -> Option<u64> {
        cpu_ns(self.child.id())
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited during start-up ({status}); its log ({}):\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                ));
            }
            if http_get(self.addr, "/health", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not answer GET /health on {} within {timeout:?}; its log:\n{}",
                    self.name,
                    self.addr,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// See [`Server::cpu_ns`].
fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).ok();
        if let Some(ns) = stat.and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok()) {
            total += ns;
            any = true;
        }
    }
    if any && total > 0 {
        return Some(total);
    }
    // Clock ticks are 100 Hz on Linux (USER_HZ).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10_000_000)
}

/// `GET path` over a fresh connection, with the suite's raw client.
pub(crate) fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?
        .block_on(conformance::client::send(addr, &request))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1"), vec![0, 1]);
        assert_eq!(parse_cpu_list("0,2-3, 6"), vec![0, 2, 3, 6]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("x"), Vec::<usize>::new());
    }
}
