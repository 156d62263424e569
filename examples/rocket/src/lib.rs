//! The sticky demo app on Rocket: the shared app contract that every
//! `examples/<framework>` serves, with the [`sticky_rocket::StickyFairing`] fairing.
//!
//! Its port speaks HTTP/1.1 and h2c with prior knowledge (Rocket's `http2`
//! feature, on by default in Rocket and turned on here: it serves with
//! hyper-util's auto builder, TLS or not), so it runs behind Fly's
//! `h2_backend = true` too; WebSocket upgrades stay HTTP/1.1.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | `machine=<id> handled=<n>` (counts itself first) |
//! | `GET /health` | `ok` (excluded from stickiness, not counted) |
//! | `GET /metrics` | the engine's decision counters in Prometheus text (excluded from stickiness, not counted) |
//! | `POST /upload` | reads the whole body (up to [`UPLOAD_LIMIT`]), `machine=<id> bytes=<len>` |
//! | `GET /ws` | WebSocket echo: each text message comes back as `<id>:<message>` |
//! | `GET /api/tenant` | `machine=<id> tenant=<value>`, pinned by key affinity on `x-tenant-id` (live set: `STICKY_PEERS` or Fly's DNS, see `sticky-peers`) |
//! | `GET /rooms/<room>` | `machine=<id> room=<room>`, pinned by key affinity on the path segment, its replays cacheable by path |
//! | `GET /app` | the browser page shared by every example (`examples/app.html`), sticky like `/` |
//!
//! `<id>` is the Machine ID (`local` when not on Fly) and `<n>` the number of
//! handler runs on this process (every route but `/health` and `/metrics` counts).
//!
//! The binary serves it on `0.0.0.0:$PORT`; tests start it with [`start`] on
//! any address with any engine.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rocket::config::{Config, LogLevel, Shutdown as ShutdownConfig};
use rocket::data::{ByteUnit, Data, Limits};
use rocket::fairing::AdHoc;
use rocket::futures::{SinkExt, StreamExt};
use rocket::http::{ContentType, Status};
use rocket::request::{FromRequest, Outcome, Request};
use rocket::tokio::{self, sync::oneshot, task::JoinHandle};
use rocket::{Build, Ignite, Rocket, Shutdown, State, get, post, routes};
use rocket_ws::{Channel, Message, WebSocket};
use sticky_rocket::sticky_core::{
    ConfigError, Env, KeySource, MetricsSnapshot, ReplayCache, Source, Sticky,
};

/// The largest upload `POST /upload` accepts (Rocket's `bytes` data limit is
/// raised to this; its default is 8 MiB).
pub const UPLOAD_LIMIT: ByteUnit = ByteUnit::Mebibyte(32);

/// The engine of the app contract: defaults, except that `/health` and
/// `/metrics` are never sticky and tenants (`x-tenant-id`) are pinned by key affinity
/// before the cookie, as are rooms (`/rooms/<room>`); replays stay cacheable
/// for the `replay_cache` rule of `examples/fly.toml`, and a room's replays
/// name its path for Fly's cache (`fly-replay-cache: /rooms/<room>/*`, 60 s).
pub fn engine(env: Env) -> Result<Sticky, ConfigError> {
    Sticky::builder()
        .exclude(["/health", "/metrics"])
        .sources([Source::Key, Source::Cookie, Source::Query])
        .key_source(KeySource::Header("x-tenant-id".into()))
        .key_source(KeySource::PathSegment("/rooms/".into()))
        .replay_cache(ReplayCache::Path {
            ttl: Duration::from_secs(60),
        })
        .build(env)
}

/// The Rocket configuration the app runs with on `address:port`: raised data
/// limits, and no signal handling of Rocket's own (see [`serve`]).
pub fn config(address: IpAddr, port: u16) -> Config {
    let mut shutdown = ShutdownConfig {
        ctrlc: false,
        ..ShutdownConfig::default()
    };
    #[cfg(unix)]
    shutdown.signals.clear();
    Config {
        address,
        port,
        limits: Limits::default().limit("bytes", UPLOAD_LIMIT),
        shutdown,
        ..Config::default()
    }
}

/// A quiet configuration for tests: `127.0.0.1`, a free port chosen by the
/// OS, no logging, a short shutdown grace period.
pub fn test_config() -> Config {
    let mut config = config(IpAddr::from([127, 0, 0, 1]), 0);
    config.log_level = LogLevel::Off;
    config.cli_colors = false;
    config.shutdown.grace = 1;
    config.shutdown.mercy = 1;
    config
}

/// Per-process state shared by the handlers.
struct App {
    id: String,
    handled: AtomicU64,
    /// For `GET /metrics`: a clone shares the fairing's counters.
    sticky: Sticky,
}

impl App {
    /// Counts one handler run and returns the new count.
    fn count(&self) -> u64 {
        self.handled.fetch_add(1, Ordering::SeqCst) + 1
    }
}

#[get("/")]
fn index(app: &State<App>) -> String {
    let n = app.count();
    index_text(&app.id, n)
}

/// The browser page of `GET /app`, the same in every example.
const APP_PAGE: &str = include_str!("../../app.html");

#[get("/app")]
fn page(app: &State<App>) -> rocket::response::content::RawHtml<String> {
    let n = app.count();
    rocket::response::content::RawHtml(
        APP_PAGE
            .replace("{{machine}}", &app.id)
            .replace("{{handled}}", &n.to_string()),
    )
}

/// The `x-tenant-id` header, empty when absent.
struct Tenant(String);

#[rocket::async_trait]
impl<'r> FromRequest<'r> for Tenant {
    type Error = std::convert::Infallible;
    async fn from_request(req: &'r Request<'_>) -> Outcome<Self, Self::Error> {
        Outcome::Success(Tenant(
            req.headers()
                .get_one("x-tenant-id")
                .unwrap_or_default()
                .to_owned(),
        ))
    }
}

#[get("/rooms/<room>")]
fn room(app: &State<App>, room: &str) -> String {
    app.count();
    format!("machine={} room={room}", app.id)
}

#[get("/api/tenant")]
fn tenant(app: &State<App>, tenant: Tenant) -> String {
    app.count();
    format!("machine={} tenant={}", app.id, tenant.0)
}

#[get("/health")]
fn health() -> &'static str {
    "ok"
}

#[get("/metrics")]
fn metrics(app: &State<App>) -> (ContentType, String) {
    let content_type =
        ContentType::parse_flexible(MetricsSnapshot::CONTENT_TYPE).unwrap_or(ContentType::Plain);
    (content_type, app.sticky.metrics().to_string())
}

#[post("/upload", data = "<data>")]
async fn upload(app: &State<App>, limits: &Limits, data: Data<'_>) -> Result<String, Status> {
    app.count();
    let limit = limits.get("bytes").unwrap_or(UPLOAD_LIMIT);
    let read = data
        .open(limit)
        .stream_to(tokio::io::sink())
        .await
        .map_err(|_| Status::BadRequest)?;
    if !read.complete {
        return Err(Status::PayloadTooLarge);
    }
    Ok(format!("machine={} bytes={}", app.id, read.written))
}

#[get("/ws")]
fn ws(app: &State<App>, ws: WebSocket) -> Channel<'static> {
    app.count();
    let id = app.id.clone();
    ws.channel(move |mut stream| {
        Box::pin(async move {
            while let Some(message) = stream.next().await {
                match message? {
                    Message::Text(text) => {
                        stream.send(Message::Text(format!("{id}:{text}"))).await?
                    }
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            Ok(())
        })
    })
}

/// The app with the sticky fairing, on `config`, deciding with `sticky`.
pub fn app(sticky: Sticky, config: Config) -> Rocket<Build> {
    let state = App {
        id: sticky.machine_id().unwrap_or("local").to_owned(),
        handled: AtomicU64::new(0),
        sticky: sticky.clone(),
    };
    rocket::custom(config)
        .manage(state)
        .mount(
            "/",
            routes![index, health, metrics, upload, ws, tenant, room, page],
        )
        .attach(sticky_rocket::StickyFairing::new(sticky))
}

/// A running server started by [`start`].
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<Result<Rocket<Ignite>, rocket::Error>>,
}

impl Running {
    /// The address the server listens on (with the port the OS chose).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that shuts the server down gracefully when notified.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Starts a graceful shutdown; returns at once.
    pub fn stop(&self) {
        self.shutdown.clone().notify();
    }

    /// Waits until the server has shut down.
    pub async fn stopped(self) -> io::Result<()> {
        finish(self.task.await)
    }
}

fn finish(
    joined: Result<Result<Rocket<Ignite>, rocket::Error>, tokio::task::JoinError>,
) -> io::Result<()> {
    match joined {
        Ok(Ok(_)) => Ok(()),
        // Displaying a rocket::Error marks it handled (it panics on drop otherwise).
        Ok(Err(e)) => Err(io::Error::other(e.to_string())),
        Err(e) => Err(io::Error::other(e)),
    }
}

/// Launches the app in a task and returns once it listens.
///
/// With port `0` the OS chooses a free port; [`Running::local_addr`] tells
/// which (Rocket records the bound port in its config before liftoff).
pub async fn start(sticky: Sticky, config: Config) -> io::Result<Running> {
    let (bound, listening) = oneshot::channel();
    let rocket = app(sticky, config).attach(AdHoc::on_liftoff("report address", move |rocket| {
        let addr = SocketAddr::new(rocket.config().address, rocket.config().port);
        Box::pin(async move {
            let _ = bound.send(addr);
        })
    }));
    let rocket = rocket
        .ignite()
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let shutdown = rocket.shutdown();
    let task = tokio::spawn(rocket.launch());
    match listening.await {
        Ok(addr) => Ok(Running {
            addr,
            shutdown,
            task,
        }),
        // The launch ended before liftoff (e.g. the address is in use).
        Err(_) => match finish(task.await) {
            Ok(()) => Err(io::Error::other("rocket stopped before it listened")),
            Err(e) => Err(e),
        },
    }
}

/// Serves the app until a signal stops it.
///
/// On `SIGTERM`: drains (`sticky.drain()`: requests pinned here move to other
/// Machines), keeps serving for `drain_for`, then shuts down gracefully. On
/// `SIGINT` (Ctrl-C), also during the drain period: shuts down at once.
pub async fn serve(sticky: Sticky, config: Config, drain_for: Duration) -> io::Result<()> {
    let running = start(sticky.clone(), config).await?;
    let shutdown = running.shutdown_handle();
    let signals = tokio::spawn(async move {
        let ctrl_c = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(ctrl_c);
        tokio::select! {
            () = terminate() => {
                sticky.drain();
                tokio::select! {
                    () = tokio::time::sleep(drain_for) => {}
                    () = &mut ctrl_c => {}
                }
            }
            () = &mut ctrl_c => {}
        }
        shutdown.notify();
    });
    let result = running.stopped().await;
    signals.abort();
    result
}

/// Resolves on `SIGTERM` (never on platforms without it).
async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// `machine=<id> handled=<n>`, in a string sized up front: `format!`
/// guesses from the literal parts and grows once for a 14-character Machine
/// ID but not for `local`, which would count as the middleware's cost in
/// `cargo xtask bench`'s ON/OFF instruction counts.
fn index_text(machine: &str, n: u64) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(machine.len() + 32);
    let _ = write!(text, "machine={machine} handled={n}");
    text
}
