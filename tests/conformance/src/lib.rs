//! The conformance suite every sticky adapter passes.
//!
//! An adapter implements [`App`] (start the contract app of DESIGN.md with a
//! given [`Sticky`] on `127.0.0.1:0`) and calls [`run_in_process`] from a
//! test. Every scenario has a name and a one-line purpose; they run
//! directly against one Machine (exact statuses, headers, cookie attributes
//! and whether the handler ran) and through [flysim] with 3 Machines
//! (stickiness across many requests, WebSocket reconnects, a destroyed,
//! stopped or draining Machine, uploads over 1 MB), with adversarial inputs
//! throughout. Every cluster scenario runs twice: without and with Fly's
//! replay cache (flysim with the rules of `examples/fly.toml`: the pin
//! cookie on `/`, plus `x-tenant-id` on `/api/tenant`), and the
//! [`Kind::Cache`] scenarios check what the cache itself changes. `cargo
//! xtask conformance` runs the same scenarios against the examples' release
//! binaries as real processes ([`run_processes`]).
//!
//! The [`Backend::H2c`] run (`cargo xtask conformance --h2`) is the same
//! suite with flysim speaking h2c to the Machines (fly.toml's
//! `h2_backend = true`): every cluster and cache scenario (the client still
//! speaks HTTP/1.1 to flysim's front; WebSocket upgrades reach the Machines
//! over HTTP/1.1, flysim's named assumption), plus the `h2c-*` scenarios of
//! a client speaking h2c: `Cookie` split over two fields and a body without
//! `content-length` straight to one Machine, and `curl
//! --http2-prior-knowledge` through flysim. The direct HTTP/1.1 scenarios
//! are not repeated there: no proxy is involved, so they would test nothing
//! new.
//!
//! ```no_run
//! use std::{future::Future, io, pin::Pin};
//! use conformance::{App, Instance};
//! use sticky_core::Sticky;
//!
//! struct MyApp;
//!
//! impl App for MyApp {
//!     fn framework(&self) -> &'static str { "my-framework" }
//!     fn start(&self, sticky: Sticky) -> Pin<Box<dyn Future<Output = io::Result<Instance>> + Send>> {
//!         Box::pin(async move {
//!             let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!             let addr = listener.local_addr()?;
//!             let server = tokio::spawn(async move { /* serve the contract app with `sticky` */ let _ = (listener, sticky); });
//!             Ok(Instance::new(addr, move || server.abort()))
//!         })
//!     }
//! }
//!
//! # async fn test() {
//! conformance::run_in_process(MyApp).await.assert_passed();
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use flysim::Instance;
use sticky_core::{ConfigError, Env, KeySource, ReplayCache, Source, Sticky};

pub mod binary;
pub mod client;
mod deploy;
mod scenarios;

pub use scenarios::Kind;
pub use scenarios::metrics::{MachineMetrics, machine_metrics};

/// An adapter's way to start the contract app.
pub trait App: Send + Sync + 'static {
    /// The name shown in the matrix: `axum`, `actix-web`, `warp`, `rocket`, `poem`, `hyper`.
    fn framework(&self) -> &'static str;

    /// Starts the contract app (the example's app) with this engine on
    /// `127.0.0.1:0`. The returned [`Instance`]'s stop hook must stop it.
    fn start(&self, sticky: Sticky) -> Pin<Box<dyn Future<Output = io::Result<Instance>> + Send>>;
}

/// The request header that pins `GET /api/tenant` by key affinity.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The path prefix whose next segment pins `GET /rooms/<room>` by key affinity.
pub const ROOMS_PREFIX: &str = "/rooms/";

/// How long Fly's cache keeps a room's path entry (`fly-replay-cache-ttl-secs`).
pub const ROOM_CACHE_TTL: Duration = Duration::from_secs(60);

/// The paths every example serves without stickiness: the health check and
/// the Prometheus scrape (Fly's checks and its metrics scraper reach each
/// Machine directly; a replay would answer for another Machine).
pub const NEVER_STICKY: [&str; 2] = ["/health", "/metrics"];

/// `GET <path>` with a pin to another Machine: only an exclusion keeps it here.
pub struct PinnedElsewhere<'p>(pub &'p str);

impl sticky_core::RequestView for PinnedElsewhere<'_> {
    fn method(&self) -> &str {
        "GET"
    }
    fn path(&self) -> &str {
        self.0
    }
    fn query(&self) -> Option<&str> {
        None
    }
    fn header_values<'a>(
        &'a self,
        name: &str,
        each: &mut dyn FnMut(&'a [u8]) -> std::ops::ControlFlow<()>,
    ) {
        if name == "cookie" {
            let _ = each(b"fly-machine-id=90801679a10038");
        }
    }
}

/// Checks that `sticky` (an example's own engine, as its binary builds it)
/// leaves every path of [`NEVER_STICKY`] alone, even for a request pinned to
/// another Machine: `Err` names the first one it would not.
pub fn check_never_sticky(sticky: &Sticky) -> Result<(), String> {
    for path in NEVER_STICKY {
        let reason = sticky.decide(&PinnedElsewhere(path)).reason();
        if reason != sticky_core::Reason::PathExcluded {
            return Err(format!(
                "GET {path} pinned elsewhere: {reason}, not excluded"
            ));
        }
    }
    Ok(())
}

/// The engine every example builds: the defaults with `/health` and
/// `/metrics` excluded, plus key affinity on the `x-tenant-id` header and
/// on the room segment of `/rooms/<room>`, consulted first (the live set comes from
/// `STICKY_PEERS` or Fly's DNS, see `sticky-peers`); replays stay cacheable
/// for the `replay_cache` rule of `examples/fly.toml`, and a room's replays
/// name its path for Fly's cache ([`ReplayCache::Path`]; harmless where no
/// cache is configured).
pub fn contract_sticky(env: Env) -> Result<Sticky, ConfigError> {
    Sticky::builder()
        .exclude(NEVER_STICKY)
        .sources([Source::Key, Source::Cookie, Source::Query])
        .key_source(KeySource::Header(TENANT_HEADER.to_owned()))
        .key_source(KeySource::PathSegment(ROOMS_PREFIX.to_owned()))
        .replay_cache(ReplayCache::Path {
            ttl: ROOM_CACHE_TTL,
        })
        .build(env)
}

/// A scenario's name, purpose and kind, for listings and the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScenarioInfo {
    /// Short kebab-case name.
    pub name: &'static str,
    /// What it shows, in one line.
    pub purpose: &'static str,
    /// Direct, through flysim, or through flysim with its replay cache.
    pub kind: Kind,
    /// Whether this run had flysim's replay cache on (cluster scenarios run
    /// both ways).
    pub replay_cache: bool,
    /// How flysim reached the Machines in this run.
    pub backend: Backend,
}

/// How flysim's proxy reaches the Machines in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Backend {
    /// HTTP/1.1, Fly's default: every scenario but the `h2c-*` ones.
    #[default]
    Http1,
    /// h2c with prior knowledge (`h2_backend = true`): the cluster and
    /// cache scenarios, and the `h2c-*` scenarios; the app must speak h2c.
    H2c,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Http1 => "HTTP/1.1",
            Backend::H2c => "h2c",
        })
    }
}

impl ScenarioInfo {
    /// The name, with ` +cache` for the run with the replay cache on.
    pub fn label(&self) -> String {
        if self.replay_cache && self.kind == Kind::Cluster {
            format!("{} +cache", self.name)
        } else {
            self.name.to_owned()
        }
    }
}

/// Every scenario run, in run order: direct scenarios once, cluster
/// scenarios without and then with the replay cache, cache scenarios once.
pub fn scenarios() -> Vec<ScenarioInfo> {
    scenarios_over(Backend::Http1)
}

/// Every scenario run over `backend`, in run order (see [`Backend`]).
pub fn scenarios_over(backend: Backend) -> Vec<ScenarioInfo> {
    scenario_list(backend)
        .iter()
        .flat_map(|s| runs(s, backend))
        .collect()
}

/// The scenarios a run over `backend` draws from.
fn scenario_list(backend: Backend) -> Vec<scenarios::Scenario> {
    let mut all = scenarios::all();
    if backend == Backend::H2c {
        all.extend(scenarios::h2::all());
    }
    all
}

fn runs(s: &scenarios::Scenario, backend: Backend) -> Vec<ScenarioInfo> {
    let h2c_only = s.name.starts_with("h2c-");
    let caches: &[bool] = match (s.kind, backend) {
        // The h2c scenarios run once, over h2c only.
        _ if h2c_only => match backend {
            Backend::H2c => &[false],
            Backend::Http1 => &[],
        },
        (Kind::Direct, Backend::Http1) => &[false],
        // No proxy between the client and the Machine: nothing new over h2c.
        (Kind::Direct, Backend::H2c) => &[],
        (Kind::Cluster, _) => &[false, true],
        (Kind::Cache, _) => &[true],
    };
    caches
        .iter()
        .map(|&replay_cache| ScenarioInfo {
            name: s.name,
            purpose: s.purpose,
            kind: s.kind,
            replay_cache,
            backend,
        })
        .collect()
}

/// The outcome of one scenario.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The scenario.
    pub scenario: ScenarioInfo,
    /// `Err(what went wrong)` on failure.
    pub result: Result<(), String>,
    /// How long it took.
    pub elapsed: Duration,
}

/// The outcomes of a run for one framework.
#[derive(Clone, Debug)]
pub struct Report {
    /// The framework's name.
    pub framework: String,
    /// One outcome per scenario, in run order.
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// The failed outcomes.
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }

    /// Whether the run of `scenario` passed (`None` if it did not run).
    pub fn passed(&self, scenario: &ScenarioInfo) -> Option<bool> {
        self.outcomes
            .iter()
            .find(|o| o.scenario == *scenario)
            .map(|o| o.result.is_ok())
    }

    /// Panics with every failure, if any.
    #[track_caller]
    pub fn assert_passed(&self) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} of {} conformance scenarios failed for {}:\n{}",
            failures.len(),
            self.outcomes.len(),
            self.framework,
            failures
                .iter()
                .map(|o| format!(
                    "- {} ({}): {}",
                    o.scenario.label(),
                    o.scenario.purpose,
                    o.result.as_ref().err().map_or("", String::as_str)
                ))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backend = self
            .outcomes
            .first()
            .map_or(Backend::Http1, |o| o.scenario.backend);
        writeln!(
            f,
            "conformance: {} (to the Machines: {backend})",
            self.framework
        )?;
        for o in &self.outcomes {
            let mark = if o.result.is_ok() { "pass" } else { "FAIL" };
            writeln!(
                f,
                "  {mark}  {:<46} {:>6} ms",
                o.scenario.label(),
                o.elapsed.as_millis()
            )?;
            if let Err(e) = &o.result {
                writeln!(f, "        {e}")?;
            }
        }
        let failed = self.failures().len();
        writeln!(
            f,
            "{} passed, {} failed",
            self.outcomes.len() - failed,
            failed
        )
    }
}

/// Longest time one scenario may take.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs every scenario against in-process instances started by `app`.
/// Needs a multi-threaded tokio runtime.
pub async fn run_in_process<A: App>(app: A) -> Report {
    run_in_process_over(app, Backend::Http1).await
}

/// Runs the scenarios of `backend` (see [`Backend`]) against in-process
/// instances started by `app`. Needs a multi-threaded tokio runtime.
pub async fn run_in_process_over<A: App>(app: A, backend: Backend) -> Report {
    let framework = app.framework().to_owned();
    run(
        framework,
        Arc::new(deploy::InProcess(Arc::new(app))),
        backend,
    )
    .await
}

/// Runs every scenario against `binary` (an example app honouring the
/// contract) started as one child process per Machine.
pub async fn run_processes(framework: &str, binary: PathBuf) -> Report {
    run_processes_over(framework, binary, Backend::Http1).await
}

/// Runs the scenarios of `backend` (see [`Backend`]) against `binary`
/// started as one child process per Machine.
pub async fn run_processes_over(framework: &str, binary: PathBuf, backend: Backend) -> Report {
    run(
        framework.to_owned(),
        Arc::new(deploy::Process { binary }),
        backend,
    )
    .await
}

/// Whether `binary` (an example app) speaks h2c with prior knowledge on its
/// port, as an app behind `h2_backend` must: started once as a Machine, it
/// must answer `GET /health` over h2c. `Err` says what happened instead
/// (`cargo xtask conformance --h2` shows such a framework as "no h2c").
pub async fn binary_speaks_h2c(binary: PathBuf) -> Result<(), String> {
    use deploy::Deploy as _;
    let process = deploy::Process { binary };
    let (instance, _drain) = process
        .launch(Env::machine("148ed599c14189"), None)
        .await
        .map_err(|e| format!("the binary did not start: {e}"))?;
    let answered = scenarios::h2::answers_h2c(instance.addr()).await;
    drop(instance);
    answered
}

async fn run(framework: String, deploy: Arc<dyn deploy::Deploy>, backend: Backend) -> Report {
    let mut outcomes = Vec::new();
    for s in scenario_list(backend) {
        for scenario in runs(&s, backend) {
            let ctx = scenarios::Env0 {
                deploy: deploy.clone(),
                replay_cache: scenario.replay_cache,
                h2_backend: backend == Backend::H2c,
            };
            let started = Instant::now();
            let result = match tokio::time::timeout(SCENARIO_TIMEOUT, (s.run)(&ctx)).await {
                Ok(result) => result,
                Err(_) => Err(format!("timed out after {SCENARIO_TIMEOUT:?}")),
            };
            outcomes.push(Outcome {
                scenario,
                result,
                elapsed: started.elapsed(),
            });
        }
    }
    Report {
        framework,
        outcomes,
    }
}
