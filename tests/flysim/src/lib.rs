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

mod admin;
mod balance;
mod body;
mod config;
mod deliver;
mod dns;
mod errors;
mod events;
mod fleet;
mod headers;
mod machine;
mod plan;
mod proxy;
mod regions;
pub mod replay;
mod sim;
mod upstream;

pub use balance::Balance;
pub use config::Config;
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
