//! Simulator settings, set in one builder style.

use std::net::SocketAddr;
use std::time::Duration;

use crate::autostop::AutoStop;
use crate::balance::Balance;
use crate::cache::{ManualClock, ReplayCacheRule};
use crate::flytoml::FlyToml;
use crate::health::HealthCheck;
use crate::machine::{ChildOutput, Signal};
use crate::{REPLAY_BODY_LIMIT, regions, replay};

/// Simulator settings, built with setters from [`Config::default`]
/// (`Config::default().machines(2).region("ams")`). Each setter's
/// documentation gives the default. The fields are private so that settings
/// can be added and regrouped without breaking callers.
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) machines: usize,
    pub(crate) front_addr: SocketAddr,
    pub(crate) admin_addr: Option<SocketAddr>,
    pub(crate) dns_addr: Option<SocketAddr>,
    pub(crate) app_name: String,
    pub(crate) region: String,
    pub(crate) balance: Balance,
    pub(crate) forwarded_proto: String,
    pub(crate) forwarded_port: Option<u16>,
    pub(crate) cold_start: Duration,
    pub(crate) dead_target_delay: Duration,
    pub(crate) ready_timeout: Duration,
    pub(crate) replay_body_limit: usize,
    pub(crate) quiet: bool,
    pub(crate) log_requests: bool,
    pub(crate) child_output: ChildOutput,
    pub(crate) kill_signal: Option<Signal>,
    pub(crate) kill_timeout: Duration,
    pub(crate) replay_cache: Vec<ReplayCacheRule>,
    pub(crate) cache_clock: Option<ManualClock>,
    pub(crate) internal_port: Option<u16>,
    pub(crate) h2_backend: bool,
    pub(crate) auto_stop: AutoStop,
    pub(crate) auto_start: bool,
    pub(crate) min_machines_running: usize,
    pub(crate) idle_stop: Duration,
    pub(crate) resume: Option<Duration>,
    pub(crate) health_check: Option<HealthCheck>,
    pub(crate) deploy_check_timeout: Duration,
    pub(crate) response_timeout: Duration,
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
            replay_cache: Vec::new(),
            cache_clock: None,
            internal_port: None,
            h2_backend: false,
            auto_stop: AutoStop::Off,
            auto_start: true,
            min_machines_running: 0,
            idle_stop: DEFAULT_IDLE_STOP,
            resume: None,
            health_check: None,
            deploy_check_timeout: Duration::from_secs(60),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

/// How long a Machine must be idle before autostop takes it down, unless
/// set ([`Config::idle_stop`]; a named assumption: Fly does not document it).
pub const DEFAULT_IDLE_STOP: Duration = Duration::from_secs(10);

/// How long the proxy waits for a Machine's response head, unless set
/// ([`Config::response_timeout`]; a named assumption).
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

impl Config {
    /// Number of Machines created (and started) at start-up. Default 3.
    pub fn machines(mut self, n: usize) -> Self {
        self.machines = n;
        self
    }

    /// Address of the front (proxy) port. Default `127.0.0.1:0`.
    pub fn front_addr(mut self, addr: SocketAddr) -> Self {
        self.front_addr = addr;
        self
    }

    /// Address of the admin interface, `None` for none. Default `127.0.0.1:0`.
    pub fn admin_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.admin_addr = addr;
        self
    }

    /// Address of the DNS server that answers `vms.<app>.internal` and
    /// `all.vms.<app>.internal` TXT like Fly's internal DNS (UDP), `None` for
    /// none. Machines get it as `FLY_DNS_SERVER`. Default `127.0.0.1:0`.
    pub fn dns_addr(mut self, addr: Option<SocketAddr>) -> Self {
        self.dns_addr = addr;
        self
    }

    /// `FLY_APP_NAME`. Default `flysim-app`.
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = name.into();
        self
    }

    /// `FLY_REGION` of every Machine and the edge region (`Fly-Region`). Default `iad`.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Balancing strategy. Default round-robin.
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// `X-Forwarded-Proto` sent to Machines. Default `https` (as behind Fly's TLS edge).
    pub fn forwarded_proto(mut self, proto: impl Into<String>) -> Self {
        self.forwarded_proto = proto.into();
        self
    }

    /// `Fly-Forwarded-Port`/`X-Forwarded-Port`; `None` means the front port the client
    /// connected to. Default `None`.
    pub fn forwarded_port(mut self, port: Option<u16>) -> Self {
        self.forwarded_port = port;
        self
    }

    /// How long a start takes before the Machine is launched: every start
    /// flysim makes on its own (autostart, a deploy's, a scale-up's); the
    /// Machines started at start-up and [`FlySim::start_machine`](crate::FlySim::start_machine)
    /// start at once. Default 0.
    pub fn cold_start(mut self, d: Duration) -> Self {
        self.cold_start = d;
        self
    }

    /// How long a strict replay (`instance=`) to a destroyed or unknown Machine takes
    /// to fail when no shorter `timeout` is given. Fly takes about 7.5 s. Default 7.5 s.
    pub fn dead_target_delay(mut self, d: Duration) -> Self {
        self.dead_target_delay = d;
        self
    }

    /// How long a child process may take to accept connections. Default 10 s.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = d;
        self
    }

    /// Largest replayable request body. Default [`REPLAY_BODY_LIMIT`] (1 MB).
    pub fn replay_body_limit(mut self, limit: usize) -> Self {
        self.replay_body_limit = limit;
        self
    }

    /// Do not print proxy errors to stderr (they are still recorded as events and
    /// logged with `tracing`). Default `false`.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Print one line per request to stderr. Default `false`.
    pub fn log_requests(mut self, on: bool) -> Self {
        self.log_requests = on;
        self
    }

    /// What happens to child processes' output. Default prefixed.
    pub fn child_output(mut self, output: ChildOutput) -> Self {
        self.child_output = output;
        self
    }

    /// How a child process is stopped when its Machine is stopped or destroyed
    /// (Fly's `kill_signal`): `None` kills it at once (SIGKILL, like
    /// `fly machine kill`); `Some(signal)` sends that signal and waits up to
    /// [`Config::kill_timeout`] for the process to exit before killing it, as
    /// Fly stops Machines (Fly's default is `SIGINT`). Either way the Machine
    /// leaves the proxy's rotation at once. Shutting flysim down always kills.
    /// In-process instances are stopped with their stop hook. Default `None`.
    pub fn kill_signal(mut self, signal: Option<Signal>) -> Self {
        self.kill_signal = signal;
        self
    }

    /// How long a stopping child process may take to exit after
    /// [`Config::kill_signal`] (Fly's `kill_timeout`). Default 5 s.
    pub fn kill_timeout(mut self, d: Duration) -> Self {
        self.kill_timeout = d;
        self
    }

    /// Adds a session-based replay cache rule (fly.toml's
    /// `[[http_service.http_options.replay_cache]]`); call it once per rule.
    /// When several rules match a request, the longest `path_prefix` wins.
    /// Path-based caching (`fly-replay-cache` on a replay) needs no rule.
    /// Default: no rules.
    pub fn replay_cache(mut self, rule: ReplayCacheRule) -> Self {
        self.replay_cache.push(rule);
        self
    }

    /// The clock replay cache entries expire by, for tests: a
    /// [`ManualClock`] moves only when advanced, so an entry's TTL can run
    /// out without sleeping. Default: the system's monotonic clock.
    pub fn replay_cache_clock(mut self, clock: ManualClock) -> Self {
        self.cache_clock = Some(clock);
        self
    }

    /// fly.toml's `internal_port`, for information: Machines still get a
    /// free loopback port each as `PORT` (several Machines share one host
    /// here, so they cannot all listen on one port); the admin interface
    /// (`GET /config`) and the binary's start-up lines show it. Default `None`.
    pub fn internal_port(mut self, port: Option<u16>) -> Self {
        self.internal_port = port;
        self
    }

    /// Speak h2c (HTTP/2 over cleartext, prior knowledge) to the Machines,
    /// as Fly does with fly.toml's `http_options.h2_backend = true` (needed
    /// for gRPC); an app that does not speak h2c then fails with PU01. The
    /// front port accepts HTTP/1.1 and h2c either way. WebSocket upgrades
    /// still reach the Machines over HTTP/1.1 (a named assumption).
    /// Default `false` (HTTP/1.1 to the Machines, Fly's default).
    pub fn h2_backend(mut self, on: bool) -> Self {
        self.h2_backend = on;
        self
    }

    /// Whether [`Config::h2_backend`] is on.
    pub fn h2_backend_on(&self) -> bool {
        self.h2_backend
    }

    /// The [`Config::auto_stop`] mode.
    pub fn auto_stop_mode(&self) -> AutoStop {
        self.auto_stop
    }

    /// Whether [`Config::auto_start`] is on.
    pub fn auto_start_on(&self) -> bool {
        self.auto_start
    }

    /// [`Config::min_machines_running`].
    pub fn min_running(&self) -> usize {
        self.min_machines_running
    }

    /// [`Config::idle_stop`].
    pub fn idle_stop_time(&self) -> Duration {
        self.idle_stop
    }

    /// [`Config::cold_start`].
    pub fn cold_start_time(&self) -> Duration {
        self.cold_start
    }

    /// The resume delay in effect ([`Config::resume`]).
    pub fn resume_time(&self) -> Duration {
        self.resume_delay()
    }

    /// [`Config::response_timeout`].
    pub fn response_timeout_time(&self) -> Duration {
        self.response_timeout
    }

    /// [`Config::health_check`].
    pub fn health_check_settings(&self) -> Option<&HealthCheck> {
        self.health_check.as_ref()
    }

    /// fly.toml's `auto_stop_machines`: whether idle Machines are stopped
    /// (or suspended) by the proxy. Default [`AutoStop::Off`].
    pub fn auto_stop(mut self, mode: AutoStop) -> Self {
        self.auto_stop = mode;
        self
    }

    /// fly.toml's `auto_start_machines`: whether a request routed to a
    /// stopped or suspended Machine starts it. Without it, such a Machine is
    /// unavailable (a preferred one is replaced, a strict one fails) and no
    /// Machine is started when none runs. Default `true`.
    pub fn auto_start(mut self, on: bool) -> Self {
        self.auto_start = on;
        self
    }

    /// fly.toml's `min_machines_running`: autostop never leaves fewer
    /// Machines started. Default 0.
    pub fn min_machines_running(mut self, n: usize) -> Self {
        self.min_machines_running = n;
        self
    }

    /// How long a started Machine must have had no request in flight and no
    /// open WebSocket before autostop takes it down (Fly does not document
    /// its own; a named assumption). Default [`DEFAULT_IDLE_STOP`] (10 s).
    pub fn idle_stop(mut self, d: Duration) -> Self {
        self.idle_stop = d;
        self
    }

    /// How long a suspended Machine takes to resume. Default: a quarter of
    /// [`Config::cold_start`] (a named assumption: Fly says only "faster").
    pub fn resume(mut self, d: Duration) -> Self {
        self.resume = Some(d);
        self
    }

    /// The resume delay in effect (see [`Config::resume`]).
    pub(crate) fn resume_delay(&self) -> Duration {
        self.resume.unwrap_or(self.cold_start / 4)
    }

    /// Periodic health checks (fly.toml's `[[http_service.checks]]`): a
    /// started Machine failing its check is left out of the rotation until
    /// it passes again. `None` checks nothing periodically (deploys still
    /// check each new Machine, with [`HealthCheck::default`] when `None`).
    /// Default `None`.
    pub fn health_check(mut self, check: Option<HealthCheck>) -> Self {
        self.health_check = check;
        self
    }

    /// The check deploys use: [`Config::health_check`] or the default one.
    pub(crate) fn deploy_check(&self) -> HealthCheck {
        self.health_check.clone().unwrap_or_default()
    }

    /// How long a deploy waits for one new or updated Machine to pass its
    /// health check before the deploy fails. Default 60 s.
    pub fn deploy_check_timeout(mut self, d: Duration) -> Self {
        self.deploy_check_timeout = d;
        self
    }

    /// How long the proxy waits for a Machine to answer a request (its
    /// response head) before it gives up with a 502; a Machine that accepts
    /// and never answers (a blackhole fault) meets this. Default
    /// [`DEFAULT_RESPONSE_TIMEOUT`] (60 s).
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.response_timeout = d;
        self
    }

    /// Applies what a fly.toml says ([`FlyToml`]): its replay cache rules are
    /// added, and its `kill_signal`, `kill_timeout` and `internal_port`
    /// replace the current settings (Fly's defaults, `SIGINT` and 5 s,
    /// when the file leaves them out); `h2_backend = true` turns
    /// [`Config::h2_backend`] on; `auto_stop_machines`,
    /// `auto_start_machines`, `min_machines_running` and the first
    /// `[[http_service.checks]]` replace the current settings when given.
    pub fn fly_toml(mut self, file: &FlyToml) -> Self {
        self.replay_cache.extend(file.replay_cache.iter().cloned());
        self.kill_signal = Some(file.kill_signal.unwrap_or(Signal::Int));
        self.kill_timeout = file.kill_timeout.unwrap_or(Duration::from_secs(5));
        if file.internal_port.is_some() {
            self.internal_port = file.internal_port;
        }
        if file.h2_backend {
            self.h2_backend = true;
        }
        if let Some(mode) = file.auto_stop {
            self.auto_stop = mode;
        }
        if let Some(on) = file.auto_start {
            self.auto_start = on;
        }
        if let Some(n) = file.min_machines_running {
            self.min_machines_running = n;
        }
        if file.health_check.is_some() {
            self.health_check = file.health_check.clone();
        }
        self
    }

    /// Refuses settings that would produce invalid headers or environments.
    pub(crate) fn validate(&self) -> std::io::Result<()> {
        let invalid = |msg: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
        if !regions::is_code(&self.region) {
            return invalid(format!(
                "region {:?} is not a 3-letter lowercase region code",
                self.region
            ));
        }
        if !replay::is_app_name(&self.app_name) {
            return invalid(format!(
                "app name {:?} is not a valid Fly app name (lowercase letters, digits, dashes)",
                self.app_name
            ));
        }
        if self.forwarded_proto.is_empty()
            || !self
                .forwarded_proto
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return invalid(format!(
                "forwarded_proto {:?} is not a URI scheme",
                self.forwarded_proto
            ));
        }
        if self.machines > crate::MAX_MACHINES {
            return invalid(format!(
                "{} Machines is more than flysim runs ({})",
                self.machines,
                crate::MAX_MACHINES
            ));
        }
        if let Some(check) = &self.health_check {
            check.validate().or_else(invalid)?;
        }
        Ok(())
    }
}
