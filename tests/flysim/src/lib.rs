//! # flysim: Fly.io's HTTP proxy on one machine
//!
//! flysim runs N instances of an app as simulated Fly Machines (child processes or
//! in-process servers), listens on one front port and behaves like Fly's proxy in
//! front of them: it balances requests across started Machines, adds the request
//! headers Fly adds, honours the client routing headers, follows `fly-replay`
//! responses (header and JSON forms) with Fly's validation and limits, starts
//! stopped Machines on demand, and lets Machines be stopped (killed, or signalled
//! and given a kill timeout as Fly does), started, destroyed, added and sent
//! signals (a `SIGTERM` to make an app drain) while traffic flows (from code or
//! from a small admin HTTP interface).
//! It counts, per Machine, the responses served, replays sent and replays received,
//! and records every proxy decision worth checking as an [`Event`].
//!
//! It is a test tool: use it to check a sticky-session middleware (or any app that
//! answers with `fly-replay`) without a Fly account, from tests or from the
//! `flysim` binary (`flysim --machines 3 -- ./my-app`).
//!
//! ## Example
//! ```no_run
//! use std::net::SocketAddr;
//! use flysim::{Config, FlySim, Instance, Launch};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let launch = Launch::in_process(|env| async move {
//!     // Bind 127.0.0.1:0 and serve the app with `env.machine_id` etc.
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr: SocketAddr = listener.local_addr()?;
//!     let server = tokio::spawn(async move {
//!         // ... accept connections and serve HTTP/1.1 here ...
//!         let _ = (listener, env);
//!     });
//!     Ok(Instance::new(addr, move || server.abort()))
//! });
//! let sim = FlySim::start(Config::default().machines(2), launch).await?;
//! println!("send requests to {}", sim.url());
//! let first = sim.machine_ids()[0].clone();
//! sim.stop_machine(&first).await?;
//! println!("{}", sim.report());
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! ## What is simulated
//! - Balancing (round-robin or random) over started Machines; stopped Machines are
//!   started when a request is routed to them (after [`Config::cold_start`]), and one
//!   is started when none is running.
//! - Stopping like Fly ([`Config::kill_signal`], [`Config::kill_timeout`]): the
//!   Machine leaves the rotation, its process gets the signal and is killed if it
//!   outlives the timeout; [`FlySim::signal_machine`] signals a Machine that stays
//!   in the rotation (an app's drain), and a process that exits leaves its
//!   Machine stopped.
//! - Request headers: `Fly-Client-IP`, `Fly-Region`, `Fly-Request-Id`,
//!   `Fly-Forwarded-Port`, `X-Forwarded-For`, `X-Forwarded-Proto`,
//!   `X-Forwarded-Port`, `X-Forwarded-Ssl`, `Via`. Client-sent `fly-replay-src`,
//!   `fly-replay-failed` and `fly-preferred-instance-unavailable` pass through.
//! - `fly-force-instance-id` and `fly-prefer-instance-id`.
//! - `fly-replay` with a strict parser ([`replay`]), the JSON form with `transform`,
//!   `instance`/`prefer_instance`/`region`/`app`/`elsewhere`/`state`/`timeout`/
//!   `fallback`, `fly-replay-src`, `fly-replay-failed`,
//!   `fly-preferred-instance-unavailable`, the 1 MB replay body limit, the limit of
//!   10 replays (PA02), the slow failure of a replay to a destroyed Machine, and
//!   replayed WebSocket handshakes.
//!
//! ## What is not simulated
//! TLS (the front port speaks plain HTTP/1.1 and h2c; `X-Forwarded-Proto` says
//! `https` as behind Fly's edge), several regions or apps (a replay to another app
//! fails like PA04), replay caching (`cache` in the JSON form is validated and
//! ignored), `fly-prefer-region`/`fly-force-region`, health checks, autostop,
//! suspend, 6PN (internal DNS answers only the `vms` TXT records), HTTP/2 to Machines and WebSockets over HTTP/2.

use std::net::SocketAddr;
use std::time::Duration;

mod admin;
mod body;
mod dns;
mod events;
mod machine;
mod proxy;
pub mod replay;
mod sim;

pub use events::{Event, EventKind};
pub use machine::{
    ChildOutput, Instance, Launch, LaunchFn, LaunchFuture, MachineEnv, MachineInfo, MachineState,
    Signal,
};
pub use sim::FlySim;

/// The largest request body (in bytes) that can be replayed: 1 MB.
pub const REPLAY_BODY_LIMIT: usize = 1_000_000;

/// How many times one request may be replayed; one more `fly-replay` is error PA02.
pub const MAX_REPLAYS: usize = 10;

/// How the proxy picks a Machine for a request that names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Each started Machine in turn.
    #[default]
    RoundRobin,
    /// A started Machine at random.
    Random,
}

/// Simulator settings. Every field is public; the methods of the same names set
/// them in a builder style (`Config::default().machines(2).region("ams")`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of Machines created (and started) at start-up. Default 3.
    pub machines: usize,
    /// Address of the front (proxy) port. Default `127.0.0.1:0`.
    pub front_addr: SocketAddr,
    /// Address of the admin interface, `None` for none. Default `127.0.0.1:0`.
    pub admin_addr: Option<SocketAddr>,
    /// Address of the DNS server that answers `vms.<app>.internal` and
    /// `all.vms.<app>.internal` TXT like Fly's internal DNS (UDP), `None` for
    /// none. Machines get it as `FLY_DNS_SERVER`. Default `127.0.0.1:0`.
    pub dns_addr: Option<SocketAddr>,
    /// `FLY_APP_NAME`. Default `flysim-app`.
    pub app_name: String,
    /// `FLY_REGION` of every Machine and the edge region (`Fly-Region`). Default `iad`.
    pub region: String,
    /// Balancing strategy. Default round-robin.
    pub balance: Balance,
    /// `X-Forwarded-Proto` sent to Machines. Default `https` (as behind Fly's TLS edge).
    pub forwarded_proto: String,
    /// `Fly-Forwarded-Port`/`X-Forwarded-Port`; `None` means the front port the client
    /// connected to. Default `None`.
    pub forwarded_port: Option<u16>,
    /// How long an autostart takes before the Machine is launched. Default 0.
    pub cold_start: Duration,
    /// How long a strict replay (`instance=`) to a destroyed or unknown Machine takes
    /// to fail when no shorter `timeout` is given. Fly takes about 7.5 s. Default 7.5 s.
    pub dead_target_delay: Duration,
    /// How long a child process may take to accept connections. Default 10 s.
    pub ready_timeout: Duration,
    /// Largest replayable request body. Default [`REPLAY_BODY_LIMIT`] (1 MB).
    pub replay_body_limit: usize,
    /// Do not print proxy errors to stderr (they are still recorded as events and
    /// logged with `tracing`). Default `false`.
    pub quiet: bool,
    /// Print one line per request to stderr. Default `false`.
    pub log_requests: bool,
    /// What happens to child processes' output. Default prefixed.
    pub child_output: ChildOutput,
    /// How a child process is stopped when its Machine is stopped or destroyed
    /// (Fly's `kill_signal`): `None` kills it at once (SIGKILL, like
    /// `fly machine kill`); `Some(signal)` sends that signal and waits up to
    /// [`Config::kill_timeout`] for the process to exit before killing it, as
    /// Fly stops Machines (Fly's default is `SIGINT`). Either way the Machine
    /// leaves the proxy's rotation at once. Shutting flysim down always kills.
    /// In-process instances are stopped with their stop hook. Default `None`.
    pub kill_signal: Option<Signal>,
    /// How long a stopping child process may take to exit after
    /// [`Config::kill_signal`] (Fly's `kill_timeout`). Default 5 s.
    pub kill_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            machines: 3,
            front_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            dns_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            app_name: "flysim-app".to_owned(),
            region: "iad".to_owned(),
            balance: Balance::RoundRobin,
            forwarded_proto: "https".to_owned(),
            forwarded_port: None,
            cold_start: Duration::ZERO,
            dead_target_delay: Duration::from_millis(7500),
            ready_timeout: Duration::from_secs(10),
            replay_body_limit: REPLAY_BODY_LIMIT,
            quiet: false,
            log_requests: false,
            child_output: ChildOutput::Prefixed,
            kill_signal: None,
            kill_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Sets [`Config::machines`].
    pub fn machines(mut self, n: usize) -> Self {
        self.machines = n;
        self
    }
    /// Sets [`Config::front_addr`].
    pub fn front_addr(mut self, addr: SocketAddr) -> Self {
        self.front_addr = addr;
        self
    }
    /// Sets [`Config::admin_addr`].
    pub fn admin_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.admin_addr = addr;
        self
    }

    /// Sets [`Config::dns_addr`].
    pub fn dns_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.dns_addr = addr;
        self
    }
    /// Sets [`Config::app_name`].
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = name.into();
        self
    }
    /// Sets [`Config::region`].
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }
    /// Sets [`Config::balance`].
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }
    /// Sets [`Config::forwarded_proto`].
    pub fn forwarded_proto(mut self, proto: impl Into<String>) -> Self {
        self.forwarded_proto = proto.into();
        self
    }
    /// Sets [`Config::forwarded_port`].
    pub fn forwarded_port(mut self, port: Option<u16>) -> Self {
        self.forwarded_port = port;
        self
    }
    /// Sets [`Config::cold_start`].
    pub fn cold_start(mut self, d: Duration) -> Self {
        self.cold_start = d;
        self
    }
    /// Sets [`Config::dead_target_delay`].
    pub fn dead_target_delay(mut self, d: Duration) -> Self {
        self.dead_target_delay = d;
        self
    }
    /// Sets [`Config::ready_timeout`].
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }
    /// Sets [`Config::replay_body_limit`].
    pub fn replay_body_limit(mut self, limit: usize) -> Self {
        self.replay_body_limit = limit;
        self
    }
    /// Sets [`Config::quiet`].
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }
    /// Sets [`Config::log_requests`].
    pub fn log_requests(mut self, on: bool) -> Self {
        self.log_requests = on;
        self
    }
    /// Sets [`Config::child_output`].
    pub fn child_output(mut self, output: ChildOutput) -> Self {
        self.child_output = output;
        self
    }
    /// Sets [`Config::kill_signal`].
    pub fn kill_signal(mut self, signal: Option<Signal>) -> Self {
        self.kill_signal = signal;
        self
    }
    /// Sets [`Config::kill_timeout`].
    pub fn kill_timeout(mut self, d: Duration) -> Self {
        self.kill_timeout = d;
        self
    }
}
