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
//! - Balancing (round-robin or random) over started Machines that pass their
//!   health checks; stopped Machines are started when a request is routed to
//!   them (after [`Config::cold_start`]), and one is started when none is
//!   running.
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
//! - The replay cache (Fly's docs, "Replay Caching"): session-based rules
//!   ([`Config::replay_cache`], `--replay-cache`, or a fly.toml's
//!   `replay_cache` tables through [`FlyToml`] and `--fly-toml`) keyed by a
//!   cookie or a request header, and path-based entries named by the replay
//!   (`fly-replay-cache: /rooms/42/*` with `fly-replay-cache-ttl-secs`, or
//!   the JSON `cache` object). A hit is routed by the entry without reaching
//!   the first Machine and carries `fly-replay-cache-status: hit` and no
//!   `fly-replay-src`; an ordinary replay of a cacheable request carries
//!   `miss` (`bypass` after `fly-replay-cache-control: skip` where allowed);
//!   `fly-replay-cache: invalidate` removes an entry. Counters:
//!   [`FlySim::replay_cache_stats`], the admin `GET /replay-cache`, and one
//!   line of the exit table ([`FlySim::report`]) when caching is in play.
//! - HTTP/2 to the Machines ([`Config::h2_backend`], `--h2-backend`, or a
//!   fly.toml's `http_options.h2_backend = true`): h2c with prior knowledge,
//!   one multiplexed connection per Machine; an app that does not answer
//!   the HTTP/2 preface with HTTP/2 fails with PU01 (the message quotes what
//!   it answered). The front port accepts HTTP/1.1 and h2c with prior
//!   knowledge either way, so `Cookie` may arrive split over several fields
//!   and bodies without `content-length`.
//! - Deploys ([`FlySim::deploy`], [`FlySim::start_deploy`], admin
//!   `POST /deploy`) with Fly's four [`Strategy`]s: `rolling` (in place,
//!   same IDs, one at a time or 5 at a time from 6 Machines), `immediate`
//!   (in place, all at once), `canary` (one new Machine first, then
//!   rolling) and `bluegreen` (new IDs, then every old Machine destroyed);
//!   each step waits for the Machine's health check. A deploy runs in the
//!   background; [`FlySim::deploy_status`] and `GET /deploy` follow it, and
//!   every phase is an [`EventKind::Deploy`] event.
//! - Scaling ([`FlySim::scale`], `POST /scale?count=N`, like
//!   `fly scale count`).
//! - Autostop and autostart ([`Config::auto_stop`] `off`/`stop`/`suspend`,
//!   [`Config::auto_start`], [`Config::min_machines_running`],
//!   [`Config::idle_stop`], or fly.toml's `[http_service]`): idle Machines
//!   are stopped or suspended; a request routed to one starts it after
//!   [`Config::cold_start`], or resumes it after [`Config::resume`].
//! - Health checks ([`Config::health_check`], `--health-check-path`, or
//!   fly.toml's `[[http_service.checks]]`): a Machine failing its check is
//!   left out of the rotation.
//! - Network faults on a Machine for a while ([`FlySim::fault`], admin
//!   `POST /machines/<id>/fault`): connections reset, answers delayed, or
//!   requests accepted and never answered (a blackhole, met by the proxy's
//!   [`Config::response_timeout`]).
//!
//! ## Named assumptions (replay cache)
//! Where Fly's documentation is silent, flysim decides as follows. A
//! middleware must stay correct under any reasonable reading; these are the
//! ones flysim tests against.
//! 1. **Key.** A session entry is keyed by (hostname, rule, value): the rule
//!    (so its `path_prefix`) is part of the key; two rules naming the same
//!    cookie keep separate entries. A path entry is keyed by (hostname, pattern).
//! 2. **Hostname.** The request's `Host`, lowercased, without its port;
//!    caches are never shared between hostnames.
//! 3. **Value normalisation.** None: the cookie's value exactly as sent (the
//!    first cookie of that name across every `Cookie` field, surrounding
//!    whitespace trimmed, no unquoting, case kept); for a header rule the
//!    first field's value, trimmed. An empty or non-ASCII value keys nothing.
//! 4. **Prefix matching.** `/api`, `/api/` and `/api/*` are the same; it
//!    covers `/api` and `/api/...`, not `/apis`. The longest matching prefix
//!    wins (a rule naming the host wins a tie, then the first declared), and
//!    it decides alone: a request lacking its cookie or header is not
//!    cacheable, even if a shorter rule's cookie is present.
//! 5. **Per edge or global.** flysim has one edge, so one cache.
//! 6. **TTL.** Fixed from creation; a hit does not refresh it. The 10 s
//!    minimum binds rules and path replays alike.
//! 7. **What is remembered.** Only the replay answered by the first Machine
//!    a request reached (one step of lookup); a replay answered by a hit's
//!    target, or a later replay in a chain, is ordinary and changes nothing
//!    (unless it invalidates). When a replay names a path pattern and the
//!    request also has a session key, only the path entry is made. A request
//!    without the cookie is not cached.
//! 8. **Lookup order.** `fly-force-instance-id` and `fly-prefer-instance-id`
//!    win over the cache (no hit is counted); then the request's session
//!    entry; then the longest path entry covering it.
//! 9. **Cache-meant replays that cannot be cached.** A replay meant to be
//!    cached (the request carries a rule's key, or the replay names a
//!    pattern) with `state`, `timeout`, `fallback` or a transform, or with
//!    an invalid cache instruction (a pattern that does not cover the
//!    request, no TTL or one under 10 s, a bad header), is still replayed
//!    as given but not cached, and a loud [`EventKind::ReplayNotCached`]
//!    event (an error by [`Event::is_error`], printed unless quiet) says why.
//! 10. **Invalidation in one app.** `fly-replay-cache: invalidate` on a
//!     replay (any Machine's, not only a hit's target) removes the entry
//!     that routed this request (same key), or else the one that would have;
//!     the replay it carries is followed the ordinary way (`fly-replay-src`,
//!     `miss`) and is not remembered, so the next request of that key is
//!     balanced and the app decides again. On a response without `fly-replay`
//!     the cache headers are ignored.
//! 11. **Bypass.** Honoured only when the request's rule has `allow_bypass`
//!     or the entry was made by a replay with `fly-replay-cache-allow-bypass:
//!     yes` (JSON `allow_bypass`, top level or in `cache`); otherwise `skip`
//!     is ignored. A bypassing request is balanced, its replay is marked
//!     `bypass`, and that replay replaces the entry (a fresh decision).
//! 12. **Hit to a stopped target.** Autostarts it, as any replay does.
//! 13. **Hit to a destroyed target.** Behaves as the cached directive would:
//!     `prefer_instance` goes to any other Machine with
//!     `fly-preferred-instance-unavailable` (still marked `hit`, no
//!     `fly-replay-src`); strict `instance` fails slowly with an empty 502
//!     (no fallback: none can be cached). The entry is not dropped on
//!     failure (Fly documents no automatic invalidation).
//! 14. **Status header.** Set on the deliveries flysim routes by the cache
//!     or replays; a client-sent `fly-replay-cache-status` passes through
//!     untouched otherwise, like the other `fly-*` request headers.
//!
//! ## Named assumptions (HTTP/2)
//! Fly documents `h2_backend` but not these details; flysim does as follows.
//! 15. **Upgrades.** A WebSocket upgrade (an HTTP/1.1 `Upgrade` request)
//!     reaches an `h2_backend` Machine over HTTP/1.1, on a connection of its
//!     own (Fly keeps separate HTTP/1.1 and HTTP/2 pools; unconfirmed), so
//!     the app must still speak HTTP/1.1 on the same port for WebSockets.
//! 16. **`fly-replay` over h2c.** A replay answered over h2c is followed
//!     exactly as one answered over HTTP/1.1 (unconfirmed at Fly).
//! 17. **Cookie fields.** Over h2c, the client's `Cookie` fields reach the
//!     Machine as sent, not merged; from an HTTP/2 client to an HTTP/1.1
//!     Machine they are joined into one with `; ` (RFC 9113, 8.2.3).
//! 18. **Body length.** Over h2c a request body goes with the framing the
//!     client gave: its `content-length` when it sent one, none otherwise
//!     (flysim buffers it to replay it, but adds no length). To an HTTP/1.1
//!     Machine a buffered body is sent with a `content-length`.
//! 19. **Pseudo-headers and TE.** `:authority` is the client's `Host` (kept
//!     as a header too), `:scheme` is `http`; `te: trailers` from the
//!     client is passed on (the one TE value HTTP/2 allows, and gRPC's).
//! 20. **Not speaking h2c.** When an h2c exchange fails, the Machine's first
//!     bytes tell: anything but an HTTP/2 SETTINGS frame is PU01 (a 502 with
//!     `fly-error: PU01` quoting what it sent; no other Machine is tried).
//!     If it sent nothing (hyper's HTTP/1.1-only server closes on the
//!     preface, often while the request is still being written), a probe
//!     connection sends the preface again: closed without a byte, or not
//!     SETTINGS, is PU01; refused, or silent for 2 s, leaves the ordinary
//!     upstream error (the Machine may have been shutting down).
//! 21. **Replaying a body of unknown length.** A request body without
//!     `content-length` (HTTP/1.1 chunked, or HTTP/2, as every gRPC call)
//!     is buffered like any other and can be replayed within the 1 MB
//!     limit (Fly documents only the limit). An app must opt in to count on
//!     this (`sticky_core::Builder::replay_unknown_length`).
//!
//! ## Named assumptions (deploys, autostop, health checks, faults)
//! FLY-PROTOCOL.md section 9 and Fly's docs name the behaviours; where
//! they leave details open, flysim does as follows.
//! 22. **Canary.** The canary Machine (new ID, the new version) is booted
//!     and health-checked out of the rotation, and destroyed once it has
//!     passed (it only proves the new version boots); then the old
//!     Machines are updated in place as by `rolling`. The app keeps its
//!     Machine count and IDs, and no client is ever pinned to the canary.
//!     FLY-PROTOCOL.md says only "one new Machine first, then rolling".
//! 23. **Deploy health gate.** Each started or updated Machine must pass
//!     its health check ([`Config::health_check`], else `GET /health`,
//!     2 s timeout, polled every 50 ms) within
//!     [`Config::deploy_check_timeout`] (default 60 s) before the next
//!     batch; otherwise the deploy fails there (no rollback: the Machines
//!     already updated keep the new version, the rest keep the old one,
//!     the failing one is marked unhealthy).
//! 24. **Updating Machines.** A Machine a deploy is stopping, starting or
//!     checking is out of the rotation and is never autostarted by a
//!     request: `prefer_instance` and `fly-prefer-instance-id` go elsewhere
//!     (with `fly-preferred-instance-unavailable`); a strict `instance`
//!     replay or `fly-force-instance-id` fails while it is stopped, and
//!     reaches it once it is started again, before its check passes (the
//!     client asked for that one). A stopped Machine is updated without
//!     being started; a suspended one is stopped, then started again.
//! 25. **Blue-green cutover.** The new Machines stay out of the rotation
//!     until every one of them passes; then, in one step, they join and the
//!     old ones leave, and the old ones are destroyed (kill signal, kill
//!     timeout). If a new one fails, the new ones are destroyed and the old
//!     ones kept.
//! 26. **One at a time.** A deploy or a scale while another deploy or scale
//!     runs is refused (`409`).
//! 27. **Scale.** `count` is 1 to [`MAX_MACHINES`] (100); more Machines
//!     get new IDs and start after the cold start; fewer destroy stopped
//!     and suspended Machines first, then the most recently created ones.
//! 28. **Cold starts.** [`Config::cold_start`] applies to every start flysim
//!     makes on its own: autostarts, a deploy's starts, a scale's; the
//!     Machines of start-up and [`FlySim::start_machine`] start at once.
//! 29. **Resume.** A suspended Machine resumes after [`Config::resume`],
//!     by default a quarter of the cold start; its process was frozen
//!     (`SIGSTOP`/`SIGCONT`) so its memory (sessions, rooms) survives (an
//!     in-process instance keeps running, unrouted). The balancer resumes
//!     a suspended Machine before starting a stopped one.
//! 30. **Idle.** A Machine is idle while no request is in flight to it and
//!     no WebSocket tunnel to it is open; after [`Config::idle_stop`]
//!     (default 10 s) of that, autostop stops (kill signal) or suspends it,
//!     the longest idle first, never leaving fewer than
//!     `min_machines_running` started; all those chosen in one look are
//!     taken down at once. Idle Machines are looked for every quarter of the
//!     idle time (20 ms to 1 s). Draining and updating Machines are left
//!     alone. Health checks are not activity.
//! 31. **Without autostart.** With `auto_start_machines = false`, a stopped
//!     or suspended Machine is unavailable: a preferred one is replaced, a
//!     named one fails (PR02), and when none is started the request fails
//!     with PR04.
//! 32. **Health checks.** Every started Machine is checked each `interval`
//!     (fly.toml's, or 1 s) with `GET <path>` straight to its address; a
//!     2xx within `timeout` passes. A failure during `grace_period` after a
//!     start does not count. A failing Machine leaves the balancer's
//!     rotation and is not used for `prefer_instance` /
//!     `fly-prefer-instance-id`; a strict `instance` replay or
//!     `fly-force-instance-id` still reaches it (the client asked for that
//!     one). It returns once a check passes. Before its first check a
//!     Machine is routed to. Without a configured check nothing is checked
//!     periodically.
//! 33. **Response timeout.** The proxy waits [`Config::response_timeout`]
//!     (default 60 s; Fly documents none for a response head) for a
//!     Machine's answer, then answers a 502 with no `fly-error` code
//!     ("did not answer ... within"); nothing is retried. Before this,
//!     flysim waited forever for a Machine that never answered.
//! 34. **Reset.** A reset fault refuses every new delivery before the
//!     Machine sees it: a balanced request goes to another Machine (as
//!     after a refused connection), a preferred one falls back, a strict or
//!     forced one fails. Open WebSocket tunnels to the Machine are cut when
//!     the fault begins. Its health checks fail.
//! 35. **Delay.** Each delivery (and health check) waits the delay before
//!     it is sent; the response timeout still applies after it.
//! 36. **Blackhole.** A delivery sent while the fault lasts is accepted and
//!     never answered: it fails at the response timeout even if the fault
//!     ends first. Open tunnels are left alone (their bytes still flow).
//!     Health checks time out.
//! 37. **`[env]`.** A fly.toml's `[env]` variables reach every Machine
//!     flysim runs as a command (`flysim --fly-toml`,
//!     [`Launch::fly_toml_env`]), as Fly sets them in each Machine, with
//!     two differences: `PORT` and the `FLY_*` variables of
//!     [`MachineEnv::vars`] are flysim's whatever `[env]` says (the Machines
//!     share one host, so each gets its own loopback port), and in-process
//!     Machines get none (they share this process's environment). A value
//!     that is a number or a boolean is passed as its TOML text.
//!
//! fly.toml: flysim reads `replay_cache` rules, `kill_signal` (Fly's default
//! `SIGINT` when absent), `kill_timeout` (default 5 s), `internal_port`,
//! `http_options.h2_backend`, and `[http_service]`'s `auto_stop_machines`,
//! `auto_start_machines`, `min_machines_running` and first
//! `[[http_service.checks]]` (`path`, `interval`, `timeout`,
//! `grace_period`), and `[env]` (assumption 37);
//! Machines still get a free loopback `PORT` each (they share one host), and
//! `internal_port` is reported by the admin `GET /config`.
//!
//! ## The admin interface
//! [`Config::admin_addr`] (the binary's `--admin-port`) serves a small
//! HTTP/1.1 API on loopback, and a dashboard over it: open
//! `http://<admin address>/` in a browser to see every Machine's state
//! (started, draining, updating, suspended, stopped, destroyed), version,
//! health, fault and counters, the replay cache, the deploy under way and
//! the recent events, updated live, with buttons to stop, start, drain,
//! suspend, destroy, fault and add Machines, deploy and scale. It is one HTML page with no external assets and
//! no build step, and works for any app.
//!
//! | request | effect |
//! |---|---|
//! | `GET /` | the dashboard: one HTML page (no external assets) showing the Machines, their counters, the replay cache and the recent events, polled live, with buttons for the actions below |
//! | `GET /machines` | JSON list of Machines with their state (`started`, `stopped`, `suspended`, `destroyed`; `draining`, `updating`), `version`, `healthy`, `fault`, `in_flight` and counters |
//! | `GET /machines/<id>` | one Machine |
//! | `POST /machines` | add a Machine; answers `{"id": "<new id>"}` |
//! | `POST /machines/<id>/stop` | stop it (`409` if it is not started) |
//! | `POST /machines/<id>/start` | start it (`409` if it is started or destroyed) |
//! | `POST /machines/<id>/destroy` | destroy it (`409` if it is destroyed) |
//! | `POST /machines/<id>/drain` | send it `SIGTERM` and mark it `draining`; it stays in the rotation until its process exits (`409` if it is not started or already draining) |
//! | `POST /machines/<id>/signal?signal=SIGTERM` | send it a signal (default `SIGTERM`, which marks it `draining`); it stays in the rotation (`409` if it is not running) |
//! | `GET /events` | JSON list of recorded events, oldest first; `?last=N` for the newest N only |
//! | `GET /report` | the per-Machine table as text (and the replay cache's counters when caching is in play) |
//! | `GET /replay-cache` | the replay cache: `rules`, `stats` (`entries`, `created`, `hits`, `misses`, `bypasses`, `invalidations`, `not_cached`) and the live `entries` |
//! | `POST /machines/<id>/suspend` | suspend it, as autostop's `suspend` does (`409` if it is not started) |
//! | `POST /machines/<id>/fault?kind=reset\|delay\|blackhole&ms=M&for_ms=D` | give it a network fault for `D` ms (1 to 3,600,000), replacing any; `ms` is the delay, for `delay` only (`400` for a bad kind or number, `409` if destroyed) |
//! | `DELETE /machines/<id>/fault` | end its fault now; answers `{"cleared": true\|false}` |
//! | `POST /deploy?strategy=rolling\|immediate\|canary\|bluegreen` | begin a deploy in the background (default `rolling`); answers `202` with its `number` (`400` for an unknown strategy, `409` while a deploy or a scale runs) |
//! | `GET /deploy` | the running or last deploy: `number`, `strategy`, `state` (`running`, `succeeded`, `failed`), `phase`, `machines`, `done`, `error`, `elapsed_ms`; `{"state": "none"}` before any |
//! | `POST /scale?count=N` | add or destroy Machines until `N` (1 to 100) are not destroyed; answers `added` and `destroyed` when done (`400` for a bad count, `409` during a deploy or another scale) |
//! | `GET /config` | the settings read from fly.toml or the command line: `internal_port`, `h2_backend`, `kill_signal`, `kill_timeout_ms`, `replay_cache` rules, autostop (`auto_stop_machines`, `auto_start_machines`, `min_machines_running`, `idle_stop_ms`), `cold_start_ms`, `resume_ms`, `response_timeout_ms`, `health_check`, and the `front` address |
//!
//! Every refusal is a 4xx answer with a JSON body `{"error": "<message>"}`
//! (`404` for an unknown Machine or endpoint, `409` for an action its state
//! does not allow, `400` for a bad parameter) and changes nothing.
//!
//! ## What is not simulated
//! TLS (the front port speaks plain HTTP/1.1 and h2c; `X-Forwarded-Proto` says
//! `https` as behind Fly's edge), several regions or apps (a replay to another app
//! fails like PA04), `fly-prefer-region`/`fly-force-region`, a new image
//! (a deploy restarts the same app, so only Machine IDs, versions and
//! lifecycles change), TCP or script health checks (`[checks]`,
//! `[[services.tcp_checks]]`), autostop's exact timing, 6PN (internal DNS
//! answers only the `vms` TXT records), WebSockets over HTTP/2 (RFC 8441
//! extended CONNECT), h2c by `Upgrade: h2c`.

mod admin;
mod autostop;
mod balance;
mod body;
mod cache;
mod config;
mod deliver;
mod deploy;
mod dns;
mod errors;
mod events;
mod faults;
mod fleet;
mod flytoml;
mod headers;
mod health;
mod machine;
mod plan;
mod proxy;
mod regions;
pub mod replay;
mod sim;
mod upstream;

pub use autostop::AutoStop;
pub use balance::Balance;
pub use cache::{
    CacheKeyKind, MIN_TTL as REPLAY_CACHE_MIN_TTL, ManualClock, ReplayCacheRule, ReplayCacheStats,
    RuleError,
};
pub use config::{Config, DEFAULT_IDLE_STOP, DEFAULT_RESPONSE_TIMEOUT};
pub use deploy::{DeployState, DeployStatus, ScaleOutcome, Strategy};
pub use events::{Event, EventKind};
pub use faults::{FaultInfo, FaultKind, MAX_FAULT};
pub use flytoml::FlyToml;
pub use health::HealthCheck;
pub use machine::{
    ChildOutput, Instance, Launch, LaunchFn, LaunchFuture, MachineEnv, MachineInfo, MachineState,
    Signal,
};
pub use sim::FlySim;

/// The largest request body (in bytes) that can be replayed: 1 MB.
pub const REPLAY_BODY_LIMIT: usize = 1_000_000;

/// How many times one request may be replayed; one more `fly-replay` is error PA02.
pub const MAX_REPLAYS: usize = 10;

/// The most Machines flysim runs at once (start-up, `scale`): 100.
pub const MAX_MACHINES: usize = 100;
