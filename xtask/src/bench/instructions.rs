//! `cargo xtask bench --instructions`: what the middleware costs, counted in
//! instructions under callgrind. Unlike wall-clock time on a shared machine,
//! the count does not move with the load of other processes: the same binary
//! and the same requests give the same figure.
//!
//! - `decide` alone, per path: `sticky-core/benches/instructions.rs` runs
//!   `decide` `a` and then `b` times inside the one function callgrind
//!   collects (`--toggle-collect`); per call = (total(b) - total(a)) / (b - a).
//! - every example ON vs OFF: the release binary under callgrind, serving
//!   `GET /` with a 5-cookie header naming this Machine on one keep-alive
//!   connection, from a client outside valgrind. Two runs per side, serving
//!   [`FEW`] and [`MANY`] requests after the same warm-up; per request =
//!   (total(MANY) - total(FEW)) / (MANY - FEW), so start-up and the
//!   warm-up cancel out. Each total is dumped (`callgrind_control`) after
//!   the last answer: the shutdown, whose frees vary from run to run as
//!   threads race the exit, is left out. The client waits for the port by
//!   connecting (a refused connect costs the server nothing) and then uses
//!   that connection, so no readiness probe is counted.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use conformance::client::Request;

use super::MACHINE_ID;
use super::server::{free_port, is_root};
use crate::{cargo, root};

/// Requests of the short and the long run of each side.
const FEW: u64 = 500;
const MANY: u64 = 2_500;
/// Requests served before either count starts to differ (JIT-free, but
/// allocators, caches and lazy statics settle).
const WARMUP: u64 = 50;
/// Calls of `decide` in the short and the long run of a path.
const CALLS: (u64, u64) = (1_000, 11_000);

/// The examples' request: 5 cookies, about 250 bytes, ours last.
const COOKIES: &str = "_ga=GA1.1.1234567890.1700000000; theme=dark; session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV; lang=en-GB; fly-machine-id=";

/// Budget: what the middleware may add per request on the Stick path.
pub(crate) const ON_OFF_BUDGET: f64 = 600.0;

/// `decide` alone on one path.
#[derive(Debug, Clone)]
pub(crate) struct PathCount {
    pub(crate) path: String,
    pub(crate) what: String,
    pub(crate) per_call: f64,
}

/// One example, ON and OFF: instructions per request, and what of them
/// the allocator ran.
#[derive(Debug, Clone)]
pub(crate) struct AppCount {
    pub(crate) framework: String,
    pub(crate) on: f64,
    pub(crate) off: f64,
    pub(crate) on_alloc: Alloc,
    pub(crate) off_alloc: Alloc,
}

/// Calls into the allocator (`malloc`, `free`, ...) and the instructions
/// they ran, per request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Alloc {
    pub(crate) calls: f64,
    pub(crate) instructions: f64,
}

impl AppCount {
    /// ON - OFF as counted.
    pub(crate) fn raw_added(&self) -> f64 {
        self.on - self.off
    }

    /// What the middleware adds, the budget's figure: ON - OFF outside the
    /// allocator, plus any extra allocator calls at OFF's mean cost per
    /// call. The same `malloc` runs a different count of instructions in
    /// the two processes, whose heaps differ from start-up (ON builds the
    /// engine's tables): rocket's 52 allocations per request, the same on
    /// both sides, cost several hundred instructions more or less from one
    /// build to the next. An allocation the middleware makes is still
    /// charged, at what an allocation costs.
    pub(crate) fn added(&self) -> f64 {
        let per_call = if self.off_alloc.calls > 0.0 {
            self.off_alloc.instructions / self.off_alloc.calls
        } else {
            0.0
        };
        (self.on - self.on_alloc.instructions) - (self.off - self.off_alloc.instructions)
            + (self.on_alloc.calls - self.off_alloc.calls) * per_call
    }
}

/// Everything one `--instructions` run measured.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    pub(crate) valgrind: String,
    pub(crate) paths: Vec<PathCount>,
    pub(crate) apps: Vec<AppCount>,
}

/// valgrind's version, installing it from the distribution when missing
/// (as root, with apt-get).
pub(crate) fn ensure_valgrind() -> Result<String, String> {
    let version = || {
        Command::new("valgrind")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(v) = version() {
        return Ok(v);
    }
    if !is_root() {
        return Err(
            "valgrind is not installed and we are not root: install it first \
             (Debian/Ubuntu: sudo apt-get install -y valgrind)"
                .to_owned(),
        );
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("\n==> valgrind is missing: apt-get install -y valgrind");
    if !apt(&["install", "-y", "-q", "valgrind"]) {
        eprintln!("==> apt-get update, then again");
        if !apt(&["update", "-q"]) || !apt(&["install", "-y", "-q", "valgrind"]) {
            return Err(
                "`apt-get install -y valgrind` failed: install valgrind and run again".to_owned(),
            );
        }
    }
    version().ok_or_else(|| "valgrind was installed but does not run".to_owned())
}

/// `cargo xtask bench --instructions [FRAMEWORK..]`: the counts alone,
/// spliced into BENCHMARKS.md in place of the previous ones.
pub(crate) fn run_alone(wanted: &[&str], started: Instant) -> Result<(), String> {
    // Every example is built, whichever are counted: cargo unifies
    // dependency features over the packages built together, so a
    // framework's code (and its count) differs between a build of its
    // example alone and the full run's build of all six.
    let binaries: Vec<_> = crate::build_examples(&crate::FRAMEWORKS)?
        .into_iter()
        .filter(|(fw, _)| wanted.contains(&fw.as_str()))
        .collect();
    let logs = crate::target_dir().join("bench-logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let counts = run(&binaries, &logs)?;
    println!("\n{}", markdown(&counts));
    if wanted.len() < crate::FRAMEWORKS.len() {
        println!(
            "counted {} of the examples: BENCHMARKS.md left as it is (took {})",
            wanted.len(),
            crate::machine::duration(started.elapsed())
        );
        return Ok(());
    }
    let path = write_alone(&counts)?;
    println!(
        "wrote the instruction counts into {} (took {})",
        path.display(),
        crate::machine::duration(started.elapsed())
    );
    Ok(())
}

/// Counts `decide` per path and every example in `binaries` ON vs OFF.
pub(crate) fn run(binaries: &[(String, PathBuf)], logs: &Path) -> Result<Counts, String> {
    let valgrind = ensure_valgrind()?;
    let dir = logs.join("callgrind");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let paths = decide_paths(&dir, None)?;
    let mut apps = Vec::new();
    for (fw, binary) in binaries {
        eprintln!("\n==> instructions: {fw} ON vs OFF under callgrind");
        let (on, on_alloc) = per_request(fw, binary, true, &dir)?;
        let (off, off_alloc) = per_request(fw, binary, false, &dir)?;
        let app = AppCount {
            framework: fw.clone(),
            on,
            off,
            on_alloc,
            off_alloc,
        };
        eprintln!(
            "{fw}: ON {on:.0} / OFF {off:.0} instructions per request: {:+.0} \
             ({:+.0} outside the allocator; allocator calls {:.2} / {:.2})",
            app.raw_added(),
            app.added(),
            on_alloc.calls,
            off_alloc.calls
        );
        apps.push(app);
    }
    Ok(Counts {
        valgrind,
        paths,
        apps,
    })
}

/// Builds `sticky-core/benches/instructions.rs` (bench profile) and counts
/// every path it lists (or only those of `only`).
pub(crate) fn decide_paths(dir: &Path, only: Option<&[&str]>) -> Result<Vec<PathCount>, String> {
    eprintln!("\n==> cargo bench -p sticky-core --bench instructions --no-run");
    let out = cargo()
        .args([
            "bench",
            "-q",
            "-p",
            "sticky-core",
            "--bench",
            "instructions",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo bench --no-run: {e}"))?;
    if !out.status.success() {
        return Err("cargo bench -p sticky-core --bench instructions --no-run failed".to_owned());
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == "instructions")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or("cargo built no instructions bench executable")?;
    let list = Command::new(&exe)
        .arg("--list")
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let mut counts = Vec::new();
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some((path, what)) = line.split_once('\t') else {
            continue;
        };
        if only.is_some_and(|only| !only.contains(&path)) {
            continue;
        }
        let total = |calls: u64| -> Result<u64, String> {
            let file = dir.join(format!("decide-{}-{calls}.out", path.replace('/', "_")));
            let mut cmd = Command::new("valgrind");
            cmd.args(["--tool=callgrind", "--toggle-collect=*measured*"])
                .arg(format!("--callgrind-out-file={}", file.display()))
                .arg(&exe)
                .args([path, &calls.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let status = cmd
                .status()
                .map_err(|e| format!("valgrind {}: {e}", exe.display()))?;
            if !status.success() {
                return Err(format!(
                    "decide path {path}: the bench exited with {status}"
                ));
            }
            totals(&file)
        };
        let (a, b) = (total(CALLS.0)?, total(CALLS.1)?);
        let per_call = b.saturating_sub(a) as f64 / (CALLS.1 - CALLS.0) as f64;
        eprintln!("decide {path}: {per_call:.0} instructions per call");
        counts.push(PathCount {
            path: path.to_owned(),
            what: what.to_owned(),
            per_call,
        });
    }
    if counts.is_empty() {
        return Err(format!("{} --list printed no path", exe.display()));
    }
    Ok(counts)
}

/// The allocator's entry points: a call into one of them from outside
/// them is one allocator call, and its inclusive cost what it ran.
const ALLOCATOR: [&str; 8] = [
    "malloc",
    "free",
    "realloc",
    "calloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "__libc_memalign",
];

/// Calls into [`ALLOCATOR`] and their inclusive instructions, from a
/// callgrind output file: each `calls=` line names its callee (`cfn=`)
/// and is followed by the call's inclusive cost, its last number.
pub(crate) fn allocator_totals(text: &str) -> (u64, u64) {
    // Names are compressed: `(12) malloc` defines 12, a later `(12)` uses it.
    let mut ids: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    // Definitions first (a name is defined before its first use).
    for line in text.lines() {
        let field = line
            .strip_prefix("fn=")
            .or_else(|| line.strip_prefix("cfn="));
        if let Some(rest) = field.and_then(|f| f.trim().strip_prefix('('))
            && let Some((id, name)) = rest.split_once(')')
            && !name.trim().is_empty()
        {
            ids.insert(id, name.trim());
        }
    }
    let resolve = |field: &'_ str| -> String {
        let field = field.trim();
        if let Some(rest) = field.strip_prefix('(')
            && let Some((id, name)) = rest.split_once(')')
        {
            let name = name.trim();
            if name.is_empty() {
                return ids.get(id).map(|n| (*n).to_owned()).unwrap_or_default();
            }
            return name.to_owned();
        }
        field.to_owned()
    };
    let is_allocator = |n: &str| ALLOCATOR.contains(&n);
    let (mut calls, mut instructions) = (0u64, 0u64);
    let (mut caller, mut callee) = (String::new(), String::new());
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(f) = line.strip_prefix("fn=") {
            caller = resolve(f);
        } else if let Some(f) = line.strip_prefix("cfn=") {
            callee = resolve(f);
        } else if let Some(c) = line.strip_prefix("calls=") {
            let cost = lines
                .next()
                .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .unwrap_or(0);
            if is_allocator(&callee) && !is_allocator(&caller) {
                calls += c
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
                instructions += cost;
            }
        }
    }
    (calls, instructions)
}

/// The collected total of a callgrind output file (`summary:` or `totals:`).
fn totals(file: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("{}: no totals line", file.display()))
}

/// Instructions per request of `binary` (ON: this Machine's ID set).
fn per_request(fw: &str, binary: &Path, on: bool, dir: &Path) -> Result<(f64, Alloc), String> {
    let side = if on { "on" } else { "off" };
    let few = served_total(
        fw,
        binary,
        on,
        FEW,
        &dir.join(format!("{fw}-{side}-{FEW}.out")),
    )?;
    let many = served_total(
        fw,
        binary,
        on,
        MANY,
        &dir.join(format!("{fw}-{side}-{MANY}.out")),
    )?;
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / (MANY - FEW) as f64;
    let alloc = |file: &Path| -> Result<(u64, u64), String> {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(allocator_totals(&text))
    };
    let (few_calls, few_alloc) = alloc(&dump_of(&dir.join(format!("{fw}-{side}-{FEW}.out"))))?;
    let (many_calls, many_alloc) = alloc(&dump_of(&dir.join(format!("{fw}-{side}-{MANY}.out"))))?;
    Ok((
        per(few, many),
        Alloc {
            calls: per(few_calls, many_calls),
            instructions: per(few_alloc, many_alloc),
        },
    ))
}

/// A server under callgrind, killed when dropped (on error paths too).
struct Traced {
    child: Child,
}

impl Drop for Traced {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `binary` under callgrind, serves `WARMUP + requests` requests on
/// one connection, has callgrind dump its count, stops it with SIGINT and
/// returns the dumped total (start-up and the requests, not the shutdown).
fn served_total(
    fw: &str,
    binary: &Path,
    on: bool,
    requests: u64,
    out: &Path,
) -> Result<u64, String> {
    let port = free_port()?;
    let _ = std::fs::remove_file(dump_of(out));
    let log = out.with_extension("log");
    let log_file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err_file = log_file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let mut cmd = Command::new("valgrind");
    cmd.args(["--tool=callgrind", "--dump-instr=no"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(binary);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("FLY_") || key_text.starts_with("STICKY_") {
            cmd.env_remove(key);
        }
    }
    // One worker thread: with one connection there is nothing to share,
    // and idle workers waking, stealing and parking again (as often as the
    // host's load decides) would add a varying count to both sides.
    cmd.env("PORT", port.to_string())
        .env("DRAIN_SECONDS", "0")
        .env("RUST_LOG", "off")
        .env("TOKIO_WORKER_THREADS", "1")
        .env("ROCKET_WORKERS", "1")
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file);
    if on {
        // The live set of key affinity is fixed: no DNS thread.
        cmd.env("FLY_MACHINE_ID", MACHINE_ID)
            .env("STICKY_PEERS", MACHINE_ID);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start valgrind {}: {e}", binary.display()))?;
    let mut traced = Traced { child };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = connect(&mut traced, addr, Duration::from_secs(120))
        .map_err(|e| format!("{fw}: {e}; log {}", log.display()))?;
    let expected = on.then_some(MACHINE_ID);
    serve(stream, WARMUP + requests, expected).map_err(|e| format!("{fw}: {e}"))?;
    let pid = traced.child.id();
    // The count is dumped here, after the last answer: how a server tears
    // down (which threads finish dropping their state before the process
    // exits) varies from run to run, by a few hundred frees.
    let dumped = Command::new("callgrind_control")
        .args(["--dump=served", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    if !dumped.success() {
        return Err(format!("{fw}: callgrind_control --dump failed ({dumped})"));
    }
    let _ = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match traced.child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => return Err(format!("{fw} under callgrind did not exit on SIGINT")),
        }
    }
    totals(&dump_of(out))
}

/// The file of callgrind's first dump for `--callgrind-out-file=out`.
fn dump_of(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Connects to `addr` once the server listens (refused connects cost it
/// nothing), failing when the process exits first.
fn connect(traced: &mut Traced, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = traced.child.try_wait() {
            return Err(format!("exited during start-up ({status})"));
        }
        if let Ok(stream) = TcpStream::connect(addr) {
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            return Err(format!("did not listen on {addr} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `n` requests one after another on `stream`, checking each answer
/// (200; with `machine`, served here and no new cookie: the Stick path).
fn serve(mut stream: TcpStream, n: u64, machine: Option<&str>) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| format!("timeout: {e}"))?;
    let request = Request::get("/")
        .header("cookie", format!("{COOKIES}{MACHINE_ID}"))
        .keep_alive()
        .to_bytes();
    let mut buf = Vec::new();
    for i in 0..n {
        stream
            .write_all(&request)
            .map_err(|e| format!("request {i}: write: {e}"))?;
        let res = read_response(&mut stream, &mut buf).map_err(|e| format!("request {i}: {e}"))?;
        let here =
            machine.is_none_or(|m| res.body.contains(&format!("machine={m} ")) && !res.set_cookie);
        if res.status != 200 || !here {
            return Err(format!(
                "request {i}: not the Stick path: {} {:?}{}",
                res.status,
                res.body,
                if res.set_cookie {
                    " with Set-Cookie"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

/// What [`serve`] checks of a response.
struct Answer {
    status: u16,
    set_cookie: bool,
    body: String,
}

/// Reads one response (a `Content-Length` or chunked body) from `stream`;
/// `buf` keeps what was read beyond it.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Answer, String> {
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        fill(stream, buf)?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let (mut length, mut chunked, mut set_cookie) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "set-cookie" => set_cookie = true,
            _ => {}
        }
    }
    buf.drain(..head_end);
    let body = if chunked {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                fill(stream, buf)?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            while buf.len() < line_end + 2 + size + 2 {
                fill(stream, buf)?;
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break body;
            }
        }
    } else {
        let length = length.unwrap_or(0);
        while buf.len() < length {
            fill(stream, buf)?;
        }
        buf.drain(..length).collect()
    };
    Ok(Answer {
        status,
        set_cookie,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection".to_owned());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// The figures, as a Markdown section (no heading).
pub(crate) fn markdown(counts: &Counts) -> String {
    let mut md = String::new();
    let _ = write!(
        md,
        "Counted under callgrind ({}), which executes the same binary on the same \
         requests to the same count whatever else the machine runs: these figures \
         do not move with load, unlike the wall-clock ones above, so a change of a \
         few instructions is real. Run alone with `cargo xtask bench --instructions`.\n\n",
        counts.valgrind
    );
    if !counts.paths.is_empty() {
        let _ = write!(
            md,
            "`decide` alone, per path (`sticky-core/benches/instructions.rs`: \
             `decide` called {a} and {b} times inside the one function callgrind \
             collects; per call = (total({b}) - total({a})) / {d}; the request of \
             `decide.rs`, 5 cookies, ours last):\n\n\
             | path | what | instructions per call |\n|---|---|---:|\n",
            a = CALLS.0,
            b = CALLS.1,
            d = CALLS.1 - CALLS.0
        );
        for p in &counts.paths {
            let _ = writeln!(md, "| `{}` | {} | {:.0} |", p.path, p.what, p.per_call);
        }
        md.push('\n');
    }
    if !counts.apps.is_empty() {
        let _ = write!(
            md,
            "Each example (release) under callgrind, ON (`FLY_MACHINE_ID={MACHINE_ID}`, \
             `STICKY_PEERS` naming it) and OFF (no `FLY_MACHINE_ID`: the engine is \
             disabled), serving `GET /` with a 5-cookie `Cookie` header naming this \
             Machine, one request after another on one keep-alive connection from a \
             client outside valgrind (every answer checked: 200, served here, no \
             `Set-Cookie`). Each side runs twice, serving {w} + {FEW} and {w} + {MANY} \
             requests; per request = (total({MANY}) - total({FEW})) / {d}, so start-up \
             cancels out; each total is dumped (`callgrind_control --dump`) after the \
             last answer, so no shutdown is counted (which of a server's frees at exit \
             ran before the process ended varied between runs, by up to 0.3 allocator \
             calls per request). One worker thread (`TOKIO_WORKER_THREADS=1`, \
             `ROCKET_WORKERS=1`): idle workers waking and parking as the host's load \
             decides made a side vary by about 100 instructions per request between \
             runs; with one, by about 10.\n\n\
             The budget's figure leaves the allocator's own instructions out: both \
             sides make the same allocator calls per request (the Stick path allocates \
             nothing; the columns show the calls), but the same `malloc` runs more or \
             fewer instructions in two processes whose heaps differ from start-up (ON \
             builds the engine's tables), by several hundred per request for rocket's 109 \
             allocator calls, and by a different amount after any rebuild. Allocator calls \
             are the inclusive cost of every call into `malloc`, `free`, `realloc`, \
             `calloc` and the aligned variants; ON calls beyond OFF's are charged at \
             OFF's mean cost per call.\n\n\
             | framework | ON per request | OFF per request | ON - OFF | allocator calls per request ON / OFF | in the allocator ON / OFF | ON - OFF outside the allocator | budget |\n\
             |---|---:|---:|---:|---:|---:|---:|---|\n",
            w = WARMUP,
            d = MANY - FEW
        );
        for a in &counts.apps {
            let verdict = if a.added() <= ON_OFF_BUDGET {
                "**met**"
            } else {
                "**missed**"
            };
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:+.0} | {:.2} / {:.2} | {:.0} / {:.0} | {:+.0} ({:+.1}%) | {verdict} |",
                a.framework,
                a.on,
                a.off,
                a.raw_added(),
                a.on_alloc.calls,
                a.off_alloc.calls,
                a.on_alloc.instructions,
                a.off_alloc.instructions,
                a.added(),
                if a.off > 0.0 {
                    a.added() / a.off * 100.0
                } else {
                    0.0
                }
            );
        }
        md.push('\n');
    }
    md
}

/// The rows the budgets table gains.
pub(crate) fn budget_rows(counts: &Counts) -> String {
    let mut rows = String::new();
    for a in &counts.apps {
        let verdict = if a.added() <= ON_OFF_BUDGET {
            "**met**"
        } else {
            "**missed**"
        };
        let _ = writeln!(
            rows,
            "| {}: instructions the middleware adds per request (Stick path, callgrind): at most {ON_OFF_BUDGET:.0} | {:+.0} | {verdict} |",
            a.framework,
            a.added()
        );
    }
    rows
}

/// BENCHMARKS.md with the instruction section and budget rows of `counts`
/// in place of the old ones.
pub(crate) fn splice(md: &str, counts: &Counts) -> String {
    splice_section(
        md,
        "instructions",
        "Instructions per request",
        &markdown(counts),
        &budget_rows(counts),
    )
}

/// `md` with the section `name` (between its markers, added before
/// "## Method" under `heading` when missing) replaced by `body`, and `rows`
/// in the budgets table in place of the rows of the same budgets.
pub(crate) fn splice_section(
    md: &str,
    name: &str,
    heading: &str,
    body: &str,
    rows: &str,
) -> String {
    let begin = format!("<!-- {name}: written by cargo xtask bench -->");
    let end = format!("<!-- /{name} -->");
    let section = format!("{begin}\n{body}{end}\n");
    let out = match (md.find(&begin), md.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{section}{}",
                &md[..b],
                md[e + end.len()..].trim_start_matches('\n')
            )
        }
        _ => match md.find("## Method") {
            Some(m) => format!("{}## {heading}\n\n{section}\n{}", &md[..m], &md[m..]),
            None => format!("{md}\n## {heading}\n\n{section}"),
        },
    };
    // The budget rows: those of the same budgets (same first cell) out, the
    // new ones after the last row of the budgets table.
    let first_cell = |l: &str| l.split('|').nth(1).map(str::trim).map(str::to_owned);
    let replaced: Vec<String> = rows.lines().filter_map(first_cell).collect();
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !(l.starts_with('|') && first_cell(l).is_some_and(|c| replaced.contains(&c))))
        .collect();
    let mut spliced = Vec::with_capacity(lines.len() + replaced.len());
    let mut in_budgets = false;
    let mut done = false;
    for (i, line) in lines.iter().enumerate() {
        spliced.push((*line).to_owned());
        if line.starts_with("## Budgets") {
            in_budgets = true;
        }
        let next_is_row = lines.get(i + 1).is_some_and(|l| l.starts_with('|'));
        if in_budgets && !done && line.starts_with('|') && !next_is_row {
            spliced.extend(rows.lines().map(str::to_owned));
            done = true;
        }
    }
    let mut out = spliced.join("\n");
    out.push('\n');
    out
}

/// Writes the counts into BENCHMARKS.md (`--instructions` alone).
pub(crate) fn write_alone(counts: &Counts) -> Result<PathBuf, String> {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, splice(&old, counts)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Counts {
        Counts {
            valgrind: "valgrind-3.x".into(),
            paths: vec![PathCount {
                path: "stick".into(),
                what: "Stick".into(),
                per_call: 321.0,
            }],
            apps: vec![AppCount {
                framework: "axum".into(),
                on: 20_400.0,
                off: 20_000.0,
                on_alloc: Alloc::default(),
                off_alloc: Alloc::default(),
            }],
        }
    }

    #[test]
    fn splicing_replaces_the_section_and_the_budget_rows() {
        let md = "# B\n\n## Budgets\n\n| budget | measured | verdict |\n|---|---|---|\n| x | 1 | met |\n\n## Method\n\n- m\n";
        let once = splice(md, &counts());
        assert!(once.contains("| `stick` | Stick | 321 |"), "{once}");
        assert!(once.contains("| axum: instructions the middleware adds per request"));
        assert!(once.find("| x | 1 | met |").unwrap() < once.find("| axum: instr").unwrap());
        assert!(once.find("## Instructions").unwrap() < once.find("## Method").unwrap());
        let mut c = counts();
        c.apps[0].on = 20_100.0;
        let twice = splice(&once, &c);
        assert_eq!(twice.matches("| axum: instructions").count(), 1, "{twice}");
        assert_eq!(twice.matches("<!-- instructions:").count(), 1);
        assert!(twice.contains("| +100 |"));
        assert!(!twice.contains("+400"));
    }

    #[test]
    fn the_budget_leaves_the_allocators_layout_out_but_charges_its_calls() {
        let app = |on_alloc, off_alloc| AppCount {
            framework: "rocket".into(),
            on: 10_900.0,
            off: 10_000.0,
            on_alloc,
            off_alloc,
        };
        let same_calls = app(
            Alloc {
                calls: 50.0,
                instructions: 5_700.0,
            },
            Alloc {
                calls: 50.0,
                instructions: 5_000.0,
            },
        );
        assert_eq!(same_calls.raw_added(), 900.0);
        assert_eq!(same_calls.added(), 200.0);
        // Two more calls, at OFF's 100 instructions each.
        let more_calls = app(
            Alloc {
                calls: 52.0,
                instructions: 5_700.0,
            },
            Alloc {
                calls: 50.0,
                instructions: 5_000.0,
            },
        );
        assert_eq!(more_calls.added(), 400.0);
    }

    /// Calls into the allocator from outside it, with their inclusive
    /// cost; names compressed as callgrind writes them; a call from
    /// `realloc` into `malloc` is not counted twice.
    #[test]
    fn allocator_calls_are_read_from_call_lines() {
        let text = "events: Ir\n\
                    fn=(1) main\n\
                    3 10\n\
                    cfn=(2) malloc\n\
                    calls=3 0\n\
                    4 300\n\
                    cfn=(3) handler\n\
                    calls=1 0\n\
                    5 1000\n\
                    fn=(3)\n\
                    7 5\n\
                    cfn=(2)\n\
                    calls=2 0\n\
                    8 220\n\
                    cfn=(4) realloc\n\
                    calls=1 0\n\
                    9 90\n\
                    fn=(4)\n\
                    1 20\n\
                    cfn=(2)\n\
                    calls=1 0\n\
                    2 70\n\
                    totals: 1015\n";
        assert_eq!(allocator_totals(text), (6, 610));
    }

    #[test]
    fn totals_lines_are_read() {
        let dir = std::env::temp_dir().join(format!("xtask-cg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.out");
        std::fs::write(
            &f,
            "events: Ir\nfn=main\n1 5\nsummary: 12345\ntotals: 12345\n",
        )
        .unwrap();
        assert_eq!(totals(&f).unwrap(), 12345);
        std::fs::write(&f, "events: Ir\n").unwrap();
        assert!(totals(&f).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
